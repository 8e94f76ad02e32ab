"""SimCLR pretraining: the pure pmapped train step, the training loop and the CLI.

  python -m simclr_jax.train --config experiments/configs/demo.py --workdir runs/demo/train \
      [--config.KEY=VALUE ...] [--allow_config_changes=FIELD,...]

Starting on a workdir that already holds checkpoints resumes from the newest good one.
What happens around the loop (settings checks, the workdir lock, Ctrl-C/SIGTERM, damaged
checkpoints, metrics.jsonl) lives in settings.py and run_control.py; exit codes: 0 done
or preempted (SIGTERM), 2 bad settings / workdir in use / no restorable checkpoint, 3 a
non-finite step, 130 Ctrl-C.
"""
import functools
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from simclr_jax import checkpointing
from simclr_jax.runtime import compilation_cache
from simclr_jax.training import settings
from simclr_jax import data
from simclr_jax.training import run_control
from simclr_jax import models
from simclr_jax import objectives
from simclr_jax.training import optim
from simclr_jax.runtime.progress import Progress
from simclr_jax.runtime.progress import format_duration

AXIS_NAME = "batch"


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 [], number of completed steps
  params: Any
  batch_stats: Any
  opt_state: Any


def to_checkpoint(state: TrainState) -> dict:
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}


def from_checkpoint(tree: dict) -> TrainState:
  return TrainState(step=tree["step"], params=tree["params"],
                    batch_stats=tree["batch_stats"], opt_state=tree["opt_state"])


def create_train_state(config: ml_collections.ConfigDict, model: Any,
                       tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: Tuple[int, ...]) -> TrainState:
  """Initialises parameters (or loads `config.init_from`) and optimiser state.

  Args:
    config: experiment config (uses init_from).
    model: the SimCLR module.
    tx: the optimiser.
    rng: initialisation key.
    input_shape: one example, e.g. (image_size, image_size, 1).
  """
  @jax.jit
  def init(rng):
    return model.init(rng, jnp.zeros((2, *input_shape), jnp.float32), train=False)

  variables = init(rng)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  if config.get("init_from", ""):
    # ImageNet (or any torchvision) initialisation of the encoder; the head stays random.
    from simclr_jax import convert  # torch is imported lazily there
    encoder_vars = convert.load_torch_weights(config.init_from, config)
    params = flax.core.unfreeze(params)
    batch_stats = flax.core.unfreeze(batch_stats)
    params["encoder"] = encoder_vars["params"]
    batch_stats["encoder"] = encoder_vars["batch_stats"]
    logging.info("Initialised the encoder from %s", config.init_from)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params))


