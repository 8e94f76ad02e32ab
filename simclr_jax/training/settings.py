"""Settings checked before a run compiles or writes anything, and what a resume may change.

`check_run(config)` turns the config and the prepared dataset into a `RunPlan` (batch per
device, steps, the config resolved by its objective) or raises `errors.ConfigError` with
one line naming the field, the value and what is accepted; it writes nothing, not even
into `config`. `check_workdir_config` compares a workdir's config.json with the config a
resumed run was started with (`check_resume`: what may change), and its dataset.json with
the data it would resume on (`check_same_data`); `record_config` writes config.json and
dataset.json and keeps the config it replaces in config_history.jsonl.
`unknown_key_message` explains a mistyped `--config.KEY`; `warn_if_split_smaller_than_batch`
warns when the images a run trains on do not fill one batch.
"""
import dataclasses
import difflib
import json
import logging
import os
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import jax
import ml_collections

from simclr_jax import checkpointing
from simclr_jax import objectives
from simclr_jax.errors import ConfigError
from simclr_jax.errors import one_line
from simclr_jax.errors import WorkdirNotWritable
from simclr_jax.training import optim
from simclr_jax.workdir import CONFIG_FILE
from simclr_jax.workdir import CONFIG_HISTORY_FILE
from simclr_jax.workdir import DATASET_FILE


@dataclasses.dataclass(frozen=True)
class RunPlan:
  config: ml_collections.ConfigDict   # the config resolved by its objective (a copy)
  per_device_batch: int
  steps_per_epoch: int
  total_steps: int
  stored_image_size: int
  dataset: Optional[Dict[str, Any]] = None   # dataset_record: what the run trains on


def _positive(config: ml_collections.ConfigDict, field: str, what: str) -> None:
  value = _get(config, field)
  if not (isinstance(value, (int, float)) and value > 0):   # also catches NaN
    raise ConfigError(f"config.{field}={value!r}: {what}")


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def check_settings(config: ml_collections.ConfigDict, device_count: int) -> int:
  """The checks that need neither data nor a workdir; returns the per-device batch."""
  from simclr_jax import data
  try:
    data.check_batch_size(config.batch_size, device_count, jax.process_count())
    objective = objectives.of(config)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  if config.image_size < 8:
    raise ConfigError(f"config.image_size={config.image_size} is too small; use >= 8.")
  _positive(config, "optimizer.learning_rate",
            "the learning rate must be > 0 (a negative rate ascends the loss), e.g. 3e-4.")
  objective.check(config)
  if config.num_train_steps == 0:
    raise ConfigError(
        "config.num_train_steps=0 is a run of zero steps; use a positive number of steps, "
        f"or -1 to train for config.num_epochs ({config.num_epochs}) epochs.")
  if config.num_train_steps < 0:
    _positive(config, "num_epochs",
              "a run of zero epochs; use a positive number of epochs (or set "
              "config.num_train_steps > 0).")
  for field in ("checkpoint_every_steps", "keep_checkpoints", "log_every_steps"):
    if int(config[field]) < 1:
      raise ConfigError(f"config.{field}={config[field]} must be >= 1.")
  if config.optimizer.warmup_steps < -1:
    raise ConfigError(f"config.optimizer.warmup_steps={config.optimizer.warmup_steps} must "
                      f"be >= 0 (steps), or -1 to use warmup_epochs.")
  return config.batch_size // device_count


