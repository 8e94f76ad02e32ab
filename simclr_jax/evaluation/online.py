"""Online monitor: cheap evaluators on held-out data while training.

What SSL libraries run during pretraining (lightly's `KNNClassifier`, solo-learn's online
kNN, google-research/simclr's `lineareval_while_pretraining`): every
`config.eval_every_steps` the trainer calls

  metrics = monitor.run(step, replicated_params, replicated_batch_stats)

and logs the returned scalars (keys prefixed `online_`) with the loss. The encoder's
current features (eval mode: BatchNorm running averages) of
`online_eval.max_train_examples` images of `online_eval.train_split` form a kNN memory
bank; `online_eval.max_eval_examples` images of `online_eval.eval_split` are classified
by cosine kNN (k = `online_eval.knn_k`):

  online_knn_accuracy   majority vote over the default label mode's classes
                        (synthetic_cxr: its 5 classes; NIH: the 14 single-finding classes)
  online_knn_auroc      macro AUROC of the weighted neighbour fractions (NIH: per finding)
  online_kmeans_nmi     with "kmeans" in online_eval.evaluators: NMI of k-means
                        (k = the number of classes, one restart) on the eval features
  online_eval_seconds   wall time of this call

The images are read once, when the monitor is made (a fixed-seed random subset of each
split, uint8, kept in host memory; a missing split or a label mode keeping too few
examples fails then, before training starts), so each call costs only forward passes on
the local devices plus the kNN. The
weights are only read: the parameters are passed in the trainer's pmap layout (leading
local-device axis) and used as they are. Every process computes the same numbers on its
own devices (no collective, so no process can wait on another); process 0 logs them.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation import encoders
from simclr_jax.evaluation import features as features_lib
from simclr_jax.evaluation import knn
from simclr_jax.evaluation import representations as representations_lib

ONLINE_EVALUATORS = ("knn", "kmeans")
PREFIX = "online_"


def read_examples(dataset: str, data_dir: str, split: str, max_examples: int, seed: int
                  ) -> dict:
  """A fixed-seed random subset of a split (record order), with its labels.

  Returns:
    {'image': uint8 [n, H, W, C], 'label' [n] and, for NIH, 'labels' [n, 14]}.
  """
  from simclr_jax import data
  source = data.data_source(dataset, data_dir, split)
  count = len(source)
  chosen = np.arange(count)
  if max_examples < count:
    chosen = np.sort(np.random.default_rng(seed).choice(count, max_examples, replace=False))
  records = [source[int(index)] for index in chosen]
  examples = {"image": np.stack([np.asarray(record["image"]) for record in records])}
  for name in ("label", "labels"):
    if name in records[0]:
      examples[name] = np.stack([np.asarray(record[name]) for record in records])
  return examples


class OnlineMonitor:
  """kNN (and optionally k-means NMI) of the current encoder on held-out images.

  Args:
    config: the experiment config; reads dataset, data_dir, image_size, augment, seed,
      model settings (`models.create_encoder`) and the `online_eval` section
      (evaluators, train_split, eval_split, max_train_examples, max_eval_examples, knn_k,
      batch_size).

  Raises:
    ValueError: an unknown online evaluator or a non-positive size, naming the field.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    from simclr_jax import models
    online = config.online_eval
    self.evaluators = tuple(online.evaluators)
    unknown = [name for name in self.evaluators if name not in ONLINE_EVALUATORS]
    if unknown or "knn" not in self.evaluators:
      raise ValueError(f"config.online_eval.evaluators={list(self.evaluators)}: must include "
                       f"'knn'; accepted: {', '.join(ONLINE_EVALUATORS)}.")
    for field in ("max_train_examples", "max_eval_examples", "knn_k", "batch_size"):
      if int(online[field]) < 1:
        raise ValueError(f"config.online_eval.{field}={online[field]}: must be >= 1.")
    self._config = config
    self._online = online
    num_devices = jax.local_device_count()
    self._batch_size = -(-int(online.batch_size) // num_devices) * num_devices
    self._network = models.create_encoder(config)  # eval mode: no cross-device BN needed
    self._encode = {}   # input channels -> pmapped encode function
    # Read once, now: a split or label problem stops the run before training starts.
    from simclr_jax import data
    data.check_labelled(config.dataset, config.data_dir,
                        f"the online monitor (config.eval_every_steps={config.eval_every_steps})")
    seed = int(config.get("seed", 0))
    self._train_examples = read_examples(config.dataset, config.data_dir, online.train_split,
                                         int(online.max_train_examples), seed)
    self._eval_examples = read_examples(config.dataset, config.data_dir, online.eval_split,
                                        int(online.max_eval_examples), seed + 1)
    representations_lib.build(self._eval_examples, self._train_examples, seed=seed)

  def _p_encode(self, input_channels: int):
    if input_channels not in self._encode:
      encode = encoders.make_network_encode_fn(
          self._network, self._config.augment, int(self._config.image_size), input_channels)
      self._encode[input_channels] = jax.pmap(encode)
    return self._encode[input_channels]

  def _features(self, p_encode, variables: Any, images: np.ndarray) -> np.ndarray:
    """Features of `images` with the replicated `variables`, in fixed-size batches."""
    def batches():
      for start in range(0, images.shape[0], self._batch_size):
        batch = images[start:start + self._batch_size]
        mask = np.arange(self._batch_size) < batch.shape[0]
        padding = np.zeros((self._batch_size - batch.shape[0],) + batch.shape[1:], batch.dtype)
        yield {"image": np.concatenate([batch, padding]), "mask": mask}
    return features_lib.extract_features(p_encode, variables, batches(),
                                         replicated=True)["features"]

  def run(self, step: int, params: Any, batch_stats: Any) -> dict:
    """Scores the encoder in `params['encoder']` / `batch_stats['encoder']`.

    Args:
      step: the training step (for the caller's logs; the result does not depend on it).
      params, batch_stats: the trainer's replicated full-model variables (leading
        local-device axis; encoder under 'encoder'). Only read.

    Returns:
      {'online_knn_accuracy', 'online_knn_auroc', ['online_kmeans_nmi'],
       'online_eval_seconds'} as Python floats.
    """
    del step
    start = time.perf_counter()
    train_examples, eval_examples = self._train_examples, self._eval_examples
    variables = {"params": params["encoder"], "batch_stats": batch_stats["encoder"]}
    input_channels = int(np.shape(variables["params"]["conv_init"]["kernel"])[-2])
    p_encode = self._p_encode(input_channels)
    train = dict(train_examples, features=self._features(p_encode, variables,
                                                         train_examples["image"]))
    evaluated = dict(eval_examples, features=self._features(p_encode, variables,
                                                            eval_examples["image"]))
    representations = representations_lib.build(
        evaluated, train, seed=int(self._config.get("seed", 0)))
    scores = knn.knn_scores(representations, int(self._online.knn_k), temperature=0.07)
    result = {f"{PREFIX}knn_accuracy": scores.get("knn_accuracy", float("nan")),
              f"{PREFIX}knn_auroc": scores.get("knn_auroc_macro", float("nan"))}
    if "kmeans" in self.evaluators:
      label_set = representations.label_set
      k = len(label_set.class_names)
      if 2 <= k <= label_set.num_kept:
        assignments = algorithms.kmeans(representations.eval_features[label_set.kept], k,
                                     n_init=1, seed=int(self._config.get("seed", 0))).assignments
        result[f"{PREFIX}kmeans_nmi"] = algorithms.clustering_scores(
            label_set.labels[label_set.kept], assignments)["nmi"]
    result[f"{PREFIX}eval_seconds"] = time.perf_counter() - start
    return {key: float(value) for key, value in result.items()}


def maybe_create(config: ml_collections.ConfigDict) -> Optional[OnlineMonitor]:
  """The monitor when `config.eval_every_steps` > 0, else None."""
  if int(config.get("eval_every_steps", 0) or 0) <= 0:
    return None
  return OnlineMonitor(config)
