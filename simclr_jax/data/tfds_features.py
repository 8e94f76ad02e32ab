"""What every dataset builder shares: one image format, how often progress is logged, the
fingerprint of an input file, and TFDS's writer working without TensorFlow on splits
larger than memory."""
import hashlib
import importlib.util
import logging
import math
import os
import resource
import types

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle


def grey_image(size: int) -> tfds.features.Tensor:
  """uint8 [size, size, 1], stored as raw bytes.

  A plain uint8 Tensor would be serialised as an int64 list (~10x slower to write and
  read); tfds.features.Image would PNG-encode through TensorFlow, which we do not install.
  """
  return tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                              encoding=tfds.features.Encoding.BYTES)


def file_sha256(path) -> str:
  """Hex SHA-256 of a file's bytes (identifies a label table wherever it is stored)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def progress_every(num_images: int) -> int:
  """Images between two progress lines while a split is written (when not on a terminal).

  About ten lines per split, but none before 100 images (a tiny split logs only its end)
  and at least one every 5000 (NIH's 78k training images: one every ~30 s).
  """
  return min(5000, max(100, math.ceil(num_images / 10)))


def _raise_open_files_limit(wanted: int = 4096) -> None:
  """TFDS spills a large split into 1,000 bucket files open at once (> the usual 1,024)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
  if soft != resource.RLIM_INFINITY and soft < target:
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class _ResourceExhaustedError(Exception):
  """Stands in for tf.errors.ResourceExhaustedError (never raised: limits are raised first)."""


def _gfile_without_tensorflow() -> types.SimpleNamespace:
  """The part of `tf` that TFDS's shuffler uses (io.gfile + one error type), on etils."""
  def gfile(path, mode="r"):
    return epath.Path(path).open(mode)

  def remove(path):
    epath.Path(path).unlink()

  io = types.SimpleNamespace(gfile=types.SimpleNamespace(
      GFile=gfile, exists=lambda path: epath.Path(path).exists(), remove=remove))
  return types.SimpleNamespace(io=io, errors=types.SimpleNamespace(
      ResourceExhaustedError=_ResourceExhaustedError))


def allow_large_splits_without_tensorflow() -> None:
  """Lets TFDS write splits larger than its in-memory shuffle buffer (1 GB) without TF.

  TFDS keeps a split in memory up to `MAX_MEM_BUFFER_SIZE` and then spills it to temporary
  bucket files through `tf.io.gfile`, which imports TensorFlow. This project does not
  install TensorFlow (the records are raw bytes), so NIH at 256 px (~7 GB) failed at about
  1 GB with "No module named 'tensorflow'". With TensorFlow absent, the shuffler's file
  access goes through etils (local paths and, with the extras, cloud buckets) instead.
  Called by the builders before they write; a no-op when TensorFlow is installed.
  """
  if importlib.util.find_spec("tensorflow") is not None:
    return
  if not isinstance(tfds_shuffle.tf, types.SimpleNamespace):
    tfds_shuffle.tf = _gfile_without_tensorflow()
    logging.debug("TFDS shuffler: file access through etils (TensorFlow not installed).")
  _raise_open_files_limit()
