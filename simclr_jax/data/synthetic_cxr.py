"""`synthetic_cxr`: procedural chest-radiograph phantoms (the built-in default dataset).

A frontal (PA) chest radiograph is drawn with numpy from a small generative model, so
the CPU demo and the tests need no download. Display convention as in a real CXR:
bright = attenuating (bone, soft tissue, fluid), dark = air (lungs, outside the body).

Generative model, per example (all randomness from `numpy.random.default_rng` seeded
by (split, index): the same phantom on every run and, but for the pixel noise, at every
image size):

Patient (nuisance, class-independent):
  * body: soft-tissue ellipse, half-width scale `body_scale` ~ U(0.84, 1.06) of the
    field, centre shifted by U(-0.08, 0.08) in x and y, in-plane rotation
    U(-8, 8) degrees; lung height ~ U(0.92, 1.08) of the mean.
  * lungs: two dark ellipses cut below by diaphragm domes (the lateral corners are the
    costophrenic angles); vascular "markings" inside them (ridges of smooth random
    noise, brightest near the hila).
  * mediastinum (bright central band), spine with vertebral bodies, heart (bright
    ellipse, normal cardiothoracic ratio U(0.40, 0.48)), clavicles, 9 pairs of ribs
    (curved bright bands), abdomen below the domes.
  * exposure: an automatic-exposure-control step rescales every image to a per-patient
    target mean U(0.30, 0.62) and contrast U(0.13, 0.25) *before* any class-dependent
    statistic can leak into them, then a display gamma exp(U(log 0.65, log 1.5)),
    Gaussian detector noise sigma U(0.01, 0.05) and a slight blur on half the images.
    So the mean intensity of an image says (almost) nothing about its class.

Class (the signal: shape, size and location of structures; all survive 32-64 px):
  0 normal        as above.
  1 cardiomegaly  heart width enlarged to cardiothoracic ratio U(0.62, 0.72) and its
                  height x1.25: a large bright blob over both lower lung fields.
  2 effusion      fluid (soft-tissue brightness, no markings) replaces the air at the
                  base of one lung up to U(0.35, 0.55) of its height; the surface rises
                  towards the chest wall (meniscus) and the costophrenic angle is gone.
  3 mass          a round, slightly lobulated opacity of radius U(0.11, 0.16) (field
                  half-width = 1; 3.5-5 px at 64 px) in the mid zone of one lung.
  4 pneumothorax  one lung collapsed towards the hilum to U(0.40, 0.62) of its width: the
                  space between the pleural line (thin bright edge) and the chest wall is
                  darker than lung and has no vascular markings; the collapsed lung is
                  denser.
Why this suits SimCLR: the nuisances (exposure, gamma, noise, blur, position, scale,
rotation, left/right side of the finding) are what crop / flip / brightness / blur
augmentations vary, while the class is a large structure those augmentations keep.
A nearest-centroid or logistic classifier on the mean intensity is at chance; a linear
model on the pixels is not (tests/test_data.py).

Builder configs by image size: 'synthetic_cxr/16', /32, /64 (default), /96, /128, /224,
/256 (the same patients at every size). Split sizes: DEFAULT_SPLIT_SIZES (train 4000,
validation 500, test 1000), or `split_sizes=` / the prepare flags; recorded in
`info.metadata['prepare_options']` when prepared.
Labels are balanced (`label = index % 5`); every example is its own patient
(`patient_id` unique over all splits). Features: `image` uint8 [S, S, 1]
(`tfds.features.Tensor`, no TensorFlow needed), `label` ClassLabel, `patient_id` int64.
Build: `python -m simclr_jax.prepare synthetic_cxr --data_dir DIR --image_size 64`.
"""
import dataclasses
import functools
import inspect
import os
import zlib

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from simclr_jax.data import images
from simclr_jax.data import tfds_features
from simclr_jax.runtime.progress import Progress

CLASS_NAMES = ('normal', 'cardiomegaly', 'effusion', 'mass', 'pneumothorax')
IMAGE_SIZES = (16, 32, 64, 96, 128, 224, 256)
# Default split sizes: the CPU demo size. Override with `split_sizes=` (see SyntheticCxr).
DEFAULT_SPLIT_SIZES = {'train': 4000, 'validation': 500, 'test': 1000}
# patient_id = split offset + index: unique over all splits.
_PATIENT_ID_OFFSET = {'train': 0, 'validation': 10_000_000, 'test': 20_000_000}


def _smoothstep_inside(signed_distance, edge_width):
  """Soft mask: 1 inside (signed_distance < 0), 0 outside, linear ramp of `edge_width`."""
  return np.clip(0.5 - signed_distance / edge_width, 0.0, 1.0)


