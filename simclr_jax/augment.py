"""On-device, per-example augmentations for chest X-ray SimCLR.

Every function here is pure, jit- and vmap-able, has static output shapes and is
deterministic for a PRNG key. Input images are the loader's uint8 [H, W, C] (C = 1 for
X-rays); outputs are float32 [S, S, C] with S = `image_size`, the output of the random
resized crop (the stored image may be larger, e.g. 256 -> 224).

Pipeline of `augment_image`, in this order:
  1. uint8 -> float in [0, 1] (divide by 255).
  2. Geometry, as ONE inverse affine map from output to source pixel coordinates,
     bilinearly sampled: random resized crop (torchvision semantics: area fraction
     `crop_scale`, aspect ratio log-uniform in `crop_ratio`, 10 tries then a centre-crop
     fallback; crop boxes are continuous, not rounded to whole pixels), horizontal flip
     with `flip_prob`, rotation by U(-rotation_degrees, rotation_degrees) about the
     output centre. Composing the three means rotated corners show real image content
     where the source has it; only points outside the source image read 0 (black, like
     the X-ray background).
     Anti-aliasing: when `antialias` is on, each output pixel averages k x k bilinear
     taps spread evenly over its footprint in the source (a box filter that follows the
     affine map, so it stays correct under rotation and non-square crops). k is static:
     round(source size / S), clipped to [1, 8] (e.g. 1 for 256 -> 224, 4 for 256 -> 64).
  3. Histogram equalisation with `equalize_prob` (global, PIL/torchvision `equalize` on
     8-bit levels, without PIL's floored step that saturates small images), then CLAHE
     with `clahe_prob` (contrast-limited local equalisation on a `clahe_grid_size` x
     `clahe_grid_size` tile grid, bilinear between the tile mappings).
  4. With `jitter_prob`: brightness (multiply by U(1 - b, 1 + b)) and contrast (blend with
     the image mean by U(1 - c, 1 + c)), each clipped to [0, 1] as torchvision ColorJitter.
     `jitter_order` 'random' (torchvision: ColorJitter draws a random permutation of its
     ops for every call; saturation and hue do nothing to grey images) applies brightness
     first in half of the views and contrast first in the others; 'fixed' always applies
     brightness first (this project's behaviour before the order was drawn). The two ops
     commute but for the clipping, so the order matters where an image saturates.
  5. With `blur_prob`: separable Gaussian blur, sigma ~ U(blur_sigma); the kernel size is
     static: int(blur_kernel_fraction * S), made odd; reflect padding (torchvision).
  6. Additive Gaussian noise with std `noise_std` (in [0, 1] intensity units), clipped.
  7. Intensity normalisation: (x - normalize_mean) / normalize_std, with x in [0, 1]. The
     defaults 0.5 / 0.25 map [0, 1] to [-2, 2]; NIH ChestX-ray14 pixels have mean 0.52 and
     std 0.25, so views come out at about zero mean and unit variance.

All random scalars of a view come from one uniform draw, each augmentation at its own
fixed positions, so switching one augmentation on or off does not change the draws of
the others (noise_std > 0 is the exception: it splits the key first). New draws go at
the end of _DRAW_LAYOUT: with JAX's counter-based (partitionable) threefry the first k
uniforms of a longer draw are the same numbers, so adding a draw changes no existing
one. Steps whose probability / strength is 0 are skipped at trace time (no compute). The
config is read at trace time: bind it statically (functools.partial), it is not a traced
argument.
"""
import functools
import math
from typing import Any, Mapping

import jax
from jax import lax
import jax.numpy as jnp
from jax.scipy import ndimage
import ml_collections
import numpy as np

# torchvision RandomResizedCrop tries this many boxes before its centre-crop fallback.
_CROP_ATTEMPTS = 10
# Largest anti-aliasing supersampling factor (k x k taps per output pixel).
_MAX_SUPERSAMPLE = 8
_NUM_LEVELS = 256  # 8-bit intensity levels for (local) histogram equalisation


