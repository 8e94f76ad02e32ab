"""Offline evaluation of one encoder on one split: features -> evaluators -> report.

  1. `plan` checks everything that needs no encoder, once: the output folder
     (`report.check_out_dir`), the evaluators and their settings (built once by
     `simclr_jax.evaluation.from_config` from the mapping {name: settings}), the dataset,
     split, feature kind and label mode, k against the split's examples.
  2. `evaluate_encoder` runs a plan on an encoder: features of the evaluated split and of
     the train split (`features.encode_split`, all local devices and processes; progress
     lines in batch jobs).
  3. The label mode turns the dataset's labels into one class per example
     (`data/labels.py`), giving the `Representations` every evaluator reads.
  4. The plan's evaluators run in order; each yields (name, value) pairs that become
     report entries (arrays go to features.npz).
  5. Process 0 writes OUT/report.json, report.md, features.npz and the plots (with the
     pictures of `pictures.py`, whose neighbours and saliency it prepares here), whole, into
     a folder beside OUT first and then into place (`report.write_report`); the command
     lines hold OUT (`report.reserve`) from the plan to the end, so a second evaluation
     into the same OUT is refused instead of mixing its files with the first's.

Every report records the dataset's `patients_in_several_splits` (its metadata; None for a
dataset prepared before the count existed, which is then not warned about) and, when it
is not 0, warns once (a log line and `warnings` in report.json).

The command lines (`python -m simclr_jax.evaluate`, `experiments.compare`) name their
flags as the fields of `Data` and the keys of `SETTING_FLAGS`, and fill both from them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from simclr_jax.data import labels as labels_lib
from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation import clustering
from simclr_jax.evaluation import default_settings
from simclr_jax.evaluation import encoders
from simclr_jax.evaluation import features as features_lib
from simclr_jax.evaluation import from_config
from simclr_jax.evaluation import pictures as pictures_lib
from simclr_jax.evaluation import report as report_lib
from simclr_jax.evaluation import representations as representations_lib
from simclr_jax.runtime.progress import Progress

# Evaluators that need the train split's features, and those that need only its labels.
_NEEDS_TRAIN_SPLIT = ("linear_probe", "knn", "label_efficiency")
_NEEDS_TRAIN_LABELS = ("classifier",)

# The evaluator settings the command lines expose: flag -> the (evaluator, setting)
# pairs it fills in the mapping (`evaluators_config`).
SETTING_FLAGS = {
    "k": (("clustering", "k"),),
    "kmeans_n_init": (("clustering", "n_init"),),
    "knn_k": (("knn", "k"),),
    "probe_solver": (("linear_probe", "solver"), ("label_efficiency", "solver")),
    "label_fractions": (("label_efficiency", "fractions"),),
}


@dataclasses.dataclass(frozen=True)
class Data:
  """The examples an encoder is evaluated on, and how they are read and labelled.

  Attributes:
    dataset, data_dir, split: the TFDS split evaluated (every example of it).
    train_split: the split the linear probe, kNN and label fractions are fitted on; None
      or '' skips them.
    label_mode: see `simclr_jax/data/labels.py`; None: 'single_finding' on multi-label
      data (the 14 findings, k = 14), 'label' otherwise.
    labels_csv: ChestX-ray14 Data_Entry CSV; with label_mode 'primary' the first label
      *listed* there is used (looked up by 'image_index').
    features: which features (`encoders.FEATURE_KINDS`).
    batch_size: images per feature-extraction step on each process.
    max_examples: only the first N examples of each split (quick runs).
  """
  dataset: str
  data_dir: str
  split: str = "test"
  train_split: Optional[str] = "train"
  label_mode: Optional[str] = None
  labels_csv: Optional[str] = None
  features: str = "encoder"
  batch_size: int = 256
  max_examples: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Output:
  """Where a report goes: OUT/report.{json,md}, features.npz and the plots; an earlier
  report there is refused unless `overwrite` (which replaces all of it)."""
  out_dir: str
  overwrite: bool = False
  plots: bool = True
  save_features: bool = True


@dataclasses.dataclass(frozen=True)
class Plan:
  """A checked evaluation, ready for any encoder (made by `plan`)."""
  data: Data
  evaluators: tuple                   # ((name, evaluator), ...), built by from_config
  class_names: Optional[list]         # the dataset's 'label' names; None without 'label'
  train_split: Optional[str]          # None: no selected evaluator needs the train split
  train_features: bool = True         # False: only the train split's labels are read
  # The dataset's metadata: patients with images in more than one split (None: not
  # recorded, a dataset prepared before the count existed).
  patients_in_several_splits: Optional[int] = None

  @property
  def evaluator_names(self) -> list:
    return [name for name, _ in self.evaluators]


def data_from_flags(options: Any) -> Data:
  """`Data` from a command line's flags (an absl FlagValues or argparse Namespace)."""
  return Data(**{field.name: getattr(options, field.name) for field in dataclasses.fields(Data)})


