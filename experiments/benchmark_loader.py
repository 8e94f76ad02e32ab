"""Throughput of the Grain training pipeline reading a prepared 256^2 dataset.

  python experiments/benchmark_loader.py [--data_dir DIR --dataset NAME] [--batch_size 64]

Without --data_dir it prepares synthetic_cxr/256 (train split of --train_size images)
in a temporary folder first. Measures images/s of simclr_jax.data.create_train_iterator
(uint8 read from ArrayRecord + deserialise + batch + device layout; augmentation runs on
the accelerator, not here) with 0 workers (all in the main process) and with 1..N Grain
worker processes, and extrapolates the per-worker rate to 16 workers. Prints JSON.
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import ml_collections

from simclr_jax import data


def _rate(config, num_workers, batches, warmup):
  config = ml_collections.ConfigDict(config.to_dict())
  config.input.num_workers = num_workers
  iterator = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=1)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  iterator.close()
  return batches * config.batch_size / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--dataset', default='synthetic_cxr/256')
  parser.add_argument('--train_size', type=int, default=1024)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--max_workers', type=int, default=min(2, os.cpu_count() or 1))
  args = parser.parse_args()

  temporary = None
  data_dir = args.data_dir
  prepare_seconds = None
  if data_dir is None:
    temporary = tempfile.TemporaryDirectory()
    data_dir = temporary.name
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON
      data.get_builder(args.dataset, data_dir, split_sizes={'train': args.train_size}
                       ).download_and_prepare()
    prepare_seconds = time.perf_counter() - start
  config = ml_collections.ConfigDict(dict(
      dataset=args.dataset, data_dir=data_dir, train_split='train',
      batch_size=args.batch_size, seed=0,
      input=dict(num_workers=0, prefetch_buffer_size=2, class_balanced=False)))
  shape = data.data_source(args.dataset, data_dir, 'train')[0]['image'].shape

  rates = {'main_process': _rate(config, 0, args.batches, warmup=2)}
  for workers in range(1, args.max_workers + 1):
    rates[f'{workers}_workers'] = _rate(config, workers, args.batches, warmup=4)
  per_worker = max(rates[f'{w}_workers'] / w for w in range(1, args.max_workers + 1))
  result = {
      'benchmark': 'grain_train_iterator',
      'dataset': args.dataset, 'image_shape': list(shape),
      'num_examples': data.num_examples(args.dataset, data_dir, 'train'),
      'batch_size': args.batch_size, 'batches_timed': args.batches,
      'images_per_second': {k: round(v, 1) for k, v in rates.items()},
      'images_per_second_per_worker': round(per_worker, 1),
      'extrapolated_16_workers_images_per_second': round(16 * per_worker, 1),
      'prepare_seconds': None if prepare_seconds is None else round(prepare_seconds, 1),
      'local_cores': os.cpu_count(),
      'note': 'per-worker rate x 16 assumes 16 free cores, page-cached or fast storage and '
              'that the worker->main shared-memory transfer keeps up (untested here); '
              f'{args.max_workers} worker(s) here share {os.cpu_count()} core(s) with the '
              'main process and other users',
  }
  print(json.dumps(result, indent=1))
  if temporary is not None:
    temporary.cleanup()


if __name__ == '__main__':
  main()
