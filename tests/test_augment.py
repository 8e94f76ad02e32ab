"""Tests for simclr_jax/augment.py (on-device per-example augmentations)."""
import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import augment

SIZE = 32


def identity_config(**overrides):
  """Every random augmentation off; the geometric path is a plain resize."""
  config = augment.default_config()
  config.update(dict(crop_scale=(1.0, 1.0), flip_prob=0.0, rotation_degrees=0.0,
                     jitter_prob=0.0, blur_prob=0.0, equalize_prob=0.0, clahe_prob=0.0,
                     noise_std=0.0))
  config.update(overrides)
  return config


def jitted_augment(config, image_size=SIZE):
  return jax.jit(functools.partial(augment.augment_image, config=config, image_size=image_size))


def normalized(image_uint8, config):
  return (image_uint8.astype(np.float32) / 255.0 - config.normalize_mean) / config.normalize_std


def random_image(seed=0, size=SIZE, channels=1, high=256):
  rng = np.random.default_rng(seed)
  return rng.integers(0, high, size=(size, size, channels)).astype(np.uint8)


@pytest.fixture(scope="module")
def default_augment():
  return jitted_augment(augment.default_config())


def test_deterministic_keys_differ_shape_dtype_range(default_augment):
  image = random_image()
  key = jax.random.key(0)
  view = default_augment(key, image)
  assert view.shape == (SIZE, SIZE, 1) and view.dtype == jnp.float32
  np.testing.assert_array_equal(view, default_augment(key, image))
  assert not np.allclose(view, default_augment(jax.random.key(1), image))
  config = augment.default_config()
  low = (0 - config.normalize_mean) / config.normalize_std
  high = (1 - config.normalize_mean) / config.normalize_std
  assert np.all(np.isfinite(view))
  assert low - 1e-6 <= float(view.min()) and float(view.max()) <= high + 1e-6


def test_random_resized_crop_box_follows_torchvision_ranges():
  uniforms = np.random.default_rng(13).uniform(size=(200, 22)).astype(np.float32)
  height, width, scale, ratio = 40, 30, (0.3, 1.0), (3 / 4, 4 / 3)
  top, left, crop_height, crop_width = jax.vmap(
      lambda u: augment._random_resized_crop_box(u, height, width, scale, ratio))(uniforms)
  area_fraction = crop_height * crop_width / (height * width)
  assert np.all((area_fraction >= scale[0] - 1e-5) & (area_fraction <= scale[1] + 1e-5))
  aspect = crop_width / crop_height
  assert np.all((aspect >= ratio[0] - 1e-5) & (aspect <= ratio[1] + 1e-5))
  assert np.all((top >= 0) & (top + crop_height <= height + 1e-4))
  assert np.all((left >= 0) & (left + crop_width <= width + 1e-4))
  # No box can be this large and narrow: centre-crop fallback at the closest ratio (3/4).
  top, left, crop_height, crop_width = augment._random_resized_crop_box(
      uniforms[0], 40, 20, (1.0, 1.0), ratio)
  np.testing.assert_allclose([top, left, crop_height, crop_width], [(40 - 80 / 3) / 2, 0,
                                                                    80 / 3, 20], rtol=1e-6)


def test_identity_geometry_is_exact():
  config = identity_config(brightness=0.9, contrast=0.9)
  image = random_image(channels=3)
  view = jitted_augment(config)(jax.random.key(3), image)
  assert view.shape == (SIZE, SIZE, 3)
  np.testing.assert_allclose(view, normalized(image, config), atol=1e-5)


def test_flip_with_probability_one_mirrors():
  config = identity_config(flip_prob=1.0)
  image = random_image(1)
  view = jitted_augment(config)(jax.random.key(4), image)
  np.testing.assert_allclose(view, normalized(image[:, ::-1], config), atol=1e-5)


