"""Grain input pipelines over prepared TFDS ArrayRecord datasets (no TensorFlow).

Datasets are opened through `registry` (names, builders, prepared splits).

Training stream (`create_train_iterator`):

  record indices: range(N).shuffle(seed).repeat()          (or a class-balanced sampler;
                  a supervised run: positions in its training subset, train_subset.py)
    -> read record (TFDS data source, random access) -> {'image': uint8 [H, W, 1]}
       (objective 'supervised': + the target, 'labels' float32 [C] or 'label' int32;
        simclr with loss.mask_same_patient: + 'patient_id' int32, the dense patient index;
        with pairs.same_patient_prob = p > 0 the reader also gets the stream position and
        adds 'image_partner': with probability p another image of the same patient,
        drawn from (seed, position) by SamePatientPairs, else the image itself)
    -> batch(per_process_batch)                             a global batch is P such batches
    -> [process_index::process_count]                       process p keeps the p-th of them
    -> reshape to [local_devices, per_device, H, W, 1]
    -> to_iter_dataset -> mp_prefetch(num_workers)          (workers only if num_workers > 0)

Why batch-then-slice rather than grain's `ShardByJaxProcess` (slice-then-batch): with
the slice after batching, global batch g is exactly the elements [g*B, (g+1)*B) of one
shuffled stream, and process p holds its contiguous part p*B/P .. (p+1)*B/P. So the
content of every global batch depends only on the seed and the global batch size, not
on how many processes or devices share it: 1 process x 8 devices and 2 processes x 4
devices train on the same examples, in the same order (checked in tests/test_data.py).
Per-process sharding of the records instead would give each process its own shuffled
subset, so the global batches would change with the process count.

The iterator (TrainIterator, a grain DatasetIterator) has a small JSON state,
`get_state()` -> {'global_batches_consumed': k, ...}; `set_state()` restores the exact
position, also with a different number of Grain workers, processes or devices. The
partner of a same-patient pair is a function of the stream position too, so paired
streams restore and split over processes exactly like plain ones.
"""
import logging
import pathlib
import signal
import sys
from typing import Optional

from absl import flags
import grain
import numpy as np

from simclr_jax.data import train_subset
from simclr_jax.data.registry import check_labelled
from simclr_jax.data.registry import check_split
from simclr_jax.data.registry import data_source
from simclr_jax.data.registry import num_examples
from simclr_jax.data.registry import prepared_builder


def num_train_examples(config) -> int:
  """Images one epoch passes over: config.train_split, or a supervised run's subset of it
  (`train_subset`: label mode, label fraction)."""
  subset = train_subset.of_config(config)
  if subset is not None:
    return subset.num_images
  return num_examples(config.dataset, config.data_dir, config.train_split)


