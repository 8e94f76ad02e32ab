"""The networks an evaluation reads features from, and where they came from.

Three sources, one `Encoder` record:
  checkpoint     a training run of this project (`checkpointing.load_for_eval`, read-only):
                 SimCLR ({'encoder', 'head'}) or supervised ({'encoder', 'classifier'});
                 the model and image size come from the config saved in the workdir.
  random_init    the same architecture untrained, *torchvision-style*: kaiming-normal
                 fan-out convolutions and every BatchNorm scale 1 (`zero_init_residual=
                 False`), i.e. the random ResNet of the seed's torchvision model. (With
                 google-research/simclr's zero-initialised last BN of each block, every
                 residual branch of an untrained network outputs 0 and the "random"
                 baseline measures only the stem and the downsample path.) The conv
                 kernels are the training run's own step-0 kernels (same init key).
  torch_weights  a torchvision ResNet state_dict (ImageNet, supervised elsewhere, the
                 PyTorch baseline), run exactly as torchvision runs it: grey image on
                 three channels, ImageNet mean/std.

`Encoder.init` says which in words; every report carries it as `encoder_init`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

FEATURE_KINDS = ("encoder", "projection")
# torchvision weights (ImageNet, the PyTorch baseline) see what torchvision models are fed:
# the grey image on all three channels, normalised per channel with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_DESCRIPTION = ("random, torchvision-style: kaiming-normal fan-out convs, every "
                           "BatchNorm scale 1 (zero_init_residual=False)")


def objective_of(config: ml_collections.ConfigDict) -> str:
  """The objective a run's config trained with (workdirs written before
  config.objective existed trained SimCLR)."""
  return str(config.get("objective", "simclr"))


@dataclasses.dataclass
class Encoder:
  """A network to evaluate and where it came from."""
  config: ml_collections.ConfigDict   # model, width, stem, dtype, image_size, augment, ...
  variables: dict                     # {'params', 'batch_stats'}: a whole model or encoder only
  source: str                         # 'checkpoint' | 'random_init' | 'torch_weights'
  init: str                           # how the weights were obtained, in words
  step: Optional[int] = None          # checkpoint step (None when not from a checkpoint)
  description: str = ""
  imagenet_rgb_input: bool = False    # torchvision convention: grey -> RGB, ImageNet norm

  @property
  def has_subtrees(self) -> bool:
    """The variables hold a whole model ({'encoder', 'head' | 'classifier'})."""
    return "encoder" in self.variables["params"]

  @property
  def has_classifier(self) -> bool:
    """The variables hold a trained classifier head (a supervised or fine-tuned run)."""
    return self.has_subtrees and "classifier" in self.variables["params"]

  @property
  def objective(self) -> str:
    return objective_of(self.config)

  @property
  def classifier_label_mode(self) -> Optional[str]:
    """The targets the classifier head was trained on (config supervised.label_mode, ''
    = the dataset's own labels); None without a classifier head."""
    if not self.has_classifier:
      return None
    supervised = self.config.get("supervised", None) or {}
    return str(supervised.get("label_mode", "") or "")

  @property
  def training(self) -> Optional[dict]:
    """What trained a checkpoint's weights beyond its objective (`training_summary`: init
    source, label fraction and subset, fine-tuning mode); None for other encoders."""
    return training_summary(self.config) if self.source == "checkpoint" else None

  def encoder_variables(self) -> dict:
    if not self.has_subtrees:
      return self.variables
    return {"params": self.variables["params"]["encoder"],
            "batch_stats": self.variables.get("batch_stats", {}).get("encoder", {})}


def training_summary(config: ml_collections.ConfigDict) -> Optional[dict]:
  """A run's init source and, for a supervised run, its labels and fine-tuning mode, from
  its config.json (what every report of the run records as `training`); None for a run
  started from random weights without labels (plain SimCLR).

  Returns:
    {'init_from': {kind, path, step, sha256, objective} or None, and for supervised runs
     'fine_tuning' (in words), 'label_mode', 'label_fraction', 'subset_seed', 'subset':
     {num_images, num_patients, class_names, positives, classes_without_positives,
     ids_sha256}, 'select_by_validation'}.
  """
  from simclr_jax import objectives
  from simclr_jax.training import init_from
  summary = {"init_from": init_from.summary(config)}
  record = objectives.OBJECTIVES.get(objective_of(config))   # None: written by another version
  if record is None or not record.trains_on_labels:
    return summary if summary["init_from"] else None
  supervised = config.get("supervised") or {}
  multiplier = float(supervised.get("encoder_lr_multiplier", 1.0))
  if supervised.get("freeze_encoder", False):
    mode = "frozen encoder (only the classifier trained, on augmented views)"
  elif summary["init_from"] is None:
    mode = "trained from random initialisation"
  else:
    mode = "full fine-tuning" + (f", encoder learning rate x{multiplier:g}"
                                 if multiplier != 1.0 else "")
  subset = supervised.get("subset") or {}
  summary.update({
      "fine_tuning": mode, "label_mode": str(supervised.get("label_mode", "") or ""),
      "label_fraction": float(supervised.get("label_fraction", 1.0)),
      "subset_seed": int(supervised.get("subset_seed", 0)),
      "subset": subset.to_dict() if hasattr(subset, "to_dict") else dict(subset),
      "select_by_validation": int(supervised.get("select_by_validation", 0))})
  return summary


def describe_training(summary: Optional[dict]) -> str:
  """`training_summary` in words, e.g. ', fine-tuned from runs/simclr@450 (full fine-tuning)
  on label fraction 0.1 (60 images of 16 patients, subset sha256 1a2b3c4d5e6f)'."""
  if not summary:
    return ""
  source = summary.get("init_from")
  where = ""
  if source:
    where = (f"{source['path']}@{source['step']}" if source.get("kind") == "workdir"
             else f"torchvision weights {os.path.basename(source['path'])}")
  if "fine_tuning" not in summary:
    return f", initialised from {where}"
  text = f", {summary['fine_tuning']}" + (f" from {where}" if where else "")
  subset = summary.get("subset") or {}
  text += (f", label fraction {summary['label_fraction']:g} ({subset.get('num_images')} "
           f"images of {subset.get('num_patients')} patients, subset seed "
           f"{summary['subset_seed']}, sha256 {str(subset.get('ids_sha256', ''))[:12]})")
  if summary.get("label_mode"):
    text += f", label mode {summary['label_mode']!r}"
  return text


def parse_step(text) -> Any:
  """--step: None (the newest), an integer step, or 'best' (the best validation
  checkpoint of a run trained with supervised.select_by_validation)."""
  if text is None or text == "":
    return None
  if isinstance(text, int) or str(text).isdigit():
    return int(text)
  if str(text) == "best":
    return "best"
  raise ValueError(f"--step={text!r}: give a checkpoint step (an integer) or 'best' (the "
                   f"checkpoint with the best validation AUROC of a run trained with "
                   f"config.supervised.select_by_validation > 0).")


def _base_config(model: str, image_size: int) -> ml_collections.ConfigDict:
  """Config for an encoder that has no workdir (torchvision weights, --model)."""
  from simclr_jax.config import default_config
  config = default_config()
  config.model = model
  config.image_size = int(image_size)
  config.width = 1.0
  config.stem = "imagenet"
  return config


def _simclr_network(config: ml_collections.ConfigDict):
  """The SimCLR module (encoder + projection head) of a config, whatever its objective."""
  from simclr_jax import models
  return models.SimCLR(encoder=models.create_encoder(config), head=models.create_head(config))


def random_init_variables(config: ml_collections.ConfigDict) -> dict:
  """Torchvision-style random variables of the config's SimCLR network.

  Initialised with the key `simclr_jax.train` initialises with (first half of
  split(PRNGKey(config.seed))), so the conv kernels are the run's step-0 kernels, but with
  `zero_init_residual=False`: every BatchNorm scale is 1, as in torchvision.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.zero_init_residual = False
  network = _simclr_network(config)
  dummy = jnp.zeros((1, config.image_size, config.image_size, 1), jnp.float32)
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = jax.jit(lambda rng: network.init(rng, dummy, train=False))(init_rng)
  return jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(variables))


# The config fields that decide the shapes of the encoder's and head's parameters.
ARCHITECTURE_FIELDS = ("model", "width", "stem", "head")


def check_architecture(config: ml_collections.ConfigDict, variables: dict, source: str) -> None:
  """Refuses checkpoint variables whose encoder (and projection head) are not the network
  `config` describes (e.g. config.json's `model` changed after training).

  Raises:
    ValueError: naming the config's architecture fields, the first parameter that
      differs and its shape in the checkpoint and for the config.
  """
  params = variables["params"]
  names = [name for name in ("encoder", "head") if name in params]
  input_channels = int(np.shape(params["encoder"]["conv_init"]["kernel"])[2])
  size = int(config.image_size)
  try:
    network = _simclr_network(config)
    expected = jax.eval_shape(
        lambda: network.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, input_channels)),
                             train=False))["params"]
  except (ValueError, KeyError) as error:
    raise ValueError(f"{source}: its config.json does not describe a network this version "
                     f"can build ({error}).") from None
  flatten = flax.traverse_util.flatten_dict
  wanted = {key: tuple(value.shape) for key, value in flatten(
      flax.core.unfreeze({name: expected[name] for name in names})).items()}
  found = {key: tuple(np.shape(value)) for key, value in flatten(
      flax.core.unfreeze({name: params[name] for name in names})).items()}
  if wanted == found:
    return
  fields = ", ".join(f"{field}={config.get(field)!r}" for field in ARCHITECTURE_FIELDS
                     if field in config and field != "head")
  differing = sorted(set(wanted) ^ set(found)) or sorted(
      key for key in wanted if wanted[key] != found[key])
  key = differing[0]
  where = "/".join(key)
  detail = (f"{where} has shape {found[key]} in the checkpoint but {wanted[key]} for the "
            f"config" if key in wanted and key in found else
            f"{where} is {'only in the checkpoint' if key in found else 'missing from the checkpoint'}")
  raise ValueError(f"{source} does not hold the network its config.json describes ({fields}): "
                   f"{detail} ({len(differing)} parameter(s) differ). Was config.json edited "
                   f"after training? Restore the training config or evaluate with "
                   f"--random_init / --torch_weights.")


def load_encoder(*, workdir: Optional[str] = None, step: Optional[int] = None,
                 random_init: bool = False, torch_weights: Optional[str] = None,
                 model: Optional[str] = None, image_size: Optional[int] = None,
                 seed: Optional[int] = None) -> Encoder:
  """Builds the encoder to evaluate.

  Args:
    workdir: a training run's directory (config.json + checkpoints/), SimCLR or
      supervised; opened read-only.
    step: checkpoint step; latest complete one when None; 'best': the checkpoint with
      the best validation AUROC (`checkpointing.best_step`).
    random_init: the workdir's (or --model's) architecture, untrained and initialised
      torchvision-style (`random_init_variables`); `seed` defaults to config.seed.
    torch_weights: a torchvision ResNet state_dict file (ImageNet, supervised or the
      PyTorch baseline's encoder), evaluated as torchvision runs it (the RGB first conv
      is kept; grey images are repeated on three channels and normalised with the
      ImageNet mean/std), so features equal torch's (tests/test_baseline.py).
    model, image_size: architecture and input size when there is no workdir.

  Returns:
    Encoder.

  Raises:
    ValueError / FileNotFoundError: conflicting options, no checkpoint, unknown step.
  """
  from simclr_jax import checkpointing
  if random_init and step is not None:
    raise ValueError("--random_init and --step exclude each other.")
  if torch_weights and (random_init or step is not None):
    raise ValueError("--torch_weights excludes --random_init and --step.")
  if image_size is not None and image_size < 8:
    raise ValueError(f"--image_size={image_size}: give the model's input size in pixels "
                     "(>= 8), or leave it out to use the run's.")
  config = checkpointing.read_config(workdir) if workdir else None
  if config is None:
    if not model:
      raise ValueError("Without --workdir, give --model (e.g. resnet50) for --torch_weights "
                       "or --random_init.")
    config = _base_config(model, image_size or 224)
  else:
    config = ml_collections.ConfigDict(config.to_dict())
    if model and model != config.model:
      raise ValueError(f"--model={model!r} differs from model={config.model!r} in "
                       f"{workdir}/config.json; drop --model or --workdir.")
    if image_size:
      config.image_size = int(image_size)
  if seed is not None:
    config.seed = int(seed)

  if torch_weights:
    from simclr_jax import convert
    variables = convert.load_torch_weights(torch_weights, config, in_channels=None)
    name = os.path.basename(torch_weights)
    return Encoder(config, dict(variables), source="torch_weights",
                   init=f"torchvision state_dict {name}",
                   description=f"torchvision weights {name}", imagenet_rgb_input=True)
  if random_init:
    return Encoder(config, random_init_variables(config), source="random_init",
                   init=f"{RANDOM_INIT_DESCRIPTION}, seed {config.seed}",
                   description=f"random init (seed {config.seed})")
  if not workdir:
    raise ValueError("Give --workdir (a training run), --random_init or --torch_weights.")
  selected = ""
  if step == "best":
    step, value = checkpointing.best_step(workdir)
    selected = f" (the best validation AUROC of the run, {value:.4f})"
  # Keep `config` (with the --image_size / --seed overrides); take the variables.
  _, variables, restored_step = checkpointing.load_for_eval(workdir, step)
  check_architecture(config, variables, f"checkpoint {restored_step} of {workdir}")
  return Encoder(config, dict(variables), source="checkpoint",
                 init=f"trained ({objective_of(config)} objective), checkpoint step "
                      f"{restored_step}{selected}"
                      f"{describe_training(training_summary(config))}",
                 step=restored_step, description=f"{workdir} step {restored_step}")


def classifier_network(encoder: Encoder) -> tuple:
  """(network, variables) of an encoder with a classifier head (`Encoder.has_classifier`):
  `network.apply(variables, x, train=False)` -> (features [b, F], logits [b, C])."""
  from simclr_jax import models
  classifier = encoder.variables["params"]["classifier"]
  network = models.Supervised(encoder=models.create_encoder(encoder.config),
                              num_classes=int(np.shape(classifier["kernel"])[-1]))
  variables = {"params": {"encoder": encoder.variables["params"]["encoder"],
                          "classifier": classifier},
               "batch_stats": {"encoder": encoder.encoder_variables()["batch_stats"]}}
  return network, variables


def make_encode_fn(encoder: Encoder, feature_kind: str = "encoder") -> tuple[Callable, dict]:
  """(encode(variables, images_uint8 [b, H, W, C]) -> [b, F] float32, variables).

  `encode` preprocesses as evaluation does (`augment.preprocess_eval`: centred square,
  resize, normalisation) and runs the network in eval mode (BatchNorm running averages).
  An encoder with a classifier head (`Encoder.has_classifier`) gives the encoder features
  and the head's output: {'features' [b, F], 'logits' [b, C]}.
  """
  from simclr_jax import augment
  from simclr_jax import models
  if feature_kind not in FEATURE_KINDS:
    raise ValueError(f"--features={feature_kind!r}: accepted values are {FEATURE_KINDS}.")
  config = encoder.config
  if feature_kind == "projection":
    if "head" not in encoder.variables["params"]:
      raise ValueError(f"--features=projection needs a projection head; {encoder.description}"
                       f" has none. Use --features=encoder.")
    network = _simclr_network(config)
    variables = {"params": {name: encoder.variables["params"][name] for name in ("encoder",
                                                                                 "head")},
                 "batch_stats": {name: tree for name, tree in
                                 encoder.variables.get("batch_stats", {}).items()
                                 if name in ("encoder", "head")}}
    input_channels = np.shape(variables["params"]["encoder"]["conv_init"]["kernel"])[2]
  elif encoder.has_classifier:
    network, variables = classifier_network(encoder)
    input_channels = np.shape(variables["params"]["encoder"]["conv_init"]["kernel"])[2]
  else:
    network = models.create_encoder(config)
    variables = encoder.encoder_variables()
    input_channels = np.shape(variables["params"]["conv_init"]["kernel"])[2]
  augment_config = config.get("augment") or augment.default_config()
  if encoder.imagenet_rgb_input:
    augment_config = ml_collections.ConfigDict(dict(
        augment_config.to_dict(), normalize_mean=IMAGENET_MEAN, normalize_std=IMAGENET_STD))
  image_size = int(config.image_size)
  return make_network_encode_fn(network, augment_config, image_size, input_channels,
                                projection=feature_kind == "projection",
                                imagenet_rgb_input=encoder.imagenet_rgb_input,
                                logits=feature_kind == "encoder" and encoder.has_classifier
                                ), variables


def make_network_encode_fn(network, augment_config, image_size: int, input_channels: int, *,
                           projection: bool = False, imagenet_rgb_input: bool = False,
                           logits: bool = False) -> Callable:
  """encode(variables, images uint8 [b, H, W, C]) -> features [b, F] float32 of `network`
  in eval mode, after the evaluation preprocessing (with `logits`: {'features', 'logits'}
  of a network returning both). Shared with the online monitor."""
  from simclr_jax import augment

  def encode(variables, images):
    if imagenet_rgb_input and images.shape[-1] == 1:
      images = jnp.repeat(images, 3, axis=-1)  # uint8 [b, H, W, 3]
    inputs = augment.preprocess_eval(images, augment_config, image_size)  # [b, S, S, C]
    if inputs.shape[-1] != input_channels:
      if inputs.shape[-1] != 1:
        raise ValueError(f"images have {inputs.shape[-1]} channels; the encoder takes "
                         f"{input_channels}.")
      # Grey X-rays into an RGB (ImageNet) stem: the same image on every channel.
      inputs = jnp.repeat(inputs, input_channels, axis=-1)
    outputs = network.apply(variables, inputs, train=False)
    if logits:
      return {"features": outputs[0].astype(jnp.float32),
              "logits": outputs[1].astype(jnp.float32)}
    if projection:
      outputs = outputs[1]
    return outputs.astype(jnp.float32)

  return encode
