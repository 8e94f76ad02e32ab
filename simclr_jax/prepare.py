"""Prepares a dataset as TFDS ArrayRecord files (once; re-running is a no-op).

  python -m simclr_jax.prepare synthetic_cxr --data_dir runs/data --image_size 64
  python -m simclr_jax.prepare nih --data_dir runs/data --manual_dir ~/nih --image_size 256
  python -m simclr_jax.prepare nih --data_dir runs/data \\
      --manual_dir /work/shared/data/nih_thumbs --csv .../Data_Entry_2017_v2020.csv.gz

The dataset may also be named as in config.dataset ('synthetic_cxr/32',
'nih_chest_xray14/64'). For NIH the manual dir holds the PNGs (images_NNN/images/ or
images/) and Data_Entry_2017*.csv[.gz] (see simclr_jax/data/nih.py). A manual dir in the
nih_thumbs layout ({train,valid,test}/{0_normal,1_abnormal}/) becomes
'nih_chest_xray14/thumbs64'.

While writing, progress goes to stdout: a bar on a terminal, else one line every ~10 %
of a split (at most every 5000 images) and a summary line per split. At the end it prints
the split sizes and, for NIH, the per-split counts of images found / written / missing
from disk / corrupt; the last stdout line is the same summary as JSON.

What a dataset was prepared with (split sizes; NIH: the fractions and the label table) is
recorded in its metadata.json. Running prepare again on a prepared dataset changes
nothing: with the same options (or none given) it says so and exits 0; with options that
would give other content it exits 2 naming them, since the prepared files are never
replaced: prepare into a new --data_dir, or delete the version folder it names first.
Bad input (unknown dataset, a --data_dir that cannot be written, ...) is one line on
stderr and exit status 2.
"""
import argparse
import json
import logging
import math
import pathlib
import sys
import tempfile
import time

import tensorflow_datasets as tfds

from simclr_jax.data import nih
from simclr_jax.data import registry
from simclr_jax.data import synthetic_cxr

_FAMILIES = {'synthetic_cxr': 'synthetic_cxr', 'nih': 'nih', 'nih_chest_xray14': 'nih'}
SPLIT_SIZE_OPTIONS = tuple(f'{split}_size' for split in synthetic_cxr.DEFAULT_SPLIT_SIZES)


class _ArgumentParser(argparse.ArgumentParser):
  """argparse, but a usage error is one line (not the whole usage) and exit status 2."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def parse_args(argv=None) -> argparse.Namespace:
  parser = _ArgumentParser(
      prog='python -m simclr_jax.prepare', description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('dataset', help="synthetic_cxr or nih (or a config.dataset name such "
                                      "as 'synthetic_cxr/32', 'nih_chest_xray14/64')")
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir to write into')
  parser.add_argument('--manual_dir', help='nih: folder with the PNGs and the CSV')
  parser.add_argument('--image_size', type=int, default=None,
                      help=f'side length; synthetic_cxr: {synthetic_cxr.IMAGE_SIZES} '
                           f'(default 64), nih: {nih.IMAGE_SIZES} (default 256)')
  parser.add_argument('--csv', help='nih: Data_Entry_2017*.csv[.gz] (default: searched)')
  parser.add_argument('--test_fraction', type=float, default=None,
                      help='nih without test_list.txt: fraction of patients in test '
                           '(default 0.2)')
  parser.add_argument('--validation_fraction', type=float, default=None,
                      help='nih: fraction of the non-test patients in validation (default 0.1)')
  parser.add_argument('--keep_folder_splits', action=argparse.BooleanOptionalAction,
                      default=None,
                      help='nih: keep split folders (thumbs layout) or lists that put a '
                           'patient in several splits, and record the leak; default: move '
                           'each such patient wholly into one split (see data/nih.py)')
  for split, size in synthetic_cxr.DEFAULT_SPLIT_SIZES.items():
    parser.add_argument(f'--{split}_size', type=int, default=None,
                        help=f'synthetic_cxr: examples in {split} (default {size})')
  parser.add_argument('--num_workers', type=int, default=None,
                      help='decode/generate processes (default: all cores)')
  return parser.parse_args(argv)


def _family_and_size(args):
  """('synthetic_cxr' or 'nih', image size or config name or None) from the dataset name."""
  family, _, config = args.dataset.partition('/')
  if family not in _FAMILIES or (config and family == 'nih'):
    known = ', '.join(f"{name}/{'|'.join(configs)}"
                      for name, configs in registry.known_datasets().items())
    raise ValueError(f'unknown dataset {args.dataset!r}; prepare takes synthetic_cxr or nih, '
                     f'or one of the known datasets: {known}')
  if config:
    registry.check_dataset_name(args.dataset)
    if config == nih.THUMBS_CONFIG:
      return _FAMILIES[family], config
    if args.image_size not in (None, int(config)):
      raise ValueError(f'dataset {args.dataset!r} is {config} px but --image_size is '
                       f'{args.image_size}; give one of them')
    return _FAMILIES[family], int(config)
  return _FAMILIES[family], args.image_size


def _builder(args):
  """(dataset name 'family/config', builder, manual_dir or None) from the flags."""
  family, size = _family_and_size(args)
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


def check_writable(data_dir, builder) -> None:
  """Raises ValueError (one line) unless prepare can write into data_dir.

  Creates data_dir if needed and writes a temporary file into it and into the dataset's
  folders that already exist (e.g. DATA_DIR/synthetic_cxr/ made by someone else). A
  real write rather than os.access: as root os.access says yes to a mode 555 folder,
  and it cannot see a read-only mount.
  """
  data_dir = pathlib.Path(data_dir).expanduser()
  version_folder = pathlib.Path(str(builder.data_path))
  folders = [data_dir] + [folder for folder in (version_folder.parent.parent,
                                                version_folder.parent) if folder.is_dir()]
  for folder in folders:
    try:
      folder.mkdir(parents=True, exist_ok=True)
      with tempfile.TemporaryFile(dir=folder):
        pass
    except OSError as e:
      raise ValueError(
          f'--data_dir {data_dir}: cannot write into {folder} ({e.strerror or e}); '
          f'give a --data_dir you can write to') from e


def requested_options(args) -> dict:
  """The content options given on the command line (flags left out are not compared)."""
  family, _ = _family_and_size(args)
  if family == 'synthetic_cxr':
    return {option: getattr(args, option) for option in SPLIT_SIZE_OPTIONS
            if getattr(args, option) is not None}
  options = {option: getattr(args, option) for option in ('test_fraction',
                                                          'validation_fraction',
                                                          'keep_folder_splits')
             if getattr(args, option) is not None}
  if args.csv:
    options['csv_sha256'] = nih.file_sha256(nih.find_csv(args.manual_dir, args.csv))
  return options


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
    names of requested options that cannot be checked (prepared before they were
    recorded); the caller reports them.
  """
  prepared = prepared_options(builder)
  recorded = set((builder.info.metadata or {}).get('prepare_options') or {})
  unknown = [option for option in requested if option not in prepared and
             option not in recorded]
  mismatched = [option for option in requested
                if option in prepared and _differs(requested[option], prepared[option])]
  if mismatched:
    def shown(option, value):
      if option == 'csv_sha256':
        return f"csv {prepared.get('csv', '?')} (sha256 {str(value)[:12]})"
      return f'{option} {value}'
    was = ', '.join(shown(option, prepared[option]) for option in mismatched)
    asked = ', '.join(shown(option, requested[option]) if option != 'csv_sha256' else
                      f'another --csv (sha256 {requested[option][:12]})'
                      for option in mismatched)
    raise ValueError(
        f'{name} in --data_dir {data_dir} was prepared with {was}; asked for {asked}. '
        f'Prepared files are never replaced: prepare into a new --data_dir, or delete '
        f'{builder.data_path} and run again')
  return unknown


