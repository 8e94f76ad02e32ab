"""Prepares a dataset as TFDS ArrayRecord files (once; re-running is a no-op).

  python -m simclr_jax.prepare synthetic_cxr --data_dir runs/data --image_size 64
  python -m simclr_jax.prepare nih --data_dir runs/data --manual_dir ~/nih --image_size 256
  python -m simclr_jax.prepare nih --data_dir runs/data \\
      --manual_dir /work/shared/data/nih_thumbs --csv .../Data_Entry_2017_v2020.csv.gz
Your own data (dataset FAMILY/NAME/SIZE, see simclr_jax/data/own_data.py):
  python -m simclr_jax.prepare folder --manual_dir ~/xrays --name xrays --image_size 224 \\
      --data_dir runs/data
  python -m simclr_jax.prepare csv --csv CheXpert-v1.0-small/train.csv --image_root . \\
      --path_column Path --label_columns Atelectasis,Cardiomegaly,Consolidation,Edema \\
      --patient_regex 'patient(\\d+)' --uncertain zeros --name chexpert --data_dir runs/data
  python -m simclr_jax.prepare medmnist --npz chestmnist_64.npz --name chestmnist \\
      --data_dir runs/data

The dataset may also be named as in config.dataset ('synthetic_cxr/32',
'nih_chest_xray14/64', 'folder/xrays/224'). For NIH the manual dir holds the PNGs
(images_NNN/images/ or images/) and Data_Entry_2017*.csv[.gz] (see
simclr_jax/data/nih.py). A manual dir in the nih_thumbs layout
({train,valid,test}/{0_normal,1_abnormal}/) becomes 'nih_chest_xray14/thumbs64'. A folder
of your own holds class subfolders (single-label), split folders (train/, val/, test/)
or just images (unlabelled), PNG, JPEG or DICOM, found recursively.

While writing, progress goes to stdout: a bar on a terminal, else one line every ~10 %
of a split (at most every 5000 images) and a summary line per split. At the end it prints
the split sizes and the per-split counts (NIH: images found / written / missing from disk
/ corrupt; own data also blank, too small, unlabelled and per label); the last stdout line
is the same summary as JSON, the one before it the `use: config.dataset=...` line.

What a dataset was prepared with is recorded in its metadata.json. Running prepare again
on a prepared dataset changes nothing: with the same options (or none given) it says so
and exits 0; with options that would give other content it exits 2 naming them, since
the prepared files are never replaced: prepare into a new --data_dir, or delete the
version folder it names first. Bad input (unknown dataset, a --data_dir that cannot be
written, a missing CSV column, no images, ...) is one line on stderr and exit status 2;
Ctrl-C is one line and exit status 130, and leaves no half-written dataset. The work
lives in simclr_jax/data/preparation.py.
"""
import argparse
import json
import logging
import sys

import tensorflow_datasets as tfds

from simclr_jax.data import nih
from simclr_jax.data import preparation
from simclr_jax.data import registry
from simclr_jax.data import synthetic_cxr

# Kept importable from here (the logic lives in data/preparation.py).
SPLIT_SIZE_OPTIONS = preparation.SPLIT_SIZE_OPTIONS
prepare = preparation.prepare


