"""Your own chest X-rays as prepared datasets: what the folder, CSV and MedMNIST builders
share (names, storage, the record, counts, patients and splits, the TFDS builder).

  python -m simclr_jax.prepare folder   --manual_dir DIR --name NAME [--image_size N]
  python -m simclr_jax.prepare csv      --csv FILE --image_root DIR --name NAME \\
      --path_column C --label_columns A,B,... [--patient_column P] [--split_column S]
  python -m simclr_jax.prepare medmnist --npz FILE --name NAME [--image_size N]

How the three read their input: data/folder.py, data/csv_table.py, data/medmnist.py.

Names. A prepared dataset is `FAMILY/NAME/SIZE` (`folder/kermany/64`, `csv/chexpert/224`,
`medmnist/chestmnist/28`): FAMILY is how it was read, NAME the user's (letters, digits,
'.', '_', '-'), SIZE the stored side length in px (8..1024). That is the name
`config.dataset`, `evaluate --dataset` and `compare --dataset` take.

Storage. The builder writes TFDS's own layout, ArrayRecord files plus dataset_info.json,
features.json and metadata.json, into DATA_DIR/FAMILY/NAME/SIZE/1.0.0/. The names are the
user's, so they cannot be TFDS builder configs fixed in code; every reader opens the
folder with `tfds.builder_from_directory` (registry.py), which needs no registration and
no code of this module: a data_dir prepared here is readable by any copy of the project.

Record (the same feature family as NIH and synthetic_cxr):
  image        uint8 [S, S, 1]
  patient_id   int64, on every record (see "Patients" below)
  image_index  the file's path relative to the folder / the CSV's path / 'train/12' for
               row 12 of MedMNIST's train arrays (joins reports back to the files)
  single-label data (class folders, MedMNIST multi-class):
    label      ClassLabel over the class names
  multi-label data (CSV label columns, ChestMNIST):
    labels     uint8 [C] multi-hot; the C names in info.metadata['label_names']
    label      ClassLabel over the C names + a "none of them" class (`No Finding`, or
               `none of the labels` when a column already has that name): the index of the
               single positive label, C when there is none, -1 when several (as NIH)
  unlabelled data (a folder without class subfolders, or --unlabelled): neither; the
    evaluators, objective='supervised' and class-balanced sampling refuse it in one line.

metadata.json: `source` (what was read), `labelling` (single-label, multi-label or
unlabelled), `prepare_options` (every option that decides the content, incl. the SHA-256
of a CSV or npz), `prepare_counts` and `patients_in_several_splits` (0 when the splits
are patient-wise). Counts, per split and in total: found, written, corrupt, blank,
too_small (skipped, each file named in the log; the rule is in data/images.py),
unlabelled (images written without a label: all of an unlabelled dataset; CSV rows whose
label cells are all blank), per_label (written images per class / label, and the
"none of them" class), patients; CSV tables also rows, missing_from_disk and
uncertain_skipped (`--uncertain ignore`).

Patients. A patient id comes from, in this order: the CSV's --patient_column; a
--patient_regex searched in the file's relative path (its first group if it has one,
e.g. 'patient(\\d+)' for CheXpert's patient folders, '^(\\d+)_' for NIH file names); the
DICOM PatientID of a folder's DICOM files; else every file is its own patient. A text id
becomes a stable int64: digits as the number, anything else the first 8 bytes of its
SHA-256 (a non-negative int63).

Splits. Given ones are kept: split folders (train/, val|valid|validation/, test/), the
CSV's --split_column, MedMNIST's train/val/test arrays. Otherwise a seeded hash of the
patient id (data/subsets.py `patient_split`: --test_fraction 0.2 of the patients, then
--validation_fraction 0.1 of the others; --split_seed picks another split), so no patient
is in two splits. Given splits that put a patient in two are made patient-wise by default
(each such patient moved wholly into one of its splits, the rule of NIH's thumbs layout:
`subsets.reassign_patient_wise`; `patients_moved` / `images_moved` in the counts);
`--keep_folder_splits` keeps them as given, counted in `patients_in_several_splits` and
warned about. A split with no image
is not written.

Bad input (BadInput / FileNotFoundError, one line, exit 2 from prepare, nothing left
behind): no images found, an empty class folder, a missing CSV column (the line lists the
columns there are), a label value other than 1 / 0 / -1 / blank, the same image twice
(a CSV path listed twice, or two files with the same bytes), an npz without the MedMNIST
arrays, files of which none can be decoded ("images that are not images"). A single
unreadable, blank or tiny file is counted and skipped, not fatal.
"""
import dataclasses
import hashlib
import inspect
import logging
import os
import pathlib
import re
from typing import Any, Callable, Optional

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from simclr_jax.data import images
from simclr_jax.data import labels as labels_lib
from simclr_jax.data import subsets
from simclr_jax.data import tfds_features