def default_config() -> ml_collections.ConfigDict:
  """Augmentation strengths and probabilities (config.augment); see the module docstring."""
  return ml_collections.ConfigDict(dict(
      crop_scale=(0.8, 1.0),  # area fraction of the source image kept by the crop
      crop_ratio=(3 / 4, 4 / 3),  # aspect ratio (width / height) range of the crop
      flip_prob=0.5,  # horizontal flip
      rotation_degrees=10.0,  # angle ~ U(-deg, deg); 0 disables
      brightness=0.4,  # multiplicative factor ~ U(1 - brightness, 1 + brightness)
      contrast=0.4,  # contrast factor ~ U(1 - contrast, 1 + contrast)
      jitter_prob=0.8,  # probability of applying brightness + contrast
      jitter_order="random",  # 'random' (per view, as torchvision) | 'fixed' (brightness first)
      blur_prob=0.5,
      blur_sigma=(0.1, 2.0),  # in output pixels
      blur_kernel_fraction=0.1,  # kernel size = int(fraction * image_size), made odd
      equalize_prob=0.0,  # global histogram equalisation
      clahe_prob=0.0,  # contrast-limited adaptive (local) histogram equalisation
      clahe_clip_limit=2.0,  # histogram clip, in multiples of the mean bin count
      clahe_grid_size=8,  # tiles per side
      noise_std=0.0,  # additive Gaussian noise std, [0, 1] intensity units
      normalize_mean=0.5,  # after scaling uint8 to [0, 1]
      normalize_std=0.25,
      antialias=True,  # box-filter supersampling when the crop downscales
  ))


# Every random scalar of one view comes from ONE uniform draw at fixed positions (one PRNG
# call instead of a dozen: XLA compiles each threefry call separately, which dominated the
# compile time). Fixed positions keep the draws of one augmentation unchanged when another
# one is switched on or off.
_DRAW_LAYOUT = (
    ("crop", 2 * _CROP_ATTEMPTS + 2), ("flip", 1), ("rotation", 1), ("equalize", 1),
    ("clahe", 1), ("jitter", 1), ("brightness", 1), ("contrast", 1), ("blur", 1),
    ("blur_sigma", 1), ("jitter_order", 1))

JITTER_ORDERS = ("random", "fixed")


def _draw_uniforms(key: jax.Array) -> dict:
  """U[0, 1) draws for every random decision of one view, by name (see _DRAW_LAYOUT)."""
  total = sum(size for _, size in _DRAW_LAYOUT)
  uniforms = jax.random.uniform(key, (total,))
  draws, start = {}, 0
  for name, size in _DRAW_LAYOUT:
    draws[name] = uniforms[start] if size == 1 else uniforms[start:start + size]
    start += size
  return draws


def _scale_uniform(draw, low, high):
  """Maps U[0, 1) draws to U[low, high); exactly low when low == high."""
  return low + (high - low) * draw


def _settings(config: Any) -> dict:
  """Returns default_config() overridden by `config`, validated; errors name the field."""
  settings = dict(default_config().items())
  given = dict(config.items()) if config is not None else {}
  unknown = sorted(set(given) - set(settings))
  if unknown:
    raise ValueError(
        f"augment: unknown config.augment field(s) {unknown}; accepted fields: "
        f"{sorted(settings)}.")
  settings.update(given)

  def fail(field, what):
    raise ValueError(
        f"augment: config.augment.{field} = {settings[field]!r} is invalid; expected {what}.")

  for field in ("flip_prob", "jitter_prob", "blur_prob", "equalize_prob", "clahe_prob"):
    if not 0.0 <= settings[field] <= 1.0:
      fail(field, "a probability in [0, 1]")
  for field, low_bound in (("crop_scale", 0.0), ("crop_ratio", 0.0), ("blur_sigma", 0.0)):
    value = settings[field]
    if len(value) != 2 or not low_bound < value[0] <= value[1]:
      fail(field, f"a pair (low, high) with {low_bound} < low <= high")
  if settings["crop_scale"][1] > 1.0:
    fail("crop_scale", "area fractions <= 1")
  for field in ("rotation_degrees", "brightness", "contrast", "noise_std"):
    if settings[field] < 0:
      fail(field, "a value >= 0")
  if not 0.0 <= settings["blur_kernel_fraction"] <= 1.0:
    fail("blur_kernel_fraction", "a fraction of image_size in [0, 1]")
  if settings["jitter_order"] not in JITTER_ORDERS:
    fail("jitter_order", f"one of {list(JITTER_ORDERS)}")
  if settings["clahe_clip_limit"] < 1.0:
    fail("clahe_clip_limit", "a value >= 1 (multiples of the mean bin count)")
  if int(settings["clahe_grid_size"]) != settings["clahe_grid_size"] or (
      settings["clahe_grid_size"] < 1):
    fail("clahe_grid_size", "a positive integer")
  if np.any(np.asarray(settings["normalize_std"]) <= 0):
    fail("normalize_std", "values > 0")
  return settings


