"""Offline evaluation of one encoder on one split: features -> evaluators -> report.

  1. Checks before anything heavy runs: the output folder (`report.check_out_dir`), k,
     the dataset and split, the label mode.
  2. Features of the evaluated split and of the train split (`features.encode_split`,
     all local devices and processes; progress lines in batch jobs).
  3. The label mode turns the dataset's labels into one class per example
     (`data/labels.py`), giving the `Representations` every evaluator reads.
  4. The evaluators named in `evaluators` run in order (`from_config`); each yields
     (name, value) pairs that become report entries (arrays go to features.npz).
  5. Process 0 writes OUT/report.json, report.md, features.npz and the plots.
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import jax
import numpy as np

from simclr_jax.data import labels as labels_lib
from simclr_jax.evaluation import EVALUATORS
from simclr_jax.evaluation import clustering
from simclr_jax.evaluation import encoders
from simclr_jax.evaluation import features as features_lib
from simclr_jax.evaluation import from_config
from simclr_jax.evaluation import label_efficiency
from simclr_jax.evaluation import report as report_lib
from simclr_jax.evaluation import representations as representations_lib
from simclr_jax.runtime.progress import Progress

# Evaluators that need the train split's features.
_NEEDS_TRAIN_SPLIT = ("linear_probe", "knn", "label_efficiency")


def enable_compilation_cache(workdir: Optional[str] = None) -> Optional[str]:
  """JAX's persistent compilation cache, as configured for the run in `workdir` (or by
  default), so a second evaluation skips compiling. Returns the directory used.

  `simclr_jax.runtime.compilation_cache` arrives with the run-lifecycle work; without it there is
  nothing to enable and None is returned.
  """
  import os
  try:
    from simclr_jax.runtime import compilation_cache
  except ImportError:
    return None
  from simclr_jax.workdir import CONFIG_FILE
  config = None
  if workdir and os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    from simclr_jax import checkpointing
    config = checkpointing.read_config(workdir)
  return compilation_cache.enable(config)


def evaluator_settings(*, k: Optional[int] = None, kmeans_n_init: int = 10, knn_k: int = 20,
                       label_fractions: Sequence[float] = label_efficiency.DEFAULT_FRACTIONS,
                       probe_solver: str = "jax") -> dict:
  """{evaluator name: settings} from the CLI's options."""
  return {"clustering": {"k": k, "n_init": kmeans_n_init},
          "linear_probe": {"solver": probe_solver},
          "knn": {"k": knn_k},
          "label_efficiency": {"fractions": tuple(label_fractions), "solver": probe_solver},
          "similarity": {}}


def run_evaluators(representations: representations_lib.Representations, evaluators: list,
                   *, show_progress: bool = False) -> tuple[dict, dict]:
  """Runs (name, evaluator) pairs in order; splits their outputs into report entries and
  per-example arrays.

  Returns:
    (report entries, arrays with one row per evaluated example).
  """
  num_examples = representations.eval_features.shape[0]
  entries, arrays = {}, {}
  progress = Progress(len(evaluators), desc="evaluators", unit="evaluator",
                      enabled=show_progress and jax.process_index() == 0)
  for name, evaluator in evaluators:
    for key, value in evaluator.run(representations):
      if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == num_examples:
        arrays[key] = value
      else:
        entries[key] = value
    progress.update(1, done=name)
  progress.close()
  return entries, arrays