FAMILIES = ('folder', 'csv', 'medmnist')
NAME_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*\Z')
IMAGE_SIZE_RANGE = (8, 1024)
VERSION = '1.0.0'
SPLIT_NAMES = {'train': 'train', 'val': 'validation', 'valid': 'validation',
               'validation': 'validation', 'test': 'test'}
LABELLINGS = ('single-label', 'multi-label', 'unlabelled')


class BadInput(ValueError):
  """Input that cannot be prepared; the message is one line naming the file or value."""


def name_pattern() -> str:
  """The naming scheme, as listed in messages: 'folder/NAME/SIZE, csv/NAME/SIZE, ...'."""
  return ', '.join(f'{family}/NAME/SIZE' for family in FAMILIES)


def parse_name(dataset: str) -> Optional[tuple]:
  """('folder', NAME, SIZE) for 'folder/NAME/SIZE' (also csv, medmnist); None for a name
  of another family.

  Raises:
    ValueError: a name of these families with a bad NAME or SIZE (one line).
  """
  family, _, rest = str(dataset).partition('/')
  if family not in FAMILIES:
    return None
  name, _, size = rest.partition('/')
  check_name(name, what=f'dataset {dataset!r}: NAME')
  try:
    size = int(size)
  except ValueError:
    raise ValueError(f'dataset {dataset!r}: expected {family}/NAME/SIZE with SIZE the '
                     f'image size in px, e.g. {family}/{name}/64') from None
  check_image_size(size, what=f'dataset {dataset!r}: SIZE')
  return family, name, size


def check_name(name: str, what: str = '--name') -> None:
  if not NAME_PATTERN.match(str(name or '')):
    raise ValueError(f'{what} {name!r}: use letters, digits, ".", "_" and "-" (starting '
                     f'with a letter or digit), e.g. my_xrays')


def check_image_size(size: int, what: str = '--image_size') -> None:
  low, high = IMAGE_SIZE_RANGE
  if not low <= int(size) <= high:
    raise ValueError(f'{what} {size}: use {low}..{high} px')


def dataset_folder(data_dir, family: str, name: str, size: int) -> pathlib.Path:
  """DATA_DIR/FAMILY/NAME/SIZE: holds the version folder(s) of a prepared dataset."""
  return pathlib.Path(os.path.expanduser(str(data_dir))) / family / name / str(size)


def prepared_version_folder(data_dir, family: str, name: str, size: int
                            ) -> Optional[pathlib.Path]:
  """The newest complete version folder (with dataset_info.json), or None."""
  folder = dataset_folder(data_dir, family, name, size)
  if not folder.is_dir():
    return None
  versions = [path for path in folder.iterdir()
              if re.fullmatch(r'\d+\.\d+\.\d+', path.name) and
              (path / 'dataset_info.json').is_file()]
  if not versions:
    return None
  return max(versions, key=lambda path: tuple(int(part) for part in path.name.split('.')))


def prepared_datasets(data_dir) -> list:
  """'FAMILY/NAME/SIZE' of every own dataset prepared in data_dir, sorted."""
  root = pathlib.Path(os.path.expanduser(str(data_dir)))
  found = set()
  for family in FAMILIES:
    for info in root.glob(f'{family}/*/*/*/dataset_info.json'):
      name, size = info.parent.parent.parent.name, info.parent.parent.name
      if NAME_PATTERN.match(name) and size.isdigit():
        found.add(f'{family}/{name}/{size}')
  return sorted(found)


