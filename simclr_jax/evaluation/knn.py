"""kNN evaluator: cosine k-nearest neighbours from the train split to the evaluated split.

Yields knn_accuracy (majority vote over the label mode's classes) and
knn_accuracy_weighted (votes exp(cos / T)), and knn_auroc / knn_auroc_macro from the
weighted fraction of neighbours holding a label: per finding on multi-label data (every
image), one-vs-rest per class on single-label data; the macro leaves out classes without
train positives (scored 0 by every neighbour vote) and carries a 95 % interval resampled
by patient.
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation.representations import Representations


def knn_scores(representations: Representations, k: int, temperature: float) -> dict:
  """kNN accuracy and AUROC of the evaluated split against the train split (AUROC macro
  over the classes with train positives, with 95 % intervals: `algorithms.auroc_table`)."""
  label_set, train_label_set = representations.label_set, representations.train_label_set
  train_kept, kept = train_label_set.kept, label_set.kept
  scores = {}
  if train_kept.any() and kept.any():
    neighbours = algorithms.knn_neighbours(representations.train_features[train_kept],
                                        representations.eval_features[kept], k=k)
    class_names = label_set.class_names
    truth = label_set.labels[kept]
    train_labels = train_label_set.labels[train_kept]
    for key, weighting in (("knn_accuracy", "majority"), ("knn_accuracy_weighted", "weighted")):
      votes = algorithms.knn_votes(neighbours, train_labels, weighting=weighting,
                                   temperature=temperature, num_classes=len(class_names))
      scores[key] = float(np.mean(np.argmax(votes, axis=1) == truth))
    if not representations.probe_multi_label:
      fractions = votes / votes.sum(axis=1, keepdims=True)  # weighted votes
      positives = np.bincount(train_labels, minlength=len(class_names))
      scores.update(algorithms.auroc_table(
          "knn_auroc", truth[:, None] == np.arange(len(class_names))[None], fractions,
          class_names, train_positives=positives, train_negatives=train_labels.size - positives,
          binary=len(class_names) == 2,
          **representations.intervals(kept)))
  if representations.probe_multi_label:
    neighbours = algorithms.knn_neighbours(representations.train_features,
                                        representations.eval_features, k=k)
    train_targets = np.asarray(representations.train_examples["labels"])
    fractions = algorithms.knn_label_scores(neighbours, train_targets, temperature=temperature)
    positives = train_targets.astype(bool).sum(axis=0)
    scores.update(algorithms.auroc_table(
        "knn_auroc", np.asarray(representations.eval_examples["labels"]), fractions,
        representations.label_names, train_positives=positives,
        train_negatives=len(train_targets) - positives,
        **representations.intervals()))
  return scores


class Evaluator:
  """Args: k: neighbours; temperature: of the weighted vote."""

  def __init__(self, k: int = 20, temperature: float = 0.07):
    if k < 1:
      raise ValueError(f"--knn_k={k}: must be >= 1.")
    self.k, self.temperature = int(k), float(temperature)

  def run(self, representations: Representations) -> Iterator[tuple]:
    if representations.train_examples is None:
      return
    start = time.perf_counter()
    yield from knn_scores(representations, self.k, self.temperature).items()
    yield "knn_k", self.k
    yield "knn_seconds", time.perf_counter() - start