def prepare(args) -> dict:
  """Prepares (or finds prepared) the dataset; returns the summary that main prints.

  Raises:
    ValueError, FileNotFoundError: bad input (one line): unknown dataset, options that
      differ from the prepared ones, a data_dir that cannot be written, ...
  """
  name, builder, manual_dir = _builder(args)
  requested = requested_options(args)
  already_prepared = registry.is_prepared(builder)
  start = time.time()
  if already_prepared:
    builder = registry.get_builder(name, args.data_dir)  # what is on disk
    unchecked = check_same_options(name, args.data_dir, builder, requested)
    print(f'{name}: already prepared at {builder.data_path}; nothing to do.')
    if unchecked:
      print(f'note: not checked against the prepared files (made before prepare recorded '
            f'its options): {", ".join(unchecked)}')
    recorded_manual_dir = (builder.info.metadata or {}).get('manual_dir')
    if manual_dir and recorded_manual_dir and (
        pathlib.Path(recorded_manual_dir).resolve() != manual_dir.resolve()):
      print(f'note: prepared from manual_dir {recorded_manual_dir}, not {manual_dir}; '
            f'to prepare from {manual_dir} use a new --data_dir, or delete '
            f'{builder.data_path} first')
  else:
    check_writable(args.data_dir, builder)
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir else None)
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
    counts = metadata['prepare_counts']
    summary['counts'] = counts
    total = counts['total']
    columns = [column for column in ('csv_rows', 'found', 'missing_from_disk', 'written',
                                     'corrupt', 'images', 'patients') if column in total]
    print(f'{"split":<12}' + ''.join(f'{column:>19}' for column in columns))
    for split, row in counts.items():
      print(f'{split:<12}' + ''.join(f'{row.get(column, 0):>19}' for column in columns))
    if 'csv' in total:
      print(f"images without a CSV row (skipped): {total.get('not_in_csv', 0)}; labels from "
            f"{total.get('csv')}")
    print(f"patients {total.get('patients')}, in several splits "
          f"{metadata.get('patients_in_several_splits')}")
    if total.get('patients_moved'):
      print(f"patient-wise splits: {total['patients_moved']} patient(s) in several split "
            f"folders moved wholly into one split; images moved: " + ', '.join(
                f'{pair} {count}' for pair, count in total['images_moved'].items()))
  print(f"use: config.dataset='{name}' config.data_dir='{args.data_dir}'")
  return summary


def run(argv=None) -> int:
  """Runs the CLI on `argv`; returns the exit status (2: bad input, one line on stderr)."""
  args = parse_args(argv)
  try:
    summary = prepare(args)
  except (FileNotFoundError, ValueError) as e:  # bad input: the message says what and where
    print(f'error: {e}', file=sys.stderr)
    return 2
  except AssertionError as e:
    if 'Manual directory' not in str(e):  # TFDS's check of an empty manual dir
      raise
    print(f'error: {e}', file=sys.stderr)
    return 2
  sys.stdout.flush()
  print(json.dumps(summary))
  return 0


def main(argv=None):
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.ERROR)  # TFDS chatter
  tfds.disable_progress_bar()  # the builders report their own progress with totals
  sys.exit(run(argv))


if __name__ == '__main__':
  main()
