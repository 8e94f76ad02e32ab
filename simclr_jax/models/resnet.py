"""ResNet v1.5 encoders (Flax Linen) that match torchvision layer for layer.

The encoders return globally average-pooled features, not logits: SimCLR puts a
projection head on top (see `heads.py`) and evaluation reads the features.

Layout is NHWC with any number of input channels (1 for X-rays, 3 for ImageNet
weights). Paddings are written out as torchvision uses them so that converted
weights give the same numbers (`simclr_jax/convert.py` relies on that and on the
parameter names below):

  conv_init, bn_init                      torchvision conv1, bn1
  stage{i}_block{j}/conv{k}, bn{k}        layer{i+1}.{j}.conv{k}, bn{k}
  stage{i}_block{j}/downsample_conv, _bn  layer{i+1}.{j}.downsample.0, .1

BatchNorm statistics are averaged over `axis_name` when it is set, so under
`pmap(..., axis_name='batch')` the statistics are those of the global batch.
"""
import functools
from typing import Any, Callable, Sequence

from flax import linen as nn
import jax.numpy as jnp

ModuleDef = Any

STEMS = ('imagenet', 'cifar')
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34). Output channels: `filters`."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = True
  expansion = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides, padding=[(1, 1), (1, 1)],
                  name='conv1')(x)
    y = self.norm(name='bn1')(y)
    y = nn.relu(y)
    y = self.conv(self.filters, (3, 3), padding=[(1, 1), (1, 1)], name='conv2')(y)
    # Zero scale makes each block start as the identity (Goyal et al. 2017).
    last_scale_init = (nn.initializers.zeros_init() if self.zero_init_residual
                       else nn.initializers.ones_init())
    y = self.norm(scale_init=last_scale_init, name='bn2')(y)

    if self.strides != 1 or x.shape[-1] != self.filters:
      residual = self.conv(self.filters, (1, 1), self.strides, padding=[(0, 0), (0, 0)],
                           name='downsample_conv')(residual)
      residual = self.norm(name='downsample_bn')(residual)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, v1.5 as torchvision) -> 1x1; output `4 * filters` channels."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = True
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out_channels = self.filters * self.expansion
    residual = x
    y = self.conv(self.filters, (1, 1), padding=[(0, 0), (0, 0)], name='conv1')(x)
    y = self.norm(name='bn1')(y)
    y = nn.relu(y)
    y = self.conv(self.filters, (3, 3), self.strides, padding=[(1, 1), (1, 1)],
                  name='conv2')(y)
    y = self.norm(name='bn2')(y)
    y = nn.relu(y)
    y = self.conv(out_channels, (1, 1), padding=[(0, 0), (0, 0)], name='conv3')(y)
    last_scale_init = (nn.initializers.zeros_init() if self.zero_init_residual
                       else nn.initializers.ones_init())
    y = self.norm(scale_init=last_scale_init, name='bn3')(y)

    if self.strides != 1 or x.shape[-1] != out_channels:
      residual = self.conv(out_channels, (1, 1), self.strides, padding=[(0, 0), (0, 0)],
                           name='downsample_conv')(residual)
      residual = self.norm(name='downsample_bn')(residual)
    return nn.relu(residual + y)


def num_filters(width: float) -> int:
  """Channels of the stem and first stage for a width multiplier (64 at width 1)."""
  return int(64 * width)


def output_features(stage_sizes: Sequence[int], block_cls: ModuleDef, width: float) -> int:
  """Size of the pooled feature vector, e.g. 2048 for ResNet-50 at width 1."""
  return num_filters(width) * 2 ** (len(stage_sizes) - 1) * block_cls.expansion


class ResNet(nn.Module):
  """ResNet v1.5 encoder without classifier.

  Attributes:
    stage_sizes: blocks per stage, e.g. [3, 4, 6, 3] for ResNet-50.
    block_cls: `BasicBlock` or `Bottleneck`.
    width: width multiplier; the stem has `int(64 * width)` channels.
    dtype: compute dtype (float32 or bfloat16). Parameters stay float32.
    axis_name: pmap axis over which BatchNorm statistics are averaged (global BN).
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max pool, as torchvision) or 'cifar'
      (3x3/1 conv, no pool; for small images).
    zero_init_residual: initialise the scale of each block's last BatchNorm to 0.
    bn_momentum: running-average decay (0.9 == torchvision momentum 0.1).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: float = 1.0
  dtype: Any = jnp.float32
  axis_name: str | None = None
  stem: str = 'imagenet'
  zero_init_residual: bool = True
  bn_momentum: float = 0.9

  @property
  def features(self) -> int:
    return output_features(self.stage_sizes, self.block_cls, self.width)

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Encodes images.

    Args:
      x: images [N, H, W, C], any float dtype and channel count.
      train: use batch statistics (and update `batch_stats`) when True, running
        averages when False.

    Returns:
      Pooled features [N, self.features], float32.
    """
    # torchvision's init (kaiming normal, fan-out, ReLU gain): a random network here is the
    # seed's random network, and BN-free inference at init keeps activations in range.
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=KAIMING_FAN_OUT)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=jnp.float32, axis_name=self.axis_name)
    filters = num_filters(self.width)

    if self.stem == 'imagenet':
      x = conv(filters, (7, 7), 2, padding=[(3, 3), (3, 3)], name='conv_init')(x)
      x = norm(name='bn_init')(x)
      x = nn.relu(x)
      # Padding with -inf, as torch's MaxPool2d(3, 2, padding=1).
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    elif self.stem == 'cifar':
      x = conv(filters, (3, 3), 1, padding=[(1, 1), (1, 1)], name='conv_init')(x)
      x = norm(name='bn_init')(x)
      x = nn.relu(x)
    else:
      raise ValueError(f"ResNet stem={self.stem!r}: accepted values are {STEMS}.")

    for i, block_count in enumerate(self.stage_sizes):
      for j in range(block_count):
        x = self.block_cls(filters * 2 ** i,
                           conv=conv,
                           norm=norm,
                           strides=2 if i > 0 and j == 0 else 1,
                           zero_init_residual=self.zero_init_residual,
                           name=f'stage{i}_block{j}')(x)
    # Pool in float32 so bfloat16 compute still hands float32 features downstream.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [N, features]


ResNet18 = functools.partial(ResNet, stage_sizes=[2, 2, 2, 2], block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=[3, 4, 23, 3], block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=[3, 8, 36, 3], block_cls=Bottleneck)
# Two basic-block stages: for tests and CPU demos.
ResNetTiny = functools.partial(ResNet, stage_sizes=[1, 1], block_cls=BasicBlock)

# config.model -> constructor.
MODELS: dict[str, Callable[..., ResNet]] = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet101': ResNet101,
    'resnet152': ResNet152,
    'resnet_tiny': ResNetTiny,
}
