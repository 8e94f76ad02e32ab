"""SimCLR projection heads (the MLP between encoder features and the NT-Xent loss)."""
import functools
from typing import Any

from flax import linen as nn
import jax.numpy as jnp

HEAD_KINDS = ('mlp', 'simclr_v2')


class ProjectionHead(nn.Module):
  """MLP projection head.

  `num_layers` Dense layers; every layer but the last is followed by ReLU.

  * `use_bn=False` (the seed's head, kind 'mlp'): Dense(bias) -> ReLU -> ... ->
    Dense(bias); with the defaults 2048 -> 2048 -> 128 for ResNet-50.
  * `use_bn=True` (SimCLR v2, kind 'simclr_v2', usually num_layers=3): every Dense
    has no bias and is followed by BatchNorm: [Dense -> BN -> ReLU] x (num_layers - 1)
    -> Dense -> BN. The last BN has a scale but no bias, as in the SimCLR v2
    reference code (google-research/simclr, `center=False` on the output layer).

  Attributes:
    hidden_dim: width of the hidden layers.
    output_dim: size of the projection fed to the loss.
    num_layers: number of Dense layers (>= 1).
    use_bn: the SimCLR v2 variant described above.
    dtype: compute dtype; parameters are float32 and the output is float32.
    axis_name: pmap axis for global BatchNorm statistics (used only with use_bn).
    bn_momentum: running-average decay of the BatchNorm layers.
  """
  hidden_dim: int
  output_dim: int = 128
  num_layers: int = 2
  use_bn: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Projects features [N, F] to [N, output_dim] (float32)."""
    if self.num_layers < 1:
      raise ValueError(f'ProjectionHead num_layers={self.num_layers}: must be >= 1.')
    dense = functools.partial(nn.Dense, use_bias=not self.use_bn, dtype=self.dtype,
                              param_dtype=jnp.float32)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=jnp.float32, axis_name=self.axis_name)
    for layer in range(self.num_layers - 1):
      x = dense(self.hidden_dim, name=f'dense{layer}')(x)
      if self.use_bn:
        x = norm(name=f'bn{layer}')(x)
      x = nn.relu(x)
    last = self.num_layers - 1
    x = dense(self.output_dim, name=f'dense{last}')(x)
    if self.use_bn:
      x = norm(use_bias=False, name=f'bn{last}')(x)
    return x.astype(jnp.float32)  # [N, output_dim]
