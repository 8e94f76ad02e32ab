"""Throughput of the Grain training input at NIH scale: 256 px records, several worker counts.

  python experiments/benchmark_loader.py [--workers 0,1,2,4] [--batch_size 256] [--batches 30]
      [--data_dir DIR --dataset nih_chest_xray14/256]      # a prepared dataset, e.g. real NIH
      [--build_dir DIR] [--train_size 86524] [--unique_images 1024]
      [--step_views_per_second 8000] [--host_cores 16] [--output FILE]

Measures what `simclr_jax.data.create_train_iterator` delivers to the training loop (records
read from ArrayRecord, deserialised, batched, laid out per device; augmentation runs on the
accelerator inside the step, not here), with the work in the main process (0 workers) and in
N Grain worker processes. For each worker count: images/s, and the main process's CPU time
per batch (receiving the workers' batches is the part that does not scale with workers).

Without --data_dir it builds synthetic_cxr/256 at NIH size: --train_size records (86,524 =
NIH's official train_val list) of uint8 256x256x1 stored as raw bytes, exactly the record
format and size prepare writes for nih_chest_xray14/256 (the same feature spec). Rendering
86k phantoms takes ~45 CPU-minutes, so only --unique_images are rendered and their pixels
repeat over the records (the loader's cost does not depend on the pixel values; the
ArrayRecord compression ratio of phantoms may differ a little from real radiographs). The
build goes to --build_dir (kept for the next run) or a temporary folder (deleted after).

The 16-core extrapolation (--host_cores) is printed with its assumptions: a per-worker rate
(the lower of: wall-clock images/s per worker with fewer workers than local cores, and images
per CPU-second of the main process doing everything itself), times the cores left after the
main process and the training loop (host_cores - 2), capped by the main process's receive
ceiling (batch_size / its CPU seconds per batch with workers). The step's demand is
--step_views_per_second / 2 images/s (the issue's target: 8,000 views/s on one H100/H200).
Prints one JSON object.
"""
import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # run as a script: make simclr_jax importable

import ml_collections  # noqa: E402

from simclr_jax import data  # noqa: E402
from simclr_jax.data import synthetic_cxr  # noqa: E402

NIH_TRAIN_VAL_IMAGES = 86_524  # NIH ChestX-ray14 train_val_list.txt
RESERVED_CORES = 2             # the main (training) process and the host side of the step

_RENDERED = []  # pre-rendered phantoms; fork children of the builder's pool inherit them


def _render(index: int, image_size: int) -> dict:
  return synthetic_cxr.make_example('train', index, image_size)


def _recycled_example(split: str, index: int, image_size: int) -> dict:
  del split, image_size
  return dict(_RENDERED[index % len(_RENDERED)])


@contextlib.contextmanager
def recycled_phantoms(unique_images: int, image_size: int, workers: int):
  """While active, synthetic_cxr's builder writes pre-rendered phantoms over and over."""
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('fork')) as pool:
    _RENDERED[:] = list(pool.map(_render, range(unique_images), [image_size] * unique_images,
                                 chunksize=32))
  original = synthetic_cxr.make_example
  synthetic_cxr.make_example = _recycled_example
  try:
    yield
  finally:
    synthetic_cxr.make_example = original
    _RENDERED.clear()


RECORD_BYTES = 256 * 256 + 512  # one serialised 256 px record (image + label, ids, keys)


def build_nih_scale(data_dir: str, train_size: int, unique_images: int) -> float:
  """Writes synthetic_cxr/256 with `train_size` train records; returns the seconds it took."""
  start = time.perf_counter()
  builder = data.get_builder('synthetic_cxr/256', data_dir, split_sizes={'train': train_size})
  if not builder.is_prepared():
    # TFDS's writer buffers a split in memory up to 1 GB, then spills it to disk buckets
    # through tf.io.gfile, i.e. TensorFlow, which this project does not install (a larger
    # split fails with "No module named 'tensorflow'"). Keep the whole split in memory.
    from tensorflow_datasets.core import shuffle
    needed = int(1.2 * train_size * RECORD_BYTES)
    available = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    if 2 * needed > available:
      raise MemoryError(f'--train_size {train_size}: building needs about {2 * needed / 2**30:.1f} '
                        f'GiB of free memory, {available / 2**30:.1f} GiB are free; use a '
                        'smaller --train_size or --data_dir of a prepared dataset')
    shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, needed)
    with contextlib.redirect_stdout(sys.stderr), recycled_phantoms(
        min(unique_images, train_size), 256, os.cpu_count() or 1):
      builder.download_and_prepare()
  return time.perf_counter() - start


