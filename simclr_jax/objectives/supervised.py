"""Supervised baseline (and the fine-tuning of a pretrained encoder): ONE augmented view per
image (`augment.make_view`: SimCLR's first view, same keys) -> encoder -> linear classifier.

The loss is sigmoid binary cross-entropy over the findings when the batch holds 'labels'
float32 [per_device, C] (multi-label, NIH), softmax cross-entropy when it holds 'label'
int32 [per_device] (single-label); optional inverse-frequency class weights
(config.supervised.class_weights). With `supervised.label_mode` (e.g. 'binary:No Finding')
the target is the mode's class, 'label' int32, softmax cross-entropy.

Fine-tuning (issue 17): the run trains on its training subset (`data/train_subset.py`:
label_mode, label_fraction, subset_seed), from `config.init_from` (training/init_from.py);
`supervised.freeze_encoder` trains the classifier only (`Supervised.freeze_encoder`, and
the optimiser leaves the encoder alone: training/optim.py), `encoder_lr_multiplier` scales
the encoder's updates. `resolve` fills in the class count, the subset's record and, for
the weights, the class frequencies of the subset. `loss.scale` multiplies the loss that is
differentiated, never the logged 'loss'.
"""
import functools
import logging
from typing import Any, Dict, Optional, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from simclr_jax import augment
from simclr_jax import models
from simclr_jax.errors import ConfigError
from simclr_jax.errors import one_line
from simclr_jax.objectives.base import LossFn
from simclr_jax.objectives.base import Objective

CLASS_WEIGHTS = ("none", "inverse_frequency")


def inverse_frequency_weights(class_frequencies: np.ndarray, multi_label: bool
                              ) -> np.ndarray:
  """Per-class loss weights that are 1 on average over the training distribution.

  Single-label (scikit-learn's 'balanced'): class c weighs 1 / (C * f_c), f normalised to
  sum to 1. Multi-label (Wang et al. 2017's weighted cross-entropy for ChestX-ray8, halved
  so the mean weight is 1): for finding c a positive weighs 1 / (2 f_c) and a negative
  1 / (2 (1 - f_c)), so positives and negatives of every finding weigh the same in total.

  Args:
    class_frequencies: [C]; single-label: share (or count) of each class; multi-label:
      fraction of examples positive for each finding, in (0, 1).
    multi_label: which of the two cases.

  Returns:
    float32 [C] (single-label) or [2, C] (multi-label: row 0 negatives, row 1 positives).

  Raises:
    ValueError: frequencies outside the accepted range, naming
      config.supervised.class_frequencies.
  """
  frequencies = np.asarray(class_frequencies, np.float64)
  if multi_label:
    if np.any(frequencies <= 0) or np.any(frequencies >= 1):
      raise ValueError(
          f"config.supervised.class_frequencies={tuple(frequencies.tolist())}: multi-label "
          "data needs the fraction of images positive for each finding, each in (0, 1).")
    return np.stack([0.5 / (1.0 - frequencies), 0.5 / frequencies]).astype(np.float32)
  if np.any(frequencies <= 0):
    raise ValueError(
        f"config.supervised.class_frequencies={tuple(frequencies.tolist())}: single-label "
        "data needs a positive share (or count) for every class.")
  frequencies = frequencies / frequencies.sum()
  return (1.0 / (len(frequencies) * frequencies)).astype(np.float32)


