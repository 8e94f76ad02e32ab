"""`synthetic_cxr`: procedural chest-radiograph phantoms (the built-in default dataset).

A frontal (PA) chest radiograph is drawn with numpy from a small generative model, so
the CPU demo and the tests need no download. Display convention as in a real CXR:
bright = attenuating (bone, soft tissue, fluid), dark = air (lungs, outside the body).

Patients and follow-up films. Like a real collection, a split holds synthetic patients
with 1-4 films each, so patient-aware training and the patient-shortcut check have
something to find. The films of one patient show the same chest (its anatomy is drawn
once per patient) under different exposure and positioning (drawn per film):

Patient (nuisance, class-independent; one draw per patient):
  * body: soft-tissue ellipse, half-width scale `body_scale` ~ U(0.84, 1.06) of the
    field, centre shifted by U(-0.08, 0.08) in x and y, in-plane rotation
    U(-6, 6) degrees; lung height ~ U(0.92, 1.08) of the mean.
  * lungs: two dark ellipses cut below by diaphragm domes (the lateral corners are the
    costophrenic angles); vascular "markings" inside them (ridges of smooth random
    noise fixed to the patient's anatomy, brightest near the hila).
  * mediastinum (bright central band), spine with vertebral bodies, heart (bright
    ellipse, normal cardiothoracic ratio U(0.40, 0.48)), clavicles, 9 pairs of ribs
    (curved bright bands; per-patient offset U(-0.03, 0.03) and curvature
    U(0.45, 0.65)), abdomen below the domes.
Film (nuisance; one draw per image):
  * positioning: the patient's rotation + U(-2.5, 2.5) degrees and shift +
    U(-0.025, 0.025) in x and y.
  * exposure: an automatic-exposure-control step rescales every image to a target mean
    U(0.30, 0.62) and contrast U(0.13, 0.25) *before* any class-dependent statistic can
    leak into them, then a display gamma exp(U(log 0.65, log 1.5)), Gaussian detector
    noise sigma U(0.01, 0.05) and a slight blur on half the images. So the mean
    intensity of an image says (almost) nothing about its class.

Class (the signal: shape, size and location of structures; all survive 32-64 px). Its
geometry is drawn once per (patient, finding), so a finding seen on two films of one
patient is the same lesion:
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

Who has which film (`film_of`): the images of a split are made in groups of 5 patients,
one per class, each with the same number k ~ U{1, 2, 3, 4} of films, stored one patient
after the other (group g's films follow group g - 1's). A patient's films usually share
its finding: at each follow-up visit (films 2..k) of a group, with probability 1/2 two
of its patients exchange findings for that visit (a follow-up differs from the patient's
finding with probability 1/5), so every complete group holds exactly k films of every
class: the classes stay balanced (within 4 films when a split ends inside a group).
Patient ids are `split offset + patient number`: unique over all splits, so the splits
are patient-wise by construction (`patients_in_several_splits` = 0 in the metadata,
which also counts the patients of every split in `prepare_counts`).

All randomness comes from `numpy.random.default_rng` streams keyed by the split and the
group, patient, (patient, finding) or image index: the same phantoms on every run and,
but for the pixel noise, at every image size; the first N images of a split do not
depend on the split's size.

Builder configs by image size: 'synthetic_cxr/16', /32, /64 (default), /96, /128, /224,
/256 (the same patients at every size). Split sizes: DEFAULT_SPLIT_SIZES (train 4000,
validation 500, test 1000), or `split_sizes=` / the prepare flags; recorded in
`info.metadata['prepare_options']` when prepared.
Features: `image` uint8 [S, S, 1] (`tfds.features.Tensor`, no TensorFlow needed),
`label` ClassLabel, `patient_id` int64.
Build: `python -m simclr_jax.prepare synthetic_cxr --data_dir DIR --image_size 64`.
"""
import bisect
import dataclasses
import functools
import inspect
import os
import typing
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
# patient_id = split offset + patient number: unique over all splits.
_PATIENT_ID_OFFSET = {'train': 0, 'validation': 10_000_000, 'test': 20_000_000}
MAX_FILMS_PER_PATIENT = 4
FINDING_EXCHANGE_PROBABILITY = 0.5  # per follow-up visit of a group of patients
# Keys of the random streams (the first word after the split's CRC).
_GROUP_STREAM, _PATIENT_STREAM, _FINDING_STREAM, _FILM_STREAM = 1, 2, 3, 4
_MARKINGS_CELLS = 15  # vascular markings: a 16 x 16 grid of noise over [-1.3, 1.3]^2