class _ArgumentParser(argparse.ArgumentParser):
  """argparse, but a usage error is one line (not the whole usage) and exit status 2."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def parse_args(argv=None) -> argparse.Namespace:
  parser = _ArgumentParser(
      prog='python -m simclr_jax.prepare', description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=f'datasets: {registry.describe_known_datasets()}\n\n'
             + __doc__.split('\n\n', 1)[1])
  parser.add_argument('dataset', help="synthetic_cxr, nih, folder, csv or medmnist (or a "
                                      "config.dataset name such as 'synthetic_cxr/32', "
                                      "'nih_chest_xray14/64', 'folder/xrays/224')")
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir to write into')
  parser.add_argument('--manual_dir', help='nih: folder with the PNGs and the CSV; '
                                           'folder: the folder of images')
  parser.add_argument('--image_size', type=int, default=None,
                      help=f'side length; synthetic_cxr: {synthetic_cxr.IMAGE_SIZES} '
                           f'(default 64), nih: {nih.IMAGE_SIZES} (default 256), own data: '
                           f'8..1024 (default 256; medmnist: the file\'s own)')
  parser.add_argument('--csv', help='nih: Data_Entry_2017*.csv[.gz] (default: searched); '
                                    'csv: the label table (one row per image)')
  parser.add_argument('--test_fraction', type=float, default=None,
                      help='nih without test_list.txt, folder/csv without given splits: '
                           'fraction of patients in test (default 0.2)')
  parser.add_argument('--validation_fraction', type=float, default=None,
                      help='nih, folder/csv without given splits: fraction of the non-test '
                           'patients in validation (default 0.1)')
  parser.add_argument('--keep_folder_splits', action=argparse.BooleanOptionalAction,
                      default=None,
                      help='nih, folder, csv: keep split folders (thumbs layout, train/ '
                           'val/ test/ folders), lists or a --split_column that put a '
                           'patient in several splits, and record the leak; default: move '
                           'each such patient wholly into one split (data/subsets.py)')
  for split, size in synthetic_cxr.DEFAULT_SPLIT_SIZES.items():
    parser.add_argument(f'--{split}_size', type=int, default=None,
                        help=f'synthetic_cxr: examples in {split} (default {size})')
  parser.add_argument('--num_workers', type=int, default=None,
                      help='decode/generate processes (default: all cores)')
  own = parser.add_argument_group('your own data (folder, csv, medmnist)')
  own.add_argument('--name', help='NAME of the dataset FAMILY/NAME/SIZE (letters, digits, '
                                  '".", "_", "-")')
  own.add_argument('--unlabelled', action='store_true', default=None,
                   help='folder: ignore class folders, every image without a label')
  own.add_argument('--patient_regex', help="folder/csv: the patient id in each file's "
                                           "path, e.g. 'patient(\\d+)' (group 1 if any)")
  own.add_argument('--split_seed', type=int, default=None,
                   help='folder/csv without given splits: seed of the patient hash split '
                        '(default 0)')
  own.add_argument('--image_root', help='csv: the folder the CSV paths are relative to')
  own.add_argument('--path_column', help='csv: the column with the image paths')
  own.add_argument('--label_columns', help='csv: comma-separated label columns (their '
                                           'names become the label names)')
  own.add_argument('--patient_column', help='csv: the column with the patient id')
  own.add_argument('--split_column', help='csv: a column with train / val / test')
  own.add_argument('--uncertain', choices=('ignore', 'zeros', 'ones'),
                   help='csv: what -1 (uncertain) becomes; required when there are -1 '
                        'cells (ignore: leave those images out)')
  own.add_argument('--blank', choices=('negative', 'uncertain'),
                   help='csv: what a blank cell is (default negative: not mentioned)')
  own.add_argument('--npz', help='medmnist: the .npz file')
  own.add_argument('--label_names', help='medmnist: comma-separated names of the classes '
                                         '/ labels (default: known for ChestMNIST and '
                                         'PneumoniaMNIST, else class 0, class 1, ...)')
  return parser.parse_args(argv)


def run(argv=None) -> int:
  """Runs the CLI on `argv`; returns the exit status (2: bad input, 130: Ctrl-C; one line
  on stderr)."""
  args = parse_args(argv)
  try:
    summary = prepare(args)
  except (FileNotFoundError, ValueError) as e:  # bad input: the message says what and where
    message = ' '.join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f'error: {message}', file=sys.stderr)
    return 2
  except AssertionError as e:
    if 'Manual directory' not in str(e):  # TFDS's check of an empty manual dir
      raise
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('Interrupted: prepare stopped; nothing was written (the partial files are '
          'removed).', file=sys.stderr, flush=True)
    return 130
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
