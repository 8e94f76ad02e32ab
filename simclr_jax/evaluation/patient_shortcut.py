"""Patient-shortcut evaluator: does an image's nearest neighbour belong to its patient?

Within the evaluated split, the rate at which an image's cosine nearest neighbour (itself
excluded) is another image of the same patient, over the images whose patient has several
images there, against the rate a random neighbour would give. Far above chance means the
features recognise people, which inflates kNN and probe figures on splits that are not
patient-wise (see `algorithms.patient_shortcut`). Every evaluated image counts, whatever
the label mode keeps; nothing is yielded when the split has no patient ids.
"""
from __future__ import annotations

from typing import Iterator

from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation.representations import Representations


class Evaluator:
  """Yields patient_shortcut, patient_shortcut_chance (NaN when no patient has 2 images)
  and patient_shortcut_images (the images counted)."""

  def run(self, representations: Representations) -> Iterator[tuple]:
    if "patient_id" not in representations.eval_examples:
      return
    shortcut = algorithms.patient_shortcut(representations.eval_features,
                                           representations.eval_examples["patient_id"])
    yield "patient_shortcut", shortcut.rate
    yield "patient_shortcut_chance", shortcut.chance
    yield "patient_shortcut_images", shortcut.num_images