def check_run(config: ml_collections.ConfigDict, workdir: Optional[str] = None) -> RunPlan:
  """Checks the config against the devices and the prepared data (writes nothing).

  Args:
    config: the experiment config (not changed).
    workdir: the run's directory, when known: a resumed run keeps the init_from source
      its config.json records (training/init_from.py).

  Returns:
    The run's RunPlan, with the config resolved: its init_from source recorded, then the
    objective's resolve (e.g. a supervised run's class count and training subset).

  Raises:
    ConfigError: one line naming the field, its value and what is accepted.
  """
  from simclr_jax import data   # TFDS import: only when a run really starts
  from simclr_jax.training import init_from
  per_device_batch = check_settings(config, jax.device_count())
  builder = open_dataset(config)
  stored_image_size = int(builder.info.features["image"].shape[0])
  if config.image_size > stored_image_size:
    raise ConfigError(
        f"config.image_size={config.image_size} is larger than the images stored in "
        f"{config.dataset} ({stored_image_size}px): the crop would only upsample. Use "
        f"--config.image_size<={stored_image_size} or prepare the dataset at a larger size.")
  try:
    data.check_labels_needed(config)   # an unlabelled dataset: one line naming the setting
    train_images = data.num_train_examples(config)   # the split, or a supervised subset
  except (FileNotFoundError, ValueError) as error:   # not prepared, unknown split, label mode
    raise ConfigError(one_line(error)) from None
  steps_per_epoch = max(1, train_images // config.batch_size)
  if config.num_train_steps > 0:
    total_steps = int(config.num_train_steps)
  else:
    total_steps = int(config.num_epochs * steps_per_epoch)
    if total_steps < 1:
      raise ConfigError(
          f"config.num_epochs={config.num_epochs} is less than one step "
          f"({steps_per_epoch} steps per epoch of {config.batch_size} images); train for "
          f"at least {1 / steps_per_epoch:.3g} epochs or set config.num_train_steps.")
  warn_if_split_smaller_than_batch(
      train_images, config.batch_size,
      f"config.train_split={config.train_split!r} of {config.dataset}" +
      (" (the supervised run's subset)" if objectives.trains_on_labels(config) else ""))
  config = init_from.resolve(config, workdir)
  config = objectives.of(config).resolve(config)
  check_objective(config)
  warmup = optim.warmup_steps(config, steps_per_epoch)
  if warmup > total_steps:
    source = (f"config.optimizer.warmup_steps={warmup}"
              if config.optimizer.warmup_steps >= 0 else
              f"config.optimizer.warmup_epochs={config.optimizer.warmup_epochs} "
              f"({warmup} steps of {steps_per_epoch} per epoch)")
    raise ConfigError(
        f"{source} is longer than the run ({total_steps} steps): the learning rate would "
        f"never reach its peak. Use a warm-up of at most {total_steps} steps, e.g. "
        f"--config.optimizer.warmup_steps={total_steps // 10}.")
  return RunPlan(config=config, per_device_batch=per_device_batch,
                 steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                 stored_image_size=stored_image_size,
                 dataset=dataset_record(config, builder))


def warn_if_split_smaller_than_batch(num_examples: int, batch_size: int, what: str) -> bool:
  """One warning, with the numbers, when a run trains on fewer images than one batch.

  Every batch then holds the same images several times (the contrastive loss sees copies
  of one image as negatives), and an epoch counts as one step.

  Args:
    num_examples: the images the run trains on (a split, or a fine-tuning subset).
    batch_size: config.batch_size (global).
    what: names those images for the message, e.g. "config.train_split='train' of
      synthetic_cxr/32".

  Returns:
    True when it warned.
  """
  if num_examples >= batch_size:
    return False
  logging.warning("%s has %d images, fewer than config.batch_size=%d: every batch repeats "
                  "them (each about %.1f times) and an epoch counts as one step; use "
                  "--config.batch_size<=%d or more images.", what, num_examples, batch_size,
                  batch_size / max(num_examples, 1), max(num_examples, 1))
  return True


def dataset_record(config: ml_collections.ConfigDict, builder) -> Dict[str, Any]:
  """What a run trains on, as WORKDIR/dataset.json keeps it: the prepared dataset's
  version, split sizes and its metadata.json's prepare options and counts."""
  metadata = dict(builder.info.metadata or {})
  return _normalise({
      "dataset": config.dataset, "data_dir": str(config.data_dir),
      "metadata_file": os.path.join(str(builder.data_dir), "metadata.json"),
      "version": str(builder.info.version),
      "split_sizes": {name: int(split.num_examples)
                      for name, split in sorted(builder.info.splits.items())},
      "prepare_options": metadata.get("prepare_options"),
      "prepare_counts": metadata.get("prepare_counts")})


# Where two records may differ and still describe the same data.
_RECORD_PLACES = ("data_dir", "metadata_file")


def check_objective(config: ml_collections.ConfigDict) -> None:
  """Builds the model and the loss (no parameters, nothing compiled) to check them."""
  from simclr_jax.training.step import AXIS_NAME
  objective = objectives.of(config)
  try:
    model = objective.build_model(config, AXIS_NAME)
    objective.build_loss(config, model, AXIS_NAME)
  except ValueError as error:
    raise ConfigError(one_line(error)) from None


def known_datasets() -> List[str]:
  """'name/config' of every dataset this project can prepare (data.known_datasets)."""
  from simclr_jax import data
  return [f"{name}/{config_name}" for name, config_names in data.known_datasets().items()
          for config_name in config_names]


def open_dataset(config: ml_collections.ConfigDict):
  """The TFDS builder of config.dataset, or ConfigError (unknown, not prepared)."""
  from simclr_jax import data
  import tensorflow_datasets as tfds
  try:
    data.check_dataset_name(config.dataset, config.data_dir)
  except ValueError:
    raise ConfigError(f"config.dataset={config.dataset!r} is not a known dataset; known: "
                      f"{', '.join(known_datasets())}, "
                      f"{data.describe_own_datasets(config.data_dir)}.") from None
  try:
    builder = data.get_builder(config.dataset, config.data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as error:
    raise ConfigError(f"config.dataset={config.dataset!r}: {one_line(error)}") from None
  except FileNotFoundError as error:
    raise ConfigError(one_line(error)) from None
  return builder


# ----------------------------------------------------------------------------- CLI keys

def flatten(config: Any, prefix: str = "") -> Dict[str, Any]:
  """{'optimizer.learning_rate': 0.002, ...} of a ConfigDict or a JSON dict."""
  items = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      items.update(flatten(value, name + "."))
    else:
      items[name] = value
  return items


def unknown_key_message(config: ml_collections.ConfigDict, key: str) -> Optional[str]:
  """One line for a `--config.KEY` that the config does not have; None if it has it."""
  fields = flatten(config)
  sections = {name.rsplit(".", 1)[0] for name in fields if "." in name}
  if key in fields or key in sections:
    return None
  close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
  if not close:   # e.g. a field given without its section: 'temperature'
    leaf = key.rsplit(".", 1)[-1]
    close = [name for name in fields if name.rsplit(".", 1)[-1] == leaf][:3]
  hint = (f"; did you mean {' or '.join('--config.' + name for name in close)}?" if close
          else "; the fields are listed in simclr_jax/config.py.")
  return f"--config.{key}: the config has no field {key!r}{hint}"


# ----------------------------------------------------------------------------- resume

# What a resumed run may change without --allow_config_changes. These fields decide how
# long the run goes, how often it logs or saves, how the input is read and which cheap
# evaluators watch it, not what one step computes; a resumed run with them changed
# continues the same training. Extending num_train_steps/num_epochs also stretches the
# cosine schedule's horizon from the next step on (what an extension asks for). Every
# other change (model, optimizer, learning rate, augmentation, data, seed, ...) would
# make the checkpoints and config.json disagree, so it is refused unless named in
# --allow_config_changes; the config it replaces is kept in config_history.jsonl.
RESUMABLE_FIELDS = (
    "num_train_steps", "num_epochs", "stop_at_step", "log_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "progress_bar", "data_dir",
    "input.num_workers", "input.prefetch_buffer_size", "eval_every_steps", "online_eval.",
    "async_checkpointing", "compilation_cache", "compilation_cache_dir",
    "stop_grace_seconds",
)


def _normalise(value: Any) -> Any:
  return json.loads(json.dumps(value, default=str))   # tuples -> lists, as in config.json


def config_changes(stored: Dict[str, Any], config: ml_collections.ConfigDict
                   ) -> Dict[str, Tuple[Any, Any]]:
  """{field: (value in config.json, value now)} for the fields both configs have."""
  before = flatten(stored)
  now = flatten(json.loads(config.to_json_best_effort()))
  return {name: (before[name], now[name]) for name in sorted(before.keys() & now.keys())
          if _normalise(before[name]) != _normalise(now[name])}


def _resumable(name: str, allowed: Iterable[str]) -> bool:
  return any(name == field or (field.endswith(".") and name.startswith(field))
             for field in (*RESUMABLE_FIELDS, *allowed))


def check_resume(stored: Dict[str, Any], config: ml_collections.ConfigDict, *,
                 workdir: str, step: int, allowed: Iterable[str] = ()
                 ) -> Dict[str, Tuple[Any, Any]]:
  """Compares a workdir's config.json with the config resuming it at `step`.

  Args:
    stored: the parsed config.json.
    config: the config of this run.
    workdir: for the message.
    step: the checkpoint step being resumed.
    allowed: fields the user accepts changing (--allow_config_changes).

  Returns:
    All changes {field: (old, new)} (to record in the config history).

  Raises:
    ConfigError: a change outside RESUMABLE_FIELDS and `allowed`, naming each field.
  """
  allowed = tuple(allowed)
  changes = config_changes(stored, config)
  refused = {name: change for name, change in changes.items()
             if not _resumable(name, allowed)}
  if refused:
    listing = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in refused.items())
    raise ConfigError(
        f"--workdir={workdir} holds a run at step {step} trained with other settings: "
        f"{listing}. Resume with the config in its config.json, start a new --workdir, or "
        f"accept the change with --allow_config_changes={','.join(refused)}.")
  return changes


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict,
                         allowed: Sequence[str], *, dataset: Optional[Dict[str, Any]] = None
                         ) -> Dict[str, Tuple[Any, Any]]:
  """Compares WORKDIR/config.json with this run's config (reads only).

  Args:
    workdir: the run's directory (the caller holds its lock).
    config: this run's config.
    allowed: --allow_config_changes.
    dataset: this run's dataset_record, checked against WORKDIR/dataset.json on a resume
      (`check_same_data`).

  Returns:
    All changes {field: (old, new)}; {} for a new workdir.

  Raises:
    ConfigError: resuming (the workdir has checkpoints) with a change outside
      RESUMABLE_FIELDS and `allowed`, naming the fields; on other data than the run's
      (unless `allowed` names data_dir); an unknown field in `allowed`.
  """
  for field in allowed:
    message = unknown_key_message(config, field)
    if message:
      raise ConfigError(message.replace("--config.", "--allow_config_changes="))
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      stored = json.load(f)
  except ValueError as error:
    raise ConfigError(f"{path} is not valid JSON ({error}); move it away to resume with "
                      f"this config.") from None
  steps = checkpointing.complete_steps(workdir)
  if not steps:   # nothing trained with it yet: it is replaced (and kept in the history)
    return config_changes(stored, config)
  changes = check_resume(stored, config, workdir=workdir, step=steps[-1], allowed=allowed)
  if dataset is not None:
    changes.update(check_same_data(workdir, stored, dataset, step=steps[-1],
                                   allowed=allowed))
  return changes


