"""Patient-wise subsets: the hash split of a dataset's patients into train / validation /
test, and a label fraction of a split that keeps every patient whole."""
from __future__ import annotations

import collections
import hashlib

import numpy as np


def _patient_fraction(patient_id: int, salt: str) -> float:
  digest = hashlib.sha256(f'{salt}:{patient_id}'.encode()).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def patient_split(patient_id: int, test_fraction: float = 0.2,
                  validation_fraction: float = 0.1, official_test: bool | None = None,
                  seed: int = 0) -> str:
  """Deterministic patient-wise split: 'train', 'validation' or 'test'.

  The patient's place is a SHA-256 hash of its id, so the split is the same on every
  machine and does not depend on which other patients are there.

  Args:
    patient_id: the patient's int64 id.
    test_fraction: fraction of patients in test (ignored when `official_test` is given).
    validation_fraction: fraction of the non-test patients in validation.
    official_test: membership in an official test list, if one is used.
    seed: another seed gives another split (0: NIH's split of its Patient IDs).
  """
  salt = '' if not seed else f'{int(seed)}:'
  if official_test is None:
    official_test = _patient_fraction(patient_id, f'{salt}test') < test_fraction
  if official_test:
    return 'test'
  if _patient_fraction(patient_id, f'{salt}validation') < validation_fraction:
    return 'validation'
  return 'train'


def patient_subsample(patient_ids, targets, fraction: float, *, seed: int = 0) -> np.ndarray:
  """Indices of a patient-wise random subsample of the training set.

  Draws round(fraction * num_patients) patients (at least one) with a fixed seed and
  keeps all their images, so no patient straddles the kept/unused split. Then, for every
  class that has a positive in the full set but none in the subsample, one more patient
  holding a positive of that class is added (drawn with the same generator), so each
  class can be learnt "where possible". The result can therefore be slightly larger
  than the fraction asks for; the caller reports the actual count.

  Args:
    patient_ids: [n] any hashable ids (one per image); use arange(n) when unknown.
    targets: [n] class ids (negative = undefined, ignored for the guarantee) or
      [n, C] multi-hot.
    fraction: in (0, 1]; 1.0 returns every index.
    seed: fixes the subsample.

  Returns:
    sorted int64 indices into the n training examples.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"label fraction {fraction} must be in (0, 1].")
  patient_ids = np.asarray(patient_ids)
  n = patient_ids.shape[0]
  if fraction == 1.0:
    return np.arange(n)
  targets = np.asarray(targets)
  if targets.ndim == 1:
    defined = targets >= 0
    num_classes = int(targets.max()) + 1 if defined.any() else 0
    positives = np.zeros((n, num_classes), bool)
    positives[np.flatnonzero(defined), targets[defined]] = True
  else:
    positives = targets.astype(bool)
  unique_patients, patient_index = np.unique(patient_ids, return_inverse=True)
  rng = np.random.default_rng(seed)
  num_patients = unique_patients.size
  num_drawn = max(1, int(round(fraction * num_patients)))
  chosen = np.zeros(num_patients, bool)
  chosen[rng.permutation(num_patients)[:num_drawn]] = True
  for label in range(positives.shape[1]):
    label_patients = np.unique(patient_index[positives[:, label]])
    if label_patients.size and not chosen[label_patients].any():
      chosen[rng.choice(label_patients)] = True
  return np.flatnonzero(chosen[patient_index])


SPLITS = ('train', 'validation', 'test')


def patients_in_several_splits(image_split: dict, patient_of: dict) -> int:
  """Number of patients with images in more than one split ({image: split}, {image: id})."""
  splits_of = collections.defaultdict(set)
  for name, split in image_split.items():
    splits_of[patient_of[name]].add(split)
  return sum(len(splits) > 1 for splits in splits_of.values())


def reassign_patient_wise(image_split: dict, patient_of: dict) -> tuple[dict, int, dict]:
  """Moves every patient found in several splits wholly into one of them.

  The rule (deterministic, keeps each split's size close to its folder's):
    * a patient whose images all lie in one split stays there;
    * the others ("leaked" patients) are placed one at a time, most images first (ties:
      the smaller patient id), each into the split, among those holding some of its
      images, that is furthest below its folder size relative to that size, i.e. the
      largest (folder size - images placed so far) / folder size, counting the images
      of the patients that stay and of the leaked patients placed before; ties go to
      the split holding more of the patient's images, then to train, validation, test
      in that order.
  So a patient is never moved into a split it had no image in. Moving each leaked
  patient to the split holding most of its images would move fewer images but let the
  sizes drift (nih_thumbs: validation 200 -> 165, test 200 -> 228); this rule ends at
  595 / 202 / 203 for nih_thumbs' 600 / 200 / 200.

  Args:
    image_split: {image: split} as the folders (or lists) give it.
    patient_of: {image: patient id}.

  Returns:
    ({image: split} patient-wise, number of patients moved, {'from->to': images moved}
    for the pairs with at least one image, in SPLITS order).
  """
  folder_size = collections.Counter(image_split.values())
  images_of = collections.defaultdict(list)
  for name in sorted(image_split):
    images_of[patient_of[name]].append(name)
  placed = collections.Counter()
  leaked = []
  for patient, names in images_of.items():
    splits = {image_split[name] for name in names}
    if len(splits) == 1:
      placed[splits.pop()] += len(names)
    else:
      leaked.append(patient)
  order = {split: position for position, split in enumerate(SPLITS)}
  result = dict(image_split)
  moved = collections.Counter()
  for patient in sorted(leaked, key=lambda patient: (-len(images_of[patient]), patient)):
    names = images_of[patient]
    held = collections.Counter(image_split[name] for name in names)
    target = max(held, key=lambda split: ((folder_size[split] - placed[split])
                                          / folder_size[split], held[split],
                                          -order.get(split, len(order))))
    placed[target] += len(names)
    for name in names:
      if image_split[name] != target:
        moved[(image_split[name], target)] += 1
      result[name] = target
  images_moved = {f'{source}->{target}': moved[(source, target)]
                  for source in SPLITS for target in SPLITS if moved[(source, target)]}
  return result, len(leaked), images_moved