def _smoothstep_inside(signed_distance, edge_width):
  """Soft mask: 1 inside (signed_distance < 0), 0 outside, linear ramp of `edge_width`."""
  return np.clip(0.5 - signed_distance / edge_width, 0.0, 1.0)


def _ellipse_distance(u, v, centre_u, centre_v, half_width, half_height):
  """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
  radius = np.sqrt(((u - centre_u) / half_width) ** 2 + ((v - centre_v) / half_height) ** 2)
  return (radius - 1.0) * min(half_width, half_height)


def _smooth_noise_at(coarse, u, v, extent=1.3):
  """Band-limited noise at patient coordinates (u, v), in about [-1, 1]: the grid
  `coarse` [c + 1, c + 1] spans [-extent, extent]^2, bilinearly interpolated (so the
  pattern moves with the patient's anatomy)."""
  cells = coarse.shape[0] - 1
  grid_u = np.clip((u + extent) / (2 * extent) * cells, 0, cells - 1e-9)
  grid_v = np.clip((v + extent) / (2 * extent) * cells, 0, cells - 1e-9)
  column, row = grid_u.astype(int), grid_v.astype(int)
  fu, fv = grid_u - column, grid_v - row
  top = coarse[row, column] * (1 - fu) + coarse[row, column + 1] * fu
  bottom = coarse[row + 1, column] * (1 - fu) + coarse[row + 1, column + 1] * fu
  return (top * (1 - fv) + bottom * fv) / 1.5


def _box_blur(image):
  """3x3 binomial blur with edge padding."""
  padded = np.pad(image, 1, mode='edge')
  horizontal = 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]
  return 0.25 * horizontal[:-2] + 0.5 * horizontal[1:-1] + 0.25 * horizontal[2:]


def _stream(split: str, *keys: int) -> np.random.Generator:
  """The random stream of `split` and `keys`; independent of the image size."""
  return np.random.default_rng([zlib.crc32(split.encode()), *keys])


# ------------------------------------------------------------------- who has which film

@functools.lru_cache(maxsize=None)
def _group(split: str, group: int) -> np.ndarray:
  """Findings [5 patients, k films] of group `group` of `split` (see the module docstring)."""
  rng = _stream(split, _GROUP_STREAM, group)
  films = int(rng.integers(1, MAX_FILMS_PER_PATIENT + 1))
  findings = np.repeat(rng.permutation(len(CLASS_NAMES))[:, None], films, axis=1)
  for visit in range(1, films):
    if rng.random() < FINDING_EXCHANGE_PROBABILITY:
      a, b = rng.choice(len(CLASS_NAMES), size=2, replace=False)
      findings[[a, b], visit] = findings[[b, a], visit]
  return findings


_GROUP_STARTS: dict = {}  # split -> first image index of groups 0, 1, ... (grown on demand)


class Film(typing.NamedTuple):
  patient: int  # patient number within the split (patient_id = split offset + patient)
  visit: int    # 0 = the patient's first film
  label: int


def film_of(split: str, index: int) -> Film:
  """Which patient, visit and finding image `index` of `split` is."""
  if index < 0:
    raise ValueError(f'image index must be >= 0, got {index}')
  starts = _GROUP_STARTS.setdefault(split, [0])
  while starts[-1] <= index:
    starts.append(starts[-1] + _group(split, len(starts) - 1).size)
  group = bisect.bisect_right(starts, index) - 1
  findings = _group(split, group)
  member, visit = divmod(index - starts[group], findings.shape[1])
  return Film(len(CLASS_NAMES) * group + member, visit, int(findings[member, visit]))


def patient_id(split: str, patient: int) -> int:
  return _PATIENT_ID_OFFSET.get(split, 30_000_000) + patient


