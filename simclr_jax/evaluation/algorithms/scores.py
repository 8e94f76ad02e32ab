"""Scores of predictions and clusterings against labels: the cluster-vs-class matching
(Hungarian accuracy, purity, NMI, ARI), AUROC tables whose macro averages like classes
(`auroc_table`) and 95 % bootstrap intervals resampling patients (`patient_resamples`).
Pure numpy/scikit-learn/scipy."""
from __future__ import annotations

import warnings

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


# ----------------------------------------------------------------------------- macro AUROC

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0   # the same patient resamples for every encoder and evaluator (paired)

# Why a class is left out of a macro mean (report.json `<name>_macro_left_out`).
NO_TRAIN_POSITIVES = "no positives in the train split (nothing to learn it from)"
NO_TRAIN_NEGATIVES = "no negatives in the train split (nothing to learn it from)"
NO_EVAL_POSITIVES = "no positives in the evaluated split (AUROC undefined)"
NO_EVAL_NEGATIVES = "no negatives in the evaluated split (AUROC undefined)"


def auroc_table(name: str, truth, scores, class_names, *, train_positives=None,
                train_negatives=None, binary: bool = False, patient_ids=None,
                resamples: int = 0, seed: int = BOOTSTRAP_SEED) -> dict:
  """Per-class AUROC, their macro mean over like classes, and the bootstrap intervals.

  The one place every evaluator (linear probe, kNN, label fractions, classifier) turns
  scores into AUROC figures, so their macros average the same kind of class set: a class
  enters the macro only when the train split gives it positives and negatives (else it
  cannot have been learnt; its per-class AUROC is NaN) and the evaluated split gives it
  both (else its AUROC is undefined). The report says which classes entered and why the
  others were left out.

  Args:
    name: key prefix, e.g. 'linear_auroc'.
    truth: [n, C] 0/1, one column per class (one-vs-rest for single-label data).
    scores: [n, C] the score of each class (probability, vote fraction, logit).
    class_names: [C].
    train_positives, train_negatives: [C] counts in the train split; None = not known
      (nothing left out for the train split's sake).
    binary: a two-class problem (C = 2, the columns complements): one AUROC, of the
      second class, is the macro.
    patient_ids: [n] patient of every evaluated example, for the intervals.
    resamples: bootstrap resamples of the patients (0: no intervals).
    seed: of the resampling.

  Returns:
    {name: {class: auroc}, name_macro, name_macro_classes: [classes in the macro],
     name_macro_left_out: {class: reason}} and, with resamples, name_ci95: {class:
     [low, high]} and name_macro_ci95: [low, high] (None where undefined).
  """
  truth = np.asarray(truth).astype(bool)
  scores = np.asarray(scores, np.float64)
  names = [str(class_name) for class_name in class_names]
  if truth.shape != scores.shape or truth.shape[1] != len(names):
    raise ValueError(f"{name}: truth {truth.shape}, scores {scores.shape} and "
                     f"{len(names)} class names must agree.")
  left_out = {}
  for column, class_name in enumerate(names):
    if train_positives is not None and train_positives[column] == 0:
      left_out[class_name] = NO_TRAIN_POSITIVES
    elif train_negatives is not None and train_negatives[column] == 0:
      left_out[class_name] = NO_TRAIN_NEGATIVES
    elif not truth[:, column].any():
      left_out[class_name] = NO_EVAL_POSITIVES
    elif truth[:, column].all():
      left_out[class_name] = NO_EVAL_NEGATIVES
  per_class = {}
  for column, class_name in enumerate(names):
    learnt = left_out.get(class_name) not in (NO_TRAIN_POSITIVES, NO_TRAIN_NEGATIVES)
    per_class[class_name] = (auroc_or_nan(truth[:, column].astype(np.int64), scores[:, column])
                             if learnt else float("nan"))
  if binary:
    if len(names) != 2:
      raise ValueError(f"{name}: a binary problem has 2 classes, got {names}.")
    # One AUROC describes a binary problem; the first column is its complement.
    if names[0] not in left_out and names[1] not in left_out:
      left_out[names[0]] = f"complement of {names[1]} (a binary problem has one AUROC)"
    entered = [] if names[1] in left_out else [names[1]]
  else:
    entered = [class_name for class_name in names if class_name not in left_out]
  columns = [names.index(class_name) for class_name in entered]
  result = {name: per_class,
            f"{name}_macro": nan_mean([per_class[c] for c in entered]),
            f"{name}_macro_classes": entered,
            f"{name}_macro_left_out": left_out}
  if resamples and patient_ids is not None:
    learnt = [column for column, class_name in enumerate(names)
              if np.isfinite(per_class[class_name])]
    patient_index, counts = patient_resamples(patient_ids, resamples=resamples, seed=seed)
    values = np.full((resamples, len(names)), np.nan)
    for column in learnt:
      values[:, column] = weighted_auroc(truth[:, column], scores[:, column], patient_index,
                                         counts)
    result[f"{name}_ci95"] = {class_name: percentile_interval(values[:, column])
                              for column, class_name in enumerate(names)}
    with warnings.catch_warnings():   # a resample holding no positive of any entered class
      warnings.simplefilter("ignore", RuntimeWarning)
      macro = (np.nanmean(values[:, columns], axis=1) if columns
               else np.full(resamples, np.nan))
    result[f"{name}_macro_ci95"] = percentile_interval(macro)
  return result