def _check_image_size(image_size: int) -> None:
  if int(image_size) != image_size or image_size < 1:
    raise ValueError(
        f"augment: image_size (config.image_size) must be a positive integer; got "
        f"{image_size!r}.")


def _check_uint8(images: jax.Array, ndim: int, name: str) -> None:
  if images.ndim != ndim or images.dtype != jnp.uint8:
    layout = "[H, W, C]" if ndim == 3 else "[n, H, W, C]"
    raise ValueError(
        f"augment.{name}: expected uint8 images {layout}; got dtype {images.dtype} with "
        f"shape {images.shape}.")


def _supersample_factor(height: int, width: int, image_size: int, antialias: bool) -> int:
  if not antialias:
    return 1
  return int(min(_MAX_SUPERSAMPLE, max(1, round(max(height, width) / image_size))))


def _sample_affine(image: jax.Array, matrix: jax.Array, offset: jax.Array,
                   image_size: int, supersample: int) -> jax.Array:
  """Bilinearly samples image [H, W, C] at source = matrix @ output + offset.

  Coordinates are (row, column) in pixel-edge units: output pixel (i, j) covers
  [i, i + 1) x [j, j + 1), so pixel centres sit at +0.5. Points outside the source read 0.
  Each output pixel averages supersample x supersample taps over its footprint.
  """
  taps = image_size * supersample
  grid = (np.arange(taps, dtype=np.float32) + 0.5) / supersample  # tap centres, edge units
  rows, cols = np.meshgrid(grid, grid, indexing="ij")  # [taps, taps]
  # -0.5 converts edge coordinates to the index coordinates map_coordinates expects.
  source_rows = matrix[0, 0] * rows + matrix[0, 1] * cols + offset[0] - 0.5
  source_cols = matrix[1, 0] * rows + matrix[1, 1] * cols + offset[1] - 0.5
  sample_channel = lambda channel: ndimage.map_coordinates(
      channel, [source_rows, source_cols], order=1, mode="constant", cval=0.0)
  sampled = jax.vmap(sample_channel, in_axes=2, out_axes=2)(image)  # [taps, taps, C]
  if supersample == 1:
    return sampled
  sampled = sampled.reshape(image_size, supersample, image_size, supersample, -1)
  return sampled.mean(axis=(1, 3))


def _random_resized_crop_box(uniforms, height: int, width: int, scale, ratio):
  """torchvision RandomResizedCrop.get_params with continuous boxes: (top, left, h, w).

  uniforms: [2 * _CROP_ATTEMPTS + 2] U[0, 1) draws (areas, log-ratios, top, left).
  """
  area_draws = uniforms[:_CROP_ATTEMPTS]
  ratio_draws = uniforms[_CROP_ATTEMPTS:2 * _CROP_ATTEMPTS]
  top_draw, left_draw = uniforms[2 * _CROP_ATTEMPTS], uniforms[2 * _CROP_ATTEMPTS + 1]
  area = height * width
  target_area = area * _scale_uniform(area_draws, *scale)
  aspect = jnp.exp(_scale_uniform(ratio_draws, math.log(ratio[0]), math.log(ratio[1])))
  crop_widths = jnp.sqrt(target_area * aspect)
  crop_heights = jnp.sqrt(target_area / aspect)
  fits = (crop_widths <= width) & (crop_heights <= height)
  first_fit = jnp.argmax(fits)
  any_fits = jnp.any(fits)
  # Fallback (static): the whole image, cut to the nearest allowed aspect ratio, centred.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fallback_width, fallback_height = width, width / ratio[0]
  elif in_ratio > ratio[1]:
    fallback_width, fallback_height = height * ratio[1], height
  else:
    fallback_width, fallback_height = width, height
  crop_height = jnp.where(any_fits, crop_heights[first_fit], fallback_height)
  crop_width = jnp.where(any_fits, crop_widths[first_fit], fallback_width)
  top_fraction = jnp.where(any_fits, top_draw, 0.5)
  left_fraction = jnp.where(any_fits, left_draw, 0.5)
  top = top_fraction * (height - crop_height)
  left = left_fraction * (width - crop_width)
  return top, left, crop_height, crop_width