def measure(config: ml_collections.ConfigDict, num_workers: int, batches: int) -> dict:
  """Images/s and the main process's CPU ms per batch with `num_workers` Grain workers."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.input.num_workers = num_workers
  start = time.perf_counter()
  iterator = data.create_train_iterator(config, process_index=0, process_count=1,
                                        local_device_count=1)
  next(iterator)
  first_batch_seconds = time.perf_counter() - start
  for _ in range(max(2, 2 * num_workers)):  # every worker has started and delivered
    next(iterator)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
  iterator.close()
  assert batch['image'].shape[1] == config.batch_size
  return {'images_per_second': round(batches * config.batch_size / seconds, 1),
          'main_process_cpu_ms_per_batch': round(1000 * cpu_seconds / batches, 2),
          'first_batch_seconds': round(first_batch_seconds, 2)}


def extrapolate(rates: dict, batch_size: int, local_cores: int, host_cores: int) -> dict:
  """The host_cores estimate from the measured runs (see the module docstring).

  Two per-worker rates: wall-clock images/s per worker of the runs with fewer workers than
  local cores (pessimistic when other processes share the cores), and images per CPU-second
  of the main process doing all the work itself (0 workers; does not depend on the load).
  The estimate uses the lower one.
  """
  within = {w: r for w, r in rates.items() if 1 <= w < local_cores} or {
      w: r for w, r in rates.items() if w >= 1}
  wall_per_worker = max((r['images_per_second'] / w for w, r in within.items()), default=None)
  cpu_per_worker = (batch_size / (rates[0]['main_process_cpu_ms_per_batch'] / 1000)
                    if 0 in rates and rates[0]['main_process_cpu_ms_per_batch'] > 0 else None)
  candidates = [r for r in (wall_per_worker, cpu_per_worker) if r is not None]
  per_worker = min(candidates) if candidates else None
  worker_runs = [r for w, r in rates.items() if w >= 1]
  receive_ms = min((r['main_process_cpu_ms_per_batch'] for r in worker_runs), default=None)
  ceiling = batch_size / (receive_ms / 1000) if receive_ms else None
  workers = max(1, host_cores - RESERVED_CORES)
  estimate = None
  if per_worker is not None:
    estimate = per_worker * workers if ceiling is None else min(per_worker * workers, ceiling)

  def rounded(value):
    return None if value is None else round(value, 1)

  return {'per_worker_images_per_second': rounded(per_worker),
          'per_worker_wall_images_per_second': rounded(wall_per_worker),
          'per_worker_wall_from_worker_counts': sorted(within),
          'per_core_images_per_cpu_second': rounded(cpu_per_worker),
          'main_process_receive_ceiling_images_per_second': rounded(ceiling),
          'host_cores': host_cores, 'host_workers': workers,
          'images_per_second': rounded(estimate)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add = parser.add_argument
  add('--data_dir', default=None, help='a prepared data_dir (else build synthetic_cxr/256)')
  add('--dataset', default='synthetic_cxr/256')
  add('--build_dir', default=None, help='where to build (and keep) the NIH-size dataset')
  add('--train_size', type=int, default=NIH_TRAIN_VAL_IMAGES)
  add('--unique_images', type=int, default=1024)
  add('--workers', default='0,1,2,4', help='comma-separated Grain worker counts')
  add('--batch_size', type=int, default=256, help='global batch (nih_r50: 256)')
  add('--batches', type=int, default=30, help='batches timed per worker count')
  add('--step_views_per_second', type=float, default=8000.0,
      help='what the train step consumes (views/s; images = views / 2)')
  add('--host_cores', type=int, default=16, help='cores of the host to extrapolate to')
  add('--output', default='', help='also append the JSON (one line) to this file')
  args = parser.parse_args(argv)
  try:
    worker_counts = sorted({int(w) for w in args.workers.split(',') if w.strip()})
  except ValueError:
    parser.error(f'--workers {args.workers!r}: expected comma-separated integers, e.g. 0,1,2,4')
  if not worker_counts or min(worker_counts) < 0:
    parser.error(f'--workers {args.workers!r}: expected integers >= 0, e.g. 0,1,2,4')
  for name in ('train_size', 'unique_images', 'batch_size', 'batches'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} {getattr(args, name)}: must be >= 1')

  temporary = None
  build_seconds = None
  data_dir = args.data_dir
  if data_dir is None:
    if args.dataset != 'synthetic_cxr/256':
      parser.error(f'--dataset {args.dataset}: without --data_dir only synthetic_cxr/256 is built')
    if args.build_dir is None:
      temporary = tempfile.TemporaryDirectory(prefix='simclr_loader_')
    data_dir = args.build_dir or temporary.name
    try:
      build_seconds = round(build_nih_scale(data_dir, args.train_size, args.unique_images), 1)
    except MemoryError as error:
      print(f'error: {error}', file=sys.stderr)
      sys.exit(2)
  config = ml_collections.ConfigDict(dict(
      dataset=args.dataset, data_dir=data_dir, train_split='train',
      batch_size=args.batch_size, seed=0, objective='simclr',
      input=dict(num_workers=0, prefetch_buffer_size=2, class_balanced=False)))
  try:
    source = data.data_source(args.dataset, data_dir, 'train')
    num_examples = data.num_examples(args.dataset, data_dir, 'train')
  except (FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  shape = list(source[0]['image'].shape)
  data_bytes = sum(f.stat().st_size for f in
                   pathlib.Path(data_dir).glob(f'{args.dataset}/*/*train.array_record*'))

  rates = {w: measure(config, w, args.batches) for w in worker_counts}
  local_cores = os.cpu_count() or 1
  estimate = extrapolate(rates, args.batch_size, local_cores, args.host_cores)
  demand = args.step_views_per_second / 2
  result = {
      'benchmark': 'grain_train_iterator', 'dataset': args.dataset, 'image_shape': shape,
      'num_examples': num_examples, 'train_split_bytes': data_bytes,
      'recycled_unique_images': None if args.data_dir else min(args.unique_images,
                                                                args.train_size),
      'batch_size': args.batch_size, 'batches_timed': args.batches,
      'by_workers': {str(w): r for w, r in rates.items()},
      'local_cores': local_cores,
      'load_average_1m': round(os.getloadavg()[0], 2),
      'build_seconds': build_seconds,
      'extrapolated': estimate,
      'step_demand_images_per_second': demand,
      'extrapolated_over_demand': (None if estimate['images_per_second'] is None
                                   else round(estimate['images_per_second'] / demand, 2)),
      'date_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
      'assumptions': (
          f'extrapolated = per-worker rate x {estimate["host_workers"]} workers (the lower of the '
          'wall-clock and the CPU-time rates), capped by the main process receive ceiling; '
          'assumes the workers scale linearly on free cores, the '
          'records are page-cached or on fast local storage (the train split is '
          f'{data_bytes / 2**30:.1f} GiB), and the step does not compete for those cores. '
          f'Measured on {local_cores} core(s) shared with other processes (load average '
          'recorded); runs with more workers than free cores under-report.'),
  }
  print(json.dumps(result, indent=1))
  if args.output:
    with open(args.output, 'a') as output:
      output.write(json.dumps(result) + '\n')
  if temporary is not None:
    temporary.cleanup()
  return result


if __name__ == '__main__':
  main()