# ------------------------------------------------------------------------ patients, splits

def patient_id_from_text(text: str) -> int:
  """A stable int64 patient id: digits as the number, else 8 bytes of SHA-256 (>= 0)."""
  text = str(text).strip()
  if text.isascii() and text.isdigit() and int(text) < 2**63:
    return int(text)
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'big') >> 1


def file_patient_id(key: str) -> int:
  """The patient id of a file without patient information: one patient per file."""
  return patient_id_from_text(f'file:{key}')


def regex_patient_id(pattern: 're.Pattern', key: str, what: str) -> int:
  """The patient id --patient_regex finds in `key` (group 1 if any, else the match).

  Raises:
    BadInput: the pattern does not match `key`.
  """
  match = pattern.search(key)
  if match is None:
    raise BadInput(f'--patient_regex {pattern.pattern!r} does not match {what} {key!r}; '
                   f'it must find the patient in every path')
  return patient_id_from_text(match.group(1) if pattern.groups else match.group(0))


def compile_patient_regex(pattern: Optional[str]):
  if not pattern:
    return None
  try:
    return re.compile(pattern)
  except re.error as error:
    raise BadInput(f'--patient_regex {pattern!r} is not a regular expression ({error})'
                   ) from None


def split_of_folder(name: str) -> Optional[str]:
  """'train' / 'validation' / 'test' for a split folder or split column value, else None."""
  return SPLIT_NAMES.get(str(name).strip().lower())


def hash_split(patient_id: int, options: dict) -> str:
  """The patient's split under the recorded fractions and seed (data/subsets.py)."""
  return subsets.patient_split(patient_id, options['test_fraction'],
                               options['validation_fraction'], seed=options['split_seed'])


def split_options(test_fraction, validation_fraction, split_seed) -> dict:
  """The hash split's options with their defaults, checked."""
  options = {'test_fraction': 0.2 if test_fraction is None else float(test_fraction),
             'validation_fraction': (0.1 if validation_fraction is None
                                     else float(validation_fraction)),
             'split_seed': 0 if split_seed is None else int(split_seed)}
  for name in ('test_fraction', 'validation_fraction'):
    if not 0.0 <= options[name] < 1.0:
      raise BadInput(f'--{name} {options[name]}: must be in [0, 1)')
  return options


# ------------------------------------------------------------------------------ the plan

@dataclasses.dataclass
class Example:
  """One image to write."""
  key: str                 # image_index: unique within the dataset
  source: Any              # the file (pathlib.Path), or its row in MedMNIST's array
  patient_id: int
  target: Any = None       # class id (single-label), uint8 [C] (multi-label) or None
  labels_blank: bool = False   # a CSV row whose label cells were all blank


@dataclasses.dataclass
class Plan:
  """What a family's reader found: the examples of each split and how to label them."""
  family: str
  name: str
  labelling: str           # one of LABELLINGS
  names: tuple             # class names (single-label) or the C label names (multi-label)
  splits: dict             # {split: [Example]} (empty splits are not written)
  options: dict            # prepare_options, recorded in metadata.json
  counts: dict             # {'total': {...}, split: {...}}
  source: str              # what was read, for metadata.json
  # MedMNIST: split -> iterator of its image arrays in row order (files are decoded instead)
  read_arrays: Optional[Callable] = None
  check_duplicates: bool = True  # refuse two files with the same bytes

  @property
  def no_finding(self) -> str:
    """The "none of them" class of multi-label data."""
    taken = {name.lower() for name in self.names}
    return (labels_lib.NO_FINDING if labels_lib.NO_FINDING.lower() not in taken
            else 'none of the labels')

  @property
  def class_names(self) -> tuple:
    """Names of the `label` ClassLabel."""
    return self.names + (self.no_finding,) if self.labelling == 'multi-label' else self.names


def empty_counts(**extra) -> dict:
  return {'found': 0, 'written': 0, 'corrupt': 0, 'blank': 0, 'too_small': 0,
          'unlabelled': 0, **extra}


