"""Tests for simclr_jax/losses.py (NT-Xent)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import losses


def reference_nt_xent(z1, z2, temperature, weights=None):
  """Float64 NumPy NT-Xent written directly from the SimCLR formula, one anchor at a time."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  two_n = z.shape[0]
  n = two_n // 2
  if weights is None:
    weights = np.ones(n)
  anchor_losses, anchor_weights = [], []
  for a in range(two_n):
    positive = (a + n) % two_n
    logits = np.array([z[a] @ z[c] / temperature for c in range(two_n) if c != a])
    log_denominator = logits.max() + math.log(np.sum(np.exp(logits - logits.max())))
    anchor_losses.append(log_denominator - z[a] @ z[positive] / temperature)
    anchor_weights.append(weights[a % n])
  anchor_losses, anchor_weights = np.array(anchor_losses), np.array(anchor_weights)
  return float(np.sum(anchor_weights * anchor_losses) / np.sum(anchor_weights))


def random_projections(seed, n=6, d=5):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32),
          rng.normal(size=(n, d)).astype(np.float32))


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_matches_float64_reference(temperature):
  z1, z2 = random_projections(0)
  loss = losses.nt_xent(z1, z2, temperature)
  expected = reference_nt_xent(z1, z2, temperature)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)


def test_weighted_matches_reference_and_ones_equal_unweighted():
  z1, z2 = random_projections(1)
  weights = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5], np.float32)
  np.testing.assert_allclose(
      float(losses.nt_xent(z1, z2, 0.1, weights=weights)),
      reference_nt_xent(z1, z2, 0.1, weights), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      float(losses.nt_xent(z1, z2, 0.1, weights=np.ones(6, np.float32))),
      float(losses.nt_xent(z1, z2, 0.1)), rtol=1e-6)


def test_symmetric_and_scale_invariant_and_bfloat16():
  z1, z2 = random_projections(2)
  loss = float(losses.nt_xent(z1, z2))
  np.testing.assert_allclose(float(losses.nt_xent(z2, z1)), loss, rtol=1e-6)
  np.testing.assert_allclose(float(losses.nt_xent(3.0 * z1, 0.01 * z2)), loss, rtol=1e-5)
  bf16_loss = losses.nt_xent(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16))
  assert bf16_loss.dtype == jnp.float32
  np.testing.assert_allclose(float(bf16_loss), loss, rtol=5e-2)


def test_perfect_alignment_orthogonal_negatives_analytic():
  n, temperature = 4, 0.2
  z = np.eye(n, 8, dtype=np.float32)
  loss, metrics = losses.nt_xent_with_metrics(z, 2.0 * z, temperature)
  # Positive logit 1/T, 2n - 2 negatives with logit 0.
  expected = -1 / temperature + math.log(math.exp(1 / temperature) + 2 * n - 2)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["positive_accuracy"]), 1.0)
  np.testing.assert_allclose(float(metrics["positive_similarity"]), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["negative_similarity"]), 0.0, atol=1e-7)


def test_positive_accuracy_hand_made():
  # View 2 of image 2 points between e1 and e2: it is closer to both views of image 1
  # (cos 0.894) than to its own positive e2 (cos 0.447), so exactly that anchor misses.
  z1 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  z2 = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0.5]], np.float32)
  _, metrics = losses.nt_xent_with_metrics(z1, z2)
  np.testing.assert_allclose(float(metrics["positive_accuracy"]), 5 / 6)
  cos = 0.5 / math.sqrt(1.25)
  np.testing.assert_allclose(
      float(metrics["positive_similarity"]), (4 + 2 * cos) / 6, rtol=1e-6)


def test_validation_errors():
  z = np.zeros((4, 3), np.float32)
  with pytest.raises(ValueError, match="same shape"):
    losses.nt_xent(z, np.zeros((5, 3), np.float32))
  with pytest.raises(ValueError, match="temperature"):
    losses.nt_xent(z, z, temperature=0.0)
  with pytest.raises(ValueError, match="weights"):
    losses.nt_xent(z, z, weights=np.ones(3, np.float32))


def test_gradient_finite_under_jit():
  z1, z2 = random_projections(3)
  grads = jax.jit(jax.grad(losses.nt_xent, argnums=(0, 1)))(z1, z2)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


# Negatives gathered over 4 devices: tests/multidevice/test_nt_xent.py.