def steps_per_epoch(config) -> int:
  """Training steps per pass over the training images (`num_train_examples`) at the global
  config.batch_size."""
  return max(1, num_train_examples(config) // config.batch_size)


def example_weights(labels) -> np.ndarray:
  """Inverse-class-frequency weights, mean 1 over the given examples.

  Args:
    labels: int [N] class ids (-1, e.g. "several findings", is a group of its own), or
      multi-hot [N, C]; rows without a positive form an extra "no finding" group and an
      example weighs the inverse frequency of its rarest positive class.

  Returns:
    float32 [N]; the weights of every class sum to the same total in the 1-D case.
  """
  labels = np.asarray(labels)
  if labels.ndim == 1:
    _, group, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[group]
  elif labels.ndim == 2:
    positives = labels.astype(bool)
    positives = np.concatenate([positives, ~positives.any(axis=1, keepdims=True)], axis=1)
    frequency = positives.sum(axis=0).astype(np.float64)  # [C + 1]
    inverse = np.where(frequency > 0, 1.0 / np.maximum(frequency, 1), 0.0)
    weights = (positives * inverse).max(axis=1)
  else:
    raise ValueError(f'labels must be [N] or [N, C], got shape {labels.shape}')
  return (weights / weights.mean()).astype(np.float32)


class WeightedIndexSampler:
  """Random-access source of record indices drawn with probability ~ weights.

  Position i of the (infinite) stream is draw i % N of epoch i // N; an epoch's N draws
  (with replacement) come from numpy's generator seeded by (seed, epoch), so any
  position can be recomputed: deterministic, resumable and worker-independent.
  """

  def __init__(self, weights, seed: int):
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
      raise ValueError('weights must be a non-empty [N] array of non-negative numbers '
                       'with a positive sum')
    self._cumulative = np.cumsum(weights / weights.sum())
    self._cumulative[-1] = 1.0
    self._seed = int(seed)
    self._cache = (None, None)  # (epoch, its draws): one assignment, so Grain's reader
                                # threads never see one epoch's number with another's draws

  def __len__(self) -> int:
    return sys.maxsize

  def _draws(self, epoch: int) -> np.ndarray:
    cached_epoch, draws = self._cache
    if epoch != cached_epoch:
      uniform = np.random.default_rng([self._seed, epoch]).random(len(self._cumulative))
      draws = np.searchsorted(self._cumulative, uniform, side='right')
      self._cache = (epoch, draws)
    return draws

  def __getitem__(self, position: int) -> int:
    epoch, offset = divmod(int(position), len(self._cumulative))
    return int(self._draws(epoch)[offset])


class SamePatientPairs:
  """Which record's image makes the second view of the image at a stream position.

  With probability `probability` another record of the same patient among `records`
  (chosen uniformly), else the record itself (also when its patient has no other record
  there). Both draws of position i are row i % B of the [B, 2] uniforms that numpy's
  generator seeded by (seed, i // B) gives: a pure function of the stream position, so it
  is the same after a resume, in any Grain worker and on any number of processes or
  devices; and the partner a position gets at p = 0.5 is the one it gets at p = 1
  whenever it gets one. (Blocks of B positions: the stream is read in order, so one
  block's draws serve B reads.)
  """

  _STREAM = 19  # keeps these draws apart from other generators seeded by (seed, ...)
  _BLOCK = 1024

  def __init__(self, patient_index, probability: float, seed: int, records=None):
    """
    Args:
      patient_index: int [N] dense patient index of every record of the split.
      probability: p in [0, 1].
      seed: config.seed.
      records: the record indices the stream draws from (default all N): partners
        come from these only.
    """
    self._probability = float(probability)
    self._seed = int(seed)
    patient_index = np.asarray(patient_index, np.int64).reshape(-1)
    records = (np.arange(len(patient_index)) if records is None
               else np.unique(np.asarray(records, np.int64)))
    patients = patient_index[records]
    self._patient_index = patient_index
    self._grouped = records[np.argsort(patients, kind='stable')]  # records by patient
    counts = np.bincount(patients, minlength=int(patient_index.max(initial=-1)) + 1)
    self._starts = np.concatenate([[0], np.cumsum(counts)])  # patient -> its records
    self._cache = (None, None)  # (block, its draws): one assignment, so Grain's reader
                                # threads never see one block's number with another's draws

  def _draws(self, position: int) -> np.ndarray:
    block, offset = divmod(int(position), self._BLOCK)
    cached_block, draws = self._cache
    if cached_block != block:
      draws = np.random.default_rng([self._seed, self._STREAM, block]).random((self._BLOCK, 2))
      self._cache = (block, draws)
    return draws[offset]

  def __call__(self, position: int, record: int) -> int:
    patient = self._patient_index[record]
    group = self._grouped[self._starts[patient]:self._starts[patient + 1]]
    others = group[group != record]
    draw, choice = self._draws(position)
    if draw < self._probability and len(others):
      return int(others[int(choice * len(others))])
    return int(record)


class _RecordReader:
  """Reads record `index` of a split and keeps `features`, plus `per_record` values
  computed for the split ({'weight': float32 [N], 'patient_id': int32 [N]}).

  With `pairs` (a SamePatientPairs) it is mapped with the stream position
  (`map_with_index`) and adds 'image_partner', the image of the record `pairs` picks.
  Pickles without its data source (opened lazily in each process): workers of
  mp_prefetch re-open the ArrayRecord files themselves.
  """

  def __init__(self, dataset, data_dir, split, features=('image',), per_record=None,
               dtypes=None, pairs=None):
    self._location = (dataset, str(data_dir), split)
    self._features = tuple(features)
    self._dtypes = dict(dtypes or {})  # feature -> numpy dtype it is converted to
    self._per_record = dict(per_record or {})
    self._pairs = pairs
    self._source = None

  def __getstate__(self):
    return {**self.__dict__, '_source': None}

  def _record(self, index):
    if self._source is None:
      self._source = data_source(*self._location)
    return self._source[int(index)]

  def __call__(self, *position_and_index):
    index = int(position_and_index[-1])
    record = self._record(index)
    example = {name: np.asarray(record[name], self._dtypes.get(name))
               for name in self._features}
    for name, values in self._per_record.items():
      example[name] = values[index]
    if self._pairs is not None:
      partner = self._pairs(position_and_index[0], index)
      example['image_partner'] = (example['image'] if partner == index else
                                  np.asarray(self._record(partner)['image']))
    return example


class _DeviceLayout:
  """[per_process_batch, ...] -> [local_devices, per_device, ...] for every feature."""

  def __init__(self, local_device_count):
    self._local_device_count = local_device_count

  def __call__(self, batch):
    return {name: value.reshape((self._local_device_count, -1) + value.shape[1:])
            for name, value in batch.items()}


def check_batch_size(batch_size, device_count: int, process_count: int = 1) -> None:
  """The global batch must be a positive multiple of the device count: every device gets
  the same share (`[local_devices, per_device, ...]`).

  Raises:
    ValueError: one line naming config.batch_size and the nearest sizes that divide.
  """
  if not (isinstance(batch_size, int) and batch_size > 0):
    raise ValueError(
        f'config.batch_size={batch_size!r} must be a positive number of images per step '
        f'(global, over all {device_count} devices), e.g. {32 * device_count}.')
  if batch_size % device_count:
    lower = batch_size // device_count * device_count
    nearest = sorted({max(lower, device_count), lower + device_count})
    devices = f'the {device_count} devices' + (
        f' of {process_count} processes' if process_count > 1 else '')
    raise ValueError(
        f'config.batch_size={batch_size} (global) is not divisible by {devices}; use a '
        f'multiple of the device count {device_count}, e.g. '
        f'{" or ".join(map(str, nearest))}.')


def balance_labels(dataset: str, data_dir: str, split: str) -> np.ndarray:
  """Labels used for balancing, in record order: multi-hot 'labels' [N, C] if the dataset
  has them (NIH), else 'label' [N]. Read once, then cached next to the dataset files."""
  builder = prepared_builder(dataset, str(data_dir))
  feature = 'labels' if 'labels' in builder.info.features else 'label'
  return split_columns(dataset, data_dir, split, (feature,))[feature]


def patient_index(dataset: str, data_dir: str, split: str, needed_by: str = '') -> np.ndarray:
  """int32 [N]: the patient of every record of `split` as a dense index 0 .. P - 1 (in the
  order of the patient ids), from the records' 'patient_id' (read once, then cached next
  to the dataset files).

  Raises:
    ValueError: the dataset has no 'patient_id' (prepared before patient ids), naming
      `needed_by` (the setting that asked).
  """
  builder = prepared_builder(dataset, str(data_dir))
  check_split(builder, dataset, split)
  if 'patient_id' not in builder.info.features:
    raise ValueError(
        f'{needed_by or "patient_index"}: dataset {dataset!r} in {data_dir} has no '
        f'\'patient_id\' feature (prepared before patient ids); prepare it again '
        f'(python -m simclr_jax.prepare) or leave the setting off.')
  patient_ids = split_columns(dataset, data_dir, split, ('patient_id',))['patient_id']
  return np.unique(patient_ids, return_inverse=True)[1].reshape(-1).astype(np.int32)


def split_columns(dataset: str, data_dir: str, split: str, features) -> dict:
  """{feature: [N, ...] in record order} of per-example features of a split (labels,
  patient ids; not images). Read in one pass over the records, then cached next to the
  dataset files (`<split>-<feature>.npy`)."""
  builder = prepared_builder(dataset, str(data_dir))
  check_split(builder, dataset, split)
  caches = {feature: pathlib.Path(builder.data_path) / f'{split}-{feature}.npy'
            for feature in features}
  columns = {feature: np.load(cache) for feature, cache in caches.items() if cache.exists()}
  missing = [feature for feature in features if feature not in columns]
  if not missing:
    return columns
  source = builder.as_data_source(split)
  chunks = {feature: [] for feature in missing}
  for start in range(0, len(source), 1024):
    records = source.__getitems__(range(start, min(start + 1024, len(source))))
    for feature in missing:
      chunks[feature].append(np.stack([np.asarray(record[feature]) for record in records]))
  for feature in missing:
    columns[feature] = np.concatenate(chunks[feature]) if chunks[feature] else np.zeros(0)
    try:  # atomic: several processes may do this at once
      temporary = caches[feature].with_suffix(f'.tmp{np.random.randint(1 << 30)}.npy')
      np.save(temporary, columns[feature])
      temporary.rename(caches[feature])
    except OSError as e:  # read-only data_dir: fine, just not cached
      logging.info('could not cache %s: %s', caches[feature], e)
  return columns


def supervised_target_spec(dataset: str, data_dir: str) -> tuple:
  """What the supervised objective learns to predict.

  Returns:
    (feature_name, num_classes, multi_label): ('labels', 14, True) for a dataset with a
    multi-hot 'labels' feature (NIH: the 14 findings), else ('label', num_classes, False)
    for its single-label ClassLabel 'label' (synthetic_cxr: 5 classes).
  """
  check_labelled(dataset, data_dir, "objective='supervised'")
  features = prepared_builder(dataset, str(data_dir)).info.features
  if 'labels' in features:
    return 'labels', int(features['labels'].shape[-1]), True
  if 'label' in features:
    return 'label', int(features['label'].num_classes), False
  raise ValueError(f'dataset {dataset!r} has neither a multi-hot \'labels\' nor a '
                   f'\'label\' feature; features: {sorted(features.keys())}')


def class_frequencies(dataset: str, data_dir: str, split: str) -> np.ndarray:
  """Fraction of the examples of `split` in each class of the supervised target.

  Multi-label ('labels'): the fraction of examples positive for each class (a row may
  count for several classes, or none). Single-label ('label'): the fraction of the
  examples with a defined label (>= 0) that are of each class; these sum to 1. A class
  absent from the split has frequency 0: inverse-frequency weights must guard it.

  Returns:
    float64 [num_classes], in the class order of supervised_target_spec.
  """
  _, num_classes, multi_label = supervised_target_spec(dataset, data_dir)
  labels = balance_labels(dataset, data_dir, split)  # same feature, cached beside the data
  if multi_label:
    return labels.astype(bool).mean(axis=0).astype(np.float64) if len(labels) else (
        np.zeros(num_classes))
  defined = labels[labels >= 0]
  counts = np.bincount(defined, minlength=num_classes).astype(np.float64)
  return counts / max(1, len(defined))


def check_labels_needed(config) -> None:
  """Raises ValueError (one line) when the config samples or weighs by labels (or learns
  them) on an unlabelled dataset."""
  from simclr_jax import objectives   # pylint: disable=g-import-not-at-top  # jax, lazily
  needs = [name for name, wanted in (
      ('config.input.class_balanced=True', config.get('input', {}).get('class_balanced')),
      ('config.loss.example_weights=inverse_frequency',
       str(config.get('loss', {}).get('example_weights', 'none')) != 'none'),
      (f"config.objective={objectives.of(config).name!r}",
       objectives.trains_on_labels(config)),
      (f"config.supervised.label_fraction={_label_fraction(config)}",
       _label_fraction(config) != 1.0)) if wanted]
  if needs:
    check_labelled(config.dataset, config.data_dir, ' and '.join(needs))


def _label_fraction(config):
  return (config.get('supervised') or {}).get('label_fraction', 1.0)


class _RecordOf:
  """Position in the training subset -> record index of the split."""

  def __init__(self, records):
    self._records = np.asarray(records, np.int64)

  def __call__(self, position):
    return int(self._records[int(position)])


def create_train_iterator(config, *, process_index=None, process_count=None,
                          local_device_count=None):
  """Infinite, deterministic, checkpointable training iterator of this process's batches.

  Args:
    config: reads dataset, data_dir, train_split, batch_size (GLOBAL), seed,
      input.num_workers, input.prefetch_buffer_size, input.class_balanced and the batch
      fields of its objective (`objectives.of(config).batch_fields`: simclr's 'weight'
      with loss.example_weights='inverse_frequency', 'patient_id' with
      loss.mask_same_patient, 'image_partner' with pairs.same_patient_prob > 0; the
      supervised target, see supervised_target_spec); a field it lacks has its
      config.py default.
    process_index, process_count, local_device_count: default jax.process_index(),
      jax.process_count(), jax.local_device_count().

  Returns:
    TrainIterator (a grain DatasetIterator) yielding {'image': uint8
    [local_devices, per_device, H, W, 1]}
    (+ 'weight' float32 [local_devices, per_device] when loss weights are requested;
    + for objective 'supervised' the target: 'labels' float32 multi-hot
    [local_devices, per_device, num_classes] or 'label' int32 [local_devices, per_device];
    + 'patient_id' int32 [local_devices, per_device] and 'image_partner' uint8 like
    'image', see above).
    Neither changes the iterator's state or which images a batch holds.
    A supervised run draws only the records of its training subset (`train_subset`:
    label_fraction, and the records its label_mode keeps; with a label mode 'label' is
    the mode's class).

  Raises:
    ValueError: batch_size not divisible by the total device count, an unknown objective.
  """
  if process_index is None or process_count is None or local_device_count is None:
    import jax  # pylint: disable=g-import-not-at-top  # lazily: the builders do not need jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local_device_count = (
        jax.local_device_count() if local_device_count is None else local_device_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count})')
  from simclr_jax import objectives   # pylint: disable=g-import-not-at-top  # jax, lazily
  from simclr_jax.config import with_defaults   # pylint: disable=g-import-not-at-top
  config = with_defaults(config)
  check_batch_size(config.batch_size, process_count * local_device_count, process_count)
  per_process_batch = config.batch_size // process_count
  num_workers = int(config.input.num_workers)
  prefetch = max(1, int(config.input.prefetch_buffer_size))
  class_balanced = bool(config.input.class_balanced)
  # What the objective's loss reads besides the image: record features ('label', 'labels')
  # converted to a dtype, and 'weight' (per-example loss weights, computed here).
  fields = objectives.of(config).batch_fields(config)
  loss_weights = fields.pop('weight', None) is not None
  patient_ids = fields.pop('patient_id', None) is not None
  pairs_probability = float(config.pairs.same_patient_prob) if fields.pop(
      'image_partner', None) is not None else 0.0

  count = num_examples(config.dataset, config.data_dir, config.train_split)
  # A supervised run's subset (label mode, label fraction); None: every record of the split.
  subset = train_subset.of_config(config)
  subset_records = None if subset is None or subset.covers_split else subset.indices
  targets = None if subset is None else subset.targets
  if targets is not None:   # the label mode's class, not a feature of the record
    fields.pop('label', None)
  labels = None
  if class_balanced or loss_weights:
    labels = balance_labels(config.dataset, config.data_dir, config.train_split)
  if class_balanced:
    drawn = labels if subset_records is None else labels[subset_records]
    indices = grain.MapDataset.source(WeightedIndexSampler(example_weights(drawn), config.seed))
  else:
    size = count if subset_records is None else subset_records.size
    indices = grain.MapDataset.range(size).shuffle(seed=config.seed).repeat()
  if subset_records is not None:
    indices = indices.map(_RecordOf(subset_records))
  per_record = {}
  if loss_weights:
    per_record['weight'] = example_weights(labels)
  if targets is not None:   # the label mode's class of every record
    per_record['label'] = targets.astype(np.int32)
  patients = None
  if patient_ids or pairs_probability > 0:
    patients = patient_index(config.dataset, config.data_dir, config.train_split,
                             'config.pairs / config.loss.mask_same_patient')
  if patient_ids:
    per_record['patient_id'] = patients
  pairs = (SamePatientPairs(patients, pairs_probability, config.seed, subset_records)
           if pairs_probability > 0 else None)
  reader = _RecordReader(
      config.dataset, config.data_dir, config.train_split, features=('image', *fields),
      per_record=per_record, dtypes=fields, pairs=pairs)
  # With pairs the reader also gets the stream position, which fixes the partner.
  records = indices.map_with_index(reader) if pairs else indices.map(reader)
  batches = (records
             .batch(per_process_batch, drop_remainder=True)
             [process_index::process_count]
             .map(_DeviceLayout(local_device_count)))
  read_options = grain.ReadOptions(num_threads=min(prefetch, 4), prefetch_buffer_size=prefetch)
  worker_options = grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=prefetch) if num_workers > 0 else None
  fingerprint = {'global_batch_size': int(config.batch_size), 'seed': int(config.seed),
                 'class_balanced': int(class_balanced),
                 'same_patient_prob': pairs_probability}
  return TrainIterator(batches, read_options, worker_options, fingerprint)


