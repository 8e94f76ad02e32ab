"""Classifier evaluator: the trained classifier head itself, scored on the evaluated split.

A supervised or fine-tuned run (params {'encoder', 'classifier'}) carries its own answer;
this evaluator scores it, not a probe on its features. The targets are those the head was
trained on, read from the checkpoint's config (`supervised.label_mode`, whatever
--label_mode says for the other evaluators):
  ''             the dataset's own: the multi-hot findings (one sigmoid per finding:
                 per-finding and macro AUROC) when it has them, else its 'label' classes
                 (softmax: accuracy, one-vs-rest AUROC);
  a label mode   of `data/labels.py`, e.g. 'binary:No Finding': softmax over the mode's
                 classes (accuracy, AUROC); examples the mode drops are not scored.
Every figure has a 95 % bootstrap interval resampled by patient (`<name>_ci95`); a class
without positives in the train split (when the train split's labels are read) is left out
of the macro, as for the probe and kNN (`algorithms.auroc_table`).

An encoder without a classifier head (SimCLR, random init, torchvision weights) yields only
`classifier_skipped` with the reason (`python -m simclr_jax.evaluate` refuses such an
encoder when --evaluators names `classifier` explicitly).
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from simclr_jax.data import labels as labels_lib
from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation.representations import Representations


def unavailable_reason(representations: Representations) -> Optional[str]:
  """Why the classifier cannot be scored (no classifier head), or None."""
  if representations.classifier_label_mode is None or "logits" not in representations.eval_examples:
    return "the encoder has no classifier head (only supervised or fine-tuned runs have one)"
  return None


def _sigmoid(logits: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-logits))


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
  return shifted / shifted.sum(axis=1, keepdims=True)


def _check_outputs(logits: np.ndarray, classes, targets: str) -> None:
  if logits.shape[1] != len(classes):
    raise ValueError(f"classifier: the head has {logits.shape[1]} outputs but its targets "
                     f"({targets}) have {len(classes)} classes ({', '.join(map(str, classes))}); "
                     f"was the run trained on another dataset or label mode?")


class Evaluator:
  """No settings: the targets come from the checkpoint's config."""

  def run(self, representations: Representations) -> Iterator[tuple]:
    reason = unavailable_reason(representations)
    if reason:
      yield "classifier_skipped", reason
      return
    examples, train = representations.eval_examples, representations.train_examples
    logits = np.asarray(examples["logits"], np.float64)  # [n, C]
    mode = representations.classifier_label_mode
    yield "classifier_label_mode", mode
    if not mode and labels_lib.is_multi_label(examples):
      truth = np.asarray(examples["labels"]).astype(bool)
      names, _ = labels_lib.multi_label_names(truth.shape[1],
                                              representations.dataset_class_names)
      targets = "multi-hot findings (one sigmoid per finding)"
      _check_outputs(logits, names, targets)
      positives = negatives = None
      if train is not None and labels_lib.is_multi_label(train):
        train_truth = np.asarray(train["labels"]).astype(bool)
        positives, negatives = train_truth.sum(axis=0), (~train_truth).sum(axis=0)
      yield "classifier_targets", targets
      yield "classifier_examples", int(truth.shape[0])
      yield from algorithms.auroc_table(
          "classifier_auroc", truth, _sigmoid(logits), names, train_positives=positives,
          train_negatives=negatives, **representations.intervals()).items()
      return
    label_set = labels_lib.select_labels(mode or "label", examples,
                                         representations.dataset_class_names)
    names = list(label_set.class_names)
    targets = f"classes of label mode {label_set.mode!r} (softmax)"
    _check_outputs(logits, names, targets)
    kept = label_set.kept
    labels = label_set.labels[kept]
    probabilities = _softmax(logits[kept])
    positives = negatives = None
    if train is not None:
      train_labels = labels_lib.select_labels(label_set.mode, train,
                                              representations.dataset_class_names).labels
      train_labels = train_labels[train_labels >= 0]
      positives = np.bincount(train_labels, minlength=len(names))
      negatives = train_labels.size - positives
    correct = (np.argmax(probabilities, axis=1) == labels).astype(np.float64)
    intervals = representations.intervals(kept)
    yield "classifier_targets", targets
    yield "classifier_examples", int(kept.sum())
    yield "classifier_accuracy", float(correct.mean()) if correct.size else float("nan")
    if intervals["resamples"] and correct.size:
      yield "classifier_accuracy_ci95", algorithms.bootstrap_mean_interval(
          correct, intervals["patient_ids"], resamples=intervals["resamples"])
    yield from algorithms.auroc_table(
        "classifier_auroc", labels[:, None] == np.arange(len(names))[None], probabilities,
        names, train_positives=positives, train_negatives=negatives,
        binary=len(names) == 2, **intervals).items()
