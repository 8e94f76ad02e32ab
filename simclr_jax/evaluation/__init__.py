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
  report.py          report.json / report.md / plots, and the --out / --overwrite rules
  offline.py         one encoder on one split: features -> evaluators -> report
  online.py          OnlineMonitor: cheap evaluators on held-out data while training

Adding an evaluator: write `simclr_jax/evaluation/<name>.py` with a class `Evaluator` whose
constructor takes its settings as keyword arguments and whose `run(representations)`
yields `(name, value)` pairs (floats, dicts or lists for report.json; numpy arrays with
one row per evaluated example go to features.npz), add `<name>` to EVALUATORS, and select
it with `--evaluators` (or `config.online_eval.evaluators`).
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence, Union

EVALUATORS = ("clustering", "linear_probe", "knn", "label_efficiency", "similarity",
              "patient_shortcut")


def from_config(spec: Union[Sequence[str], Mapping[str, Mapping[str, Any]]]) -> list:
  """Builds evaluators by name (big_vision `evaluators/common.py::from_config` style).

  Args:
    spec: evaluator names (default settings), or {name: {setting: value}}; a
      comma-separated string of names is accepted too.

  Returns:
    [(name, evaluator)] in the order given.

  Raises:
    ValueError: an unknown name or setting, naming the evaluator and what is accepted.
  """
  if isinstance(spec, str):
    spec = [name.strip() for name in spec.split(",") if name.strip()]
  items = (list(spec.items()) if isinstance(spec, Mapping)
           else [(name, {}) for name in spec])
  evaluators = []
  for name, settings in items:
    if name not in EVALUATORS:
      raise ValueError(f"--evaluators: unknown evaluator {name!r}; accepted: "
                       f"{', '.join(EVALUATORS)}.")
    module = importlib.import_module(f"simclr_jax.evaluation.{name}")
    settings = dict(settings.to_dict() if hasattr(settings, "to_dict") else settings or {})
    try:
      evaluators.append((name, module.Evaluator(**settings)))
    except TypeError as error:
      raise ValueError(f"evaluator {name!r}: {error}") from None
  return evaluators
