"""Label efficiency: the linear probe fitted on patient-wise subsamples of the train labels
(fixed seed; at least one positive per class added where the train split has one). Each
row carries its macro AUROC's classes and 95 % interval, as the full probe does."""
from __future__ import annotations

import time
from typing import Iterator, Sequence

from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation import linear_probe
from simclr_jax.evaluation.representations import Representations

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)


def parse_fractions(text: str) -> tuple:
  """'0.01,0.1,1.0' -> (0.01, 0.1, 1.0); each in (0, 1].

  Raises:
    ValueError: naming --label_fractions and what is accepted.
  """
  try:
    fractions = tuple(float(part) for part in str(text).split(",") if part.strip())
  except ValueError:
    raise ValueError(f"--label_fractions={text!r}: give comma-separated numbers in (0, 1], "
                     "e.g. 0.01,0.1,1.0.") from None
  bad = [f for f in fractions if not 0.0 < f <= 1.0]
  if bad:
    raise ValueError(f"--label_fractions={text!r}: {bad} not in (0, 1].")
  return fractions


class Evaluator:
  """Args: fractions of the train labels; regularisation, max_iter, solver: as the
  linear probe (its result at fraction 1.0 is reused when the settings agree)."""

  def __init__(self, fractions: Sequence[float] = DEFAULT_FRACTIONS,
               regularisation: float = 1.0, max_iter: int = 1000, solver: str = "jax"):
    if isinstance(fractions, str):
      fractions = parse_fractions(fractions)
    self.fractions = tuple(float(f) for f in fractions)
    parse_fractions(",".join(map(str, self.fractions)))
    self.probe = linear_probe.Evaluator(regularisation, max_iter, solver)

  def run(self, representations: Representations) -> Iterator[tuple]:
    if representations.train_examples is None or not self.fractions:
      return
    targets = representations.probe_targets()
    settings, full_probe = representations.shared.get(linear_probe.SHARED_KEY, (None, None))
    start = time.perf_counter()
    train_kept = targets["train_kept"]
    rows = algorithms.label_efficiency(
        representations.train_features[train_kept], targets["train"][train_kept],
        representations.eval_features[targets["eval_kept"]],
        targets["eval"][targets["eval_kept"]],
        representations.train_patient_ids()[train_kept], self.fractions,
        multi_label=representations.probe_multi_label, class_names=targets["names"],
        seed=representations.seed, solver=self.probe.solver,
        regularisation=self.probe.regularisation, max_iter=self.probe.max_iter,
        full_probe=full_probe if settings == self.probe.settings() else None,
        **linear_probe.probe_intervals(representations, targets["eval_kept"]))
    yield "label_fractions", rows
    yield "warnings", [line for row in rows for line in linear_probe.cap_warning(
        row, f"linear probe at label fraction {row['fraction']:g}")]
    yield "label_fractions_seconds", time.perf_counter() - start
