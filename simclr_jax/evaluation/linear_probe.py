"""Linear probe: logistic regression on frozen, standardised features, train -> evaluated
split. Multi-label data: one sigmoid per finding (per-finding and macro AUROC);
single-label data: multinomial (accuracy, one-vs-rest AUROC). Solved on the device
(`algorithms.fit_logistic_regression`, scikit-learn's objective) or with scikit-learn.
Every AUROC carries a 95 % interval resampled by patient; the macro averages the classes
with train positives (`algorithms.auroc_table`), and the report says how the solver
stopped (a probe stopped on its iteration cap is a warning).
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation.representations import Representations

SHARED_KEY = "linear_probe"  # the full probe's result, reused by label efficiency


def cap_warning(result: dict, what: str = "linear probe") -> list:
  """[one warning line] when a probe stopped on its iteration cap (logged), else []."""
  if not result.get("linear_probe_stopped_at_cap"):
    return []
  gradient = result.get("linear_probe_gradient_max")
  text = (f"{what} stopped on its iteration cap (max_iter={result['linear_probe_max_iter']}"
          f", {result['linear_probe_iterations']} iterations"
          + (f", max |gradient| {gradient:.2e}" if gradient is not None else "")
          + "): not converged; its scores may be off.")
  logging.warning(text)
  return [text]


class Evaluator:
  """Args: regularisation: C (inverse L2 strength); max_iter: solver iterations;
  solver: 'jax' (device) or 'sklearn' (CPU reference)."""

  def __init__(self, regularisation: float = 1.0, max_iter: int = 1000, solver: str = "jax"):
    if solver not in algorithms.PROBE_SOLVERS:
      raise ValueError(f"--probe_solver={solver!r}: accepted values are "
                       f"{', '.join(algorithms.PROBE_SOLVERS)}.")
    if int(max_iter) < 1:
      raise ValueError(f"linear probe max_iter={max_iter}: must be >= 1.")
    self.regularisation, self.max_iter, self.solver = float(regularisation), int(max_iter), solver

  def settings(self) -> dict:
    return {"regularisation": self.regularisation, "max_iter": self.max_iter,
            "solver": self.solver}

  def run(self, representations: Representations) -> Iterator[tuple]:
    if representations.train_examples is None:
      return
    targets = representations.probe_targets()
    start = time.perf_counter()
    probe = algorithms.linear_probe(
        representations.train_features[targets["train_kept"]],
        targets["train"][targets["train_kept"]],
        representations.eval_features[targets["eval_kept"]],
        targets["eval"][targets["eval_kept"]], multi_label=representations.probe_multi_label,
        regularisation=self.regularisation, max_iter=self.max_iter, class_names=targets["names"],
        seed=representations.seed, solver=self.solver,
        **probe_intervals(representations, targets["eval_kept"]))
    representations.shared[SHARED_KEY] = (self.settings(), probe)
    yield from probe.items()
    yield "linear_probe_targets", targets["description"]
    yield "linear_probe_solver", self.solver
    yield "linear_probe_regularisation", self.regularisation
    yield "linear_train_examples", int(targets["train_kept"].sum())
    yield "warnings", cap_warning(probe)
    yield "linear_probe_seconds", time.perf_counter() - start


def probe_intervals(representations: Representations, kept) -> dict:
  """`algorithms.linear_probe`'s interval arguments for the evaluated examples kept."""
  intervals = representations.intervals(kept)
  return {"test_patient_ids": intervals["patient_ids"], "resamples": intervals["resamples"]}