def _global_mean(total: jax.Array, count: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """sum / count over every device (0 when the count is 0)."""
  if axis_name is not None:
    total, count = lax.psum((total, count), axis_name)
  return total / jnp.maximum(count, 1.0)


def multi_label_loss(logits, labels, class_frequencies, axis_name):
  """Mean sigmoid BCE over this device's (image, finding) pairs, and its metrics."""
  if labels.shape != logits.shape:
    raise ValueError(
        f"objectives.supervised: batch['labels'] must be [per_device, num_classes] = "
        f"{tuple(logits.shape)} (multi-hot findings); got {tuple(labels.shape)}.")
  labels = labels.astype(jnp.float32)
  per_pair = optax.sigmoid_binary_cross_entropy(logits, labels)  # [n, C]
  if class_frequencies is not None:
    negative_weight, positive_weight = inverse_frequency_weights(class_frequencies, True)
    per_pair = per_pair * (labels * positive_weight + (1.0 - labels) * negative_weight)
  loss = jnp.mean(per_pair)
  probabilities = lax.stop_gradient(jax.nn.sigmoid(logits))
  is_positive = labels > 0.5
  metrics = {
      # Fraction of (image, finding) decisions right at probability 0.5.
      "label_accuracy": jnp.mean(((probabilities > 0.5) == is_positive).astype(jnp.float32)),
      # Their gap says whether the classifier separates the findings at all (accuracy
      # alone is high for a network that says "no finding" everywhere).
      "positive_probability": _global_mean(
          jnp.sum(jnp.where(is_positive, probabilities, 0.0)),
          jnp.sum(is_positive.astype(jnp.float32)), axis_name),
      "negative_probability": _global_mean(
          jnp.sum(jnp.where(is_positive, 0.0, probabilities)),
          jnp.sum((~is_positive).astype(jnp.float32)), axis_name),
  }
  return loss, metrics


def single_label_loss(logits, label, class_frequencies):
  """Mean softmax cross-entropy over this device's images, and its accuracy."""
  if label.shape != logits.shape[:1]:
    raise ValueError(
        f"objectives.supervised: batch['label'] must be [per_device] = "
        f"({logits.shape[0]},) class ids; got {tuple(label.shape)}.")
  label = label.astype(jnp.int32)
  per_image = optax.softmax_cross_entropy_with_integer_labels(logits, label)  # [n]
  if class_frequencies is not None:
    per_image = per_image * jnp.asarray(inverse_frequency_weights(class_frequencies, False))[label]
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == label).astype(jnp.float32))
  return jnp.mean(per_image), {"accuracy": accuracy}


def supervised_loss(params: Any, batch_stats: Any, batch: Dict[str, jax.Array],
                         rng: jax.Array, example_ids: jax.Array, *, model: Any,
                         augment_config: ml_collections.ConfigDict, image_size: int,
                         class_frequencies: Optional[np.ndarray], loss_scale: float,
                         axis_name: Optional[str]
                         ) -> Tuple[jax.Array, Tuple[Any, Dict[str, jax.Array]]]:
  """Classification loss of one augmented view of every image of this device's batch.

  The loss is a plain mean over this device's images (and findings), class weights
  included, so the mean of the per-device losses is the global batch's loss and the
  update does not depend on how the batch is split over devices.

  Args:
    params, batch_stats: the `Supervised` module's variables.
    batch: 'image' uint8 [per_device, H, W, 1] and the target: either 'labels' float32
      [per_device, C] multi-hot findings (sigmoid binary cross-entropy per finding, mean
      over images and findings) or 'label' int32 [per_device] class ids (softmax
      cross-entropy).
    rng: the step's key; example_ids: [per_device] global row indices.
    model: `Supervised` module built with `axis_name` (global BatchNorm).
    augment_config, image_size: on-device augmentation of the view.
    class_frequencies: None (unweighted) or [C] frequencies for inverse-frequency class
      weights (see `inverse_frequency_weights`).
    loss_scale: multiplies the optimised loss (not the logged 'loss' metric).
    axis_name: the pmap axis (for the global multi-label metrics); None outside pmap.

  Returns:
    (loss_scale * loss, (new batch_stats, metrics)): metrics hold 'loss' and
    'accuracy' (single-label), or 'label_accuracy', 'positive_probability' (mean
    predicted probability of the present findings, over the global batch) and
    'negative_probability' (of the absent ones) (multi-label).
  """
  if "labels" in batch and "label" in batch:
    raise ValueError(
        "objectives.supervised: the batch holds both 'labels' (multi-label) and 'label' "
        "(single-label); give the objective exactly one target.")
  if "labels" not in batch and "label" not in batch:
    raise ValueError(
        f"objectives.supervised: the batch holds no target ('labels' float32 [n, C] or "
        f"'label' int32 [n]); its keys are {sorted(batch)}.")
  views = augment.make_view(rng, batch["image"], example_ids, augment_config,
                            image_size)  # [per_device, S, S, 1]
  (_, logits), new_model_state = model.apply(
      {"params": params, "batch_stats": batch_stats}, views, train=True,
      mutable=["batch_stats"])
  logits = logits.astype(jnp.float32)  # [per_device, C]
  if "labels" in batch:
    loss, metrics = multi_label_loss(logits, batch["labels"], class_frequencies, axis_name)
  else:
    loss, metrics = single_label_loss(logits, batch["label"], class_frequencies)
  metrics = dict(metrics, loss=loss)
  return loss_scale * loss, (new_model_state["batch_stats"], metrics)


