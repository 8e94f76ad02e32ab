"""synthetic_cxr builder and the Grain pipelines (tiny splits, 16-32 px)."""
import json
import logging

import grain
import ml_collections
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import NearestCentroid

from simclr_jax import data
from simclr_jax.data import synthetic_cxr
from simclr_jax.evaluation import algorithms

DATASET = 'synthetic_cxr/16'
SPLIT_SIZES = {'train': 60, 'validation': 10, 'test': 30}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  builder = data.get_builder(DATASET, str(data_dir), split_sizes=SPLIT_SIZES, num_workers=1)
  builder.download_and_prepare()
  return str(data_dir)


def make_config(data_dir, **overrides):
  config = ml_collections.ConfigDict(dict(
      dataset=DATASET, data_dir=data_dir, train_split='train', batch_size=8, seed=0,
      objective='simclr',
      input=dict(num_workers=0, prefetch_buffer_size=2, class_balanced=False),
      loss=dict(temperature=0.1, example_weights='none')))
  config.update_from_flattened_dict(overrides)
  return config


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_builder_features_and_splits(data_dir):
  builder = data.get_builder(DATASET, data_dir)
  features = builder.info.features
  assert features['image'].shape == (16, 16, 1) and features['image'].np_dtype == np.uint8
  assert list(features['label'].names) == list(synthetic_cxr.CLASS_NAMES)
  assert features['patient_id'].np_dtype == np.int64
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == SPLIT_SIZES
  assert data.num_examples(DATASET, data_dir, 'test') == 30
  assert data.class_names(DATASET, data_dir) == list(synthetic_cxr.CLASS_NAMES)
  record = data.data_source(DATASET, data_dir, 'train')[0]
  assert record['image'].dtype == np.uint8 and record['image'].shape == (16, 16, 1)
  # Stored examples are the generator's, and the generator is deterministic.
  source = data.data_source(DATASET, data_dir, 'train')
  generated = {example['image'].tobytes(): (example['label'], example['patient_id'])
               for example in (synthetic_cxr.make_example('train', i, 16) for i in range(60))}
  assert sorted((int(source[i]['label']), int(source[i]['patient_id'])) for i in range(60)) == (
      sorted(generated.values()))
  assert all(generated[source[i]['image'].tobytes()] == (source[i]['label'],
                                                         source[i]['patient_id'])
             for i in range(60))
  # Patient-wise: every split has its own patients, and the metadata says so.
  metadata = builder.info.metadata
  assert metadata['patients_in_several_splits'] == 0
  patients = {split: {int(r['patient_id']) for r in data.data_source(DATASET, data_dir, split)}
              for split in SPLIT_SIZES}
  assert not (patients['train'] & patients['test'] or patients['train'] & patients['validation']
              or patients['validation'] & patients['test'])
  for split, count in SPLIT_SIZES.items():
    assert metadata['prepare_counts'][split]['images'] == count
    assert metadata['prepare_counts'][split]['patients'] == len(patients[split])
  with pytest.raises(ValueError, match="split 'nope' not in dataset"):
    data.num_examples(DATASET, data_dir, 'nope')
  with pytest.raises(FileNotFoundError, match='simclr_jax.prepare synthetic_cxr'):
    data.num_examples('synthetic_cxr/32', data_dir, 'train')


def test_generator_is_deterministic():
  first = synthetic_cxr.make_example('train', 7, 32)['image']
  np.testing.assert_array_equal(first, synthetic_cxr.make_example('train', 7, 32)['image'])
  assert not np.array_equal(first, synthetic_cxr.make_example('train', 8, 32)['image'])
  assert not np.array_equal(first, synthetic_cxr.make_example('test', 7, 32)['image'])


def test_classes_differ_in_structure_not_mean_intensity():
  examples = [synthetic_cxr.make_example('train', i, 32) for i in range(400)]
  images = np.stack([e['image'][..., 0] for e in examples]).astype(np.float32) / 255
  labels = np.array([e['label'] for e in examples])
  mean_intensity = images.mean(axis=(1, 2))[:, None]
  chance = 1 / len(synthetic_cxr.CLASS_NAMES)
  for model in (NearestCentroid(), LogisticRegression()):
    accuracy = cross_val_score(model, mean_intensity, labels, cv=4).mean()
    assert accuracy < chance + 0.1, (type(model).__name__, accuracy)
  # The classes are visible structures: a linear model on standardised pixels finds them.
  pixels = images[:, ::2, ::2].reshape(len(images), -1)
  pixels = (pixels - pixels.mean(1, keepdims=True)) / pixels.std(1, keepdims=True)
  accuracy = cross_val_score(LogisticRegression(C=0.1, max_iter=500), pixels, labels, cv=4).mean()
  assert accuracy > 0.6, accuracy


