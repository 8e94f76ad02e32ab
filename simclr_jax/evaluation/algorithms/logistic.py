"""Logistic regression: the linear probe's solver on the device (L-BFGS on scikit-learn's
objective), the probe itself (scikit-learn as reference and option) and the probe on
patient-wise label fractions."""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sklearn.base
import sklearn.exceptions
import sklearn.linear_model
import sklearn.preprocessing

from simclr_jax.data.subsets import patient_subsample
from simclr_jax.evaluation.algorithms.scores import auroc_table
from simclr_jax.evaluation.algorithms.scores import bootstrap_mean_interval


LOSS_KINDS = ("sigmoid", "softmax")
PROBE_SOLVERS = ("jax", "sklearn")


@dataclasses.dataclass(frozen=True)
class LogisticRegression:
  """A fitted probe: standardisation of the train features, then a linear map."""
  kind: str              # 'sigmoid' (independent columns) | 'softmax' (one multinomial)
  mean: np.ndarray       # [d] train feature mean
  scale: np.ndarray      # [d] train feature std (1 where constant), as StandardScaler
  weights: np.ndarray    # [d, C]
  bias: np.ndarray       # [C]
  num_iterations: int
  gradient_max: float    # max |gradient| of the objective at the solution

  def probabilities(self, features) -> np.ndarray:
    """[n, C] sigmoid (per column) or softmax probabilities of `features` [n, d]."""
    return np.asarray(_probabilities(jnp.asarray(features, jnp.float32), self.mean,
                                     self.scale, self.weights, self.bias, kind=self.kind))


@functools.partial(jax.jit, static_argnames=("kind",))
def _probabilities(features, mean, scale, weights, bias, *, kind: str):
  logits = jnp.dot((features - mean) / scale, weights,
                   precision=jax.lax.Precision.HIGHEST) + bias
  return jax.nn.sigmoid(logits) if kind == "sigmoid" else jax.nn.softmax(logits, axis=-1)


@jax.jit
def _fit_logistic_regression(features, targets, example_weights, output_mask, softmax,
                             regularisation, tolerance, max_iter):
  """L-BFGS on scikit-learn's LogisticRegression objective (see `fit_logistic_regression`).

  features [n, d] (raw), targets [n, C] 0/1 (multi-hot for sigmoid columns, one-hot for
  softmax), example_weights [n] (0 on padding rows), output_mask [C] (outputs that take
  part; the others keep zero weights), softmax: a traced bool and max_iter a traced int,
  so both kinds and every iteration cap share one compilation per shape.
  """
  highest = jax.lax.Precision.HIGHEST
  total = jnp.sum(example_weights)
  mean = jnp.dot(example_weights, features, precision=highest) / total
  variance = jnp.dot(example_weights, jnp.square(features - mean), precision=highest) / total
  # StandardScaler: population std, constant features keep scale 1.
  scale = jnp.where(variance > 1e-12, jnp.sqrt(variance), 1.0)
  inputs = (features - mean) / scale
  l2_strength = 1.0 / (regularisation * total)
  # Outputs that do not take part: a huge negative logit (softmax), a zero loss (sigmoid).
  logit_offset = jnp.where(output_mask > 0, 0.0, -1e9)

  def objective(params):
    logits = jnp.dot(inputs, params["weights"], precision=highest) + params["bias"]
    sigmoid_loss = jnp.sum((jax.nn.softplus(logits) - targets * logits) * output_mask, axis=-1)
    softmax_loss = (jax.nn.logsumexp(logits + logit_offset, axis=-1)
                    - jnp.sum(targets * logits, axis=-1))
    per_example = jnp.where(softmax, softmax_loss, sigmoid_loss)
    data_term = jnp.sum(example_weights * per_example) / total
    return data_term + 0.5 * l2_strength * jnp.sum(jnp.square(params["weights"]))

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def gradient_max(state):
    gradient = optax.tree_utils.tree_get(state, "grad")
    return optax.tree_utils.tree_norm(gradient, ord="inf")

  def step(carry):
    params, state = carry
    value, gradient = value_and_grad(params, state=state)
    updates, state = solver.update(gradient, state, params, value=value, grad=gradient,
                                   value_fn=objective)
    return optax.apply_updates(params, updates), state

  def not_done(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, "count")
    value = optax.tree_utils.tree_get(state, "value")
    return (count == 0) | ((count < max_iter) & (gradient_max(state) >= tolerance) &
                           jnp.isfinite(value))

  params = {"weights": jnp.zeros((features.shape[1], targets.shape[1]), jnp.float32),
            "bias": jnp.zeros((targets.shape[1],), jnp.float32)}
  params, state = jax.lax.while_loop(not_done, step, (params, solver.init(params)))
  return (mean, scale, params["weights"], params["bias"],
          optax.tree_utils.tree_get(state, "count"), gradient_max(state))


