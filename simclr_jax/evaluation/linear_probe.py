"""Linear probe: logistic regression on frozen, standardised features, train -> evaluated
split. Multi-label data: one sigmoid per finding (per-finding and macro AUROC);
single-label data: multinomial (accuracy, one-vs-rest AUROC). Solved on the device
(`algorithms.fit_logistic_regression`, scikit-learn's objective) or with scikit-learn.
"""
from __future__ import annotations

import time
from typing import Iterator

from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation.representations import Representations

SHARED_KEY = "linear_probe"  # the full probe's result, reused by label efficiency


class Evaluator:
  """Args: regularisation: C (inverse L2 strength); max_iter: solver iterations;
  solver: 'jax' (device) or 'sklearn' (CPU reference)."""

  def __init__(self, regularisation: float = 1.0, max_iter: int = 1000, solver: str = "jax"):
    if solver not in algorithms.PROBE_SOLVERS:
      raise ValueError(f"--probe_solver={solver!r}: accepted values are "
                       f"{', '.join(algorithms.PROBE_SOLVERS)}.")
    self.regularisation, self.max_iter, self.solver = float(regularisation), max_iter, solver

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
        seed=representations.seed, solver=self.solver)
    representations.shared[SHARED_KEY] = (self.settings(), probe)
    yield from probe.items()
    yield "linear_probe_targets", targets["description"]
    yield "linear_probe_solver", self.solver
    yield "linear_train_examples", int(targets["train_kept"].sum())
    yield "linear_probe_seconds", time.perf_counter() - start
