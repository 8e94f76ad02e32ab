"""Prepares a dataset as TFDS ArrayRecord files (once; re-running is a no-op).

  python -m simclr_jax.prepare synthetic_cxr --data_dir runs/data --image_size 64
  python -m simclr_jax.prepare nih --data_dir runs/data --manual_dir ~/nih --image_size 256
  python -m simclr_jax.prepare nih --data_dir runs/data \\
      --manual_dir /work/shared/data/nih_thumbs --csv .../Data_Entry_2017_v2020.csv.gz

For NIH the manual dir holds the PNGs (images_NNN/images/ or images/) and
Data_Entry_2017*.csv[.gz] (see simclr_jax/data/nih.py). A manual dir in the nih_thumbs
layout ({train,valid,test}/{0_normal,1_abnormal}/) becomes 'nih_chest_xray14/thumbs64'.
Prints the split sizes and, for NIH, the per-split counts of images found / written /
missing from disk / corrupt; the last stdout line is the same summary as JSON.
"""
import argparse
import json
import logging
import pathlib
import sys
import time

import tensorflow_datasets as tfds

from simclr_jax.data import nih
from simclr_jax.data import synthetic_cxr
from simclr_jax.data.pipeline import get_builder


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m simclr_jax.prepare', description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('dataset', choices=('synthetic_cxr', 'nih'))
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir to write into')
  parser.add_argument('--manual_dir', help='nih: folder with the PNGs and the CSV')
  parser.add_argument('--image_size', type=int, default=None,
                      help=f'side length; synthetic_cxr: {synthetic_cxr.IMAGE_SIZES} '
                           f'(default 64), nih: {nih.IMAGE_SIZES} (default 256)')
  parser.add_argument('--csv', help='nih: Data_Entry_2017*.csv[.gz] (default: searched)')
  parser.add_argument('--test_fraction', type=float, default=0.2,
                      help='nih without test_list.txt: fraction of patients in test')
  parser.add_argument('--validation_fraction', type=float, default=0.1,
                      help='nih: fraction of the non-test patients in validation')
  for split, size in synthetic_cxr.DEFAULT_SPLIT_SIZES.items():
    parser.add_argument(f'--{split}_size', type=int, default=size,
                        help=f'synthetic_cxr: examples in {split}')
  parser.add_argument('--num_workers', type=int, default=None,
                      help='decode/generate processes (default: all cores)')
  return parser.parse_args(argv)


def _builder(args):
  """(dataset name 'family/config', builder, manual_dir or None) from the flags."""
  if args.dataset == 'synthetic_cxr':
    size = args.image_size or 64
    if size not in synthetic_cxr.IMAGE_SIZES:
      raise SystemExit(f'--image_size {size}: synthetic_cxr sizes are {synthetic_cxr.IMAGE_SIZES}')
    name = f'synthetic_cxr/{size}'
    split_sizes = {split: getattr(args, f'{split}_size')
                   for split in synthetic_cxr.DEFAULT_SPLIT_SIZES}
    return name, get_builder(name, args.data_dir, split_sizes=split_sizes,
                             num_workers=args.num_workers), None
  if not args.manual_dir:
    raise SystemExit('nih needs --manual_dir (the folder with the PNGs and the CSV)')
  manual_dir = pathlib.Path(args.manual_dir).expanduser()
  if not manual_dir.is_dir():
    raise SystemExit(f'--manual_dir {manual_dir} does not exist')
  if nih.is_thumbs_layout(manual_dir):
    if args.image_size not in (None, 64):
      raise SystemExit(f'--image_size {args.image_size}: {manual_dir} has the nih_thumbs '
                       f'layout, which is prepared at 64 px only (config thumbs64)')
    config = nih.THUMBS_CONFIG
  else:
    size = args.image_size or 256
    if size not in nih.IMAGE_SIZES:
      raise SystemExit(f'--image_size {size}: nih sizes are {nih.IMAGE_SIZES}')
    config = str(size)
  name = f'nih_chest_xray14/{config}'
  builder = get_builder(name, args.data_dir, csv_path=args.csv,
                        test_fraction=args.test_fraction,
                        validation_fraction=args.validation_fraction,
                        num_workers=args.num_workers)
  return name, builder, manual_dir


def prepare(args) -> dict:
  """Prepares (or finds prepared) the dataset; returns the summary that main prints."""
  name, builder, manual_dir = _builder(args)
  already_prepared = builder.is_prepared()
  start = time.time()
  if already_prepared:
    print(f'{name}: already prepared at {builder.data_path}; nothing to do.')
  else:
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=download_config)
    builder = get_builder(name, args.data_dir)  # re-read what is on disk
    print(f'{name}: prepared at {builder.data_path} in {time.time() - start:.1f} s.')
  splits = {split: info.num_examples for split, info in builder.info.splits.items()}
  print('split sizes: ' + ', '.join(f'{split} {count}' for split, count in splits.items()))
  summary = {'dataset': name, 'data_dir': str(args.data_dir), 'path': str(builder.data_path),
             'already_prepared': already_prepared, 'splits': splits,
             'seconds': round(time.time() - start, 2)}
  metadata = builder.info.metadata or {}
  if 'prepare_counts' in metadata:
    counts = metadata['prepare_counts']
    summary['counts'] = counts
    columns = ('csv_rows', 'found', 'missing_from_disk', 'written', 'corrupt')
    print(f'{"split":<12}' + ''.join(f'{column:>19}' for column in columns))
    for split, row in counts.items():
      print(f'{split:<12}' + ''.join(f'{row.get(column, 0):>19}' for column in columns))
    total = counts['total']
    print(f"images without a CSV row (skipped): {total.get('not_in_csv', 0)}; labels from "
          f"{total.get('csv')}; patients {total.get('patients')}, in several splits "
          f"{total.get('patients_in_several_splits')}")
  print(f"use: config.dataset='{name}' config.data_dir='{args.data_dir}'")
  return summary


def main(argv=None):
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.ERROR)  # TFDS chatter
  tfds.disable_progress_bar()  # the builders draw their own bars with totals
  try:
    summary = prepare(parse_args(argv))
  except (FileNotFoundError, ValueError) as e:  # bad input: the message says what and where
    raise SystemExit(f'error: {e}') from e
  except AssertionError as e:
    if 'Manual directory' not in str(e):  # TFDS's check of an empty manual dir
      raise
    raise SystemExit(f'error: {e}') from e
  sys.stdout.flush()
  print(json.dumps(summary))


if __name__ == '__main__':
  main()
