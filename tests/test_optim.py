"""Optimisers: LARS/AdamW/SGD masks, schedules and learning-rate scaling."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from simclr_jax.training import optim
from simclr_jax.config import default_config


def _config(name, **optimizer):
  config = default_config()
  config.batch_size = 512
  config.optimizer.name = name
  config.optimizer.learning_rate = 0.1
  config.optimizer.lr_scaling = "none"
  config.optimizer.warmup_steps = 0
  config.optimizer.update(optimizer)
  return config


def _params():
  return {"conv": {"kernel": jnp.full((3, 3, 2, 4), 2.0)},
          "bn": {"scale": jnp.full((4,), 3.0), "bias": jnp.full((4,), 1.0)},
          "dense": {"kernel": jnp.full((4, 5), 2.0), "bias": jnp.full((5,), 1.0)}}


def test_decay_mask_selects_only_kernels():
  mask = optim.decay_mask(_params())
  assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False},
                  "dense": {"kernel": True, "bias": False}}


@pytest.mark.parametrize("name", ["lars", "adamw", "sgd"])
def test_weight_decay_spares_bn_and_biases(name):
  """With zero gradients, only kernels move (weight decay), biases and BN scales do not."""
  params = _params()
  tx, _ = optim.create_optimizer(_config(name, weight_decay=0.1, momentum=0.0),
                                 total_steps=100, steps_per_epoch=10)
  zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  # The schedule starts at the peak (no warm-up); step 0 of cosine = peak.
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates["conv"]["kernel"]).max()) > 0
  assert float(jnp.abs(updates["dense"]["kernel"]).max()) > 0
  for leaf in (updates["bn"]["scale"], updates["bn"]["bias"], updates["dense"]["bias"]):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_lars_trust_ratio_only_on_kernels():
  """BN/bias leaves get plain momentum-SGD updates; kernels are scaled by the trust ratio."""
  params = _params()
  tx, _ = optim.create_optimizer(_config("lars", weight_decay=0.0, momentum=0.0,
                                         trust_coefficient=0.001),
                                 total_steps=100, steps_per_epoch=10)
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = 0.1
  # Excluded leaves: update = -lr * grad.
  np.testing.assert_allclose(updates["bn"]["scale"], -lr * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates["dense"]["bias"], -lr * 0.5, rtol=1e-6)
  # Kernels: update = -lr * trust * ||w|| / ||g|| * g.
  w, g = params["conv"]["kernel"], grads["conv"]["kernel"]
  trust = 0.001 * float(jnp.linalg.norm(w) / jnp.linalg.norm(g))
  np.testing.assert_allclose(updates["conv"]["kernel"], -lr * trust * 0.5, rtol=1e-5)


def test_scaling_rules():
  assert optim.scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(0.3 * 16)
  assert optim.scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(0.075 * 64)
  assert optim.scaled_learning_rate(0.1, 4096, "none") == pytest.approx(0.1)
  with pytest.raises(ValueError, match="lr_scaling"):
    optim.scaled_learning_rate(0.1, 256, "quadratic")


def test_warmup_then_cosine():
  config = _config("sgd", lr_scaling="linear", warmup_steps=-1, warmup_epochs=2.0)
  config.batch_size = 256 * 4                         # linear rule: peak = 0.4
  _, schedule = optim.create_optimizer(config, total_steps=100, steps_per_epoch=10)
  assert float(schedule(0)) == pytest.approx(0.0)
  assert float(schedule(10)) == pytest.approx(0.2, rel=1e-5)    # half-way through warm-up
  assert float(schedule(20)) == pytest.approx(0.4, rel=1e-5)    # peak after 2 epochs
  midway = 20 + (100 - 20) / 2
  assert float(schedule(midway)) == pytest.approx(0.2, rel=1e-4)  # cosine half-way
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_unknown_optimizer_is_named():
  with pytest.raises(ValueError, match="config.optimizer.name='rmsprop'"):
    optim.create_optimizer(_config("rmsprop"), total_steps=10, steps_per_epoch=1)