def evaluators_config(options: Any) -> dict:
  """{evaluator: settings} of the evaluators named by --evaluators (in that order), with
  the settings their flags give (`SETTING_FLAGS`)."""
  names = [name.strip() for name in options.evaluators.split(",") if name.strip()]
  config = {name: {} for name in names}
  for flag, targets in SETTING_FLAGS.items():
    value = getattr(options, flag)
    for name, setting in targets:
      if name in config and value is not None:
        config[name][setting] = value
  return config


def reserve_output(output: Output):
  """Holds OUT for one evaluation (`report.reserve`) on process 0, the one that writes;
  a context manager (a no-op on the other processes, which never write: if process 0 is
  refused, they stop when the distributed run does)."""
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  return report_lib.reserve(output.out_dir, output.overwrite)


def flag_default(flag: str) -> Any:
  """The default of a `SETTING_FLAGS` flag: its evaluator's constructor default."""
  name, setting = SETTING_FLAGS[flag][0]
  return default_settings(name)[setting]


def enable_compilation_cache(workdir: Optional[str] = None) -> Optional[str]:
  """JAX's persistent compilation cache, as configured for the run in `workdir` (or by
  default), so a second evaluation skips compiling. Returns the directory used."""
  from simclr_jax import checkpointing
  from simclr_jax.workdir import CONFIG_FILE
  from simclr_jax.runtime import compilation_cache
  config = None
  if workdir and os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    config = checkpointing.read_config(workdir)
  return compilation_cache.enable(config)


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
      if key == "warnings":  # every evaluator's warning lines, collected in one list
        entries.setdefault("warnings", []).extend(value)
      elif isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == num_examples:
        arrays[key] = value
      else:
        entries[key] = value
    progress.update(1, done=name)
  progress.close()
  return entries, arrays


def evaluate_features(eval_examples: dict, train_examples: Optional[dict],
                      evaluators: Sequence[tuple], *, label_mode: Optional[str] = None,
                      class_names: Optional[Sequence[str]] = None, seed: int = 0,
                      show_progress: bool = False,
                      classifier_label_mode: Optional[str] = None,
                      resamples: int = algorithms.BOOTSTRAP_RESAMPLES) -> tuple[dict, dict]:
  """The evaluators on already extracted features.

  Args:
    eval_examples: {'features' [n, F], 'label' and/or 'labels', ['patient_id'],
      ['logits' [n, C] of a classifier head]}.
    train_examples: same for the probe/kNN train split; None skips the evaluators that
      need it.
    evaluators: [(name, evaluator)] from `simclr_jax.evaluation.from_config`, in the
      order they run.
    label_mode: see `simclr_jax/data/labels.py`; default 'single_finding' (multi-label
      data: the 14 findings, k = 14) or 'label'.
    class_names: class names of a single-label dataset's 'label'.
    seed: seeds k-means, subsampling and scikit-learn.
    classifier_label_mode: the targets of the encoder's classifier head ('' = the
      dataset's own labels; None: no classifier head), see `Representations`.
    resamples: bootstrap resamples (by patient) of every AUROC's 95 % interval.

  Returns:
    (report dict, arrays for features.npz and the plots).
  """
  representations = representations_lib.build(eval_examples, train_examples,
                                              label_mode=label_mode, class_names=class_names,
                                              seed=seed, resamples=resamples,
                                              classifier_label_mode=classifier_label_mode)
  label_set = representations.label_set
  features = representations.eval_features
  report = {"label_mode": label_set.mode, "label_set": label_set.description,
            "num_examples": label_set.num_kept, "num_examples_total": int(features.shape[0]),
            "num_classes": len(label_set.class_names),
            "class_names": list(label_set.class_names),
            "class_counts": {name: int(np.sum(label_set.labels == i))
                             for i, name in enumerate(label_set.class_names)},
            "feature_dim": int(features.shape[1]),
            "evaluators": [name for name, _ in evaluators]}
  arrays = {"features": features, "labels": label_set.labels}
  if labels_lib.is_multi_label(eval_examples):
    arrays["multi_hot"] = np.asarray(eval_examples["labels"])
  if "logits" in eval_examples:
    arrays["logits"] = np.asarray(eval_examples["logits"])
  # Identifiers to join the rows back to the dataset.
  if "patient_id" in eval_examples:
    arrays["patient_id"] = np.asarray(eval_examples["patient_id"])
  if "image_index" in eval_examples:
    arrays["image_index"] = np.asarray([
        name.decode() if isinstance(name, bytes) else str(name)
        for name in eval_examples["image_index"]])
  entries, evaluator_arrays = run_evaluators(representations, evaluators,
                                             show_progress=show_progress)
  report.update(entries)
  arrays.update(evaluator_arrays)
  return report, arrays