def _ignore_interrupts_in_worker(worker_index: int, worker_count: int) -> None:
  """Grain workers ignore SIGINT: a terminal's Ctrl-C reaches the whole process group,
  and the trainer (not its loader processes) decides how to stop (save, exit 130)."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)


class TrainIterator(grain.DatasetIterator):
  """The training iterator: a grain DatasetIterator with a portable state.

  Its state is the number of global batches consumed (plus the batch size, seed, sampling
  mode and same-patient pair probability it was made with, checked on restore), so it
  restores exactly on any
  number of Grain workers, processes or devices: the pipeline up to the batches is a
  random-access MapDataset, and restoring starts it at that batch.
  """

  def __init__(self, batches: grain.MapDataset, read_options: grain.ReadOptions,
               worker_options: grain.MultiprocessingOptions | None, fingerprint: dict):
    super().__init__()
    self._batches = batches
    self._read_options = read_options
    self._worker_options = worker_options
    self._fingerprint = dict(fingerprint)
    self._batches_consumed = 0
    self._iterator = None

  def _start(self):
    stream = self._batches[self._batches_consumed:].to_iter_dataset(self._read_options)
    if self._worker_options is not None:
      if not flags.FLAGS.is_parsed():  # grain reads absl flags; outside an absl app: defaults
        flags.FLAGS.mark_as_parsed()
      stream = stream.mp_prefetch(self._worker_options,
                                  worker_init_fn=_ignore_interrupts_in_worker)
    self._iterator = iter(stream)

  def __next__(self) -> dict:
    self._assert_not_closed()
    if self._iterator is None:
      self._start()
    batch = next(self._iterator)
    self._batches_consumed += 1
    return batch

  def get_state(self) -> dict:
    return {'global_batches_consumed': self._batches_consumed, **self._fingerprint}

  def set_state(self, state: dict) -> None:
    """Restores a position; one saved at another global batch size (a resume that changed
    config.batch_size) becomes the same number of examples of the same shuffled stream,
    rounded up to a whole batch (the few examples in between are skipped)."""
    mismatched = {key: (state.get(key), value) for key, value in self._fingerprint.items()
                  if key in state and float(state[key]) != value}
    saved_batch = int(mismatched.pop('global_batch_size', (0, 0))[0])
    if mismatched:
      raise ValueError(
          'data iterator state does not match this config: '
          + ', '.join(f'{key} saved {saved} vs now {now}'
                      for key, (saved, now) in mismatched.items()))
    self._stop()
    self._batches_consumed = int(state['global_batches_consumed'])
    if saved_batch:
      examples = self._batches_consumed * saved_batch
      batch = self._fingerprint['global_batch_size']
      self._batches_consumed = -(-examples // batch)
      logging.warning('Data position saved at batch size %d (%d batches, %d examples): '
                      'resuming at batch %d of size %d (%d examples skipped).', saved_batch,
                      int(state['global_batches_consumed']), examples, self._batches_consumed,
                      batch, self._batches_consumed * batch - examples)

  def _stop(self):
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def close(self) -> None:
    self._stop()
    super().close()

  def __str__(self) -> str:
    return f'TrainIterator(batches_consumed={self._batches_consumed}, {self._fingerprint})'


def iterate_eval(dataset: str, data_dir: str, split: str, batch_size: int, num_shards: int = 1,
                 start: int = 0, stop: Optional[int] = None):
  """Every example of `split` (or of records [start, stop)) exactly once, in record order, in
  fixed-size batches.

  Args:
    dataset, data_dir, split: the prepared TFDS split.
    batch_size: rows per batch; the last batch is padded with zeros to this size.
    num_shards: devices the caller splits each batch over; batch_size must be a
      multiple of it (so `image.reshape(num_shards, -1, ...)` always works).
    start, stop: the records to read (default all), e.g. one process's block.

  Yields:
    dicts of numpy: 'image' uint8 [B, H, W, 1], 'mask' bool [B] (False on padding),
    'label' int [B] (-1 where undefined), and every other feature of the dataset
    (NIH: 'labels' [B, 14], 'no_finding', 'patient_id', ...).
  """
  if batch_size <= 0 or batch_size % num_shards:
    raise ValueError(f'batch_size={batch_size} must be a positive multiple of '
                     f'num_shards={num_shards}')
  source = data_source(dataset, data_dir, split)
  batches = grain.MapDataset.source(source)[start:stop].batch(batch_size, drop_remainder=False)
  for batch in batches.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                                          prefetch_buffer_size=2)):
    rows = len(batch['image'])
    mask = np.zeros(batch_size, bool)
    mask[:rows] = True
    padded = {}
    for name, value in batch.items():
      value = np.asarray(value)
      if rows < batch_size:
        pad = np.zeros((batch_size - rows,) + value.shape[1:], value.dtype)
        if name == 'label':
          pad -= 1
        value = np.concatenate([value, pad])
      padded[name] = value
    if 'label' not in padded:
      padded['label'] = np.full(batch_size, -1, np.int64)
    padded['mask'] = mask
    yield padded
