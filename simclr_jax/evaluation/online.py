"""Online monitor: cheap evaluators on held-out data while training.

What SSL libraries run during pretraining (lightly's `KNNClassifier`, solo-learn's online
kNN, google-research/simclr's `lineareval_while_pretraining`): every
`config.eval_every_steps` the trainer calls

  metrics = monitor.run(step, replicated_params, replicated_batch_stats)

and logs the returned scalars (keys prefixed `online_`) with the loss. The encoder's
current features (eval mode: BatchNorm running averages) of
`online_eval.max_train_examples` images of `online_eval.train_split` form the train split
(the kNN memory bank); `online_eval.max_eval_examples` images of `online_eval.eval_split`
are evaluated by the evaluators of `config.online_eval.evaluators`, a mapping
{evaluator name: settings} built by `simclr_jax.evaluation.from_config`, as
`python -m simclr_jax.evaluate` builds its own (same names, same settings):

  knn (always)   k, temperature: the kNN evaluator's settings (default k = 20, T = 0.07)
    online_knn_accuracy   majority vote over the default label mode's classes
                          (synthetic_cxr: its 5 classes; NIH: the 14 single-finding classes)
    online_knn_auroc      macro AUROC of the exp(cos / T)-weighted neighbour fractions
                          (NIH: per finding)
  clustering     k, n_init, max_iter: the clustering evaluator's settings (one restart,
                 {"n_init": 1}, keeps it cheap)
    online_kmeans_nmi     NMI of k-means (k = the number of classes) on the eval features
  patient_shortcut (in the default monitor; no settings)
    online_patient_shortcut         how often an eval image's nearest other eval image is
                                    of its own patient (images whose patient has several)
    online_patient_shortcut_chance  what a random neighbour would give the same images
                 It reuses the kNN's eval features (one 2-nearest-neighbour search over
                 max_eval_examples images, no training), so it is on by default: a rate
                 climbing far above chance while the loss falls says the encoder is
                 learning to recognise people. NaN without patient ids.
  online_eval_seconds     wall time of this call

(`LOGGED` maps each evaluator's outputs to these names.) The images are read once, when the
monitor is made (a fixed-seed random subset of each split, uint8, kept in host memory; a
missing split, a bad evaluator setting or a label mode keeping too few examples for the
kNN or k clusters fails then, before training starts), so each call costs only forward
passes on the local devices plus the evaluators. The weights are only read: the
parameters are passed in the trainer's pmap layout (leading local-device axis) and used
as they are. Every process computes the same numbers on its own devices (no collective,
so no process can wait on another); process 0 logs them.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from simclr_jax.evaluation import encoders
from simclr_jax.evaluation import features as features_lib
from simclr_jax.evaluation import from_config
from simclr_jax.evaluation import representations as representations_lib

PREFIX = "online_"
# The evaluators the monitor can run, in the order it runs them, and what it logs of
# each: {evaluator: {its output: the metrics.jsonl / TensorBoard name}}.
LOGGED = {
    "knn": {"knn_accuracy": f"{PREFIX}knn_accuracy",
            "knn_auroc_macro": f"{PREFIX}knn_auroc"},
    "clustering": {"nmi": f"{PREFIX}kmeans_nmi"},
    "patient_shortcut": {"patient_shortcut": f"{PREFIX}patient_shortcut",
                         "patient_shortcut_chance": f"{PREFIX}patient_shortcut_chance"},
}
FIELD = "config.online_eval.evaluators"


def read_examples(dataset: str, data_dir: str, split: str, max_examples: int, seed: int
                  ) -> dict:
  """A fixed-seed random subset of a split (record order), with its labels.

  Returns:
    {'image': uint8 [n, H, W, C], 'label' [n], 'patient_id' [n] (when the dataset has
     them) and, for NIH, 'labels' [n, 14]}.
  """
  from simclr_jax import data
  source = data.data_source(dataset, data_dir, split)
  count = len(source)
  chosen = np.arange(count)
  if max_examples < count:
    chosen = np.sort(np.random.default_rng(seed).choice(count, max_examples, replace=False))
  records = [source[int(index)] for index in chosen]
  examples = {"image": np.stack([np.asarray(record["image"]) for record in records])}
  for name in ("label", "labels", "patient_id"):
    if name in records[0]:
      examples[name] = np.stack([np.asarray(record[name]) for record in records])
  return examples


class OnlineMonitor:
  """The evaluators of `config.online_eval.evaluators` on the current encoder's features
  of held-out images.

  Args:
    config: the experiment config; reads dataset, data_dir, image_size, augment, seed,
      model settings (`models.create_encoder`) and the `online_eval` section
      (evaluators, train_split, eval_split, max_train_examples, max_eval_examples,
      batch_size).

  Raises:
    ValueError: an evaluator the monitor cannot run, a bad setting or a non-positive
      size, naming the field.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    from simclr_jax import models
    online = config.online_eval
    names = list(online.evaluators)
    unknown = [name for name in names if name not in LOGGED]
    if unknown or "knn" not in names:
      raise ValueError(f"{FIELD}={names}: must include 'knn'; accepted: "
                       f"{', '.join(LOGGED)}.")
    try:
      self._evaluators = from_config({name: online.evaluators[name].to_dict()
                                      for name in LOGGED if name in names})
    except ValueError as error:
      raise ValueError(f"{FIELD}: {error}") from None
    self.evaluators = tuple(name for name, _ in self._evaluators)
    for field in ("max_train_examples", "max_eval_examples", "batch_size"):
      if int(online[field]) < 1:
        raise ValueError(f"config.online_eval.{field}={online[field]}: must be >= 1.")
    self._config = config
    self._seed = int(config.seed)
    num_devices = jax.local_device_count()
    self._batch_size = -(-int(online.batch_size) // num_devices) * num_devices
    self._network = models.create_encoder(config)  # eval mode: no cross-device BN needed
    self._encode = {}   # input channels -> pmapped encode function
    # Read once, now: a split or label problem stops the run before training starts.
    from simclr_jax import data
    data.check_labelled(config.dataset, config.data_dir,
                        f"the online monitor (config.eval_every_steps={config.eval_every_steps})")
    self._train_examples = read_examples(config.dataset, config.data_dir, online.train_split,
                                         int(online.max_train_examples), self._seed)
    self._eval_examples = read_examples(config.dataset, config.data_dir, online.eval_split,
                                        int(online.max_eval_examples), self._seed + 1)
    try:
      label_set = representations_lib.build(self._eval_examples, self._train_examples,
                                            seed=self._seed).label_set
    except ValueError:   # too few labelled images: name the trainer's fields, not evaluate's
      raise ValueError(
          f"config.online_eval.eval_split={online.eval_split!r} of {config.dataset} gives the "
          f"online monitor {len(self._eval_examples['image'])} image(s) "
          f"(config.online_eval.max_eval_examples={online.max_eval_examples}), too few "
          f"labelled ones to score (it needs at least 2): set config.online_eval.eval_split "
          f"to a larger split, or turn the monitor off with --config.eval_every_steps=0."
      ) from None
    for name, evaluator in self._evaluators:
      if name == "clustering":
        try:
          evaluator.clusters(label_set)
        except ValueError as error:
          raise ValueError(f"{FIELD}.clustering with config.online_eval.max_eval_examples="
                           f"{online.max_eval_examples}: {error}") from None

  def _p_encode(self, input_channels: int):
    if input_channels not in self._encode:
      encode = encoders.make_network_encode_fn(
          self._network, self._config.augment, int(self._config.image_size), input_channels)
      self._encode[input_channels] = jax.pmap(encode)
    return self._encode[input_channels]

  def _features(self, p_encode, variables: Any, images: np.ndarray) -> np.ndarray:
    """Features of `images` with the replicated `variables`, in fixed-size batches."""
    return features_lib.extract_features(
        p_encode, variables, features_lib.padded_batches(images, self._batch_size),
        replicated=True)["features"]

  def run(self, step: int, params: Any, batch_stats: Any) -> dict:
    """Scores the encoder in `params['encoder']` / `batch_stats['encoder']`.

    Args:
      step: the training step (for the caller's logs; the result does not depend on it).
      params, batch_stats: the trainer's replicated full-model variables (leading
        local-device axis; encoder under 'encoder'). Only read.

    Returns:
      {'online_knn_accuracy', 'online_knn_auroc', ['online_kmeans_nmi'],
       ['online_patient_shortcut', 'online_patient_shortcut_chance'],
       'online_eval_seconds'} as Python floats (NaN where an evaluator had no score).
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
    # No bootstrap intervals: the monitor logs point figures every few steps.
    representations = representations_lib.build(evaluated, train, seed=self._seed,
                                                resamples=0)
    result = {}
    for name, evaluator in self._evaluators:
      outputs = dict(evaluator.run(representations))
      for output, logged_name in LOGGED[name].items():
        result[logged_name] = outputs.get(output, float("nan"))
    result[f"{PREFIX}eval_seconds"] = time.perf_counter() - start
    return {key: float(value) for key, value in result.items()}


def maybe_create(config: ml_collections.ConfigDict) -> Optional[OnlineMonitor]:
  """The monitor when `config.eval_every_steps` > 0, else None."""
  if int(config.eval_every_steps) <= 0:
    return None
  return OnlineMonitor(config)