def plan(data: Data, evaluators: Mapping[str, Mapping[str, Any]],
         output: Optional[Output] = None) -> Plan:
  """Everything that can be checked before an encoder is built or a feature extracted.

  Args:
    data: what is evaluated.
    evaluators: {name: settings}, in the order they run; built here, once, by
      `simclr_jax.evaluation.from_config` (whose constructors check the settings).
    output: where the report goes; checked for an earlier report when given.

  Returns:
    The Plan `evaluate_encoder` runs (for any number of encoders).

  Raises:
    ValueError / FileNotFoundError naming the flag and what is accepted:
    report.ReportExistsError, an unknown evaluator or a bad setting (k < 2, ...), k > the
    split's examples, an unknown dataset, split, feature kind or label mode, a dataset
    that is not prepared.
  """
  from simclr_jax import data as data_lib
  if output is not None:
    report_lib.check_out_dir(output.out_dir, output.overwrite)
  built = tuple(from_config(evaluators))
  if data.features not in encoders.FEATURE_KINDS:
    raise ValueError(f"--features={data.features!r}: accepted values are "
                     f"{', '.join(encoders.FEATURE_KINDS)}.")
  data_lib.check_labelled(data.dataset, data.data_dir,
                          f"--evaluators={','.join(name for name, _ in built)}")
  # An unknown dataset or split raises here.
  count = data_lib.num_examples(data.dataset, data.data_dir, data.split)
  if data.max_examples:
    count = min(count, int(data.max_examples))
  for name, evaluator in built:
    if name == "clustering" and evaluator.k is not None:
      clustering.check_k(int(evaluator.k), count, f"examples of split {data.split!r}")
  try:
    class_names = list(data_lib.class_names(data.dataset, data.data_dir))
  except KeyError:  # no 'label' feature
    class_names = None
  labels_lib.check_label_mode(data.label_mode, class_names)
  train_split = data.train_split or None
  names = [name for name, _ in built]
  train_features = any(name in _NEEDS_TRAIN_SPLIT for name in names)
  if not train_features and not any(name in _NEEDS_TRAIN_LABELS for name in names):
    train_split = None
  if train_split:
    data_lib.num_examples(data.dataset, data.data_dir, train_split)  # fails before work
  leaked = patients_in_several_splits(data.dataset, data.data_dir)
  if leaked:
    logging.warning("%s: %d patient(s) have images in more than one split (the dataset's "
                    "metadata says so): the probe, kNN and classifier figures may be "
                    "flattered by recognising patients.", data.dataset, leaked)
  return Plan(data, built, class_names, train_split, train_features,
              patients_in_several_splits=leaked)


def patients_in_several_splits(dataset: str, data_dir: str) -> Optional[int]:
  """The prepared dataset's count of patients with images in several splits, from its
  metadata (`patients_in_several_splits`, or ChestX-ray14's older
  `prepare_counts.total`); None when it was prepared before the count was recorded."""
  from simclr_jax.data import registry
  metadata = registry.prepared_builder(dataset, str(data_dir)).info.metadata or {}
  value = metadata.get("patients_in_several_splits")
  if value is None:
    value = ((metadata.get("prepare_counts") or {}).get("total") or {}).get(
        "patients_in_several_splits")
  return None if value is None else int(value)


def check_classifier(plan: Plan, encoder: encoders.Encoder) -> None:
  """Refuses an encoder without a classifier head when the plan runs the `classifier`
  evaluator (for a command line that named it explicitly; otherwise it is skipped with
  the reason recorded in the report).

  Raises:
    ValueError: one line naming the encoder and what has a classifier.
  """
  if "classifier" in plan.evaluator_names and not encoder.has_classifier:
    raise ValueError(f"--evaluators=classifier: {encoder.description or encoder.init} has no "
                     f"classifier head; give a supervised or fine-tuned run's --workdir, or "
                     f"leave classifier out of --evaluators.")


