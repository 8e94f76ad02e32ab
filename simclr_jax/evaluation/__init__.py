"""Evaluation of frozen representations: evaluators as plug-ins (big_vision's model).

  encoders.py        which network (checkpoint, torchvision-style random init, torch weights)
  features.py        batched extraction on every local device and process (masked padding)
  representations.py what every evaluator reads: features + labels under one label mode
  <evaluator>.py     one module per evaluator, each a class `Evaluator(**settings)` with
                     `run(representations)` yielding (name, value) pairs:
                       clustering        k-means + Hungarian accuracy, NMI, ARI, purity
                       linear_probe      logistic regression (device L-BFGS), AUROC
                       knn               cosine kNN accuracy and AUROC
                       label_efficiency  the probe on patient-wise label fractions
                       similarity        cosine similarity within vs between classes
                       patient_shortcut  nearest neighbour of the same patient vs chance
                       classifier        a supervised / fine-tuned run's own head: AUROC
                                         (and accuracy) on the targets it was trained on
  report.py          report.json / report.md / plots, and the --out / --overwrite rules
  offline.py         one encoder on one split: features -> evaluators -> report
  online.py          OnlineMonitor: cheap evaluators on held-out data while training
  selection.py       a supervised run's classifier AUROC on validation while it trains
                     (supervised.select_by_validation: the best checkpoint is kept)

Evaluations are config data (big_vision's `config.evals`): one mapping
`{evaluator name: settings}` says which evaluators run, in order, and with what settings;
`from_config` is the one constructor every driver calls, and the constructors check the
settings (once, when built). The drivers fill the mapping:
  python -m simclr_jax.evaluate, experiments.compare   from their flags
                                   (`offline.evaluators_config`: --evaluators names them,
                                   --k, --kmeans_n_init, --knn_k, --probe_solver and
                                   --label_fractions are their settings)
  the online monitor               `config.online_eval.evaluators`, e.g.
                                   {"knn": {"k": 20, "temperature": 0.07}}

Adding an evaluator: write `simclr_jax/evaluation/<name>.py` with a class `Evaluator` whose
constructor takes its settings as keyword arguments (and refuses bad ones with ValueError)
and whose `run(representations)` yields `(name, value)` pairs (floats, dicts or lists for
report.json; numpy arrays with one row per evaluated example go to features.npz), add
`<name>` to EVALUATORS, and select it with `--evaluators` (or, for the monitor,
`config.online_eval.evaluators` and a line in `online.LOGGED`).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping, Sequence, Union

EVALUATORS = ("clustering", "linear_probe", "knn", "label_efficiency", "similarity",
              "patient_shortcut", "classifier")


def _module(name: str):
  if name not in EVALUATORS:
    raise ValueError(f"--evaluators: unknown evaluator {name!r}; accepted: "
                     f"{', '.join(EVALUATORS)}.")
  return importlib.import_module(f"simclr_jax.evaluation.{name}")


def from_config(spec: Union[str, Sequence[str], Mapping[str, Mapping[str, Any]]]) -> list:
  """Builds evaluators by name (big_vision `evaluators/common.py::from_config` style).

  Args:
    spec: {name: {setting: value}} (a dict or ml_collections ConfigDict), in the order
      they run; evaluator names alone (default settings) or a comma-separated string of
      names are accepted too.

  Returns:
    [(name, evaluator)] in the order given.

  Raises:
    ValueError: no evaluator, an unknown name or a bad setting, naming the evaluator and
      what is accepted.
  """
  if isinstance(spec, str):
    spec = [name.strip() for name in spec.split(",") if name.strip()]
  items = (list(spec.items()) if isinstance(spec, Mapping) or hasattr(spec, "to_dict")
           else [(name, {}) for name in spec])
  if not items:
    raise ValueError(f"--evaluators: unknown or no evaluator(s) []; accepted: "
                     f"{', '.join(EVALUATORS)}.")
  evaluators = []
  for name, settings in items:
    module = _module(name)
    settings = dict(settings.to_dict() if hasattr(settings, "to_dict") else settings or {})
    try:
      evaluators.append((name, module.Evaluator(**settings)))
    except TypeError as error:
      raise ValueError(f"evaluator {name!r}: {error}") from None
  return evaluators


def default_settings(name: str) -> dict:
  """{setting: default} of an evaluator, from its constructor (the only place they are
  written; the command lines show them as their flags' defaults)."""
  parameters = inspect.signature(_module(name).Evaluator).parameters
  return {key: parameter.default for key, parameter in parameters.items()
          if parameter.default is not inspect.Parameter.empty}
