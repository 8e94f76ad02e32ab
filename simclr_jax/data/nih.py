"""`nih_chest_xray14`: NIH Clinical Center ChestX-ray14 as a TFDS builder (manual download).

Wang et al., "ChestX-ray8: Hospital-scale chest X-ray database and benchmarks on
weakly-supervised classification and localization of common thorax diseases", CVPR 2017.
The images are public domain (CC0).

Manual directory (`--manual_dir`), any of:
  * the 12 extracted archives: `images_001/images/*.png` ... `images_012/images/*.png`;
  * one flat folder: `images/*.png` (or PNGs anywhere below the manual dir);
  * the `nih_thumbs` layout `{train,valid,test}/{0_normal,1_abnormal}/*.png` (file names
    are official Image Index values): prepared as builder config `thumbs64`, with the
    split taken from the folders.
plus the label table `Data_Entry_2017*.csv` or `Data_Entry_2017*.csv.gz` in the manual dir
(or its parent, or a sibling folder, or given with `csv_path=` / `--csv`), and optionally
the official patient-wise split lists `train_val_list.txt` and `test_list.txt`.

Splits (always patient-wise: no patient is in two splits):
  * `test_list.txt` present: test = the listed images; otherwise test = patients with
    hash(Patient ID) < `test_fraction` (default 0.2; the official test set is 22.8%).
  * validation = the non-test patients with an independent hash(Patient ID) <
    `validation_fraction` (default 0.1; a fraction of the non-test patients).
  * train = the rest. The hash is SHA-256, so the split is the same on every machine.
  * thumbs layout: the folders decide (`valid` -> `validation`), then the patients are
    checked: nih_thumbs' folders are not patient-wise (30 of its 264 patients have
    images in two or three of them). By default such a patient is reassigned wholly to
    one split (`reassign_patient_wise`, the rule is there); with `keep_folder_splits=True`
    (`--keep_folder_splits`) the folders are kept and the leak is recorded. The same
    check runs on the official test_list.txt split.
  Recorded: `patients_in_several_splits` (after reassignment: 0) in the metadata, and in
  the counts the patients and images moved (per pair of splits, 'from->to').

Per split the builder counts CSV rows, images found, rows whose image is missing from
disk (normal when only some archives were downloaded: the sample has 41 of 112,120),
images written, corrupt, blank and too small images (logged and skipped); images on disk
without a CSV row are counted and logged. The counts are in `builder.prepare_counts`
and, once prepared, in `builder.info.metadata['prepare_counts']`; what the split depends
on (manual dir, label table and its SHA-256, fractions, keep_folder_splits) in
`builder.info.metadata['prepare_options']`, with `patients_in_several_splits` and
`label_names` (FINDINGS) beside them. No usable image is an error naming the manual dir.

Pixels and geometry as for every decoded file (data/images.py): 8-bit grey (L as is;
RGB/RGBA/P by the ITU-R 601-2 luma of R, G, B, alpha ignored: the RGBA files of the
release carry the gray image in R = G = B with alpha 255 everywhere, so this returns
exactly their gray values; 16-bit scaled by 255 / 65535), the centred square cut out and
resized to S x S with antialiasing. A blank (constant) image or one under 8 px is skipped,
counted ('blank', 'too_small') and logged like a corrupt one.

Features: `image` uint8 [S, S, 1]; `labels` uint8 [14] multi-hot over FINDINGS (order
below); `no_finding` bool; `label` ClassLabel over LABEL_NAMES (= FINDINGS + 'No Finding'):
the finding's index when exactly one finding, 14 for No Finding, -1 for several
findings; `patient_id` int64; `view_position` ('PA'/'AP'); `age` int32 (years);
`sex` ('M'/'F'); `image_index` (file name).
"""
import dataclasses
import inspect
import logging
import os
import pathlib

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from simclr_jax.data import images
from simclr_jax.data import tfds_features
from simclr_jax.data.tfds_features import file_sha256 as file_sha256
# The findings, the CSV and the `label` feature are defined once, in labels.py.
from simclr_jax.data.labels import CSV_COLUMNS  # pylint: disable=unused-import
from simclr_jax.data.labels import CsvRow  # pylint: disable=unused-import
from simclr_jax.data.labels import FINDINGS
from simclr_jax.data.labels import LABEL_NAMES
from simclr_jax.data.labels import NO_FINDING  # pylint: disable=unused-import
from simclr_jax.data.labels import label_features
from simclr_jax.data.labels import parse_finding_labels  # pylint: disable=unused-import
from simclr_jax.data.labels import read_data_entry_csv
# Pixels are read by the shared image code; these names stay importable from here.
from simclr_jax.data.images import load_image as load_image
from simclr_jax.data.images import to_grayscale_uint8 as to_grayscale_uint8
from simclr_jax.data.subsets import patient_split
from simclr_jax.data.subsets import patients_in_several_splits
from simclr_jax.data.subsets import reassign_patient_wise
from simclr_jax.data.subsets import SPLITS

