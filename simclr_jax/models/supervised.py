"""The supervised baseline network: the SimCLR encoder followed by a linear classifier."""
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax.config import with_defaults
from simclr_jax.models import simclr


class Supervised(nn.Module):
  """Encoder followed by one Dense layer on its pooled features.

  Variables: {'params': {'encoder': ..., 'classifier': {'kernel': [F, C], 'bias': [C]}},
              'batch_stats': {'encoder': ...}}: the encoder's names are SimCLR's, so
  evaluation reads `params['encoder']` of either kind of checkpoint the same way.

  Attributes:
    encoder: the ResNet encoder (`simclr.create_encoder`).
    num_classes: C, the number of logits (classes, or findings for multi-label data).
    freeze_encoder: the encoder always runs in eval mode (BatchNorm running averages, no
      statistics updated) and no gradient flows into it: only the classifier learns
      (linear evaluation on augmented views, config.supervised.freeze_encoder).
  """
  encoder: nn.Module
  num_classes: int
  freeze_encoder: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Returns (features [N, F] float32, logits [N, num_classes] float32)."""
    features = self.encoder(x, train=train and not self.freeze_encoder)
    if self.freeze_encoder:
      features = jax.lax.stop_gradient(features)
    # float32 on purpose: the classifier is tiny and the sigmoid / softmax losses want it.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      name='classifier')(features)
    return features, logits


def resolve_num_classes(config: ml_collections.ConfigDict) -> int:
  """`config.supervised.num_classes`; must be >= 1.

  Raises:
    ValueError: naming `config.supervised.num_classes` when it is not a positive count.
  """
  num_classes = with_defaults(config).supervised.num_classes
  if int(num_classes) != num_classes or num_classes < 1:
    raise ValueError(
        f"config.supervised.num_classes={num_classes!r}: objective='supervised' needs the "
        "number of classes (findings); pass num_classes= to models.create_model or set "
        "config.supervised.num_classes to a positive integer.")
  return int(num_classes)


def create_supervised(config: ml_collections.ConfigDict, axis_name: str | None = None
                      ) -> Supervised:
  """Builds `Supervised(create_encoder(config), config.supervised.num_classes)`.

  Args:
    config: the encoder fields (see `simclr.create_encoder`) and `supervised.num_classes`
      (resolved from the data by the objective; `models.create_model` may override it).
    axis_name: pmap axis name for global BatchNorm (None outside pmap).

  Returns:
    An unbound `Supervised` module; `apply(variables, x, train)` -> (features, logits);
    with `supervised.freeze_encoder` the encoder is frozen (`Supervised.freeze_encoder`).
  """
  return Supervised(encoder=simclr.create_encoder(config, axis_name),
                    num_classes=resolve_num_classes(config),
                    freeze_encoder=bool(with_defaults(config).supervised.freeze_encoder))
