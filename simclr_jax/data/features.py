"""Feature specs shared by every dataset builder: one image format for all datasets."""
import numpy as np
import tensorflow_datasets as tfds


def grey_image(size: int) -> tfds.features.Tensor:
  """uint8 [size, size, 1], stored as raw bytes.

  A plain uint8 Tensor would be serialised as an int64 list (~10x slower to write and
  read); tfds.features.Image would PNG-encode through TensorFlow, which we do not install.
  """
  return tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                              encoding=tfds.features.Encoding.BYTES)