def _geometric_transform(draws, image, settings, image_size, supersample):
  """Random resized crop + horizontal flip + rotation as one inverse affine map."""
  height, width = image.shape[:2]
  top, left, crop_height, crop_width = _random_resized_crop_box(
      draws["crop"], height, width, settings["crop_scale"], settings["crop_ratio"])
  # Output -> source, read right to left: rotate about the output centre (inverse of the
  # rotation applied to the crop), un-flip, then scale the S x S output onto the crop box.
  degrees = settings["rotation_degrees"]
  angle = _scale_uniform(draws["rotation"], -degrees, degrees) * (math.pi / 180)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  mirror = jnp.where(draws["flip"] < settings["flip_prob"], -1.0, 1.0)
  row_scale, col_scale = crop_height / image_size, crop_width / image_size
  # matrix = diag(row_scale, col_scale) @ diag(1, mirror) @ [[cos, -sin], [sin, cos]],
  # written out elementwise: a 2x2 matmul could run at reduced precision on TPU/GPU.
  matrix = jnp.stack([
      jnp.stack([row_scale * cos, -row_scale * sin]),
      jnp.stack([col_scale * mirror * sin, col_scale * mirror * cos]),
  ])  # [2, 2]
  # The output centre maps to the crop box centre.
  half = image_size / 2.0
  offset = jnp.stack([
      top + crop_height / 2 - (matrix[0, 0] + matrix[0, 1]) * half,
      left + crop_width / 2 - (matrix[1, 0] + matrix[1, 1]) * half,
  ])
  return _sample_affine(image, matrix, offset, image_size, supersample)


def _to_levels(image: jax.Array) -> jax.Array:
  return jnp.round(jnp.clip(image, 0.0, 1.0) * (_NUM_LEVELS - 1)).astype(jnp.int32)


def _equalize_channel(levels: jax.Array) -> jax.Array:
  """Histogram equalisation of int levels [H, W] -> levels, as PIL ImageOps.equalize.

  PIL's step is (pixels - count of the top level) // 255; the floor saturates small
  images at 255 (e.g. a 32 x 32 image of 64 levels), so the step here is not floored.
  """
  histogram = jnp.zeros(_NUM_LEVELS, jnp.int32).at[levels.ravel()].add(1)
  last_level = _NUM_LEVELS - 1 - jnp.argmax(histogram[::-1] > 0)
  step = (levels.size - histogram[last_level]).astype(jnp.float32) / (_NUM_LEVELS - 1)
  cumulative_below = jnp.cumsum(histogram) - histogram  # pixels strictly below each level
  lookup = jnp.floor(cumulative_below / jnp.maximum(step, 1e-6) + 0.5)
  lookup = jnp.clip(lookup, 0, _NUM_LEVELS - 1).astype(jnp.int32)
  # A single level (step 0): PIL leaves such images unchanged.
  return jnp.where(step == 0, levels, lookup[levels])


def equalize(image: jax.Array) -> jax.Array:
  """Global histogram equalisation of a [0, 1] float image [H, W, C], per channel."""
  levels = jax.vmap(_equalize_channel, in_axes=2, out_axes=2)(_to_levels(image))
  return levels.astype(jnp.float32) / (_NUM_LEVELS - 1)


def _tile_interpolation(size: int, grid_size: int):
  """Static per-row (or column) tile indices and weights for CLAHE interpolation."""
  tile_position = (np.arange(size) + 0.5) * grid_size / size - 0.5  # in tile-centre units
  lower = np.floor(tile_position)
  weight = (tile_position - lower).astype(np.float32)
  lower_index = np.clip(lower, 0, grid_size - 1).astype(np.int32)
  upper_index = np.clip(lower + 1, 0, grid_size - 1).astype(np.int32)
  tile_of_pixel = (np.arange(size) * grid_size) // size
  return tile_of_pixel, lower_index, upper_index, weight


