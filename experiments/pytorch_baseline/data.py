"""Torch Dataset over the TFDS ArrayRecord data that `python -m simclr_jax.prepare` writes.

The baseline reads the very same prepared files as simclr_jax (no second copy of the data):
`simclr_jax.data.get_builder(name, data_dir).as_data_source(split)` gives random access to the
decoded records ({'image': uint8 [S,S,1], ...}); this module wraps it for torch's DataLoader.
"""
import os

import numpy as np
import torch


def open_data_source(dataset: str, data_dir: str, split: str):
  """Random-access source of the prepared split: `builder.as_data_source(split)`.

  Raises FileNotFoundError (with the prepare command) when the dataset is not prepared in
  data_dir, and ValueError naming the available splits for an unknown split.
  """
  from simclr_jax import data as simclr_data  # registers the TFDS builders
  return simclr_data.data_source(dataset, str(data_dir), split)


class PreparedImageDataset(torch.utils.data.Dataset):
  """Images of one prepared TFDS split, each passed through `transform` (e.g. TwoViews).

  The data source is opened lazily in every process (DataLoader workers included) because
  ArrayRecord readers must not be shared across fork().

  Args:
    dataset: TFDS name[/config], e.g. 'synthetic_cxr/64' or 'nih_chest_xray14/256'.
    data_dir: the TFDS data_dir the data was prepared into.
    split: split name, e.g. 'train'.
    transform: callable on the uint8 image [H,W,1] numpy array.
  """

  def __init__(self, dataset: str, data_dir: str, split: str, transform=None):
    self.dataset, self.data_dir, self.split = dataset, data_dir, split
    self.transform = transform
    self._source, self._source_pid = None, None
    self._length = len(self._data_source())

  def _data_source(self):
    if self._source is None or self._source_pid != os.getpid():
      self._source = open_data_source(self.dataset, self.data_dir, self.split)
      self._source_pid = os.getpid()
    return self._source

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_source'], state['_source_pid'] = None, None  # reopened on first use (spawn workers)
    return state

  def __len__(self) -> int:
    return self._length

  def stored_image_shape(self) -> tuple:
    """Shape of the stored uint8 images, e.g. (64, 64, 1)."""
    return tuple(np.asarray(self._data_source()[0]['image']).shape)

  def __getitem__(self, index: int):
    record = self._data_source()[int(index)]
    image = np.asarray(record['image'])  # uint8 [H, W, 1]
    return self.transform(image) if self.transform is not None else image
