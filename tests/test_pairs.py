"""Same-patient positives (config.pairs) and same-patient negatives masked
(config.loss.mask_same_patient): the paired training stream and its wiring into SimCLR
(issue 19). Pipeline tests read the session's tiny synthetic_cxr/32, whose synthetic
patients have 1-4 films each; no training here (tests/multidevice/test_train_step.py runs
a paired, masked step on 1 and 4 devices)."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from simclr_jax import augment
from simclr_jax import data
from simclr_jax import losses
from simclr_jax import objectives
from simclr_jax.config import default_config
from simclr_jax.data import pipeline
from simclr_jax.errors import ConfigError

DATASET = "synthetic_cxr/32"


def _config(data_dir, probability=0.0, mask=False, **overrides):
  config = ml_collections.ConfigDict(dict(
      dataset=DATASET, data_dir=str(data_dir), train_split="train", batch_size=8, seed=0,
      objective="simclr", input=dict(num_workers=0, prefetch_buffer_size=2,
                                     class_balanced=False),
      loss=dict(temperature=0.1, example_weights="none", mask_same_patient=mask),
      pairs=dict(same_patient_prob=probability)))
  config.update_from_flattened_dict(overrides)
  return config


def _iterator(config, process_index=0, process_count=1, local_device_count=1):
  return data.create_train_iterator(config, process_index=process_index,
                                    process_count=process_count,
                                    local_device_count=local_device_count)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _rows(batch, name):
  """[local_devices, per_device, ...] -> [per_process, ...]."""
  return batch[name].reshape(-1, *batch[name].shape[2:])


@pytest.fixture(scope="module")
def train_records(synthetic_data_dir):
  """image bytes -> (record index, patient id) of the training split, and the dense
  patient index the pipeline serves."""
  source = data.data_source(DATASET, str(synthetic_data_dir), "train")
  records = {np.asarray(source[i]["image"]).tobytes(): (i, int(source[i]["patient_id"]))
             for i in range(len(source))}
  assert len(records) == len(source)   # every training image is distinct
  return records, pipeline.patient_index(DATASET, str(synthetic_data_dir), "train")


def test_same_patient_pairs_draws():
  """The partner: another record of the patient (never itself when there is one) with
  probability p, from (seed, position) only; p = 0.5 pairs a subset of p = 1's positions
  with the same partners; partners come from `records` when given."""
  patients = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
  always = pipeline.SamePatientPairs(patients, 1.0, seed=0)
  half = pipeline.SamePatientPairs(patients, 0.5, seed=0)
  positions = np.arange(2000)
  records = positions % len(patients)
  partners = np.array([always(p, r) for p, r in zip(positions, records)])
  halves = np.array([half(p, r) for p, r in zip(positions, records)])
  alone = records == 3                                   # patient 1 has one record
  assert np.all(partners[alone] == 3)
  assert np.all(partners[~alone] != records[~alone])
  assert np.all(patients[partners] == patients[records])
  # Every other record of a patient is drawn (uniformly: patient 3's 3 others ~1/3 each).
  counts = np.bincount(partners[records == 6], minlength=10)[7:]
  assert counts.min() > 0.25 * counts.sum()
  paired = halves != records
  assert 0.4 < paired[~alone].mean() < 0.6
  np.testing.assert_array_equal(halves[paired], partners[paired])
  assert [always(p, r) for p, r in zip(positions, records)] == partners.tolist()
  assert [pipeline.SamePatientPairs(patients, 1.0, seed=1)(p, r)
          for p, r in zip(positions, records)] != partners.tolist()
  # Partners only from the records the stream draws (a label-fraction subset).
  subset = pipeline.SamePatientPairs(patients, 1.0, seed=0, records=[6, 7, 0])
  assert {subset(p, 6) for p in range(50)} == {7} and subset(0, 0) == 0


def test_p1_partner_is_another_image_of_the_same_patient(synthetic_data_dir, train_records):
  records, patient_index = train_records
  config = _config(synthetic_data_dir, probability=1.0, mask=True)
  batches = _take(_iterator(config, local_device_count=2), 14)   # 112 rows > 96 images
  several = np.bincount(patient_index)[patient_index] >= 2   # per record
  checked = 0
  for batch in batches:
    assert set(batch) == {"image", "image_partner", "patient_id"}
    assert batch["image_partner"].shape == batch["image"].shape == (2, 4, 32, 32, 1)
    assert batch["image_partner"].dtype == np.uint8 and batch["patient_id"].dtype == np.int32
    for image, partner, patient in zip(_rows(batch, "image"), _rows(batch, "image_partner"),
                                       _rows(batch, "patient_id")):
      index, patient_id = records[image.tobytes()]
      partner_index, partner_patient_id = records[partner.tobytes()]
      assert partner_patient_id == patient_id and patient == patient_index[index]
      assert (partner_index != index) == several[index]
      checked += int(several[index])
  assert checked > 50
  # The images themselves are today's stream: pairing changes only view 2's source.
  plain = _take(_iterator(_config(synthetic_data_dir), local_device_count=2), 14)
  for paired, unpaired in zip(batches, plain):
    assert set(unpaired) == {"image"}
    np.testing.assert_array_equal(paired["image"], unpaired["image"])


def test_paired_stream_is_deterministic_and_resumes_exactly(synthetic_data_dir):
  config = _config(synthetic_data_dir, probability=0.5, mask=True)
  iterator = _iterator(config)
  _take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))   # what a checkpoint stores
  assert state["same_patient_prob"] == 0.5
  expected = _take(iterator, 5)
  paired = np.concatenate([_rows(b, "image") != _rows(b, "image_partner") for b in expected])
  assert 0.2 < paired.any(axis=(1, 2, 3)).mean() < 0.8    # about half of the 40 rows paired
  again = _take(_iterator(config), 8)[3:]
  resumed = _iterator(config)
  resumed.set_state(state)
  for batches in (again, _take(resumed, 5)):
    for a, b in zip(expected, batches):
      for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  with pytest.raises(ValueError, match="same_patient_prob saved 0.5 vs now 1.0"):
    _iterator(_config(synthetic_data_dir, probability=1.0)).set_state(state)


def test_paired_stream_is_the_same_on_one_or_two_processes(synthetic_data_dir):
  """1 process x 4 devices and 2 processes x 2 devices hold the same global batches."""
  config = _config(synthetic_data_dir, probability=0.5, mask=True)
  single = _take(_iterator(config, local_device_count=4), 4)
  parts = [_take(_iterator(config, process_index=p, process_count=2, local_device_count=2), 4)
           for p in range(2)]
  for step, global_batch in enumerate(single):
    for name in ("image", "image_partner", "patient_id"):
      assert parts[0][step][name].shape[:2] == (2, 2)
      np.testing.assert_array_equal(
          np.concatenate([_rows(parts[p][step], name) for p in range(2)]),
          _rows(global_batch, name), err_msg=name)


def test_patient_settings_reach_the_batch_fields_and_are_checked(synthetic_data_dir,
                                                                monkeypatch):
  config = default_config()
  assert objectives.of(config).batch_fields(config) == {}   # p = 0, no mask: images only
  config.loss.mask_same_patient, config.pairs.same_patient_prob = True, 0.5
  assert objectives.of(config).batch_fields(config) == {"patient_id": np.int32,
                                                        "image_partner": np.uint8}
  for section, field, value, message in (
      ("pairs", "same_patient_prob", 1.5, r"config.pairs.same_patient_prob=1.5: .*\[0, 1\]"),
      ("loss", "mask_same_patient", "yes", "config.loss.mask_same_patient='yes'")):
    bad = default_config()
    bad[section] = ml_collections.ConfigDict({**bad[section].to_dict(), field: value})
    with pytest.raises(ConfigError, match=message):
      objectives.of(bad).check(bad)
  # Supervised has neither negatives nor view pairs: refused, naming the field.
  for field, value in (("loss.mask_same_patient", True), ("pairs.same_patient_prob", 0.5)):
    supervised = default_config()
    supervised.objective = "supervised"
    supervised.update_from_flattened_dict({field: value})
    with pytest.raises(ConfigError, match=f"config.{field}=.*objective='supervised'"):
      objectives.of(supervised).check(supervised)
  # A config.json from before the pairs section still checks (defaults).
  old = default_config()
  del old["pairs"]
  objectives.of(old).check(old)
  # resolve (with the data, before anything compiles) needs the split's patient ids.
  config.dataset, config.data_dir = DATASET, str(synthetic_data_dir)
  assert objectives.of(config).resolve(config).to_dict() == config.to_dict()
  builder = pipeline.prepared_builder(DATASET, str(synthetic_data_dir))
  monkeypatch.setattr(builder.info, "_features", {"image": builder.info.features["image"]})
  monkeypatch.setattr(pipeline, "prepared_builder", lambda *args: builder)
  with pytest.raises(ConfigError, match=r"config.pairs.same_patient_prob=0.5 and "
                                        r"config.loss.mask_same_patient=True: dataset "
                                        r"'synthetic_cxr/32' .* has no 'patient_id'"):
    objectives.of(config).resolve(config)


class _PooledPixels:
  """Stands in for the SimCLR module: a view's projection is its 4 x 4 pooled pixels. It
  hands the views back as its new 'batch_stats', so the test sees what the loss saw."""

  def apply(self, variables, views, train, mutable):
    del variables, train, mutable
    return (_pooled(views), _pooled(views)), {"batch_stats": views}


def _pooled(views):
  n, size = views.shape[0], views.shape[1]
  return views.reshape(n, 4, size // 4, 4, size // 4).mean(axis=(2, 4)).reshape(n, 16)


def test_simclr_loss_pairs_view_2_and_masks_the_patients_of_the_batch():
  """The objective makes view 2 from 'image_partner' (same per-example keys) and passes
  'patient_id' to NT-Xent with mask_same_patient; without the settings it is today's loss."""
  config = default_config()
  config.image_size = 16
  # Small programs (two are compiled): crop and flip stay, and depend on the keys.
  config.augment.jitter_prob = config.augment.blur_prob = config.augment.rotation_degrees = 0
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (6, 16, 16, 1)).astype(np.uint8)
  partners = rng.randint(0, 256, (6, 16, 16, 1)).astype(np.uint8)
  patient_ids = np.array([0, 1, 0, 2, 1, 0], np.int32)
  key, ids = jax.random.PRNGKey(3), jnp.arange(6)
  temperature = config.loss.temperature

  def run(loss_fn, batch):
    """(loss, views 1, views 2) of `batch`."""
    loss, (views, _) = loss_fn({}, {}, batch, key, ids)
    return (float(loss), *np.split(np.asarray(views), 2))

  plain_fn = jax.jit(objectives.create_loss(config, _PooledPixels(), None))
  plain, views1, views2 = run(plain_fn, {"image": images})
  np.testing.assert_allclose(plain, losses.nt_xent(_pooled(views1), _pooled(views2),
                                                   temperature), rtol=1e-6)
  config.loss.mask_same_patient, config.pairs.same_patient_prob = True, 0.5
  paired_fn = jax.jit(objectives.create_loss(config, _PooledPixels(), None))
  # An image paired with itself (its patient has no other image) gets its own two views:
  # the per-example keys are the same with and without a partner.
  _, self1, self2 = run(paired_fn, {"image": images, "image_partner": images,
                                    "patient_id": np.arange(6, dtype=np.int32)})
  np.testing.assert_allclose(self1, views1, atol=1e-5)
  np.testing.assert_allclose(self2, views2, atol=1e-5)
  paired, partner1, partner2 = run(paired_fn, {"image": images, "image_partner": partners,
                                               "patient_id": patient_ids})
  np.testing.assert_allclose(partner1, views1, atol=1e-5)   # view 1: the image's
  assert np.max(np.abs(partner2 - views2)) > 0.1              # view 2: the partner's
  np.testing.assert_allclose(paired, losses.nt_xent(_pooled(partner1), _pooled(partner2),
                                                    temperature, patient_ids=patient_ids),
                             rtol=1e-6)
  assert abs(paired - plain) > 1e-3
  with pytest.raises(ValueError, match="mask_same_patient=True needs batches with 'patient_id'"):
    paired_fn({}, {}, {"image": images}, key, ids)
  with pytest.raises(ValueError, match="second_images must be uint8"):
    augment.make_views(key, images, ids, config.augment, 16, second_images=partners[:2])
