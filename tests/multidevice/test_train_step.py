"""The pmapped train step gives the same update on 1 and on 4 devices (same global batch)."""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import models
from simclr_jax import objectives
from simclr_jax.config import default_config
from simclr_jax.training import optim
from simclr_jax.training import step as step_lib

from .conftest import update_differences


def _run_steps(step_fn, state, batch, rng, num_devices, steps):
  """`steps` calls of the pmapped `step_fn` on the first `num_devices` devices; returns the
  metrics of each call (host floats) and the final host state. `batch` holds global
  [batch, ...] arrays, split over the devices."""
  devices = jax.devices()[:num_devices]
  p_step = jax.pmap(step_fn, axis_name=step_lib.AXIS_NAME, devices=devices)
  replicated = flax.jax_utils.replicate(state, devices)
  replicated_rng = flax.jax_utils.replicate(rng, devices)
  per_device = {name: value.reshape(num_devices, -1, *value.shape[1:])
                for name, value in batch.items()}
  metrics = []
  for _ in range(steps):
    replicated, step_metrics = p_step(replicated, per_device, replicated_rng)
    metrics.append({name: float(value[0]) for name, value in step_metrics.items()})
  return metrics, jax.device_get(flax.jax_utils.unreplicate(replicated))


def _numpy_train_state(config, model, rng):
  """The train state of `model` with random variables from numpy (a jitted init would cost
  seconds of compile here), its optimiser and schedule."""
  tx, lr_fn = optim.create_optimizer(config, total_steps=10, steps_per_epoch=10)
  variables = jax.tree.map(
      lambda leaf: (rng.normal(size=leaf.shape) * 0.3 + (leaf.ndim == 1)).astype(np.float32),
      jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                     jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)))
  variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])  # var > 0
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                              batch_stats=variables["batch_stats"],
                              opt_state=tx.init(variables["params"]))
  return state, tx, lr_fn


def test_one_vs_four_devices_give_the_same_update():
  """SimCLR: augmentation on (defaults); SGD + momentum so that any gradient-scale error
  shows directly in the parameters (Adam's first step would normalise it away)."""
  config = default_config()
  config.model, config.width, config.image_size, config.batch_size = "resnet_tiny", 1.0, 16, 8
  config.head.hidden_dim, config.head.output_dim = 32, 16
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.5
  config.optimizer.warmup_steps = 0
  model = models.create_model(config, axis_name=step_lib.AXIS_NAME)
  tx, lr_fn = optim.create_optimizer(config, total_steps=10, steps_per_epoch=10)
  state = step_lib.create_train_state(config, model, tx, jax.random.PRNGKey(0), (16, 16, 1))
  images = np.random.RandomState(0).randint(0, 256, (8, 24, 24, 1)).astype(np.uint8)
  step_fn = functools.partial(step_lib.train_step, tx=tx, learning_rate_fn=lr_fn,
                              loss_fn=objectives.create_loss(config, model, "batch"))
  rng = jax.random.PRNGKey(1)
  metrics1, state1 = _run_steps(step_fn, state, {"image": images}, rng, 1, steps=2)
  metrics4, state4 = _run_steps(step_fn, state, {"image": images}, rng, 4, steps=2)
  max_param_diff, moved = update_differences(state, state1, state4)
  assert jax.device_count() == 4
  np.testing.assert_allclose([m["loss"] for m in metrics1], [m["loss"] for m in metrics4],
                             rtol=1e-5, atol=1e-5)
  assert moved > 1e-3            # the step really changed the parameters
  assert max_param_diff < 1e-5