def _clahe_channel(levels: jax.Array, clip_limit: float, grid_size: int) -> jax.Array:
  """Contrast-limited adaptive histogram equalisation of int levels [H, W] -> [0, 1]."""
  height, width = levels.shape
  row_tile, row_low, row_high, row_weight = _tile_interpolation(height, grid_size)
  col_tile, col_low, col_high, col_weight = _tile_interpolation(width, grid_size)
  tile_id = row_tile[:, None] * grid_size + col_tile[None, :]  # [H, W] static
  histograms = jnp.zeros(grid_size * grid_size * _NUM_LEVELS, jnp.float32).at[
      (tile_id * _NUM_LEVELS + levels).ravel()].add(1.0)
  histograms = histograms.reshape(grid_size * grid_size, _NUM_LEVELS)
  pixels_per_tile = jnp.asarray(
      np.bincount(tile_id.ravel(), minlength=grid_size * grid_size), jnp.float32)[:, None]
  limit = jnp.maximum(clip_limit * pixels_per_tile / _NUM_LEVELS, 1.0)
  excess = jnp.sum(jnp.maximum(histograms - limit, 0.0), axis=1, keepdims=True)
  histograms = jnp.minimum(histograms, limit) + excess / _NUM_LEVELS
  lookup = jnp.cumsum(histograms, axis=1) / pixels_per_tile  # [tiles, levels] in (0, 1]

  def tile_value(tile_rows, tile_cols):
    tiles = tile_rows[:, None] * grid_size + tile_cols[None, :]  # [H, W]
    return lookup[tiles, levels]

  row_weight, col_weight = row_weight[:, None], col_weight[None, :]
  return ((1 - row_weight) * (1 - col_weight) * tile_value(row_low, col_low)
          + (1 - row_weight) * col_weight * tile_value(row_low, col_high)
          + row_weight * (1 - col_weight) * tile_value(row_high, col_low)
          + row_weight * col_weight * tile_value(row_high, col_high))


def clahe(image: jax.Array, clip_limit: float = 2.0, grid_size: int = 8) -> jax.Array:
  """CLAHE of a [0, 1] float image [H, W, C], per channel; returns [0, 1] float32."""
  channel_fn = functools.partial(_clahe_channel, clip_limit=clip_limit, grid_size=grid_size)
  return jax.vmap(channel_fn, in_axes=2, out_axes=2)(_to_levels(image))


def _brightness_contrast(draws, image, brightness: float, contrast: float, order: str):
  """torchvision ColorJitter's brightness and contrast, in the order `order` asks for.

  Both ops are a clipped blend, clip(factor * x + (1 - factor) * reference): brightness
  blends with black (reference 0), contrast with the image mean. Writing them that way
  lets the random order pick each step's factor and reference instead of computing both
  orders.
  """
  brightness_factor = _scale_uniform(
      draws["brightness"], max(0.0, 1.0 - brightness), 1.0 + brightness)
  contrast_factor = _scale_uniform(draws["contrast"], max(0.0, 1.0 - contrast), 1.0 + contrast)
  if order == "fixed":
    brightness_first = True
  else:  # torchvision's randperm of (brightness, contrast, saturation, hue): 1/2 each order
    brightness_first = draws["jitter_order"] < 0.5

  def blend(x, factor, with_mean):
    reference = jnp.where(with_mean, jnp.mean(x), 0.0)
    return jnp.clip(factor * x + (1.0 - factor) * reference, 0.0, 1.0)

  first_factor = jnp.where(brightness_first, brightness_factor, contrast_factor)
  second_factor = jnp.where(brightness_first, contrast_factor, brightness_factor)
  image = blend(image, first_factor, with_mean=jnp.logical_not(brightness_first))
  return blend(image, second_factor, with_mean=brightness_first)


def blur_kernel_size(image_size: int, fraction: float) -> int:
  """Static odd Gaussian kernel size: int(fraction * image_size), +1 if even."""
  size = int(fraction * image_size)
  return size + 1 if size % 2 == 0 else size


