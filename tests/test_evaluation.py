"""Tests for simclr_jax/evaluation/: the fair random init, evaluators as plug-ins and the
online monitor (in-process, tiny models, real TFDS data)."""
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import every_evaluator
from simclr_jax import models
from simclr_jax.config import default_config
from simclr_jax.evaluation import EVALUATORS
from simclr_jax.evaluation import encoders
from simclr_jax.evaluation import from_config
from simclr_jax.evaluation import online
from simclr_jax.evaluation import representations


def test_random_init_residual_branches_differ_in_every_block():
  """The random-init baseline is torchvision's random ResNet: in every block the residual
  branch (output of the last BatchNorm) depends on the image. With zero-initialised BN
  scales every branch outputs exactly 0 and only the stem and downsample path remain."""
  config = default_config()
  config.update(dict(model="resnet_tiny", image_size=32, seed=1))
  assert config.zero_init_residual  # SimCLR's training default stays google-research's
  variables = encoders.random_init_variables(config)
  network = models.create_encoder(config)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
  apply = jax.jit(lambda variables, images: network.apply(
      variables, images, train=False,
      capture_intermediates=lambda module, _: module.name in ("bn2", "bn3"),
      mutable=["intermediates"]))
  _, state = apply({"params": variables["params"]["encoder"],
                    "batch_stats": variables["batch_stats"]["encoder"]}, images)
  blocks = state["intermediates"]
  assert len(blocks) == 2  # resnet_tiny: ResNet-18's basic blocks, 2 stages x 1 block
  for name, block in blocks.items():
    (branch,) = block["bn2"]["__call__"]  # [2, H, W, C]
    # Zero-initialised scales give exactly 0 here, for every image.
    assert float(jnp.max(jnp.abs(branch))) > 1e-2, name
    assert float(jnp.mean(jnp.abs(branch[0] - branch[1]))) > 1e-3, name


def _blobs(num_per_class, seed, num_classes=3, dim=8):
  centres = np.random.default_rng(99).normal(size=(num_classes, dim)) * 6
  rng = np.random.default_rng(seed)
  label = np.repeat(np.arange(num_classes), num_per_class)
  return {"features": (centres[label] + rng.normal(size=(label.size, dim))).astype(np.float32),
          "label": label, "patient_id": np.arange(label.size)}


def test_evaluators_are_plugins_configured_by_name():
  built = from_config({"clustering": {"k": 4, "n_init": 1}, "knn": {"k": 5}, "similarity": {}})
  assert [name for name, _ in built] == ["clustering", "knn", "similarity"]
  data = representations.build(_blobs(10, seed=1), _blobs(20, seed=2), class_names=["a", "b", "c"])
  for name, evaluator in from_config(list(EVALUATORS)) + built:
    outputs = list(evaluator.run(data))
    assert outputs and all(isinstance(key, str) for key, _ in outputs), name
  outputs = dict(built[0][1].run(data))
  assert outputs["k"] == 4 and outputs["cluster_ids"].shape == (30,)
  assert dict(built[1][1].run(data))["knn_k"] == 5
  # The train split is optional: evaluators that need it yield nothing without it.
  alone = representations.build(_blobs(10, seed=1))
  for name, evaluator in from_config("linear_probe,knn,label_efficiency"):
    assert not list(evaluator.run(alone)), name
  with pytest.raises(ValueError, match="unknown evaluator 'tsne'; accepted: clustering"):
    from_config(["clustering", "tsne"])
  with pytest.raises(ValueError, match="evaluator 'knn'.*neighbours"):
    from_config({"knn": {"neighbours": 3}})
  with pytest.raises(ValueError, match="--k=1"):
    list(from_config({"clustering": {"k": 1}})[0][1].run(data))


