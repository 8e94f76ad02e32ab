"""`medmnist/NAME/SIZE`: a MedMNIST / MedMNIST+ `.npz` file (ChestMNIST, PneumoniaMNIST...).

  python -m simclr_jax.prepare medmnist --npz chestmnist_224.npz --name chestmnist
      [--image_size N] [--label_names A,B,...]

The file holds `train_images`, `val_images`, `test_images` (uint8 [N, H, W] grey or
[N, H, W, 3] RGB, any size: 28 px MedMNIST, 64/128/224 px MedMNIST+) and `train_labels`,
`val_labels`, `test_labels`. Their official splits are kept (val -> validation).
Labels: [N] or [N, 1] class ids -> single-label; [N, C] of 0/1 with C >= 2 ->
multi-label. Names: --label_names, else by the file name: ChestMNIST's 14 columns are
NIH's findings in NIH's order (labels.FINDINGS), PneumoniaMNIST's classes are normal /
pneumonia; other files get 'class 0', 'class 1', ... ('label 0', ... for multi-label).
The default --image_size is the file's own. RGB images go through the luma of an RGB PNG.
MedMNIST publishes no patient ids: every image is its own patient (ids unique over the
three splits); the splits are the published ones (ChestMNIST's follow NIH's official
patient-wise split). The images are read from the zip member in blocks of rows, so a
224 px file is never held in memory whole; identical images in the arrays are not
refused (they are published that way). The record, counts and names are in own_data.py.
"""
import pathlib
import zipfile

import numpy as np

from simclr_jax.data import own_data
from simclr_jax.data.labels import FINDINGS
from simclr_jax.data.tfds_features import file_sha256

SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}
ARRAYS = tuple(f'{prefix}_{kind}' for prefix in SPLITS for kind in ('images', 'labels'))
KNOWN_NAMES = {  # file-name stem -> label names (what medmnist's INFO lists)
    'chestmnist': FINDINGS,
    'pneumoniamnist': ('normal', 'pneumonia'),
}
_ROWS_PER_READ = 256


def _header(archive: zipfile.ZipFile, key: str) -> tuple:
  """(shape, dtype) of array `key` from its .npy header, without reading the data."""
  with archive.open(f'{key}.npy') as member:
    version = np.lib.format.read_magic(member)
    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = reader(member)
  if fortran_order:
    raise own_data.BadInput(f'array {key} is stored in Fortran order; save it C-ordered')
  return shape, dtype


def read_rows(npz_path, key: str):
  """The rows of array `key` one by one, read from the zip member in blocks."""
  with zipfile.ZipFile(npz_path) as archive, archive.open(f'{key}.npy') as member:
    version = np.lib.format.read_magic(member)
    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, _, dtype = reader(member)
    row_shape = shape[1:]
    row_bytes = int(np.prod(row_shape)) * dtype.itemsize
    for start in range(0, shape[0], _ROWS_PER_READ):
      count = min(_ROWS_PER_READ, shape[0] - start)
      block = np.frombuffer(member.read(count * row_bytes), dtype).reshape((count,) + row_shape)
      yield from block


def native_size(npz_path) -> int:
  """The side of the file's images (the shorter one): the default --image_size."""
  return min(_image_shapes(pathlib.Path(npz_path).expanduser())['train_images'][1:3])


def _image_shapes(npz_path: pathlib.Path) -> dict:
  """{array: shape} of the six MedMNIST arrays, checked (one line naming the problem)."""
  if not npz_path.is_file():
    raise FileNotFoundError(f'--npz {npz_path} does not exist')
  try:
    archive = zipfile.ZipFile(npz_path)
  except zipfile.BadZipFile:
    raise own_data.BadInput(f'--npz {npz_path} is not an .npz file (numpy.savez)') from None
  with archive:
    present = sorted(name[:-4] for name in archive.namelist() if name.endswith('.npy'))
    missing = [name for name in ARRAYS if name not in present]
    if missing:
      raise own_data.BadInput(f'{npz_path} has no {", ".join(missing)}: a MedMNIST file holds '
                              f'{", ".join(ARRAYS)}; this one holds {", ".join(present) or "nothing"}')
    shapes = {}
    for key in ARRAYS:
      shape, dtype = _header(archive, key)
      if key.endswith('_images') and not (
          dtype == np.uint8 and (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3)))):
        raise own_data.BadInput(
            f'{npz_path}: {key} is {dtype} {list(shape)}, not images (expected uint8 '
            f'[N, H, W] or [N, H, W, 3])')
      shapes[key] = shape
  return shapes


