"""The trainer's checkpoints: resume from the newest good one, save the replicated state.

The orbax layer (save, restore one step, read-only loading for evaluation) is
simclr_jax/checkpointing.py; this module is what a training run does with it:

  `resume(...)`  restores the newest checkpoint that restores (`restore_newest_good`);
                 damaged ones are moved aside to checkpoints/damaged-<step>/ (never
                 deleted); one of another model/optimizer is a ConfigError.
  `Saver`        the run's CheckpointManager, created after the first step (a stop during
                 compilation writes nothing), and host copies of the replicated state. A
                 save that fails, in the foreground or the background, stops the run with
                 one line (errors.SaveFailed); no wait for a save outlasts a stop signal by
                 more than config.stop_grace_seconds.
"""
import logging
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import flax
import jax
import ml_collections
import numpy as np

from simclr_jax import checkpointing
from simclr_jax import objectives
from simclr_jax.errors import ConfigError
from simclr_jax.errors import DamagedCheckpoint
from simclr_jax.errors import IncompatibleCheckpoint
from simclr_jax.errors import NoUsableCheckpoint
from simclr_jax.errors import RunError
from simclr_jax.errors import SaveFailed
from simclr_jax.training import run_control
from simclr_jax.training import step as step_lib


def restore_newest_good(workdir: str, state: Any, rng: jax.Array, data_iterator: Any
                        ) -> Tuple[Any, jax.Array, int]:
  """Restores the newest checkpoint that can be restored; moves damaged ones aside.

  Tries the complete checkpoints from the newest down. One that cannot be restored
  (a truncated array file, a missing _METADATA or data-iterator state, ...) is logged
  with its step and the reason; once an older one restores, the damaged ones are moved
  to checkpoints/damaged-<step>/ (never deleted) and training resumes from the good one.

  Args:
    workdir: the run's directory (the caller holds its lock).
    state, rng: host-side targets with the structure to restore.
    data_iterator: set to the restored step's position.

  Returns:
    (state, rng, step); the targets unchanged and step 0 without checkpoints.

  Raises:
    NoUsableCheckpoint: checkpoints exist but none restores (nothing is moved).
    IncompatibleCheckpoint: the newest intact one holds another model.
  """
  leftovers = checkpointing.incomplete_checkpoints(workdir)
  if leftovers:
    logging.warning("Ignoring incomplete checkpoint directories in %s (a save was "
                    "interrupted; removed when this run saves): %s",
                    checkpointing.checkpoint_directory(workdir), ", ".join(leftovers))
  damaged: List[DamagedCheckpoint] = []
  for step in reversed(checkpointing.complete_steps(workdir)):
    try:
      restored_state, restored_rng = checkpointing.restore(workdir, step, state, rng,
                                                           data_iterator)
      problem = None
    except DamagedCheckpoint as error:
      problem = error
    if not _all_processes_agree(problem is None):
      problem = problem or DamagedCheckpoint(step, "damaged on another process")
    if problem is not None:
      logging.warning("Cannot restore checkpoint %d in %s: %s", step,
                      checkpointing.checkpoint_directory(workdir), problem.reason)
      damaged.append(problem)
      continue
    for bad in damaged:
      if jax.process_index() == 0:
        moved_to = checkpointing.move_aside(workdir, bad.step)
        logging.warning("Moved damaged checkpoint %d to %s; resuming from step %d.",
                        bad.step, moved_to, step)
    if damaged and jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("simclr_jax: damaged checkpoints moved aside")
    logging.info("Resumed from checkpoint step %d in %s", step,
                 checkpointing.checkpoint_directory(workdir))
    return restored_state, restored_rng, step
  if damaged:
    listing = "; ".join(f"step {d.step}: {d.reason}" for d in damaged)
    raise NoUsableCheckpoint(
        f"No checkpoint in {checkpointing.checkpoint_directory(workdir)} can be restored "
        f"({listing}). Move them out of the way to start again from step 0, or use "
        f"another --workdir.")
  return state, rng, 0


def _all_processes_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def resume(workdir: str, state: step_lib.TrainState, rng: jax.Array, data_iterator: Any
           ) -> Tuple[step_lib.TrainState, jax.Array, int]:
  """(state, rng, start step) of the newest good checkpoint; the inputs and 0 without one.

  Raises:
    NoUsableCheckpoint: checkpoints exist but none restores.
    ConfigError: the newest intact checkpoint holds another model or optimizer.
  """
  try:
    tree, rng, start_step = restore_newest_good(workdir, state.to_checkpoint(), rng,
                                                data_iterator)
  except IncompatibleCheckpoint as error:
    raise ConfigError(str(error)) from None
  return step_lib.TrainState.from_checkpoint(tree), rng, start_step


