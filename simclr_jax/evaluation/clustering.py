"""Clustering evaluator: k-means on the features, scored against the label mode's classes.

Yields cluster_accuracy (Hungarian one-to-one matching), nmi, ari, purity, the k-means
run (k, inertia, iterations, restarts, kmeans_clusters_used: fewer than k when the features
hold fewer distinct points, then also a warning), the matching (`cluster_to_class`) and the
per-example `cluster_ids` array (for features.npz and the plots).
"""
from __future__ import annotations

import logging
import time
from typing import Iterator, Optional

import numpy as np

from simclr_jax.data import labels as labels_lib
from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation.representations import Representations


def check_k(k: int, num_examples: Optional[int] = None, what: str = "examples") -> None:
  """k-means needs 2 <= k <= the number of examples clustered.

  Raises:
    ValueError: naming --k, its value and the accepted range.
  """
  if k < 2:
    upper = f" <= {num_examples} ({what})" if num_examples is not None else ""
    raise ValueError(f"--k={k}: k-means needs at least 2 clusters; give k >= 2{upper}.")
  if num_examples is not None and k > num_examples:
    raise ValueError(f"--k={k} is larger than the {num_examples} {what}; give 2 <= k <= "
                     f"{num_examples}.")


class Evaluator:
  """k-means (JAX, on the device) + cluster-vs-class scores.

  Args:
    k: clusters; None = the number of classes of the label mode (14 for NIH's default
      'single_finding' mode).
    n_init: k-means restarts (lowest inertia wins).
    max_iter: Lloyd iterations per restart.
  """

  def __init__(self, k: Optional[int] = None, n_init: int = 10, max_iter: int = 300):
    if k is not None:
      check_k(int(k))
    if n_init < 1:
      raise ValueError(f"--kmeans_n_init={n_init}: must be >= 1.")
    self.k, self.n_init, self.max_iter = k, int(n_init), int(max_iter)

  def clusters(self, label_set: labels_lib.LabelSet) -> int:
    """k for these labels (the setting, or the number of classes), checked against the
    examples the label mode keeps."""
    k = int(self.k if self.k is not None else len(label_set.class_names))
    check_k(k, label_set.num_kept, f"examples kept by label mode {label_set.mode!r}")
    return k

  def run(self, representations: Representations) -> Iterator[tuple]:
    label_set = representations.label_set
    kept = label_set.kept
    k = self.clusters(label_set)
    start = time.perf_counter()
    clustering = algorithms.kmeans(representations.eval_features[kept], k, n_init=self.n_init,
                                max_iter=self.max_iter, seed=representations.seed)
    yield "k", k
    yield from algorithms.clustering_scores(label_set.labels[kept], clustering.assignments).items()
    yield "kmeans_inertia", clustering.inertia
    yield "kmeans_iterations", clustering.num_iterations
    yield "kmeans_n_init", self.n_init
    used = int(np.unique(clustering.assignments).size)
    yield "kmeans_clusters_used", used
    if used < k:
      distinct = int(np.unique(representations.eval_features[kept], axis=0).shape[0])
      why = (f"the features hold only {distinct} distinct points (identical features: a "
             f"collapsed encoder?)" if distinct < k else "some clusters ended empty")
      text = f"k-means used {used} of the k = {k} clusters asked for: {why}."
      logging.warning(text)
      yield "warnings", [text]
    matching = algorithms.hungarian_matching(label_set.labels[kept], clustering.assignments)
    yield "cluster_to_class", {str(c): label_set.class_names[m] for c, m in matching.items()}
    cluster_ids = np.full(label_set.labels.shape[0], -1, np.int32)
    cluster_ids[kept] = clustering.assignments
    yield "cluster_ids", cluster_ids
    yield "clustering_seconds", time.perf_counter() - start
