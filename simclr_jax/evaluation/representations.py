"""What every evaluator reads: frozen features with their labels under one label mode."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from simclr_jax.data import labels as labels_lib


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
  """
  eval_examples: dict
  label_set: labels_lib.LabelSet
  train_examples: Optional[dict] = None
  train_label_set: Optional[labels_lib.LabelSet] = None
  seed: int = 0
  shared: dict = dataclasses.field(default_factory=dict)

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
    if "patient_id" in self.train_examples:
      return np.asarray(self.train_examples["patient_id"])
    return np.arange(self.train_examples["features"].shape[0])  # every image its own patient

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


def build(eval_examples: dict, train_examples: Optional[dict] = None, *,
          label_mode: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
          seed: int = 0) -> Representations:
  """Applies the label mode to both splits.

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
  return Representations(eval_examples, label_set, train_examples, train_label_set, seed)
