"""Checkpoint selection on validation: the classifier's AUROC while a supervised run trains.

With `config.supervised.select_by_validation = N` the trainer calls, every N steps and at
the last step,

  scalars = selection.run(step, replicated_params, replicated_batch_stats)

which scores the run's own classifier head on the whole `config.online_eval.eval_split`
(validation) with the `classifier` evaluator (the same targets and the same macro AUROC as
`python -m simclr_jax.evaluate --evaluators classifier`, without bootstrap intervals) and
returns {checkpointing.SELECTION_METRIC: auroc, 'validation_seconds': ...}. The trainer
saves a checkpoint at that step with the AUROC as its metric, and the checkpoint manager
keeps the best one besides the newest (`checkpointing.create_manager(best_metric=...)`);
`python -m simclr_jax.evaluate --step best` evaluates it (`checkpointing.best_step`).
WORKDIR/best_checkpoint.json (workdir.BEST_CHECKPOINT_FILE) records every score and the
best step. The test split is never read: settings are chosen on validation.

Like the online monitor (online.py) it only reads the weights: the validation images are
read once, when it is made, and each call costs forward passes in eval mode (BatchNorm
running averages) on the local devices; every process computes the same numbers and
process 0 writes the record.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from simclr_jax import checkpointing
from simclr_jax.errors import WorkdirNotWritable
from simclr_jax.evaluation import classifier
from simclr_jax.evaluation import encoders
from simclr_jax.evaluation import features as features_lib
from simclr_jax.evaluation import online
from simclr_jax.evaluation import representations as representations_lib
from simclr_jax.workdir import BEST_CHECKPOINT_FILE

METRIC = checkpointing.SELECTION_METRIC


class ValidationSelection:
  """Scores the classifier head on the validation split (see the module docstring).

  Args:
    config: the run's resolved config (objective 'supervised'; reads dataset, data_dir,
      image_size, augment, seed, the model fields, supervised.{num_classes, label_mode},
      online_eval.{eval_split, batch_size}).
    workdir: the run's directory (its record, best_checkpoint.json, is written there).

  Raises:
    ValueError / FileNotFoundError: a missing split or one the label mode keeps too few
      examples of (checked now, before training starts).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    from simclr_jax import data
    from simclr_jax import models
    self._config, self._workdir = config, workdir
    self.split = config.online_eval.eval_split
    self._mode = str(config.supervised.label_mode or "")
    count = data.num_examples(config.dataset, config.data_dir, self.split)
    self._examples = online.read_examples(config.dataset, config.data_dir, self.split,
                                          count, int(config.seed))
    features = data.get_builder(config.dataset, config.data_dir).info.features
    self._class_names = (tuple(data.class_names(config.dataset, config.data_dir))
                         if "label" in features else None)
    num_devices = jax.local_device_count()
    self._batch_size = -(-int(config.online_eval.batch_size) // num_devices) * num_devices
    network = models.Supervised(encoder=models.create_encoder(config),
                                num_classes=int(config.supervised.num_classes))
    self._p_encode = jax.pmap(encoders.make_network_encode_fn(
        network, config.augment, int(config.image_size), input_channels=1, logits=True))
    self._build({"features": np.zeros((count, 1), np.float32),
                 "logits": np.zeros((count, int(config.supervised.num_classes)), np.float32)})
    self.history = []

  def start_at(self, step: int) -> None:
    """The run starts (or resumes) at `step`: the record's scores up to it are kept."""
    self.history = [entry for entry in self._read_history() if entry["step"] <= step]

  def _build(self, outputs: dict) -> representations_lib.Representations:
    """The evaluated examples with the head's outputs, under the classifier's targets."""
    evaluated = dict(self._examples, **outputs)
    # The label set of the other evaluators: one that keeps every example will do.
    mode = self._mode or ("primary" if "labels" in evaluated else None)
    return representations_lib.build(evaluated, None, label_mode=mode,
                                     class_names=self._class_names, resamples=0,
                                     classifier_label_mode=self._mode)

  def _read_history(self) -> list:
    path = os.path.join(self._workdir, BEST_CHECKPOINT_FILE)
    try:
      with open(path) as file:
        return list(json.load(file).get("history") or [])
    except (OSError, ValueError, AttributeError):
      return []

  def run(self, step: int, params: Any, batch_stats: Any) -> dict:
    """The classifier's validation AUROC with the trainer's replicated variables (read
    only); records it.

    Returns:
      {METRIC: macro AUROC (NaN when undefined), 'validation_seconds': wall time}.
    """
    start = time.perf_counter()
    outputs = features_lib.extract_features(
        self._p_encode, {"params": params, "batch_stats": batch_stats},
        features_lib.padded_batches(self._examples["image"], self._batch_size),
        replicated=True)
    scores = dict(classifier.Evaluator().run(self._build(
        {"features": outputs["features"], "logits": outputs["logits"]})))
    auroc = float(scores.get("classifier_auroc_macro", float("nan")))
    self.history.append({"step": int(step), METRIC: auroc})
    self._write()
    return {METRIC: auroc, "validation_seconds": time.perf_counter() - start}

  def best(self) -> Optional[dict]:
    scored = [entry for entry in self.history if math.isfinite(entry[METRIC])]
    return max(scored, key=lambda entry: (entry[METRIC], entry["step"])) if scored else None

  def _write(self) -> None:
    if jax.process_index() != 0:
      return
    record = {"metric": METRIC, "split": self.split,
              "definition": "macro AUROC of the run's classifier head on its training "
                            "targets (classifier evaluator), whole split, no bootstrap",
              "every_steps": int(self._config.supervised.select_by_validation),
              "best": self.best(), "history": self.history}
    path = os.path.join(self._workdir, BEST_CHECKPOINT_FILE)
    temporary = path + ".tmp"
    try:
      with open(temporary, "w") as file:
        json.dump(record, file, indent=2)
      os.replace(temporary, path)
    except OSError as error:   # no space, no inodes, permission: one line, exit 2
      try:
        os.remove(temporary)
      except OSError:
        pass
      step = self.history[-1]["step"] if self.history else None
      raise WorkdirNotWritable(
          f"{path}: cannot record the validation selection of step {step} "
          f"({error.strerror or error}); free space or make the workdir writable, then run "
          f"the same command again (it resumes from the newest complete checkpoint).") from None

