"""Evaluation maths for frozen representations: clustering, kNN, linear probe.

Pure functions over numpy/JAX arrays; no file or dataset access (that lives in
`simclr_jax/evaluate.py`). The headline metric of the system this project replaces is
the *clustering accuracy* of k-means (k = 14) on encoder features, which is computed
here as:

  1. `kmeans` (JAX, on the default device): k-means++ seeding, jitted Lloyd iterations,
     `n_init` restarts from one fixed seed, lowest inertia wins. scikit-learn's `KMeans`
     is the reference it is tested against.
  2. `clustering_accuracy`: the best one-to-one matching of clusters to classes
     (Hungarian algorithm, `scipy.optimize.linear_sum_assignment`, on the
     cluster x class contingency matrix); the fraction of examples whose class is the
     class matched to their cluster. With more clusters than classes the unmatched
     clusters count as wrong; with fewer, the unmatched classes do.

Representation-quality companions: NMI and ARI (scikit-learn), purity (many-to-one
matching), cosine kNN (votes on the device), a logistic-regression linear probe (L-BFGS on
the device, scikit-learn's objective; scikit-learn itself is the reference and an
option), label-efficiency subsampling by patient, and the mean cosine similarity within
vs between classes.

The evaluators in `simclr_jax/evaluation/` decide which of these run on which examples;
this module holds only the maths, so the offline evaluator, the online monitor and the
benchmarks share it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import sklearn.base
import sklearn.linear_model
import sklearn.metrics
import sklearn.multiclass
import sklearn.preprocessing


# --------------------------------------------------------------------------------------
# Cluster-vs-label scores.
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# k-means in JAX.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KMeansResult:
  assignments: np.ndarray  # [n] int32 cluster id of every example
  centroids: np.ndarray    # [k, d] float32
  inertia: float           # sum of squared distances to the assigned centroid
  num_iterations: int      # Lloyd iterations of the winning restart
  restart_inertias: tuple  # inertia of every restart, in restart order


def _squared_distances(points: jax.Array, points_sq_norm: jax.Array,
                       centroids: jax.Array) -> jax.Array:
  """||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 for [m, d] x [k, d] -> [m, k].

  Never materialises [m, k, d]; HIGHEST precision keeps the cross term in float32 on
  accelerators (TF32/bf16 matmuls would blur nearby centroids).
  """
  cross = jnp.dot(points, centroids.T, precision=jax.lax.Precision.HIGHEST)
  centroid_sq_norm = jnp.sum(centroids * centroids, axis=-1)
  return jnp.maximum(points_sq_norm[:, None] - 2.0 * cross + centroid_sq_norm[None], 0.0)


def _assign_and_accumulate(chunks, chunk_sq_norms, valid, centroids):
  """One E-step over all chunks + the sums for the M-step.

  Returns:
    assignments [c, chunk] int32, min squared distance [c, chunk] (0 on padding),
    per-cluster feature sums [k, d], per-cluster counts [k].
  """
  k, d = centroids.shape

  def body(carry, chunk_inputs):
    sums, counts = carry
    points, sq_norm, is_valid = chunk_inputs
    distances = _squared_distances(points, sq_norm, centroids)  # [chunk, k]
    assignment = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    min_distance = jnp.where(is_valid, jnp.min(distances, axis=-1), 0.0)
    one_hot = jax.nn.one_hot(assignment, k, dtype=points.dtype) * is_valid[:, None]
    sums = sums + jnp.dot(one_hot.T, points, precision=jax.lax.Precision.HIGHEST)
    counts = counts + one_hot.sum(axis=0)
    return (sums, counts), (assignment, min_distance)

  init = (jnp.zeros((k, d), centroids.dtype), jnp.zeros((k,), centroids.dtype))
  (sums, counts), (assignments, min_distances) = jax.lax.scan(
      body, init, (chunks, chunk_sq_norms, valid))
  return assignments, min_distances, sums, counts


def _distances_to(chunks, chunk_sq_norms, valid, centroids):
  """[c, chunk, m] squared distances of every point to m centroids (0 on padding)."""
  def one_chunk(inputs):
    points, sq_norm, is_valid = inputs
    return jnp.where(is_valid[:, None], _squared_distances(points, sq_norm, centroids), 0.0)
  return jax.lax.map(one_chunk, (chunks, chunk_sq_norms, valid))


def _kmeans_plus_plus(key, chunks, chunk_sq_norms, valid, k: int, num_local_trials: int):
  """Greedy k-means++ seeding (as scikit-learn): at each step, draw `num_local_trials`
  candidates with probability proportional to D(x)^2 and keep the one that lowers the
  potential most. One pass over the data per centroid."""
  flat_points = chunks.reshape(-1, chunks.shape[-1])  # [c * chunk, d]
  flat_valid = valid.reshape(-1)
  d = flat_points.shape[-1]
  first_key, loop_key = jax.random.split(key)
  logits_valid = jnp.where(flat_valid, 0.0, -jnp.inf)
  first = jax.random.categorical(first_key, logits_valid)
  centroids = jnp.zeros((k, d), flat_points.dtype).at[0].set(flat_points[first])
  min_distance = _distances_to(chunks, chunk_sq_norms, valid, centroids[:1])[..., 0]

  def add_centroid(i, state):
    centroids, min_distance = state  # min_distance: [c, chunk]
    flat_min = min_distance.reshape(-1)
    # All-zero potential (only duplicates left) => uniform over the valid points.
    logits = jnp.where(flat_valid, jnp.log(jnp.maximum(flat_min, 1e-30)), -jnp.inf)
    logits = jnp.where(jnp.sum(flat_min) > 0, logits, logits_valid)
    candidates = jax.random.categorical(jax.random.fold_in(loop_key, i), logits,
                                        shape=(num_local_trials,))
    candidate_points = flat_points[candidates]  # [trials, d]
    distances = _distances_to(chunks, chunk_sq_norms, valid, candidate_points)
    new_mins = jnp.minimum(min_distance[..., None], distances)  # [c, chunk, trials]
    best = jnp.argmin(jnp.sum(new_mins, axis=(0, 1)))
    return centroids.at[i].set(candidate_points[best]), new_mins[..., best]

  centroids, _ = jax.lax.fori_loop(1, k, add_centroid, (centroids, min_distance))
  return centroids


@functools.partial(jax.jit, static_argnames=("k", "max_iter", "num_local_trials"))
def _kmeans_single(key, chunks, chunk_sq_norms, valid, tolerance, *, k: int, max_iter: int,
                   num_local_trials: int):
  """One k-means++ seeded Lloyd run. Returns (assignments, centroids, inertia, iterations)."""
  centroids = _kmeans_plus_plus(key, chunks, chunk_sq_norms, valid, k, num_local_trials)
  flat_points = chunks.reshape(-1, chunks.shape[-1])

  def lloyd_cond(state):
    iteration, _, shift, changed, _ = state
    return (iteration < max_iter) & (shift > tolerance) & changed

  def lloyd_body(state):
    iteration, centroids, _, _, previous_assignments = state
    assignments, min_distances, sums, counts = _assign_and_accumulate(
        chunks, chunk_sq_norms, valid, centroids)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    # Empty clusters move to the points farthest from their centroid (as scikit-learn):
    # the e-th empty cluster to the e-th farthest point.
    empty = counts == 0
    farthest = jax.lax.top_k(min_distances.reshape(-1), k)[1]
    empty_rank = jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)
    new_centroids = jnp.where(empty[:, None], flat_points[farthest[empty_rank]], means)
    shift = jnp.sum((new_centroids - centroids) ** 2)
    # Same assignments as the previous iteration => the centroids have stopped moving.
    changed = jnp.any(assignments != previous_assignments)
    return iteration + 1, new_centroids, shift, changed, assignments

  state = (jnp.int32(0), centroids, jnp.float32(jnp.inf), jnp.bool_(True),
           jnp.full(valid.shape, -1, jnp.int32))
  iterations, centroids, _, _, _ = jax.lax.while_loop(lloyd_cond, lloyd_body, state)
  # Final E-step so that the labels belong to the returned centroids.
  assignments, min_distances, _, _ = _assign_and_accumulate(
      chunks, chunk_sq_norms, valid, centroids)
  return assignments, centroids, jnp.sum(min_distances), iterations


def kmeans(features, k: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           seed: int = 0, chunk_size: int = 4096, device: Optional[jax.Device] = None
           ) -> KMeansResult:
  """k-means on one device (JAX): k-means++ seeding, Lloyd iterations, `n_init` restarts.

  Distances are computed chunk by chunk (`chunk_size` rows x k centroids at a time, via
  ||x||^2 - 2 x.c + ||c||^2, never an [n, k, d] tensor), so memory is one centred, padded
  float32 copy of the features on the device plus O(chunk_size * (k + d)): 100k x 2048
  features need ~0.8 GB there. Convergence follows scikit-learn: stop
  when the total squared centroid shift is <= tol * mean feature variance, when no
  assignment changes, or after `max_iter` iterations. Empty clusters are moved to the
  points farthest from their centroids. The restart with the lowest inertia is returned.

  Args:
    features: [n, d] float array.
    k: number of clusters (1 <= k <= n).
    n_init: number of restarts; restart r is seeded with fold_in(PRNGKey(seed), r).
    max_iter: maximum Lloyd iterations per restart.
    tol: relative tolerance on the centroid shift (scikit-learn semantics).
    seed: fixes the result for given features, k and n_init.
    chunk_size: rows per distance block.
    device: where to run; default the first local device.

  Returns:
    KMeansResult(assignments [n] int32, centroids [k, d] float32, inertia, ...).
  """
  features = np.asarray(features, dtype=np.float32)
  if features.ndim != 2:
    raise ValueError(f"kmeans: features must be [n, d], got shape {features.shape}.")
  n = features.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"kmeans: k={k} must be between 1 and the number of examples ({n}).")
  if n_init < 1:
    raise ValueError(f"kmeans: n_init={n_init} must be >= 1.")
  if not np.all(np.isfinite(features)):
    raise ValueError("kmeans: features contain NaN or Inf; check the encoder output.")
  device = device or jax.local_devices()[0]
  chunk_size = int(max(1, min(chunk_size, n)))
  # Centring does not change k-means but keeps ||x||^2 - 2x.c + ||c||^2 well conditioned.
  mean = features.mean(axis=0, dtype=np.float64)
  tolerance = np.float32(tol * float(np.mean(features.var(axis=0, dtype=np.float64))))
  mean = mean.astype(np.float32)
  num_chunks = -(-n // chunk_size)
  # One host copy: centred rows, zero padding to whole chunks.
  padded = np.zeros((num_chunks * chunk_size, features.shape[1]), np.float32)
  np.subtract(features, mean, out=padded[:n])
  chunks = jax.device_put(padded.reshape(num_chunks, chunk_size, -1), device)
  del padded
  valid = jax.device_put((np.arange(num_chunks * chunk_size) < n).reshape(num_chunks, -1),
                         device)
  chunk_sq_norms = jax.jit(lambda x: jnp.sum(x * x, axis=-1))(chunks)
  num_local_trials = 2 + int(math.log(k))
  base_key = jax.random.PRNGKey(seed)
  best = None
  inertias = []
  for restart in range(n_init):
    key = jax.device_put(jax.random.fold_in(base_key, restart), device)
    assignments, centroids, inertia, iterations = _kmeans_single(
        key, chunks, chunk_sq_norms, valid, tolerance, k=k, max_iter=max_iter,
        num_local_trials=num_local_trials)
    inertia = float(inertia)
    inertias.append(inertia)
    if best is None or inertia < best[2]:
      best = (assignments, centroids, inertia, int(iterations))
  assignments, centroids, inertia, iterations = best
  return KMeansResult(
      assignments=np.asarray(assignments).reshape(-1)[:n].astype(np.int32),
      centroids=np.asarray(centroids) + mean,
      inertia=inertia,
      num_iterations=iterations,
      restart_inertias=tuple(inertias))


# --------------------------------------------------------------------------------------
# kNN.
# --------------------------------------------------------------------------------------


def _l2_normalise(features: np.ndarray) -> np.ndarray:
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
  train = jax.device_put(_l2_normalise(np.asarray(train_features, np.float32)), device)
  test = _l2_normalise(np.asarray(test_features, np.float32))
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


# --------------------------------------------------------------------------------------
# Logistic regression on the device (the linear probe's solver).
# --------------------------------------------------------------------------------------

LOSS_KINDS = ("sigmoid", "softmax")
PROBE_SOLVERS = ("jax", "sklearn")


@dataclasses.dataclass(frozen=True)
class LogisticRegression:
  """A fitted probe: standardisation of the train features, then a linear map."""
  kind: str              # 'sigmoid' (independent columns) | 'softmax' (one multinomial)
  mean: np.ndarray       # [d] train feature mean
  scale: np.ndarray      # [d] train feature std (1 where constant), as StandardScaler
  weights: np.ndarray    # [d, C]
  bias: np.ndarray       # [C]
  num_iterations: int
  gradient_max: float    # max |gradient| of the objective at the solution

  def probabilities(self, features) -> np.ndarray:
    """[n, C] sigmoid (per column) or softmax probabilities of `features` [n, d]."""
    return np.asarray(_probabilities(jnp.asarray(features, jnp.float32), self.mean,
                                     self.scale, self.weights, self.bias, kind=self.kind))


@functools.partial(jax.jit, static_argnames=("kind",))
def _probabilities(features, mean, scale, weights, bias, *, kind: str):
  logits = jnp.dot((features - mean) / scale, weights,
                   precision=jax.lax.Precision.HIGHEST) + bias
  return jax.nn.sigmoid(logits) if kind == "sigmoid" else jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _fit_logistic_regression(features, targets, example_weights, output_mask, softmax,
                             regularisation, tolerance, *, max_iter: int):
  """L-BFGS on scikit-learn's LogisticRegression objective (see `fit_logistic_regression`).

  features [n, d] (raw), targets [n, C] 0/1 (multi-hot for sigmoid columns, one-hot for
  softmax), example_weights [n] (0 on padding rows), output_mask [C] (outputs that take
  part; the others keep zero weights), softmax: a traced bool, so both kinds share one
  compilation per shape.
  """
  highest = jax.lax.Precision.HIGHEST
  total = jnp.sum(example_weights)
  mean = jnp.dot(example_weights, features, precision=highest) / total
  variance = jnp.dot(example_weights, jnp.square(features - mean), precision=highest) / total
  # StandardScaler: population std, constant features keep scale 1.
  scale = jnp.where(variance > 1e-12, jnp.sqrt(variance), 1.0)
  inputs = (features - mean) / scale
  l2_strength = 1.0 / (regularisation * total)
  # Outputs that do not take part: a huge negative logit (softmax), a zero loss (sigmoid).
  logit_offset = jnp.where(output_mask > 0, 0.0, -1e9)

  def objective(params):
    logits = jnp.dot(inputs, params["weights"], precision=highest) + params["bias"]
    sigmoid_loss = jnp.sum((jax.nn.softplus(logits) - targets * logits) * output_mask, axis=-1)
    softmax_loss = (jax.nn.logsumexp(logits + logit_offset, axis=-1)
                    - jnp.sum(targets * logits, axis=-1))
    per_example = jnp.where(softmax, softmax_loss, sigmoid_loss)
    data_term = jnp.sum(example_weights * per_example) / total
    return data_term + 0.5 * l2_strength * jnp.sum(jnp.square(params["weights"]))

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def gradient_max(state):
    gradient = optax.tree_utils.tree_get(state, "grad")
    return optax.tree_utils.tree_norm(gradient, ord="inf")

  def step(carry):
    params, state = carry
    value, gradient = value_and_grad(params, state=state)
    updates, state = solver.update(gradient, state, params, value=value, grad=gradient,
                                   value_fn=objective)
    return optax.apply_updates(params, updates), state

  def not_done(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, "count")
    value = optax.tree_utils.tree_get(state, "value")
    return (count == 0) | ((count < max_iter) & (gradient_max(state) >= tolerance) &
                           jnp.isfinite(value))

  params = {"weights": jnp.zeros((features.shape[1], targets.shape[1]), jnp.float32),
            "bias": jnp.zeros((targets.shape[1],), jnp.float32)}
  params, state = jax.lax.while_loop(not_done, step, (params, solver.init(params)))
  return (mean, scale, params["weights"], params["bias"],
          optax.tree_utils.tree_get(state, "count"), gradient_max(state))


def _bucket(size: int, granularity: int, smallest: int) -> int:
  """`size` padded to a multiple of `granularity` (a power of two below it, at least
  `smallest`), so problems of nearby sizes share one compilation."""
  if size >= granularity:
    return -(-size // granularity) * granularity
  return max(smallest, 1 << (size - 1).bit_length())


def _pad_to(array: np.ndarray, size: int, axis: int) -> np.ndarray:
  padding = [(0, 0)] * array.ndim
  padding[axis] = (0, size - array.shape[axis])
  return np.pad(array, padding)


def fit_logistic_regression(features, targets, *, kind: str, regularisation: float = 1.0,
                            max_iter: int = 1000, tol: float = 1e-5,
                            device: Optional[jax.Device] = None) -> LogisticRegression:
  """scikit-learn's `LogisticRegression(C=regularisation)` on standardised features, on the
  device (JAX + optax L-BFGS).

  Minimises, as scikit-learn's lbfgs solver does,
    (1/n) sum_i loss_i + 1 / (2 C n) ||W||^2        (the intercept is not penalised)
  on features standardised with the train mean and population std (StandardScaler), with
  loss = binary cross-entropy summed over independent sigmoid columns (`kind='sigmoid'`:
  one-vs-rest / multi-label, one binary problem per column) or the multinomial
  cross-entropy (`kind='softmax'`). Stops when max |gradient| < tol (scikit-learn uses
  1e-4 on the same objective) or after max_iter iterations. Sigmoid columns whose train
  targets are constant cannot be learnt: their weights stay 0 (score 0.5).

  Examples, features and outputs are zero-padded to a few bucket sizes (padding rows
  weigh 0; padding features are constant, so their weights stay 0): the probes of one
  evaluation (all data, label fractions, both kinds) share a handful of compilations.

  Args:
    features: [n, d] float.
    targets: sigmoid: [n, C] 0/1; softmax: [n] class ids in [0, C).
    kind: 'sigmoid' | 'softmax'.
    regularisation: C, the inverse L2 strength.
    max_iter, tol: L-BFGS stopping rule.
    device: default the first local device.

  Returns:
    LogisticRegression (host arrays).
  """
  if kind not in LOSS_KINDS:
    raise ValueError(f"logistic regression kind={kind!r}; accepted: {LOSS_KINDS}.")
  features = np.asarray(features, np.float32)
  n, dim = features.shape
  if kind == "sigmoid":
    targets = np.asarray(targets, np.float32).reshape(n, -1)
    output_mask = (targets.min(axis=0) != targets.max(axis=0)).astype(np.float32)
  else:
    class_ids = np.asarray(targets, np.int64).reshape(n)
    targets = np.eye(int(class_ids.max()) + 1, dtype=np.float32)[class_ids]
    output_mask = np.ones(targets.shape[1], np.float32)
  num_outputs = targets.shape[1]
  rows, columns = _bucket(n, 4096, 128), _bucket(dim, 512, 128)
  outputs = _bucket(num_outputs, 64, 16)
  example_weights = _pad_to(np.ones(n, np.float32), rows, 0)
  inputs = (_pad_to(_pad_to(features, rows, 0), columns, 1),
            _pad_to(_pad_to(targets, rows, 0), outputs, 1), example_weights,
            _pad_to(output_mask, outputs, 0), np.bool_(kind == "softmax"))
  device = device or jax.local_devices()[0]
  mean, scale, weights, bias, iterations, gradient = _fit_logistic_regression(
      *jax.device_put(inputs, device), np.float32(regularisation), np.float32(tol),
      max_iter=int(max_iter))
  return LogisticRegression(kind=kind, mean=np.asarray(mean)[:dim],
                            scale=np.asarray(scale)[:dim],
                            weights=np.asarray(weights)[:dim, :num_outputs],
                            bias=np.asarray(bias)[:num_outputs],
                            num_iterations=int(iterations), gradient_max=float(gradient))


def auroc_or_nan(targets: np.ndarray, scores: np.ndarray) -> float:
  """AUROC, NaN when the test set holds only one of the two classes (undefined)."""
  if targets.min() == targets.max():
    return float("nan")
  return float(sklearn.metrics.roc_auc_score(targets, scores))


def nan_mean(values) -> float:
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else float("nan")


def _sklearn_scores(train_x, train_y, test_x, *, multi_label: bool, regularisation: float,
                    max_iter: int, seed: int) -> np.ndarray:
  """The reference probe: StandardScaler + scikit-learn LogisticRegression on the CPU."""
  scaler = sklearn.preprocessing.StandardScaler().fit(np.asarray(train_x, np.float64))
  train_x = scaler.transform(np.asarray(train_x, np.float64))
  test_x = scaler.transform(np.asarray(test_x, np.float64))
  regression = sklearn.linear_model.LogisticRegression(
      C=regularisation, max_iter=max_iter, random_state=seed)
  if multi_label:
    scores = np.full((test_x.shape[0], train_y.shape[1]), 0.5)
    for label in range(train_y.shape[1]):
      column = train_y[:, label]
      if column.min() != column.max():  # constant columns cannot be learnt: score 0.5
        scores[:, label] = sklearn.base.clone(regression).fit(train_x, column).predict_proba(
            test_x)[:, 1]
    return scores
  return regression.fit(train_x, train_y).predict_proba(test_x)


def linear_probe(train_features, train_targets, test_features, test_targets, *,
                 multi_label: bool, regularisation: float = 1.0, max_iter: int = 1000,
                 class_names: Optional[Sequence[str]] = None, seed: int = 0,
                 solver: str = "jax") -> dict:
  """Logistic regression on frozen, standardised features: fit on train, score on test.

  Features are standardised with the train mean/std (as scikit-learn's StandardScaler).
  Multi-label targets: one binary logistic regression per label (independent sigmoid
  columns); single-label targets: one multinomial logistic regression (binary problems:
  one sigmoid, as scikit-learn).

  Args:
    train_features, test_features: [n, d].
    train_targets, test_targets: multi-hot [n, C] (multi_label) or class ids [n].
    multi_label: which of the two target kinds is given.
    regularisation: inverse L2 strength C of LogisticRegression.
    max_iter: solver iterations.
    class_names: names for the per-class AUROC keys (default: the index as a string).
    seed: scikit-learn's random_state (solver 'sklearn').
    solver: 'jax' (L-BFGS on the device, `fit_logistic_regression`) or 'sklearn' (the
      CPU reference).

  Returns:
    multi-label: {'linear_auroc': {name: auroc}, 'linear_auroc_macro': mean over labels
    with a defined AUROC}; single-label: {'linear_accuracy', 'linear_auroc':
    {name: one-vs-rest auroc}, 'linear_auroc_macro'}. AUROCs undefined on the test set
    (only one class present) are NaN and left out of the macro mean.
  """
  if solver not in PROBE_SOLVERS:
    raise ValueError(f"linear probe solver={solver!r}; accepted: {PROBE_SOLVERS}.")
  if multi_label:
    train_y = np.asarray(train_targets).astype(np.int64)
    test_y = np.asarray(test_targets).astype(np.int64)
    if train_y.ndim != 2 or test_y.shape[1:] != train_y.shape[1:]:
      raise ValueError(f"linear_probe: multi-label targets must be [n, C] multi-hot; got "
                       f"train {train_y.shape}, test {test_y.shape}.")
    num_labels = train_y.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_labels)]
    if solver == "sklearn":
      scores = _sklearn_scores(train_features, train_y, test_features, multi_label=True,
                               regularisation=regularisation, max_iter=max_iter, seed=seed)
    else:
      scores = fit_logistic_regression(train_features, train_y, kind="sigmoid",
                                       regularisation=regularisation,
                                       max_iter=max_iter).probabilities(test_features)
    per_label = {names[j]: auroc_or_nan(test_y[:, j], scores[:, j]) for j in range(num_labels)}
    return {"linear_auroc": per_label, "linear_auroc_macro": nan_mean(list(per_label.values()))}

  train_y = np.asarray(train_targets).astype(np.int64).reshape(-1)
  test_y = np.asarray(test_targets).astype(np.int64).reshape(-1)
  present = np.unique(train_y)
  if present.size < 2:
    raise ValueError(f"linear_probe: the train targets hold only class {present.tolist()}; "
                     "a classifier needs at least two classes.")
  if solver == "sklearn":
    probabilities = _sklearn_scores(train_features, train_y, test_features, multi_label=False,
                                    regularisation=regularisation, max_iter=max_iter,
                                    seed=seed)
  elif present.size == 2:
    # A binary problem is one sigmoid (as scikit-learn), not a two-class softmax.
    positive = fit_logistic_regression(
        train_features, (train_y == present[1])[:, None], kind="sigmoid",
        regularisation=regularisation, max_iter=max_iter).probabilities(test_features)[:, 0]
    probabilities = np.stack([1.0 - positive, positive], axis=1)
  else:
    # Only the classes present in train are fitted (scikit-learn's classes_).
    probabilities = fit_logistic_regression(
        train_features, np.searchsorted(present, train_y), kind="softmax",
        regularisation=regularisation, max_iter=max_iter).probabilities(test_features)
  predictions = present[np.argmax(probabilities, axis=1)]
  names = (list(class_names) if class_names is not None
           else [str(i) for i in range(int(max(train_y.max(), test_y.max())) + 1)])
  per_class = {}
  for column, class_id in enumerate(present):
    per_class[names[class_id]] = auroc_or_nan((test_y == class_id).astype(np.int64),
                                               probabilities[:, column])
  if present.size == 2:
    # One AUROC describes a binary problem; per_class holds it twice (complements).
    macro = per_class[names[present[1]]]
  else:
    macro = nan_mean(list(per_class.values()))
  return {"linear_accuracy": float(np.mean(predictions == test_y)),
          "linear_auroc": per_class, "linear_auroc_macro": macro}


# --------------------------------------------------------------------------------------
# Label efficiency.
# --------------------------------------------------------------------------------------


def patient_subsample(patient_ids, targets, fraction: float, *, seed: int = 0) -> np.ndarray:
  """Indices of a patient-wise random subsample of the training set.

  Draws round(fraction * num_patients) patients (at least one) with a fixed seed and
  keeps all their images, so no patient straddles the kept/unused split. Then, for every
  class that has a positive in the full set but none in the subsample, one more patient
  holding a positive of that class is added (drawn with the same generator), so each
  class can be learnt "where possible". The result can therefore be slightly larger
  than the fraction asks for; the caller reports the actual count.

  Args:
    patient_ids: [n] any hashable ids (one per image); use arange(n) when unknown.
    targets: [n] class ids (negative = undefined, ignored for the guarantee) or
      [n, C] multi-hot.
    fraction: in (0, 1]; 1.0 returns every index.
    seed: fixes the subsample.

  Returns:
    sorted int64 indices into the n training examples.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"label fraction {fraction} must be in (0, 1].")
  patient_ids = np.asarray(patient_ids)
  n = patient_ids.shape[0]
  if fraction == 1.0:
    return np.arange(n)
  targets = np.asarray(targets)
  if targets.ndim == 1:
    defined = targets >= 0
    num_classes = int(targets.max()) + 1 if defined.any() else 0
    positives = np.zeros((n, num_classes), bool)
    positives[np.flatnonzero(defined), targets[defined]] = True
  else:
    positives = targets.astype(bool)
  unique_patients, patient_index = np.unique(patient_ids, return_inverse=True)
  rng = np.random.default_rng(seed)
  num_patients = unique_patients.size
  num_drawn = max(1, int(round(fraction * num_patients)))
  chosen = np.zeros(num_patients, bool)
  chosen[rng.permutation(num_patients)[:num_drawn]] = True
  for label in range(positives.shape[1]):
    label_patients = np.unique(patient_index[positives[:, label]])
    if label_patients.size and not chosen[label_patients].any():
      chosen[rng.choice(label_patients)] = True
  return np.flatnonzero(chosen[patient_index])


