"""The seed's augmentation pipeline (torchvision.transforms.v2), applied per image on the CPU."""
import contextlib

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEED_BLUR_KERNEL = 23


def _blur_kernel_size(image_size: int) -> int:
  """The seed's 23 px kernel, shrunk to the largest odd size reflect padding allows (tiny tests)."""
  largest_allowed = image_size if image_size % 2 == 1 else image_size - 1
  return min(SEED_BLUR_KERNEL, largest_allowed)


def seed_transform(image_size: int) -> v2.Compose:
  """The seed's view transform: uint8 [3,H,W] tensor -> float32 [3,S,S] ImageNet-normalised."""
  return v2.Compose([
      v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), antialias=True),
      v2.RandomHorizontalFlip(),
      v2.RandomRotation(10),
      v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1),
      v2.RandomGrayscale(p=0.2),
      v2.GaussianBlur(kernel_size=_blur_kernel_size(image_size), sigma=(0.1, 2.0)),
      v2.ToDtype(torch.float32, scale=True),
      v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
  ])


def eval_transform(image_size: int) -> v2.Compose:
  """Deterministic: resize + centre crop to S, then the same normalisation (no augmentation)."""
  return v2.Compose([
      v2.Resize(image_size, antialias=True),
      v2.CenterCrop(image_size),
      v2.ToDtype(torch.float32, scale=True),
      v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
  ])


def to_rgb_tensor(image: np.ndarray) -> torch.Tensor:
  """uint8 [H,W,1] (or [H,W] / [H,W,3]) numpy -> uint8 [3,H,W] tensor, grey replicated as the seed fed RGB."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'expected a uint8 image, got dtype {image.dtype}')
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'expected an image [H,W,1] or [H,W,3], got shape {image.shape}')
  image = np.ascontiguousarray(image)
  if not image.flags.writeable:  # ArrayRecord records decode to read-only arrays
    image = image.copy()
  tensor = torch.from_numpy(image).permute(2, 0, 1)  # [C,H,W]
  if tensor.shape[0] == 1:
    tensor = tensor.expand(3, -1, -1)
  return v2.functional.to_image(tensor.contiguous())


@contextlib.contextmanager
def single_threaded():
  """Runs torch ops on one thread inside the block (DataLoader workers already do).

  Per-image transforms are tiny ops; with --workers 0 they run in the training process,
  whose intra-op thread pool makes them ~30x slower on a busy CPU (spin-waiting threads).
  """
  threads = torch.get_num_threads()
  if threads != 1:
    torch.set_num_threads(1)
  try:
    yield
  finally:
    if threads != 1:
      torch.set_num_threads(threads)


class TwoViews:
  """Callable: uint8 image -> (view1, view2), two independent draws of `transform`."""

  def __init__(self, transform):
    self.transform = transform

  def __call__(self, image: np.ndarray):
    with single_threaded():
      return self._two_views(image)

  def _two_views(self, image: np.ndarray):
    rgb = to_rgb_tensor(image)
    # Plain tensors so default_collate and autocast see ordinary torch.Tensors.
    return (self.transform(rgb).as_subclass(torch.Tensor),
            self.transform(rgb).as_subclass(torch.Tensor))
