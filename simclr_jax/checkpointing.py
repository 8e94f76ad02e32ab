"""Orbax checkpoints: save (the trainer), restore one step, load for evaluation.

The files of a workdir are named in simclr_jax/workdir.py; a checkpoint is

  WORKDIR/checkpoints/<step>/state      params, batch_stats, opt_state, step (PyTree)
  WORKDIR/checkpoints/<step>/rng        the run's base PRNG key
  WORKDIR/checkpoints/<step>/data_iter  Grain iterator state, one JSON file per process

Orbax writes every checkpoint into a temporary directory (`<step>.orbax-checkpoint-tmp-*`)
and renames it into place only when all items are complete (and, on several processes,
after all of them finished), so a run killed mid-save leaves the previous checkpoint as
the latest complete one; the half-written directory is never a step anyone restores.

Only the trainer (holding the workdir lock) creates a CheckpointManager: a manager may
create, delete (keep_checkpoints), finalize and clean up temporary directories. Everything
that reads — `complete_steps`, `restore`, `load_for_eval` — goes through orbax's handlers
directly and never writes, so an evaluator can read the checkpoints of a running trainer.
"""
import functools
import json
import logging
import os
import re
import time
from typing import Any, List, Optional, Tuple

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from simclr_jax.errors import DamagedCheckpoint
from simclr_jax.errors import IncompatibleCheckpoint
from simclr_jax.workdir import CHECKPOINT_DIR
from simclr_jax.workdir import CONFIG_FILE
from simclr_jax.workdir import DAMAGED_PREFIX


# The metric a run with config.supervised.select_by_validation saves its checkpoints with
# (the classifier's macro AUROC on the validation split); the best one is kept.
SELECTION_METRIC = "validation_auroc"


def checkpoint_directory(workdir: str) -> epath.Path:
  return epath.Path(workdir).absolute() / CHECKPOINT_DIR


def complete_steps(workdir: str) -> List[int]:
  """Steps of the finalized checkpoints in WORKDIR/checkpoints, ascending (read-only).

  A save in progress or interrupted (orbax's temporary directory) and checkpoints moved
  aside as damaged are not steps.
  """
  return sorted(ocp.path.step.checkpoint_steps(checkpoint_directory(workdir)))


def incomplete_checkpoints(workdir: str) -> List[str]:
  """Orbax's temporary directories: a save in flight, or one that never finished."""
  directory = checkpoint_directory(workdir)
  if not directory.exists():
    return []
  return sorted(p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name)


def create_manager(workdir: str, *, max_to_keep: int, async_saves: bool,
                   best_metric: Optional[str] = None) -> ocp.CheckpointManager:
  """The trainer's CheckpointManager for WORKDIR/checkpoints (saving only).

  Only a trainer holding the workdir lock may create one: on creation it deletes the
  temporary directories of interrupted saves, and it deletes checkpoints beyond the
  newest `max_to_keep`. The training loop decides when to save (every N steps, at the
  end, on a stop signal).

  Args:
    workdir: the training run's directory.
    max_to_keep: checkpoints kept (the newest; config.keep_checkpoints).
    async_saves (config.async_checkpointing): write in a background thread, so training continues during the save
      (`save` returns once the arrays are handed over; `wait_until_finished` /
      `close` block until the checkpoint is complete).
    best_metric: also keep the checkpoint whose saved metrics hold the highest value of
      this name (config.supervised.select_by_validation); checkpoints saved with metrics
      carry them in <step>/metrics/ (`best_step` reads them).
  """
  handlers = {"state": ocp.StandardCheckpointHandler(),
              "rng": ocp.StandardCheckpointHandler(),
              "data_iter": grain.checkpoint.CheckpointHandler()}
  if best_metric is None:
    keep = dict(max_to_keep=max_to_keep)
  else:
    metric = functools.partial(_metric_or_lowest, best_metric)
    keep = dict(best_fn=metric, best_mode="max", preservation_policy=ocp.checkpoint_managers.
                AnyPreservationPolicy([
                    ocp.checkpoint_managers.LatestN(max_to_keep),
                    ocp.checkpoint_managers.BestN(get_metric_fn=metric, n=1,
                                                  keep_checkpoints_without_metrics=False)]))
  options = ocp.CheckpointManagerOptions(
      create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_saves,
      # Folders made in `save` itself: made in the background, a failure (no inodes, no
      # permission) left `save` waiting forever for a folder that never came.
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
      **keep)
  return ocp.CheckpointManager(checkpoint_directory(workdir), options=options,
                               item_handlers=handlers)


