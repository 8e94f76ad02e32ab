"""`create_model`: the network of `config.objective` (its record in simclr_jax.objectives)."""
from typing import Any

import ml_collections

from simclr_jax import config as config_lib


def create_model(config: ml_collections.ConfigDict, axis_name: str | None = None,
                 num_classes: int | None = None) -> Any:
  """The network trained by `config.objective` (`objectives.of(config).build_model`).

  Args:
    config: the experiment config (see `simclr.create_encoder`, `simclr.create_head`).
    axis_name: pmap axis name for global BatchNorm (None outside pmap).
    num_classes: for objective 'supervised': the number of classes (or findings of a
      multi-label dataset) instead of `config.supervised.num_classes`. Ignored by simclr.

  Returns:
    'simclr': `SimCLR` (encoder + projection head), apply -> (features, projections),
      variables {'params': {'encoder', 'head'}, 'batch_stats': {'encoder'[, 'head']}}.
    'supervised': `Supervised` (encoder + linear classifier), apply -> (features,
      logits), variables {'params': {'encoder', 'classifier'}, 'batch_stats': {'encoder'}}.

  Raises:
    ValueError: unknown objective, model, stem, dtype or head, or a supervised model
      without a class count; the message names the config field.
  """
  from simclr_jax import objectives   # the records build their models from this package
  if num_classes is not None:
    config = config_lib.with_defaults(config)
    config.supervised.num_classes = num_classes
  return objectives.of(config).build_model(config, axis_name)
