"""Reading X-ray image files into the one stored format, uint8 [S, S, 1]: shared by every
builder that decodes files (nih.py and the own-data builders in own_data.py).

Grey conversion (`to_grayscale_uint8`, from a PIL image):
  * L: as is. LA: the grey channel (alpha ignored).
  * RGB/RGBA/P/...: ITU-R 601-2 luma of R, G, B (PIL `convert('L')`), alpha ignored.
  * 16-bit (I;16, I;16B, I): value * 255 / 65535, rounded (the full 16-bit range; an 8-bit
    image stored as 16-bit, v * 257, comes back exactly).
DICOM (`dicom_to_grayscale_uint8`, pydicom): the first frame of `pixel_array`; the
Modality LUT or Rescale Slope/Intercept (`pydicom.pixels.apply_modality_lut`); the VOI LUT
or the first Window Center/Width when the file has one (`apply_voi_lut`); then scaled to
8 bits over the range those steps map into, as a 16-bit PNG is: the window maps onto
0..255 exactly; without a VOI the stored bit depth's range (after rescale) does, e.g.
0..4095 for 12 bits stored. MONOCHROME1 (bright = air) is inverted so that bone is bright
as in every other image. Compressed transfer syntaxes are decoded by pydicom's plugins
(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg). Colour DICOMs (RGB/YBR) go through
luma as PNGs do.
Array images (`array_to_grayscale_uint8`, e.g. MedMNIST): [H, W], [H, W, 1] or
[H, W, 3] uint8, the last through the same luma as an RGB PNG.

Rule for unusable images (`check_usable`; the same for NIH and for own data): an image
whose grey pixels are all equal (blank: an all-black export, a constant test pattern) or
whose shorter side is under MIN_IMAGE_SIDE px (a 1x1 placeholder) carries nothing to learn
from; it is skipped, counted ('blank', 'too_small') and logged with its file name, as a
file that cannot be decoded is ('corrupt').

Geometry (`resize_square`): aspect kept: the centred square of side min(H, W) is cut out
and resized to S x S with PIL LANCZOS (antialiased) after an exact box-filter `reduce` down
to no less than 2 S (`reducing_gap=2`), which is faster and visually the same.

Decoding in parallel (`ordered_parallel_map`, `decode_chunk`): forked worker processes that
ignore SIGINT (a terminal's Ctrl-C reaches the whole process group; the main process
stops and cleans up), results in submission order, at most `max_in_flight` chunks
pending so memory stays bounded.
"""
import collections
import concurrent.futures
import functools
import hashlib
import io
import itertools
import logging
import multiprocessing
import os
import pathlib
import signal

import numpy as np
from PIL import Image

MIN_IMAGE_SIDE = 8
PIL_EXTENSIONS = ('.png', '.jpg', '.jpeg')
DICOM_EXTENSIONS = ('.dcm', '.dicom')
PROBLEMS = ('corrupt', 'blank', 'too_small')  # why an image is skipped (the counts' keys)


class UnusableImage(ValueError):
  """An image that decodes but is skipped: `problem` is 'blank' or 'too_small'."""

  def __init__(self, problem: str, message: str):
    super().__init__(message)
    self.problem = problem