def _label_names(npz_path: pathlib.Path, label_names, num_classes: int, multi_label: bool):
  if label_names:
    names = tuple(name.strip() for name in label_names)
  else:
    stem = npz_path.name.split('.')[0].split('_')[0].lower()
    names = KNOWN_NAMES.get(stem)
    if names is None or len(names) != num_classes:
      names = tuple(f"{'label' if multi_label else 'class'} {j}" for j in range(num_classes))
  if len(names) != num_classes or len(set(names)) != len(names) or not all(names):
    raise own_data.BadInput(f'--label_names {",".join(names)}: {npz_path} has {num_classes} '
                            f'{"labels" if multi_label else "classes"}; give that many '
                            f'distinct names')
  return names


def plan(npz_path, *, name: str, label_names=None) -> own_data.Plan:
  """Reads the labels (not the images) and checks the arrays.

  Raises:
    FileNotFoundError: the file does not exist.
    own_data.BadInput: not an npz, no MedMNIST arrays, arrays that are not images, labels
      that do not fit (one line naming the array).
  """
  own_data.check_name(name)
  npz_path = pathlib.Path(npz_path).expanduser()
  shapes = _image_shapes(npz_path)
  with np.load(npz_path) as arrays:
    labels = {prefix: np.asarray(arrays[f'{prefix}_labels']) for prefix in SPLITS}
  for prefix, values in labels.items():
    if values.ndim == 1:
      labels[prefix] = values = values[:, None]
    if values.ndim != 2 or values.shape[0] != shapes[f'{prefix}_images'][0]:
      raise own_data.BadInput(
          f'{npz_path}: {prefix}_labels has shape {list(values.shape)} for '
          f'{shapes[f"{prefix}_images"][0]} images; expected [N], [N, 1] or [N, C]')
    if not np.issubdtype(values.dtype, np.integer) or (values.size and values.min() < 0):
      raise own_data.BadInput(f'{npz_path}: {prefix}_labels must be non-negative integers')
  if not any(len(values) for values in labels.values()):
    raise own_data.BadInput(f'{npz_path} holds no images (its arrays are empty)')
  widths = {values.shape[1] for values in labels.values()}
  if len(widths) != 1:
    raise own_data.BadInput(f'{npz_path}: the label arrays have different widths {widths}')
  multi_label = widths.pop() >= 2
  if multi_label:
    if any(values.size and values.max() > 1 for values in labels.values()):
      raise own_data.BadInput(f'{npz_path}: multi-label arrays must hold 0/1 only')
    num_classes = labels['train'].shape[1]
  else:
    num_classes = int(max(values.max() for values in labels.values() if values.size)) + 1
  names = _label_names(npz_path, label_names, num_classes, multi_label)
  examples, offset = [], 0
  for prefix, split in SPLITS.items():
    for index, row in enumerate(labels[prefix]):
      target = row.astype(np.uint8) if multi_label else int(row[0])
      examples.append((split, own_data.Example(
          key=f'{prefix}/{index}', source=index, patient_id=offset + index, target=target)))
    offset += len(labels[prefix])
  options = {'npz': str(npz_path.absolute()), 'npz_sha256': file_sha256(npz_path),
             'label_names': list(names), 'patients': 'one per image', 'splits': 'npz arrays'}
  prefixes = {split: prefix for prefix, split in SPLITS.items()}
  return own_data.make_plan(
      family='medmnist', name=name, labelling='multi-label' if multi_label else 'single-label',
      names=names, examples=examples, options=options, source=f'MedMNIST file {npz_path}',
      read_arrays=lambda split: read_rows(npz_path, f'{prefixes[split]}_images'),
      check_duplicates=False)