def patient_counts(split: str, num_examples: int) -> dict:
  """{'images', 'patients', 'patients_with_several_images'} of a split of that size."""
  films_per_patient = np.bincount([film_of(split, index).patient
                                   for index in range(num_examples)])
  return {'images': int(num_examples), 'patients': int(films_per_patient.size),
          'patients_with_several_images': int(np.sum(films_per_patient >= 2))}


# ------------------------------------------------------------------------------ drawing

def draw_patient(rng: np.random.Generator) -> dict:
  """The anatomy of one patient (class-independent)."""
  return dict(
      body_scale=rng.uniform(0.84, 1.06), shift=rng.uniform(-0.08, 0.08, size=2),
      angle=rng.uniform(-6, 6), lung_height_scale=rng.uniform(0.92, 1.08),
      cardio_ratio=rng.uniform(0.40, 0.48), rib_offset=rng.uniform(-0.03, 0.03),
      rib_curvature=rng.uniform(0.45, 0.65),
      markings=rng.standard_normal((_MARKINGS_CELLS + 1, _MARKINGS_CELLS + 1)))


def draw_finding(rng: np.random.Generator, label: int) -> dict:
  """The geometry of finding `label` in one patient (see the module docstring)."""
  if not 0 <= label < len(CLASS_NAMES):
    raise ValueError(f'label must be in [0, {len(CLASS_NAMES)}), got {label}')
  finding = dict(side=('right', 'left')[int(rng.integers(2))])
  if label == 1:
    finding['cardio_ratio'] = rng.uniform(0.62, 0.72)
  elif label == 2:
    finding['fill'] = rng.uniform(0.35, 0.55)
  elif label == 3:
    finding.update(radius=rng.uniform(0.11, 0.16), offset_u=rng.uniform(-0.07, 0.07),
                   offset_v=rng.uniform(-0.3, 0.15), lobulation_phase=rng.uniform(0, 2 * np.pi))
  elif label == 4:
    finding['collapse'] = rng.uniform(0.40, 0.62)
  return finding


def draw_film(rng: np.random.Generator) -> dict:
  """Positioning and exposure of one film (class-independent)."""
  return dict(
      angle=rng.uniform(-2.5, 2.5), shift=rng.uniform(-0.025, 0.025, size=2),
      target_mean=rng.uniform(0.30, 0.62), target_contrast=rng.uniform(0.13, 0.25),
      gamma=np.exp(rng.uniform(np.log(0.65), np.log(1.5))),
      noise_sigma=rng.uniform(0.01, 0.05), blur=bool(rng.random() < 0.5))