def _stored_dataset_record(workdir: str, stored: Dict[str, Any]
                           ) -> Optional[Dict[str, Any]]:
  """WORKDIR/dataset.json; for a workdir written before it existed, the record of the
  data_dir its config.json names, if that is still prepared; else None."""
  path = os.path.join(workdir, DATASET_FILE)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    pass
  except ValueError as error:
    raise ConfigError(f"{path} is not valid JSON ({error}); move it away to resume (the "
                      f"data will not be compared).") from None
  try:
    previous = ml_collections.ConfigDict(stored)
    return dataset_record(previous, open_dataset(previous))
  except Exception:  # pylint: disable=broad-except  (moved, not prepared any more: unknown)
    return None


def check_same_data(workdir: str, stored: Dict[str, Any], dataset: Dict[str, Any], *,
                    step: int, allowed: Iterable[str] = ()) -> Dict[str, Tuple[Any, Any]]:
  """A resume trains on the data the run was trained on (WORKDIR/dataset.json).

  config.data_dir may change (the same data, moved or copied); data whose version, split
  sizes or prepare options/counts (its metadata.json) differ is refused unless `allowed`
  names data_dir.

  Returns:
    {'dataset.json: FIELD': (old, new)} of the differences (accepted ones, for the config
    history).

  Raises:
    ConfigError: other data, naming the metadata.json, the fields and how to accept it.
  """
  before = _stored_dataset_record(workdir, stored)
  if before is None:
    return {}
  old, new = flatten(before), flatten(dataset)
  names = [*new, *(name for name in old if name not in new)]   # the record's order
  differences = {name: (old.get(name), new.get(name)) for name in names
                 if name not in _RECORD_PLACES and old.get(name) != new.get(name)}
  if not differences:
    return {}
  if "data_dir" not in allowed:
    listing = ", ".join(f"{name} {a!r} -> {b!r}" for name, (a, b) in
                        list(differences.items())[:3])
    more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
    raise ConfigError(
        f"--workdir={workdir} holds a run at step {step} trained on other data than "
        f"{dataset['metadata_file']} describes: {listing}{more} (the run's data: "
        f"{os.path.join(workdir, DATASET_FILE)}, data_dir {before.get('data_dir')!r}). Resume "
        f"with that data, or accept the change with --allow_config_changes=data_dir.")
  return {f"{DATASET_FILE}: {name}": change for name, change in differences.items()}


