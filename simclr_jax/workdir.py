"""The names of every file of a run directory (WORKDIR), written by `simclr_jax.train`.

  WORKDIR/.lock                        the trainer's lock: host, PID, start time, command
  WORKDIR/config.json                  the experiment config the run trains with
  WORKDIR/config_history.jsonl         the configs a resumed run replaced (one JSON line each)
  WORKDIR/metrics.jsonl                one JSON line per logged step (process 0)
  WORKDIR/metrics.jsonl.damaged-<time> lines of metrics.jsonl a resume could not read, set
                                       aside with their line numbers (training/step_log.py)
  WORKDIR/dataset.json                 what the run trains on: the prepared dataset's
                                       version, split sizes and prepare options
                                       (training/settings.py: a resume on other data)
  WORKDIR/tensorboard/                 TensorBoard events of the same scalars
  WORKDIR/checkpoints/<step>/          orbax checkpoints: state/, rng/, data_iter/
                                       (simclr_jax/checkpointing.py)
  WORKDIR/checkpoints/damaged-<step>/  a checkpoint that could not be restored, moved aside
                                       by the trainer (training/checkpoints.py)
  WORKDIR/best_checkpoint.json         supervised.select_by_validation: the classifier's
                                       validation AUROC at every scored step and the best
                                       step (evaluation/selection.py; `evaluate --step best`)

Evaluation only reads a workdir (config.json and complete checkpoints).
"""
LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
METRICS_FILE = "metrics.jsonl"
METRICS_DAMAGED_PREFIX = METRICS_FILE + ".damaged-"
DATASET_FILE = "dataset.json"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT_FILE = "best_checkpoint.json"
DAMAGED_PREFIX = "damaged-"   # never '_<digits>': orbax would take 'damaged_10' for step 10

