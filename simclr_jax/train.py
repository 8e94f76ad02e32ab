"""SimCLR pretraining: the pure pmapped train step, the training loop and the CLI.

  python -m simclr_jax.train --config experiments/configs/demo.py --workdir runs/demo/train \
      [--config.KEY=VALUE ...]

Starting on a workdir that already holds checkpoints resumes from the latest one.
"""
import functools
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from simclr_jax import checkpointing
from simclr_jax import data
from simclr_jax import models
from simclr_jax import objectives
from simclr_jax import optim

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
  metrics["grad_norm"] = optax.global_norm(grads)
  # Checked on the host before every checkpoint: an update can overflow while the loss
  # that produced it was still finite.
  metrics["param_norm"] = optax.global_norm(new_params)
  new_state = state.replace(step=state.step + 1, params=new_params,
                            batch_stats=new_batch_stats, opt_state=new_opt_state)
  return new_state, metrics


class ConfigError(ValueError):
  """A config that cannot run on these devices/data; raised before anything compiles."""


def validate_config(config: ml_collections.ConfigDict, stored_image_size: Optional[int]
                    ) -> int:
  """Checks the config against the devices and the data; returns the per-device batch."""
  devices = jax.device_count()
  if config.batch_size <= 0 or config.batch_size % devices:
    lower = (config.batch_size // devices) * devices
    raise ConfigError(
        f"config.batch_size={config.batch_size} (global) is not divisible by the "
        f"{devices} devices; use a multiple of {devices}, e.g. "
        f"{max(lower, devices)} or {lower + devices}.")
  if config.image_size < 8:
    raise ConfigError(f"config.image_size={config.image_size} is too small; use >= 8.")
  if stored_image_size is not None and config.image_size > stored_image_size:
    raise ConfigError(
        f"config.image_size={config.image_size} is larger than the images stored in "
        f"{config.dataset} ({stored_image_size}px): the crop would only upsample. Use "
        f"--config.image_size<={stored_image_size} or prepare the dataset at a larger size.")
  for field in ("checkpoint_every_steps", "keep_checkpoints"):
    if int(config.get(field, 1)) < 1:
      raise ConfigError(f"config.{field}={config.get(field)} must be >= 1.")
  return config.batch_size // devices


class _MetricsWriter:
  """metrics.jsonl + TensorBoard events (tensorboardX, no TensorFlow); process 0 only."""

  def __init__(self, workdir: str, start_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
      # Steps logged after the checkpoint we resume from were lost with the process that
      # logged them and are trained again: keep one line per step.
      with open(path) as f:
        kept = [line for line in f if line.strip() and _logged_step(line) <= start_step]
      with open(path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(path + ".tmp", path)
    self._jsonl = open(path, "a")
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.add_scalar(f"train/{name}", value, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


def _logged_step(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError):  # a line cut short by a kill
    return sys.maxsize


class _PreemptionWatcher:
  """SIGTERM => save at the current step and exit 0.

  On several processes, JAX's preemption service (enabled in distributed.initialize)
  catches the signal and agrees on one step for all processes; on one process a
  Python signal handler sets a flag.
  """

  def __init__(self):
    self.requested = False
    from jax._src import distributed as jax_distributed
    # Several processes with JAX's preemption service (distributed.initialize) agree on a
    # step; otherwise (one process, or a runtime started without the service) each
    # process handles SIGTERM itself.
    self._multi_process = (jax.process_count() > 1 and
                           jax_distributed.global_state.preemption_sync_manager is not None)
    if jax.process_count() > 1 and not self._multi_process:
      logging.warning("JAX's preemption service is not running: SIGTERM is handled per "
                      "process (start through simclr_jax.distributed.initialize).")
    if not self._multi_process:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: will save a checkpoint and exit.", signum)
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if self._multi_process:
      from jax.experimental import multihost_utils
      self.requested = self.requested or multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    if not self._multi_process:
      signal.signal(signal.SIGTERM, self._previous)


def _host_scalars(metrics: Dict[str, jax.Array]) -> Dict[str, float]:
  return {k: float(v[0]) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Runs (or resumes) pretraining in `workdir`; returns the final host-local state."""
  os.makedirs(workdir, exist_ok=True)
  builder = data.get_builder(config.dataset, config.data_dir)
  stored_image_size = int(builder.info.features["image"].shape[0])
  per_device_batch = validate_config(config, stored_image_size)
  steps_per_epoch = data.steps_per_epoch(config)
  total_steps = (config.num_train_steps if config.get("num_train_steps", -1) > 0
                 else int(config.num_epochs * steps_per_epoch))
  logging.info("%d devices (%d local), %d processes; per-device batch %d, global %d; "
               "%d steps (%d per epoch)", jax.device_count(), jax.local_device_count(),
               jax.process_count(), per_device_batch, config.batch_size, total_steps,
               steps_per_epoch)

  model = models.create_model(config, axis_name=AXIS_NAME)
  tx, learning_rate_fn = optim.create_optimizer(config, total_steps, steps_per_epoch)
  base_rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(base_rng)
  input_shape = (config.image_size, config.image_size, 1)
  state = create_train_state(config, model, tx, init_rng, input_shape)

  data_iterator = data.create_train_iterator(config)
  manager = checkpointing.create_manager(workdir, max_to_keep=config.keep_checkpoints)
  try:
    checkpoint_tree, train_rng, start_step = checkpointing.restore_latest(
        manager, to_checkpoint(state), train_rng, data_iterator)
  except ValueError as error:  # a workdir of another config / data pipeline
    raise ConfigError(str(error)) from error
  state = from_checkpoint(checkpoint_tree)
  checkpointing.write_config(workdir, config)

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

  writer = _MetricsWriter(workdir, start_step)
  preemption = _PreemptionWatcher()
  log_every = max(1, config.get("log_every_steps", 10))
  views_per_step = 2 * config.batch_size

  def save(step):
    host_state = to_checkpoint(flax.jax_utils.unreplicate(replicated_state))
    # Host numpy, identical on every process: orbax writes it once (process 0).
    checkpointing.save(manager, step, jax.device_get(host_state), np.asarray(train_rng),
                       data_iterator)

  progress = None
  if jax.process_index() == 0 and config.get("progress_bar", True):
    from tqdm import tqdm
    progress = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                    disable=None)
  pending_metrics = []  # metrics of steps not yet logged (device arrays)
  last_checked = None
  window_start, window_steps = time.perf_counter(), 0
  step = start_step
  try:
    while step < total_steps:
      batch = next(data_iterator)  # 'image': uint8 [local_devices, per_device, H, W, 1]
      replicated_state, metrics = p_train_step(replicated_state, batch, replicated_rng)
      step += 1
      window_steps += 1
      pending_metrics.append((step, metrics))
      # Check the previous step's loss/gradients/parameters while this one runs (one step
      # of lag keeps the device busy); non-finite values stop before anything is saved.
      if last_checked is not None:
        _raise_if_not_finite(*last_checked)
      last_checked = (step, metrics)
      if progress is not None:
        progress.update(1)

      stop_now = preemption.should_stop(step) or step == config.get("stop_at_step", -1)
      is_checkpoint_step = (step % config.checkpoint_every_steps == 0 or
                            step == total_steps or stop_now)
      if step % log_every == 0 or is_checkpoint_step:
        _raise_if_not_finite(step, metrics)
        last_checked = None  # checked now; not again next step
        elapsed = time.perf_counter() - window_start
        views_per_second = views_per_step * window_steps / max(elapsed, 1e-9)
        for logged_step, logged_metrics in pending_metrics:
          if logged_step % log_every == 0 or logged_step == step:
            scalars = _host_scalars(logged_metrics)
            scalars["views_per_second"] = views_per_second
            scalars["epoch"] = logged_step / steps_per_epoch
            writer.write(logged_step, scalars)
        if progress is not None:
          progress.set_postfix(loss=f"{scalars['loss']:.4f}",
                               img_s=f"{views_per_second / 2:.1f}")
        pending_metrics = []
        window_start, window_steps = time.perf_counter(), 0
      if is_checkpoint_step:
        save(step)
      if stop_now and step < total_steps:
        logging.warning("Stopping early (%s): saved checkpoint at step %d; exiting.",
                        "preemption" if preemption.requested else "stop_at_step", step)
        break
  finally:
    if progress is not None:
      progress.close()
    writer.close()
    preemption.close()
    manager.close()
  return flax.jax_utils.unreplicate(replicated_state)


def _raise_if_not_finite(step: int, metrics: Dict[str, jax.Array]) -> None:
  """Stops on a non-finite loss, gradient or updated parameters (before they are saved)."""
  for name in ("loss", "grad_norm", "param_norm"):
    value = float(metrics[name][0])
    if not np.isfinite(value):
      raise FloatingPointError(
          f"Non-finite {name} ({value}) at step {step}; stopping. The last good checkpoint "
          f"is kept untouched. Lower the learning rate, check the inputs, or use float32.")


def main(argv):
  del argv
  from absl import flags
  from simclr_jax import distributed
  distributed.initialize()
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  logging.getLogger().setLevel(logging.INFO)
  # orbax/TFDS log every save/restore step through absl at INFO; keep ours only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    train_and_evaluate(config, workdir)
  except (ConfigError, FloatingPointError) as error:
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2 if isinstance(error, ConfigError) else 3)


if __name__ == "__main__":
  from absl import app
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.")
  flags.mark_flags_as_required(["config", "workdir"])
  # Also accept the distributed flags here so one command works everywhere.
  from simclr_jax import distributed as _distributed
  _distributed.define_flags()
  app.run(main)
