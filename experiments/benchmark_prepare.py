"""Throughput of NIH preparation: 1024^2 PNG -> decode + grayscale + resize to 256^2.

  python experiments/benchmark_prepare.py [--image_size 256] [--repeats 3] [--workers N]

Uses the real sample PNGs (/work/shared/data/nih_sample/images: 37 mode L, 4 RGBA) and
the builder's own per-image function (simclr_jax.data.nih.load_image). Measures one
process (images per CPU second = per core, and per wall second), then a pool over all
local cores, and extrapolates the per-core rate to the full 112,120-image release on 16
cores. Prints one JSON object.
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import platform
import time

from PIL import Image

from simclr_jax.data import nih

FULL_RELEASE_IMAGES = 112_120
DEFAULT_IMAGES = pathlib.Path(__file__).resolve().parents[2] / 'shared/data/nih_sample/images'


def _time_one_process(paths, image_size, repeats):
  """(images per wall second, images per CPU second) in this process."""
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(repeats):
    for path in paths:
      nih.load_image(path, image_size)
  count = len(paths) * repeats
  return count / (time.perf_counter() - start), count / (time.process_time() - start_cpu)


def _decode_only(paths, repeats):
  start = time.perf_counter()
  for _ in range(repeats):
    for path in paths:
      with Image.open(path) as image:
        image.load()
  return len(paths) * repeats / (time.perf_counter() - start)


def _serialize_rate(image_size, count=300):
  """Examples per CPU second of the TFDS feature serialisation the main process does."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  builder = nih.NihChestXray14(config=str(image_size), data_dir='/nonexistent')
  features = builder.info.features
  example = {
      'image': np.zeros((image_size, image_size, 1), np.uint8), **nih.label_features(()),
      'patient_id': 1, 'view_position': 'PA', 'age': 50, 'sex': 'M',
      'image_index': '00000001_000.png'}
  start = time.process_time()
  for _ in range(count):
    features.serialize_example(example)
  return count / (time.process_time() - start)


def _chunk(args):
  paths, image_size = args
  for path in paths:
    nih.load_image(path, image_size)
  return len(paths)


def _time_pool(paths, image_size, repeats, workers):
  jobs = [(paths[i::workers], image_size) for i in range(workers)] * repeats
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('fork')) as pool:
    list(pool.map(_chunk, [(paths[:2], image_size)] * workers))  # warm up
    start = time.perf_counter()
    done = sum(pool.map(_chunk, jobs))
    return done / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', default=str(DEFAULT_IMAGES))
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--workers', type=int, default=os.cpu_count())
  args = parser.parse_args()
  paths = sorted(pathlib.Path(args.images).glob('*.png'))
  if not paths:
    raise SystemExit(f'no *.png in {args.images}')
  modes = {}
  for path in paths:
    with Image.open(path) as image:
      modes[image.mode] = modes.get(image.mode, 0) + 1
      source_size = image.size
  nih.load_image(paths[0], args.image_size)  # warm up imports / caches
  per_core_wall, per_core = _time_one_process(paths, args.image_size, args.repeats)
  decode_per_core = _decode_only(paths, args.repeats)
  serialize_rate = _serialize_rate(args.image_size)
  pool_rate = _time_pool(paths, args.image_size, args.repeats, args.workers)
  hours = lambda rate: FULL_RELEASE_IMAGES / rate / 3600  # noqa: E731
  print(json.dumps({
      'benchmark': 'nih_prepare_decode_convert_resize',
      'source': f'{len(paths)} PNGs {source_size[0]}x{source_size[1]}, modes {modes}',
      'output': f'{args.image_size}x{args.image_size}x1 uint8',
      'images_per_cpu_second': round(per_core, 1),
      'images_per_wall_second_one_process': round(per_core_wall, 1),
      'png_decode_only_images_per_wall_second': round(decode_per_core, 1),
      'tfds_serialize_examples_per_cpu_second': round(serialize_rate, 1),
      'workers': args.workers,
      'images_per_second_all_local_cores': round(pool_rate, 1),
      'load_average_1min': round(os.getloadavg()[0], 2),
      'extrapolated_112120_images_16_cores_minutes': round(hours(per_core * 16) * 60, 1),
      'extrapolated_112120_images_1_core_hours': round(hours(per_core), 2),
      'note': 'per core = images per CPU second (wall rates are lower on a shared, loaded '
              'machine); decode+convert+resize only: the TFDS writer (serialize, shuffle, '
              'write) runs in the main process on top of this',
      'cpu': platform.processor() or platform.machine(),
      'local_cores': os.cpu_count(),
  }, indent=1))


if __name__ == '__main__':
  main()