def _metric_or_lowest(name: str, metrics: Any) -> float:
  """metrics[name], or -inf when it is missing or NaN (never the best)."""
  value = float((metrics or {}).get(name, float("nan")))
  return value if np.isfinite(value) else float("-inf")


def saved_metrics(workdir: str, step: int) -> Optional[dict]:
  """The metrics checkpoint `step` was saved with (<step>/metrics/metrics), or None."""
  path = checkpoint_directory(workdir) / str(step) / "metrics" / "metrics"
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def best_step(workdir: str, metric: str = SELECTION_METRIC) -> Tuple[int, float]:
  """(step, value) of the complete checkpoint with the highest saved `metric` (ties: the
  newest), read-only.

  Raises:
    FileNotFoundError: no complete checkpoint.
    ValueError: no complete checkpoint was saved with the metric.
  """
  steps = complete_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"No complete checkpoint in {checkpoint_directory(workdir)}.")
  saved = {step: saved_metrics(workdir, step) or {} for step in steps}
  scored = [(_metric_or_lowest(metric, saved[step]), step) for step in steps
            if metric in saved[step]]
  if not scored:
    raise ValueError(f"no checkpoint in {checkpoint_directory(workdir)} carries {metric!r}: "
                     f"the run was not trained with config.supervised.select_by_validation "
                     f"> 0; give a --step (available: {steps}).")
  value, step = max(scored)
  return step, value


class _IteratorStateAtSave:
  """The data iterator's state when `save` was called.

  With asynchronous saves orbax may serialise the items after `save` returned, while the
  loop already draws the next batches; the checkpoint of step N must hold the position
  after step N's batch. Grain's handler accepts any object with `get_state()`; bytes are
  decoded and written as the JSON text restored by `set_state(json.loads(...))`.
  """

  def __init__(self, data_iterator: Any):
    self._state = json.dumps(data_iterator.get_state(), indent=2).encode()

  def get_state(self) -> bytes:
    return self._state


def save(manager: ocp.CheckpointManager, step: int, state: Any, rng: np.ndarray,
         data_iterator: Any, metrics: Optional[dict] = None) -> None:
  """Starts saving `state` and `rng` (host numpy copies) + the iterator state at `step`.

  The arrays must not alias buffers the next train step donates (the caller passes host
  copies). With an asynchronous manager the write completes in the background; the
  checkpoint only becomes a step (renamed from its temporary directory) once complete.
  `metrics` ({name: float}) are saved with it when the manager keeps a best checkpoint.
  """
  # StandardSave takes PyTrees, not single arrays: the key goes in a one-entry dict.
  items = {"state": ocp.args.StandardSave(state),
           "rng": ocp.args.StandardSave({"key": rng}),
           "data_iter": grain.checkpoint.CheckpointSave(_IteratorStateAtSave(data_iterator))}
  manager.save(step, args=ocp.args.Composite(**items), force=True, metrics=metrics)


# TensorStore's errors carry the OS error as text: "... No space left on device
# [os_error_code='28']".
_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='(\d+)'")


