r"""The evaluator's command line: one encoder, one split -> OUT/report.{json,md} + plots.

  python -m simclr_jax.evaluate --workdir runs/demo/train --dataset synthetic_cxr/32 \
      --data_dir runs/data --split test --out runs/demo/eval
  python -m simclr_jax.evaluate --workdir runs/demo/train --random_init ...   # baseline
  python -m simclr_jax.evaluate --workdir runs/finetune --step best --evaluators classifier \
      ...   # a fine-tuned run's best validation checkpoint
  python -m simclr_jax.evaluate --torch_weights resnet50_imagenet.pth --model resnet50 \
      --image_size 224 --dataset nih_chest_xray14/256 --data_dir DIR --split test --out DIR

Flags and set-up only; the work lives in `simclr_jax/evaluation/` (encoders, feature
extraction, one module per evaluator, the report). The workdir is only read, so a running
trainer's checkpoints can be evaluated. Bad settings (k < 2 or larger than the examples,
an unknown dataset, split, label mode or evaluator, an --out holding an earlier report
without --overwrite or being written by another evaluation, a damaged or mismatched
workdir, --evaluators=classifier on an encoder without a classifier head) exit 2 with one
line naming the flag, file or value and what is accepted. Ctrl-C exits 130 with one line;
the report is written whole or not at all.
"""
from __future__ import annotations

import os
import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the modules below load: one line, exit 130
  signal.signal(signal.SIGINT, lambda *_: (print("interrupted.", file=sys.stderr),
                                           os._exit(130)))

import json  # pylint: disable=wrong-import-position
import logging  # pylint: disable=wrong-import-position
import threading  # pylint: disable=wrong-import-position
from typing import Sequence  # pylint: disable=wrong-import-position

from simclr_jax.data import labels as labels_lib  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import EVALUATORS  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import encoders  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import offline  # pylint: disable=wrong-import-position
from simclr_jax.evaluation.encoders import load_encoder  # noqa: F401  pylint: disable=unused-import,wrong-import-position
from simclr_jax.evaluation.encoders import make_encode_fn  # noqa: F401  pylint: disable=unused-import,wrong-import-position
from simclr_jax.runtime import distributed  # pylint: disable=wrong-import-position

SUMMARY_KEYS = ("cluster_accuracy", "nmi", "ari", "purity", "linear_auroc_macro",
                "init_from",
                "linear_auroc_macro_ci95", "linear_accuracy", "knn_accuracy",
                "knn_auroc_macro", "classifier_auroc_macro", "classifier_auroc_macro_ci95",
                "num_examples", "k", "label_mode", "checkpoint_step", "encoder_init",
                "patients_in_several_splits", "warnings")


