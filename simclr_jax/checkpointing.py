"""Orbax checkpoints: save, resume and load-for-evaluation.

Layout of a workdir:

  WORKDIR/config.json                 the experiment config (ConfigDict.to_json)
  WORKDIR/checkpoints/<step>/state    params, batch_stats, opt_state, step (PyTree)
  WORKDIR/checkpoints/<step>/rng      the run's base PRNG key
  WORKDIR/checkpoints/<step>/data_iter  Grain iterator state, one JSON file per process

Orbax writes every checkpoint into a temporary directory and renames it into place only
when all items are complete (and, on several processes, after all of them finished), so a
run killed mid-save leaves the previous checkpoint as the latest complete one; the
half-written directory is not a step the manager will ever restore.
"""
import json
import logging
import os
from typing import Any, Optional, Tuple

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


def create_manager(workdir: str, *, max_to_keep: int = 3,
                   with_data_iterator: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager for WORKDIR/checkpoints.

  Saving policy (every N steps, at the end, on preemption) is decided by the training
  loop, which calls `save` with the steps it wants kept; the manager keeps the newest
  `max_to_keep`.
  """
  handlers = {"state": ocp.StandardCheckpointHandler(),
              "rng": ocp.StandardCheckpointHandler()}
  if with_data_iterator:
    handlers["data_iter"] = grain.checkpoint.CheckpointHandler()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
      # Saving synchronously keeps "the checkpoint at step N exists" true as soon as
      # save() returns, which the preemption path relies on before exiting.
      enable_async_checkpointing=False)
  directory = epath.Path(workdir).absolute() / CHECKPOINT_DIR
  leftovers = _incomplete_checkpoints(directory)
  if leftovers:
    # The manager deletes these on start-up; they are never restored.
    logging.warning("Ignoring incomplete checkpoint directories in %s (a save was "
                    "interrupted): %s", directory, ", ".join(leftovers))
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _incomplete_checkpoints(directory: epath.Path) -> list:
  """Orbax's temporary directories: a save that never finished (e.g. `kill -9`)."""
  if not directory.exists():
    return []
  return sorted(p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name)


def save(manager: ocp.CheckpointManager, step: int, state: Any, rng: jax.Array,
         data_iterator: Optional[Any] = None) -> None:
  """Saves host-local (unreplicated) `state` and `rng` (+ iterator state) at `step`."""
  # StandardSave takes PyTrees, not single arrays: the key goes in a one-entry dict.
  items = {"state": ocp.args.StandardSave(state),
           "rng": ocp.args.StandardSave({"key": rng})}
  if data_iterator is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)
  manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, state: Any, rng: jax.Array,
                   data_iterator: Optional[Any] = None) -> Tuple[Any, jax.Array, int]:
  """Restores the latest complete checkpoint into the structures given.

  Returns:
    (state, rng, step); step is 0 and the inputs come back unchanged when there is no
    checkpoint yet.
  """
  step = manager.latest_step()
  if step is None:
    return state, rng, 0
  items = {"state": ocp.args.StandardRestore(state),
           "rng": ocp.args.StandardRestore({"key": rng})}
  iterator_state_file = None
  if data_iterator is not None:
    saved_by = epath.Path(manager.directory) / str(step) / "data_iter"
    own_file = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if (saved_by / own_file).exists():
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iterator)
    else:
      # Saved by a different number of processes. Our iterator's state is the number
      # of global batches consumed, the same on every process, so any file will do.
      candidates = sorted(saved_by.glob("process_*-of-*.json")) if saved_by.exists() else []
      if not candidates:
        raise FileNotFoundError(f"{saved_by}: no data-iterator state in checkpoint {step}.")
      iterator_state_file = candidates[0]
      logging.warning("Checkpoint %d was written by another number of processes; restoring "
                      "the data iterator from %s.", step, iterator_state_file.name)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except ValueError as error:
    if "do not match" not in str(error):
      raise
    raise ValueError(
        f"Checkpoint {step} in {manager.directory} was written by a run with a different "
        f"model or optimizer (its parameter/optimizer-state tree differs from this "
        f"config's). Resume with the config in {epath.Path(manager.directory).parent / CONFIG_FILE} "
        f"or start a new --workdir.") from error
  if iterator_state_file is not None:
    data_iterator.set_state(json.loads(iterator_state_file.read_text()))
  logging.info("Resumed from checkpoint step %d in %s", step, manager.directory)
  return restored["state"], restored["rng"]["key"], step


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
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: is {workdir!r} a workdir written by `python -m simclr_jax.train`?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_for_eval(workdir: str, step: Optional[int] = None
                  ) -> Tuple[ml_collections.ConfigDict, dict, int]:
  """Loads the config and the model variables of a training run, for evaluation.

  Args:
    workdir: a directory written by `simclr_jax.train`.
    step: the checkpoint step; the latest complete one when None.

  Returns:
    (config, {'params': ..., 'batch_stats': ...} as host numpy arrays, step).
  """
  config = read_config(workdir)
  manager = create_manager(workdir, with_data_iterator=False)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(
        f"No complete checkpoint in {manager.directory}; train first or pass --random_init.")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise ValueError(f"--step={step} is not a checkpoint in {manager.directory}; "
                     f"available steps: {sorted(steps)}.")
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = restored["state"]
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  variables = jax.tree_util.tree_map(np.asarray, variables)
  return config, variables, int(step)
