"""Training objectives: the per-device loss of one step for each `config.objective`.

An objective is a pure function

  objective(params, batch_stats, batch, rng, example_ids)
      -> (loss scalar, (new batch_stats, metrics dict))

run inside the pmapped train step (`train.train_step` differentiates it with respect to
`params`). `rng` is the step's key and `example_ids` [per_device] the global index of each
row of the batch, so augmentation does not depend on how devices split the batch.
`create_objective(config, model, axis_name)` binds the static settings.

  simclr      two augmented views per image -> encoder -> projection head -> NT-Xent
              with negatives from every device (losses.nt_xent_with_metrics).
"""
import functools
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax import augment
from simclr_jax import losses

OBJECTIVES = ("simclr",)

Objective = Callable[..., Tuple[jax.Array, Tuple[Any, Dict[str, jax.Array]]]]


def simclr_objective(params: Any, batch_stats: Any, batch: Dict[str, jax.Array],
                     rng: jax.Array, example_ids: jax.Array, *, model: Any,
                     augment_config: ml_collections.ConfigDict, image_size: int,
                     temperature: float, loss_scale: float, axis_name: str
                     ) -> Tuple[jax.Array, Tuple[Any, Dict[str, jax.Array]]]:
  """NT-Xent of two views of every image of this device's batch.

  Args:
    params, batch_stats: the SimCLR module's variables.
    batch: 'image' uint8 [per_device, H, W, 1] and optionally 'weight' float32
      [per_device] per-example loss weights.
    rng: the step's key; example_ids: [per_device] global row indices.
    model: SimCLR module built with `axis_name` (global BatchNorm).
    augment_config, image_size: on-device augmentation of the views.
    temperature: NT-Xent temperature.
    loss_scale: multiplies the optimised loss (not the logged 'loss' metric).
    axis_name: the pmap axis negatives are gathered over.

  Returns:
    (loss_scale * loss, (new batch_stats, metrics incl. 'loss')).
  """
  views1, views2 = augment.make_views(rng, batch["image"], example_ids, augment_config,
                                      image_size)  # [per_device, S, S, 1] each
  both_views = jnp.concatenate([views1, views2], axis=0)  # [2 * per_device, S, S, 1]
  (_, projections), new_model_state = model.apply(
      {"params": params, "batch_stats": batch_stats}, both_views, train=True,
      mutable=["batch_stats"])
  # View 1 of image i is the positive of view 2 of image i and vice versa.
  z1, z2 = jnp.split(projections.astype(jnp.float32), 2, axis=0)
  loss, metrics = losses.nt_xent_with_metrics(
      z1, z2, temperature=temperature, axis_name=axis_name, weights=batch.get("weight"))
  metrics = dict(metrics, loss=loss)
  return loss_scale * loss, (new_model_state["batch_stats"], metrics)


def create_objective(config: ml_collections.ConfigDict, model: Any, axis_name: str
                     ) -> Objective:
  """The objective named by `config.objective`, with its static settings bound."""
  name = config.get("objective", "simclr")
  if name == "simclr":
    return functools.partial(
        simclr_objective, model=model, augment_config=config.augment,
        image_size=int(config.image_size), temperature=float(config.loss.temperature),
        loss_scale=float(config.loss.get("scale", 1.0)), axis_name=axis_name)
  raise ValueError(f"config.objective={name!r}: accepted values are {list(OBJECTIVES)}.")
