"""`Objective`: what the trainer, the model factory, the input pipeline and the settings
checks need to know about a training objective, in one record."""
import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import ml_collections

# loss_fn(params, batch_stats, batch, rng, example_ids) -> (loss, (new batch_stats, metrics)),
# run inside the pmapped train step (`training.step.train_step` differentiates it with
# respect to `params`). `rng` is the step's key and `example_ids` [per_device] the global
# index of each row of the batch, so augmentation does not depend on how devices split it.
LossFn = Callable[..., Tuple[jax.Array, Tuple[Any, Dict[str, jax.Array]]]]


@dataclasses.dataclass(frozen=True)
class Objective:
  """One training objective (registered in `simclr_jax.objectives.OBJECTIVES`).

  Attributes:
    name: the value of `config.objective` that selects it.
    views_per_image: augmented views the loss makes of every image (for views/s).
    build_model: (config, axis_name) -> the unbound Flax module it trains; axis_name is
      the pmap axis for global BatchNorm (None outside pmap).
    build_loss: (config, model, axis_name) -> the per-device `LossFn` of the train step,
      its static settings bound. Raises ValueError naming the config field.
    batch_fields: config -> {field: numpy dtype} the training batches must carry besides
      'image': record features ('label', 'labels') converted to that dtype, or what the
      pipeline computes: 'weight' (per-example loss weights), 'patient_id' (dense patient
      index over the training split), 'image_partner' (another image of the patient,
      config.pairs).
    resolve: config -> a copy with what the objective learns from the prepared data
      filled in (e.g. the class count); the input is not changed. Raises ConfigError.
    check: config -> None; raises errors.ConfigError for settings it cannot train with
      (needs neither data nor devices).
    has_encoder: its model holds an 'encoder' subtree that evaluation can read.
    trains_on_labels: it trains a classifier on the labels, so config.supervised applies
      (label mode and fraction, its training subset, frozen encoder / lr multiplier,
      checkpoint selection on validation); ask `objectives.trains_on_labels(config)`
      rather than comparing config.objective with a name.
  """
  name: str
  views_per_image: int
  build_model: Callable[[ml_collections.ConfigDict, Optional[str]], Any]
  build_loss: Callable[[ml_collections.ConfigDict, Any, Optional[str]], LossFn]
  batch_fields: Callable[[ml_collections.ConfigDict], Dict[str, Any]]
  resolve: Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]
  check: Callable[[ml_collections.ConfigDict], None]
  has_encoder: bool = True
  trains_on_labels: bool = False


def copy_of(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`resolve` of an objective that learns nothing from the data: an unchanged copy."""
  return config.copy_and_resolve_references()
