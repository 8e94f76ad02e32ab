"""Cosine geometry of features: k nearest neighbours (votes on the device, label scores),
the mean cosine similarity within vs between classes, and the patient shortcut (is an
image's nearest neighbour another image of its patient?)."""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalise(features: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(features, axis=-1, keepdims=True)
  return features / np.maximum(norms, 1e-12)


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_cosine(test_chunk, train, k: int):
  similarity = jnp.dot(test_chunk, train.T, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.top_k(similarity, k)


def knn_neighbours(train_features, test_features, *, k: int = 20, chunk_size: int = 1024,
                   device: Optional[jax.Device] = None) -> tuple[np.ndarray, np.ndarray]:
  """The k most cosine-similar train rows of every test row, on the device.

  Args:
    train_features: [n_train, d]; test_features: [n_test, d].
    k: neighbours (capped at n_train).
    chunk_size: test rows per similarity block ([chunk, n_train] on the device).
    device: default the first local device.

  Returns:
    (similarity [n_test, k] float64, index [n_test, k] int64), most similar first.
  """
  device = device or jax.local_devices()[0]
  train = jax.device_put(l2_normalise(np.asarray(train_features, np.float32)), device)
  test = l2_normalise(np.asarray(test_features, np.float32))
  k = int(min(k, train.shape[0]))
  similarities, indices = [], []
  for start in range(0, test.shape[0], chunk_size):
    chunk = test[start:start + chunk_size]
    if chunk.shape[0] < chunk_size and test.shape[0] > chunk_size:
      # Pad the last chunk to the common shape: one compilation for the whole split.
      chunk = np.concatenate([chunk, np.zeros((chunk_size - chunk.shape[0], chunk.shape[1]),
                                              chunk.dtype)])
    similarity, index = _top_k_cosine(jax.device_put(chunk, device), train, k)
    rows = min(chunk_size, test.shape[0] - start)
    similarities.append(np.asarray(similarity, np.float64)[:rows])
    indices.append(np.asarray(index, np.int64)[:rows])
  if not similarities:
    return np.zeros((0, k)), np.zeros((0, k), np.int64)
  return np.concatenate(similarities), np.concatenate(indices)


def _neighbour_weights(similarity: np.ndarray, weighting: str, temperature: float
                       ) -> np.ndarray:
  if weighting not in ("majority", "weighted"):
    raise ValueError(f"knn: weighting={weighting!r}; accepted: 'majority', 'weighted'.")
  if weighting == "majority":
    return np.ones_like(similarity)
  return np.exp((similarity - 1.0) / temperature)  # exp(s / T) up to a per-row constant


def knn_votes(neighbours: tuple[np.ndarray, np.ndarray], train_labels, *,
              weighting: str = "majority", temperature: float = 0.07,
              num_classes: Optional[int] = None) -> np.ndarray:
  """Class votes of precomputed neighbours (see `knn_neighbours`).

  Args:
    neighbours: (similarity [n_test, k], index [n_test, k]) into the train rows.
    train_labels: [n_train] ints >= 0.
    weighting: 'majority' (one vote per neighbour; ties go to the smaller class id) or
      'weighted' (vote exp(similarity / temperature), as in Wu et al. 2018 / DINO).
    num_classes: columns of the result (default max train label + 1).

  Returns:
    [n_test, num_classes] vote scores.
  """
  similarity, index = neighbours
  train_labels = np.asarray(train_labels).astype(np.int64)
  if train_labels.size and train_labels.min() < 0:
    raise ValueError("knn: train_labels must be >= 0 (drop undefined labels first).")
  weight = _neighbour_weights(similarity, weighting, temperature)
  num_classes = int(num_classes or (int(train_labels.max()) + 1))
  votes = np.zeros((similarity.shape[0], num_classes), np.float64)
  rows = np.repeat(np.arange(similarity.shape[0]), similarity.shape[1])
  np.add.at(votes, (rows, train_labels[index].reshape(-1)), weight.reshape(-1))
  return votes


def knn_label_scores(neighbours: tuple[np.ndarray, np.ndarray], train_targets, *,
                     weighting: str = "weighted", temperature: float = 0.07) -> np.ndarray:
  """Per-label scores of precomputed neighbours: the (weighted) fraction of neighbours
  holding each label. For multi-hot targets [n_train, C] this is a multi-label kNN
  classifier whose scores give a per-finding AUROC.

  Returns:
    [n_test, C] scores in [0, 1].
  """
  similarity, index = neighbours
  weight = _neighbour_weights(similarity, weighting, temperature)  # [n_test, k]
  targets = np.asarray(train_targets, np.float64)                   # [n_train, C]
  return np.einsum("tk,tkc->tc", weight, targets[index]) / weight.sum(axis=1, keepdims=True)


def knn_predict(train_features, train_labels, test_features, *, k: int = 20,
                weighting: str = "majority", temperature: float = 0.07,
                chunk_size: int = 1024) -> np.ndarray:
  """Cosine k-nearest-neighbour class votes from train to test.

  Args:
    train_features: [n_train, d]. train_labels: [n_train] ints >= 0.
    test_features: [n_test, d].
    k: neighbours (capped at n_train).
    weighting, temperature: see `knn_votes`.
    chunk_size: test rows per similarity block ([chunk, n_train] in memory).

  Returns:
    [n_test, num_classes] vote scores (num_classes = max train label + 1).
  """
  _neighbour_weights(np.zeros(1), weighting, temperature)  # validates `weighting` first
  neighbours = knn_neighbours(train_features, test_features, k=k, chunk_size=chunk_size)
  return knn_votes(neighbours, train_labels, weighting=weighting, temperature=temperature)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, k: int = 20,
                 weighting: str = "majority", temperature: float = 0.07) -> float:
  """Top-1 accuracy of cosine kNN (see `knn_predict`)."""
  votes = knn_predict(train_features, train_labels, test_features, k=k,
                      weighting=weighting, temperature=temperature)
  return float(np.mean(np.argmax(votes, axis=1) == np.asarray(test_labels)))


def feature_quality(features, labels) -> dict:
  """Mean cosine similarity of pairs of distinct examples within vs between classes.

  Computed exactly from per-class sums of L2-normalised features (O(n d)):
  sum over pairs i != j in class c of cos(x_i, x_j) = ||s_c||^2 - n_c.
  Examples with a negative label are ignored.

  Returns:
    {'within_class_cosine', 'between_class_cosine', 'cosine_gap' (within - between)};
    NaN where no such pair exists.
  """
  labels = np.asarray(labels).reshape(-1)
  keep = labels >= 0
  normalised = l2_normalise(np.asarray(features, np.float64)[keep])
  labels = labels[keep]
  classes, index = np.unique(labels, return_inverse=True)
  class_sums = np.zeros((classes.size, normalised.shape[1]))
  np.add.at(class_sums, index, normalised)
  class_counts = np.bincount(index, minlength=classes.size).astype(np.float64)
  # Zero-norm rows contribute 0 to the sums but were counted: use their true self-sim.
  self_similarity = np.sum(normalised * normalised, axis=1)
  self_per_class = np.bincount(index, weights=self_similarity, minlength=classes.size)
  within_sum = float(np.sum(np.sum(class_sums ** 2, axis=1) - self_per_class))
  within_pairs = float(np.sum(class_counts * (class_counts - 1)))
  total = class_sums.sum(axis=0)
  all_sum = float(total @ total - self_similarity.sum())
  n = float(labels.size)
  between_pairs = n * (n - 1) - within_pairs
  within = within_sum / within_pairs if within_pairs else float("nan")
  between = (all_sum - within_sum) / between_pairs if between_pairs else float("nan")
  return {"within_class_cosine": within, "between_class_cosine": between,
          "cosine_gap": within - between}


class PatientShortcut(NamedTuple):
  """See `patient_shortcut`."""
  rate: float
  chance: float
  num_images: int


def patient_shortcut(features, patient_ids, *, chunk_size: int = 1024) -> PatientShortcut:
  """How often an image's nearest neighbour is another image of the same patient.

  Within one split: for every image, its cosine nearest neighbour among the other images
  of the split (itself excluded; ties go to the lower row). The rate counts only the images
  whose patient has at least 2 images in the split, the only ones that can score: a
  split of single-image patients has no patient shortcut to measure (NaN, 0 images), and
  adding singletons does not dilute the figure. Chance is what a uniformly random
  neighbour would give the same images: (n_patient(i) - 1) / (n - 1), averaged over them.
  A rate far above chance means the features recognise people.

  Args:
    features: [n, d] (cosine: only directions count).
    patient_ids: [n] any comparable ids.
    chunk_size: query rows per similarity block on the device.

  Returns:
    PatientShortcut(rate, chance, num_images): num_images is the number of images counted.
  """
  features = np.asarray(features, np.float32)
  patient_ids = np.asarray(patient_ids).reshape(-1)
  n = features.shape[0]
  if patient_ids.shape[0] != n:
    raise ValueError(f"patient_shortcut: {patient_ids.shape[0]} patient ids for {n} "
                     f"feature rows.")
  _, patient_index, patient_sizes = np.unique(patient_ids, return_inverse=True,
                                              return_counts=True)
  images_per_patient = patient_sizes[patient_index]  # [n]
  counted = images_per_patient >= 2
  if not counted.any():
    return PatientShortcut(float("nan"), float("nan"), 0)
  # The 2 most similar rows of each row: the nearest other row is the first that is not
  # the row itself (a duplicate of it may come first).
  _, index = knn_neighbours(features, features, k=2, chunk_size=chunk_size)
  rows = np.arange(n)
  nearest = np.where(index[:, 0] != rows, index[:, 0], index[:, 1])
  same_patient = patient_index[nearest] == patient_index
  chance = (images_per_patient - 1) / (n - 1)
  return PatientShortcut(float(np.mean(same_patient[counted])),
                         float(np.mean(chance[counted])), int(counted.sum()))