def record_config(workdir: str, config: ml_collections.ConfigDict,
                  changes: Dict[str, Tuple[Any, Any]], start_step: int, *,
                  dataset: Optional[Dict[str, Any]] = None) -> None:
  """Writes WORKDIR/config.json (and dataset.json); the config it replaces goes to
  config_history.jsonl.

  Args:
    workdir: the run's directory (the caller holds its lock).
    config: this run's config.
    changes: from check_workdir_config.
    start_step: the step this start resumed from (recorded with the old config).
    dataset: this run's dataset_record, written to WORKDIR/dataset.json.

  Raises:
    WorkdirNotWritable: a file cannot be written (naming it and why).
  """
  if jax.process_index() != 0:
    return
  try:
    _record_config(workdir, config, changes, start_step, dataset)
  except OSError as error:
    raise WorkdirNotWritable(
        f"cannot write {error.filename or workdir} ({error.strerror or error}) after step "
        f"{start_step + 1}; stopped. Free space or make it writable, then run the same "
        f"command.") from None


def _record_config(workdir: str, config: ml_collections.ConfigDict,
                   changes: Dict[str, Tuple[Any, Any]], start_step: int,
                   dataset: Optional[Dict[str, Any]]) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  if changes and os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    record = {"replaced_at_step": start_step,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "changes": {name: [old, new] for name, (old, new) in changes.items()},
              "previous_config": previous}
    with open(os.path.join(workdir, CONFIG_HISTORY_FILE), "a") as f:
      f.write(json.dumps(record, default=str) + "\n")
    logging.warning("Config changed since the last start (%s); the previous one is kept in "
                    "%s.", ", ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in changes.items()),
                    CONFIG_HISTORY_FILE)
  checkpointing.write_config(workdir, config)
  if dataset is not None:
    dataset_path = os.path.join(workdir, DATASET_FILE)
    with open(dataset_path + ".tmp", "w") as f:
      json.dump(dataset, f, indent=2, sort_keys=True)
    os.replace(dataset_path + ".tmp", dataset_path)
