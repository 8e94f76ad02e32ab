"""The trainer's checkpoints: resume from the newest good one, save the replicated state.

The orbax layer (save, restore one step, read-only loading for evaluation) is
simclr_jax/checkpointing.py; this module is what a training run does with it:

  `resume(...)`  restores the newest checkpoint that restores (`restore_newest_good`);
                 damaged ones are moved aside to checkpoints/damaged-<step>/ (never
                 deleted); one of another model/optimizer is a ConfigError.
  `Saver`        the run's CheckpointManager, created after the first step (a stop during
                 compilation writes nothing), and host copies of the replicated state.
"""
import logging
from typing import Any, Dict, List, Optional, Tuple

import flax
import jax
import ml_collections
import numpy as np

from simclr_jax import checkpointing
from simclr_jax.errors import ConfigError
from simclr_jax.errors import DamagedCheckpoint
from simclr_jax.errors import IncompatibleCheckpoint
from simclr_jax.errors import NoUsableCheckpoint
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
  """Saves the replicated train state, the run's key and the data position at a step."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, rng: jax.Array,
               data_iterator: Any):
    self._config, self._workdir = config, workdir
    self._rng, self._data_iterator = np.asarray(rng), data_iterator
    self._manager = None

  def open(self) -> None:
    """Creates the CheckpointManager (it may delete the temporary directories of saves
    that never finished, and checkpoints beyond config.keep_checkpoints; with
    supervised.select_by_validation it also keeps the best validation checkpoint)."""
    selecting = (self._config.get("objective") == "supervised" and
                 self._config.supervised.select_by_validation > 0)
    self._manager = checkpointing.create_manager(
        self._workdir, max_to_keep=self._config.keep_checkpoints,
        async_saves=self._config.async_checkpointing,
        best_metric=checkpointing.SELECTION_METRIC if selecting else None)
    self._selecting = selecting

  def save(self, step: int, replicated_state: step_lib.TrainState,
           metrics: Optional[Dict[str, float]] = None) -> None:
    """Starts saving (in the background with async_checkpointing); `metrics` (the
    validation selection's) are saved with the checkpoint."""
    host_state = step_lib.host_copy(
        flax.jax_utils.unreplicate(replicated_state).to_checkpoint())
    if self._selecting and metrics is None:
      metrics = {}   # saved without a score: kept only while among the newest
    checkpointing.save(self._manager, step, host_state, self._rng, self._data_iterator,
                       metrics=metrics)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for a save in flight: the last checkpoint is complete."""
    if self._manager is not None:
      self._manager.close()