def evaluate_features(eval_examples: dict, train_examples: Optional[dict] = None, *,
                      label_mode: Optional[str] = None,
                      class_names: Optional[Sequence[str]] = None,
                      evaluators: Sequence[str] = EVALUATORS, k: Optional[int] = None,
                      label_fractions: Sequence[float] = label_efficiency.DEFAULT_FRACTIONS,
                      knn_k: int = 20, kmeans_n_init: int = 10, probe_solver: str = "jax",
                      seed: int = 0, show_progress: bool = False) -> tuple[dict, dict]:
  """Every selected evaluator on already extracted features.

  Args:
    eval_examples: {'features' [n, F], 'label' and/or 'labels', ['patient_id']}.
    train_examples: same for the probe/kNN train split; None skips the evaluators that
      need it.
    label_mode: see `simclr_jax/data/labels.py`; default 'single_finding' (multi-label
      data: the 14 findings, k = 14) or 'label'.
    class_names: class names of a single-label dataset's 'label'.
    evaluators: names, in the order they run.
    k: clusters; default the number of classes of the label set.
    label_fractions, knn_k, kmeans_n_init, probe_solver: evaluator settings.

  Returns:
    (report dict, arrays for features.npz and the plots).
  """
  settings = evaluator_settings(k=k, kmeans_n_init=kmeans_n_init, knn_k=knn_k,
                                label_fractions=label_fractions, probe_solver=probe_solver)
  built = from_config({name: settings.get(name, {}) for name in evaluators})
  representations = representations_lib.build(eval_examples, train_examples,
                                              label_mode=label_mode, class_names=class_names,
                                              seed=seed)
  label_set = representations.label_set
  features = representations.eval_features
  report = {"label_mode": label_set.mode, "label_set": label_set.description,
            "num_examples": label_set.num_kept, "num_examples_total": int(features.shape[0]),
            "num_classes": len(label_set.class_names),
            "class_names": list(label_set.class_names),
            "class_counts": {name: int(np.sum(label_set.labels == i))
                             for i, name in enumerate(label_set.class_names)},
            "feature_dim": int(features.shape[1]), "evaluators": list(evaluators)}
  arrays = {"features": features, "labels": label_set.labels}
  if labels_lib.is_multi_label(eval_examples):
    arrays["multi_hot"] = np.asarray(eval_examples["labels"])
  # Identifiers to join the rows back to the dataset.
  if "patient_id" in eval_examples:
    arrays["patient_id"] = np.asarray(eval_examples["patient_id"])
  if "image_index" in eval_examples:
    arrays["image_index"] = np.asarray([
        name.decode() if isinstance(name, bytes) else str(name)
        for name in eval_examples["image_index"]])
  entries, evaluator_arrays = run_evaluators(representations, built,
                                             show_progress=show_progress)
  report.update(entries)
  arrays.update(evaluator_arrays)
  return report, arrays


def check_settings(*, dataset: str, data_dir: str, split: str, train_split: Optional[str],
                   out_dir: Optional[str], overwrite: bool, evaluators: Sequence[str],
                   k: Optional[int], label_mode: Optional[str],
                   max_examples: Optional[int], feature_kind: str = "encoder",
                   evaluator_options: Optional[dict] = None
                   ) -> tuple[Optional[list], Optional[str]]:
  """Everything that can be checked before an encoder is built or a feature extracted.

  `evaluator_options` are `evaluator_settings`'s keyword arguments (knn_k, kmeans_n_init,
  label_fractions, probe_solver): the evaluators are built once here so a bad setting
  fails now.

  Returns:
    (the dataset's 'label' class names or None, the train split to encode or None when
    no selected evaluator needs one).

  Raises:
    ValueError / FileNotFoundError naming the flag and what is accepted:
    report.ReportExistsError, k < 2 or k > the split's examples, an unknown evaluator,
    dataset, split or label mode, a dataset that is not prepared.
  """
  from simclr_jax import data
  if out_dir is not None:
    report_lib.check_out_dir(out_dir, overwrite)
  if k is not None:
    clustering.check_k(int(k))
  unknown = [name for name in evaluators if name not in EVALUATORS]
  if unknown or not evaluators:
    raise ValueError(f"--evaluators: unknown or no evaluator(s) {unknown}; accepted: "
                     f"{', '.join(EVALUATORS)}.")
  if feature_kind not in encoders.FEATURE_KINDS:
    raise ValueError(f"--features={feature_kind!r}: accepted values are "
                     f"{', '.join(encoders.FEATURE_KINDS)}.")
  settings = evaluator_settings(k=k, **(evaluator_options or {}))
  from_config({name: settings[name] for name in evaluators})
  count = data.num_examples(dataset, data_dir, split)  # unknown dataset / split raise here
  if max_examples:
    count = min(count, int(max_examples))
  if k is not None and "clustering" in evaluators:
    clustering.check_k(int(k), count, f"examples of split {split!r}")
  try:
    class_names = list(data.class_names(dataset, data_dir))
  except KeyError:  # no 'label' feature
    class_names = None
  labels_lib.check_label_mode(label_mode, class_names)
  if train_split and not any(name in _NEEDS_TRAIN_SPLIT for name in evaluators):
    train_split = None
  if train_split:
    data.num_examples(dataset, data_dir, train_split)  # an unknown split fails before work
  return class_names, train_split or None


