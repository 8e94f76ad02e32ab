"""Preparing a dataset once: which builder, the checks before writing, the summary.

The logic behind `python -m simclr_jax.prepare` (simclr_jax/prepare.py only parses flags
and turns errors into exit codes):

  1. the dataset: synthetic_cxr, nih, or your own data (folder, csv, medmnist: NAME from
     --name, SIZE from --image_size), also given as a config.dataset name;
  2. prepared already? Then the options asked for are compared with the ones recorded in
     its metadata.json: the same (or none) -> 'already prepared ...; nothing to do.';
     others -> ValueError naming both, since prepared files are never replaced;
  3. else: the data_dir must be writable (a real write), the own data's input is read and
     checked (own_data.BadInput: one line naming the file or value), then the TFDS builder
     writes the splits;
  4. the split sizes, counts and the `use: config.dataset=... config.data_dir=...` line.

Failure or Ctrl-C while writing leaves nothing that looks like a dataset: TFDS writes into
DATASET_FOLDER/incomplete.XXXX_VERSION/ and removes it when an exception (also
KeyboardInterrupt) passes (tensorflow_datasets file_utils.incomplete_dir); the folders
this run created around it (data_dir, FAMILY/NAME/SIZE/, downloads/, TFDS's
FAMILY/.config/) are removed here when nothing else is in them (`removed_on_failure`).
"""
import contextlib
import math
import pathlib
import shutil
import tempfile
import time

import tensorflow_datasets as tfds

from simclr_jax.data import csv_table
from simclr_jax.data import folder
from simclr_jax.data import medmnist
from simclr_jax.data import nih
from simclr_jax.data import own_data
from simclr_jax.data import registry
from simclr_jax.data import synthetic_cxr

FAMILIES = {'synthetic_cxr': 'synthetic_cxr', 'nih': 'nih', 'nih_chest_xray14': 'nih',
            **{family: family for family in own_data.FAMILIES}}
SPLIT_SIZE_OPTIONS = tuple(f'{split}_size' for split in synthetic_cxr.DEFAULT_SPLIT_SIZES)
DEFAULT_OWN_IMAGE_SIZE = 256
# The flags each own-data family reads (others given with it are refused).
_COMMON = ('name', 'image_size', 'num_workers')
_HASH_SPLIT = ('patient_regex', 'test_fraction', 'validation_fraction', 'split_seed')
OWN_FLAGS = {
    'folder': _COMMON + _HASH_SPLIT + ('manual_dir', 'unlabelled', 'keep_folder_splits'),
    'csv': _COMMON + _HASH_SPLIT + ('csv', 'image_root', 'path_column', 'label_columns',
                                    'patient_column', 'split_column', 'uncertain', 'blank',
                                    'keep_folder_splits'),
    'medmnist': _COMMON + ('npz', 'label_names'),
}
_ALL_FLAGS = sorted({flag for flags in OWN_FLAGS.values() for flag in flags} |
                    {'manual_dir', 'csv', 'keep_folder_splits', *SPLIT_SIZE_OPTIONS})
# Columns of the counts table, in this order where a dataset has them.
COUNT_COLUMNS = ('csv_rows', 'rows', 'found', 'missing_from_disk', 'uncertain_skipped',
                 'written', 'corrupt', 'blank', 'too_small', 'unlabelled', 'images',
                 'patients')


def family_and_size(args):
  """(family, image size or config name or None, own NAME or None) from the dataset name.

  Raises:
    ValueError: an unknown dataset, or a name and flags that disagree (one line).
  """
  family, _, config = args.dataset.partition('/')
  if family not in FAMILIES or (config and family == 'nih'):
    raise ValueError(f'unknown dataset {args.dataset!r}; prepare takes synthetic_cxr, nih, '
                     f'folder, csv or medmnist, or one of the known datasets: '
                     f'{registry.describe_known_datasets()}')
  if family in own_data.FAMILIES:
    name, size = getattr(args, 'name', None), args.image_size
    if config:
      _, named, named_size = own_data.parse_name(args.dataset)
      for flag, given, value in (('--name', name, named), ('--image_size', size, named_size)):
        if given not in (None, value):
          raise ValueError(f'dataset {args.dataset!r} but {flag} {given}; give one of them')
      name, size = named, named_size
    if not name:
      raise ValueError(f'{family} needs --name NAME (the dataset becomes '
                       f'{family}/NAME/SIZE)')
    own_data.check_name(name)
    return family, size, name
  if config:
    registry.check_dataset_name(args.dataset)
    if config == nih.THUMBS_CONFIG:
      return FAMILIES[family], config, None
    if args.image_size not in (None, int(config)):
      raise ValueError(f'dataset {args.dataset!r} is {config} px but --image_size is '
                       f'{args.image_size}; give one of them')
    return FAMILIES[family], int(config), None
  return FAMILIES[family], args.image_size, None


