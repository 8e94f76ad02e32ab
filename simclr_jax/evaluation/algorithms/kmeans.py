"""k-means in JAX on the device: k-means++ seeding, jitted Lloyd iterations, `n_init`
restarts from one fixed seed, lowest inertia wins (scikit-learn's KMeans is the reference
it is tested against)."""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


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