def check(config: ml_collections.ConfigDict) -> None:
  supervised = config.supervised
  fraction = supervised.label_fraction
  if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):   # catches NaN
    raise ConfigError(f"config.supervised.label_fraction={fraction!r}: must be in (0, 1], "
                      f"the fraction of the train split's patients to train on, e.g. 0.1.")
  multiplier = supervised.encoder_lr_multiplier
  if not (isinstance(multiplier, (int, float)) and 0.0 <= multiplier < float("inf")):
    raise ConfigError(f"config.supervised.encoder_lr_multiplier={multiplier!r}: must be a "
                      f"finite number >= 0 (1: the encoder learns at the full rate; 0: its "
                      f"parameters stay; or config.supervised.freeze_encoder=True).")
  every = supervised.select_by_validation
  if not (isinstance(every, int) and every >= 0):
    raise ConfigError(f"config.supervised.select_by_validation={every!r}: must be 0 (off) or "
                      f"a number of steps between validation evaluations.")
  if (config.get("input") or {}).get("class_balanced") and supervised.label_mode:
    raise ConfigError(f"config.input.class_balanced=True with config.supervised.label_mode="
                      f"{supervised.label_mode!r}: balanced sampling evens out the dataset's own "
                      f"labels, not the label mode's classes; set one of them only.")
  eval_split = str((config.get("online_eval") or {}).get("eval_split", "validation"))
  if every and eval_split == "test":
    raise ConfigError(f"config.supervised.select_by_validation={every} with "
                      f"config.online_eval.eval_split='test': the checkpoint would be chosen "
                      f"on the test split, and its test figures be optimistic; choose on the "
                      f"validation split (config.online_eval.eval_split='validation') or set "
                      f"select_by_validation=0.")
  from simclr_jax.data import labels as labels_lib   # simclr_jax.data imports TFDS
  try:
    labels_lib.check_label_mode(supervised.label_mode or None, None)
  except ValueError as error:
    raise ConfigError(one_line(error).replace(
        "--label_mode=", "config.supervised.label_mode=")) from None
  if supervised.freeze_encoder and multiplier != 1.0:
    logging.warning("config.supervised.freeze_encoder=True: the encoder does not train, so "
                    "config.supervised.encoder_lr_multiplier=%s is ignored.", multiplier)
  if config.loss.example_weights != "none":
    raise ConfigError(
        f"config.loss.example_weights={config.loss.example_weights!r} weighs SimCLR's images; "
        "with objective='supervised' leave it 'none' and use config.supervised.class_weights="
        "'inverse_frequency'.")
  for field, value, off in (
      ("loss.mask_same_patient", config.loss.get("mask_same_patient", False), False),
      ("pairs.same_patient_prob", (config.get("pairs") or {}).get("same_patient_prob", 0.0),
       0.0)):
    if value != off:   # SimCLR's patient settings: one view, no negatives, no pairs here
      raise ConfigError(f"config.{field}={value!r} is a SimCLR setting (negatives and "
                        f"view pairs); objective='supervised' trains one view per image: "
                        f"leave it {off!r}.")
  if config.supervised.class_weights not in CLASS_WEIGHTS:
    raise ConfigError(f"config.supervised.class_weights={config.supervised.class_weights!r}: "
                      f"accepted values are {list(CLASS_WEIGHTS)}.")


