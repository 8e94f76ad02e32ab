"""Tests for simclr_jax/losses.py (NT-Xent)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import losses


def reference_nt_xent(z1, z2, temperature, weights=None, patient_ids=None):
  """Float64 NumPy NT-Xent written directly from the SimCLR formula, one anchor at a time.

  With patient_ids, the other images of an anchor's patient (both views) leave its
  denominator; its positive stays.
  """
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  two_n = z.shape[0]
  n = two_n // 2
  if weights is None:
    weights = np.ones(n)
  patient = np.arange(n) if patient_ids is None else np.asarray(patient_ids)
  anchor_losses, anchor_weights = [], []
  for a in range(two_n):
    positive = (a + n) % two_n
    logits = np.array([z[a] @ z[c] / temperature for c in range(two_n)
                       if c != a and (c == positive or patient[c % n] != patient[a % n])])
    log_denominator = logits.max() + math.log(np.sum(np.exp(logits - logits.max())))
    anchor_losses.append(log_denominator - z[a] @ z[positive] / temperature)
    anchor_weights.append(weights[a % n])
  anchor_losses, anchor_weights = np.array(anchor_losses), np.array(anchor_weights)
  return float(np.sum(anchor_weights * anchor_losses) / np.sum(anchor_weights))


def reference_nt_xent_gradient(z1, z2, temperature, weights=None, patient_ids=None):
  """Float64 gradient of `reference_nt_xent` w.r.t. (z1, z2), derived by hand.

  d loss(a) / d s_ac = (p_ac - [c = pos(a)]) / T over the kept candidates c (softmax p);
  s = zhat zhat^T passes G + G^T to zhat; the normalisation zhat = z / |z| passes
  (g - zhat (zhat . g)) / |z| to z.
  """
  z = np.concatenate([z1, z2]).astype(np.float64)
  norms = np.linalg.norm(z, axis=1, keepdims=True)
  zhat = z / norms
  two_n = z.shape[0]
  n = two_n // 2
  weights = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  patient = np.arange(n) if patient_ids is None else np.asarray(patient_ids)
  anchor_weights = np.concatenate([weights, weights]) / (2 * weights.sum())
  similarity = zhat @ zhat.T
  d_similarity = np.zeros((two_n, two_n))  # d loss / d s_ac
  for a in range(two_n):
    positive = (a + n) % two_n
    kept = [c for c in range(two_n)
            if c != a and (c == positive or patient[c % n] != patient[a % n])]
    logits = similarity[a, kept] / temperature
    softmax = np.exp(logits - logits.max())
    softmax /= softmax.sum()
    d_similarity[a, kept] = anchor_weights[a] * softmax / temperature
    d_similarity[a, positive] -= anchor_weights[a] / temperature
  d_zhat = (d_similarity + d_similarity.T) @ zhat
  d_z = (d_zhat - zhat * np.sum(zhat * d_zhat, axis=1, keepdims=True)) / norms
  return d_z[:n], d_z[n:]


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


# Several same-patient groups (3 of patient 3, 2 of 7, 2 of 1) and singletons.
PATIENT_IDS = np.array([3, 7, 3, 1, 7, 3, 9, 1], np.int32)


def test_reference_gradient_matches_finite_differences():
  z1, z2 = random_projections(4, n=4, d=3)
  ids, weights, temperature = np.array([5, 2, 5, 2]), np.array([0.5, 2.0, 1.0, 1.5]), 0.3
  analytic = np.concatenate(reference_nt_xent_gradient(z1, z2, temperature, weights, ids))
  z = np.concatenate([z1, z2]).astype(np.float64)
  numeric = np.zeros_like(z)
  step = 1e-6
  for index in np.ndindex(z.shape):
    plus, minus = z.copy(), z.copy()
    plus[index] += step
    minus[index] -= step
    numeric[index] = (reference_nt_xent(plus[:4], plus[4:], temperature, weights, ids) -
                      reference_nt_xent(minus[:4], minus[4:], temperature, weights, ids)
                      ) / (2 * step)
  np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("use_weights", [False, True])
def test_patient_masked_loss_and_gradient_match_float64_reference(use_weights):
  z1, z2 = random_projections(5, n=8, d=5)
  weights = (np.random.default_rng(6).uniform(0.2, 3.0, 8).astype(np.float32)
             if use_weights else None)
  loss_fn = lambda a, b: losses.nt_xent(a, b, 0.1, weights=weights, patient_ids=PATIENT_IDS)
  loss, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(z1, z2)
  np.testing.assert_allclose(
      float(loss), reference_nt_xent(z1, z2, 0.1, weights, PATIENT_IDS), rtol=1e-5)
  for grad, expected in zip(grads, reference_nt_xent_gradient(z1, z2, 0.1, weights,
                                                              PATIENT_IDS)):
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-6)
  # The mask matters here: the unmasked loss differs.
  assert abs(float(loss) - reference_nt_xent(z1, z2, 0.1, weights)) > 1e-3


def test_distinct_patient_ids_give_exactly_the_unmasked_loss():
  z1, z2 = random_projections(7, n=8, d=5)
  weights = np.random.default_rng(8).uniform(0.2, 3.0, 8).astype(np.float32)
  distinct = np.random.default_rng(9).permutation(8).astype(np.int32) + 100

  def value_and_grads(patient_ids):
    loss_fn = lambda a, b: losses.nt_xent_with_metrics(
        a, b, 0.1, weights=weights, patient_ids=patient_ids)
    return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(z1, z2)

  masked, unmasked = value_and_grads(distinct), value_and_grads(None)
  for a, b in zip(jax.tree_util.tree_leaves(masked), jax.tree_util.tree_leaves(unmasked)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_one_patient_leaves_only_the_positive():
  # Every candidate but the positive is the same patient: loss -log(1) = 0.
  z1, z2 = random_projections(10, n=4, d=5)
  loss, metrics = losses.nt_xent_with_metrics(z1, z2, 0.1, patient_ids=np.zeros(4, np.int32))
  np.testing.assert_allclose(float(loss), 0.0, atol=1e-6)
  assert float(metrics["positive_accuracy"]) == 1.0
  assert float(metrics["negative_similarity"]) == 0.0  # no negatives left
  with pytest.raises(ValueError, match="patient_ids must be integers"):
    losses.nt_xent(z1, z2, patient_ids=np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="patient_ids must be integers"):
    losses.nt_xent(z1, z2, patient_ids=np.zeros(4, np.float32))


def test_gradient_finite_under_jit():
  z1, z2 = random_projections(3)
  grads = jax.jit(jax.grad(losses.nt_xent, argnums=(0, 1)))(z1, z2)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


# Negatives gathered over 4 devices: tests/multidevice/test_nt_xent.py.
