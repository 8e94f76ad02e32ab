"""The SimCLR network (encoder + projection head) and factories reading the config."""
from typing import Any

from flax import linen as nn
import jax.numpy as jnp
import ml_collections

from simclr_jax.config import with_defaults
from simclr_jax.models import heads
from simclr_jax.models import resnet

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class SimCLR(nn.Module):
  """Encoder followed by a projection head.

  Variables: {'params': {'encoder': ..., 'head': ...},
              'batch_stats': {'encoder': ..., 'head': ... (only for heads with BN)}}.
  """
  encoder: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = True):
    """Returns (features [N, F] float32, projections [N, output_dim] float32)."""
    features = self.encoder(x, train=train)
    projections = self.head(features, train=train)
    return features, projections


def _compute_dtype(config) -> Any:
  name = config.dtype
  if name not in DTYPES:
    raise ValueError(f'config.dtype={name!r}: accepted values are {sorted(DTYPES)}.')
  return DTYPES[name]


def _model_constructor(config):
  name = config.model
  if name not in resnet.MODELS:
    raise ValueError(f'config.model={name!r}: accepted values are {sorted(resnet.MODELS)}.')
  return resnet.MODELS[name]


def create_encoder(config: ml_collections.ConfigDict, axis_name: str | None = None
                   ) -> resnet.ResNet:
  """Builds the ResNet encoder named by the config.

  Args:
    config: reads `model` (resnet18|34|50|101|152|resnet_tiny), `width`, `stem`
      ('imagenet' or 'cifar'), `dtype` ('float32' or 'bfloat16') and `zero_init_residual`
      (True: each block starts as identity); a field it lacks has its config.py default.
    axis_name: pmap axis name for global BatchNorm (None outside pmap).

  Returns:
    An unbound `ResNet` module.

  Raises:
    ValueError: for an unknown model, stem or dtype, naming the field.
  """
  config = with_defaults(config)
  constructor = _model_constructor(config)
  if config.stem not in resnet.STEMS:
    raise ValueError(f'config.stem={config.stem!r}: accepted values are {list(resnet.STEMS)}.')
  return constructor(width=float(config.width),
                     dtype=_compute_dtype(config),
                     axis_name=axis_name,
                     stem=config.stem,
                     zero_init_residual=bool(config.zero_init_residual))


def feature_dim(config: ml_collections.ConfigDict) -> int:
  """Size of the encoder's pooled features, e.g. 2048 for resnet50 at width 1."""
  config = with_defaults(config)
  constructor = _model_constructor(config)
  return resnet.output_features(constructor.keywords['stage_sizes'],
                                constructor.keywords['block_cls'], float(config.width))


def create_head(config: ml_collections.ConfigDict, axis_name: str | None = None
                ) -> heads.ProjectionHead:
  """Builds the projection head from `config.head`.

  `config.head` fields: `kind` ('mlp': Dense-ReLU-Dense with biases; 'simclr_v2':
  Dense(no bias)-BN-ReLU ... Dense-BN), `hidden_dim` (-1 => feature dim),
  `output_dim` and `num_layers` (use 3 for SimCLR v2).
  """
  config = with_defaults(config)
  head_config = config.head
  kind = head_config.kind
  if kind not in heads.HEAD_KINDS:
    raise ValueError(f'config.head.kind={kind!r}: accepted values are {list(heads.HEAD_KINDS)}.')
  hidden_dim = int(head_config.hidden_dim)
  if hidden_dim == -1:
    hidden_dim = feature_dim(config)
  elif hidden_dim <= 0:
    raise ValueError(f'config.head.hidden_dim={hidden_dim}: use a positive size or -1 '
                     '(= the encoder feature dim).')
  num_layers = int(head_config.num_layers)
  if num_layers < 1:
    raise ValueError(f'config.head.num_layers={num_layers}: must be >= 1.')
  return heads.ProjectionHead(hidden_dim=hidden_dim,
                              output_dim=int(head_config.output_dim),
                              num_layers=num_layers,
                              use_bn=kind == 'simclr_v2',
                              dtype=_compute_dtype(config),
                              axis_name=axis_name)


def create_simclr(config: ml_collections.ConfigDict, axis_name: str | None = None) -> SimCLR:
  """Builds `SimCLR(create_encoder(config), create_head(config))`.

  `models.create_model` calls this for objective 'simclr'.

  Args:
    config: see `create_encoder` and `create_head` for the fields read.
    axis_name: pmap axis name for global BatchNorm (None outside pmap).

  Returns:
    An unbound `SimCLR` module; `apply(variables, x, train)` -> (features, projections).
  """
  return SimCLR(encoder=create_encoder(config, axis_name),
                head=create_head(config, axis_name))