def builtin_builder(args):
  """(dataset name 'family/config', builder, manual_dir or None) of synthetic_cxr / nih."""
  family, size, _ = family_and_size(args)
  if family == 'synthetic_cxr':
    size = size or 64
    if size not in synthetic_cxr.IMAGE_SIZES:
      raise ValueError(f'--image_size {size}: synthetic_cxr sizes are {synthetic_cxr.IMAGE_SIZES}')
    name = f'synthetic_cxr/{size}'
    split_sizes = {split: default if getattr(args, f'{split}_size') is None
                   else getattr(args, f'{split}_size')
                   for split, default in synthetic_cxr.DEFAULT_SPLIT_SIZES.items()}
    return name, registry.get_builder(name, args.data_dir, split_sizes=split_sizes,
                                      num_workers=args.num_workers), None
  if not args.manual_dir:
    raise ValueError('nih needs --manual_dir (the folder with the PNGs and the CSV)')
  manual_dir = pathlib.Path(args.manual_dir).expanduser()
  if not manual_dir.is_dir():
    raise FileNotFoundError(f'--manual_dir {manual_dir} does not exist')
  if nih.is_thumbs_layout(manual_dir):
    if size not in (None, 64, nih.THUMBS_CONFIG):
      raise ValueError(f'--image_size {size}: {manual_dir} has the nih_thumbs layout, '
                       f'which is prepared at 64 px only (config {nih.THUMBS_CONFIG})')
    config = nih.THUMBS_CONFIG
  else:
    size = size or 256
    if size not in nih.IMAGE_SIZES:
      raise ValueError(f'--image_size {size}: nih sizes are {nih.IMAGE_SIZES} (and '
                       f'{nih.THUMBS_CONFIG} from a manual dir in the nih_thumbs layout)')
    config = str(size)
  name = f'nih_chest_xray14/{config}'
  fractions = {key: value for key, value in (('test_fraction', args.test_fraction),
                                             ('validation_fraction', args.validation_fraction))
               if value is not None}
  builder = registry.get_builder(name, args.data_dir, csv_path=args.csv,
                                 num_workers=args.num_workers,
                                 keep_folder_splits=bool(args.keep_folder_splits), **fractions)
  return name, builder, manual_dir


def check_writable(data_dir, version_folder) -> None:
  """Raises ValueError (one line) unless prepare can write into data_dir.

  Creates data_dir if needed and writes a temporary file into it and into the dataset's
  folders that already exist (e.g. DATA_DIR/synthetic_cxr/ made by someone else). A
  real write rather than os.access: as root os.access says yes to a mode 555 folder,
  and it cannot see a read-only mount.
  """
  data_dir = pathlib.Path(data_dir).expanduser()
  folders = [data_dir] + [parent for parent in _between(data_dir, version_folder)[::-1]
                          if parent.is_dir()]
  for folder_path in folders:
    try:
      folder_path.mkdir(parents=True, exist_ok=True)
      with tempfile.TemporaryFile(dir=folder_path):
        pass
    except OSError as e:
      raise ValueError(
          f'--data_dir {data_dir}: cannot write into {folder_path} ({e.strerror or e}); '
          f'give a --data_dir you can write to') from e


def _own_flags_given(args, family) -> dict:
  """The own-data flags given on the command line; refuses those `family` does not read."""
  given = {flag: getattr(args, flag, None) for flag in _ALL_FLAGS}
  # 0 and 0.0 are given values (--test_fraction 0), not absent ones: `0 in (None, False)` is True.
  given = {flag: value for flag, value in given.items()
           if value is not None and value is not False}
  foreign = [flag for flag in given if flag not in OWN_FLAGS[family]]
  if foreign:
    raise ValueError(f'{family} does not take {", ".join("--" + f for f in foreign)}; '
                     f'it takes {", ".join("--" + f for f in OWN_FLAGS[family])}')
  return given


