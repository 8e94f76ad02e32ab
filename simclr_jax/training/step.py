"""The pure train step (run under `jax.pmap`), its state, and the two pmap-only workarounds.

  TrainState          step, params, batch_stats, opt_state (a pytree; replicated on devices)
  create_train_state  initial state (or the encoder of `config.init_from`)
  train_step          one update on this device's share of the global batch
  pmap_train_step     train_step pmapped over AXIS_NAME, the state donated

pmap-only workarounds, kept here and nowhere else:
  to_devices   replicates a host tree through an identity pmap, so its arrays carry the
               sharding the step returns and the second call does not compile the step again
  host_copy    host copies of a device tree that share no memory with the device buffers
               the next (donating) step reuses, for an asynchronous checkpoint save
"""
import functools
from typing import Any, Callable, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from simclr_jax.objectives import LossFn

AXIS_NAME = "batch"


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 [], number of completed steps
  params: Any
  batch_stats: Any
  opt_state: Any

  def to_checkpoint(self) -> dict:
    return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
            "opt_state": self.opt_state}

  @classmethod
  def from_checkpoint(cls, tree: dict) -> "TrainState":
    return cls(step=tree["step"], params=tree["params"], batch_stats=tree["batch_stats"],
               opt_state=tree["opt_state"])


def create_train_state(config: ml_collections.ConfigDict, model: Any,
                       tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: Tuple[int, ...], *, init_encoder: bool = True
                       ) -> TrainState:
  """Initialises parameters (the encoder from `config.init_from`) and optimiser state.

  Args:
    config: experiment config (uses init_from and the init_source it resolved to,
      training/init_from.py).
    model: the objective's module (`objectives.of(config).build_model`).
    tx: the optimiser.
    rng: initialisation key.
    input_shape: one example, e.g. (image_size, image_size, 1).
    init_encoder: False: leave init_from unread (a resumed run, whose checkpoint replaces
      every variable).

  Raises:
    ConfigError: the init_from source cannot be read or holds another network.
  """
  @jax.jit
  def init(rng):
    return model.init(rng, jnp.zeros((2, *input_shape), jnp.float32), train=False)

  variables = init(rng)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  if config.init_from and init_encoder:
    # The encoder's params and batch statistics from the source; the head stays random.
    from simclr_jax.training import init_from
    encoder_vars = init_from.encoder_variables(
        config, {"params": params["encoder"], "batch_stats": batch_stats["encoder"]})
    params = flax.core.unfreeze(params)
    batch_stats = flax.core.unfreeze(batch_stats)
    params["encoder"] = jax.tree_util.tree_map(jnp.asarray, encoder_vars["params"])
    batch_stats["encoder"] = jax.tree_util.tree_map(jnp.asarray, encoder_vars["batch_stats"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params))


def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *,
               tx: optax.GradientTransformation, learning_rate_fn: Callable,
               loss_fn: LossFn) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimisation step on this device's share of the global batch (run under pmap).

  Randomness is keyed by (seed, step, global example index): the global index of row i
  on device d is d * per_device + i, so the augmented views of an image, and hence the
  whole update, do not depend on how the global batch is split over devices or processes.

  Args:
    state: replicated train state.
    batch: this device's part of the global batch: 'image' uint8 [per_device, H, W, 1]
      and the objective's batch fields ('weight' float32 [per_device] loss weights, the
      labels of a supervised objective).
    rng: the run's base key (replicated).
    tx: optimiser; learning_rate_fn: its schedule (for the metrics).
    loss_fn: `objectives.of(config).build_loss(...)`: the loss of this device's batch.

  Returns:
    (new state, metrics averaged over all devices).
  """
  per_device = batch["image"].shape[0]
  step_rng = jax.random.fold_in(rng, state.step)
  example_ids = lax.axis_index(AXIS_NAME) * per_device + jnp.arange(per_device)

  def loss_of_params(params):
    return loss_fn(params, state.batch_stats, batch, step_rng, example_ids)

  (_, (new_batch_stats, metrics)), grads = jax.value_and_grad(
      loss_of_params, has_aux=True)(state.params)
  # The loss is the mean over this device's examples; the gradient of the global mean is
  # the mean of the per-device gradients (for NT-Xent the all_gather in the loss sends
  # each device the cotangents of its projections used as other devices' negatives).
  grads = lax.pmean(grads, AXIS_NAME)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  metrics = lax.pmean(metrics, AXIS_NAME)
  metrics["learning_rate"] = learning_rate_fn(state.step)
  metrics["grad_norm"] = optax.tree.norm(grads)
  # Checked on the host before every checkpoint: an update can overflow while the loss
  # that produced it was still finite.
  metrics["param_norm"] = optax.tree.norm(new_params)
  new_state = state.replace(step=state.step + 1, params=new_params,
                            batch_stats=new_batch_stats, opt_state=new_opt_state)
  return new_state, metrics


def pmap_train_step(tx: optax.GradientTransformation, learning_rate_fn: Callable,
                    loss_fn: LossFn) -> Callable:
  """p_step(replicated state, batch [local_devices, per_device, ...], replicated rng)
  -> (state, metrics [local_devices]); the state's buffers are donated to the result."""
  return jax.pmap(functools.partial(train_step, tx=tx, learning_rate_fn=learning_rate_fn,
                                    loss_fn=loss_fn),
                  axis_name=AXIS_NAME, donate_argnums=(0,))


# flax.jax_utils.replicate places the copies with the sharding of a device_put (mesh axis
# '_device_put_sharded'); the step returns arrays on mesh axis AXIS_NAME, and a second call
# with the other sharding would compile the step again.
_identity = jax.pmap(lambda tree: tree, axis_name=AXIS_NAME)


def to_devices(tree: Any) -> Any:
  """`tree` replicated on the local devices, laid out as the pmapped step returns it."""
  return _identity(flax.jax_utils.replicate(tree))


def host_copy(tree: Any) -> Any:
  """Host numpy copies that share no memory with device buffers.

  On CPU, device_get returns zero-copy views of the device buffers; an asynchronous save
  holds them until they are written, while the next step donates those buffers
  (donate_argnums). JAX 0.10 then quietly skips the donation rather than overwrite a
  viewed buffer; copying keeps the donation and does not rely on that. On GPU/TPU
  device_get already returns fresh host arrays.
  """
  copy = jax.default_backend() == "cpu"
  return jax.tree_util.tree_map(lambda x: np.array(x, copy=True) if copy else x,
                                jax.device_get(tree))
