"""Similarity statistics: mean cosine similarity within vs between the classes."""
from __future__ import annotations

from typing import Iterator

from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation.representations import Representations


class Evaluator:
  """Yields `feature_quality`: {'within_class_cosine', 'between_class_cosine',
  'cosine_gap'} over the examples the label mode keeps."""

  def run(self, representations: Representations) -> Iterator[tuple]:
    yield "feature_quality", algorithms.feature_quality(representations.eval_features,
                                                     representations.label_set.labels)
