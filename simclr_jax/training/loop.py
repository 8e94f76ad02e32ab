"""The training loop: `train_and_evaluate(config, workdir)` runs (or resumes) pretraining.

`_loop` reads as "step; log if due; monitor / select if due; save if due; stop if asked"; the
books are kept elsewhere: settings.check_run (what may run), step.py (the pmapped step),
step_log.StepLog (timers, metrics, progress, finite checks), checkpoints.py (resume and
save), run_control.py (the lock and the three ways a run stops early). A new hook (a
profiler window, an EMA evaluation) is one line in `_loop` and one function elsewhere.
"""
import logging
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax
import jax
import ml_collections

from simclr_jax import checkpointing
from simclr_jax import data
from simclr_jax import objectives
from simclr_jax.checkpointing import SELECTION_METRIC
from simclr_jax.errors import ConfigError
from simclr_jax.errors import one_line
from simclr_jax.runtime import compilation_cache
from simclr_jax.training import checkpoints
from simclr_jax.training import optim
from simclr_jax.training import run_control
from simclr_jax.training import settings
from simclr_jax.training import step as step_lib
from simclr_jax.training.step import AXIS_NAME
from simclr_jax.training.step import TrainState
from simclr_jax.training.step_log import StepLog


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_changes: Sequence[str] = ()) -> TrainState:
  """Runs (or resumes) pretraining in `workdir`; returns the final host-local state.

  Args:
    config: the experiment config (not changed; its objective resolves a copy).
    workdir: checkpoints, metrics.jsonl, config.json and TensorBoard events go here
      (simclr_jax/workdir.py names them).
    allow_config_changes: config fields a resumed run may change beyond
      settings.RESUMABLE_FIELDS (the previous config is kept in the history).

  Raises:
    errors.RunError: the run ended on purpose, with `exit_code` and a one-line
      message: bad settings, workdir in use or not writable, no restorable checkpoint
      (2), a non-finite step (3), Ctrl-C (130); a checkpoint that cannot be written or
      a workdir moved or taken over while training (2).
  """
  # First: a Ctrl-C from here on only sets a flag, and never lands inside XLA.
  stop = run_control.StopSignals(stop_at_step=config.stop_at_step,
                                 grace_seconds=config.get("stop_grace_seconds", 90.0))
  lock = None
  try:
    cache_dir = compilation_cache.enable(config)
    plan = settings.check_run(config, workdir)   # reads the data, writes nothing
    monitor = _create_monitor(plan.config)     # reads its held-out images now
    selection = _create_selection(plan.config, workdir)   # its validation images too
    lock = run_control.lock_workdir(workdir)
    changes = settings.check_workdir_config(workdir, plan.config, allow_config_changes,
                                            dataset=plan.dataset)
    return _train(plan, workdir, stop, lock, changes, cache_dir, monitor, selection)
  finally:
    stop.close()
    if lock is not None:
      lock.release()


def _create_monitor(config: ml_collections.ConfigDict):
  """The online monitor (config.eval_every_steps > 0), or None; bad settings exit 2."""
  if int(config.eval_every_steps) <= 0:
    return None   # without importing the evaluators (scikit-learn: seconds per start)
  from simclr_jax.evaluation import online
  try:
    return online.maybe_create(config)
  except (FileNotFoundError, ValueError) as error:
    raise ConfigError(one_line(error)) from None


def _create_selection(config: ml_collections.ConfigDict, workdir: str):
  """The validation selection (supervised.select_by_validation > 0), or None; a split it
  cannot score exits 2."""
  if not objectives.selects_by_validation(config):
    return None   # without importing the evaluators (scikit-learn: seconds per start)
  from simclr_jax.evaluation import selection
  try:
    return selection.ValidationSelection(config, workdir)
  except (FileNotFoundError, ValueError) as error:
    raise ConfigError(f"config.supervised.select_by_validation="
                      f"{config.supervised.select_by_validation}: {one_line(error)}") from None


