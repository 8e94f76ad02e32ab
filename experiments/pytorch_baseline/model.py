"""The seed's SimCLR model: a torchvision ResNet encoder and a two-layer MLP projection head."""
import torch
from torch import nn
import torchvision

# Encoders the baseline accepts: torchvision constructor name -> pooled feature dimension.
FEATURE_DIMS = {
    'resnet18': 512,
    'resnet34': 512,
    'resnet50': 2048,
    'resnet101': 2048,
    'resnet152': 2048,
}


def create_encoder(model_name: str = 'resnet50') -> nn.Module:
  """Returns a randomly initialised torchvision ResNet whose `fc` is Identity.

  Its forward returns the pooled features [N, feature_dim]; its state_dict is a torchvision
  state_dict without the `fc.*` entries (what `simclr_jax.convert` reads).
  """
  if model_name not in FEATURE_DIMS:
    raise ValueError(
        f'--model {model_name!r} is not a torchvision ResNet the baseline supports; '
        f'expected one of {sorted(FEATURE_DIMS)}')
  encoder = getattr(torchvision.models, model_name)(weights=None)
  encoder.fc = nn.Identity()
  return encoder


class ProjectionHead(nn.Sequential):
  """The seed's head: Linear(F, hidden) - ReLU - Linear(hidden, output), e.g. 2048->2048->128."""

  def __init__(self, input_dim: int, hidden_dim: int, output_dim: int = 128):
    super().__init__(
        nn.Linear(input_dim, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, output_dim),
    )


class SimCLRModel(nn.Module):
  """Encoder + projection head; forward(x [N,3,H,W]) -> (features [N,F], projections [N,D])."""

  def __init__(self, model_name: str = 'resnet50', hidden_dim: int = -1, output_dim: int = 128):
    super().__init__()
    feature_dim = FEATURE_DIMS.get(model_name)
    self.encoder = create_encoder(model_name)
    self.head = ProjectionHead(
        feature_dim, feature_dim if hidden_dim <= 0 else hidden_dim, output_dim)

  def forward(self, images: torch.Tensor):
    features = self.encoder(images)  # [N, F]
    return features, self.head(features)  # [N, F], [N, D]