def _label_columns(text):
  return [column.strip() for column in text.split(',') if column.strip()] if text else None


def requested_options(args) -> dict:
  """The content options given on the command line (flags left out are not compared)."""
  family, _, _ = family_and_size(args)
  if family == 'synthetic_cxr':
    return {option: getattr(args, option) for option in SPLIT_SIZE_OPTIONS
            if getattr(args, option) is not None}
  if family in own_data.FAMILIES:
    given = _own_flags_given(args, family)
    options = {}
    for flag, value in given.items():
      if flag in ('name', 'image_size', 'num_workers'):
        continue
      if flag == 'csv':
        options['csv_sha256'] = nih.file_sha256(_existing_file(value, '--csv'))
      elif flag == 'npz':
        options['npz_sha256'] = nih.file_sha256(_existing_file(value, '--npz'))
      elif flag in ('manual_dir', 'image_root'):
        options[flag] = str(pathlib.Path(value).expanduser().absolute())
      elif flag in ('label_columns', 'label_names'):
        options[flag] = _label_columns(value)
      else:
        options[flag] = value
    if args.keep_folder_splits is False and 'keep_folder_splits' in OWN_FLAGS[family]:
      options['keep_folder_splits'] = False   # --no-keep_folder_splits, said explicitly
    return options
  options = {option: getattr(args, option) for option in ('test_fraction',
                                                          'validation_fraction',
                                                          'keep_folder_splits')
             if getattr(args, option) is not None}
  if args.csv:
    options['csv_sha256'] = nih.file_sha256(nih.find_csv(args.manual_dir, args.csv))
  return options


def _existing_file(path, flag) -> pathlib.Path:
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'{flag} {path} does not exist')
  return path


def prepared_options(builder) -> dict:
  """The content options a prepared dataset was made with, flat like requested_options.

  From info.metadata['prepare_options'] (recorded when preparing); for synthetic_cxr the
  split sizes are also read from the split infos, so datasets prepared before options
  were recorded are checked too. Options that do not apply are left out.
  """
  metadata = builder.info.metadata or {}
  recorded = dict(metadata.get('prepare_options') or {})
  options = {key: value for key, value in recorded.items()
             if key != 'split_sizes' and value is not None}
  if builder.name == synthetic_cxr.SyntheticCxr.name:
    options.update({f'{split}_size': info.num_examples
                    for split, info in builder.info.splits.items()})
  return options


def _differs(requested, prepared) -> bool:
  if isinstance(requested, float) or isinstance(prepared, float):
    return not math.isclose(float(requested), float(prepared), rel_tol=1e-12)
  return requested != prepared


def check_same_options(name, data_dir, builder, requested: dict) -> list:
  """Raises ValueError (one line) if `requested` would give other content than prepared.

  Returns:
    names of requested options that cannot be checked (not recorded: prepared before
    they were recorded, or not applying to that dataset); the caller reports them.
  """
  prepared = prepared_options(builder)
  recorded = set((builder.info.metadata or {}).get('prepare_options') or {})
  unknown = [option for option in requested if option not in prepared and
             option not in recorded]
  mismatched = [option for option in requested
                if option in prepared and _differs(requested[option], prepared[option])]
  if mismatched:
    def shown(option, value):
      if option.endswith('_sha256'):  # csv_sha256, npz_sha256: name the file it was
        source = option[:-len('_sha256')]
        return f"{source} {prepared.get(source, '?')} (sha256 {str(value)[:12]})"
      return f'{option} {value}'
    was = ', '.join(shown(option, prepared[option]) for option in mismatched)
    asked = ', '.join(shown(option, requested[option]) if not option.endswith('_sha256') else
                      f'another --{option[:-len("_sha256")]} (sha256 {requested[option][:12]})'
                      for option in mismatched)
    raise ValueError(
        f'{name} in --data_dir {data_dir} was prepared with {was}; asked for {asked}. '
        f'Prepared files are never replaced: prepare into a new --data_dir, or delete '
        f'{builder.data_path} and run again')
  return unknown


