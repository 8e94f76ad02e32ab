r"""Separate evaluator: frozen encoder features -> k-means, linear probe, kNN, report.

  python -m simclr_jax.evaluate --workdir runs/demo/train --dataset synthetic_cxr/64 \
      --data_dir runs/data --split test --out runs/demo/eval
  python -m simclr_jax.evaluate --workdir runs/demo/train --random_init ...   # baseline
  python -m simclr_jax.evaluate --torch_weights resnet50_imagenet.pth --model resnet50 \
      --image_size 224 --dataset nih_chest_xray14/256 --data_dir DIR --split test --out DIR

Pipeline (big_vision `evaluators/fewshot_lsr.py` style: representations on device, the
solving on CPU):

  1. Encoder: restore params + batch_stats of a training run
     (`checkpointing.load_for_eval`; the model and image size come from the config saved
     in the workdir), or the same config randomly initialised (`--random_init`, seeded by
     config.seed), or a torchvision state_dict (`--torch_weights`, via
     `convert.load_torch_weights`).
  2. Features: `data.iterate_eval` batches -> `augment.preprocess_eval` -> encoder in
     eval mode (train=False: BatchNorm running averages) under `jax.pmap` on all local
     devices. The padded final batch carries a mask, so every example counts exactly
     once and the dataset order is kept.
  3. Labels: the label mode (below) turns the dataset's labels into one class per example
     or drops the example; clustering, kNN and feature quality use those classes.
  4. k-means (`metrics.kmeans`, JAX) with k = number of classes (or --k), then cluster
     accuracy (Hungarian), NMI, ARI, purity; linear probe (train split -> eval split; the
     multi-hot findings for multi-label data), cosine kNN, label-efficiency fractions and
     within/between-class cosine similarity.
  5. OUT/report.json, OUT/report.md, OUT/features.npz and PNG plots.

Label modes (`--label_mode`) for multi-label ChestX-ray14 (`labels` multi-hot [14] in
FINDINGS order plus `no_finding`):
  single          keep images with exactly one of the 15 labels (the 14 findings or
                  No Finding); class = that label, No Finding = class 14. Default.
  primary         every image; class = the first label listed in the CSV's
                  "Finding Labels" (No Finding when none). The TFDS features keep only the
                  multi-hot vector, which loses the CSV order; the official CSV lists the
                  findings alphabetically in all but 31 of 112,120 rows, so by default the
                  first finding in alphabetical order among the present ones is used.
                  With --labels_csv Data_Entry_2017_v2020.csv(.gz) the CSV text is looked
                  up by the 'image_index' feature and its first label is used exactly.
  binary:<Finding> every image; class 1 when <Finding> is present, else 0.
                   binary:No Finding is normal (1) vs any finding (0).
  label           the dataset's own 'label' feature (-1 = undefined, dropped).
The linear probe on multi-label data always uses the full multi-hot vector (one-vs-rest
logistic regression, per-finding AUROC). For single-label datasets (synthetic_cxr) the
class is the 'label' feature whatever the mode, except `binary:<class name>`.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from simclr_jax import metrics

# ChestX-ray14 findings in the order of the dataset's multi-hot 'labels' vector.
FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
            "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
            "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
LABEL_MODES = ("single", "primary", "binary:<Finding>", "label")
DEFAULT_LABEL_FRACTIONS = (0.01, 0.1, 1.0)
FEATURE_KINDS = ("encoder", "projection")
# torchvision weights (ImageNet, the PyTorch baseline) see what torchvision models are fed:
# the grey image on all three channels, normalised per channel with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Features that are bookkeeping of the loader, not per-example attributes to keep.
_LOADER_KEYS = ("image", "mask")


# --------------------------------------------------------------------------------------
# Labels.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelSet:
  """One class id per example under a label mode (-1 = example not used)."""
  mode: str
  labels: np.ndarray       # [n] int64, -1 where the mode drops the example
  class_names: tuple       # names of class ids 0..C-1

  @property
  def kept(self) -> np.ndarray:
    return self.labels >= 0

  @property
  def num_kept(self) -> int:
    return int(np.sum(self.kept))


def parse_finding_labels(text: str) -> list:
  """'Cardiomegaly|Effusion' -> ['Cardiomegaly', 'Effusion'] ('No Finding' -> [])."""
  names = [name.strip() for name in text.split("|") if name.strip()]
  unknown = [name for name in names if name not in FINDINGS and name != NO_FINDING]
  if unknown:
    raise ValueError(f"Finding Labels {text!r}: unknown finding(s) {unknown}; accepted: "
                     f"{list(FINDINGS) + [NO_FINDING]}.")
  return [name for name in names if name != NO_FINDING]


def read_data_entry_csv(path: str) -> dict:
  """Reads the ChestX-ray14 label table (Data_Entry_2017*.csv[.gz]).

  Returns:
    {'image_index': [n] str, 'finding_labels': [n] str (as in the CSV),
     'patient_id': [n] int64, 'labels': [n, 14] uint8 multi-hot in FINDINGS order,
     'no_finding': [n] bool}.
  """
  opener = gzip.open if str(path).endswith(".gz") else open
  image_index, finding_text, patient_ids, multi_hot = [], [], [], []
  with opener(path, "rt", newline="") as file:
    reader = csv.DictReader(file)
    required = ("Image Index", "Finding Labels", "Patient ID")
    missing = [column for column in required if column not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path}: missing column(s) {missing}; a ChestX-ray14 Data_Entry "
                       f"CSV has {list(required)}.")
    for row in reader:
      present = parse_finding_labels(row["Finding Labels"])
      image_index.append(row["Image Index"])
      finding_text.append(row["Finding Labels"])
      patient_ids.append(int(row["Patient ID"]))
      multi_hot.append([name in present for name in FINDINGS])
  labels = np.asarray(multi_hot, np.uint8).reshape(-1, len(FINDINGS))
  return {"image_index": np.asarray(image_index), "finding_labels": np.asarray(finding_text),
          "patient_id": np.asarray(patient_ids, np.int64), "labels": labels,
          "no_finding": labels.sum(axis=1) == 0}


def _multi_hot_class_names() -> tuple:
  return FINDINGS + (NO_FINDING,)


def single_labels(multi_hot: np.ndarray) -> np.ndarray:
  """Class id of images with exactly one of the 15 labels (14 = No Finding), else -1."""
  multi_hot = np.asarray(multi_hot).astype(bool)
  counts = multi_hot.sum(axis=1)
  labels = np.full(multi_hot.shape[0], -1, np.int64)
  labels[counts == 0] = len(FINDINGS)
  labels[counts == 1] = np.argmax(multi_hot[counts == 1], axis=1)
  return labels


def primary_labels(multi_hot: np.ndarray, finding_labels: Optional[Sequence[str]] = None
                   ) -> np.ndarray:
  """Class id of the first listed finding (14 = No Finding) for every image.

  Args:
    multi_hot: [n, 14] in FINDINGS order.
    finding_labels: optional [n] CSV 'Finding Labels' strings; when given, their order
      decides. Without them the first finding in alphabetical order is used, which is
      the CSV order in all but 31 of the 112,120 official rows.
  """
  multi_hot = np.asarray(multi_hot).astype(bool)
  labels = np.full(multi_hot.shape[0], len(FINDINGS), np.int64)
  if finding_labels is not None:
    for i, text in enumerate(finding_labels):
      text = text.decode() if isinstance(text, bytes) else str(text)
      present = parse_finding_labels(text)
      if present:
        labels[i] = FINDINGS.index(present[0])
    return labels
  alphabetical = sorted(range(len(FINDINGS)), key=lambda j: FINDINGS[j])
  for j in reversed(alphabetical):  # the last write is the alphabetically first finding
    labels[multi_hot[:, j]] = j
  return labels


def select_labels(mode: str, examples: dict, class_names: Optional[Sequence[str]] = None
                  ) -> LabelSet:
  """Applies a label mode to the per-example arrays of one split.

  Args:
    mode: 'single' | 'primary' | 'binary:<Finding or class name>' | 'label'.
    examples: arrays with 'labels' [n, 14] (multi-label data) and/or 'label' [n].
    class_names: names of the 'label' classes of a single-label dataset.

  Returns:
    LabelSet(mode actually applied, labels [n] with -1 = dropped, class names).
  """
  multi_label = "labels" in examples and np.ndim(examples["labels"]) == 2
  if mode.startswith("binary:"):
    target = mode.split(":", 1)[1]
    if multi_label and target.lower() == NO_FINDING.lower():
      # Normal vs abnormal: 1 for images without any of the 14 findings.
      no_finding = (np.asarray(examples["labels"]).sum(axis=1) == 0).astype(np.int64)
      return LabelSet(f"binary:{NO_FINDING}", no_finding, ("any finding", NO_FINDING))
    if multi_label:
      by_lower = {name.lower(): j for j, name in enumerate(FINDINGS)}
      if target.lower() not in by_lower:
        raise ValueError(f"--label_mode={mode!r}: unknown finding {target!r}; accepted: "
                         f"{', '.join('binary:' + name for name in FINDINGS + (NO_FINDING,))}.")
      column = by_lower[target.lower()]
      name = FINDINGS[column]
      labels = np.asarray(examples["labels"])[:, column].astype(np.int64)
      return LabelSet(f"binary:{name}", labels, (f"no {name}", name))
    names = list(class_names or [])
    by_lower = {str(n).lower(): j for j, n in enumerate(names)}
    if target.lower() not in by_lower:
      raise ValueError(f"--label_mode={mode!r}: unknown class {target!r}; accepted: "
                       f"{', '.join('binary:' + str(n) for n in names)}.")
    class_id = by_lower[target.lower()]
    label = np.asarray(examples["label"]).astype(np.int64)
    labels = np.where(label < 0, -1, (label == class_id).astype(np.int64))
    return LabelSet(f"binary:{names[class_id]}", labels, (f"not {names[class_id]}",
                                                          names[class_id]))
  if mode not in ("single", "primary", "label"):
    raise ValueError(f"--label_mode={mode!r}: accepted values are {', '.join(LABEL_MODES)}.")
  if multi_label and mode == "single":
    return LabelSet("single", single_labels(examples["labels"]), _multi_hot_class_names())
  if multi_label and mode == "primary":
    text = examples.get("finding_labels")
    return LabelSet("primary", primary_labels(examples["labels"], text),
                    _multi_hot_class_names())
  if "label" not in examples:
    raise ValueError(f"--label_mode={mode!r}: the dataset has no 'label' feature; its "
                     f"features are {sorted(examples)}.")
  labels = np.asarray(examples["label"]).astype(np.int64).reshape(-1)
  names = tuple(class_names) if class_names else tuple(
      str(i) for i in range(int(labels.max()) + 1 if labels.size else 0))
  return LabelSet("label", labels, names)


def attach_csv_finding_text(examples: dict, csv_path: str) -> dict:
  """Adds 'finding_labels' (the CSV text, in its order) by 'image_index', for --label_mode
  primary. Raises if an example's image is not in the CSV."""
  if "image_index" not in examples:
    raise ValueError(f"--labels_csv={csv_path}: the dataset has no 'image_index' feature to "
                     f"look rows up by; its features are {sorted(examples)}.")
  table = read_data_entry_csv(csv_path)
  text_by_image = dict(zip(table["image_index"].tolist(), table["finding_labels"].tolist()))
  names = [name.decode() if isinstance(name, bytes) else str(name)
           for name in examples["image_index"]]
  missing = [name for name in names if name not in text_by_image]
  if missing:
    raise ValueError(f"--labels_csv={csv_path}: {len(missing)} image(s) not in the CSV, "
                     f"e.g. {missing[:3]}.")
  return dict(examples, finding_labels=np.asarray([text_by_image[name] for name in names]))


