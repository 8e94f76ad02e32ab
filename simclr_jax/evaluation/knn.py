"""kNN evaluator: cosine k-nearest neighbours from the train split to the evaluated split.

Yields knn_accuracy (majority vote over the label mode's classes) and
knn_accuracy_weighted (votes exp(cos / T)), and knn_auroc / knn_auroc_macro from the
weighted fraction of neighbours holding a label: per finding on multi-label data (every
image), one-vs-rest per class on single-label data.
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation.representations import Representations


def knn_scores(representations: Representations, k: int, temperature: float) -> dict:
  """kNN accuracy and AUROC of the evaluated split against the train split."""
  label_set, train_label_set = representations.label_set, representations.train_label_set
  train_kept, kept = train_label_set.kept, label_set.kept
  scores = {}
  if train_kept.any() and kept.any():
    neighbours = algorithms.knn_neighbours(representations.train_features[train_kept],
                                        representations.eval_features[kept], k=k)
    class_names = label_set.class_names
    truth = label_set.labels[kept]
    for key, weighting in (("knn_accuracy", "majority"), ("knn_accuracy_weighted", "weighted")):
      votes = algorithms.knn_votes(neighbours, train_label_set.labels[train_kept],
                                weighting=weighting, temperature=temperature,
                                num_classes=len(class_names))
      scores[key] = float(np.mean(np.argmax(votes, axis=1) == truth))
    if not representations.probe_multi_label:
      fractions = votes / votes.sum(axis=1, keepdims=True)  # weighted votes
      per_class = {name: algorithms.auroc_or_nan((truth == c).astype(np.int64), fractions[:, c])
                   for c, name in enumerate(class_names)}
      scores["knn_auroc"] = per_class
      # One AUROC describes a binary problem (the two entries are complements).
      scores["knn_auroc_macro"] = (per_class[class_names[1]] if len(class_names) == 2
                                   else algorithms.nan_mean(list(per_class.values())))
  if representations.probe_multi_label:
    neighbours = algorithms.knn_neighbours(representations.train_features,
                                        representations.eval_features, k=k)
    fractions = algorithms.knn_label_scores(neighbours, representations.train_examples["labels"],
                                         temperature=temperature)
    truth = np.asarray(representations.eval_examples["labels"])
    per_finding = {name: algorithms.auroc_or_nan(truth[:, j], fractions[:, j])
                   for j, name in enumerate(representations.label_names)}
    scores["knn_auroc"] = per_finding
    scores["knn_auroc_macro"] = algorithms.nan_mean(list(per_finding.values()))
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