def test_synthetic_patients_have_follow_up_films_of_the_same_chest():
  films = [synthetic_cxr.film_of('train', i) for i in range(400)]
  films_per_patient = np.bincount([film.patient for film in films])
  assert films_per_patient.min() >= 1 and films_per_patient.max() <= 4
  assert np.mean(films_per_patient >= 2) > 0.5
  # Balanced: every complete group of 5 patients holds k films of every class.
  assert np.ptp(np.bincount([film.label for film in films], minlength=5)) <= 4
  # A patient's films usually share its first film's finding, but not always.
  first = {}
  for film in films:
    first.setdefault(film.patient, film.label)
  same = [film.label == first[film.patient] for film in films if film.visit > 0]
  assert 0.6 < np.mean(same) < 1.0
  # Same chest: on raw standardised pixels the nearest other image is mostly one of the
  # patient's other films, far above what a random neighbour gives.
  examples = [synthetic_cxr.make_example('train', i, 16) for i in range(400)]
  pixels = np.stack([e['image'].reshape(-1) for e in examples]).astype(np.float64)
  pixels = pixels - pixels.mean(1, keepdims=True)
  rate, chance, _ = algorithms.patient_shortcut(
      pixels, [e['patient_id'] for e in examples])
  assert rate > 0.3 and chance < 0.01, (rate, chance)  # 0.51 and 0.0054 at 16 px
  assert [e['patient_id'] for e in examples] == [
      synthetic_cxr.patient_id('train', film.patient) for film in films]


def test_train_iterator_shapes_and_determinism(data_dir):
  config = make_config(data_dir)
  iterator = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=2)
  batches = take(iterator, 10)  # 80 images: crosses the 60-image epoch boundary
  assert set(batches[0]) == {'image'}
  assert batches[0]['image'].shape == (2, 4, 16, 16, 1)
  assert batches[0]['image'].dtype == np.uint8
  again = take(data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=2), 10)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  other_seed = next(data.create_train_iterator(
      make_config(data_dir, seed=1), process_index=0, process_count=1, local_device_count=2))
  assert not np.array_equal(other_seed['image'], batches[0]['image'])
  # Epoch 1 visits every training image exactly once.
  first_epoch = np.concatenate([b['image'].reshape(-1, 16 * 16) for b in batches])[:56]
  assert len(np.unique(first_epoch, axis=0)) == 56
  assert data.steps_per_epoch(config) == 60 // 8


def test_resume_from_state_yields_the_same_batches(data_dir, caplog):
  config = make_config(data_dir)
  iterator = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=1)
  take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))  # what a checkpoint stores
  expected = take(iterator, 4)
  resumed = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=1)
  resumed.set_state(state)
  for a, b in zip(expected, take(resumed, 4)):
    np.testing.assert_array_equal(a['image'], b['image'])
  # A resume that changed the batch size (allowed with --allow_config_changes=batch_size)
  # goes on with the same shuffled stream: 3 batches of 8 = 24 examples, rounded up to 2
  # batches of 16, so the next batch holds examples 32-47 (batches 4 and 5 of size 8).
  wider = data.create_train_iterator(
      make_config(data_dir, batch_size=16), process_index=0, process_count=1,
      local_device_count=1)
  with caplog.at_level(logging.WARNING):
    wider.set_state(state)
  assert 'saved at batch size 8 (3 batches, 24 examples): resuming at batch 2 of size 16 ' \
         '(8 examples skipped)' in caplog.text
  np.testing.assert_array_equal(
      take(wider, 1)[0]['image'].reshape(16, -1),
      np.concatenate([expected[1]['image'], expected[2]['image']]).reshape(16, -1))
  # Any other difference in the stream's settings is refused, naming the field.
  other = json.loads(json.dumps(state))
  other['seed'] = float(other['seed']) + 1
  with pytest.raises(ValueError, match='does not match this config: seed saved'):
    data.create_train_iterator(
        config, process_index=0, process_count=1, local_device_count=1).set_state(other)