def to_grayscale_uint8(image: Image.Image) -> np.ndarray:
  """A PIL image of any common mode -> uint8 [H, W] (rules in the module docstring)."""
  mode = image.mode
  if mode == 'L':
    return np.asarray(image, np.uint8)
  if mode == 'LA':
    return np.asarray(image.getchannel('L'), np.uint8)
  if mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I'):
    values = np.asarray(image).astype(np.int64)
    if values.min() < 0 or values.max() > 65535:
      raise ValueError(f'mode {mode} image with values outside [0, 65535] '
                       f'({values.min()}..{values.max()})')
    return ((values * 255 + 32767) // 65535).astype(np.uint8)
  if mode in ('RGB', 'RGBA', 'RGBX', 'P', 'PA', '1', 'CMYK', 'YCbCr'):
    if mode in ('P', 'PA', 'CMYK', 'YCbCr'):
      image = image.convert('RGB')
    return np.asarray(image.convert('L'), np.uint8)  # luma of R, G, B; alpha ignored
  raise ValueError(f'unsupported image mode {mode!r}; accepted: L, LA, RGB, RGBA, P, I;16, I')


def array_to_grayscale_uint8(array: np.ndarray) -> np.ndarray:
  """uint8 [H, W], [H, W, 1] or [H, W, 3] -> uint8 [H, W] (RGB: the luma of a PNG)."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f'image array of dtype {array.dtype}; expected uint8')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    return np.ascontiguousarray(array)
  if array.ndim == 3 and array.shape[-1] == 3:
    return to_grayscale_uint8(Image.fromarray(np.ascontiguousarray(array), mode='RGB'))
  raise ValueError(f'image array of shape {array.shape}; expected [H, W], [H, W, 1] or '
                   f'[H, W, 3]')


def _rescaled_range(dataset) -> tuple:
  """(low, high) that the Modality LUT / rescale maps the stored bit depth onto (pydicom's
  own output range for windowing, `apply_windowing`)."""
  if dataset.get('ModalityLUTSequence'):
    return 0.0, float(2 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
  bits = int(dataset.BitsStored)
  if int(dataset.get('PixelRepresentation', 0)) == 0:
    low, high = 0.0, float(2 ** bits - 1)
  else:
    low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
  slope, intercept = dataset.get('RescaleSlope'), dataset.get('RescaleIntercept')
  if slope is not None and intercept is not None:
    low, high = sorted((low * float(slope) + float(intercept),
                        high * float(slope) + float(intercept)))
  return low, high


def dicom_to_grayscale_uint8(dataset) -> np.ndarray:
  """A pydicom Dataset -> uint8 [H, W] (rules in the module docstring)."""
  from pydicom.pixels import apply_modality_lut  # pylint: disable=g-import-not-at-top
  from pydicom.pixels import apply_voi_lut  # pylint: disable=g-import-not-at-top
  pixels = dataset.pixel_array
  samples = int(dataset.get('SamplesPerPixel', 1))
  if int(dataset.get('NumberOfFrames', 1) or 1) > 1:
    pixels = pixels[0]  # a multi-frame file: its first frame
  if samples == 3:  # colour: pydicom returns RGB; the luma of a colour PNG
    return to_grayscale_uint8(Image.fromarray(np.asarray(pixels, np.uint8), mode='RGB'))
  photometric = str(dataset.get('PhotometricInterpretation', 'MONOCHROME2')).upper()
  if photometric not in ('MONOCHROME1', 'MONOCHROME2'):
    raise ValueError(f'DICOM PhotometricInterpretation {photometric!r}; accepted: '
                     f'MONOCHROME1, MONOCHROME2, RGB')
  values = apply_modality_lut(pixels, dataset)
  has_voi_lut = bool(dataset.get('VOILUTSequence'))
  has_window = (dataset.get('WindowCenter') is not None and
                dataset.get('WindowWidth') is not None)
  if has_voi_lut:  # the LUT's output: 0 .. 2**bits - 1 (its descriptor's third value)
    low, high = 0.0, float(2 ** int(dataset.VOILUTSequence[0].LUTDescriptor[2]) - 1)
  else:
    low, high = _rescaled_range(dataset)
  if has_voi_lut or has_window:
    values = apply_voi_lut(values, dataset, index=0)
  values = np.asarray(values, np.float64)
  if high <= low:
    raise ValueError(f'DICOM pixel range {low}..{high} is empty')
  scaled = np.clip(np.round((values - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)
  if photometric == 'MONOCHROME1':
    scaled = 255 - scaled
  return scaled


def is_dicom(path, head: bytes | None = None) -> bool:
  """A .dcm/.dicom file name, or the 'DICM' marker after the 128-byte preamble (read from
  the file unless `head` is given or the name says PNG/JPEG)."""
  name = str(path).lower()
  if name.endswith(DICOM_EXTENSIONS):
    return True
  if head is None:
    if name.endswith(PIL_EXTENSIONS):
      return False
    try:
      with open(path, 'rb') as f:
        head = f.read(132)
    except OSError:
      return False
  return head[128:132] == b'DICM'


def read_grayscale(path) -> tuple:
  """Decodes a PNG, JPEG or DICOM file.

  Returns:
    (uint8 [H, W], the file's bytes).

  Raises:
    Exception: a file that cannot be decoded (any error of PIL or pydicom).
  """
  with open(path, 'rb') as f:
    data = f.read()
  if is_dicom(path, data[:132]):
    import pydicom  # pylint: disable=g-import-not-at-top  # only when there are DICOMs
    return dicom_to_grayscale_uint8(pydicom.dcmread(io.BytesIO(data))), data
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    return to_grayscale_uint8(image), data


def check_usable(gray: np.ndarray) -> None:
  """Raises UnusableImage for a blank (constant) or too small image (module docstring)."""
  height, width = gray.shape
  if min(height, width) < MIN_IMAGE_SIDE:
    raise UnusableImage('too_small', f'{width}x{height} px, under the {MIN_IMAGE_SIDE} px '
                                     f'accepted')
  if gray.min() == gray.max():
    raise UnusableImage('blank', f'every pixel is {int(gray.min())} (a blank image)')


def resize_square(gray: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 [H, W] -> uint8 [S, S]: centred square crop, antialiased LANCZOS resize."""
  height, width = gray.shape
  side = min(height, width)
  left, top = (width - side) // 2, (height - side) // 2
  if side == image_size and (height, width) == (side, side):
    return gray.copy()
  image = Image.fromarray(gray, mode='L')
  resized = image.resize((image_size, image_size), Image.Resampling.LANCZOS,
                         box=(left, top, left + side, top + side), reducing_gap=2.0)
  return np.asarray(resized, np.uint8)


def to_stored_image(gray: np.ndarray, image_size: int) -> np.ndarray:
  """A usable grey image -> uint8 [S, S, 1] (raises UnusableImage first)."""
  check_usable(gray)
  return resize_square(gray, image_size)[..., None]


def load_image(path, image_size: int) -> np.ndarray:
  """Decodes an image file to uint8 [S, S, 1]. Raises on a corrupt, unsupported, blank or
  too small file (UnusableImage for the last two)."""
  return to_stored_image(read_grayscale(path)[0], image_size)


def decode_chunk(paths, image_size: int, with_digest: bool = False) -> list:
  """Worker: one (image uint8 [S, S, 1] or None, problem or None, message or None,
  SHA-256 of the file or None) per path; problem is one of PROBLEMS."""
  results = []
  for path in paths:
    try:
      gray, data = read_grayscale(path)
      image = to_stored_image(gray, image_size)
      digest = hashlib.sha256(data).hexdigest() if with_digest else None
      results.append((image, None, None, digest))
    except UnusableImage as e:
      results.append((None, e.problem, str(e), None))
    except Exception as e:  # pylint: disable=broad-except  # a corrupt file is skipped
      results.append((None, 'corrupt', f'{type(e).__name__}: {e}', None))
  return results


def ignore_interrupts() -> None:
  """Worker initializer: SIGINT ignored (the main process handles a Ctrl-C)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def ordered_parallel_map(function, chunks, num_workers: int, max_in_flight: int):
  """Like executor.map, but with at most `max_in_flight` chunks pending (bounded memory).

  The workers ignore SIGINT; when the caller stops (Ctrl-C, an error, the generator is
  closed) the pending chunks are cancelled instead of waited for.
  """
  if num_workers <= 1:
    for chunk in chunks:
      yield function(chunk)
    return
  # fork: workers need numpy + PIL (+ pydicom) only, and start in milliseconds.
  pool = concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=multiprocessing.get_context('fork'),
      initializer=ignore_interrupts)
  try:
    pending = collections.deque()
    for chunk in chunks:
      pending.append(pool.submit(function, chunk))
      if len(pending) >= max_in_flight:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def find_image_files(root, *, dicom_without_extension: bool = True) -> tuple:
  """Image files below `root`, recursively (symbolic links followed, hidden files and
  folders skipped), sorted by their path relative to root.

  Returns:
    (paths, number of other files ignored). PNG/JPEG/DICOM by extension (any case); a
    file without an extension counts as DICOM when it has the DICM marker.
  """
  paths, ignored = [], 0
  for folder, subfolders, files in os.walk(root, followlinks=True):
    subfolders[:] = sorted(name for name in subfolders if not name.startswith('.'))
    for name in sorted(files):
      if name.startswith('.'):
        continue
      path = pathlib.Path(folder) / name
      lower = name.lower()
      if lower.endswith(PIL_EXTENSIONS + DICOM_EXTENSIONS) or (
          dicom_without_extension and '.' not in name and is_dicom(path)):
        paths.append(path)
      else:
        ignored += 1
  return sorted(paths, key=lambda p: p.relative_to(root).as_posix()), ignored


def decode_files(paths, image_size: int, *, num_workers: int, with_digest: bool = False,
                 **report):
  """Decodes image files in parallel, in order, with progress lines and a summary.

  Args:
    paths: the files, in the order they are written.
    image_size: S of the stored uint8 [S, S, 1].
    num_workers: decode processes (1 = in this process).
    with_digest: also compute each file's SHA-256 (to find the same image twice).
    **report: counts, desc, log_name, extra_summary (see `_counted`).

  Yields:
    (position in paths, image uint8 [S, S, 1], SHA-256 hex or None) for each usable file.
  """
  chunk_size = 16
  chunks = [paths[start:start + chunk_size] for start in range(0, len(paths), chunk_size)]
  results = ordered_parallel_map(
      functools.partial(decode_chunk, image_size=image_size, with_digest=with_digest),
      chunks, num_workers, max_in_flight=4 * num_workers)
  yield from _counted(itertools.chain.from_iterable(results), paths, **report)


def decode_arrays(arrays, names, image_size: int, **report):
  """`decode_files` for images given as arrays (e.g. MedMNIST rows), in this process.

  Args:
    arrays: iterator of uint8 [H, W], [H, W, 1] or [H, W, 3], one per name.
    names: what the log calls each image.
  """
  def decode(array):
    try:
      return to_stored_image(array_to_grayscale_uint8(array), image_size), None, None, None
    except UnusableImage as e:
      return None, e.problem, str(e), None
    except ValueError as e:
      return None, 'corrupt', str(e), None
  yield from _counted(map(decode, arrays), names, **report)


def _counted(results, names, *, counts, desc: str, log_name: str, extra_summary: str = ''):
  """Counts and logs the skipped images of `results`, with progress lines and a summary.

  Args:
    results: (image or None, problem, message, digest) per image, in order.
    names: the images' files or names (for the log), same order.
    counts: dicts (e.g. the split's and the total's) in which each skipped image adds 1
      to its problem ('corrupt', 'blank', 'too_small'); the caller counts 'written'.
    desc: progress prefix, e.g. 'prepare folder/xrays/64 train'.
    log_name: prefix of the warning logged for each skipped image.
    extra_summary: appended to the summary line (e.g. ', 3 CSV rows without an image').

  Yields:
    (position, image, digest) of each usable image.
  """
  from simclr_jax.data import tfds_features  # pylint: disable=g-import-not-at-top
  from simclr_jax.runtime.progress import Progress  # pylint: disable=g-import-not-at-top
  progress = Progress(len(names), desc=desc, unit='image',
                      every=tfds_features.progress_every(len(names)))
  for position, (image, problem, message, digest) in enumerate(results):
    progress.update(1, **{'images/s': int((position + 1) / max(progress.elapsed(), 1e-9))})
    if image is None:
      for count in counts:
        count[problem] = count.get(problem, 0) + 1
      logging.warning('%s: skipping %s image %s (%s)', log_name, problem.replace('_', ' '),
                      names[position], message)
      continue
    yield position, image, digest
  progress.close(skipped_summary(counts[0], len(names), progress.elapsed(), extra_summary))


def skipped_summary(count: dict, num_files: int, seconds: float, extra: str = '') -> str:
  """'N images written, M corrupt[, B blank, T too small] (skipped)..., in S s (R images/s)'."""
  unusable = (f", {count.get('blank', 0)} blank, {count.get('too_small', 0)} too small"
              if count.get('blank') or count.get('too_small') else '')
  return (f"{count.get('written', 0)} images written, {count.get('corrupt', 0)} corrupt"
          f"{unusable} (skipped){extra}, in {seconds:.1f} s "
          f"({num_files / max(seconds, 1e-9):.0f} images/s)")
