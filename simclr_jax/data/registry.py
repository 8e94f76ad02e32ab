"""The datasets this package knows: names, builders, prepared splits (no TensorFlow).

Every function that opens a dataset goes through `get_builder`: an unknown name is a
one-line ValueError listing the known ones (`known_datasets()`), a known one that is not
prepared a one-line FileNotFoundError with the prepare command that makes it.
"""
import contextlib
import functools
import logging
import os

import tensorflow_datasets as tfds

# Importing the builder modules registers 'synthetic_cxr' and 'nih_chest_xray14' with TFDS.
from simclr_jax.data import nih
from simclr_jax.data import synthetic_cxr


def known_datasets() -> dict:
  """{TFDS name: [builder config names]} of the datasets this package registers."""
  return {builder_class.name: [config.name for config in builder_class.BUILDER_CONFIGS]
          for builder_class in (synthetic_cxr.SyntheticCxr, nih.NihChestXray14)}



def check_dataset_name(name: str) -> None:
  """Raises ValueError (one line, listing the known names) unless `name` is a known dataset.

  Accepted: 'family' (its default config) or 'family/config', e.g. 'synthetic_cxr/64'.
  """
  known = known_datasets()
  family, _, config = str(name).partition('/')
  if family in known and (not config or config in known[family]):
    return
  listing = ', '.join(f"{family}/{'|'.join(configs)}" for family, configs in known.items())
  raise ValueError(f'unknown dataset {name!r}; known datasets: {listing}')



def get_builder(name: str, data_dir: str, **builder_kwargs) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `name` ('name' or 'name/config', e.g. 'synthetic_cxr/64').

  Raises:
    ValueError: `name` is not one of known_datasets() (one line listing them).
  """
  check_dataset_name(name)
  data_dir = os.path.expanduser(data_dir) if isinstance(data_dir, str) else data_dir
  with _without_unprepared_warning():
    return tfds.builder(name, data_dir=data_dir, **builder_kwargs)



def _drop_missing_variant_warning(record: logging.LogRecord) -> bool:
  """False for TFDS's 'Variant folder ... has no dataset_info.json' (not prepared yet)."""
  return not str(record.msg).startswith('Variant folder')



@contextlib.contextmanager
def _without_unprepared_warning():
  """Silences TFDS's warning about an unprepared dataset: callers report it in one line."""
  absl_logger = logging.getLogger('absl')
  absl_logger.addFilter(_drop_missing_variant_warning)
  try:
    yield
  finally:
    absl_logger.removeFilter(_drop_missing_variant_warning)



def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  """builder.is_prepared(), without TFDS's warning when it is not."""
  with _without_unprepared_warning():
    return builder.is_prepared()



def prepare_command(name: str, data_dir) -> str:
  """The `python -m simclr_jax.prepare ...` command that prepares dataset `name`."""
  builder_class = nih.NihChestXray14 if name.startswith(nih.NihChestXray14.name) else (
      synthetic_cxr.SyntheticCxr)
  config = name.partition('/')[2] or builder_class.DEFAULT_BUILDER_CONFIG_NAME
  if builder_class is synthetic_cxr.SyntheticCxr:
    arguments = f'synthetic_cxr --image_size {config}'
  elif config == nih.THUMBS_CONFIG:
    arguments = 'nih --manual_dir NIH_THUMBS_DIR --csv Data_Entry_2017_v2020.csv.gz'
  else:
    arguments = f'nih --manual_dir DIR --image_size {config}'
  return f'python -m simclr_jax.prepare {arguments} --data_dir {data_dir}'



@functools.lru_cache(maxsize=32)
def prepared_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  builder = get_builder(name, data_dir)
  if not is_prepared(builder):
    raise FileNotFoundError(
        f'dataset {name!r} is not prepared in data_dir {data_dir!r} (looked for '
        f'{builder.data_path}); run: {prepare_command(name, data_dir)}')
  return builder



def check_split(builder, name, split):
  if split not in builder.info.splits:
    raise ValueError(f'split {split!r} not in dataset {name!r}; available: '
                     f'{sorted(builder.info.splits.keys())}')



def data_source(dataset: str, data_dir: str, split: str):
  """Random-access TFDS ArrayRecord data source of a prepared split."""
  builder = prepared_builder(dataset, str(data_dir))
  check_split(builder, dataset, split)
  return builder.as_data_source(split)



def num_examples(dataset: str, data_dir: str, split: str) -> int:
  """Number of examples in a prepared split."""
  builder = prepared_builder(dataset, str(data_dir))
  check_split(builder, dataset, split)
  return builder.info.splits[split].num_examples



def class_names(dataset: str, data_dir: str) -> list:
  """Names of the classes of the dataset's single-label `label` feature."""
  return list(prepared_builder(dataset, str(data_dir)).info.features['label'].names)