def gaussian_blur(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
  """Separable Gaussian blur of [H, W, C] with a static odd kernel size, reflect padding."""
  radius = kernel_size // 2
  if radius == 0:
    return image
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * jnp.square(taps / sigma))
  kernel = kernel / jnp.sum(kernel)  # [kernel_size]

  def blur_axis(x, axis):
    padding = [(0, 0)] * x.ndim
    padding[axis] = (radius, radius)
    padded = jnp.pad(x, padding, mode="reflect")
    length = x.shape[axis]
    return sum(kernel[t] * lax.slice_in_dim(padded, t, t + length, axis=axis)
               for t in range(kernel_size))

  return blur_axis(blur_axis(image, 0), 1)


def _normalize(image: jax.Array, settings: Mapping) -> jax.Array:
  """(image - normalize_mean) / normalize_std; each a scalar or one value per channel."""
  channels = image.shape[-1]
  for field in ("normalize_mean", "normalize_std"):
    if np.size(settings[field]) not in (1, channels):
      raise ValueError(
          f"augment: config.augment.{field} = {settings[field]!r} must be a scalar or have "
          f"one value per channel ({channels}).")
  mean = jnp.asarray(settings["normalize_mean"], jnp.float32).reshape(-1)
  std = jnp.asarray(settings["normalize_std"], jnp.float32).reshape(-1)
  return (image - mean) / std


def augment_image(key: jax.Array, image: jax.Array, config: Any,
                  image_size: int) -> jax.Array:
  """One random augmented view of one image.

  Args:
    key: PRNG key; the same key always gives the same view.
    image: uint8 [H, W, C] image as stored by the loader (H, W may exceed image_size).
    config: config.augment (a ConfigDict or mapping with fields of `default_config()`;
      missing fields take their defaults). Read at trace time: bind it statically.
    image_size: S, the static output side length.

  Returns:
    float32 [S, S, C], normalised with config normalize_mean / normalize_std.
  """
  settings = _settings(config)
  _check_image_size(image_size)
  _check_uint8(image, 3, "augment_image")
  if settings["noise_std"] > 0:
    draws_key, noise_key = jax.random.split(key)
  else:  # one PRNG call less to compile; noise on therefore changes the other draws.
    draws_key = key
  draws = _draw_uniforms(draws_key)
  height, width = image.shape[:2]
  supersample = _supersample_factor(height, width, image_size, settings["antialias"])

  view = image.astype(jnp.float32) / 255.0
  view = _geometric_transform(draws, view, settings, image_size, supersample)

  if settings["equalize_prob"] > 0:
    view = jnp.where(draws["equalize"] < settings["equalize_prob"], equalize(view), view)
  if settings["clahe_prob"] > 0:
    grid_size = min(int(settings["clahe_grid_size"]), image_size)
    view = jnp.where(draws["clahe"] < settings["clahe_prob"],
                     clahe(view, settings["clahe_clip_limit"], grid_size), view)
  if settings["jitter_prob"] > 0 and (settings["brightness"] > 0 or settings["contrast"] > 0):
    jittered = _brightness_contrast(draws, view, settings["brightness"], settings["contrast"],
                                    settings["jitter_order"])
    view = jnp.where(draws["jitter"] < settings["jitter_prob"], jittered, view)
  kernel_size = blur_kernel_size(image_size, settings["blur_kernel_fraction"])
  if settings["blur_prob"] > 0 and kernel_size > 1:
    sigma = _scale_uniform(draws["blur_sigma"], *settings["blur_sigma"])
    view = jnp.where(draws["blur"] < settings["blur_prob"],
                     gaussian_blur(view, sigma, kernel_size), view)
  if settings["noise_std"] > 0:
    noise = settings["noise_std"] * jax.random.normal(noise_key, view.shape)
    view = jnp.clip(view + noise, 0.0, 1.0)
  return _normalize(view, settings).astype(jnp.float32)


def _check_example_ids(images: jax.Array, example_ids: jax.Array, name: str) -> None:
  _check_uint8(images, 4, name)
  if example_ids.shape != images.shape[:1]:
    raise ValueError(
        f"augment.{name}: example_ids must be [n] = ({images.shape[0]},); got shape "
        f"{example_ids.shape}.")


def _view_keys(rng: jax.Array, example_ids: jax.Array) -> jax.Array:
  """[n, 2] keys: view v of example i uses split(fold_in(rng, example_ids[i]))[v]."""
  example_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, example_ids)
  return jax.vmap(jax.random.split)(example_keys)