IMAGE_SIZES = (64, 224, 256, 512)
THUMBS_CONFIG = 'thumbs64'
THUMBS_SPLIT_FOLDERS = {'train': 'train', 'valid': 'validation', 'test': 'test'}
THUMBS_CLASS_FOLDERS = ('0_normal', '1_abnormal')
CSV_GLOBS = ('Data_Entry_2017*.csv', 'Data_Entry_2017*.csv.gz')

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download ChestX-ray14 from https://nihcc.app.box.com/v/ChestXray-NIHCC : the 12
images_NNN.tar.gz archives (extract them: images_NNN/images/*.png, or put all PNGs in one
images/ folder), Data_Entry_2017_v2020.csv (plain or .gz) and optionally
train_val_list.txt / test_list.txt, all into one folder; pass it as --manual_dir.
"""


def find_csv(manual_dir, csv_path=None) -> pathlib.Path:
  """The label table: `csv_path`, else Data_Entry_2017*.csv[.gz] in, above or beside manual_dir."""
  if csv_path:
    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
      raise FileNotFoundError(f'CSV {csv_path} (--csv) does not exist')
    return csv_path
  manual_dir = pathlib.Path(manual_dir)
  parent = manual_dir.resolve().parent
  folders = [manual_dir, parent] + sorted(p for p in parent.iterdir() if p.is_dir())
  for folder in folders:
    for pattern in CSV_GLOBS:
      found = sorted(folder.glob(pattern))
      if found:
        return found[-1]  # Data_Entry_2017_v2020 sorts after Data_Entry_2017
  raise FileNotFoundError(
      f'no label table {" or ".join(CSV_GLOBS)} in manual_dir {manual_dir}, its parent or '
      f'a sibling folder; pass it with --csv PATH (csv_path=)')


def is_thumbs_layout(manual_dir) -> bool:
  """True for the `{train,valid,test}/{0_normal,1_abnormal}/*.png` layout."""
  manual_dir = pathlib.Path(manual_dir)
  return any((manual_dir / split / cls).is_dir()
             for split in THUMBS_SPLIT_FOLDERS for cls in THUMBS_CLASS_FOLDERS)


def find_images(manual_dir) -> dict:
  """{image_index: path} of every *.png below `manual_dir` (both archive layouts)."""
  images = {}
  for root, dirs, files in os.walk(manual_dir, followlinks=True):
    dirs.sort()
    for name in sorted(files):
      if name.lower().endswith('.png'):
        images.setdefault(name, pathlib.Path(root) / name)
  return images


@dataclasses.dataclass
class NihConfig(tfds.core.BuilderConfig):
  image_size: int = 256
  layout: str = 'archives'  # 'archives' (full release) or 'thumbs'


class NihChestXray14(tfds.core.GeneratorBasedBuilder):
  """NIH ChestX-ray14, resized to S x S uint8 grayscale; see the module docstring."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'First release.', '1.1.0': 'image stored as raw bytes.',
                   '1.2.0': 'patient-wise splits: patients in several split folders '
                            '(thumbs layout) reassigned unless keep_folder_splits; '
                            'patients_in_several_splits recorded; blank (constant) and '
                            'under-8-px images skipped and counted.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      NihConfig(name=str(size), image_size=size, description=f'{size}x{size} grayscale')
      for size in IMAGE_SIZES] + [
          NihConfig(name=THUMBS_CONFIG, image_size=64, layout='thumbs',
                    description='nih_thumbs: 64x64, splits from the folders')]
  DEFAULT_BUILDER_CONFIG_NAME = '256'

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default probes importlib_resources, which is not a dependency here.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, csv_path=None, test_fraction: float = 0.2,
               validation_fraction: float = 0.1, keep_folder_splits: bool = False,
               num_workers: int | None = None, **kwargs):
    """Args: csv_path: label table (default: searched, see find_csv); test_fraction,
    validation_fraction: patient fractions of the hash split; keep_folder_splits: keep
    split folders (or lists) that put a patient in several splits instead of
    reassigning the patient; num_workers: decode processes (default all cores; 1 = in
    this process). Other kwargs go to TFDS."""
    kwargs.setdefault('file_format', 'array_record')  # random access, no TensorFlow
    super().__init__(**kwargs)
    for name, value in (('test_fraction', test_fraction),
                        ('validation_fraction', validation_fraction)):
      if not 0.0 <= value < 1.0:
        raise ValueError(f'{name} must be in [0, 1), got {value}')
    self._csv_path = csv_path
    self._test_fraction = test_fraction
    self._validation_fraction = validation_fraction
    self._keep_folder_splits = bool(keep_folder_splits)
    self._num_workers = num_workers or os.cpu_count() or 1
    self.prepare_counts = {}  # filled while generating; see the module docstring

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds_features.grey_image(size),
            'labels': tfds.features.Tensor(shape=(len(FINDINGS),), dtype=np.uint8),
            'no_finding': tfds.features.Tensor(shape=(), dtype=np.bool_),
            'label': tfds.features.ClassLabel(names=LABEL_NAMES),
            'patient_id': tfds.features.Scalar(dtype=np.int64),
            'view_position': tfds.features.Text(),
            'age': tfds.features.Scalar(dtype=np.int32),
            'sex': tfds.features.Text(),
            'image_index': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://nihcc.app.box.com/v/ChestXray-NIHCC',
        citation='Wang et al., ChestX-ray8, CVPR 2017.',
        metadata=tfds.core.MetadataDict(),
    )

  def prepare_options(self, manual_dir, csv_file) -> dict:
    """The options that decide the content (recorded in info.metadata when prepared).

    Args:
      manual_dir: the folder the images are read from.
      csv_file: the label table used (see find_csv).

    Returns:
      {'manual_dir', 'csv', 'csv_sha256', 'test_fraction', 'validation_fraction',
      'keep_folder_splits'}; None where an option does not apply (the thumbs layout's
      folders decide the splits; test_list.txt decides the test split; the hash split
      is patient-wise by construction, so there is nothing to keep or reassign).
    """
    manual_dir = pathlib.Path(manual_dir)
    thumbs = self.builder_config.layout == 'thumbs'
    official_test = (manual_dir / 'test_list.txt').is_file()
    return {
        'manual_dir': str(manual_dir.absolute()),
        'csv': str(pathlib.Path(csv_file).absolute()),
        'csv_sha256': file_sha256(csv_file),
        'test_fraction': None if thumbs or official_test else float(self._test_fraction),
        'validation_fraction': None if thumbs else float(self._validation_fraction),
        'keep_folder_splits': (self._keep_folder_splits if thumbs or official_test
                               else None),
    }

  def _split_generators(self, dl_manager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    tfds_features.allow_large_splits_without_tensorflow()  # splits > 1 GB (NIH at 256 px)
    plan, counts = plan_splits(
        manual_dir, layout=self.builder_config.layout, csv_path=self._csv_path,
        test_fraction=self._test_fraction, validation_fraction=self._validation_fraction,
        keep_folder_splits=self._keep_folder_splits)
    self.prepare_counts = counts
    self.info.metadata['prepare_counts'] = counts
    self.info.metadata['patients_in_several_splits'] = (
        counts['total']['patients_in_several_splits'])
    self.info.metadata['manual_dir'] = str(manual_dir)
    self.info.metadata['prepare_options'] = self.prepare_options(
        manual_dir, counts['total']['csv'])
    self.info.metadata['label_names'] = list(FINDINGS)
    return {split: self._generate_examples(split, items, manual_dir)
            for split, items in plan.items() if items}

  def _generate_examples(self, split, items, manual_dir):
    """Yields (image_index, example); items: [(path, CsvRow)] in a fixed order."""
    counts = self.prepare_counts[split]
    total = self.prepare_counts['total']
    missing = (f", {counts['missing_from_disk']} CSV rows without an image"
               if self.builder_config.layout == 'archives' else '')
    decoded = images.decode_files(
        [path for path, _ in items], self.builder_config.image_size,
        num_workers=self._num_workers, counts=(counts, total),
        desc=f'prepare {self.name}/{self.builder_config.name} {split}',
        log_name='nih_chest_xray14', extra_summary=missing)
    for position, image, _ in decoded:
      row = items[position][1]
      counts['written'] += 1
      total['written'] += 1
      yield row.image_index, {
          'image': image, **label_features(row.findings),
          'patient_id': row.patient_id, 'view_position': row.view_position,
          'age': row.age, 'sex': row.sex, 'image_index': row.image_index}
    self.info.metadata['prepare_counts'] = self.prepare_counts
    logging.info('nih_chest_xray14 %s: %s', split, counts)
    if counts['written'] == 0:
      raise ValueError(
          f'nih_chest_xray14: none of the {len(items)} {split} images in manual_dir '
          f'{manual_dir} could be used (corrupt, blank or too small); see the warnings above')


def _empty_counts():
  return {'csv_rows': 0, 'found': 0, 'missing_from_disk': 0, 'written': 0, 'corrupt': 0,
          'blank': 0, 'too_small': 0}


def plan_splits(manual_dir, *, layout='archives', csv_path=None, test_fraction=0.2,
                validation_fraction=0.1, keep_folder_splits=False):
  """Matches the CSV to the images on disk and assigns splits.

  Args:
    manual_dir: folder with the images (and usually the CSV).
    layout: 'archives' (images anywhere below, hash/official split) or 'thumbs'.
    csv_path: the label table; default find_csv(manual_dir).
    test_fraction, validation_fraction: see patient_split.
    keep_folder_splits: keep a folder (or list) split that puts a patient in several
      splits; by default such patients are reassigned (`reassign_patient_wise`).

  Returns:
    (plan, counts): plan = {split: [(path, CsvRow)] sorted by image index};
    counts = {'total': {...}, split: {...}} with csv_rows, found, missing_from_disk,
    written, corrupt, blank, too_small (written .. too_small filled while generating;
    csv_rows and missing_from_disk by the split of the folders or lists), and in 'total'
    also not_in_csv, patients (also per split), patients_in_several_splits (in the written
    splits), patients_in_several_split_folders (before any reassignment), patients_moved
    and images_moved ({'from->to': images}).

  Raises:
    FileNotFoundError: no usable image (none on disk that has a CSV row), naming manual_dir.
  """
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f'manual_dir {manual_dir} does not exist')
  csv_file = find_csv(manual_dir, csv_path)
  logging.info('nih_chest_xray14: labels from %s', csv_file)
  rows = read_data_entry_csv(csv_file)
  splits = SPLITS
  counts = {'total': {**_empty_counts(), 'not_in_csv': 0, 'csv': str(csv_file)}}
  counts.update({split: _empty_counts() for split in splits})
  plan = {split: [] for split in splits}
  counts['total']['csv_rows'] = len(rows)

  if layout == 'thumbs':
    image_split = {}
    images = {}
    mismatched = 0
    for folder, split in THUMBS_SPLIT_FOLDERS.items():
      for class_folder in THUMBS_CLASS_FOLDERS:
        for path in sorted((manual_dir / folder / class_folder).glob('*.png')):
          images[path.name] = path
          image_split[path.name] = split
          row = rows.get(path.name)
          if row is not None and (class_folder == '1_abnormal') != bool(row.findings):
            mismatched += 1
    if not images:
      raise FileNotFoundError(
          f'no {{train,valid,test}}/{{0_normal,1_abnormal}}/*.png in manual_dir {manual_dir}')
    counts['total']['folder_label_mismatch'] = mismatched
    # Rows without an image cannot be given a split here: counted in 'total' only.
    counts['total']['missing_from_disk'] = sum(1 for name in rows if name not in images)
  else:
    images = find_images(manual_dir)
    official_test = _read_list(manual_dir, 'test_list.txt')
    if official_test is not None:
      logging.info('nih_chest_xray14: official test split from test_list.txt (%d images)',
                   len(official_test))
    image_split = {}
    for name, row in rows.items():
      split = patient_split(
          row.patient_id, test_fraction, validation_fraction,
          official_test=None if official_test is None else name in official_test)
      image_split[name] = split
      counts[split]['csv_rows'] += 1
      if name not in images:
        counts[split]['missing_from_disk'] += 1
        counts['total']['missing_from_disk'] += 1

  not_in_csv = sorted(name for name in images if name not in rows)
  counts['total']['not_in_csv'] = len(not_in_csv)
  if not_in_csv:
    logging.warning('nih_chest_xray14: %d image(s) without a CSV row in %s, skipped: %s',
                    len(not_in_csv), csv_file, not_in_csv[:10])
  found = {name: image_split[name] for name in images if name in rows}
  patient_of = {name: rows[name].patient_id for name in found}
  leaked = patients_in_several_splits(found, patient_of)
  counts['total']['patients'] = len(set(patient_of.values()))
  counts['total']['patients_in_several_split_folders'] = leaked
  counts['total']['patients_moved'] = 0
  counts['total']['images_moved'] = {}
  if leaked and keep_folder_splits:
    logging.warning('nih_chest_xray14: %d patient(s) have images in more than one split; '
                    'the split folders (or lists) of %s are kept (keep_folder_splits), so '
                    'figures on these splits can reward recognising the patient',
                    leaked, manual_dir)
  elif leaked:
    found, moved_patients, images_moved = reassign_patient_wise(found, patient_of)
    counts['total']['patients_moved'] = moved_patients
    counts['total']['images_moved'] = images_moved
    logging.warning('nih_chest_xray14: the split folders (or lists) of %s are not '
                    'patient-wise: %d patient(s) in several splits, each moved wholly to '
                    'one split (images moved: %s); --keep_folder_splits keeps the folders',
                    manual_dir, moved_patients,
                    ', '.join(f'{pair} {n}' for pair, n in images_moved.items()))
  counts['total']['patients_in_several_splits'] = patients_in_several_splits(
      found, patient_of)
  for name in sorted(found):
    split = found[name]
    plan[split].append((images[name], rows[name]))
    counts[split]['found'] += 1
    counts['total']['found'] += 1
  for split in splits:
    counts[split]['patients'] = len({row.patient_id for _, row in plan[split]})
  if layout == 'thumbs':
    for split in splits:
      counts[split]['csv_rows'] = counts[split]['found']
  if counts['total'].get('folder_label_mismatch'):
    logging.warning('nih_chest_xray14: %d image(s) in 0_normal/1_abnormal disagree with the '
                    'CSV; the CSV labels are used', counts['total']['folder_label_mismatch'])
  if counts['total']['found'] == 0:
    raise FileNotFoundError(
        f'no usable images in manual_dir {manual_dir}: {len(images)} PNG file(s) found, '
        f'none of them listed in {csv_file} ({len(rows)} rows). Expected layouts: '
        f'images_NNN/images/*.png, images/*.png or {{train,valid,test}}/{{0_normal,1_abnormal}}'
        f'/*.png.\n{_MANUAL_DOWNLOAD_INSTRUCTIONS}')
  for split in splits:
    if not plan[split]:
      logging.warning('nih_chest_xray14: split %s has no images; it is not written', split)
  return plan, counts


def _read_list(manual_dir, file_name):
  """Image indices of an official list file in manual_dir, or None when absent."""
  path = pathlib.Path(manual_dir) / file_name
  if not path.is_file():
    return None
  return {line.strip() for line in path.read_text().splitlines() if line.strip()}
