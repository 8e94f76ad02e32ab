"""Which records of the train split a supervised run trains on, and their targets.

A supervised (fine-tuning) run trains on the labelled train split, narrowed by two settings
of `config.supervised`:

  label_mode      '' = the dataset's own target (multi-hot findings, or its 'label');
                  a label mode of data/labels.py (e.g. 'binary:No Finding'): one class per
                  record, and the records the mode drops (-1) are not trained on.
  label_fraction  F in (0, 1]: a seeded PATIENT-WISE subsample of those records
                  (`subsets.patient_subsample`, seed `subset_seed`): round(F x patients)
                  patients with all their images, plus one patient holding a positive of
                  every class the draw missed, where the split has one.

The subset depends only on the dataset, the split, the label mode, F and subset_seed, never
on the init or the training seed, so the scratch, SimCLR and ImageNet rows of a
label-efficiency table train on the same images. `TrainSubset.record()` is what config.json
records (config.supervised.subset): image and patient counts, positives per class, the
classes without a positive, and a sha256 of the chosen records.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from typing import Optional

import numpy as np

from simclr_jax.data import labels as labels_lib
from simclr_jax.data import subsets
from simclr_jax.data.registry import check_labelled
from simclr_jax.data.registry import prepared_builder


@dataclasses.dataclass(frozen=True)
class TrainSubset:
  """The records of a split a supervised run trains on.

  Attributes:
    dataset, split, label_mode, fraction, seed: what chose it.
    indices: sorted int64 record indices of the split.
    targets: [records of the split] class id of every record under the label mode (-1 =
      dropped); None without a label mode (the batches carry the record's own target).
    class_names: the target's classes (multi-label data without a mode: the findings).
    positives: images of the subset positive for each class.
    multi_label: the target is the multi-hot findings (sigmoid per finding).
    num_patients: patients of the subset.
    split_images, split_patients: of the records the target keeps in the whole split.
    classes_without_positives: classes with no positive in the subset (the kept records
      of the split have none either: it cannot be helped).
    ids_sha256: sha256 of the dataset name, split and the record indices.
    frequencies: the target's class frequencies in the subset (inverse-frequency weights).
  """
  dataset: str
  split: str
  label_mode: str
  fraction: float
  seed: int
  indices: np.ndarray
  targets: Optional[np.ndarray]
  class_names: tuple
  positives: tuple
  multi_label: bool
  num_patients: int
  split_images: int
  split_patients: int
  classes_without_positives: tuple
  ids_sha256: str
  frequencies: tuple
  covers_split: bool   # every record of the split, no target of its own: the stream of old

  @property
  def num_images(self) -> int:
    return int(self.indices.size)

  def record(self) -> dict:
    """The fields of config.supervised.subset."""
    return {"num_images": self.num_images, "num_patients": self.num_patients,
            "class_names": tuple(self.class_names), "positives": tuple(self.positives),
            "classes_without_positives": tuple(self.classes_without_positives),
            "ids_sha256": self.ids_sha256}

  def describe(self) -> str:
    """One line for the log."""
    mode = f"label mode {self.label_mode!r}" if self.label_mode else "the dataset's own target"
    positives = ", ".join(f"{name} {count}" for name, count in zip(self.class_names,
                                                                   self.positives))
    return (f"training subset of {self.dataset} split {self.split!r}: {self.num_images} images "
            f"of {self.num_patients} patients (label_fraction {self.fraction:g} of "
            f"{self.split_images} images / {self.split_patients} patients, subset_seed "
            f"{self.seed}, {mode}); positives per class: {positives}; ids sha256 "
            f"{self.ids_sha256[:16]}...")


def _field(name: str) -> str:
  return f"config.supervised.{name}"


@functools.lru_cache(maxsize=16)
def select(dataset: str, data_dir: str, split: str, label_mode: str, fraction: float,
           seed: int) -> TrainSubset:
  """The training subset (see the module docstring); cached per arguments.

  Raises:
    ValueError: one line naming the config field: a fraction outside (0, 1], a label mode
      the dataset cannot give, one that keeps no record of the split.
  """
  from simclr_jax.data import pipeline   # the cached column reader
  if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
    raise ValueError(f"{_field('label_fraction')}={fraction!r}: must be in (0, 1], the "
                     f"fraction of the train split's patients to train on, e.g. 0.1.")
  check_labelled(dataset, data_dir, "config.objective='supervised'")
  features = prepared_builder(dataset, str(data_dir)).info.features
  names = [name for name in ("labels", "label", "patient_id") if name in features]
  columns = pipeline.split_columns(dataset, data_dir, split, tuple(names))
  count = len(next(iter(columns.values()))) if columns else 0
  class_names = (list(features["label"].names) if "label" in features else None)
  multi_label = "labels" in columns and np.ndim(columns["labels"]) == 2
  targets = None
  if label_mode:
    try:
      label_set = labels_lib.select_labels(label_mode, columns, class_names)
    except ValueError as error:
      message = str(error).replace("--label_mode=", "")
      raise ValueError(f"{_field('label_mode')}={label_mode!r} on {dataset}: "
                       f"{message}") from None
    targets = label_set.labels
    kept = targets >= 0
    names_of_classes = tuple(label_set.class_names)
    multi_label = False
    positives_of = np.zeros((count, len(names_of_classes)), bool)
    positives_of[np.flatnonzero(kept), targets[kept]] = True
  elif multi_label:
    names_of_classes = labels_lib.multi_label_names(columns["labels"].shape[1],
                                                    class_names)[0]
    positives_of = columns["labels"].astype(bool)
    kept = np.ones(count, bool)
  else:
    label = np.asarray(columns["label"]).astype(np.int64)
    names_of_classes = tuple(map(str, class_names))
    kept = label >= 0
    positives_of = np.zeros((count, len(names_of_classes)), bool)
    positives_of[np.flatnonzero(kept), label[kept]] = True
  candidates = np.flatnonzero(kept)
  if candidates.size == 0:
    what = (f"{_field('label_mode')}={label_mode!r} keeps" if label_mode else
            "the dataset's target defines")
    raise ValueError(f"{what} no image of {dataset} split {split!r} ({count} images): "
                     f"nothing to train on; choose another label mode or split.")
  patient_ids = (np.asarray(columns["patient_id"]) if "patient_id" in columns
                 else np.arange(count))   # without patient ids: every image its own patient
  drawn = subsets.patient_subsample(patient_ids[candidates], positives_of[candidates],
                                    float(fraction), seed=int(seed))
  indices = np.sort(candidates[drawn]).astype(np.int64)
  positives = positives_of[indices].sum(axis=0)
  if multi_label:
    frequencies = positives / max(1, indices.size)
  else:
    frequencies = positives / max(1, int(positives.sum()))
  digest = hashlib.sha256(f"{dataset}:{split}:".encode() + indices.astype("<i8").tobytes())
  subset = TrainSubset(
      dataset=dataset, split=split, label_mode=label_mode, fraction=float(fraction),
      seed=int(seed), indices=indices, targets=targets, class_names=tuple(names_of_classes),
      positives=tuple(int(p) for p in positives), multi_label=multi_label,
      num_patients=int(np.unique(patient_ids[indices]).size),
      split_images=int(candidates.size),
      split_patients=int(np.unique(patient_ids[candidates]).size),
      classes_without_positives=tuple(name for name, p in zip(names_of_classes, positives)
                                      if p == 0),
      ids_sha256=digest.hexdigest(),
      frequencies=tuple(float(f) for f in frequencies),
      covers_split=targets is None and indices.size == count)
  return subset


def of_config(config) -> Optional[TrainSubset]:
  """The subset a config trains on: None for objectives without labels (SimCLR)."""
  from simclr_jax import objectives   # jax and the models: only when a run asks
  from simclr_jax.config import with_defaults
  config = with_defaults(config)
  if not objectives.trains_on_labels(config):
    return None
  supervised = config.supervised
  return select(config.dataset, str(config.data_dir), config.train_split,
                str(supervised.label_mode or ""), supervised.label_fraction,
                int(supervised.subset_seed))


def log(subset: TrainSubset) -> None:
  """The subset's line, and a warning for classes it cannot teach."""
  logging.info("%s", subset.describe())
  if subset.classes_without_positives:
    logging.warning("The training subset has no positive of %s: the %s records of split %r "
                    "kept by the target have none, so the classifier cannot learn %s.",
                    ", ".join(subset.classes_without_positives), subset.split_images,
                    subset.split, "it" if len(subset.classes_without_positives) == 1 else
                    "them")