def make_views(rng: jax.Array, images: jax.Array, example_ids: jax.Array, config: Any,
               image_size: int, second_images: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
  """Two augmented views of every image in a batch (or of every pair of images).

  Each example's key is fold_in(rng, example_id), split into the keys of view 1 and view 2,
  so a view depends only on (rng, example_id, image): with globally unique ids (e.g. the
  position in the global batch) the result does not depend on how the batch is split
  over devices or hosts.

  Args:
    rng: PRNG key shared by the whole global batch for this step (not per device).
    images: uint8 [n, H, W, C].
    example_ids: int32 [n] unique ids of the examples within the global batch.
    config: config.augment (see `augment_image`).
    image_size: S, the static output side length.
    second_images: None (both views from `images`) or uint8 [n, H, W, C]: view 2 of
      example i is made from second_images[i] (e.g. another film of its patient), with
      the same key it would have had.

  Returns:
    (views1, views2), each float32 [n, S, S, C].
  """
  _check_example_ids(images, example_ids, "make_views")
  view_keys = _view_keys(rng, example_ids)  # [n, 2, ...]
  augment = functools.partial(augment_image, config=config, image_size=image_size)
  if second_images is None:
    # Inner vmap over the two views of one image (image broadcast, not copied), outer over
    # images: one traced copy of the pipeline instead of two.
    augment_both = jax.vmap(jax.vmap(augment, in_axes=(0, None)), in_axes=(0, 0))
    views = augment_both(view_keys, images)  # [n, 2, S, S, C]
  else:
    if second_images.shape != images.shape or second_images.dtype != images.dtype:
      raise ValueError(
          f"augment.make_views: second_images must be {images.dtype} {images.shape} like "
          f"images; got {second_images.dtype} {second_images.shape}.")
    sources = jnp.stack([images, second_images], axis=1)  # [n, 2, H, W, C]
    views = jax.vmap(jax.vmap(augment))(view_keys, sources)  # [n, 2, S, S, C]
  return views[:, 0], views[:, 1]


def make_view(rng: jax.Array, images: jax.Array, example_ids: jax.Array, config: Any,
              image_size: int) -> jax.Array:
  """One augmented view of every image (supervised training): `make_views`' first view.

  Same keys as `make_views` (view 1 of example i uses split(fold_in(rng, id_i))[0]), so
  the view is independent of how the global batch is split over devices, and the
  supervised objective sees exactly the first view SimCLR would see.

  Args:
    rng: PRNG key shared by the whole global batch for this step.
    images: uint8 [n, H, W, C].
    example_ids: int32 [n] unique ids of the examples within the global batch.
    config: config.augment (see `augment_image`).
    image_size: S, the static output side length.

  Returns:
    float32 [n, S, S, C].
  """
  _check_example_ids(images, example_ids, "make_view")
  first_view_keys = _view_keys(rng, example_ids)[:, 0]  # [n, ...]
  augment = functools.partial(augment_image, config=config, image_size=image_size)
  return jax.vmap(augment)(first_view_keys, images)


def preprocess_eval(images: jax.Array, config: Any, image_size: int) -> jax.Array:
  """Deterministic evaluation preprocessing of a batch.

  The largest centred square is resized to S x S (same bilinear sampler and anti-aliasing
  as training), followed by the same intensity normalisation. No other augmentation.

  Args:
    images: uint8 [n, H, W, C].
    config: config.augment (only antialias and normalize_* are used).
    image_size: S, the static output side length.

  Returns:
    float32 [n, S, S, C].
  """
  settings = _settings(config)
  _check_image_size(image_size)
  _check_uint8(images, 4, "preprocess_eval")
  height, width = images.shape[1:3]
  side = min(height, width)
  supersample = _supersample_factor(side, side, image_size, settings["antialias"])
  matrix = jnp.eye(2) * (side / image_size)
  offset = jnp.array([(height - side) / 2, (width - side) / 2], jnp.float32)

  def preprocess_one(image):
    view = image.astype(jnp.float32) / 255.0
    view = _sample_affine(view, matrix, offset, image_size, supersample)
    return _normalize(view, settings).astype(jnp.float32)

  return jax.vmap(preprocess_one)(images)
