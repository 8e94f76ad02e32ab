"""Frozen features of a dataset split, on every local device and every process.

big_vision's evaluator habit (`evaluators/fewshot_lsr.py`): representations are computed
on the accelerators in fixed-size batches; the padded final batch carries a mask, so every
example counts exactly once and the dataset order is kept.

Several processes (`jax.distributed`): process p encodes the p-th contiguous block of the
split's records on its local devices; the blocks are then gathered
(`multihost_utils.process_allgather`) and concatenated in process order, so every process
holds the whole split's features in record order. Process 0 writes the report.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Optional, Sequence

import flax
import jax
import numpy as np

from simclr_jax.runtime.progress import Progress

# Features that are bookkeeping of the loader, not per-example attributes to keep.
_LOADER_KEYS = ("image", "mask")


def extract_features(encode_fn: Callable, variables: Any, batches: Iterable[dict], *,
                     devices: Optional[Sequence[jax.Device]] = None,
                     progress: Optional[Progress] = None, replicated: bool = False) -> dict:
  """Runs `encode_fn` over batches on all local devices (pmap); keeps masked-in rows.

  Each batch is {'image': [B, ...], 'mask': [B] bool, other per-example arrays}. B is
  padded up to a multiple of the device count (padding masked out), split over the
  devices, and only rows whose mask is True are kept, in order, so every example counts
  exactly once and the order of the dataset is preserved.

  Args:
    encode_fn: (variables, images [b, ...]) -> [b, F], or a dict of such arrays with
      'features' among them (e.g. 'logits' of a classifier head); pure, traced once per
      shape.
    variables: pytree, replicated to every device once.
    batches: iterable of batches (e.g. `data.iterate_eval`).
    devices: default jax.local_devices().
    progress: advanced by one per batch.
    replicated: `variables` already carry the leading local-device axis (the trainer's
      pmap layout) and `encode_fn` is already pmapped over the local devices (the online
      monitor keeps one compiled function); both are used as they are.

  Returns:
    {'features': [n, F] float32 (and every other output of encode_fn), and every other
    batch key concatenated over the kept rows}.
  """
  devices = list(devices or jax.local_devices())
  num_devices = len(devices)
  p_encode = encode_fn
  if not replicated:
    variables = flax.jax_utils.replicate(variables, devices=devices)
    p_encode = jax.pmap(encode_fn, devices=devices)
  kept = collections.defaultdict(list)
  pending = None  # (device features, mask, batch size) of the previous batch

  def collect(pending):
    outputs, mask, size = pending
    if not isinstance(outputs, dict):
      outputs = {"features": outputs}
    for key, value in outputs.items():
      value = np.asarray(value)  # [devices, per_device, F]
      kept[key].append(value.reshape(-1, value.shape[-1])[:size][mask])
    if progress is not None:
      progress.update(1)

  for batch in batches:
    images = np.asarray(batch["image"])
    size = images.shape[0]
    mask = (np.asarray(batch["mask"], bool).reshape(-1) if "mask" in batch
            else np.ones(size, bool))
    if mask.shape[0] != size:
      raise ValueError(f"batch 'mask' has {mask.shape[0]} rows but 'image' has {size}.")
    padded_size = -(-size // num_devices) * num_devices
    if padded_size != size:
      images = np.concatenate(
          [images, np.zeros((padded_size - size, *images.shape[1:]), images.dtype)])
    device_features = p_encode(
        variables, images.reshape(num_devices, padded_size // num_devices, *images.shape[1:]))
    # Copy the previous batch to the host while this one runs.
    if pending is not None:
      collect(pending)
    pending = (device_features, mask, size)
    for key, value in batch.items():
      if key not in _LOADER_KEYS:
        kept[key].append(np.asarray(value)[mask])
  if pending is not None:
    collect(pending)
  if not kept["features"]:
    raise ValueError("extract_features: the dataset split yielded no batches.")
  return {key: np.concatenate(values) for key, values in kept.items()}


def padded_batches(images: np.ndarray, batch_size: int) -> Iterable[dict]:
  """{'image' [batch_size, ...], 'mask' [batch_size]} batches of in-memory images, the last
  one padded with zeros (masked out)."""
  for start in range(0, images.shape[0], batch_size):
    batch = images[start:start + batch_size]
    mask = np.arange(batch_size) < batch.shape[0]
    padding = np.zeros((batch_size - batch.shape[0],) + batch.shape[1:], batch.dtype)
    yield {"image": np.concatenate([batch, padding]), "mask": mask}


def process_block(num_examples: int, process_index: int, process_count: int
                  ) -> tuple[int, int]:
  """[start, stop) of the records process `process_index` encodes (contiguous blocks)."""
  per_process = -(-num_examples // process_count)
  start = min(num_examples, process_index * per_process)
  return start, min(num_examples, start + per_process)


def _gather_across_processes(local: dict) -> dict:
  """Concatenates every process's examples in process order (all processes get all).

  Arrays are padded to the longest block for `process_allgather`; text columns travel as
  fixed-width bytes.
  """
  from jax.experimental import multihost_utils
  count = int(local["features"].shape[0])
  counts = np.asarray(multihost_utils.process_allgather(np.int32(count))).reshape(-1)
  longest = int(counts.max())
  gathered = {}
  for key in sorted(local):
    value = np.asarray(local[key])
    text = value.dtype.kind in "USO"
    if text:
      value = np.asarray([item.decode() if isinstance(item, bytes) else str(item)
                          for item in value.reshape(-1)])
      value = np.char.encode(value, "utf-8") if value.size else value.astype("S1")
      width = int(np.asarray(multihost_utils.process_allgather(
          np.int32(value.dtype.itemsize))).max())
      value = np.frombuffer(value.astype(f"S{width}").tobytes(), np.uint8).reshape(-1, width)
    padded = np.zeros((longest,) + value.shape[1:], value.dtype)
    padded[:count] = value
    every = np.asarray(multihost_utils.process_allgather(padded))  # [processes, longest, ...]
    value = np.concatenate([every[p, :counts[p]] for p in range(counts.size)])
    if text:
      value = np.char.decode(value.view(f"S{value.shape[1]}").reshape(-1), "utf-8")
    gathered[key] = value
  return gathered


def read_split_labels(dataset: str, data_dir: str, split: str, *,
                      max_examples: Optional[int] = None, batch_size: int = 256) -> dict:
  """The per-example attributes of a split (labels, patient ids, ...) without encoding
  its images: for evaluators that need the train split's labels only (the classifier's
  classes without train positives)."""
  from simclr_jax import data
  count = data.num_examples(dataset, data_dir, split)
  if max_examples:
    count = min(count, int(max_examples))
  kept = collections.defaultdict(list)
  for batch in data.iterate_eval(dataset, data_dir, split, batch_size, stop=count):
    mask = np.asarray(batch["mask"], bool)
    for key, value in batch.items():
      if key not in _LOADER_KEYS:
        kept[key].append(np.asarray(value)[mask])
  return {key: np.concatenate(values) for key, values in kept.items()}


def encode_split(encode_fn: Callable, variables: Any, dataset: str, data_dir: str, split: str,
                 *, batch_size: int = 256, max_examples: Optional[int] = None,
                 progress_desc: Optional[str] = None) -> dict:
  """Features and per-example attributes of one split (see `extract_features`).

  Args:
    encode_fn, variables: from `encoders.make_encode_fn`.
    dataset, data_dir, split: the prepared TFDS split.
    batch_size: images per step on this process (rounded up to the local device count).
    max_examples: only the first N records of the split.
    progress_desc: show progress (a bar on a terminal, else log lines) under this name.

  Returns:
    {'features': [n, F] float32, 'label', ... per-example arrays}, n = the whole split (or
    max_examples), in record order, on every process.
  """
  from simclr_jax import data
  num_devices = jax.local_device_count()
  batch_size = max(num_devices, -(-batch_size // num_devices) * num_devices)
  count = data.num_examples(dataset, data_dir, split)
  if max_examples:
    count = min(count, int(max_examples))
  if count < jax.process_count():
    raise ValueError(f"split {split!r} of {dataset} has {count} examples to evaluate, fewer "
                     f"than the {jax.process_count()} processes.")
  start, stop = process_block(count, jax.process_index(), jax.process_count())
  progress = None
  if progress_desc:
    total = -(-(stop - start) // batch_size)
    progress = Progress(total, desc=progress_desc, unit="batch", every=max(1, total // 10),
                        enabled=jax.process_index() == 0)
  local = extract_features(encode_fn, variables,
                           data.iterate_eval(dataset, data_dir, split, batch_size,
                                             start=start, stop=stop),
                           progress=progress)
  if progress is not None:
    progress.close(f"{stop - start} images in {progress.elapsed():.1f}s")
  if jax.process_count() > 1:
    return _gather_across_processes(local)
  return local