def test_rotation_moves_content_about_the_centre():
  config = identity_config(rotation_degrees=45.0, normalize_mean=0.0, normalize_std=1.0)
  image = np.zeros((SIZE, SIZE, 1), np.uint8)
  image[SIZE // 2 - 1:SIZE // 2 + 1, :] = 255  # horizontal bar through the centre
  view = np.asarray(jitted_augment(config)(jax.random.key(5), image))[..., 0]
  centre = slice(SIZE // 2 - 1, SIZE // 2 + 1)
  assert view[centre, centre].min() > 0.7  # the rotation centre stays put
  on_bar = view[centre, :].mean()
  assert on_bar < 0.6, on_bar  # the bar's ends left their rows
  np.testing.assert_allclose(view.sum(), float(image.sum()) / 255, rtol=0.15)  # mass kept


def test_blur_reduces_checkerboard_variance():
  config = identity_config(blur_prob=1.0, blur_sigma=(1.0, 2.0), blur_kernel_fraction=0.2)
  assert augment.blur_kernel_size(SIZE, 0.2) == 7
  checkerboard = ((np.indices((SIZE, SIZE)).sum(0) % 2) * 255).astype(np.uint8)[..., None]
  view = jitted_augment(config)(jax.random.key(6), checkerboard)
  expected = normalized(checkerboard, config)
  assert float(jnp.var(view)) < 0.1 * float(np.var(expected))
  np.testing.assert_allclose(float(jnp.mean(view)), float(np.mean(expected)), atol=0.05)


def test_equalize_gives_flat_histogram_and_clahe_raises_contrast():
  image = random_image(2, high=64)  # dark, low-contrast image: levels 0..63
  config = identity_config(equalize_prob=1.0, normalize_mean=0.0, normalize_std=1.0)
  view = np.asarray(jitted_augment(config)(jax.random.key(7), image))
  quarters = np.histogram(view, bins=4, range=(0, 1))[0] / view.size
  np.testing.assert_allclose(quarters, 0.25, atol=0.05)

  config = identity_config(clahe_prob=1.0, clahe_grid_size=4, normalize_mean=0.0,
                           normalize_std=1.0)
  view = np.asarray(jitted_augment(config)(jax.random.key(7), image))
  assert np.all((view >= 0) & (view <= 1))
  assert view.std() > 2 * (image / 255).std()


def test_jit_matches_eager(default_augment):
  image, key = random_image(3), jax.random.key(2)
  eager = augment.augment_image(key, image, augment.default_config(), SIZE)
  np.testing.assert_allclose(default_augment(key, image), eager, atol=1e-4)


def test_make_views_is_vmap_of_augment_image_with_fold_in_keys():
  config = augment.default_config()  # plus every optional step, so all run under vmap
  config.update(dict(equalize_prob=0.5, clahe_prob=0.5, noise_std=0.02))
  images = np.stack([random_image(s) for s in range(3)])
  example_ids = np.array([10, 11, 12], np.int32)
  rng = jax.random.key(9)
  make_views = jax.jit(functools.partial(augment.make_views, config=config, image_size=SIZE))
  views1, views2 = make_views(rng, images, example_ids)
  # One view per image (supervised objective): exactly SimCLR's first view.
  make_view = jax.jit(functools.partial(augment.make_view, config=config, image_size=SIZE))
  np.testing.assert_allclose(make_view(rng, images, example_ids), views1, atol=1e-5)
  assert views1.shape == views2.shape == (3, SIZE, SIZE, 1)
  assert views1.dtype == views2.dtype == jnp.float32
  # A view depends only on (rng, example id, image), not on the batch it is in: this is
  # what makes training independent of how the global batch is split over devices.
  augment_one = jitted_augment(config)
  for i in range(3):
    key1, key2 = jax.random.split(jax.random.fold_in(rng, example_ids[i]))
    np.testing.assert_allclose(views1[i], augment_one(key1, images[i]), atol=1e-4)
    np.testing.assert_allclose(views2[i], augment_one(key2, images[i]), atol=1e-4)
    assert not np.allclose(views1[i], views2[i])  # two views of one image differ


def _jitter_reference(image, brightness_factor, contrast_factor, brightness_first):
  """torchvision ColorJitter's brightness / contrast on a [0, 1] float image (float64)."""
  brightness = lambda x: np.clip(x * brightness_factor, 0, 1)
  contrast = lambda x: np.clip((x - x.mean()) * contrast_factor + x.mean(), 0, 1)
  return contrast(brightness(image)) if brightness_first else brightness(contrast(image))


@pytest.mark.parametrize("order", ["random", "fixed"])
def test_jitter_order_is_drawn_per_view_and_each_order_composes_correctly(order):
  strength = 0.4
  config = identity_config(jitter_prob=1.0, brightness=strength, contrast=strength,
                           jitter_order=order, normalize_mean=0.0, normalize_std=1.0)
  image = random_image(4)  # full 0..255 range: brightening saturates, so the order matters
  keys = jax.random.split(jax.random.key(21), 64)
  views = np.asarray(jax.jit(jax.vmap(
      functools.partial(augment.augment_image, image=image, config=config,
                        image_size=SIZE)))(keys))
  all_draws = jax.device_get(jax.vmap(augment._draw_uniforms)(keys))
  source = image.astype(np.float64) / 255
  brightness_first = []
  for index, view in enumerate(views):
    draws = {name: float(all_draws[name][index])
             for name in ("brightness", "contrast", "jitter_order")}
    brightness_factor = 1 - strength + 2 * strength * draws["brightness"]
    contrast_factor = 1 - strength + 2 * strength * draws["contrast"]
    expected_first = order == "fixed" or draws["jitter_order"] < 0.5
    expected = _jitter_reference(source, brightness_factor, contrast_factor, expected_first)
    other = _jitter_reference(source, brightness_factor, contrast_factor, not expected_first)
    np.testing.assert_allclose(view, expected, atol=1e-5)
    if np.abs(expected - other).max() > 1e-2:  # the order is visible in this view
      brightness_first.append(expected_first)
  assert len(brightness_first) >= 24
  if order == "fixed":
    assert all(brightness_first)
  else:  # torchvision: each order in half of the views
    assert 0.25 < np.mean(brightness_first) < 0.75


def test_draws_added_at_the_end_leave_the_earlier_draws_unchanged():
  """jitter_order was appended to _DRAW_LAYOUT: every earlier draw keeps its value."""
  key = jax.random.key(22)
  draws = augment._draw_uniforms(key)
  earlier = [name for name, _ in augment._DRAW_LAYOUT][:-1]
  assert [name for name, _ in augment._DRAW_LAYOUT][-1] == "jitter_order"
  earlier_total = sum(size for name, size in augment._DRAW_LAYOUT if name in earlier)
  np.testing.assert_array_equal(
      np.concatenate([np.atleast_1d(draws[name]) for name in earlier]),
      jax.random.uniform(key, (earlier_total,)))


def _experiment_config(name):
  spec = importlib.util.spec_from_file_location(
      name, pathlib.Path(__file__).resolve().parents[1] / "experiments/configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_seed_config_jitters_and_blurs_every_view_as_the_seed():
  seed = _experiment_config("nih_r50")
  # experiments/pytorch_baseline/augment.py: ColorJitter and GaussianBlur(23) without
  # RandomApply, i.e. on every view; ColorJitter shuffles its ops per call.
  assert seed.augment.jitter_prob == 1.0 and seed.augment.blur_prob == 1.0
  assert seed.augment.jitter_order == "random"
  assert augment.blur_kernel_size(seed.image_size, seed.augment.blur_kernel_fraction) == 23
  assert (seed.augment.brightness, seed.augment.contrast) == (0.4, 0.4)
  assert tuple(seed.augment.blur_sigma) == (0.1, 2.0)
  assert tuple(seed.augment.crop_scale) == (0.8, 1.0)
  assert (seed.augment.flip_prob, seed.augment.rotation_degrees) == (0.5, 10.0)
  assert seed.zero_init_residual is False  # torchvision's random ResNet-50
  augment._settings(seed.augment)  # every field valid
  # The SimCLR-paper recipe keeps the paper's RandomApply probabilities.
  paper = _experiment_config("nih_r50_simclr")
  assert (paper.augment.jitter_prob, paper.augment.blur_prob) == (0.8, 0.5)
  assert paper.augment.jitter_order == "random" and paper.zero_init_residual is True


def test_large_source_downscale_and_antialiasing():
  rng = np.random.default_rng(10)
  images = rng.integers(0, 256, size=(2, 256, 256, 1)).astype(np.uint8)
  config = augment.default_config()
  make_views = jax.jit(functools.partial(augment.make_views, config=config, image_size=64))
  views1, _ = make_views(jax.random.key(11), images, np.arange(2))
  assert views1.shape == (2, 64, 64, 1) and bool(jnp.all(jnp.isfinite(views1)))
  # White noise: the 4x4 box filter averages ~16 pixels, plain bilinear only ~4.
  preprocess = lambda config: jax.jit(functools.partial(
      augment.preprocess_eval, config=config, image_size=64))(images)
  smooth = preprocess(config)
  aliased = preprocess(identity_config(antialias=False))
  assert float(jnp.var(smooth)) < 0.5 * float(jnp.var(aliased))


def test_preprocess_eval_centre_crop_and_determinism():
  config = augment.default_config()
  images = np.random.default_rng(12).integers(0, 256, (2, 20, 16, 1)).astype(np.uint8)
  processed = augment.preprocess_eval(images, config, 16)
  assert processed.shape == (2, 16, 16, 1) and processed.dtype == jnp.float32
  np.testing.assert_allclose(processed, normalized(images[:, 2:18], config), atol=1e-5)
  np.testing.assert_array_equal(processed, augment.preprocess_eval(images, config, 16))


def test_config_and_input_errors_name_the_field():
  image = random_image()
  with pytest.raises(ValueError, match="flip_probability"):
    augment.augment_image(jax.random.key(0), image, dict(flip_probability=0.5), SIZE)
  with pytest.raises(ValueError, match=r"config.augment.blur_prob"):
    augment.augment_image(jax.random.key(0), image, identity_config(blur_prob=1.5), SIZE)
  with pytest.raises(ValueError, match=r"config.augment.crop_scale"):
    augment.augment_image(jax.random.key(0), image, identity_config(crop_scale=(0.9, 0.5)),
                          SIZE)
  with pytest.raises(ValueError, match="normalize_mean"):
    augment.augment_image(jax.random.key(0), image, dict(normalize_mean=(0.1, 0.2, 0.3)),
                          SIZE)
  with pytest.raises(ValueError, match="uint8"):
    augment.augment_image(jax.random.key(0), image.astype(np.float32), None, SIZE)
  with pytest.raises(ValueError, match="example_ids"):
    augment.make_views(jax.random.key(0), image[None], np.arange(2), None, SIZE)
  with pytest.raises(ValueError, match=r"make_view: example_ids"):
    augment.make_view(jax.random.key(0), image[None], np.arange(2), None, SIZE)
  with pytest.raises(ValueError, match=r"config.augment.jitter_order.*'random', 'fixed'"):
    augment.augment_image(jax.random.key(0), image, dict(jitter_order="shuffled"), SIZE)