def make_plan(*, family, name, labelling, names, examples, options, source, extra_counts=None,
              keep_given_splits: Optional[bool] = None, **kwargs) -> Plan:
  """Groups examples by split, fills the found / patient counts and checks the result.

  Args:
    examples: [(split, Example)] in the order they are written.
    extra_counts: {split or 'total': {key: value}} the reader counted (e.g. CSV rows).
    keep_given_splits: None when the splits come from the patient hash (patient-wise by
      construction); else the splits were given (split folders, a split column) and
      patients found in several of them are moved wholly into one
      (`subsets.reassign_patient_wise`, NIH's rule) unless this is True
      (--keep_folder_splits), which keeps them and records the leak.
  """
  if labelling not in LABELLINGS:
    raise ValueError(f'labelling {labelling!r} not in {LABELLINGS}')
  moved_patients, images_moved = 0, {}
  options = dict(options, keep_folder_splits=keep_given_splits)
  if keep_given_splits is False:
    image_split = {position: split for position, (split, _) in enumerate(examples)}
    patient_of = {position: example.patient_id
                  for position, (_, example) in enumerate(examples)}
    if subsets.patients_in_several_splits(image_split, patient_of):
      image_split, moved_patients, images_moved = subsets.reassign_patient_wise(
          image_split, patient_of)
      examples = [(image_split[position], example)
                  for position, (_, example) in enumerate(examples)]
      logging.warning('%s/%s: the given splits are not patient-wise: %d patient(s) in several '
                      'splits, each moved wholly to one split (images moved: %s); '
                      '--keep_folder_splits keeps the given splits', family, name,
                      moved_patients, ', '.join(f'{pair} {n}' for pair, n in
                                                 images_moved.items()))
  splits = {}
  for split, example in examples:
    splits.setdefault(split, []).append(example)
  splits = {split: splits[split] for split in ('train', 'validation', 'test') if split in splits}
  counts = {'total': empty_counts()}
  for split, items in splits.items():
    counts[split] = empty_counts(found=len(items))
    counts['total']['found'] += len(items)
  for key, values in (extra_counts or {}).items():
    counts.setdefault(key, empty_counts()).update(values)
  patients = {}
  for split, items in splits.items():
    for example in items:
      patients.setdefault(example.patient_id, set()).add(split)
  counts['total']['patients'] = len(patients)
  counts['total']['patients_in_several_splits'] = sum(len(s) > 1 for s in patients.values())
  if keep_given_splits is not None:
    counts['total']['patients_moved'] = moved_patients
    counts['total']['images_moved'] = images_moved
  if counts['total']['patients_in_several_splits']:
    logging.warning('%s/%s: %d patient(s) have images in more than one of the given splits '
                    '(kept: --keep_folder_splits); figures on these splits can reward '
                    'recognising the patient', family, name,
                    counts['total']['patients_in_several_splits'])
  return Plan(family=family, name=name, labelling=labelling, names=tuple(names),
              splits=splits, options=options, counts=counts, source=source, **kwargs)


# ---------------------------------------------------------------------------- the builder

@dataclasses.dataclass
class OwnDataConfig(tfds.core.BuilderConfig):
  image_size: int = 256