def evaluate_encoder(encoder: encoders.Encoder, plan: Plan, output: Output) -> dict:
  """Evaluates one encoder as `plan` says and writes OUT/report.{json,md}.

  Args:
    encoder: from `encoders.load_encoder`.
    plan: from `plan` (data, evaluators, checked once for every encoder it evaluates).
    output: where the report, features.npz and plots go.

  Returns:
    The report dict (as written to OUT/report.json by process 0).

  Raises:
    ValueError / FileNotFoundError: bad data found while reading it
      (report.ReportExistsError for an earlier report without output.overwrite).
  """
  total_start = time.perf_counter()
  data, split, train_split = plan.data, plan.data.split, plan.train_split
  if data.labels_csv and not (data.label_mode or "").startswith("primary"):
    logging.info("--labels_csv is only used by --label_mode=primary; ignoring it.")

  encode_fn, variables = encoders.make_encode_fn(encoder, data.features)
  start = time.perf_counter()
  eval_examples = features_lib.encode_split(
      encode_fn, variables, data.dataset, data.data_dir, split, batch_size=data.batch_size,
      max_examples=data.max_examples, progress_desc=f"features {split}")
  split_seconds = {split: time.perf_counter() - start}
  train_examples = None
  if train_split and plan.train_features:
    if train_split == split:
      logging.warning("--train_split equals --split (%s): the probe and kNN are scored on "
                      "the examples they were fitted on.", split)
    train_examples = features_lib.encode_split(
        encode_fn, variables, data.dataset, data.data_dir, train_split,
        batch_size=data.batch_size, max_examples=data.max_examples,
        progress_desc=f"features {train_split}")
  elif train_split:  # the classifier's classes without train positives: labels only
    train_examples = features_lib.read_split_labels(
        data.dataset, data.data_dir, train_split, max_examples=data.max_examples)
  extraction_seconds = time.perf_counter() - start
  if train_split and plan.train_features:
    key = f"{train_split} (probe)" if train_split == split else train_split
    split_seconds[key] = extraction_seconds - split_seconds[split]
  if data.labels_csv and data.label_mode == "primary":
    eval_examples = labels_lib.attach_csv_finding_text(eval_examples, data.labels_csv)
    if train_examples is not None:
      train_examples = labels_lib.attach_csv_finding_text(train_examples, data.labels_csv)

  seed = int(encoder.config.seed)
  report, arrays = evaluate_features(
      eval_examples, train_examples, plan.evaluators, label_mode=data.label_mode,
      class_names=plan.class_names, seed=seed, show_progress=True,
      classifier_label_mode=encoder.classifier_label_mode)
  report.update({
      "encoder": encoder.description, "encoder_source": encoder.source,
      "encoder_init": encoder.init, "objective": encoder.objective,
      "checkpoint_step": encoder.step, "model": encoder.config.model,
      # What trained the weights: init source, label fraction and subset, fine-tuning mode.
      "training": encoder.training,
      "init_from": (encoder.training or {}).get("init_from"),
      "image_size": int(encoder.config.image_size), "features": data.features,
      "dataset": data.dataset, "split": split, "train_split": train_split,
      "num_train_examples": (len(next(iter(train_examples.values())))
                             if train_examples is not None else None),
      "patients_in_several_splits": plan.patients_in_several_splits,
      "devices": jax.device_count(), "processes": jax.process_count(),
      "platform": jax.default_backend(),
      "feature_extraction_seconds": extraction_seconds,
      "feature_extraction_seconds_per_split": split_seconds,
  })
  if plan.patients_in_several_splits:
    report["warnings"] = [
        f"{plan.patients_in_several_splits} patient(s) of {data.dataset} have images in more "
        f"than one split (dataset metadata): figures may be flattered by recognising "
        f"patients."] + report.get("warnings", [])
  report["total_seconds"] = time.perf_counter() - total_start
  if jax.process_index() != 0:
    return report_lib.clean_for_json(report)
  pictures = None
  if output.plots:
    pictures = pictures_lib.prepare(
        encoder, eval_examples, train_examples, report, class_names=plan.class_names,
        dataset=data.dataset, data_dir=data.data_dir, split=split, train_split=train_split,
        seed=seed)
  return report_lib.write_report(report, arrays, output.out_dir, plots=output.plots,
                                 save_features=output.save_features,
                                 overwrite=output.overwrite, seed=seed,
                                 pictures=pictures)