def _ellipse_distance(u, v, centre_u, centre_v, half_width, half_height):
  """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
  radius = np.sqrt(((u - centre_u) / half_width) ** 2 + ((v - centre_v) / half_height) ** 2)
  return (radius - 1.0) * min(half_width, half_height)


def _smooth_noise(rng, image_size, cells):
  """Band-limited noise [S, S] in about [-1, 1]: a `cells` x `cells` grid, bilinear upsampled."""
  coarse = rng.standard_normal((cells + 1, cells + 1))
  positions = np.linspace(0, cells, image_size)
  lower = np.minimum(positions.astype(int), cells - 1)
  fraction = positions - lower
  interpolation = np.zeros((image_size, cells + 1))  # [S, cells + 1]
  interpolation[np.arange(image_size), lower] = 1 - fraction
  interpolation[np.arange(image_size), lower + 1] = fraction
  return interpolation @ coarse @ interpolation.T / 1.5


def _box_blur(image):
  """3x3 binomial blur with edge padding."""
  padded = np.pad(image, 1, mode='edge')
  horizontal = 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]
  return 0.25 * horizontal[:-2] + 0.5 * horizontal[1:-1] + 0.25 * horizontal[2:]


def example_rng(split: str, index: int) -> np.random.Generator:
  """The generator of example `index` of `split`; independent of the image size."""
  return np.random.default_rng([zlib.crc32(split.encode()), index])


def render_phantom(rng: np.random.Generator, label: int, image_size: int) -> np.ndarray:
  """Draws one phantom radiograph.

  Args:
    rng: source of all randomness of this example.
    label: class index into CLASS_NAMES.
    image_size: output side length S in pixels.

  Returns:
    uint8 [S, S, 1] image.
  """
  if not 0 <= label < len(CLASS_NAMES):
    raise ValueError(f'label must be in [0, {len(CLASS_NAMES)}), got {label}')
  size = image_size
  # Scalars from one stream, pixel noise from another: same phantom at every size.
  param_rng, noise_rng = rng.spawn(2)
  edge = 3.0 / size  # antialiasing ramp: ~1.5 px (the field spans [-1, 1])

  # --- patient geometry (nuisance) ---
  body_scale = param_rng.uniform(0.84, 1.06)
  shift_x, shift_y = param_rng.uniform(-0.08, 0.08, size=2)
  angle = np.deg2rad(param_rng.uniform(-8, 8))
  lung_height_scale = param_rng.uniform(0.92, 1.08)
  # Pixel grid -> patient coordinates (u right, v down), unit = body_scale.
  grid = np.linspace(-1.0, 1.0, size)
  x, y = np.meshgrid(grid, grid)  # [S, S] each, y down
  x, y = x - shift_x, y - shift_y
  u = (np.cos(angle) * x + np.sin(angle) * y) / body_scale
  v = (-np.sin(angle) * x + np.cos(angle) * y) / body_scale
  edge_patient = edge / body_scale

  # --- anatomy ---
  body = _smoothstep_inside(_ellipse_distance(u, v, 0.0, 0.15, 0.86, 1.25), edge_patient)
  lung_centre_u, lung_centre_v = 0.36, -0.12
  lung_half_width, lung_half_height = 0.27, 0.55 * lung_height_scale
  dome_top = lung_centre_v + 0.72 * lung_half_height  # diaphragm height at the dome apex
  side_of = {'right': -1.0, 'left': 1.0}  # image left = patient's right
  lungs = {}
  for side, sign in side_of.items():
    ellipse = _ellipse_distance(
        u, v, sign * lung_centre_u, lung_centre_v, lung_half_width, lung_half_height)
    dome_height = dome_top + (0.05 if side == 'left' else 0.0)
    dome = dome_height + 1.3 * (u - sign * 0.30) ** 2  # v below which the abdomen starts
    lungs[side] = dict(
        ellipse=ellipse, dome=dome, sign=sign,
        mask=_smoothstep_inside(np.maximum(ellipse, v - dome), edge_patient))
  lung_mask = lungs['right']['mask'] + lungs['left']['mask']

  cardio_ratio = param_rng.uniform(0.40, 0.48)
  heart_half_height = 0.25
  if label == 1:  # cardiomegaly
    cardio_ratio = param_rng.uniform(0.62, 0.72)
    heart_half_height *= 1.25
  thorax_half_width = lung_centre_u + lung_half_width
  heart_half_width = cardio_ratio * thorax_half_width
  heart = _smoothstep_inside(
      _ellipse_distance(u, v, 0.12, dome_top - 0.72 * heart_half_height,
                        heart_half_width, heart_half_height), edge_patient)
  mediastinum = _smoothstep_inside(np.abs(u) - 0.11, edge_patient) * (v > -0.85)
  spine = _smoothstep_inside(np.abs(u) - 0.07, edge_patient)
  vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * v / 0.14)  # vertebral bodies / discs

  markings_noise = _smooth_noise(noise_rng, size, cells=12)
  markings = np.exp(-(markings_noise / 0.18) ** 2)  # ridges: curvy lines
  hilum_distance = np.minimum(np.hypot(u + 0.18, v - 0.0), np.hypot(u - 0.18, v - 0.0))
  markings *= np.clip(1.2 - hilum_distance / 0.55, 0.2, 1.0)  # denser near the hila

  ribs = np.zeros_like(u)
  rib_thickness = 0.028
  for rib in range(9):
    rib_v = -0.60 + rib * 0.105 * lung_height_scale
    for sign in (-1.0, 1.0):
      curve = rib_v + 0.55 * (np.abs(u) - 0.15) ** 2 - 0.08 * (np.abs(u) - 0.15)
      on_side = (sign * u > 0.08) & (sign * u < 0.72)
      ribs += on_side * _smoothstep_inside(np.abs(v - curve) - rib_thickness, edge_patient)
  ribs = np.minimum(ribs, 1.0)
  clavicles = _smoothstep_inside(
      np.abs(v - (-0.66 + 0.25 * (np.abs(u) - 0.35) ** 2)) - 0.03, edge_patient) * (
          np.abs(u) < 0.62) * (np.abs(u) > 0.1)

  # --- class findings: what replaces the air of the lung fields ---
  air = lung_mask.copy()  # 1 = fully aerated lung
  marking_mask = lung_mask.copy()
  dark_air = np.zeros_like(u)  # pneumothorax space: air without lung tissue
  pleural_line = np.zeros_like(u)
  affected = param_rng.choice(['right', 'left'])
  lung = lungs[affected]
  if label == 2:  # effusion: fluid at one base, meniscus rising laterally
    fill = param_rng.uniform(0.35, 0.55)
    level = dome_top - fill * 2 * lung_half_height * 0.72
    lateral = lung['sign'] * u - lung_centre_u  # > 0 towards the chest wall
    surface = level + 0.35 * lung_half_height * (
        0.4 - np.clip(lateral / lung_half_width, -1, 1))
    fluid = lung['mask'] * _smoothstep_inside(surface - v, edge_patient)
    air = air * (1 - fluid)
    marking_mask = marking_mask * (1 - fluid)
  elif label == 3:  # mass in the mid zone of one lung
    radius = param_rng.uniform(0.11, 0.16)
    centre_u = lung['sign'] * (lung_centre_u + param_rng.uniform(-0.07, 0.07))
    centre_v = lung_centre_v + param_rng.uniform(-0.3, 0.15) * lung_half_height
    theta = np.arctan2(v - centre_v, u - centre_u)
    lobulation = 1 + 0.12 * np.sin(3 * theta + param_rng.uniform(0, 2 * np.pi))
    distance = np.hypot(u - centre_u, v - centre_v) - radius * lobulation
    mass = _smoothstep_inside(distance, edge_patient)
    air = air * (1 - mass)
    marking_mask = marking_mask * (1 - mass)
  elif label == 4:  # pneumothorax: lung collapsed towards the hilum
    collapse = param_rng.uniform(0.40, 0.62)
    collapsed_half_width = lung_half_width * collapse
    collapsed_centre_u = lung['sign'] * (lung_centre_u - lung_half_width + collapsed_half_width)
    collapsed_ellipse = _ellipse_distance(
        u, v, collapsed_centre_u, lung_centre_v + 0.1 * lung_half_height,
        collapsed_half_width, lung_half_height * (0.55 + 0.4 * collapse))
    collapsed = _smoothstep_inside(
        np.maximum(collapsed_ellipse, v - lung['dome']), edge_patient)
    dark_air = lung['mask'] * (1 - collapsed)
    pleural_line = lung['mask'] * _smoothstep_inside(
        np.abs(collapsed_ellipse) - 0.012, edge_patient)
    air = air - 0.6 * lung['mask'] * collapsed  # collapsed lung is denser
    marking_mask = marking_mask - dark_air

  # --- compose (0 = black) ---
  image = 0.04 + 0.50 * body  # air outside, soft tissue inside
  image += 0.06 * body * (1 - lung_mask) * (v > dome_top - 0.05)  # abdomen
  image -= 0.34 * air
  image -= 0.18 * dark_air
  image += 0.10 * markings * np.clip(marking_mask, 0, 1)
  image += 0.16 * pleural_line
  image = image * (1 - mediastinum) + (0.66 + 0.06 * spine * vertebrae) * mediastinum * body
  image = image * (1 - heart) + 0.70 * heart * body
  image += body * (0.11 * ribs * (0.6 + 0.4 * lung_mask) + 0.10 * clavicles)

  # --- exposure (nuisance): automatic exposure control, gamma, noise, blur ---
  target_mean = param_rng.uniform(0.30, 0.62)
  target_contrast = param_rng.uniform(0.13, 0.25)
  image = (image - image.mean()) / (image.std() + 1e-6) * target_contrast + target_mean
  gamma = np.exp(param_rng.uniform(np.log(0.65), np.log(1.5)))
  image = np.clip(image, 0.0, 1.0) ** gamma
  image += param_rng.uniform(0.01, 0.05) * noise_rng.standard_normal(image.shape)
  if param_rng.random() < 0.5:
    image = _box_blur(image)
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)[..., None]


def make_example(split: str, index: int, image_size: int) -> dict:
  """The example `index` of `split` as a TFDS feature dict."""
  label = index % len(CLASS_NAMES)
  image = render_phantom(example_rng(split, index), label, image_size)
  return {'image': image, 'label': label,
          'patient_id': _PATIENT_ID_OFFSET.get(split, 30_000_000) + index}


def _make_examples(split, indices, image_size):
  return [make_example(split, index, image_size) for index in indices]


@dataclasses.dataclass
class SyntheticCxrConfig(tfds.core.BuilderConfig):
  image_size: int = 64


class SyntheticCxr(tfds.core.GeneratorBasedBuilder):
  """Procedural chest-radiograph phantoms; see the module docstring."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First release.', '1.1.0': 'image stored as raw bytes.'}
  BUILDER_CONFIGS = [
      SyntheticCxrConfig(name=str(size), image_size=size,
                         description=f'{size}x{size} uint8 phantoms')
      for size in IMAGE_SIZES]
  DEFAULT_BUILDER_CONFIG_NAME = '64'

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default probes importlib_resources, which is not a dependency here.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, split_sizes: dict | None = None, num_workers: int | None = None,
               **kwargs):
    """Args: split_sizes: {split: num_examples}, default DEFAULT_SPLIT_SIZES (only used
    when generating; a prepared data_dir keeps its sizes). num_workers: generator
    processes (default: all cores; 1 = in this process)."""
    kwargs.setdefault('file_format', 'array_record')  # random access, no TensorFlow
    super().__init__(**kwargs)
    self._split_sizes = dict(DEFAULT_SPLIT_SIZES if split_sizes is None else split_sizes)
    for split, count in self._split_sizes.items():
      if int(count) <= 0:
        raise ValueError(f'split_sizes[{split!r}] must be > 0, got {count}')
    self._num_workers = num_workers or os.cpu_count() or 1

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds_features.grey_image(size),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
            'patient_id': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(),
    )

  def prepare_options(self) -> dict:
    """The options that decide the content (recorded in info.metadata when prepared)."""
    return {'split_sizes': {split: int(count) for split, count in self._split_sizes.items()}}

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    tfds_features.allow_large_splits_without_tensorflow()  # splits > 1 GB (NIH at 256 px)
    self.info.metadata['prepare_options'] = self.prepare_options()
    self.info.metadata['patients_in_several_splits'] = 0  # every phantom its own patient
    return {split: self._generate_examples(split, int(count))
            for split, count in self._split_sizes.items()}

  def _generate_examples(self, split, num_examples):
    size = self.builder_config.image_size
    chunk = 128
    chunks = [range(start, min(start + chunk, num_examples))
              for start in range(0, num_examples, chunk)]
    progress = Progress(num_examples, desc=f'prepare {self.name}/{self.builder_config.name} '
                        f'{split}', unit='image', every=tfds_features.progress_every(num_examples))
    if self._num_workers <= 1 or num_examples < 512:  # small jobs: in this process
      results = (_make_examples(split, indices, size) for indices in chunks)
    else:  # fork: the workers need only numpy; they ignore Ctrl-C, which stops this process
      results = images.ordered_parallel_map(
          functools.partial(_make_examples, split, image_size=size), chunks,
          self._num_workers, max_in_flight=4 * self._num_workers)
    yield from self._yield_with_progress(chunks, results, progress)
    seconds = progress.elapsed()
    progress.close(f'generated {num_examples} images in {seconds:.1f} s '
                   f'({num_examples / max(seconds, 1e-9):.0f} images/s)')

  @staticmethod
  def _yield_with_progress(chunks, results, progress):
    for indices, examples in zip(chunks, results):
      for index, example in zip(indices, examples):
        yield index, example
      done = progress.count + len(indices)
      progress.update(len(indices), **{'images/s': int(done / max(progress.elapsed(), 1e-9))})
