"""NT-Xent with negatives gathered over 4 devices equals the single-device loss."""
import functools

import jax
from jax import lax
import numpy as np
import pytest

from simclr_jax import losses


@pytest.mark.parametrize("use_weights", [False, True], ids=["plain", "weighted"])
def test_four_devices_match_single_device_loss_gradient_and_weights(use_weights):
  devices, n, d, temperature = 4, 3, 5, 0.1
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(devices * n, d)).astype(np.float32)
  z2 = rng.normal(size=(devices * n, d)).astype(np.float32)
  w = rng.uniform(0.1, 3.0, size=(devices * n,)).astype(np.float32)
  shard = lambda x: x.reshape(devices, n, *x.shape[1:])

  def local(z1, z2, w):
    loss_fn = lambda a, b: losses.nt_xent_with_metrics(
        a, b, temperature, axis_name="batch", weights=w if use_weights else None)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(z1, z2)
    return lax.pmean(loss, "batch"), lax.pmean(metrics, "batch"), grads

  p_loss, p_metrics, (g1, g2) = jax.pmap(local, axis_name="batch")(shard(z1), shard(z2),
                                                                   shard(w))
  single_fn = functools.partial(losses.nt_xent_with_metrics, temperature=temperature,
                                weights=w if use_weights else None)
  (s_loss, s_metrics), (s1, s2) = jax.value_and_grad(
      single_fn, argnums=(0, 1), has_aux=True)(z1, z2)

  assert jax.device_count() == 4
  assert np.allclose(p_loss, p_loss[0])       # the same loss on every device
  np.testing.assert_allclose(float(p_loss[0]), float(s_loss), rtol=1e-5, atol=1e-6)
  for name, value in s_metrics.items():
    np.testing.assert_allclose(float(p_metrics[name][0]), float(value), rtol=1e-5,
                               atol=1e-6, err_msg=name)
  # all_gather's transpose (psum_scatter) sums the cotangents of all devices' losses, so
  # each device's grad is d(sum_k loss_k)/dz = devices * d(global loss)/dz. pmean of
  # parameter grads in the train step then yields exactly d(global loss)/dparams.
  for grad, single in ((g1, s1), (g2, s2)):
    np.testing.assert_allclose(np.asarray(grad).reshape(devices * n, d),
                               4 * np.asarray(single), rtol=1e-4, atol=1e-6)