def test_online_monitor(tmp_path, synthetic_data_dir, monkeypatch):
  """kNN accuracy/AUROC and k-means NMI of a tiny encoder, from the trainer's replicated
  variables: keys prefixed online_, weights untouched, the data read once; the evaluators
  are the offline ones, built by from_config from config.online_eval.evaluators."""
  data_dir = tmp_path / "data"
  shutil.copytree(synthetic_data_dir, data_dir)
  config = default_config()
  config.update(dict(dataset="synthetic_cxr/32", data_dir=str(data_dir), image_size=32,
                     model="resnet_tiny", eval_every_steps=10))
  config.online_eval.update(dict(evaluators={"knn": {"k": 20, "temperature": 0.07},
                                             "clustering": {"n_init": 1},
                                             "patient_shortcut": {}},
                                 max_train_examples=64, max_eval_examples=16, batch_size=24))
  model = models.create_model(config)

  def replicated_variables(seed):
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 1)), train=False)
    return (flax.jax_utils.replicate(variables["params"]),
            flax.jax_utils.replicate(variables["batch_stats"]))

  params, batch_stats = replicated_variables(0)
  before = jax.tree_util.tree_map(np.array, (params, batch_stats))
  built = []
  monkeypatch.setattr(online, "from_config",
                      lambda spec: built.append(spec) or from_config(spec))
  monitor = online.maybe_create(config)
  assert built == [{"knn": {"k": 20, "temperature": 0.07}, "clustering": {"n_init": 1},
                    "patient_shortcut": {}}]
  assert monitor.evaluators == ("knn", "clustering", "patient_shortcut")
  first = monitor.run(10, params, batch_stats)
  assert set(first) == {"online_knn_accuracy", "online_knn_auroc", "online_kmeans_nmi",
                        "online_patient_shortcut", "online_patient_shortcut_chance",
                        "online_eval_seconds"}
  assert all(isinstance(value, float) for value in first.values())
  # The 16 validation phantoms hold patients with several films: the figure is defined.
  assert 0.0 <= first["online_patient_shortcut"] <= 1.0
  assert 0.0 < first["online_patient_shortcut_chance"] < 0.5
  assert 0.0 <= first["online_knn_accuracy"] <= 1.0 and 0.0 <= first["online_knn_auroc"] <= 1.0
  jax.tree_util.tree_map(np.testing.assert_array_equal, before,
                         jax.tree_util.tree_map(np.asarray, (params, batch_stats)))
  shutil.rmtree(data_dir)  # the images were read once and are kept in memory
  again = monitor.run(20, params, batch_stats)
  assert {k: v for k, v in again.items() if k != "online_eval_seconds"} == {
      k: v for k, v in first.items() if k != "online_eval_seconds"}
  other = monitor.run(30, *replicated_variables(1))
  assert other["online_knn_auroc"] != first["online_knn_auroc"]
  # The kNN's temperature is the knn evaluator's setting: it weights the neighbours behind
  # the AUROC, not the majority vote behind the accuracy.
  config.data_dir = str(synthetic_data_dir)
  config.online_eval.evaluators.knn.temperature = 10.0
  warm = online.maybe_create(config).run(40, params, batch_stats)
  assert warm["online_knn_accuracy"] == first["online_knn_accuracy"]
  assert warm["online_knn_auroc"] != first["online_knn_auroc"]
  assert warm["online_kmeans_nmi"] == first["online_kmeans_nmi"]

  config.eval_every_steps = 0
  assert online.maybe_create(config) is None
  config.online_eval.evaluators = {"knn": {}, "linear_probe": {}}
  with pytest.raises(ValueError, match="online_eval.evaluators"):
    online.OnlineMonitor(config)
  config.online_eval.evaluators = {"clustering": {}}      # the kNN always runs
  with pytest.raises(ValueError, match="must include 'knn'"):
    online.OnlineMonitor(config)
  config.online_eval.evaluators = {"knn": {"k": 0}}       # the evaluator's own check
  with pytest.raises(ValueError, match="online_eval.evaluators: --knn_k=0"):
    online.OnlineMonitor(config)
  config.online_eval.evaluators = {"knn": {}, "clustering": {"k": 17}}  # > 16 examples
  with pytest.raises(ValueError, match="clustering.*--k=17 is larger than the 16"):
    online.OnlineMonitor(config)
  config.online_eval.evaluators = {"knn": {}}
  config.online_eval.eval_split = "valid"   # fails when the monitor is made, not mid-run
  with pytest.raises(ValueError, match="split 'valid'"):
    online.OnlineMonitor(config)


def test_binary_label_mode_on_multi_label_data_probes_the_binary_question():
  """binary:No Finding (normal vs abnormal) on NIH-like data: the probe and the kNN AUROC
  answer that question, not the 14 findings (which stay the probe under other modes)."""
  from simclr_jax.data import labels as labels_lib
  from simclr_jax.evaluation import offline

  def split(seed, count=80):
    rng = np.random.default_rng(seed)
    multi_hot = np.zeros((count, len(labels_lib.FINDINGS)), np.uint8)
    abnormal = np.arange(count) % 2 == 1
    multi_hot[abnormal, rng.integers(0, 3, abnormal.sum())] = 1   # findings 0-2 only
    features = rng.normal(size=(count, 6)).astype(np.float32)
    features[:, 0] += 3.0 * abnormal                                 # normal vs abnormal
    return {"features": features, "labels": multi_hot, "patient_id": np.arange(count)}

  train, evaluated = split(1), split(2)
  every = from_config(every_evaluator(clustering={"n_init": 1},
                                      label_efficiency={"fractions": (1.0,)}))
  binary, _ = offline.evaluate_features(evaluated, train, every, label_mode="binary:No Finding")
  assert set(binary["linear_auroc"]) == {"any finding", "No Finding"}
  assert binary["linear_auroc_macro"] > 0.9 and binary["knn_auroc_macro"] > 0.9
  assert "binary" in binary["linear_probe_targets"]
  findings, _ = offline.evaluate_features(evaluated, train, every, label_mode="single")
  assert set(findings["linear_auroc"]) == set(labels_lib.FINDINGS)