def render_phantom(patient: dict, finding: dict, film: dict, label: int, image_size: int,
                   noise_rng: np.random.Generator) -> np.ndarray:
  """Draws one phantom radiograph.

  Args:
    patient: `draw_patient`'s anatomy.
    finding: `draw_finding(..., label)`'s geometry.
    film: `draw_film`'s positioning and exposure.
    label: class index into CLASS_NAMES.
    image_size: output side length S in pixels.
    noise_rng: the detector noise (the only size-dependent randomness).

  Returns:
    uint8 [S, S, 1] image.
  """
  size = image_size
  edge = 3.0 / size  # antialiasing ramp: ~1.5 px (the field spans [-1, 1])

  # --- patient geometry and film positioning (nuisance) ---
  body_scale = patient['body_scale']
  shift_x, shift_y = patient['shift'] + film['shift']
  angle = np.deg2rad(patient['angle'] + film['angle'])
  lung_height_scale = patient['lung_height_scale']
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

  cardio_ratio = patient['cardio_ratio']
  heart_half_height = 0.25
  if label == 1:  # cardiomegaly
    cardio_ratio = finding['cardio_ratio']
    heart_half_height *= 1.25
  thorax_half_width = lung_centre_u + lung_half_width
  heart_half_width = cardio_ratio * thorax_half_width
  heart = _smoothstep_inside(
      _ellipse_distance(u, v, 0.12, dome_top - 0.72 * heart_half_height,
                        heart_half_width, heart_half_height), edge_patient)
  mediastinum = _smoothstep_inside(np.abs(u) - 0.11, edge_patient) * (v > -0.85)
  spine = _smoothstep_inside(np.abs(u) - 0.07, edge_patient)
  vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * v / 0.14)  # vertebral bodies / discs

  markings_noise = _smooth_noise_at(patient['markings'], u, v)
  markings = np.exp(-(markings_noise / 0.18) ** 2)  # ridges: curvy lines
  hilum_distance = np.minimum(np.hypot(u + 0.18, v - 0.0), np.hypot(u - 0.18, v - 0.0))
  markings *= np.clip(1.2 - hilum_distance / 0.55, 0.2, 1.0)  # denser near the hila

  ribs = np.zeros_like(u)
  rib_thickness = 0.028
  for rib in range(9):
    rib_v = -0.60 + patient['rib_offset'] + rib * 0.105 * lung_height_scale
    for sign in (-1.0, 1.0):
      curve = (rib_v + patient['rib_curvature'] * (np.abs(u) - 0.15) ** 2
               - 0.08 * (np.abs(u) - 0.15))
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
  lung = lungs[finding['side']]
  if label == 2:  # effusion: fluid at one base, meniscus rising laterally
    level = dome_top - finding['fill'] * 2 * lung_half_height * 0.72
    lateral = lung['sign'] * u - lung_centre_u  # > 0 towards the chest wall
    surface = level + 0.35 * lung_half_height * (
        0.4 - np.clip(lateral / lung_half_width, -1, 1))
    fluid = lung['mask'] * _smoothstep_inside(surface - v, edge_patient)
    air = air * (1 - fluid)
    marking_mask = marking_mask * (1 - fluid)
  elif label == 3:  # mass in the mid zone of one lung
    radius = finding['radius']
    centre_u = lung['sign'] * (lung_centre_u + finding['offset_u'])
    centre_v = lung_centre_v + finding['offset_v'] * lung_half_height
    theta = np.arctan2(v - centre_v, u - centre_u)
    lobulation = 1 + 0.12 * np.sin(3 * theta + finding['lobulation_phase'])
    distance = np.hypot(u - centre_u, v - centre_v) - radius * lobulation
    mass = _smoothstep_inside(distance, edge_patient)
    air = air * (1 - mass)
    marking_mask = marking_mask * (1 - mass)
  elif label == 4:  # pneumothorax: lung collapsed towards the hilum
    collapse = finding['collapse']
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
  image = ((image - image.mean()) / (image.std() + 1e-6) * film['target_contrast']
           + film['target_mean'])
  image = np.clip(image, 0.0, 1.0) ** film['gamma']
  image += film['noise_sigma'] * noise_rng.standard_normal(image.shape)
  if film['blur']:
    image = _box_blur(image)
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)[..., None]


def make_example(split: str, index: int, image_size: int) -> dict:
  """The example `index` of `split` as a TFDS feature dict."""
  film = film_of(split, index)
  film_rng, noise_rng = _stream(split, _FILM_STREAM, index).spawn(2)
  image = render_phantom(
      draw_patient(_stream(split, _PATIENT_STREAM, film.patient)),
      draw_finding(_stream(split, _FINDING_STREAM, film.patient, film.label), film.label),
      draw_film(film_rng), film.label, image_size, noise_rng)
  return {'image': image, 'label': film.label,
          'patient_id': patient_id(split, film.patient)}


def _make_examples(split, indices, image_size):
  return [make_example(split, index, image_size) for index in indices]


@dataclasses.dataclass
class SyntheticCxrConfig(tfds.core.BuilderConfig):
  image_size: int = 64


class SyntheticCxr(tfds.core.GeneratorBasedBuilder):
  """Procedural chest-radiograph phantoms; see the module docstring."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'First release.', '1.1.0': 'image stored as raw bytes.',
                   '1.2.0': 'synthetic patients with 1-4 follow-up films each; '
                            'patients_in_several_splits and patient counts recorded.'}
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
    counts = {split: patient_counts(split, int(count))
              for split, count in self._split_sizes.items()}
    total = {key: sum(split_counts[key] for split_counts in counts.values())
             for key in ('images', 'patients', 'patients_with_several_images')}
    self.info.metadata['prepare_counts'] = {'total': total, **counts}
    self.info.metadata['patients_in_several_splits'] = 0  # patient ids differ by split
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