def define_flags(flag_values) -> None:
  """The evaluator's flags, defined on `flag_values` (an absl FlagValues).

  The data flags are named as the fields of `offline.Data` and the evaluator settings as
  `offline.SETTING_FLAGS`; their defaults are those of `offline.Data` and of the
  evaluators' constructors.
  """
  from absl import flags
  define = {"string": flags.DEFINE_string, "integer": flags.DEFINE_integer,
            "bool": flags.DEFINE_bool}
  data = offline.Data

  def flag(kind, name, default, text):
    define[kind](name, default, text, flag_values=flag_values)

  flag("string", "workdir", None, "Training run directory (config.json + checkpoints/); "
       "SimCLR or supervised. Only read.")
  flag("string", "step", None, "Checkpoint step (default: the latest complete one), or "
       "'best': the best validation checkpoint of a run trained with "
       "config.supervised.select_by_validation > 0.")
  flag("bool", "random_init", False, "Evaluate the workdir's (or --model's) architecture "
       "untrained, initialised torchvision-style (zero_init_residual=False).")
  flag("string", "torch_weights", None, "torchvision ResNet state_dict file.")
  flag("string", "model", None, "Architecture when there is no workdir (e.g. resnet50).")
  flag("integer", "image_size", None, "Model input size (default: the workdir's; 224 "
       "without a workdir).")
  flag("integer", "seed", None, "Seed for --random_init and k-means (default config.seed).")
  flag("string", "dataset", None, "TFDS name, e.g. synthetic_cxr/32 (required).")
  flag("string", "data_dir", None, "TFDS data_dir (required).")
  flag("string", "split", data.split, "Split to evaluate.")
  flag("string", "train_split", data.train_split, "Split for the linear probe / kNN; '' "
       "skips them.")
  flag("string", "out", None, "Output directory (required).")
  flag("bool", "overwrite", False, "Replace an earlier report in --out (all its files, "
       "plots included).")
  flag("string", "evaluators", ",".join(EVALUATORS), "Comma-separated evaluators to run, "
       f"in order; known: {', '.join(EVALUATORS)}. By default classifier is skipped (the "
       "reason recorded) for an encoder without a classifier head; named here, it is "
       "required.")
  flag("integer", "k", offline.flag_default("k"), "k-means clusters, >= 2 (default: the "
       "classes of the label mode: 14 for NIH's default single_finding mode).")
  flag("string", "label_mode", data.label_mode, " | ".join(labels_lib.LABEL_MODES) +
       " (default: single_finding for NIH, label otherwise).")
  flag("string", "labels_csv", data.labels_csv, "ChestX-ray14 Data_Entry CSV: exact CSV "
       "order for --label_mode=primary.")
  flag("string", "label_fractions", ",".join(map(str, offline.flag_default("label_fractions"))),
       "Train-label fractions for label efficiency.")
  flag("string", "features", data.features, " | ".join(encoders.FEATURE_KINDS))
  flag("string", "probe_solver", offline.flag_default("probe_solver"),
       "Linear probe solver: jax (device L-BFGS) | sklearn.")
  flag("integer", "batch_size", data.batch_size, "Images per extraction step (all local "
       "devices).")
  flag("integer", "knn_k", offline.flag_default("knn_k"), "Neighbours for kNN.")
  flag("integer", "kmeans_n_init", offline.flag_default("kmeans_n_init"), "k-means restarts.")
  flag("integer", "max_examples", data.max_examples, "Use only the first N examples of each "
       "split.")
  flag("bool", "plots", True, "Write PNG plots.")
  flag("bool", "save_features", True, "Write OUT/features.npz.")
  distributed.define_flags(flag_values)


def _parse(argv: Sequence[str]):
  from absl import flags
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
    print(__doc__.split("\n\n")[0] + "\n\n" + flag_values.get_help())
    return None
  flag_values(list(argv))
  missing = [name for name in ("dataset", "data_dir", "out") if not flag_values[name].value]
  if missing:
    raise ValueError(f"missing required flag(s): {', '.join('--' + name for name in missing)}.")
  return flag_values


def main(argv: Sequence[str]) -> int:
  """Runs the evaluator CLI; returns the exit status (0 ok, 2 bad settings or data, 130
  interrupted)."""
  from absl import flags
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  logging.getLogger().setLevel(logging.INFO)
  # orbax/TFDS log every save/restore step through absl at INFO; keep ours only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt
  try:
    options = _parse(argv)
    if options is None:
      return 0
    distributed.initialize()  # a multi-process launch (flags, SIMCLR_* variables or SLURM)
    offline.enable_compilation_cache(options.workdir)
    output = offline.Output(options.out, overwrite=options.overwrite, plots=options.plots,
                            save_features=options.save_features)
    # OUT is ours from here to the end: a second evaluation into it is refused at once.
    with offline.reserve_output(output):
      # Bad settings fail here, once, before the encoder is built.
      plan = offline.plan(offline.data_from_flags(options),
                          offline.evaluators_config(options), output)
      encoder = load_encoder(workdir=options.workdir,
                             step=encoders.parse_step(options.step),
                             random_init=options.random_init,
                             torch_weights=options.torch_weights, model=options.model,
                             image_size=options.image_size, seed=options.seed)
      if options["evaluators"].present:  # asked for by name: required, not skipped
        offline.check_classifier(plan, encoder)
      report = offline.evaluate_encoder(encoder, plan, output)
  except (ValueError, OSError, flags.Error) as error:  # OSError: e.g. no space for --out
    message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    print(f"error: {message}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: no partial report was written to --out.", file=sys.stderr)
    return 130
  import jax
  if jax.process_index() == 0:
    print(json.dumps({key: report.get(key) for key in SUMMARY_KEYS}))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