def _between(data_dir, version_folder) -> list:
  """The folders strictly between data_dir and the version folder, deepest first."""
  root = pathlib.Path(data_dir).expanduser().absolute()
  return [parent for parent in pathlib.Path(str(version_folder)).absolute().parents
          if root in parent.parents]


@contextlib.contextmanager
def removed_on_failure(data_dir, version_folder):
  """On any exception (Ctrl-C too) removes the empty folders this run created between
  data_dir and the version folder (TFDS removes its own incomplete.* folder), and the
  empty downloads/ folder TFDS makes, so nothing half-written is left."""
  data_dir = pathlib.Path(data_dir).expanduser().absolute()
  candidates = _between(data_dir, version_folder)
  candidates += [data_dir / 'downloads' / 'extracted', data_dir / 'downloads', data_dir]
  existed = {path: path.exists() for path in candidates}
  try:
    yield
  except BaseException:
    for path in candidates:  # deepest first
      if not existed[path] and path.is_dir():
        # TFDS's record of a builder's configs (FAMILY/.config/), made by this run.
        shutil.rmtree(path / '.config', ignore_errors=True)
        try:
          path.rmdir()
        except OSError:  # not empty: someone else's files, left alone
          pass
    raise


def own_plan(args, family: str, name: str) -> own_data.Plan:
  """Reads and checks the own data's input (own_data.BadInput / FileNotFoundError)."""
  given = _own_flags_given(args, family)
  split = dict(patient_regex=args.patient_regex, test_fraction=args.test_fraction,
               validation_fraction=args.validation_fraction, split_seed=args.split_seed)
  if family == 'folder':
    if not args.manual_dir:
      raise ValueError('folder needs --manual_dir (the folder of images)')
    return folder.plan(args.manual_dir, name=name, unlabelled=bool(args.unlabelled),
                       keep_folder_splits=bool(args.keep_folder_splits), **split)
  if family == 'csv':
    missing = [f'--{flag}' for flag in ('csv', 'image_root', 'path_column', 'label_columns')
               if flag not in given]
    if missing:
      raise ValueError(f'csv needs {", ".join(missing)}')
    return csv_table.plan(
        args.csv, image_root=args.image_root, name=name, path_column=args.path_column,
        label_columns=_label_columns(args.label_columns), patient_column=args.patient_column,
        split_column=args.split_column, uncertain=args.uncertain, blank=args.blank,
        keep_folder_splits=bool(args.keep_folder_splits), **split)
  if not args.npz:
    raise ValueError('medmnist needs --npz (the MedMNIST .npz file)')
  return medmnist.plan(args.npz, name=name, label_names=_label_columns(args.label_names))


def _own_size(args, family, size) -> int:
  if size is None:
    size = (medmnist.native_size(_existing_file(args.npz, '--npz'))
            if family == 'medmnist' and args.npz else DEFAULT_OWN_IMAGE_SIZE)
  own_data.check_image_size(size)
  return int(size)