def _bucket(size: int, granularity: int, smallest: int) -> int:
  """`size` padded to a multiple of `granularity` (a power of two below it, at least
  `smallest`), so problems of nearby sizes share one compilation."""
  if size >= granularity:
    return -(-size // granularity) * granularity
  return max(smallest, 1 << (size - 1).bit_length())


def _pad_to(array: np.ndarray, size: int, axis: int) -> np.ndarray:
  padding = [(0, 0)] * array.ndim
  padding[axis] = (0, size - array.shape[axis])
  return np.pad(array, padding)


def fit_logistic_regression(features, targets, *, kind: str, regularisation: float = 1.0,
                            max_iter: int = 1000, tol: float = 1e-5,
                            device: Optional[jax.Device] = None) -> LogisticRegression:
  """scikit-learn's `LogisticRegression(C=regularisation)` on standardised features, on the
  device (JAX + optax L-BFGS).

  Minimises, as scikit-learn's lbfgs solver does,
    (1/n) sum_i loss_i + 1 / (2 C n) ||W||^2        (the intercept is not penalised)
  on features standardised with the train mean and population std (StandardScaler), with
  loss = binary cross-entropy summed over independent sigmoid columns (`kind='sigmoid'`:
  one-vs-rest / multi-label, one binary problem per column) or the multinomial
  cross-entropy (`kind='softmax'`). Stops when max |gradient| < tol (scikit-learn uses
  1e-4 on the same objective) or after max_iter iterations. Sigmoid columns whose train
  targets are constant cannot be learnt: their weights stay 0 (score 0.5).

  Examples, features and outputs are zero-padded to a few bucket sizes (padding rows
  weigh 0; padding features are constant, so their weights stay 0): the probes of one
  evaluation (all data, label fractions, both kinds) share a handful of compilations.

  Args:
    features: [n, d] float.
    targets: sigmoid: [n, C] 0/1; softmax: [n] class ids in [0, C).
    kind: 'sigmoid' | 'softmax'.
    regularisation: C, the inverse L2 strength.
    max_iter, tol: L-BFGS stopping rule.
    device: default the first local device.

  Returns:
    LogisticRegression (host arrays).
  """
  if kind not in LOSS_KINDS:
    raise ValueError(f"logistic regression kind={kind!r}; accepted: {LOSS_KINDS}.")
  features = np.asarray(features, np.float32)
  n, dim = features.shape
  if kind == "sigmoid":
    targets = np.asarray(targets, np.float32).reshape(n, -1)
    output_mask = (targets.min(axis=0) != targets.max(axis=0)).astype(np.float32)
  else:
    class_ids = np.asarray(targets, np.int64).reshape(n)
    targets = np.eye(int(class_ids.max()) + 1, dtype=np.float32)[class_ids]
    output_mask = np.ones(targets.shape[1], np.float32)
  num_outputs = targets.shape[1]
  rows, columns = _bucket(n, 4096, 128), _bucket(dim, 512, 128)
  outputs = _bucket(num_outputs, 64, 16)
  example_weights = _pad_to(np.ones(n, np.float32), rows, 0)
  inputs = (_pad_to(_pad_to(features, rows, 0), columns, 1),
            _pad_to(_pad_to(targets, rows, 0), outputs, 1), example_weights,
            _pad_to(output_mask, outputs, 0), np.bool_(kind == "softmax"))
  device = device or jax.local_devices()[0]
  mean, scale, weights, bias, iterations, gradient = _fit_logistic_regression(
      *jax.device_put(inputs, device), np.float32(regularisation), np.float32(tol),
      np.int32(max_iter))
  return LogisticRegression(kind=kind, mean=np.asarray(mean)[:dim],
                            scale=np.asarray(scale)[:dim],
                            weights=np.asarray(weights)[:dim, :num_outputs],
                            bias=np.asarray(bias)[:num_outputs],
                            num_iterations=int(iterations), gradient_max=float(gradient))


def _sklearn_scores(train_x, train_y, test_x, *, multi_label: bool, regularisation: float,
                    max_iter: int, seed: int) -> tuple[np.ndarray, int]:
  """The reference probe: StandardScaler + scikit-learn LogisticRegression on the CPU.

  Returns:
    (scores [n_test, C], the most iterations any fit took: scikit-learn's n_iter_).
  """
  scaler = sklearn.preprocessing.StandardScaler().fit(np.asarray(train_x, np.float64))
  train_x = scaler.transform(np.asarray(train_x, np.float64))
  test_x = scaler.transform(np.asarray(test_x, np.float64))
  regression = sklearn.linear_model.LogisticRegression(
      C=regularisation, max_iter=max_iter, random_state=seed)
  with warnings.catch_warnings():
    # Stopping on max_iter is reported by the probe itself (linear_probe_stopped_at_cap).
    warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
    if multi_label:
      scores = np.full((test_x.shape[0], train_y.shape[1]), 0.5)
      iterations = 0
      for label in range(train_y.shape[1]):
        column = train_y[:, label]
        if column.min() != column.max():  # constant columns cannot be learnt: score 0.5
          fitted = sklearn.base.clone(regression).fit(train_x, column)
          scores[:, label] = fitted.predict_proba(test_x)[:, 1]
          iterations = max(iterations, int(np.max(fitted.n_iter_)))
      return scores, iterations
    fitted = regression.fit(train_x, train_y)
    return fitted.predict_proba(test_x), int(np.max(fitted.n_iter_))


def _solver_record(iterations: int, gradient_max: Optional[float], max_iter: int,
                   tol: float) -> dict:
  """How the probe's solver stopped (report.json), and whether on the iteration cap."""
  at_cap = iterations >= max_iter and (gradient_max is None or gradient_max >= tol)
  return {"linear_probe_iterations": int(iterations),
          "linear_probe_gradient_max": gradient_max,
          "linear_probe_max_iter": int(max_iter),
          "linear_probe_stopped_at_cap": bool(at_cap)}


def linear_probe(train_features, train_targets, test_features, test_targets, *,
                 multi_label: bool, regularisation: float = 1.0, max_iter: int = 1000,
                 class_names: Optional[Sequence[str]] = None, seed: int = 0,
                 solver: str = "jax", test_patient_ids=None, resamples: int = 0) -> dict:
  """Logistic regression on frozen, standardised features: fit on train, score on test.

  Features are standardised with the train mean/std (as scikit-learn's StandardScaler).
  Multi-label targets: one binary logistic regression per label (independent sigmoid
  columns); single-label targets: one multinomial logistic regression (binary problems:
  one sigmoid, as scikit-learn).

  Args:
    train_features, test_features: [n, d].
    train_targets, test_targets: multi-hot [n, C] (multi_label) or class ids [n].
    multi_label: which of the two target kinds is given.
    regularisation: inverse L2 strength C of LogisticRegression.
    max_iter: solver iterations.
    class_names: names for the per-class AUROC keys (default: the index as a string).
    seed: scikit-learn's random_state (solver 'sklearn').
    solver: 'jax' (L-BFGS on the device, `fit_logistic_regression`) or 'sklearn' (the
      CPU reference).
    test_patient_ids, resamples: with both, 95 % intervals resampled by patient.

  Returns:
    'linear_auroc' {name: auroc}, 'linear_auroc_macro' and the classes in it and left out
    (`scores.auroc_table`: a label without train positives is NaN and left out, as one
    without test positives), ['linear_accuracy'] (single-label), the intervals
    ('*_ci95'), and how the solver stopped: 'linear_probe_iterations',
    'linear_probe_gradient_max' (max |gradient| at the end; None for scikit-learn,
    which does not report it), 'linear_probe_max_iter', 'linear_probe_stopped_at_cap'.
  """
  if solver not in PROBE_SOLVERS:
    raise ValueError(f"linear probe solver={solver!r}; accepted: {PROBE_SOLVERS}.")
  tol = 1e-5 if solver == "jax" else 1e-4   # the stopping tolerance of each solver
  intervals = dict(patient_ids=test_patient_ids, resamples=resamples if
                   test_patient_ids is not None else 0)
  if multi_label:
    train_y = np.asarray(train_targets).astype(np.int64)
    test_y = np.asarray(test_targets).astype(np.int64)
    if train_y.ndim != 2 or test_y.shape[1:] != train_y.shape[1:]:
      raise ValueError(f"linear_probe: multi-label targets must be [n, C] multi-hot; got "
                       f"train {train_y.shape}, test {test_y.shape}.")
    num_labels = train_y.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_labels)]
    if solver == "sklearn":
      scores, iterations = _sklearn_scores(
          train_features, train_y, test_features, multi_label=True,
          regularisation=regularisation, max_iter=max_iter, seed=seed)
      record = _solver_record(iterations, None, max_iter, tol)
    else:
      fitted = fit_logistic_regression(train_features, train_y, kind="sigmoid",
                                       regularisation=regularisation, max_iter=max_iter,
                                       tol=tol)
      scores = fitted.probabilities(test_features)
      record = _solver_record(fitted.num_iterations, fitted.gradient_max, max_iter, tol)
    positives = train_y.sum(axis=0)
    return dict(auroc_table("linear_auroc", test_y, scores, names, train_positives=positives,
                            train_negatives=len(train_y) - positives, **intervals), **record)

  train_y = np.asarray(train_targets).astype(np.int64).reshape(-1)
  test_y = np.asarray(test_targets).astype(np.int64).reshape(-1)
  present = np.unique(train_y)
  if present.size < 2:
    raise ValueError(f"linear_probe: the train targets hold only class {present.tolist()}; "
                     "a classifier needs at least two classes.")
  if solver == "sklearn":
    probabilities, iterations = _sklearn_scores(
        train_features, train_y, test_features, multi_label=False,
        regularisation=regularisation, max_iter=max_iter, seed=seed)
    record = _solver_record(iterations, None, max_iter, tol)
  else:
    if present.size == 2:
      # A binary problem is one sigmoid (as scikit-learn), not a two-class softmax.
      fitted = fit_logistic_regression(
          train_features, (train_y == present[1])[:, None], kind="sigmoid",
          regularisation=regularisation, max_iter=max_iter, tol=tol)
      positive = fitted.probabilities(test_features)[:, 0]
      probabilities = np.stack([1.0 - positive, positive], axis=1)
    else:
      # Only the classes present in train are fitted (scikit-learn's classes_).
      fitted = fit_logistic_regression(
          train_features, np.searchsorted(present, train_y), kind="softmax",
          regularisation=regularisation, max_iter=max_iter, tol=tol)
      probabilities = fitted.probabilities(test_features)
    record = _solver_record(fitted.num_iterations, fitted.gradient_max, max_iter, tol)
  predictions = present[np.argmax(probabilities, axis=1)]
  num_classes = (len(class_names) if class_names is not None
                 else int(max(train_y.max(), test_y.max())) + 1)
  names = (list(class_names) if class_names is not None
           else [str(i) for i in range(num_classes)])
  # One column per class; classes absent from train have no score (and are left out).
  scores = np.zeros((test_y.size, num_classes))
  scores[:, present] = probabilities
  truth = test_y[:, None] == np.arange(num_classes)[None]
  positives = np.bincount(train_y, minlength=num_classes)
  correct = (predictions == test_y).astype(np.float64)
  result = {"linear_accuracy": float(np.mean(correct))}
  if intervals["resamples"]:
    result["linear_accuracy_ci95"] = bootstrap_mean_interval(
        correct, test_patient_ids, resamples=resamples)
  result.update(auroc_table("linear_auroc", truth, scores, names, train_positives=positives,
                            train_negatives=train_y.size - positives,
                            binary=num_classes == 2, **intervals))
  return dict(result, **record)


