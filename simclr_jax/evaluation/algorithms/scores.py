"""Scores of predictions and clusterings against labels: the cluster-vs-class matching
(Hungarian accuracy, purity, NMI, ARI) and AUROC helpers. Pure numpy/scikit-learn/scipy."""
from __future__ import annotations


import numpy as np
import scipy.optimize
import sklearn.metrics


def _check_labelling(labels, cluster_ids) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels).reshape(-1)
  cluster_ids = np.asarray(cluster_ids).reshape(-1)
  if labels.shape != cluster_ids.shape:
    raise ValueError(f"labels has {labels.shape[0]} entries but cluster_ids has "
                     f"{cluster_ids.shape[0]}; they must describe the same examples.")
  if labels.size == 0:
    raise ValueError("labels and cluster_ids are empty; need at least one example.")
  return labels, cluster_ids


def contingency_matrix(labels, cluster_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Counts of examples per (cluster, class).

  Args:
    labels: [n] class ids (any integer values).
    cluster_ids: [n] cluster ids (any integer values).

  Returns:
    (matrix [num_clusters, num_classes] int64, cluster values [num_clusters],
     class values [num_classes]); rows/columns follow the sorted unique values.
  """
  labels, cluster_ids = _check_labelling(labels, cluster_ids)
  class_values, class_index = np.unique(labels, return_inverse=True)
  cluster_values, cluster_index = np.unique(cluster_ids, return_inverse=True)
  matrix = np.zeros((cluster_values.size, class_values.size), np.int64)
  np.add.at(matrix, (cluster_index, class_index), 1)
  return matrix, cluster_values, class_values


def hungarian_matching(labels, cluster_ids) -> dict:
  """One-to-one cluster -> class matching that maximises the matched examples.

  Returns:
    {cluster value: class value} for the matched clusters; clusters left without a
    class (more clusters than classes) are absent.
  """
  matrix, cluster_values, class_values = contingency_matrix(labels, cluster_ids)
  rows, cols = scipy.optimize.linear_sum_assignment(matrix, maximize=True)
  return {cluster_values[r].item(): class_values[c].item() for r, c in zip(rows, cols)}


def clustering_accuracy(labels, cluster_ids) -> float:
  """Accuracy of the best one-to-one cluster -> class matching (Hungarian).

  Works when the number of clusters differs from the number of classes: examples in
  an unmatched cluster (or of an unmatched class) count as errors.
  """
  matrix, _, _ = contingency_matrix(labels, cluster_ids)
  rows, cols = scipy.optimize.linear_sum_assignment(matrix, maximize=True)
  return float(matrix[rows, cols].sum() / matrix.sum())


def purity(labels, cluster_ids) -> float:
  """Fraction of examples that belong to the majority class of their cluster."""
  matrix, _, _ = contingency_matrix(labels, cluster_ids)
  return float(matrix.max(axis=1).sum() / matrix.sum())


def clustering_scores(labels, cluster_ids) -> dict:
  """cluster_accuracy, nmi, ari and purity of one labelling against the classes."""
  labels, cluster_ids = _check_labelling(labels, cluster_ids)
  return {
      "cluster_accuracy": clustering_accuracy(labels, cluster_ids),
      "nmi": float(sklearn.metrics.normalized_mutual_info_score(labels, cluster_ids)),
      "ari": float(sklearn.metrics.adjusted_rand_score(labels, cluster_ids)),
      "purity": purity(labels, cluster_ids),
  }


def auroc_or_nan(targets: np.ndarray, scores: np.ndarray) -> float:
  """AUROC, NaN when the test set holds only one of the two classes (undefined)."""
  if targets.min() == targets.max():
    return float("nan")
  return float(sklearn.metrics.roc_auc_score(targets, scores))


def nan_mean(values) -> float:
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else float("nan")