def prepare(args) -> dict:
  """Prepares (or finds prepared) the dataset; returns the summary that prepare prints.

  Raises:
    ValueError, FileNotFoundError: bad input (one line): unknown dataset, options that
      differ from the prepared ones, a data_dir that cannot be written, own data that
      cannot be prepared (own_data.BadInput), ...
    KeyboardInterrupt: Ctrl-C (nothing half-written is left).
  """
  family, size, own_name = family_and_size(args)
  if family in own_data.FAMILIES:
    _own_flags_given(args, family)
    size = _own_size(args, family, size)
    name = f'{family}/{own_name}/{size}'
    version_folder = own_data.prepared_version_folder(args.data_dir, family, own_name, size)
    already_prepared = version_folder is not None
    builder, manual_dir = None, None
  else:
    name, builder, manual_dir = builtin_builder(args)
    already_prepared = registry.is_prepared(builder)
  # Own data not prepared yet: nothing to compare (and its input is read once, below).
  requested = ({} if family in own_data.FAMILIES and not already_prepared
               else requested_options(args))
  start = time.time()
  if already_prepared:
    builder = registry.get_builder(name, args.data_dir)  # what is on disk
    unchecked = check_same_options(name, args.data_dir, builder, requested)
    print(f'{name}: already prepared at {builder.data_path}; nothing to do.')
    if unchecked and family in own_data.FAMILIES:
      print(f'note: {", ".join(unchecked)} do not apply to this dataset (not recorded)')
    elif unchecked:
      print(f'note: not checked against the prepared files (made before prepare recorded '
            f'its options): {", ".join(unchecked)}')
    recorded_manual_dir = (builder.info.metadata or {}).get('manual_dir')
    if manual_dir and recorded_manual_dir and (
        pathlib.Path(recorded_manual_dir).resolve() != manual_dir.resolve()):
      print(f'note: prepared from manual_dir {recorded_manual_dir}, not {manual_dir}; '
            f'to prepare from {manual_dir} use a new --data_dir, or delete '
            f'{builder.data_path} first')
  else:
    if builder is None:  # own data
      version_folder = own_data.dataset_folder(args.data_dir, family, own_name, size) / (
          own_data.VERSION)
    else:
      version_folder = builder.data_path
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir else None)
    with removed_on_failure(args.data_dir, version_folder):
      check_writable(args.data_dir, version_folder)
      if builder is None:  # own data: read and check the input, then make its builder
        plan = own_plan(args, family, own_name)
        builder = own_data.BUILDERS[family](plan=plan, image_size=size,
                                            data_dir=args.data_dir,
                                            num_workers=args.num_workers)
      builder.download_and_prepare(download_config=download_config)
    builder = registry.get_builder(name, args.data_dir)  # re-read what is on disk
    print(f'{name}: prepared at {builder.data_path} in {time.time() - start:.1f} s.')
  splits = {split: info.num_examples for split, info in builder.info.splits.items()}
  print('split sizes: ' + ', '.join(f'{split} {count}' for split, count in splits.items()))
  metadata = builder.info.metadata or {}
  summary = {'dataset': name, 'data_dir': str(args.data_dir), 'path': str(builder.data_path),
             'already_prepared': already_prepared, 'splits': splits,
             'options': metadata.get('prepare_options'),
             'patients_in_several_splits': metadata.get('patients_in_several_splits'),
             'seconds': round(time.time() - start, 2)}
  if 'prepare_counts' in metadata:
    summary['counts'] = metadata['prepare_counts']
    print_counts(metadata)
  print(f"use: config.dataset='{name}' config.data_dir='{args.data_dir}'")
  return summary


def print_counts(metadata) -> None:
  """The counts table (a row per split and the total) and what it does not show."""
  counts = metadata['prepare_counts']
  columns = [column for column in COUNT_COLUMNS
             if any(column in row for row in counts.values())]
  print(f'{"split":<12}' + ''.join(f'{column:>19}' for column in columns))
  for split, row in counts.items():
    print(f'{split:<12}' + ''.join(f'{row.get(column, 0):>19}' for column in columns))
  total = counts['total']
  if 'csv' in total:  # NIH
    print(f"images without a CSV row (skipped): {total.get('not_in_csv', 0)}; labels from "
          f"{total.get('csv')}; patients {total.get('patients')}, in several splits "
          f"{metadata.get('patients_in_several_splits')}")
    _print_moved(total)
    return
  if 'labelling' not in metadata:  # synthetic_cxr
    print(f"patients {total.get('patients')}, in several splits "
          f"{metadata.get('patients_in_several_splits')}")
    return
  options = metadata.get('prepare_options') or {}
  print(f"{metadata.get('labelling', '')}; patients {total.get('patients')} "
        f"({options.get('patients')}), in several splits "
        f"{metadata.get('patients_in_several_splits')}; splits from {options.get('splits')}")
  _print_moved(total)
  if total.get('per_label'):
    print('per label (written): ' + ', '.join(f'{label} {count}' for label, count in
                                              total['per_label'].items()))
  if total.get('ignored_files'):
    print(f"files that are not PNG, JPEG or DICOM (ignored): {total['ignored_files']}")


def _print_moved(total: dict) -> None:
  """The patients moved to make given splits patient-wise (NIH, folder, csv)."""
  if total.get('patients_moved'):
    print(f"patient-wise splits: {total['patients_moved']} patient(s) in several given "
          f"splits moved wholly into one split; images moved: " + ', '.join(
              f'{pair} {count}' for pair, count in total['images_moved'].items()))
