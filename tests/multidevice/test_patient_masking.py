"""Same-patient masking in NT-Xent: 4 devices (ids gathered across them) equal 1 device."""
import jax
from jax import lax
import numpy as np

from simclr_jax import losses

DEVICES, PER_DEVICE, DIM, TEMPERATURE = 4, 3, 5, 0.1


def _masked_loss(z1, z2, weights, patient_ids, axis_name=None):
  loss_fn = lambda a, b: losses.nt_xent_with_metrics(
      a, b, TEMPERATURE, axis_name=axis_name, weights=weights, patient_ids=patient_ids)
  return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(z1, z2)


def _on_each_device(z1, z2, weights, patient_ids):
  (loss, metrics), grads = _masked_loss(z1, z2, weights, patient_ids, axis_name='batch')
  return lax.pmean(loss, 'batch'), lax.pmean(metrics, 'batch'), grads


def test_patient_masking_on_four_devices_equals_one_device():
  assert jax.device_count() == DEVICES, (
      'run tests/multidevice in its own pytest process (its conftest sets 4 CPU devices)')
  rng = np.random.default_rng(0)
  size = DEVICES * PER_DEVICE
  z1 = rng.normal(size=(size, DIM)).astype(np.float32)
  z2 = rng.normal(size=(size, DIM)).astype(np.float32)
  weights = rng.uniform(0.1, 3.0, size).astype(np.float32)
  # Patients 5 and 8 have images on several devices, 2 twice on one device.
  patient_ids = np.array([5, 1, 8, 2, 5, 2, 8, 4, 6, 5, 7, 8], np.int32)
  shard = lambda x: x.reshape(DEVICES, PER_DEVICE, *x.shape[1:])

  # Weighted: the weights' psum runs beside the ids' all_gather (the mask itself does not
  # depend on the weights; tests/test_losses.py covers masking without them).
  p_loss, p_metrics, (g1, g2) = jax.pmap(_on_each_device, axis_name='batch')(
      shard(z1), shard(z2), shard(weights), shard(patient_ids))
  (loss, metrics), (s1, s2) = _masked_loss(z1, z2, weights, patient_ids)
  np.testing.assert_allclose(np.asarray(p_loss), float(loss), rtol=1e-5, atol=1e-6)
  for name, value in metrics.items():
    np.testing.assert_allclose(np.asarray(p_metrics[name]), float(value), rtol=1e-5,
                               atol=1e-6, err_msg=name)
  # Each device's grad is devices x d(global loss)/dz (all_gather's transpose sums).
  np.testing.assert_allclose(np.asarray(g1).reshape(size, DIM), DEVICES * np.asarray(s1),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g2).reshape(size, DIM), DEVICES * np.asarray(s2),
                             rtol=1e-4, atol=1e-6)
  # Not vacuous: the mask changes the loss.
  assert abs(float(losses.nt_xent(z1, z2, TEMPERATURE, weights=weights)) - float(loss)) > 1e-3