def check_label_mode(mode: Optional[str], class_names: Optional[Sequence[str]]) -> None:
  """Fails early (before feature extraction) on a label mode that cannot apply."""
  if mode is None or mode in ("single", "primary", "label"):
    return
  if not mode.startswith("binary:"):
    raise ValueError(f"--label_mode={mode!r}: accepted values are {', '.join(LABEL_MODES)}.")
  if not class_names:
    return  # checked against the examples' features later
  # ChestX-ray14 (its 'label' classes are the findings + No Finding): findings only.
  known = (FINDINGS + (NO_FINDING,) if set(FINDINGS) <= set(class_names)
           else tuple(map(str, class_names)))
  if mode.split(":", 1)[1].lower() not in {name.lower() for name in known}:
    raise ValueError(f"--label_mode={mode!r}: unknown class; accepted: "
                     f"{', '.join('binary:' + name for name in known)}.")


def default_label_mode(examples: dict) -> str:
  multi_label = "labels" in examples and np.ndim(examples["labels"]) == 2
  return "single" if multi_label else "label"


# --------------------------------------------------------------------------------------
# Encoders and feature extraction.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Encoder:
  """A network to evaluate and where it came from."""
  config: ml_collections.ConfigDict   # model, width, stem, dtype, image_size, augment, ...
  variables: dict                     # {'params', 'batch_stats'}: full SimCLR or encoder only
  has_head: bool                      # variables hold {'encoder', 'head'} subtrees
  source: str                         # 'checkpoint' | 'random_init' | 'torch_weights'
  step: Optional[int] = None          # checkpoint step (None when not from a checkpoint)
  description: str = ""
  imagenet_rgb_input: bool = False    # torchvision convention: grey -> RGB, ImageNet norm

  def encoder_variables(self) -> dict:
    if not self.has_head:
      return self.variables
    return {"params": self.variables["params"]["encoder"],
            "batch_stats": self.variables.get("batch_stats", {}).get("encoder", {})}


