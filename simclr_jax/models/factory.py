"""`create_model`: the network of `config.objective`."""
from typing import Any

import ml_collections

from simclr_jax.models import simclr
from simclr_jax.models import supervised

MODEL_OBJECTIVES = ('simclr', 'supervised')


def create_model(config: ml_collections.ConfigDict, axis_name: str | None = None,
                 num_classes: int | None = None) -> Any:
  """The network trained by `config.objective` ('simclr' when the field is absent).

  Args:
    config: the experiment config (see `simclr.create_encoder`, `simclr.create_head`).
    axis_name: pmap axis name for global BatchNorm (None outside pmap).
    num_classes: for objective 'supervised': the number of classes (or findings of a
      multi-label dataset); None reads `config.supervised.num_classes`. Ignored by simclr.

  Returns:
    'simclr': `SimCLR` (encoder + projection head), apply -> (features, projections),
      variables {'params': {'encoder', 'head'}, 'batch_stats': {'encoder'[, 'head']}}.
    'supervised': `Supervised` (encoder + linear classifier), apply -> (features,
      logits), variables {'params': {'encoder', 'classifier'}, 'batch_stats': {'encoder'}}.

  Raises:
    ValueError: unknown objective, model, stem, dtype or head, or a supervised model
      without a class count; the message names the config field.
  """
  objective = simclr._field(config, 'objective', 'simclr')
  if objective == 'simclr':
    return simclr.create_simclr(config, axis_name)
  if objective == 'supervised':
    return supervised.create_supervised(config, axis_name, num_classes)
  raise ValueError(
      f'config.objective={objective!r}: accepted values are {list(MODEL_OBJECTIVES)}.')