def test_resume_with_grain_workers(data_dir):
  """Worker processes give the same stream; states move between 0 and 1 workers."""
  def make(workers):
    config = ml_collections.ConfigDict(dict(
        dataset=DATASET, data_dir=str(data_dir), train_split='train', batch_size=8, seed=3,
        input=dict(num_workers=workers, prefetch_buffer_size=2, class_balanced=False)))
    return data.create_train_iterator(
        config, process_index=0, process_count=1, local_device_count=1)

  plain_iterator = make(0)
  plain = [next(plain_iterator)['image'] for _ in range(6)]
  with_workers = make(1)
  first = [next(with_workers)['image'] for _ in range(3)]
  state = with_workers.get_state()
  rest = [next(with_workers)['image'] for _ in range(3)]
  with_workers.close()
  resumed_plain = make(0)
  resumed_plain.set_state(state)
  resumed_workers = make(1)
  resumed_workers.set_state(state)
  try:
    result = dict(
        workers_equal_plain=all(np.array_equal(a, b) for a, b in zip(first + rest, plain)),
        resume_plain=all(np.array_equal(a, next(resumed_plain)['image']) for a in rest),
        resume_workers=all(np.array_equal(a, next(resumed_workers)['image']) for a in rest))
  finally:
    resumed_workers.close()
  assert result == {'workers_equal_plain': True, 'resume_plain': True, 'resume_workers': True}


def test_process_parts_concatenate_to_the_global_batch(data_dir):
  config = make_config(data_dir, batch_size=8)
  single = take(data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=2), 9)
  parts = [take(data.create_train_iterator(
      config, process_index=p, process_count=2, local_device_count=1), 9) for p in range(2)]
  for step, global_batch in enumerate(single):
    assert parts[0][step]['image'].shape == (1, 4, 16, 16, 1)
    concatenated = np.concatenate([parts[p][step]['image'].reshape(-1, 16, 16, 1)
                                   for p in range(2)])
    np.testing.assert_array_equal(concatenated, global_batch['image'].reshape(-1, 16, 16, 1))


def test_batch_size_must_divide_over_devices(data_dir):
  with pytest.raises(ValueError, match=r'batch_size=10 .*device count 4.* 8 or 12'):
    data.create_train_iterator(make_config(data_dir, batch_size=10), process_index=0,
                               process_count=2, local_device_count=2)


def test_eval_iterator_pads_the_last_batch(data_dir):
  batches = list(data.iterate_eval(DATASET, data_dir, 'test', batch_size=8, num_shards=2))
  assert len(batches) == 4  # 30 = 8 + 8 + 8 + 6
  assert all(b['image'].shape == (8, 16, 16, 1) and b['image'].dtype == np.uint8
             for b in batches)
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 30 and not masks[-2:].any()
  last = batches[-1]
  assert (last['image'][6:] == 0).all() and (last['label'][6:] == -1).all()
  images = np.concatenate([b['image'] for b in batches])[masks]
  assert len(np.unique(images.reshape(30, -1), axis=0)) == 30  # every example once
  assert np.concatenate([b['patient_id'] for b in batches])[masks].dtype == np.int64
  with pytest.raises(ValueError, match='num_shards=4'):
    next(data.iterate_eval(DATASET, data_dir, 'test', batch_size=6, num_shards=4))


def test_example_weights():
  labels = np.array([0] * 8 + [1] * 2 + [-1] * 2)
  weights = data.example_weights(labels)
  assert weights.dtype == np.float32 and np.isclose(weights.mean(), 1)
  totals = [weights[labels == c].sum() for c in (0, 1, -1)]
  np.testing.assert_allclose(totals, totals[0], rtol=1e-6)
  multi_hot = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0]])
  weights = data.example_weights(multi_hot)
  # [1, 1] weighs like its rarer class (1 of 5), the no-finding row is its own group.
  np.testing.assert_allclose(weights / weights[0], [1, 1, 1, 4, 4])