class Saver:
  """Saves the replicated train state, the run's key and the data position at a step.

  A save that fails (no space or inodes left, permission, its folder gone) stops the run
  with `errors.SaveFailed`: one line with the step, the checkpoint's path and the cause
  (exit 2). A background save's failure is found after the next step (`check`, which never
  waits), a foreground one's at once. The failed save's temporary directory is removed (on
  a full disk it holds the space a resume needs); the newest complete checkpoint is kept.

  Waits for a save in flight are polls: after a stop signal (`stop`) they give up
  config.stop_grace_seconds after it (`SaveFailed(abandoned=True)`), so a stuck save never
  keeps a stopped run alive.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, rng: jax.Array,
               data_iterator: Any, *, stop: Optional[run_control.StopSignals] = None,
               lock: Optional[run_control.WorkdirLock] = None):
    self._config, self._workdir = config, workdir
    self._rng, self._data_iterator = np.asarray(rng), data_iterator
    self._stop, self._lock = stop, lock
    self._grace = float(config.get("stop_grace_seconds", 90.0))
    self._manager = None
    self._in_flight: Optional[int] = None   # a save started and not yet known complete
    self._last_started: Optional[int] = None
    self._abandoned = False                 # its threads may be stuck: never wait again
    self._step = 0                          # the step the run is at (for messages)

  def open(self) -> None:
    """Creates the CheckpointManager (it may delete the temporary directories of saves
    that never finished, and checkpoints beyond config.keep_checkpoints; with
    supervised.select_by_validation it also keeps the best validation checkpoint)."""
    selecting = objectives.selects_by_validation(self._config)
    try:
      self._manager = checkpointing.create_manager(
          self._workdir, max_to_keep=self._config.keep_checkpoints,
          async_saves=self._config.async_checkpointing,
          best_metric=checkpointing.SELECTION_METRIC if selecting else None)
    except OSError as error:
      raise SaveFailed(f"cannot create {checkpointing.checkpoint_directory(self._workdir)} "
                       f"({checkpointing.save_error_cause(error)}); nothing was saved."
                       ) from None
    self._selecting = selecting

  def check(self, step: int) -> None:
    """After every step: raises the error of a background save that failed (never waits).

    Raises:
      SaveFailed: the save in flight failed.
    """
    self._step = step
    if self._in_flight is not None and not self._manager.is_saving_in_progress():
      self._collect()

  def save(self, step: int, replicated_state: step_lib.TrainState,
           metrics: Optional[Dict[str, float]] = None) -> None:
    """Starts saving (in the background with async_checkpointing); `metrics` (the
    validation selection's) are saved with the checkpoint.

    Raises:
      SaveFailed: this save, or the one before it, failed (or a stop outlasted the grace).
    """
    self._step = step
    self._wait()
    host_state = step_lib.host_copy(
        flax.jax_utils.unreplicate(replicated_state).to_checkpoint())
    if self._selecting and metrics is None:
      metrics = {}   # saved without a score: kept only while among the newest
    self._set_aside_foreign(step)
    self._in_flight = self._last_started = step
    try:
      checkpointing.save(self._manager, step, host_state, self._rng, self._data_iterator,
                         metrics=metrics)
    except Exception as error:  # pylint: disable=broad-except  (OSError, tensorstore, ...)
      self._in_flight = None
      raise self._failure(step, error) from None

  def wait_until_finished(self) -> None:
    """Waits for the save in flight (bounded after a stop signal); raises its error."""
    self._wait()

  def close(self, *, after_error: bool = False) -> None:
    """Waits for a save in flight: the last checkpoint is complete.

    Args:
      after_error: the run is already ending on an error: the wait is bounded by
        config.stop_grace_seconds and a failure of that save is only logged.
    """
    if self._manager is None:
      return
    if not self._abandoned:
      deadline = time.monotonic() + self._grace if after_error else None
      try:
        self._wait(deadline)
      except RunError as error:   # SaveFailed, or WorkdirLost: why that save failed
        if not after_error:
          raise
        if isinstance(error, SaveFailed):
          logging.warning("%s", error)
    if not self._abandoned:
      self._manager.close()
    if self._lock is not None and self._lock.moved():
      self._remove_partial(self._last_started)   # what a late save made at the old path

  def _wait(self, deadline: Optional[float] = None) -> None:
    """Polls until the save in flight is done; gives up at `deadline` (time.monotonic())
    or config.stop_grace_seconds after a stop signal."""
    if self._in_flight is None:
      return
    while self._manager.is_saving_in_progress():
      signalled = self._stop is not None and self._stop.past_deadline()
      if signalled or (deadline is not None and time.monotonic() > deadline):
        self._abandoned = True
        waited_for = (f"{self._grace:g} s after {self._stop.describe()}" if signalled
                      else f"{self._grace:g} s")
        raise SaveFailed(
            f"checkpoint {self._in_flight} ({self._path(self._in_flight)}) was still being "
            f"written {waited_for} (config.stop_grace_seconds): the save is stuck; stopped "
            f"at step {self._step} without it. {self._newest()}", abandoned=True,
            exit_code=130 if signalled and self._stop.reason == "interrupt" else 2)
      time.sleep(0.02)
    self._collect()

  def _collect(self) -> None:
    """The save in flight has ended: raises its error, if any."""
    step, self._in_flight = self._in_flight, None
    try:
      self._manager.wait_until_finished()   # returns at once (or raises the save's error)
    except Exception as error:  # pylint: disable=broad-except
      raise self._failure(step, error) from None

  def _failure(self, step: int, error: BaseException) -> SaveFailed:
    """The one line of a failed save, after removing its temporary directory.

    Raises:
      WorkdirLost: the save failed because the workdir was moved or taken over: that is
        the line to print.
    """
    self._remove_partial(step)
    run_control.check_workdir(self._lock, self._step)
    return SaveFailed(f"cannot save checkpoint {step} to {self._path(step)}: "
                      f"{checkpointing.save_error_cause(error)}; stopped at step "
                      f"{max(self._step, step)}. {self._newest()}")

  def _path(self, step: int) -> str:
    return str(checkpointing.checkpoint_directory(self._workdir) / str(step))

  def _newest(self) -> str:
    try:
      steps = checkpointing.complete_steps(self._workdir)
    except OSError:
      steps = []
    if not steps:
      return "No checkpoint was completed."
    return (f"The newest complete checkpoint, step {steps[-1]}, is kept: fix the cause and "
            f"run the same command to resume from it.")

  def _remove_partial(self, step: Optional[int]) -> None:
    """Removes what the failed save of `step` left (process 0): its temporary directory
    in a workdir still this run's; at the old path of a workdir moved away, the folders
    its writes made again (`_remove_remade_once`); nothing in a workdir another trainer
    took over.

    Writes of a save that failed may still be running (orbax stops waiting at the first
    error; TensorStore makes the folders of each file it writes), so the removal is
    repeated until nothing came back for half a second (at most config.stop_grace_seconds).
    """
    if jax.process_index() != 0 or step is None:
      return
    if self._lock is not None and not self._lock.holds():
      if not self._lock.moved():
        return
      remove_once = self._remove_remade_once
    else:
      remove_once = self._remove_temporary_once
    deadline = quiet_since = time.monotonic()
    deadline += self._grace
    while time.monotonic() - quiet_since < 0.5 and time.monotonic() < deadline:
      removed = remove_once(step)
      if removed is None:
        return
      if removed:
        quiet_since = time.monotonic()
      time.sleep(0.05)

  def _remove_temporary_once(self, step: int) -> bool:
    """Removes checkpoints/<step>.orbax-checkpoint-tmp*; True when there was one."""
    directory = checkpointing.checkpoint_directory(self._workdir)
    names = [name for name in checkpointing.incomplete_checkpoints(self._workdir)
             if name.split(".", 1)[0] == str(step)]
    for name in names:
      shutil.rmtree(directory / name, ignore_errors=True)
    return bool(names)

  def _remove_remade_once(self, step: int) -> Optional[bool]:
    """At the old path of a workdir moved away: removes checkpoints/<step>[.orbax-
    checkpoint-tmp*] and the folders above, when nothing else is there (None: something
    else is, nothing is touched). True when there was something to remove."""
    directory = checkpointing.checkpoint_directory(self._workdir)
    try:
      entries = os.listdir(self._workdir)
      names = os.listdir(directory) if entries == [directory.name] else []
    except OSError:   # not there (any more)
      return False
    if entries not in ([], [directory.name]) or not all(
        name == str(step) or name.startswith(f"{step}.orbax-checkpoint-tmp")
        for name in names):
      logging.warning("Left %s alone: something else is there now.", self._workdir)
      return None
    for name in names:
      shutil.rmtree(directory / name, ignore_errors=True)
    for folder in (directory, directory.parent):
      try:
        os.rmdir(folder)
      except OSError:
        break
    return True

  def _set_aside_foreign(self, step: int) -> None:
    """A checkpoint of `step` this run did not write (a trainer that lost the workdir
    finished it late): moved to checkpoints/damaged-<step>, never overwritten or lost."""
    if not os.path.exists(self._path(step)):   # on disk: the manager's list is cached
      return
    if jax.process_index() == 0:
      moved_to = checkpointing.move_aside(self._workdir, step)
      logging.warning("Checkpoint %d was already there, written by another trainer; moved it "
                      "to %s.", step, moved_to)
    self._manager.reload()