class _KnownConfigFilter(logging.Filter):
  """Drops TFDS's 'Using custom data configuration' (every own dataset has its own)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Using custom data configuration')


class OwnDataBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes a Plan as FAMILY/NAME/SIZE (module docstring); read back with
  tfds.builder_from_directory, so this class is needed only to prepare."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  name = 'own_data'  # replaced by the family in the subclasses below

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default probes importlib_resources, which is not a dependency here.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, plan: Plan, image_size: int, data_dir, num_workers: int | None = None):
    """Args: plan: from the family's reader; image_size: S; data_dir: the TFDS data_dir;
    num_workers: decode processes (default all cores; 1 = in this process)."""
    check_image_size(image_size)
    self._plan = plan
    self._num_workers = num_workers or os.cpu_count() or 1
    self._digests = {}  # SHA-256 of each written file -> its key (the same image twice)
    absl_logger = logging.getLogger('absl')
    quiet = _KnownConfigFilter()
    absl_logger.addFilter(quiet)
    try:
      super().__init__(data_dir=os.path.expanduser(str(data_dir)), file_format='array_record',
                       config=OwnDataConfig(name=f'{plan.name}/{image_size}',
                                            image_size=image_size))
    finally:
      absl_logger.removeFilter(quiet)

  @property
  def prepare_counts(self) -> dict:
    return self._plan.counts

  def _info(self) -> tfds.core.DatasetInfo:
    plan = self._plan
    features = {'image': tfds_features.grey_image(self.builder_config.image_size),
                'patient_id': tfds.features.Scalar(dtype=np.int64),
                'image_index': tfds.features.Text()}
    if plan.labelling == 'multi-label':
      features['labels'] = tfds.features.Tensor(shape=(len(plan.names),), dtype=np.uint8)
    if plan.labelling != 'unlabelled':
      features['label'] = tfds.features.ClassLabel(names=plan.class_names)
    return tfds.core.DatasetInfo(
        builder=self, description=f'{plan.family}/{plan.name}: {plan.source}',
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None if plan.labelling == 'unlabelled' else ('image', 'label'),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # the plan says what to read
    tfds_features.allow_large_splits_without_tensorflow()
    plan = self._plan
    self.info.metadata.update({
        'source': plan.source, 'labelling': plan.labelling,
        'prepare_options': plan.options, 'prepare_counts': plan.counts,
        'patients_in_several_splits': plan.counts['total']['patients_in_several_splits']})
    if plan.labelling == 'multi-label':
      self.info.metadata['label_names'] = list(plan.names)
    if not plan.splits:
      raise BadInput(f'{plan.family}/{plan.name}: no images to write ({plan.source})')
    return {split: self._generate_examples(split, items)
            for split, items in plan.splits.items()}

  def _decoded(self, split, items, counts):
    """(position, image, SHA-256 or None) of the usable images of a split, in order."""
    plan = self._plan
    report = dict(counts=counts, log_name=f'{plan.family}/{plan.name}',
                  desc=f'prepare {plan.family}/{plan.name}/{self.builder_config.image_size} '
                       f'{split}')
    if plan.read_arrays is not None:
      return images.decode_arrays(plan.read_arrays(split), [item.key for item in items],
                                  self.builder_config.image_size, **report)
    return images.decode_files([item.source for item in items],
                               self.builder_config.image_size,
                               num_workers=self._num_workers,
                               with_digest=plan.check_duplicates, **report)

  def _generate_examples(self, split, items):
    plan = self._plan
    counts, total = plan.counts[split], plan.counts['total']
    for count in (counts, total):
      count.setdefault('per_label', {name: 0 for name in plan.class_names})
    for position, image, digest in self._decoded(split, items, (counts, total)):
      example = items[position]
      if digest is not None:
        first = self._digests.setdefault(digest, example.key)
        if first != example.key:
          raise BadInput(f'the same image twice: {first!r} and {example.key!r} have the same '
                         f'bytes; remove one of them ({plan.source})')
      features = {'image': image, 'patient_id': example.patient_id,
                  'image_index': example.key}
      if plan.labelling == 'multi-label':
        features.update(labels_lib.multi_label_features(example.target))
        positives = [plan.names[j] for j in np.flatnonzero(example.target)] or [
            plan.no_finding]
      elif plan.labelling == 'single-label':
        features['label'] = int(example.target)
        positives = [plan.names[int(example.target)]]
      else:
        positives = []
      for count in (counts, total):
        count['written'] += 1
        count['unlabelled'] += int(plan.labelling == 'unlabelled' or example.labels_blank)
        for name in positives:
          count['per_label'][name] += 1
      yield example.key, features
    if counts['written'] == 0:
      raise BadInput(f'{plan.family}/{plan.name}: none of the {len(items)} {split} images '
                     f'could be used (corrupt, blank or too small: not images?); see the '
                     f'warnings above ({plan.source})')


class FolderBuilder(OwnDataBuilder, skip_registration=True):
  name = 'folder'


class CsvBuilder(OwnDataBuilder, skip_registration=True):
  name = 'csv'


class MedmnistBuilder(OwnDataBuilder, skip_registration=True):
  name = 'medmnist'


BUILDERS = {'folder': FolderBuilder, 'csv': CsvBuilder, 'medmnist': MedmnistBuilder}