# ----------------------------------------------------------------------------- bootstrap


def patient_resamples(patient_ids, *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
  """Bootstrap resamples of the PATIENTS (with replacement).

  Images of one patient are not independent; resampling images would understate the
  spread when patients have several. Each resample draws as many patients as there are,
  with replacement; an image weighs as often as its patient was drawn.

  Args:
    patient_ids: [n] patient of every example.
    resamples: how many.
    seed: fixes the resamples (the same for every statistic of the same patients).

  Returns:
    (patient_index [n] int: each example's patient, counts [resamples, patients] float32:
    how often each resample drew each patient).
  """
  _, patient_index = np.unique(np.asarray(patient_ids).reshape(-1), return_inverse=True)
  patient_index = patient_index.reshape(-1)
  num_patients = int(patient_index.max()) + 1 if patient_index.size else 0
  rng = np.random.default_rng(seed)
  counts = np.zeros((resamples, num_patients), np.float32)
  chunk = max(1, 4_000_000 // max(num_patients, 1))
  for start in range(0, resamples, chunk):
    rows = min(chunk, resamples - start)
    draws = rng.integers(0, num_patients, size=(rows, num_patients))
    draws += np.arange(rows)[:, None] * num_patients
    counts[start:start + rows] = np.bincount(
        draws.reshape(-1), minlength=rows * num_patients).reshape(rows, num_patients)
  return patient_index, counts


def _patient_sums(patient_index: np.ndarray, groups: np.ndarray, num_patients: int,
                  num_groups: int):
  """Sparse [patients, groups] counts of the examples of each patient in each group."""
  import scipy.sparse
  return scipy.sparse.csr_matrix(
      (np.ones(patient_index.size, np.float32), (patient_index, groups)),
      shape=(num_patients, num_groups))


def weighted_auroc(truth, scores, patient_index, counts) -> np.ndarray:
  """AUROC of every patient resample (ties count one half, as roc_auc_score).

  Mann-Whitney with weights: the weight of (positive, negative) pairs ranked right over
  the weight of all such pairs, an image weighing as often as its patient was drawn. The
  smaller of the two classes is queried against the larger one cut into segments at the
  query scores, whose weights are one sparse product with the resample counts, so a
  resample costs O(examples), not a sort.

  Args:
    truth: [n] 0/1; scores: [n].
    patient_index, counts: from `patient_resamples`.

  Returns:
    [resamples] AUROC, NaN where a resample has no positive or no negative.
  """
  truth = np.asarray(truth).astype(bool)
  scores = np.asarray(scores, np.float64)
  queries_are_positive = truth.sum() <= (~truth).sum()
  query = np.flatnonzero(truth if queries_are_positive else ~truth)
  other = np.flatnonzero(~truth if queries_are_positive else truth)
  other = other[np.argsort(scores[other], kind="stable")]
  other_scores = scores[other]
  below = np.searchsorted(other_scores, scores[query], side="left")   # scored lower
  up_to = np.searchsorted(other_scores, scores[query], side="right")  # lower or tied
  boundaries = np.unique(np.concatenate([[0, other.size], below, up_to]))
  segment = np.searchsorted(boundaries, np.arange(other.size), side="right") - 1
  # Weight of the other class in each segment, per resample: [segments, resamples].
  segment_weights = np.asarray(
      _patient_sums(patient_index[other], segment, counts.shape[1],
                    boundaries.size - 1).T @ counts.T)
  cumulative = np.zeros((boundaries.size, counts.shape[0]), np.float64)
  np.cumsum(segment_weights, axis=0, out=cumulative[1:])
  lower = cumulative[np.searchsorted(boundaries, below)]      # [queries, resamples]
  tied = cumulative[np.searchsorted(boundaries, up_to)] - lower
  query_weights = counts[:, patient_index[query]].T.astype(np.float64)  # [queries, resamples]
  other_total = cumulative[-1]
  ranked = lower + 0.5 * tied if queries_are_positive else other_total - lower - 0.5 * tied
  numerator = np.einsum("qr,qr->r", query_weights, ranked)
  pairs = query_weights.sum(axis=0) * other_total
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(pairs > 0, numerator / pairs, np.nan)


def percentile_interval(values, level: float = 0.95):
  """[low, high] percentile interval of bootstrap values (NaNs dropped); None if none."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  if not values.size:
    return None
  tail = 50.0 * (1.0 - level)
  low, high = np.percentile(values, [tail, 100.0 - tail])
  return [float(low), float(high)]


def bootstrap_mean_interval(values, patient_ids, *, resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = BOOTSTRAP_SEED):
  """95 % interval of the mean of per-example `values` (e.g. correct = 1), by patient."""
  patient_index, counts = patient_resamples(patient_ids, resamples=resamples, seed=seed)
  num_patients = counts.shape[1]
  per_patient = np.bincount(patient_index, weights=np.asarray(values, np.float64),
                            minlength=num_patients)
  images = np.bincount(patient_index, minlength=num_patients).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return percentile_interval((counts @ per_patient) / (counts @ images))
