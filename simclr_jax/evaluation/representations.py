"""What every evaluator reads: frozen features with their labels under one label mode."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from simclr_jax.data import labels as labels_lib
from simclr_jax.evaluation import algorithms


@dataclasses.dataclass
class Representations:
  """Features of the evaluated split and, optionally, of the split probes are fitted on.

  Attributes:
    eval_examples: {'features' [n, F] float32, 'label' and/or 'labels' [n, C],
      ['patient_id'], ...} of the evaluated split.
    label_set: the evaluated examples' classes under the label mode (-1 = left out).
    train_examples, train_label_set: the same for the train split (None: no probe, kNN
      or label efficiency).
    seed: seeds k-means, subsampling and scikit-learn.
    shared: results one evaluator leaves for a later one in the same run (the full linear
      probe, reused by label efficiency at fraction 1.0).
    resamples: bootstrap resamples (by patient) of every AUROC's 95 % interval; 0: none
      (the online monitor).
    classifier_label_mode: the targets the encoder's classifier head was trained on
      (its config's supervised.label_mode; '' = the dataset's own labels); None when
      the encoder has no classifier head (then eval_examples has no 'logits').
    dataset_class_names: the names of the dataset's 'label' classes (None without).
  """
  eval_examples: dict
  label_set: labels_lib.LabelSet
  train_examples: Optional[dict] = None
  train_label_set: Optional[labels_lib.LabelSet] = None
  seed: int = 0
  shared: dict = dataclasses.field(default_factory=dict)
  resamples: int = algorithms.BOOTSTRAP_RESAMPLES
  classifier_label_mode: Optional[str] = None
  dataset_class_names: Optional[tuple] = None

  @property
  def multi_label(self) -> bool:
    return labels_lib.is_multi_label(self.eval_examples)

  @property
  def label_names(self) -> tuple:
    """Names of the multi-hot 'labels' columns: the dataset's (NIH: its 14 findings)."""
    return self.label_set.label_names

  @property
  def probe_multi_label(self) -> bool:
    """Probe and kNN AUROC per finding: multi-label data, unless a binary label mode asks
    for one question (e.g. binary:No Finding = normal vs abnormal)."""
    return self.multi_label and not self.label_set.mode.startswith("binary:")

  @property
  def eval_features(self) -> np.ndarray:
    return np.asarray(self.eval_examples["features"], np.float32)

  @property
  def train_features(self) -> Optional[np.ndarray]:
    if self.train_examples is None:
      return None
    return np.asarray(self.train_examples["features"], np.float32)

  def train_patient_ids(self) -> np.ndarray:
    return _patient_ids(self.train_examples)

  def eval_patient_ids(self) -> np.ndarray:
    """Patients of the evaluated examples: what the bootstrap intervals resample."""
    return _patient_ids(self.eval_examples)

  def intervals(self, kept: Optional[np.ndarray] = None) -> dict:
    """`algorithms.auroc_table`'s interval arguments for the evaluated examples `kept`."""
    patient_ids = self.eval_patient_ids()
    return {"patient_ids": patient_ids if kept is None else patient_ids[kept],
            "resamples": self.resamples}

  def probe_targets(self) -> dict:
    """Targets of the linear probe and label efficiency.

    Multi-label data: the full multi-hot findings of every image (one-vs-rest AUROC per
    finding), except under a binary label mode, whose two classes are the targets.
    Single-label data: the label mode's classes.

    Returns:
      {'train', 'eval': targets, 'train_kept', 'eval_kept': bool masks, 'names',
       'description'}.
    """
    if self.probe_multi_label:
      train = np.asarray(self.train_examples["labels"])
      evaluated = np.asarray(self.eval_examples["labels"])
      return {"train": train, "eval": evaluated, "train_kept": np.ones(len(train), bool),
              "eval_kept": np.ones(len(evaluated), bool), "names": list(self.label_names),
              "description": "multi-hot findings (one sigmoid per finding)"}
    train, evaluated = self.train_label_set.labels, self.label_set.labels
    return {"train": train, "eval": evaluated, "train_kept": train >= 0,
            "eval_kept": evaluated >= 0, "names": list(self.label_set.class_names),
            "description": f"classes of label mode {self.label_set.mode!r}"}


def _patient_ids(examples: dict) -> np.ndarray:
  if "patient_id" in examples:
    return np.asarray(examples["patient_id"])
  # Every image its own patient.
  return np.arange(len(next(iter(examples.values()))))


def build(eval_examples: dict, train_examples: Optional[dict] = None, *,
          label_mode: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
          seed: int = 0, resamples: int = algorithms.BOOTSTRAP_RESAMPLES,
          classifier_label_mode: Optional[str] = None) -> Representations:
  """Applies the label mode to both splits (resamples, classifier_label_mode: see
  `Representations`).

  Raises:
    ValueError: an unknown label mode, or one that keeps fewer than 2 examples.
  """
  label_set = labels_lib.select_labels(label_mode, eval_examples, class_names)
  if label_set.num_kept < 2:
    raise ValueError(f"--label_mode={label_set.mode!r} keeps {label_set.num_kept} of "
                     f"{len(label_set.labels)} examples; need at least 2 to evaluate.")
  train_label_set = None
  if train_examples is not None:
    train_label_set = labels_lib.select_labels(label_set.mode, train_examples, class_names)
  return Representations(eval_examples, label_set, train_examples, train_label_set, seed,
                         resamples=int(resamples), classifier_label_mode=classifier_label_mode,
                         dataset_class_names=tuple(class_names) if class_names else None)