def test_class_balanced_sampling_moves_toward_balance(data_dir):
  labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
  sampler = data.WeightedIndexSampler(data.example_weights(labels), seed=0)
  drawn = grain.MapDataset.source(sampler).map(lambda i: labels[i]).batch(50)
  drawn_labels = np.concatenate([drawn[step] for step in range(60)])  # 3000 draws
  frequencies = np.bincount(drawn_labels, minlength=3) / len(drawn_labels)
  np.testing.assert_allclose(frequencies, 1 / 3, atol=0.04)
  again = grain.MapDataset.source(data.WeightedIndexSampler(data.example_weights(labels), 0))
  assert [again[i] for i in range(200)] == [sampler[i] for i in range(200)]
  # Through the training pipeline: deterministic, resumable, per-example weights on request.
  config = make_config(data_dir, **{'input.class_balanced': True,
                                    'loss.example_weights': 'inverse_frequency'})
  iterator = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=1)
  batches = take(iterator, 4)
  assert batches[0]['weight'].shape == (1, 8) and batches[0]['weight'].dtype == np.float32
  resumed = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=1)
  resumed.set_state({'global_batches_consumed': 2, 'global_batch_size': 8, 'seed': 0,
                     'class_balanced': 1})
  np.testing.assert_array_equal(next(resumed)['image'], batches[2]['image'])


def test_supervised_batches_carry_the_labels_of_their_images(data_dir):
  assert data.supervised_target_spec(DATASET, data_dir) == ('label', 5, False)
  source = data.data_source(DATASET, data_dir, 'train')
  stored_labels = [int(source[i]['label']) for i in range(len(source))]
  np.testing.assert_allclose(data.class_frequencies(DATASET, data_dir, 'train'),
                             np.bincount(stored_labels, minlength=5) / len(source))
  label_of_image = {source[i]['image'].tobytes(): int(source[i]['label'])
                    for i in range(len(source))}
  config = make_config(data_dir, objective='supervised')
  iterator = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=2)
  batches = take(iterator, 9)  # crosses the epoch boundary
  assert set(batches[0]) == {'image', 'label'}
  assert batches[0]['label'].shape == (2, 4) and batches[0]['label'].dtype == np.int32
  for batch in batches:
    images = batch['image'].reshape(-1, 16, 16, 1)
    expected = [label_of_image[image.tobytes()] for image in images]
    np.testing.assert_array_equal(batch['label'].reshape(-1), expected)
  # The target changes neither the images, their order, nor the iterator state.
  simclr = take(data.create_train_iterator(
      make_config(data_dir), process_index=0, process_count=1, local_device_count=2), 9)
  for a, b in zip(batches, simclr):
    np.testing.assert_array_equal(a['image'], b['image'])
  state = iterator.get_state()
  assert state == {'global_batches_consumed': 9, 'global_batch_size': 8, 'seed': 0,
                   'class_balanced': 0, 'same_patient_prob': 0.0}
  resumed = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=2)
  resumed.set_state({**state, 'global_batches_consumed': 4})
  np.testing.assert_array_equal(next(resumed)['label'], batches[4]['label'])
  with pytest.raises(ValueError, match=r"config.objective='byol'; accepted: 'simclr'"):
    data.create_train_iterator(make_config(data_dir, objective='byol'), process_index=0,
                               process_count=1, local_device_count=1)


def test_split_larger_than_the_shuffle_buffer_is_written_without_tensorflow(tmp_path, monkeypatch):
  """TFDS spills splits over its 1 GB memory buffer through tf.io.gfile; we have no TF.

  The buffer is shrunk to a few records so that the spill path (bucket files on disk) runs.
  """
  import importlib.util
  from tensorflow_datasets.core import shuffle as tfds_shuffle
  from simclr_jax import data
  from simclr_jax.data.synthetic_cxr import SyntheticCxr, make_example
  assert importlib.util.find_spec("tensorflow") is None  # the situation users are in
  monkeypatch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 8 * 16 * 16)  # ~8 images
  monkeypatch.setattr(tfds_shuffle, "tf", tfds_shuffle.tf)  # undo the patch afterwards
  builder = SyntheticCxr(config="16", data_dir=str(tmp_path),
                         split_sizes={"train": 40, "validation": 1, "test": 1})
  builder.download_and_prepare()
  source = data.data_source("synthetic_cxr/16", str(tmp_path), "train")
  assert len(source) == 40
  stored = sorted(np.asarray(source[i]["image"]).tobytes() for i in range(len(source)))
  expected = sorted(make_example("train", i, 16)["image"].tobytes() for i in range(40))
  assert stored == expected