def test_supervised_step_on_one_and_four_devices_gives_the_same_update():
  """Supervised multi-label with inverse-frequency class weights: the loss is a plain mean
  over this device's images and findings, so the update does not depend on the split."""
  config = default_config()
  config.objective = "supervised"
  config.supervised.class_weights = "inverse_frequency"
  # Jitter and blur off: a smaller program; crop, flip and rotation still depend on the keys.
  config.augment.jitter_prob = config.augment.blur_prob = 0.0
  config.model, config.width, config.stem, config.image_size, config.batch_size = (
      "resnet_tiny", 0.125, "cifar", 16, 8)
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.5
  config.optimizer.warmup_steps = 0
  model = models.create_model(config, axis_name=step_lib.AXIS_NAME, num_classes=3)
  rng = np.random.RandomState(0)
  state, tx, lr_fn = _numpy_train_state(config, model, rng)
  batch = {"image": rng.randint(0, 256, (8, 20, 20, 1)).astype(np.uint8),
           "labels": (rng.uniform(size=(8, 3)) < 0.4).astype(np.float32)}
  loss_fn = objectives.create_loss(config, model, step_lib.AXIS_NAME,
                                   class_frequencies=[0.2, 0.4, 0.3])
  step_fn = functools.partial(step_lib.train_step, tx=tx, learning_rate_fn=lr_fn,
                              loss_fn=loss_fn)
  # One step: a second call would compile the step again for the donated outputs' layout.
  [metrics1], state1 = _run_steps(step_fn, state, batch, jax.random.PRNGKey(1), 1, steps=1)
  [metrics4], state4 = _run_steps(step_fn, state, batch, jax.random.PRNGKey(1), 4, steps=1)
  max_param_diff, moved = update_differences(state, state1, state4)
  assert jax.device_count() == 4
  assert sorted(state1.params) == ["classifier", "encoder"]
  assert sorted(state1.batch_stats) == ["encoder"]
  assert set(metrics1) >= {"loss", "label_accuracy", "positive_probability",
                           "negative_probability", "grad_norm"}
  for name, value in metrics1.items():
    np.testing.assert_allclose(metrics4[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  assert moved > 1e-3            # the step really changed the parameters
  assert max_param_diff < 1e-5


def test_paired_masked_simclr_step_on_one_and_four_devices_gives_the_same_update():
  """SimCLR with same-patient positives (view 2 from 'image_partner') and same-patient
  negatives masked ('patient_id', gathered over the devices): the same update on 1 and
  4 devices. Patients 0 and 3 have images on several devices."""
  config = default_config()
  config.loss.mask_same_patient, config.pairs.same_patient_prob = True, 0.5
  # A smaller program: crop and flip stay, and depend on the per-example keys.
  config.augment.jitter_prob = config.augment.blur_prob = config.augment.rotation_degrees = 0
  config.model, config.width, config.stem, config.image_size, config.batch_size = (
      "resnet_tiny", 0.125, "cifar", 16, 8)
  config.head.hidden_dim, config.head.output_dim = 16, 8
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.5
  config.optimizer.warmup_steps = 0
  model = models.create_model(config, axis_name=step_lib.AXIS_NAME)
  rng = np.random.RandomState(1)
  state, tx, lr_fn = _numpy_train_state(config, model, rng)
  images = rng.randint(0, 256, (8, 20, 20, 1)).astype(np.uint8)
  partners = images.copy()
  partners[[0, 3, 6]] = rng.randint(0, 256, (3, 20, 20, 1)).astype(np.uint8)
  batch = {"image": images, "image_partner": partners,
           "patient_id": np.array([0, 1, 0, 3, 2, 3, 0, 4], np.int32)}
  assert objectives.of(config).batch_fields(config) == {"patient_id": np.int32,
                                                        "image_partner": np.uint8}
  step_fn = functools.partial(step_lib.train_step, tx=tx, learning_rate_fn=lr_fn,
                              loss_fn=objectives.create_loss(config, model, step_lib.AXIS_NAME))
  [metrics1], state1 = _run_steps(step_fn, state, batch, jax.random.PRNGKey(1), 1, steps=1)
  [metrics4], state4 = _run_steps(step_fn, state, batch, jax.random.PRNGKey(1), 4, steps=1)
  max_param_diff, moved = update_differences(state, state1, state4)
  for name, value in metrics1.items():
    np.testing.assert_allclose(metrics4[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  assert moved > 1e-3            # the step really changed the parameters
  assert max_param_diff < 1e-5