def save_error_cause(error: BaseException) -> str:
  """Why a save failed, on one line: the OS error (strerror and errno) when there is one."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      where = f": {seen.filename}" if seen.filename else ""
      return f"{os.strerror(seen.errno)} [errno {seen.errno}{where}]"
    code = _TENSORSTORE_OS_ERROR.search(str(seen))
    if code:
      return f"{os.strerror(int(code.group(1)))} [errno {code.group(1)}]"
    seen = seen.__cause__ or seen.__context__
  return _first_line(error)


def _first_line(error: BaseException) -> str:
  """The gist of an orbax/TensorStore error, on one line."""
  text = " ".join(str(error).split()).split(" See full TensorStore details")[0]
  if len(text) > 240:
    text = text[:237] + "..."
  return f"{type(error).__name__}: {text}"


def restore(workdir: str, step: int, state: Any, rng: jax.Array,
            data_iterator: Optional[Any] = None) -> Tuple[Any, jax.Array]:
  """Restores checkpoint `step` into the structures given (read-only).

  Args:
    workdir: the training run's directory.
    step: a step of `complete_steps(workdir)`.
    state: target tree (host arrays) with the structure, shapes and dtypes to restore.
    rng: target key.
    data_iterator: when given, its position is set to the one saved at `step`.

  Returns:
    (state, rng).

  Raises:
    DamagedCheckpoint: a file is missing or cannot be read.
    IncompatibleCheckpoint: the checkpoint is intact but holds another model/optimizer.
  """
  path = checkpoint_directory(workdir) / str(step)
  required = ["state/_METADATA", "rng/_METADATA"]
  missing = [name for name in required if not (path / name).exists()]
  iterator_file = None
  if data_iterator is not None:
    iterator_dir = path / "data_iter"
    own_file = iterator_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    saved = sorted(iterator_dir.glob("process_*-of-*.json")) if iterator_dir.exists() else []
    if own_file.exists():
      iterator_file = own_file
    elif saved:
      # Saved by a different number of processes. Our iterator's state is the number of
      # global batches consumed, the same on every process, so any file will do.
      iterator_file = saved[0]
      logging.warning("Checkpoint %d was written by another number of processes; restoring "
                      "the data iterator from %s.", step, iterator_file.name)
    else:
      missing.append("data_iter/process_*.json (the data-iterator state)")
  if missing:
    raise DamagedCheckpoint(step, f"missing {', '.join(missing)}")

  checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  try:
    restored_state = checkpointer.restore(path / "state", args=ocp.args.StandardRestore(state))
  except ValueError as error:
    # _METADATA is there (checked above): a tree that differs is another config's run.
    if "do not match" in str(error):
      raise IncompatibleCheckpoint(
          f"Checkpoint {step} in {path.parent} was written by a run with a different "
          f"model or optimizer (its parameter/optimizer-state tree differs from this "
          f"config's). Resume with the config in "
          f"{epath.Path(workdir).absolute() / CONFIG_FILE} or start a new --workdir."
      ) from error
    raise DamagedCheckpoint(step, f"state unreadable ({_first_line(error)})") from error
  except Exception as error:  # pylint: disable=broad-except  (tensorstore, OSError, ...)
    raise DamagedCheckpoint(step, f"state unreadable ({_first_line(error)})") from error
  try:
    restored_rng = checkpointer.restore(path / "rng",
                                        args=ocp.args.StandardRestore({"key": rng}))["key"]
  except Exception as error:  # pylint: disable=broad-except
    raise DamagedCheckpoint(step, f"rng unreadable ({_first_line(error)})") from error
  if data_iterator is not None:
    try:
      iterator_state = json.loads(iterator_file.read_text())
      data_iterator.set_state(iterator_state)
    except Exception as error:  # pylint: disable=broad-except
      raise DamagedCheckpoint(
          step, f"data-iterator state {iterator_file.name} unreadable "
          f"({_first_line(error)})") from error
  return restored_state, restored_rng


def move_aside(workdir: str, step: int) -> epath.Path:
  """Renames checkpoint `step` to checkpoints/damaged-<step> (never deletes it)."""
  directory = checkpoint_directory(workdir)
  target = directory / f"{DAMAGED_PREFIX}{step}"
  suffix = 1
  while target.exists():
    suffix += 1
    target = directory / f"{DAMAGED_PREFIX}{step}-{suffix}"
  os.rename(directory / str(step), target)
  return target


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes WORKDIR/config.json atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json as a ConfigDict.

  Raises:
    FileNotFoundError: no config.json.
    ValueError: one that is not a JSON object, naming the file and the position.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: is {workdir!r} a workdir written by `python -m simclr_jax.train`?")
  try:
    config = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno} column "
                     f"{error.colno}); restore the file the trainer wrote.") from None
  except (OSError, UnicodeDecodeError) as error:
    raise ValueError(f"{path} cannot be read ({error}).") from None
  if not isinstance(config, dict):
    raise ValueError(f"{path} holds a JSON {type(config).__name__}, not the run's config "
                     f"(a JSON object); restore the file the trainer wrote.")
  return ml_collections.ConfigDict(config)


def _damaged_for_eval(directory: epath.Path, step: int, error: BaseException) -> ValueError:
  """One line naming the checkpoint and, where it can tell, the file that is damaged."""
  for name in ("state/_METADATA", "_CHECKPOINT_METADATA", "state/_sharding"):
    path = directory / str(step) / name
    if path.exists():
      try:
        json.loads(path.read_text())
      except (ValueError, OSError, UnicodeDecodeError) as file_error:
        return ValueError(f"checkpoint {step} in {directory} is damaged: {path} is unreadable "
                          f"({file_error}); evaluate another --step (or let the trainer "
                          f"write a new checkpoint).")
  return ValueError(f"checkpoint {step} in {directory} cannot be read "
                    f"({_first_line(error)}); evaluate another --step.")


def load_for_eval(workdir: str, step: Optional[int] = None
                  ) -> Tuple[ml_collections.ConfigDict, dict, int]:
  """Loads the config and the model variables of a training run, for evaluation.

  Strictly read-only: no CheckpointManager (which may create, delete, finalize or clean
  up), so it is safe on the workdir of a running trainer. Only complete checkpoints are
  read. With `step=None` the newest is used; if the trainer deletes it (keep_checkpoints)
  while it is being read — its folder gone, or going: a newer checkpoint exists and its
  files vanish under the reader — the then-newest is tried.

  Args:
    workdir: a directory written by `simclr_jax.train`.
    step: the checkpoint step; the latest complete one when None.

  Returns:
    (config, {'params': ..., 'batch_stats': ...} as host numpy arrays, step).

  Raises:
    FileNotFoundError: no complete checkpoint.
    ValueError: an unknown or deleted --step, a damaged checkpoint (naming the step and
      the file), a malformed config.json (naming the file and the position).
  """
  config = read_config(workdir)
  directory = checkpoint_directory(workdir)
  checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  attempts = 10
  for attempt in range(attempts):
    steps = complete_steps(workdir)
    if not steps:
      raise FileNotFoundError(
          f"No complete checkpoint in {directory}; train first or pass --random_init.")
    if step is not None and step not in steps:
      raise ValueError(f"--step={step} is not a checkpoint in {directory}; "
                       f"available steps: {steps}.")
    chosen = max(steps) if step is None else step
    try:
      state = checkpointer.restore(directory / str(chosen) / "state")
      break
    except Exception as error:  # pylint: disable=broad-except
      time.sleep(0.2)  # a deletion in progress finishes meanwhile
      now = complete_steps(workdir)
      being_deleted = (chosen not in now or not (directory / str(chosen)).exists()
                       or (step is None and max(now) > chosen))
      if not being_deleted:
        raise _damaged_for_eval(directory, chosen, error) from None
      if step is not None:
        raise ValueError(f"--step={step}: checkpoint {step} in {directory} was deleted while "
                         f"it was read (the trainer keeps only the newest "
                         f"keep_checkpoints); available steps now: {now}.") from None
      if attempt == attempts - 1:
        raise ValueError(f"the newest checkpoint in {directory} was deleted while it was read, "
                         f"{attempts} times (a trainer saving faster than it can be read); "
                         f"pass --step or evaluate after training.") from None
      # Deleted by the trainer (it keeps the newest keep_checkpoints) while we read.
      logging.info("Checkpoint %d was removed while reading it; trying the newest again.",
                   chosen)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  variables = jax.tree_util.tree_map(np.asarray, variables)
  return config, variables, int(chosen)
