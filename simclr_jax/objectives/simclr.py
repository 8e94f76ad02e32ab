"""SimCLR: two augmented views per image -> encoder -> projection head -> NT-Xent with
negatives from every device (losses.nt_xent_with_metrics).

`loss.scale` multiplies the loss that is differentiated, never the logged 'loss';
`loss.example_weights='inverse_frequency'` weighs each image's terms (the pipeline serves
the weights as the batch's 'weight'). Patients (issue 19): `pairs.same_patient_prob` > 0
makes view 2 from the batch's 'image_partner' (another image of the same patient, picked
by the pipeline); `loss.mask_same_patient` drops the other images of an anchor's patient
from its negatives (the batch's 'patient_id', a dense index over the training split).
"""
import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from simclr_jax import augment
from simclr_jax import config as config_lib
from simclr_jax import losses
from simclr_jax import models
from simclr_jax.errors import ConfigError
from simclr_jax.errors import one_line
from simclr_jax.objectives.base import copy_of
from simclr_jax.objectives.base import LossFn
from simclr_jax.objectives.base import Objective

EXAMPLE_WEIGHTS = ("none", "inverse_frequency")


def simclr_loss(params: Any, batch_stats: Any, batch: Dict[str, jax.Array],
                rng: jax.Array, example_ids: jax.Array, *, model: Any,
                augment_config: ml_collections.ConfigDict, image_size: int,
                temperature: float, loss_scale: float, axis_name: Optional[str],
                mask_same_patient: bool = False
                ) -> Tuple[jax.Array, Tuple[Any, Dict[str, jax.Array]]]:
  """NT-Xent of two views of every image of this device's batch.

  Args:
    params, batch_stats: the SimCLR module's variables.
    batch: 'image' uint8 [per_device, H, W, 1]; optionally 'weight' float32
      [per_device] per-example loss weights, 'image_partner' uint8 [per_device, H, W, 1]
      (view 2 is made from it: same-patient positives) and 'patient_id' int32
      [per_device] (read with mask_same_patient).
    rng: the step's key; example_ids: [per_device] global row indices.
    model: SimCLR module built with `axis_name` (global BatchNorm).
    augment_config, image_size: on-device augmentation of the views.
    temperature: NT-Xent temperature.
    loss_scale: multiplies the optimised loss (not the logged 'loss' metric).
    axis_name: the pmap axis negatives are gathered over.
    mask_same_patient: images of an anchor's patient anywhere in the global batch are
      not its negatives (needs batch['patient_id']).

  Returns:
    (loss_scale * loss, (new batch_stats, metrics incl. 'loss')).
  """
  patient_ids = None
  if mask_same_patient:
    if "patient_id" not in batch:
      raise ValueError(
          f"objectives.simclr: config.loss.mask_same_patient=True needs batches with "
          f"'patient_id' [per_device]; the batch holds {sorted(batch)}.")
    patient_ids = batch["patient_id"]
  # View 1 from the image, view 2 from its partner when the pipeline paired it.
  views1, views2 = augment.make_views(rng, batch["image"], example_ids, augment_config,
                                      image_size, second_images=batch.get("image_partner"))
  # [per_device, S, S, 1] each
  both_views = jnp.concatenate([views1, views2], axis=0)  # [2 * per_device, S, S, 1]
  (_, projections), new_model_state = model.apply(
      {"params": params, "batch_stats": batch_stats}, both_views, train=True,
      mutable=["batch_stats"])
  # View 1 of image i is the positive of view 2 of image i and vice versa.
  z1, z2 = jnp.split(projections.astype(jnp.float32), 2, axis=0)
  loss, metrics = losses.nt_xent_with_metrics(
      z1, z2, temperature=temperature, axis_name=axis_name, weights=batch.get("weight"),
      patient_ids=patient_ids)
  metrics = dict(metrics, loss=loss)
  return loss_scale * loss, (new_model_state["batch_stats"], metrics)


def _check_example_weights(config: ml_collections.ConfigDict) -> None:
  if config.loss.example_weights not in EXAMPLE_WEIGHTS:
    raise ConfigError(f"config.loss.example_weights={config.loss.example_weights!r}; "
                      f"accepted: {', '.join(map(repr, EXAMPLE_WEIGHTS))}")


