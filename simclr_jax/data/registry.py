"""The datasets this package knows: names, builders, prepared splits (no TensorFlow).

Two kinds of names, one way to read them:
  * built-in: 'synthetic_cxr/SIZE' and 'nih_chest_xray14/SIZE|thumbs64', TFDS builders
    registered by importing their modules (their configs are fixed in code);
  * your own data: 'folder/NAME/SIZE', 'csv/NAME/SIZE', 'medmnist/NAME/SIZE' (own_data.py).
    NAME is the user's, so these are not registered: a prepared one is the folder
    DATA_DIR/FAMILY/NAME/SIZE/VERSION, opened with `tfds.builder_from_directory`.
Every function that opens a dataset goes through `get_builder`, so the pipeline, the
settings checks, evaluation and the online monitor read both kinds unchanged. An unknown
name is a one-line ValueError listing the known ones (`describe_known_datasets`: the
built-ins, the own-data patterns and the own datasets prepared in that data_dir); a known
one that is not prepared a one-line FileNotFoundError with the prepare command that
makes it. `check_labelled` is the one-line refusal of an unlabelled dataset by whatever
needs labels.
"""
import contextlib
import functools
import logging
import os

import tensorflow_datasets as tfds

# Importing the builder modules registers 'synthetic_cxr' and 'nih_chest_xray14' with TFDS.
from simclr_jax.data import nih
from simclr_jax.data import own_data
from simclr_jax.data import synthetic_cxr

_SOURCE_FLAGS = {  # what prepare needs to make an own dataset, for the hint
    'folder': '--manual_dir DIR',
    'csv': '--csv FILE --image_root DIR --path_column COLUMN --label_columns A,B,...',
    'medmnist': '--npz FILE',
}


def known_datasets(data_dir=None) -> dict:
  """{family: [config names]}: the built-in TFDS datasets and, with `data_dir`, the own
  datasets prepared there ({'folder': ['xrays/64'], ...}; families with none left out)."""
  known = {builder_class.name: [config.name for config in builder_class.BUILDER_CONFIGS]
           for builder_class in (synthetic_cxr.SyntheticCxr, nih.NihChestXray14)}
  if data_dir is not None:
    for name in own_data.prepared_datasets(data_dir):
      family, _, config = name.partition('/')
      known.setdefault(family, []).append(config)
  return known


def describe_own_datasets(data_dir=None) -> str:
  """'folder/NAME/SIZE, csv/NAME/SIZE, medmnist/NAME/SIZE' and, with `data_dir`, the own
  datasets prepared there."""
  listing = own_data.name_pattern()
  if data_dir is None:
    return listing
  prepared = own_data.prepared_datasets(data_dir)
  return listing + (f' (prepared in {data_dir}: {", ".join(prepared)})' if prepared else
                    f' (none prepared in {data_dir})')


def describe_known_datasets(data_dir=None) -> str:
  """One line: 'synthetic_cxr/16|32|..., nih_chest_xray14/..., ' + describe_own_datasets."""
  builtin = known_datasets()
  listing = ', '.join(f"{family}/{'|'.join(configs)}" for family, configs in builtin.items())
  return f'{listing}, {describe_own_datasets(data_dir)}'


def check_dataset_name(name: str, data_dir=None) -> None:
  """Raises ValueError (one line, listing the known names) unless `name` is a known dataset.

  Accepted: 'family' (its default config) or 'family/config', e.g. 'synthetic_cxr/64', and
  own data as 'folder/NAME/SIZE', 'csv/NAME/SIZE', 'medmnist/NAME/SIZE' (whether that one
  is prepared is `get_builder`'s question).
  """
  try:
    if own_data.parse_name(name) is not None:
      return
  except ValueError as error:
    raise ValueError(f'{error}; known datasets: {describe_known_datasets(data_dir)}') from None
  known = known_datasets()
  family, _, config = str(name).partition('/')
  if family in known and (not config or config in known[family]):
    return
  raise ValueError(f'unknown dataset {name!r}; known datasets: '
                   f'{describe_known_datasets(data_dir)}')


def get_builder(name: str, data_dir: str, **builder_kwargs) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `name` ('name' or 'name/config', e.g. 'synthetic_cxr/64'; own data
  'folder/NAME/SIZE': the read-only builder of its prepared folder).

  Raises:
    ValueError: `name` is not one of known_datasets() (one line listing them).
    FileNotFoundError: an own dataset that is not prepared in data_dir (one line with the
      prepare command and the own datasets prepared there).
  """
  check_dataset_name(name, data_dir)
  data_dir = os.path.expanduser(data_dir) if isinstance(data_dir, str) else data_dir
  own = own_data.parse_name(name)
  if own is not None:
    if builder_kwargs:
      raise TypeError(f'{name}: own datasets are prepared by simclr_jax.prepare, not by '
                      f'builder arguments {sorted(builder_kwargs)}')
    version_folder = own_data.prepared_version_folder(data_dir, *own)
    if version_folder is None:
      prepared = own_data.prepared_datasets(data_dir)
      raise FileNotFoundError(
          f'dataset {name!r} is not prepared in data_dir {str(data_dir)!r} (looked for '
          f'{own_data.dataset_folder(data_dir, *own)}; prepared there: '
          f'{", ".join(prepared) or "none"}); run: {prepare_command(name, data_dir)}')
    return tfds.builder_from_directory(str(version_folder))
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
  own = own_data.parse_name(name)
  if own is not None:
    family, dataset_name, size = own
    return (f'python -m simclr_jax.prepare {family} {_SOURCE_FLAGS[family]} --name '
            f'{dataset_name} --image_size {size} --data_dir {data_dir}')
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
  """Names of the classes of the dataset's single-label `label` feature (multi-label data:
  the label names + the "none of them" class)."""
  return list(prepared_builder(dataset, str(data_dir)).info.features['label'].names)


def is_labelled(dataset: str, data_dir: str) -> bool:
  """True when the dataset has a 'label' or 'labels' feature."""
  features = prepared_builder(dataset, str(data_dir)).info.features
  return 'label' in features or 'labels' in features


def check_labelled(dataset: str, data_dir: str, what: str) -> None:
  """Raises ValueError (one line) when `what` needs labels and the dataset has none.

  Args:
    what: the evaluator, objective or option that needs them (names the setting).
  """
  if not is_labelled(dataset, data_dir):
    raise ValueError(
        f'{what} needs labels, but dataset {dataset!r} is unlabelled (prepared from images '
        f'without class folders or label table); pretrain on it with objective=simclr and '
        f'evaluate on a labelled dataset of the same image size')
