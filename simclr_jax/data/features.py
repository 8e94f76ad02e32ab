"""What every dataset builder shares: one image format, and how often progress is logged."""
import math

import numpy as np
import tensorflow_datasets as tfds


def grey_image(size: int) -> tfds.features.Tensor:
  """uint8 [size, size, 1], stored as raw bytes.

  A plain uint8 Tensor would be serialised as an int64 list (~10x slower to write and
  read); tfds.features.Image would PNG-encode through TensorFlow, which we do not install.
  """
  return tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                              encoding=tfds.features.Encoding.BYTES)


def progress_every(num_images: int) -> int:
  """Images between two progress lines while a split is written (when not on a terminal).

  About ten lines per split, but none before 100 images (a tiny split logs only its end)
  and at least one every 5000 (NIH's 78k training images: one every ~30 s).
  """
  return min(5000, max(100, math.ceil(num_images / 10)))