def _train(plan: settings.RunPlan, workdir: str, stop: run_control.StopSignals,
           lock: Optional[run_control.WorkdirLock],
           config_changes: Dict[str, Tuple[Any, Any]], cache_dir: Optional[str],
           monitor: Optional[Any], selection: Optional[Any]) -> TrainState:
  """Builds the model, optimiser and data of a checked plan, resumes, then loops."""
  config = plan.config
  logging.info("%d devices (%d local), %d processes; per-device batch %d, global %d; "
               "%d steps (%d per epoch)", jax.device_count(), jax.local_device_count(),
               jax.process_count(), plan.per_device_batch, config.batch_size,
               plan.total_steps, plan.steps_per_epoch)
  objective = objectives.of(config)
  model = objective.build_model(config, AXIS_NAME)
  tx, learning_rate_fn = optim.create_optimizer(config, plan.total_steps, plan.steps_per_epoch)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  input_shape = (config.image_size, config.image_size, 1)
  # A resumed run's checkpoint replaces every variable: init_from is not read again.
  resuming = bool(checkpointing.complete_steps(workdir))
  state = step_lib.create_train_state(config, model, tx, init_rng, input_shape,
                                      init_encoder=not resuming)
  data_iterator = data.create_train_iterator(config)
  state, train_rng, start_step = checkpoints.resume(workdir, state, train_rng, data_iterator)
  if selection is not None:
    selection.start_at(start_step)
  if start_step >= plan.total_steps:
    logging.info("Checkpoint step %d already reaches the run's %d steps; nothing to train.",
                 start_step, plan.total_steps)
    return state
  if stop.at_stop_step(start_step):
    logging.warning("Checkpoint step %d is at or past config.stop_at_step=%d; nothing to "
                    "train (raise or remove stop_at_step to go on).", start_step,
                    config.stop_at_step)
    return state
  p_train_step = step_lib.pmap_train_step(tx, learning_rate_fn,
                                          objective.build_loss(config, model, AXIS_NAME))
  replicated_state, replicated_rng = step_lib.to_devices(state), step_lib.to_devices(train_rng)
  log = StepLog(config, workdir, start_step=start_step, total_steps=plan.total_steps,
                steps_per_epoch=plan.steps_per_epoch,
                views_per_image=objective.views_per_image, cache_dir=cache_dir)
  saver = checkpoints.Saver(config, workdir, train_rng, data_iterator, stop=stop, lock=lock)

  def open_workdir(step: int, metrics: Dict[str, Any]) -> None:
    """After a first step that finished: metrics files, config.json, checkpoints."""
    log.open(step, metrics)
    settings.record_config(workdir, config, config_changes, start_step, dataset=plan.dataset)
    saver.open()

  return _loop(config, workdir, p_train_step=p_train_step,
               state=replicated_state, rng=replicated_rng,
               data_iterator=data_iterator, start_step=start_step,
               total_steps=plan.total_steps, stop=stop, lock=lock, log=log, saver=saver,
               monitor=monitor, selection=selection, open_workdir=open_workdir)


def _loop(config: ml_collections.ConfigDict, workdir: str, *, p_train_step: Callable,
          state: TrainState, rng: jax.Array, data_iterator: Any, start_step: int,
          total_steps: int, stop: run_control.StopSignals,
          lock: Optional[run_control.WorkdirLock], log: StepLog,
          saver: checkpoints.Saver, monitor: Optional[Any], selection: Optional[Any],
          open_workdir: Callable[[int, Dict[str, Any]], None]) -> TrainState:
  """Steps from `start_step` to `total_steps` (or a stop); returns the host-local state.

  `state` and `rng` are replicated (`step.to_devices`); nothing is written before the
  first step finished (`open_workdir`), nor after the workdir stopped being this run's.
  """
  step, finished = start_step, False
  try:
    while step < total_steps:
      batch = next(data_iterator)  # 'image': uint8 [local_devices, per_device, H, W, 1]
      log.step_starts()
      state, metrics = p_train_step(state, batch, rng)
      step += 1
      run_control.check_workdir(lock, step)  # moved, deleted, taken over: stop, write nothing
      saver.check(step)                      # a background save that failed stops the run
      stop_now = stop.should_stop(step)      # Ctrl-C, SIGTERM or config.stop_at_step
      if log.first_step(metrics):            # compiled (or loaded from the cache), timed
        if stop_now and stop.requested:      # a signal during compilation
          stop.end(step, workdir, saved=False)
          break
        open_workdir(step, metrics)
      log.step_done(step, metrics)
      online = _evaluate_if_due(monitor, selection, step, total_steps, config, state)
      selected = {name: online[name] for name in (SELECTION_METRIC,) if name in online}
      save_now = (step % config.checkpoint_every_steps == 0 or step == total_steps or
                  stop_now or bool(selected))   # a scored step's checkpoint may be the best
      log.write_if_due(step, force=save_now, online=online)
      if save_now:
        saver.save(step, state, metrics=selected or None)
      if stop_now and step < total_steps:
        saver.wait_until_finished()          # the save just started in the background
        stop.end(step, workdir, saved=True)
        break
    else:
      finished = True
  finally:
    batch = None            # the last batch lives in the loader's shared memory: release it,
    data_iterator.close()   # then stop Grain's worker processes (they free the rest)
    # Waits for a save in flight: the last checkpoint is complete (bounded on an error).
    saver.close(after_error=sys.exc_info()[0] is not None)
    log.close(stop.outcome or ("done" if finished else "failed"), step)
  return flax.jax_utils.unreplicate(state)


def _evaluate_if_due(monitor: Optional[Any], selection: Optional[Any], step: int,
                     total_steps: int, config: ml_collections.ConfigDict, state: TrainState
                     ) -> Dict[str, float]:
  """The online monitor's scalars (every config.eval_every_steps) and the validation
  selection's (every config.supervised.select_by_validation steps), each also at the last
  step; {} when neither is due. Both only read the weights; their scalars join this step's
  metrics line, and 'online_eval_seconds' holds the time of both (left out of views/s)."""
  scalars = {}
  last = step == total_steps
  if monitor is not None and (last or step % config.eval_every_steps == 0):
    scalars.update(monitor.run(step, state.params, state.batch_stats))
  if selection is not None and (last or step % config.supervised.select_by_validation == 0):
    selected = selection.run(step, state.params, state.batch_stats)
    seconds = scalars.get("online_eval_seconds", 0.0) + selected["validation_seconds"]
    scalars.update(selected, online_eval_seconds=seconds)
  return scalars