def label_efficiency(train_features, train_targets, test_features, test_targets,
                     patient_ids, fractions: Sequence[float], *, multi_label: bool,
                     class_names: Optional[Sequence[str]] = None, seed: int = 0,
                     full_probe: Optional[dict] = None, solver: str = "jax",
                     regularisation: float = 1.0, max_iter: int = 1000,
                     test_patient_ids=None, resamples: int = 0) -> list:
  """Linear probe fitted on patient-wise subsamples of the train labels.

  Args:
    full_probe: the `linear_probe` result on all train labels, reused for fraction 1.0
      instead of fitting the same probe again.
    solver, regularisation, max_iter, test_patient_ids, resamples: see `linear_probe`.

  Returns:
    one dict per fraction: {'fraction', 'num_train_examples', 'num_train_patients'} and
    the `linear_probe` result on that subsample (macro AUROC, the classes in it, its
    interval, ...); a fraction whose subsample cannot be fitted (e.g. one class only)
    gets an 'error'.
  """
  results = []
  patient_ids = np.asarray(patient_ids)
  train_features = np.asarray(train_features)
  train_targets = np.asarray(train_targets)
  for fraction in fractions:
    indices = patient_subsample(patient_ids, train_targets, fraction, seed=seed)
    entry = {"fraction": float(fraction), "num_train_examples": int(indices.size),
             "num_train_patients": int(np.unique(patient_ids[indices]).size)}
    if fraction == 1.0 and full_probe is not None:
      entry.update(full_probe)
      results.append(entry)
      continue
    try:
      entry.update(linear_probe(train_features[indices], train_targets[indices],
                                test_features, test_targets, multi_label=multi_label,
                                class_names=class_names, seed=seed, solver=solver,
                                regularisation=regularisation, max_iter=max_iter,
                                test_patient_ids=test_patient_ids, resamples=resamples))
    except ValueError as error:
      entry["error"] = str(error)
    results.append(entry)
  return results