def _base_config(model: str, image_size: int) -> ml_collections.ConfigDict:
  """Config for an encoder that has no workdir (torchvision weights)."""
  try:
    from simclr_jax.config import default_config
    config = default_config()
  except ImportError:
    from simclr_jax import augment
    config = ml_collections.ConfigDict({"augment": augment.default_config(), "seed": 0,
                                        "width": 1.0, "stem": "imagenet", "dtype": "float32"})
  config.model = model
  config.image_size = int(image_size)
  config.width = 1.0
  config.stem = "imagenet"
  return config


def load_encoder(*, workdir: Optional[str] = None, step: Optional[int] = None,
                 random_init: bool = False, torch_weights: Optional[str] = None,
                 model: Optional[str] = None, image_size: Optional[int] = None,
                 seed: Optional[int] = None) -> Encoder:
  """Builds the encoder to evaluate.

  Args:
    workdir: a training run's directory (config.json + checkpoints/).
    step: checkpoint step; latest when None.
    random_init: the workdir's (or --model's) architecture, untrained: initialised exactly
      as `simclr_jax.train` does (first half of split(PRNGKey(seed))), i.e. the training
      run's step-0 network; `seed` defaults to config.seed.
    torch_weights: a torchvision ResNet state_dict file (ImageNet, supervised or the
      PyTorch baseline's encoder). It is evaluated exactly as torchvision runs it: the RGB
      first conv is kept and the grey image is repeated on the three channels and
      normalised per channel with the ImageNet mean/std (the baseline's preprocessing), so
      features equal torch's (tests/test_baseline.py).
    model, image_size: architecture and input size when there is no workdir.

  Returns:
    Encoder.
  """
  from simclr_jax import checkpointing
  from simclr_jax import models
  if random_init and step is not None:
    raise ValueError("--random_init and --step exclude each other.")
  if torch_weights and (random_init or step is not None):
    raise ValueError("--torch_weights excludes --random_init and --step.")
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
    return Encoder(config, dict(variables), has_head=False, source="torch_weights",
                   description=f"torchvision weights {os.path.basename(torch_weights)}",
                   imagenet_rgb_input=True)
  if random_init:
    network = models.create_model(config)
    dummy = jnp.zeros((1, config.image_size, config.image_size, 1), jnp.float32)
    # The key train.py initialises with, so this is the training run's own step-0 network.
    init_rng, _ = jax.random.split(jax.random.PRNGKey(config.get("seed", 0)))
    variables = jax.jit(lambda rng: network.init(rng, dummy, train=False))(init_rng)
    variables = jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(variables))
    return Encoder(config, variables, has_head=True, source="random_init",
                   description=f"random init (seed {config.get('seed', 0)})")
  if not workdir:
    raise ValueError("Give --workdir (a training run), --random_init or --torch_weights.")
  # Keep `config` (with the --image_size / --seed overrides); take the variables.
  _, variables, restored_step = checkpointing.load_for_eval(workdir, step)
  return Encoder(config, dict(variables), has_head=True, source="checkpoint",
                 step=restored_step, description=f"{workdir} step {restored_step}")