def label_efficiency(train_features, train_targets, test_features, test_targets,
                     patient_ids, fractions: Sequence[float], *, multi_label: bool,
                     class_names: Optional[Sequence[str]] = None, seed: int = 0,
                     full_probe: Optional[dict] = None, solver: str = "jax") -> list:
  """Linear probe fitted on patient-wise subsamples of the train labels.

  Args:
    full_probe: the `linear_probe` result on all train labels, reused for fraction 1.0
      instead of fitting the same probe again.
    solver: see `linear_probe`.

  Returns:
    one dict per fraction: {'fraction', 'num_train_examples', 'num_train_patients',
    'linear_auroc_macro', ['linear_accuracy'] (single-label), 'linear_auroc'}; a
    fraction whose subsample cannot be fitted (e.g. one class only) gets an 'error'.
  """
  results = []
  patient_ids = np.asarray(patient_ids)
  train_features = np.asarray(train_features)
  train_targets = np.asarray(train_targets)
  for fraction in fractions:
    indices = patient_subsample(patient_ids, train_targets, fraction, seed=seed)
    entry = {"fraction": float(fraction), "num_train_examples": int(indices.size),
             "num_train_patients": int(np.unique(patient_ids[indices]).size)}
    if fraction == 1.0 and full_probe is not None:
      entry.update(full_probe)
      results.append(entry)
      continue
    try:
      entry.update(linear_probe(train_features[indices], train_targets[indices],
                                test_features, test_targets, multi_label=multi_label,
                                class_names=class_names, seed=seed, solver=solver))
    except ValueError as error:
      entry["error"] = str(error)
    results.append(entry)
  return results


# --------------------------------------------------------------------------------------
# Feature quality.
# --------------------------------------------------------------------------------------


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
  normalised = _l2_normalise(np.asarray(features, np.float64)[keep])
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
