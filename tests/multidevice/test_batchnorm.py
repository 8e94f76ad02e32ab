"""Global BatchNorm: under pmap with axis_name, two devices' statistics are the whole batch's."""
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import models


def _update(model, variables, images):
  features, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  return features, updates["batch_stats"]


def test_global_batchnorm_under_pmap_matches_single_device():
  devices = jax.devices()[:2]
  images = np.random.RandomState(0).normal(size=(8, 8, 8, 1)).astype(np.float32)  # global
  init_model = models.ResNetTiny(width=0.125, stem="cifar")
  # Random values without compiling `init` (slow on a busy CPU); running stats mean 0, var 1.
  rng = np.random.RandomState(1)
  variables = jax.tree.map(
      lambda leaf: (rng.normal(size=leaf.shape) * 0.3).astype(np.float32),
      jax.eval_shape(lambda x: init_model.init(jax.random.key(1), x, train=False), images))
  variables["batch_stats"] = jax.tree.map(np.zeros_like, variables["batch_stats"])
  for bn in jax.tree.leaves(variables["batch_stats"], is_leaf=lambda n: "var" in n):
    bn["var"] = np.ones_like(bn["var"])

  single_features, single_stats = jax.jit(
      lambda v, x: _update(init_model, v, x))(variables, images)
  replicated = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), variables)
  per_device = images.reshape(2, 4, 8, 8, 1)  # [devices, per_device, H, W, C]
  errors = {}
  for axis_name in ("batch", None):
    model = models.ResNetTiny(width=0.125, stem="cifar", axis_name=axis_name)
    features, stats = jax.pmap(lambda v, x: _update(model, v, x), axis_name="batch",
                               devices=devices)(replicated, per_device)
    stats_error = max(
        float(np.max(np.abs(np.asarray(p)[d] - np.asarray(s))))
        for p, s in zip(jax.tree.leaves(stats), jax.tree.leaves(single_stats))
        for d in range(2))
    features_error = float(np.max(np.abs(np.asarray(features).reshape(8, -1)
                                         - single_features)))
    errors[axis_name] = {"stats": stats_error, "features": features_error}
  assert len(devices) == 2
  # With axis_name the two devices' statistics are those of the whole batch ...
  assert errors["batch"]["stats"] <= 1e-5
  assert errors["batch"]["features"] <= 1e-4
  # ... and without it they are per-device (the check above is not vacuous).
  assert errors[None]["stats"] > 1e-3
