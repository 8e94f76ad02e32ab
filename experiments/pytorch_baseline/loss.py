"""The seed's NT-Xent loss (SimCLR), kept as the seed wrote it: a 2N x 2N similarity matrix."""
import torch
from torch import nn
import torch.nn.functional as F


class NTXentLoss(nn.Module):
  """Normalised temperature-scaled cross-entropy over the 2N views of N images.

  Row i of `z_i` (view 1) and row i of `z_j` (view 2) are a positive pair; every other view in
  the batch is a negative. Anchors are the 2N rows of [z_i; z_j]; the loss is their mean.
  """

  def __init__(self, temperature: float = 0.07):
    super().__init__()
    if temperature <= 0:
      raise ValueError(f'temperature must be > 0, got {temperature}')
    self.temperature = temperature

  @staticmethod
  def _create_positive_mask(batch_size: int, device=None) -> torch.Tensor:
    """Bool [2N, 2N]: True at (i, i+N) and (i+N, i), the positive partner of each view."""
    mask = torch.zeros(2 * batch_size, 2 * batch_size, dtype=torch.bool, device=device)
    index = torch.arange(batch_size, device=device)
    mask[index, index + batch_size] = True
    mask[index + batch_size, index] = True
    return mask

  def _similarity(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
    """Cosine similarities [2N, 2N] of the L2-normalised projections (in float32 or wider)."""
    z = torch.cat([z_i, z_j], dim=0)
    if z.dtype in (torch.float16, torch.bfloat16):
      z = z.float()  # the softmax over 2N logits at temperature 0.07 needs float32
    z = F.normalize(z, dim=1)
    return z @ z.T

  def _compute_nt_xent_loss(self, similarity: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cross-entropy of each anchor's positive among its 2N-1 other views."""
    self_mask = torch.eye(2 * batch_size, dtype=torch.bool, device=similarity.device)
    logits = (similarity / self.temperature).masked_fill(self_mask, float('-inf'))
    positive_mask = self._create_positive_mask(batch_size, similarity.device)
    labels = positive_mask.to(torch.int64).argmax(dim=1)  # [2N]: i -> i+N, i+N -> i
    return F.cross_entropy(logits, labels)

  def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
    batch_size = z_i.shape[0]
    return self._compute_nt_xent_loss(self._similarity(z_i, z_j), batch_size)

  @torch.no_grad()
  def metrics(self, z_i: torch.Tensor, z_j: torch.Tensor) -> dict:
    """The training metrics simclr_jax logs, as Python floats.

    Returns:
      positive_accuracy: fraction of anchors whose most similar other view is their positive.
      positive_similarity: mean cosine similarity of positive pairs.
      negative_similarity: mean cosine similarity of negative pairs (self and positive excluded).
    """
    batch_size = z_i.shape[0]
    similarity = self._similarity(z_i, z_j)
    self_mask = torch.eye(2 * batch_size, dtype=torch.bool, device=similarity.device)
    positive_mask = self._create_positive_mask(batch_size, similarity.device)
    negative_mask = ~(self_mask | positive_mask)
    predicted = similarity.masked_fill(self_mask, float('-inf')).argmax(dim=1)
    labels = positive_mask.to(torch.int64).argmax(dim=1)
    return {
        'positive_accuracy': (predicted == labels).float().mean().item(),
        'positive_similarity': similarity[positive_mask].mean().item(),
        'negative_similarity': similarity[negative_mask].mean().item(),
    }