def _class_frequencies(config: ml_collections.ConfigDict, model: Any) -> Optional[np.ndarray]:
  """The frequencies for inverse-frequency weights, or None when weights are off."""
  if config.supervised.class_weights == "none":
    return None
  frequencies = np.asarray(config.supervised.class_frequencies, np.float64).reshape(-1)
  num_classes = getattr(model, "num_classes", None)
  if frequencies.size == 0 or (num_classes is not None and frequencies.size != num_classes):
    raise ValueError(
        f"config.supervised.class_frequencies={tuple(frequencies.tolist())}: "
        f"class_weights='inverse_frequency' needs one frequency per class "
        f"({num_classes} classes), computed on the training split (pass "
        "class_frequencies= to objectives.create_loss or set the config field).")
  if np.any(frequencies <= 0):   # the multi-label range (< 1) is checked with the data
    raise ValueError(
        f"config.supervised.class_frequencies={tuple(frequencies.tolist())}: every class "
        "needs a frequency > 0 in the training split (a class that never occurs cannot be "
        "re-weighted); use class_weights='none' or a split where every class occurs.")
  return frequencies


def build_loss(config: ml_collections.ConfigDict, model: Any,
               axis_name: Optional[str]) -> LossFn:
  """`supervised_loss` with the augmentation, class weights and loss scale bound.

  Raises:
    ValueError: a class weighting, class frequencies or per-example loss weights it
      cannot train with; the message names the config field.
  """
  check(config)
  return functools.partial(
      supervised_loss, model=model, augment_config=config.augment,
      image_size=int(config.image_size),
      class_frequencies=_class_frequencies(config, model),
      loss_scale=float(config.loss.scale), axis_name=axis_name)


def batch_fields(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The target: {'labels': float32} (multi-hot) or {'label': int32} (the dataset's
  'label', or the class of `supervised.label_mode`, which the pipeline computes)."""
  if config.supervised.label_mode:
    return {"label": np.int32}
  from simclr_jax import data   # TFDS: only when batches are made
  target, _, multi_label = data.supervised_target_spec(config.dataset, config.data_dir)
  return {target: np.float32 if multi_label else np.int32}


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with what a supervised run learns from the prepared data filled in.

  `supervised.num_classes` (-1 = from the target: 14 NIH findings, 5 phantom classes, the
  label mode's classes), `supervised.subset` (the training subset's record, logged) and,
  with `class_weights = inverse_frequency`, `supervised.class_frequencies` of the subset;
  config.json then records the values the run was trained with.

  Raises:
    ConfigError: the data is not prepared or has no target, a label mode it cannot give or
      that keeps no image, the class count differs from the target's, or a class never
      occurs (absent) in the subset.
  """
  from simclr_jax.data import train_subset
  config = config.copy_and_resolve_references()
  supervised = config.supervised
  try:
    subset = train_subset.of_config(config)
  except (FileNotFoundError, ValueError) as error:
    raise ConfigError(one_line(error)) from None
  train_subset.log(subset)
  num_classes, multi_label = len(subset.class_names), subset.multi_label
  if supervised.num_classes == -1:
    supervised.num_classes = int(num_classes)
  elif supervised.num_classes != num_classes:
    target = (f"label mode {supervised.label_mode!r}" if supervised.label_mode
              else config.dataset)
    raise ConfigError(
        f"config.supervised.num_classes={supervised.num_classes} but {target} has "
        f"{num_classes} classes; use -1 (from the data) or {num_classes}.")
  for name, value in subset.record().items():
    supervised.subset[name] = value
  if supervised.class_weights == "inverse_frequency" and not tuple(
      supervised.class_frequencies or ()):
    supervised.class_frequencies = subset.frequencies
  given = tuple(supervised.class_frequencies or ())
  if supervised.class_weights == "inverse_frequency" and len(given) == num_classes:
    try:   # every class present (multi-label: and absent) somewhere in the subset
      inverse_frequency_weights(np.asarray(given), multi_label=multi_label)
    except ValueError as error:
      raise ConfigError(f"config.supervised.class_weights='inverse_frequency' on "
                        f"{config.dataset} split {config.train_split!r}: "
                        f"{one_line(error)}") from None
  return config


OBJECTIVE = Objective(name="supervised", views_per_image=1,
                      build_model=models.create_supervised, build_loss=build_loss,
                      batch_fields=batch_fields, resolve=resolve, check=check,
                      trains_on_labels=True)