def evaluate_encoder(encoder: encoders.Encoder, *, dataset: str, data_dir: str, split: str,
                     out_dir: str, train_split: Optional[str] = "train",
                     evaluators: Sequence[str] = EVALUATORS, k: Optional[int] = None,
                     label_mode: Optional[str] = None,
                     label_fractions: Sequence[float] = label_efficiency.DEFAULT_FRACTIONS,
                     feature_kind: str = "encoder", batch_size: int = 256, knn_k: int = 20,
                     kmeans_n_init: int = 10, probe_solver: str = "jax",
                     max_examples: Optional[int] = None, labels_csv: Optional[str] = None,
                     plots: bool = True, save_features: bool = True,
                     overwrite: bool = False) -> dict:
  """Evaluates one encoder on one dataset split and writes OUT/report.{json,md}.

  Args:
    encoder: from `encoders.load_encoder`.
    dataset, data_dir, split: the TFDS dataset to evaluate on (all examples of `split`).
    out_dir: where the report, features.npz and plots go; an earlier report there is
      refused unless `overwrite` (which replaces all of it).
    train_split: split the linear probe / kNN / label fractions are fitted on; None or ''
      skips them.
    evaluators: names (see `simclr_jax.evaluation.EVALUATORS`), in order.
    k, label_mode, label_fractions, feature_kind, knn_k, kmeans_n_init, probe_solver:
      see the CLI (`simclr_jax/evaluate.py`).
    batch_size: images per feature-extraction step on each process.
    max_examples: evaluate only the first N examples of each split (quick runs).
    labels_csv: ChestX-ray14 Data_Entry CSV; with label_mode 'primary' the first label
      *listed* there is used (looked up by 'image_index').

  Returns:
    The report dict (as written to OUT/report.json by process 0).

  Raises:
    ValueError / FileNotFoundError: bad settings or data, before features are extracted
      where they can be known then (report.ReportExistsError for an earlier report).
  """
  total_start = time.perf_counter()
  class_names, train_split = check_settings(
      dataset=dataset, data_dir=data_dir, split=split, train_split=train_split,
      out_dir=out_dir, overwrite=overwrite, evaluators=evaluators, k=k,
      label_mode=label_mode, max_examples=max_examples, feature_kind=feature_kind,
      evaluator_options=dict(kmeans_n_init=kmeans_n_init, knn_k=knn_k,
                             label_fractions=label_fractions, probe_solver=probe_solver))
  if labels_csv and not (label_mode or "").startswith("primary"):
    logging.info("--labels_csv is only used by --label_mode=primary; ignoring it.")

  encode_fn, variables = encoders.make_encode_fn(encoder, feature_kind)
  start = time.perf_counter()
  eval_examples = features_lib.encode_split(
      encode_fn, variables, dataset, data_dir, split, batch_size=batch_size,
      max_examples=max_examples, progress_desc=f"features {split}")
  split_seconds = {split: time.perf_counter() - start}
  train_examples = None
  if train_split:
    if train_split == split:
      logging.warning("--train_split equals --split (%s): the probe and kNN are scored on "
                      "the examples they were fitted on.", split)
    train_examples = features_lib.encode_split(
        encode_fn, variables, dataset, data_dir, train_split, batch_size=batch_size,
        max_examples=max_examples, progress_desc=f"features {train_split}")
  extraction_seconds = time.perf_counter() - start
  if train_split:
    key = f"{train_split} (probe)" if train_split == split else train_split
    split_seconds[key] = extraction_seconds - split_seconds[split]
  if labels_csv and label_mode == "primary":
    eval_examples = labels_lib.attach_csv_finding_text(eval_examples, labels_csv)
    if train_examples is not None:
      train_examples = labels_lib.attach_csv_finding_text(train_examples, labels_csv)

  report, arrays = evaluate_features(
      eval_examples, train_examples, label_mode=label_mode, class_names=class_names,
      evaluators=evaluators, k=k, label_fractions=label_fractions, knn_k=knn_k,
      kmeans_n_init=kmeans_n_init, probe_solver=probe_solver,
      seed=int(encoder.config.get("seed", 0)), show_progress=True)
  report.update({
      "encoder": encoder.description, "encoder_source": encoder.source,
      "encoder_init": encoder.init, "objective": encoder.objective,
      "checkpoint_step": encoder.step, "model": encoder.config.get("model"),
      "image_size": int(encoder.config.image_size), "features": feature_kind,
      "dataset": dataset, "split": split, "train_split": train_split or None,
      "num_train_examples": (int(train_examples["features"].shape[0])
                             if train_examples is not None else None),
      "devices": jax.device_count(), "processes": jax.process_count(),
      "platform": jax.default_backend(),
      "feature_extraction_seconds": extraction_seconds,
      "feature_extraction_seconds_per_split": split_seconds,
  })
  report["total_seconds"] = time.perf_counter() - total_start
  if jax.process_index() != 0:
    return report_lib.clean_for_json(report)
  return report_lib.write_report(report, arrays, out_dir, plots=plots,
                                 save_features=save_features, overwrite=overwrite,
                                 seed=int(encoder.config.get("seed", 0)))