# config.supervised fields that only a supervised run (fine-tuning) can use.
FINE_TUNING_FIELDS = ("label_mode", "label_fraction", "freeze_encoder",
                      "encoder_lr_multiplier", "select_by_validation")


def _check_no_fine_tuning(config: ml_collections.ConfigDict) -> None:
  defaults = config_lib.default_config().supervised
  supervised = config.get("supervised") or {}
  changed = [f"config.supervised.{name}={supervised[name]!r}" for name in FINE_TUNING_FIELDS
             if name in supervised and supervised[name] != defaults[name]]
  if changed:
    raise ConfigError(f"{', '.join(changed)}: fine-tuning settings of objective="
                      f"'supervised'; SimCLR pretrains on every train image without labels. "
                      f"Use --config.objective=supervised, or leave them at their defaults.")


def patient_settings(config: ml_collections.ConfigDict) -> Tuple[float, bool]:
  """(pairs.same_patient_prob, loss.mask_same_patient), checked; their defaults (0.0,
  False) where a config (e.g. an older config.json) lacks them.

  Raises:
    ConfigError: a probability outside [0, 1] or a mask that is not a bool.
  """
  probability = (config.get("pairs") or {}).get("same_patient_prob", 0.0)
  mask = config.loss.get("mask_same_patient", False)
  if isinstance(probability, bool) or not (
      isinstance(probability, (int, float)) and 0 <= probability <= 1):
    raise ConfigError(f"config.pairs.same_patient_prob={probability!r}: the probability "
                      f"that view 2 comes from another image of the patient must be in "
                      f"[0, 1] (0 = plain SimCLR).")
  if not isinstance(mask, bool):
    raise ConfigError(f"config.loss.mask_same_patient={mask!r}: accepted: True, False.")
  return float(probability), mask


def check(config: ml_collections.ConfigDict) -> None:
  _check_no_fine_tuning(config)
  temperature = config.loss.temperature
  if not (isinstance(temperature, (int, float)) and temperature > 0):   # also catches NaN
    raise ConfigError(f"config.loss.temperature={temperature!r}: the NT-Xent temperature "
                      f"must be > 0, e.g. 0.1 (SimCLR uses 0.1-0.5).")
  _check_example_weights(config)
  patient_settings(config)


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An unchanged copy, once the training split is known to have the patient ids the
  patient settings need (read and cached now, before anything compiles).

  Raises:
    ConfigError: pairs.same_patient_prob > 0 or loss.mask_same_patient on data without
      'patient_id' (or not prepared), naming the setting.
  """
  probability, mask_same_patient = patient_settings(config)
  if probability > 0 or mask_same_patient:
    from simclr_jax import data   # TFDS: only when a run really starts
    settings = " and ".join(
        setting for setting, wanted in (
            (f"config.pairs.same_patient_prob={probability}", probability > 0),
            ("config.loss.mask_same_patient=True", mask_same_patient)) if wanted)
    try:
      data.patient_index(config.dataset, config.data_dir, config.train_split, settings)
    except (FileNotFoundError, ValueError) as error:
      raise ConfigError(one_line(error)) from None
  return copy_of(config)


def build_loss(config: ml_collections.ConfigDict, model: Any,
               axis_name: Optional[str]) -> LossFn:
  """`simclr_loss` with the config's augmentation, temperature and loss scale bound."""
  return functools.partial(
      simclr_loss, model=model, augment_config=config.augment,
      image_size=int(config.image_size), temperature=float(config.loss.temperature),
      loss_scale=float(config.loss.scale), axis_name=axis_name,
      mask_same_patient=patient_settings(config)[1])


def batch_fields(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Images only, plus what the pipeline computes for the settings that are on: the
  per-example 'weight' (loss.example_weights), 'patient_id' (loss.mask_same_patient) and
  'image_partner' (pairs.same_patient_prob > 0)."""
  _check_example_weights(config)
  probability, mask_same_patient = patient_settings(config)
  fields = {}
  if config.loss.example_weights != "none":
    fields["weight"] = np.float32
  if mask_same_patient:
    fields["patient_id"] = np.int32
  if probability > 0:
    fields["image_partner"] = np.uint8
  return fields


OBJECTIVE = Objective(name="simclr", views_per_image=2, build_model=models.create_simclr,
                      build_loss=build_loss, batch_fields=batch_fields, resolve=resolve,
                      check=check)