def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *,
               tx: optax.GradientTransformation, learning_rate_fn: Callable,
               objective: objectives.Objective) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimisation step on this device's share of the global batch (run under pmap).

  Randomness is keyed by (seed, step, global example index): the global index of row i
  on device d is d * per_device + i, so the augmented views of an image, and hence the
  whole update, do not depend on how the global batch is split over devices or processes.

  Args:
    state: replicated train state.
    batch: this device's part of the global batch: 'image' uint8 [per_device, H, W, 1]
      and, depending on the config, 'weight' float32 [per_device] loss weights and the
      labels of a supervised objective.
    rng: the run's base key (replicated).
    tx: optimiser; learning_rate_fn: its schedule (for the metrics).
    objective: `objectives.create_objective(...)`: the loss of this device's batch.

  Returns:
    (new state, metrics averaged over all devices).
  """
  per_device = batch["image"].shape[0]
  step_rng = jax.random.fold_in(rng, state.step)
  example_ids = lax.axis_index(AXIS_NAME) * per_device + jnp.arange(per_device)

  def loss_fn(params):
    return objective(params, state.batch_stats, batch, step_rng, example_ids)

  (_, (new_batch_stats, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # The loss is the mean over this device's examples; the gradient of the global mean is
  # the mean of the per-device gradients (for NT-Xent the all_gather in the loss sends
  # each device the cotangents of its projections used as other devices' negatives).
  grads = lax.pmean(grads, AXIS_NAME)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  metrics = lax.pmean(metrics, AXIS_NAME)
  metrics["learning_rate"] = learning_rate_fn(state.step)
  metrics["grad_norm"] = optax.tree.norm(grads)
  # Checked on the host before every checkpoint: an update can overflow while the loss
  # that produced it was still finite.
  metrics["param_norm"] = optax.tree.norm(new_params)
  new_state = state.replace(step=state.step + 1, params=new_params,
                            batch_stats=new_batch_stats, opt_state=new_opt_state)
  return new_state, metrics


ConfigError = settings.ConfigError   # bad settings: one line, exit 2


def _host_scalars(metrics: Dict[str, jax.Array]) -> Dict[str, float]:
  return {k: float(v[0]) for k, v in jax.device_get(metrics).items()}


def _host_copy(tree: Any) -> Any:
  """Host numpy copies that share no memory with device buffers.

  On CPU, device_get returns zero-copy views of the device buffers; an asynchronous save
  holds them until they are written, while the next step donates those buffers
  (donate_argnums). JAX 0.10 then quietly skips the donation rather than overwrite a
  viewed buffer; copying keeps the donation and does not rely on that. On GPU/TPU
  device_get already returns fresh host arrays.
  """
  copy = jax.default_backend() == "cpu"
  return jax.tree_util.tree_map(lambda x: np.array(x, copy=True) if copy else x,
                                jax.device_get(tree))


class _PlainLines:
  """stdout that says it is not a terminal: Progress then logs lines instead of a bar."""

  def write(self, text: str) -> int:
    return sys.stdout.write(text)

  def flush(self) -> None:
    sys.stdout.flush()

  def isatty(self) -> bool:
    return False


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_changes: Sequence[str] = ()) -> TrainState:
  """Runs (or resumes) pretraining in `workdir`; returns the final host-local state.

  Args:
    config: the experiment config.
    workdir: checkpoints, metrics.jsonl, config.json and TensorBoard events go here.
    allow_config_changes: config fields a resumed run may change beyond
      settings.RESUMABLE_FIELDS (the previous config is kept in the history).

  Raises:
    run_control.RunError: the run ended on purpose, with `exit_code` and a one-line
      message: bad settings, workdir in use or not writable, no restorable checkpoint
      (2), a non-finite step (3), Ctrl-C (130).
  """
  # First: a Ctrl-C from here on only sets a flag, and never lands inside XLA.
  stop = run_control.StopSignals()
  lock = None
  try:
    cache_dir = compilation_cache.enable(config)
    plan = settings.check_run(config)          # reads the data, writes nothing
    monitor = _create_monitor(config)               # reads its held-out images now
    lock = run_control.lock_workdir(workdir)
    changes = settings.check_workdir_config(workdir, config, allow_config_changes)
    return _train(config, workdir, plan, stop, changes, cache_dir, monitor)
  finally:
    stop.close()
    if lock is not None:
      lock.release()


def _create_monitor(config: ml_collections.ConfigDict):
  """The online monitor (config.eval_every_steps > 0), or None; bad settings exit 2."""
  from simclr_jax.evaluation import online
  try:
    return online.maybe_create(config)
  except (FileNotFoundError, ValueError) as error:
    raise ConfigError(settings._one_line(error)) from None  # pylint: disable=protected-access


def _train(config: ml_collections.ConfigDict, workdir: str, plan: settings.RunPlan,
           stop: run_control.StopSignals, config_changes: Dict[str, Tuple[Any, Any]],
           cache_dir: Optional[str], monitor: Optional[Any] = None) -> TrainState:
  """The training loop of train_and_evaluate (settings checked, workdir locked)."""
  total_steps, steps_per_epoch = plan.total_steps, plan.steps_per_epoch
  logging.info("%d devices (%d local), %d processes; per-device batch %d, global %d; "
               "%d steps (%d per epoch)", jax.device_count(), jax.local_device_count(),
               jax.process_count(), plan.per_device_batch, config.batch_size, total_steps,
               steps_per_epoch)

  model = models.create_model(config, axis_name=AXIS_NAME)
  tx, learning_rate_fn = optim.create_optimizer(config, total_steps, steps_per_epoch)
  base_rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(base_rng)
  input_shape = (config.image_size, config.image_size, 1)
  state = create_train_state(config, model, tx, init_rng, input_shape)

  data_iterator = data.create_train_iterator(config)
  try:
    checkpoint_tree, train_rng, start_step = run_control.restore_newest_good(
        workdir, to_checkpoint(state), train_rng, data_iterator)
  except checkpointing.IncompatibleCheckpoint as error:
    raise ConfigError(str(error)) from None
  state = from_checkpoint(checkpoint_tree)
  if start_step >= total_steps:
    logging.info("Checkpoint step %d already reaches the run's %d steps; nothing to train.",
                 start_step, total_steps)
    return state

  p_train_step = jax.pmap(
      functools.partial(
          train_step, tx=tx, learning_rate_fn=learning_rate_fn,
          objective=objectives.create_objective(config, model, AXIS_NAME)),
      axis_name=AXIS_NAME, donate_argnums=(0,))
  # Through an identity pmap, so the arrays carry the sharding the step returns and the
  # second call does not compile the step again.
  to_step_layout = jax.pmap(lambda tree: tree, axis_name=AXIS_NAME)
  replicated_state = to_step_layout(flax.jax_utils.replicate(state))
  replicated_rng = to_step_layout(flax.jax_utils.replicate(train_rng))
  host_rng = np.asarray(train_rng)

  log_every = max(1, config.get("log_every_steps", 10))
  views_per_step = settings.views_per_image(config) * config.batch_size
  eval_every = int(config.get("eval_every_steps", 0) or 0)
  progress = Progress(total_steps, desc="train", unit="step", every=log_every,
                      initial=start_step, enabled=jax.process_index() == 0,
                      stream=sys.stdout if config.get("progress_bar", True) else _PlainLines())
  # Both created after the first step, so a stop during compilation writes nothing.
  writer: Optional[run_control.MetricsWriter] = None
  manager = None

  def save(step: int) -> None:
    host_state = _host_copy(to_checkpoint(flax.jax_utils.unreplicate(replicated_state)))
    checkpointing.save(manager, step, host_state, host_rng, data_iterator)

  pending_metrics = []  # metrics of steps not yet logged (device arrays)
  last_checked = None
  window_start, window_steps = time.perf_counter(), 0
  step = start_step
  first_step: Dict[str, Any] = {}     # logged with the first step of this start
  last_loss, steady_start = None, None
  outcome = "failed"
  try:
    while step < total_steps:
      batch = next(data_iterator)  # 'image': uint8 [local_devices, per_device, H, W, 1]
      if writer is None:
        cache_hits_before, first_step_start = (compilation_cache.cache_hits(),
                                               time.perf_counter())
      replicated_state, metrics = p_train_step(replicated_state, batch, replicated_rng)
      step += 1
      window_steps += 1
      pending_metrics.append((step, metrics))
      stop_now = stop.should_stop(step) or step == config.get("stop_at_step", -1)

      if writer is None:  # the first step of this start: compiled (or loaded) and timed
        jax.block_until_ready(metrics)
        steady_start = time.perf_counter()
        progress.restart_interval(pending=1)   # the ETA leaves out the compilation
        first_step = {"first_step_seconds": steady_start - first_step_start,
                      "compilation_cache_hit":
                          compilation_cache.cache_hits() > cache_hits_before}
        logging.info("First step took %.1f s (%s).", first_step["first_step_seconds"],
                      f"train step loaded from the compilation cache {cache_dir}"
                      if first_step["compilation_cache_hit"] else
                      "compiling the train step" +
                      (f", now cached in {cache_dir}" if cache_dir else
                       "; compilation cache off"))
        if stop_now and stop.requested:   # stop_now: the step all processes agreed on
          outcome = "stopped before the first step finished; nothing written"
          if stop.reason == "interrupt":
            raise run_control.Interrupted(
                f"Interrupted (Ctrl-C) before the first step finished; nothing was "
                f"written to {workdir}.")
          logging.warning("Stopping early (preemption) before the first step finished; "
                          "nothing was written.")
          break
        run_control.check_finite(step, metrics)
        writer = run_control.MetricsWriter(workdir, start_step)
        settings.record_config(workdir, config, config_changes, start_step)
        manager = checkpointing.create_manager(
            workdir, max_to_keep=config.keep_checkpoints,
            async_saves=config.get("async_checkpointing", True))

      # Check the previous step's loss/gradients/parameters while this one runs (one step
      # of lag keeps the device busy); non-finite values stop before anything is saved.
      if last_checked is not None:
        run_control.check_finite(*last_checked)
      last_checked = (step, metrics)

      is_checkpoint_step = (step % config.checkpoint_every_steps == 0 or
                            step == total_steps or stop_now)
      # The online monitor only reads the weights; its scalars join this step's line.
      online_scalars = {}
      if monitor is not None and (step % eval_every == 0 or step == total_steps):
        online_scalars = monitor.run(step, replicated_state.params,
                                     replicated_state.batch_stats)
        window_start += online_scalars["online_eval_seconds"]  # views/s: training only
        progress.exclude(online_scalars["online_eval_seconds"])  # and the ETA
      progress_fields, progress_once = {}, {}
      if step % log_every == 0 or is_checkpoint_step or first_step or online_scalars:
        run_control.check_finite(step, metrics)
        last_checked = None  # checked now; not again next step
        elapsed = time.perf_counter() - window_start
        views_per_second = views_per_step * window_steps / max(elapsed, 1e-9)
        for logged_step, logged_metrics in pending_metrics:
          if logged_step % log_every == 0 or logged_step == step:
            scalars = _host_scalars(logged_metrics)
            scalars["views_per_second"] = views_per_second
            scalars["epoch"] = logged_step / steps_per_epoch
            if logged_step == step:
              scalars.update(first_step)
              scalars.update(online_scalars)
            writer.write(logged_step, scalars)   # the one place per-step scalars go
            last_loss = scalars["loss"]
        progress_fields = {"epoch": step / steps_per_epoch, "loss": last_loss,
                           "views/s": views_per_second}
        # On the next printed line only (the step's line when it is a logging step).
        progress_once = {name.replace("online_", ""): online_scalars[name]
                         for name in ("online_knn_accuracy", "online_knn_auroc")
                         if name in online_scalars}
        first_step = {}
        pending_metrics = []
        window_start, window_steps = time.perf_counter(), 0
      progress.update(1, once=progress_once, **progress_fields)
      if is_checkpoint_step:
        save(step)
      if stop_now and step < total_steps:
        manager.wait_until_finished()   # the save just started in the background
        if stop.reason == "interrupt":
          outcome = "interrupted (Ctrl-C)"
          raise run_control.Interrupted(
              f"Interrupted (Ctrl-C): saved checkpoint at step {step} in "
              f"{checkpointing.checkpoint_directory(workdir)}; run the same command to "
              f"resume.")
        reason = "preemption" if stop.requested else "stop_at_step"
        outcome = f"stopped early ({reason})"
        logging.warning("Stopping early (%s): saved checkpoint at step %d; exiting.",
                        reason, step)
        break
    else:
      outcome = "done"
  finally:
    batch = None            # the last batch lives in the loader's shared memory: release it,
    data_iterator.close()   # then stop Grain's worker processes (they free the rest)
    if manager is not None:
      manager.close()   # waits for a save in flight: the last checkpoint is complete
    if writer is not None:
      writer.close()
    progress.close(_summary(outcome, step, total_steps, start_step, last_loss,
                            steady_start, views_per_step))
  return flax.jax_utils.unreplicate(replicated_state)


def _summary(outcome: str, step: int, total_steps: int, start_step: int,
             last_loss: Optional[float], steady_start: Optional[float],
             views_per_step: int) -> str:
  """The last progress line: how the run ended, where, and its mean speed."""
  text = f"{outcome} at step {step}/{total_steps}"
  if last_loss is not None:
    text += f", loss {last_loss:.4f}"
  steady_steps = step - start_step - 1   # after the first step (compilation)
  if steady_start is not None and steady_steps > 0:
    seconds = time.perf_counter() - steady_start
    text += (f", {steady_steps} steps in {format_duration(seconds)} after the first "
             f"({views_per_step * steady_steps / max(seconds, 1e-9):.0f} views/s)")
  return text


def main(argv):
  del argv
  from absl import flags
  from simclr_jax.runtime import distributed
  logging.getLogger().setLevel(logging.INFO)
  # orbax/TFDS log every save/restore step through absl at INFO; keep ours only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  message, exit_code = None, 0
  try:
    distributed.initialize()
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                       allow_config_changes=flags.FLAGS.allow_config_changes)
  except run_control.RunError as error:
    prefix = "" if isinstance(error, run_control.Interrupted) else "error: "
    message, exit_code = f"{prefix}{error}", error.exit_code
  except KeyboardInterrupt:   # before the handlers were installed (start-up)
    message, exit_code = "Interrupted during start-up; nothing was written.", 130
  # Exit outside the except blocks: the exception's frames (and the loader's shared-memory
  # batches they hold) are released first, so nothing is left for the resource tracker.
  if message is not None:
    print(message, file=sys.stderr, flush=True)
    sys.exit(exit_code)


def _load_config_file(argv: Sequence[str]) -> Optional[ml_collections.ConfigDict]:
  """The config named by --config in argv (for messages about its overrides)."""
  import importlib.util
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    else:
      continue
    path, _, parameter = value.partition(":")
    try:
      spec = importlib.util.spec_from_file_location("_simclr_config", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      return module.get_config(parameter) if parameter else module.get_config()
    except Exception:  # pylint: disable=broad-except  (the flag parser reports it)
      return None
  return None


def parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl flag parsing with one-line errors (exit 2) instead of tracebacks.

  A mistyped `--config.KEY` makes ml_collections raise three chained tracebacks; here it
  is one line with the closest fields ("did you mean").
  """
  from absl import flags
  try:
    remaining = flags.FLAGS(argv)
    if flags.FLAGS["config"].present:
      flags.FLAGS.config.get("dataset")   # ml_collections defers a load error to first use
    return remaining
  except flags.Error as error:
    print(f"error: {error}", file=sys.stderr)
  except (AttributeError, KeyError) as error:   # an override of a field that is not there
    config = _load_config_file(argv)
    message = None
    if config is not None:
      for arg in argv:
        if arg.startswith("--config."):
          key = arg[len("--config."):].split("=", 1)[0]
          message = settings.unknown_key_message(config, key)
          if message:
            break
    print(f"error: {message or ' '.join(str(error).split())}", file=sys.stderr)
  except (OSError, ImportError, SyntaxError) as error:   # --config file missing or broken
    config_file = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"),
                       next((arg.split("=", 1)[1] for arg in argv
                             if arg.startswith("--config=")), "?"))
    cause = error.__cause__ or error
    if not os.path.isfile(config_file):
      print(f"error: --config={config_file}: no such file (configs are in experiments/configs/).",
            file=sys.stderr)
    else:
      print(f"error: --config={config_file}: cannot load the config file "
            f"({type(cause).__name__}: {' '.join(str(cause).split())[:200]}).", file=sys.stderr)
  sys.exit(2)


def define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.")
  flags.DEFINE_list("allow_config_changes", [],
                    "Config fields a resumed run may change although they change what a "
                    "step computes (e.g. optimizer.learning_rate); the previous config is "
                    "kept in WORKDIR/config_history.jsonl.")
  flags.mark_flags_as_required(["config", "workdir"])
  # Also accept the distributed flags here so one command works everywhere.
  from simclr_jax.runtime import distributed
  distributed.define_flags()


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main, flags_parser=parse_flags)