def make_encode_fn(encoder: Encoder, feature_kind: str = "encoder"
                   ) -> tuple[Callable, dict]:
  """(encode(variables, images_uint8 [b, H, W, C]) -> [b, F] float32, variables)."""
  from simclr_jax import augment
  from simclr_jax import models
  if feature_kind not in FEATURE_KINDS:
    raise ValueError(f"--features={feature_kind!r}: accepted values are {FEATURE_KINDS}.")
  config = encoder.config
  if feature_kind == "projection":
    if not encoder.has_head:
      raise ValueError("--features=projection needs a projection head; torchvision weights "
                       "have none. Use --features=encoder.")
    network = models.create_model(config)
    variables = encoder.variables
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

  def encode(variables, images):
    if encoder.imagenet_rgb_input and images.shape[-1] == 1:
      images = jnp.repeat(images, 3, axis=-1)  # uint8 [b, H, W, 3]
    inputs = augment.preprocess_eval(images, augment_config, image_size)  # [b, S, S, C]
    if inputs.shape[-1] != input_channels:
      if inputs.shape[-1] != 1:
        raise ValueError(f"images have {inputs.shape[-1]} channels; the encoder takes "
                         f"{input_channels}.")
      # Grey X-rays into an RGB (ImageNet) stem: the same image on every channel.
      inputs = jnp.repeat(inputs, input_channels, axis=-1)
    outputs = network.apply(variables, inputs, train=False)
    if feature_kind == "projection":
      outputs = outputs[1]
    return outputs.astype(jnp.float32)

  return encode, variables


