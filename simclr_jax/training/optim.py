"""Optimisers and learning-rate schedules for SimCLR pretraining and fine-tuning.

Kept apart from the training loop (one concern per module). Everything is optax:
LARS as in the SimCLR paper, AdamW (the usual small-batch choice) and SGD with momentum,
all behind one linear warm-up + cosine decay schedule. A supervised run that fine-tunes
treats its 'encoder' subtree apart (`optax.multi_transform`): frozen (no update at all)
or its updates scaled by `supervised.encoder_lr_multiplier`.
"""
import math
from typing import Any, Callable, Tuple

import jax
import ml_collections
import optax

from simclr_jax import objectives

OPTIMIZERS = ("lars", "adamw", "adam", "sgd")
LR_SCALING_RULES = ("linear", "sqrt", "none")


def scaled_learning_rate(base_learning_rate: float, global_batch: int, rule: str) -> float:
  """Peak learning rate from the base rate and the global batch.

  Args:
    base_learning_rate: the configured rate.
    global_batch: images per step over all devices and processes.
    rule: 'linear' (lr * B / 256, Goyal et al.), 'sqrt' (lr * sqrt(B), SimCLR paper's
      LARS rule with base 0.075) or 'none'.

  Returns:
    The peak learning rate.
  """
  if rule == "linear":
    return base_learning_rate * global_batch / 256.0
  if rule == "sqrt":
    return base_learning_rate * math.sqrt(global_batch)
  if rule == "none":
    return base_learning_rate
  raise ValueError(
      f"config.optimizer.lr_scaling={rule!r} is not known; use one of {LR_SCALING_RULES}.")


def warmup_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Warm-up length in steps: optimizer.warmup_steps when >= 0, else warmup_epochs."""
  if config.optimizer.warmup_steps >= 0:
    return int(config.optimizer.warmup_steps)
  return int(round(config.optimizer.warmup_epochs * steps_per_epoch))


def create_learning_rate_fn(config: ml_collections.ConfigDict, total_steps: int,
                            steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from 0 to the scaled peak, then cosine decay to 0 at `total_steps`."""
  opt = config.optimizer
  peak = scaled_learning_rate(opt.learning_rate, config.batch_size, opt.lr_scaling)
  # A warm-up longer than the run is refused by the settings checks; the clamp keeps the
  # schedule defined when it is as long (and for callers that skip the checks: benchmarks).
  warmup = min(warmup_steps(config, steps_per_epoch), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def decay_mask(params: Any) -> Any:
  """True for weight matrices / conv kernels, False for biases and BatchNorm parameters.

  The SimCLR reference excludes BN parameters and biases from weight decay and from the
  LARS trust-ratio adaptation; in Flax those are exactly the leaves not named 'kernel'.
  """
  def is_kernel(path, _):
    return getattr(path[-1], "key", None) == "kernel"
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                     steps_per_epoch: int) -> Tuple[optax.GradientTransformation, Callable]:
  """Builds the optax optimiser named by `config.optimizer.name`.

  Args:
    config: the experiment config; uses config.batch_size and config.optimizer
      (name, learning_rate, lr_scaling, weight_decay, momentum, warmup_epochs /
      warmup_steps, trust_coefficient for LARS, b1/b2 for Adam).
    total_steps: number of training steps (the cosine decays to 0 there).
    steps_per_epoch: to convert warm-up epochs to steps.

  Returns:
    (tx, learning_rate_fn).
  """
  opt = config.optimizer
  learning_rate_fn = create_learning_rate_fn(config, total_steps, steps_per_epoch)
  weight_decay, momentum = opt.weight_decay, opt.momentum
  name = opt.name.lower()
  if name == "lars":
    tx = optax.lars(
        learning_rate_fn, weight_decay=weight_decay, weight_decay_mask=decay_mask,
        trust_coefficient=opt.trust_coefficient, eps=0.0,
        trust_ratio_mask=decay_mask, momentum=momentum)
  elif name in ("adamw", "adam"):
    tx = optax.adamw(
        learning_rate_fn, b1=opt.b1, b2=opt.b2,
        weight_decay=weight_decay if name == "adamw" else 0.0, mask=decay_mask)
  elif name == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.sgd(learning_rate_fn, momentum=momentum or None))
  else:
    raise ValueError(
        f"config.optimizer.name={opt.name!r} is not known; use one of {OPTIMIZERS}.")
  return _fine_tuning(config, tx), learning_rate_fn


def _fine_tuning(config: ml_collections.ConfigDict,
                 tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` with the encoder's updates zeroed (supervised.freeze_encoder or a multiplier of
  0) or scaled by supervised.encoder_lr_multiplier (the whole update: weight decay and
  LARS' trust ratio included, as a smaller learning rate would); `tx` itself otherwise
  (the optimiser state of other runs keeps its structure)."""
  if not objectives.trains_on_labels(config):
    return tx
  supervised = config.supervised
  multiplier = 0.0 if supervised.freeze_encoder else float(supervised.encoder_lr_multiplier)
  if multiplier == 1.0:
    return tx
  encoder_tx = (optax.set_to_zero() if multiplier == 0.0
                else optax.chain(tx, optax.scale(multiplier)))

  def labels(params):
    return {name: jax.tree_util.tree_map(lambda _, n=name: "encoder" if n == "encoder"
                                         else "rest", subtree)
            for name, subtree in params.items()}

  return optax.multi_transform({"encoder": encoder_tx, "rest": tx}, labels)
