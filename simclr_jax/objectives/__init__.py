"""Training objectives: one file per objective, each exporting one `Objective` record.

  simclr      two augmented views per image, NT-Xent with negatives from every device
  supervised  one view per image, a linear classifier on the encoder (baseline, fine-tuning)

The model factory, the input pipeline, the settings checks and the trainer ask the record
of `config.objective` (`of(config)`) for the model, the loss, the views per image, the batch
fields and the config checks. Adding an objective (BYOL, VICReg) is one file exporting a
record and one line in OBJECTIVES.
"""
from typing import Any, Optional, Sequence

import ml_collections

from simclr_jax import config as config_lib
from simclr_jax.objectives import simclr
from simclr_jax.objectives import supervised
from simclr_jax.objectives.base import LossFn
from simclr_jax.objectives.base import Objective

OBJECTIVES = {record.name: record for record in (
    simclr.OBJECTIVE,
    supervised.OBJECTIVE,
)}


def get(name: str) -> Objective:
  """The record registered as `name`; ValueError (one line listing the names) otherwise."""
  if name not in OBJECTIVES:
    raise ValueError(f"config.objective={name!r}; accepted: "
                     f"{', '.join(map(repr, OBJECTIVES))}.")
  return OBJECTIVES[name]


def of(config: ml_collections.ConfigDict) -> Objective:
  """The record of `config.objective` (the config.py default when the field is absent)."""
  return get(config_lib.with_defaults(config).objective)


def trains_on_labels(config: ml_collections.ConfigDict) -> bool:
  """Whether `config.objective` trains a classifier on the labels (config.supervised's
  fields apply: label mode and fraction, training subset, freezing, selection)."""
  return of(config).trains_on_labels


def selects_by_validation(config: ml_collections.ConfigDict) -> bool:
  """Whether the run scores its classifier on validation while it trains and keeps the best
  checkpoint (an objective that trains on labels, supervised.select_by_validation > 0)."""
  return trains_on_labels(config) and config.supervised.select_by_validation > 0


def create_loss(config: ml_collections.ConfigDict, model: Any, axis_name: Optional[str],
                class_frequencies: Optional[Sequence[float]] = None) -> LossFn:
  """The per-device loss of `config.objective` for `model`, its static settings bound.

  Args:
    config: the experiment config.
    model: the module of `models.create_model(config, axis_name)`.
    axis_name: the pmap axis of the train step (None outside pmap).
    class_frequencies: supervised with class_weights 'inverse_frequency': [C] class
      frequencies of the training split, instead of config.supervised.class_frequencies.

  Returns:
    loss_fn(params, batch_stats, batch, rng, example_ids) -> (loss, (batch_stats, metrics)).

  Raises:
    ValueError: an unknown objective or a setting the objective cannot train with; the
      message names the config field.
  """
  if class_frequencies is not None:
    config = config.copy_and_resolve_references()
    config.supervised.class_frequencies = tuple(float(f) for f in class_frequencies)
  return of(config).build_loss(config, model, axis_name)