def extract_features(encode_fn: Callable, variables: Any, batches: Iterable[dict], *,
                     devices: Optional[Sequence[jax.Device]] = None) -> dict:
  """Runs `encode_fn` over batches on all local devices (pmap); keeps masked-in rows.

  Each batch is {'image': [B, ...], 'mask': [B] bool, other per-example arrays}. B is
  padded up to a multiple of the device count (padding masked out), split over the
  devices, and only rows whose mask is True are kept, in order, so every example counts
  exactly once and the order of the dataset is preserved.

  Args:
    encode_fn: (variables, images [b, ...]) -> [b, F]; pure, traced once per shape.
    variables: pytree, replicated to every device once.
    batches: iterable of batches (e.g. `data.iterate_eval`).
    devices: default jax.local_devices().

  Returns:
    {'features': [n, F] float32, and every other batch key concatenated over the kept
    rows}.
  """
  devices = list(devices or jax.local_devices())
  num_devices = len(devices)
  replicated = flax.jax_utils.replicate(variables, devices=devices)
  p_encode = jax.pmap(encode_fn, devices=devices)
  kept = collections.defaultdict(list)
  pending = None  # (device features, mask, batch size) of the previous batch

  def collect(pending):
    features, mask, size = pending
    features = np.asarray(features)  # [devices, per_device, F]
    kept["features"].append(features.reshape(-1, features.shape[-1])[:size][mask])

  for batch in batches:
    images = np.asarray(batch["image"])
    size = images.shape[0]
    mask = (np.asarray(batch["mask"], bool).reshape(-1) if "mask" in batch
            else np.ones(size, bool))
    if mask.shape[0] != size:
      raise ValueError(f"batch 'mask' has {mask.shape[0]} rows but 'image' has {size}.")
    padded_size = -(-size // num_devices) * num_devices
    if padded_size != size:
      images = np.concatenate(
          [images, np.zeros((padded_size - size, *images.shape[1:]), images.dtype)])
    device_features = p_encode(
        replicated, images.reshape(num_devices, padded_size // num_devices, *images.shape[1:]))
    # Copy the previous batch to the host while this one runs.
    if pending is not None:
      collect(pending)
    pending = (device_features, mask, size)
    for key, value in batch.items():
      if key not in _LOADER_KEYS:
        kept[key].append(np.asarray(value)[mask])
  if pending is not None:
    collect(pending)
  if not kept["features"]:
    raise ValueError("extract_features: the dataset split yielded no batches.")
  return {key: np.concatenate(values) for key, values in kept.items()}


def encode_split(encoder: Encoder, dataset: str, data_dir: str, split: str, *,
                 batch_size: int = 256, feature_kind: str = "encoder",
                 max_examples: Optional[int] = None) -> dict:
  """Features and per-example attributes of one dataset split (see `extract_features`)."""
  from simclr_jax import data
  num_devices = jax.local_device_count()
  batch_size = max(num_devices, -(-batch_size // num_devices) * num_devices)
  encode_fn, variables = make_encode_fn(encoder, feature_kind)
  batches = data.iterate_eval(dataset, data_dir, split, batch_size, num_shards=num_devices)
  if max_examples:
    batches = _first_examples(batches, max_examples)
  return extract_features(encode_fn, variables, batches)


def _first_examples(batches: Iterable[dict], limit: int):
  """Masks out everything after the first `limit` valid examples (for quick runs)."""
  seen = 0
  for batch in batches:
    if seen >= limit:
      return
    mask = np.asarray(batch["mask"], bool).copy()
    valid_positions = np.flatnonzero(mask)
    mask[valid_positions[limit - seen:]] = False
    seen += int(mask.sum())
    yield dict(batch, mask=mask)


# --------------------------------------------------------------------------------------
# Metrics over extracted features.
# --------------------------------------------------------------------------------------


def _patient_ids(examples: dict) -> np.ndarray:
  if "patient_id" in examples:
    return np.asarray(examples["patient_id"])
  return np.arange(examples["features"].shape[0])  # every image its own "patient"


def evaluate_features(eval_examples: dict, train_examples: Optional[dict] = None, *,
                      label_mode: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                      k: Optional[int] = None, label_fractions: Sequence[float] = DEFAULT_LABEL_FRACTIONS,
                      knn_k: int = 20, kmeans_n_init: int = 10, seed: int = 0) -> tuple[dict, dict]:
  """All metrics from already extracted features.

  Args:
    eval_examples: {'features' [n, F], 'label' and/or 'labels', ['patient_id']}.
    train_examples: same for the probe/kNN train split; None skips probe, kNN and
      label fractions.
    label_mode: see the module docstring; default 'single' (multi-label) or 'label'.
    class_names: class names of a single-label dataset's 'label'.
    k: clusters; default the number of classes of the label set.
    label_fractions: train-label fractions for the label-efficiency probe.

  Returns:
    (report dict, arrays for features.npz and the plots).
  """
  mode = label_mode or default_label_mode(eval_examples)
  label_set = select_labels(mode, eval_examples, class_names)
  kept = label_set.kept
  if label_set.num_kept < 2:
    raise ValueError(f"--label_mode={mode!r} keeps {label_set.num_kept} of "
                     f"{len(label_set.labels)} examples; need at least 2 to cluster.")
  features = np.asarray(eval_examples["features"], np.float32)
  num_classes = len(label_set.class_names)
  k = int(k or num_classes)
  k = min(k, label_set.num_kept)
  report = {"label_mode": label_set.mode, "num_examples": label_set.num_kept,
            "num_examples_total": int(features.shape[0]), "k": k,
            "num_classes": num_classes, "class_names": list(label_set.class_names),
            "feature_dim": int(features.shape[1])}
  report["class_counts"] = {
      name: int(np.sum(label_set.labels == i)) for i, name in enumerate(label_set.class_names)}

  start = time.perf_counter()
  clustering = metrics.kmeans(features[kept], k, n_init=kmeans_n_init, seed=seed)
  cluster_ids = np.full(features.shape[0], -1, np.int32)
  cluster_ids[kept] = clustering.assignments
  report.update(metrics.clustering_scores(label_set.labels[kept], clustering.assignments))
  report["kmeans_inertia"] = clustering.inertia
  report["kmeans_iterations"] = clustering.num_iterations
  report["kmeans_n_init"] = kmeans_n_init
  report["clustering_seconds"] = time.perf_counter() - start
  matching = metrics.hungarian_matching(label_set.labels[kept], clustering.assignments)
  report["cluster_to_class"] = {str(c): label_set.class_names[m] for c, m in matching.items()}
  report["feature_quality"] = metrics.feature_quality(features, label_set.labels)

  arrays = {"features": features, "labels": label_set.labels, "cluster_ids": cluster_ids}
  if "labels" in eval_examples and np.ndim(eval_examples["labels"]) == 2:
    arrays["multi_hot"] = np.asarray(eval_examples["labels"])
  # Identifiers to join the rows back to the dataset.
  if "patient_id" in eval_examples:
    arrays["patient_id"] = np.asarray(eval_examples["patient_id"])
  if "image_index" in eval_examples:
    arrays["image_index"] = np.asarray([
        name.decode() if isinstance(name, bytes) else str(name)
        for name in eval_examples["image_index"]])

  if train_examples is not None:
    _probe_and_knn(report, eval_examples, train_examples, label_set, mode, class_names,
                   label_fractions, knn_k, seed)
  return report, arrays


def _probe_and_knn(report, eval_examples, train_examples, label_set, mode, class_names,
                   label_fractions, knn_k, seed) -> None:
  train_features = np.asarray(train_examples["features"], np.float32)
  eval_features = np.asarray(eval_examples["features"], np.float32)
  multi_label = "labels" in eval_examples and np.ndim(eval_examples["labels"]) == 2
  if multi_label:
    train_targets = np.asarray(train_examples["labels"])
    eval_targets = np.asarray(eval_examples["labels"])
    probe_train, probe_eval = np.ones(len(train_targets), bool), np.ones(len(eval_targets), bool)
    probe_names = list(FINDINGS)
    report["linear_probe_targets"] = "multi-hot findings (one-vs-rest)"
  else:
    train_labels = select_labels(mode, train_examples, class_names)
    train_targets, eval_targets = train_labels.labels, label_set.labels
    probe_train, probe_eval = train_targets >= 0, eval_targets >= 0
    probe_names = list(label_set.class_names)
    report["linear_probe_targets"] = f"classes of label mode {label_set.mode!r}"

  start = time.perf_counter()
  probe = metrics.linear_probe(train_features[probe_train], train_targets[probe_train],
                               eval_features[probe_eval], eval_targets[probe_eval],
                               multi_label=multi_label, class_names=probe_names, seed=seed)
  report.update(probe)
  report["linear_probe_seconds"] = time.perf_counter() - start
  report["linear_train_examples"] = int(probe_train.sum())

  start = time.perf_counter()
  train_mode_labels = select_labels(mode, train_examples, class_names).labels
  train_kept = train_mode_labels >= 0
  if train_kept.any():
    report["knn_accuracy"] = metrics.knn_accuracy(
        train_features[train_kept], train_mode_labels[train_kept],
        eval_features[label_set.kept], label_set.labels[label_set.kept], k=knn_k)
    report["knn_accuracy_weighted"] = metrics.knn_accuracy(
        train_features[train_kept], train_mode_labels[train_kept],
        eval_features[label_set.kept], label_set.labels[label_set.kept], k=knn_k,
        weighting="weighted")
  report["knn_k"] = knn_k
  report["knn_seconds"] = time.perf_counter() - start

  start = time.perf_counter()
  patients = _patient_ids(train_examples)[probe_train]
  report["label_fractions"] = metrics.label_efficiency(
      train_features[probe_train], train_targets[probe_train], eval_features[probe_eval],
      eval_targets[probe_eval], patients, label_fractions, multi_label=multi_label,
      class_names=probe_names, seed=seed, full_probe=probe)
  report["label_fractions_seconds"] = time.perf_counter() - start


# --------------------------------------------------------------------------------------
# Outputs: report.json, report.md, features.npz, plots.
# --------------------------------------------------------------------------------------


METRIC_DEFINITIONS = {
    "cluster_accuracy": "k-means clusters matched one-to-one to classes by the Hungarian "
                        "algorithm on the cluster x class contingency matrix; fraction of "
                        "examples whose class is the one matched to their cluster "
                        "(unmatched clusters count as wrong).",
    "nmi": "normalised mutual information between clusters and classes (arithmetic mean "
           "normalisation; scikit-learn).",
    "ari": "adjusted Rand index between clusters and classes (0 = chance, 1 = identical).",
    "purity": "fraction of examples in the majority class of their cluster (many-to-one).",
    "linear_auroc_macro": "logistic regression on standardised frozen features, fitted on "
                          "the train split, scored on the evaluated split; mean AUROC over "
                          "labels (multi-label: one-vs-rest per finding) with a defined AUROC.",
    "linear_accuracy": "top-1 accuracy of that probe (single-label data).",
    "knn_accuracy": "cosine k-nearest-neighbour majority vote (k = knn_k), train split -> "
                    "evaluated split; knn_accuracy_weighted votes with exp(cos / 0.07).",
    "label_fractions": "the linear probe fitted on a patient-wise random subsample of the "
                       "train labels (fixed seed; at least one positive per class added "
                       "where the train split has one).",
    "feature_quality": "mean cosine similarity of distinct pairs within the same class vs "
                       "from different classes (gap = within - between).",
}


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def _clean_for_json(value):
  """NaN -> None so that report.json is strict JSON."""
  if isinstance(value, dict):
    return {key: _clean_for_json(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean_for_json(item) for item in value]
  if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
    return None
  return value


def _format(value, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def report_markdown(report: dict) -> str:
  """Human-readable report: summary table, per-label AUROC, label fractions, definitions."""
  lines = [f"# Evaluation: {report.get('encoder', '')}", ""]
  lines += [f"- dataset: `{report.get('dataset')}` split `{report.get('split')}` "
            f"(probe/kNN train split: `{report.get('train_split')}`)",
            f"- features: {report.get('features')} ({report.get('feature_dim')}-d), "
            f"checkpoint step: {report.get('checkpoint_step')}",
            f"- label mode: `{report['label_mode']}`: {report['num_examples']} of "
            f"{report['num_examples_total']} examples kept, {report['num_classes']} classes, "
            f"k = {report['k']}", ""]
  rows = [("cluster accuracy", report.get("cluster_accuracy")), ("NMI", report.get("nmi")),
          ("ARI", report.get("ari")), ("purity", report.get("purity")),
          ("linear AUROC (macro)", report.get("linear_auroc_macro")),
          ("linear accuracy", report.get("linear_accuracy")),
          (f"kNN accuracy (k={report.get('knn_k')})", report.get("knn_accuracy")),
          ("kNN accuracy, weighted", report.get("knn_accuracy_weighted")),
          ("cosine within class", report["feature_quality"]["within_class_cosine"]),
          ("cosine between classes", report["feature_quality"]["between_class_cosine"]),
          ("feature extraction (s)", report.get("feature_extraction_seconds")),
          ("clustering (s)", report.get("clustering_seconds"))]
  lines += ["| metric | value |", "|---|---|"]
  lines += [f"| {name} | {_format(value)} |" for name, value in rows if value is not None]
  if isinstance(report.get("linear_auroc"), dict):
    lines += ["", "## Linear-probe AUROC per label", "", "| label | AUROC |", "|---|---|"]
    lines += [f"| {name} | {_format(value)} |" for name, value in report["linear_auroc"].items()]
  if report.get("label_fractions"):
    lines += ["", "## Label efficiency (linear probe on a patient-wise subsample)", "",
              "| fraction | train examples | patients | macro AUROC | accuracy |",
              "|---|---|---|---|---|"]
    for entry in report["label_fractions"]:
      lines.append(f"| {entry['fraction']} | {entry['num_train_examples']} | "
                   f"{entry['num_train_patients']} | {_format(entry.get('linear_auroc_macro'))} | "
                   f"{_format(entry.get('linear_accuracy'))} |")
  lines += ["", "## Class counts (evaluated split, this label mode)", "",
            "| class | examples |", "|---|---|"]
  lines += [f"| {name} | {count} |" for name, count in report["class_counts"].items()]
  lines += ["", "## Definitions", ""]
  lines += [f"- **{name}**: {text}" for name, text in METRIC_DEFINITIONS.items()]
  return "\n".join(lines) + "\n"


def write_plots(report: dict, arrays: dict, out_dir: str, *, max_points: int = 5000,
                seed: int = 0) -> list:
  """PCA embedding (by label, by cluster), cluster-vs-label matrix, label-efficiency curve."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import sklearn.decomposition

  written = []
  kept = arrays["labels"] >= 0
  features, labels, clusters = (arrays["features"][kept], arrays["labels"][kept],
                                arrays["cluster_ids"][kept])
  names = report["class_names"]
  rng = np.random.default_rng(seed)
  shown = (rng.choice(features.shape[0], max_points, replace=False)
           if features.shape[0] > max_points else np.arange(features.shape[0]))
  if features.shape[0] >= 2 and features.shape[1] >= 2:
    embedding = sklearn.decomposition.PCA(n_components=2, random_state=seed).fit_transform(
        features[shown])
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for axis, colour_by, title in ((axes[0], labels[shown], "label"),
                                   (axes[1], clusters[shown], "k-means cluster")):
      scatter = axis.scatter(embedding[:, 0], embedding[:, 1], c=colour_by, s=4,
                             cmap="tab20", vmin=0, vmax=19 if colour_by.max() < 20 else None)
      axis.set_title(f"PCA of features, coloured by {title}")
      axis.set_xlabel("PC 1")
      axis.set_ylabel("PC 2")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=plt.cm.tab20(i % 20),
                          label=name) for i, name in enumerate(names)]
    axes[0].legend(handles=handles, fontsize=7, loc="best", markerscale=0.8)
    figure.tight_layout()
    path = os.path.join(out_dir, "embedding_pca.png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)

  matrix, cluster_values, class_values = metrics.contingency_matrix(labels, clusters)
  matching = metrics.hungarian_matching(labels, clusters)
  # Order clusters by the class they are matched to, unmatched ones last.
  order = sorted(range(len(cluster_values)),
                 key=lambda r: (list(class_values).index(matching[cluster_values[r]])
                                if cluster_values[r] in matching else len(class_values), r))
  figure, axis = plt.subplots(figsize=(max(6.5, 2.5 + 0.45 * len(cluster_values)),
                                       max(4.0, 1.5 + 0.4 * len(class_values))))
  shown_matrix = matrix[order].T  # [classes, clusters]
  image = axis.imshow(shown_matrix, cmap="Blues", aspect="auto")
  axis.set_xticks(range(len(order)), [str(cluster_values[r]) for r in order], fontsize=7)
  axis.set_yticks(range(len(class_values)), [names[c] for c in class_values], fontsize=7)
  axis.set_xlabel("k-means cluster (ordered by matched class)")
  axis.set_ylabel("class")
  axis.set_title(f"clusters vs labels, cluster accuracy {report['cluster_accuracy']:.3f}",
                 fontsize=10)
  if shown_matrix.size <= 400:
    for (row, column), count in np.ndenumerate(shown_matrix):
      axis.text(column, row, str(count), ha="center", va="center", fontsize=6,
                color="white" if count > shown_matrix.max() / 2 else "black")
  figure.colorbar(image, ax=axis)
  figure.tight_layout()
  path = os.path.join(out_dir, "cluster_confusion.png")
  figure.savefig(path, dpi=110)
  plt.close(figure)
  written.append(path)

  fractions = [entry for entry in report.get("label_fractions") or []
               if entry.get("linear_auroc_macro") is not None]
  if fractions:
    figure, axis = plt.subplots(figsize=(5.5, 4))
    xs = [entry["fraction"] for entry in fractions]
    axis.plot(xs, [entry["linear_auroc_macro"] for entry in fractions], "o-",
              label="macro AUROC")
    if all("linear_accuracy" in entry for entry in fractions):
      axis.plot(xs, [entry["linear_accuracy"] for entry in fractions], "s--", label="accuracy")
    axis.set_xscale("log")
    axis.set_xlabel("fraction of train labels (patient-wise)")
    axis.set_ylabel("linear probe score")
    axis.set_title("label efficiency")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = os.path.join(out_dir, "label_efficiency.png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
  return written


def write_outputs(report: dict, arrays: dict, out_dir: str, *, plots: bool = True,
                  save_features: bool = True) -> dict:
  """Writes report.json, report.md, features.npz and the plots; returns the report."""
  os.makedirs(out_dir, exist_ok=True)
  if save_features:
    np.savez(os.path.join(out_dir, "features.npz"), **arrays)
  if plots:
    report["plots"] = [os.path.basename(p) for p in write_plots(report, arrays, out_dir)]
  report = _clean_for_json(report)
  with open(os.path.join(out_dir, "report.json"), "w") as file:
    json.dump(report, file, indent=2, default=_json_default)
  with open(os.path.join(out_dir, "report.md"), "w") as file:
    file.write(report_markdown(report))
  return report


# --------------------------------------------------------------------------------------
# The whole evaluation.
# --------------------------------------------------------------------------------------


def evaluate(encoder: Encoder, *, dataset: str, data_dir: str, split: str, out_dir: str,
             train_split: Optional[str] = "train", k: Optional[int] = None,
             label_mode: Optional[str] = None,
             label_fractions: Sequence[float] = DEFAULT_LABEL_FRACTIONS,
             feature_kind: str = "encoder", batch_size: int = 256, knn_k: int = 20,
             kmeans_n_init: int = 10, max_examples: Optional[int] = None,
             labels_csv: Optional[str] = None, plots: bool = True,
             save_features: bool = True) -> dict:
  """Evaluates one encoder on one dataset split and writes OUT/report.{json,md}.

  Args:
    encoder: from `load_encoder`.
    dataset, data_dir, split: the TFDS dataset to evaluate on (all examples of `split`).
    out_dir: where the report, features.npz and plots go.
    train_split: split the linear probe / kNN / label fractions are fitted on; None or ''
      skips them.
    k, label_mode, label_fractions, feature_kind, knn_k, kmeans_n_init: see the CLI.
    batch_size: images per feature-extraction step (rounded up to the device count).
    max_examples: evaluate only the first N examples of each split (quick runs).
    labels_csv: ChestX-ray14 Data_Entry CSV; with label_mode 'primary' the first label
      *listed* there is used (looked up by the 'image_index' feature) instead of the
      alphabetical derivation from the multi-hot vector.

  Returns:
    The report dict (also in OUT/report.json).
  """
  from simclr_jax import data
  total_start = time.perf_counter()
  if labels_csv and not (label_mode or "").startswith("primary"):
    logging.info("--labels_csv is only used by --label_mode=primary; ignoring it.")
  try:
    class_names = list(data.class_names(dataset, data_dir))
  except Exception as error:  # pylint: disable=broad-except
    logging.warning("No class names for %s (%s); using class ids.", dataset, error)
    class_names = None
  check_label_mode(label_mode, class_names)

  start = time.perf_counter()
  eval_examples = encode_split(encoder, dataset, data_dir, split, batch_size=batch_size,
                               feature_kind=feature_kind, max_examples=max_examples)
  split_seconds = {split: time.perf_counter() - start}
  train_examples = None
  if train_split:
    if train_split == split:
      logging.warning("--train_split equals --split (%s): the probe and kNN are scored on "
                      "the examples they were fitted on.", split)
    train_examples = encode_split(encoder, dataset, data_dir, train_split,
                                  batch_size=batch_size, feature_kind=feature_kind,
                                  max_examples=max_examples)
  extraction_seconds = time.perf_counter() - start
  if train_split:
    split_seconds[f"{train_split} (probe)" if train_split == split else train_split] = (
        extraction_seconds - split_seconds[split])
  if labels_csv and label_mode == "primary":
    eval_examples = attach_csv_finding_text(eval_examples, labels_csv)
    if train_examples is not None:
      train_examples = attach_csv_finding_text(train_examples, labels_csv)
  logging.info("Features: %s %s, %.1fs", split, eval_examples["features"].shape,
               extraction_seconds)

  report, arrays = evaluate_features(
      eval_examples, train_examples, label_mode=label_mode, class_names=class_names, k=k,
      label_fractions=label_fractions, knn_k=knn_k, kmeans_n_init=kmeans_n_init,
      seed=int(encoder.config.get("seed", 0)))
  report.update({
      "encoder": encoder.description, "encoder_source": encoder.source,
      "checkpoint_step": encoder.step, "model": encoder.config.get("model"),
      "image_size": int(encoder.config.image_size), "features": feature_kind,
      "dataset": dataset, "split": split, "train_split": train_split or None,
      "num_train_examples": (int(train_examples["features"].shape[0])
                             if train_examples is not None else None),
      "devices": jax.local_device_count(), "platform": jax.default_backend(),
      "feature_extraction_seconds": extraction_seconds,
      "feature_extraction_seconds_per_split": split_seconds,
  })
  report["total_seconds"] = time.perf_counter() - total_start
  return write_outputs(report, arrays, out_dir, plots=plots, save_features=save_features)


def parse_fractions(text: str) -> tuple:
  try:
    fractions = tuple(float(part) for part in text.split(",") if part.strip())
  except ValueError:
    raise ValueError(f"--label_fractions={text!r}: give comma-separated numbers in (0, 1], "
                     "e.g. 0.01,0.1,1.0.") from None
  bad = [f for f in fractions if not 0.0 < f <= 1.0]
  if bad:
    raise ValueError(f"--label_fractions={text!r}: {bad} not in (0, 1].")
  return fractions


def main(argv):
  del argv
  from absl import flags
  FLAGS = flags.FLAGS
  logging.getLogger().setLevel(logging.INFO)
  # orbax/TFDS log every save/restore step through absl at INFO; keep ours only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    encoder = load_encoder(workdir=FLAGS.workdir, step=FLAGS.step,
                           random_init=FLAGS.random_init, torch_weights=FLAGS.torch_weights,
                           model=FLAGS.model, image_size=FLAGS.image_size, seed=FLAGS.seed)
    report = evaluate(
        encoder, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, split=FLAGS.split,
        out_dir=FLAGS.out, train_split=FLAGS.train_split, k=FLAGS.k,
        label_mode=FLAGS.label_mode, label_fractions=parse_fractions(FLAGS.label_fractions),
        feature_kind=FLAGS.features, batch_size=FLAGS.batch_size, knn_k=FLAGS.knn_k,
        kmeans_n_init=FLAGS.kmeans_n_init, max_examples=FLAGS.max_examples,
        labels_csv=FLAGS.labels_csv, plots=FLAGS.plots, save_features=FLAGS.save_features)
  except (ValueError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2)
  summary = {key: report.get(key) for key in (
      "cluster_accuracy", "nmi", "ari", "purity", "linear_auroc_macro", "linear_accuracy",
      "knn_accuracy", "num_examples", "k", "label_mode", "checkpoint_step")}
  print(json.dumps(summary))


def define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "Training run directory (config.json + checkpoints/).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_bool("random_init", False, "Evaluate the workdir's architecture untrained.")
  flags.DEFINE_string("torch_weights", None, "torchvision ResNet state_dict file.")
  flags.DEFINE_string("model", None, "Architecture when there is no workdir (e.g. resnet50).")
  flags.DEFINE_integer("image_size", None, "Model input size (default: the workdir's; 224 "
                       "without a workdir).")
  flags.DEFINE_integer("seed", None, "Seed for --random_init and k-means (default config.seed).")
  flags.DEFINE_string("dataset", None, "TFDS name, e.g. synthetic_cxr/64.")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
  flags.DEFINE_string("split", "test", "Split to evaluate.")
  flags.DEFINE_string("train_split", "train", "Split for the linear probe / kNN; '' skips.")
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_integer("k", None, "k-means clusters (default: classes of the label mode).")
  flags.DEFINE_string("label_mode", None, "single | primary | binary:<Finding> | label.")
  flags.DEFINE_string("labels_csv", None, "ChestX-ray14 Data_Entry CSV: exact CSV order "
                      "for --label_mode=primary.")
  flags.DEFINE_string("label_fractions", "0.01,0.1,1.0", "Train-label fractions.")
  flags.DEFINE_enum("features", "encoder", list(FEATURE_KINDS), "Which features.")
  flags.DEFINE_integer("batch_size", 256, "Images per extraction step (all local devices).")
  flags.DEFINE_integer("knn_k", 20, "Neighbours for kNN.")
  flags.DEFINE_integer("kmeans_n_init", 10, "k-means restarts.")
  flags.DEFINE_integer("max_examples", None, "Use only the first N examples of each split.")
  flags.DEFINE_bool("plots", True, "Write PNG plots.")
  flags.DEFINE_bool("save_features", True, "Write OUT/features.npz.")
  flags.mark_flags_as_required(["dataset", "data_dir", "out"])


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main)
