"""The training core: pmapped step, CLI, resume, guards (multi-device: tests/multidevice/)."""
import functools
import json

import flax
import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, every_evaluator, run_module
from simclr_jax import checkpointing
from simclr_jax import models
from simclr_jax import objectives
from simclr_jax.config import default_config
from simclr_jax.training import optim
from simclr_jax.training import step as step_lib

# Device-split independence (1 vs 4 devices): tests/multidevice/test_train_step.py.


def test_train_step_metrics_and_resnet50_step():
  """One real ResNet-50 SimCLR step (small images) with the pmapped step on one device."""
  config = default_config()
  config.model, config.image_size, config.batch_size = "resnet50", 32, 4
  model = models.create_model(config, axis_name=step_lib.AXIS_NAME)
  tx, lr_fn = optim.create_optimizer(config, total_steps=10, steps_per_epoch=10)
  state = step_lib.create_train_state(config, model, tx, jax.random.PRNGKey(0), (32, 32, 1))
  devices = jax.local_devices()[:1]
  p_step = jax.pmap(functools.partial(step_lib.train_step, tx=tx, learning_rate_fn=lr_fn,
                                      loss_fn=objectives.create_loss(config, model, "batch")),
                    axis_name="batch", devices=devices)
  images = np.random.RandomState(0).randint(0, 256, (1, 4, 40, 40, 1)).astype(np.uint8)
  new_state, metrics = p_step(flax.jax_utils.replicate(state, devices), {"image": images},
                              flax.jax_utils.replicate(jax.random.PRNGKey(0), devices))
  metrics = {k: float(v[0]) for k, v in metrics.items()}
  assert int(new_state.step[0]) == 1
  # 1-channel input: torchvision's 23,508,032 minus the two colour channels of conv1.
  encoder_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params["encoder"]))
  assert encoder_params == 23_508_032 - 2 * 64 * 7 * 7
  for key in ("loss", "learning_rate", "positive_accuracy", "positive_similarity",
              "negative_similarity"):
    assert key in metrics and np.isfinite(metrics[key]), key
  # 2N = 8 views: the loss of a random encoder is close to log(2N - 1).
  assert 0.5 * np.log(7) < metrics["loss"] < 3 * np.log(7)
  assert 0.0 <= metrics["positive_accuracy"] <= 1.0


# ----------------------------------------------------------------------------- CLI runs

def _train_args(workdir, data_dir, *extra):
  return ["simclr_jax.train", "--config", REPO_ROOT / "experiments/configs/demo.py",
          "--workdir", workdir, f"--config.data_dir={data_dir}",
          "--config.dataset=synthetic_cxr/32", "--config.image_size=32",
          "--config.model=resnet_tiny", "--config.batch_size=8",
          "--config.head.hidden_dim=32", "--config.head.output_dim=16",
          "--config.log_every_steps=1", "--config.progress_bar=False",
          # A warm-up longer than these short runs is refused (training/settings.py).
          "--config.optimizer.warmup_steps=0",
          "--config.eval_every_steps=0",  # the online monitor has its own tests
          *extra]


def _final_variables(workdir, step=None):
  """(step, {path: array}) of the newest checkpoint (or of `step`), read as evaluation
  reads it."""
  _, variables, step = checkpointing.load_for_eval(str(workdir), step=step)
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  return step, {jax.tree_util.keystr(path): np.asarray(value) for path, value in leaves}


def _assert_same_variables(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_cli_trains_logs_and_resumes_bit_identically(tmp_path, synthetic_data_dir):
  straight, split = tmp_path / "straight", tmp_path / "split"
  run_module(_train_args(straight, synthetic_data_dir, "--config.num_train_steps=6",
                         "--config.checkpoint_every_steps=3"))
  # Written beside the checkpoints: config, metrics, TensorBoard events.
  config = json.loads((straight / "config.json").read_text())
  assert config["num_train_steps"] == 6 and config["model"] == "resnet_tiny"
  records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  for key in ("loss", "learning_rate", "positive_accuracy", "positive_similarity",
              "negative_similarity", "views_per_second", "epoch"):
    assert all(np.isfinite(r[key]) for r in records), key
  assert list((straight / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(p.name for p in (straight / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]

  # Stop after 3 steps (same schedule), then start again: it resumes at step 3.
  run_module(_train_args(split, synthetic_data_dir, "--config.num_train_steps=6",
                         "--config.checkpoint_every_steps=3", "--config.stop_at_step=3"))
  run_module(_train_args(split, synthetic_data_dir, "--config.num_train_steps=6",
                         "--config.checkpoint_every_steps=3"))
  steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5, 6]          # resumed, not restarted
  step_a, straight_vars = _final_variables(straight)
  step_b, split_vars = _final_variables(split)
  assert step_a == step_b == 6
  _assert_same_variables(straight_vars, split_vars)


def test_init_from_torchvision_weights(tmp_path):
  """--config.init_from=FILE loads a torchvision state_dict into the encoder (RGB conv1
  summed for grey X-rays); the projection head keeps its random initialisation."""
  torch = pytest.importorskip("torch")
  from simclr_jax import convert
  config = default_config()
  config.model, config.image_size = "resnet_tiny", 16
  config.head.hidden_dim, config.head.output_dim = 16, 8
  rgb_encoder = models.create_encoder(config)
  rgb_variables = rgb_encoder.init(jax.random.PRNGKey(42), np.zeros((1, 16, 16, 3), np.float32),
                                   train=False)
  path = tmp_path / "imagenet_like.pth"
  convert.save_torch_weights(rgb_variables, "resnet_tiny", path)
  assert isinstance(torch.load(path, weights_only=True), dict)

  config.init_from = str(path)
  model = models.create_model(config)
  tx, _ = optim.create_optimizer(config, total_steps=10, steps_per_epoch=10)
  state = step_lib.create_train_state(config, model, tx, jax.random.PRNGKey(0), (16, 16, 1))
  loaded = state.params["encoder"]
  np.testing.assert_allclose(loaded["conv_init"]["kernel"],
                             np.sum(rgb_variables["params"]["conv_init"]["kernel"], axis=2,
                                    keepdims=True), rtol=1e-6)
  np.testing.assert_array_equal(loaded["stage1_block0"]["conv2"]["kernel"],
                                rgb_variables["params"]["stage1_block0"]["conv2"]["kernel"])
  np.testing.assert_array_equal(state.batch_stats["encoder"]["bn_init"]["var"],
                                rgb_variables["batch_stats"]["bn_init"]["var"])
  random_state = step_lib.create_train_state(_without_init(config), model, tx,
                                             jax.random.PRNGKey(0), (16, 16, 1))
  np.testing.assert_array_equal(state.params["head"]["dense0"]["kernel"],
                                random_state.params["head"]["dense0"]["kernel"])


def _without_init(config):
  config = config.copy_and_resolve_references()
  config.init_from = ""
  return config


@pytest.mark.slow
def test_supervised_run_with_online_monitor_beats_random_init(tmp_path, synthetic_data_dir):
  """config.objective=supervised through the CLI: one view, the phantom classes as targets;
  the online monitor's kNN scalars land on their steps' metrics lines; the trained encoder's
  linear probe beats the same network at (fair, torchvision-style) random init."""
  workdir = tmp_path / "supervised"
  steps, every = 200, 100
  # Mild augmentation: the 32 px phantoms with the demo's rotation/blur/jitter need far
  # more steps than a test can afford before one view per image is learnable.
  run_module(_train_args(workdir, synthetic_data_dir, "--config.objective=supervised",
                         f"--config.num_train_steps={steps}", "--config.batch_size=16",
                         "--config.checkpoint_every_steps=200", "--config.log_every_steps=50",
                         "--config.optimizer.learning_rate=3e-3",
                         "--config.augment.rotation_degrees=0", "--config.augment.blur_prob=0",
                         "--config.augment.jitter_prob=0",
                         f"--config.eval_every_steps={every}",
                         "--config.online_eval.max_train_examples=64",
                         "--config.online_eval.max_eval_examples=16",
                         "--config.online_eval.evaluators.knn.k=5"))
  config = json.loads((workdir / "config.json").read_text())
  assert config["objective"] == "supervised" and config["supervised"]["num_classes"] == 5
  records = {r["step"]: r for r in map(json.loads, (workdir / "metrics.jsonl").read_text()
                                       .splitlines())}
  assert sorted(records) == [1, 50, 100, 150, 200]   # 1: the first step's timing
  for step, record in records.items():
    has_online = {"online_knn_accuracy", "online_knn_auroc", "online_eval_seconds"} <= set(record)
    assert has_online == (step % every == 0), step
    assert "accuracy" in record and "positive_accuracy" not in record   # supervised metrics
  assert 0.0 <= records[200]["online_knn_accuracy"] <= 1.0

  from simclr_jax.evaluation import encoders, offline
  plan = offline.plan(offline.Data(dataset="synthetic_cxr/32", data_dir=str(synthetic_data_dir),
                                   split="test", train_split="train", batch_size=40),
                      every_evaluator(clustering={"n_init": 1},
                                      label_efficiency={"fractions": (1.0,)}))
  trained = offline.evaluate_encoder(
      encoders.load_encoder(workdir=str(workdir)), plan,
      offline.Output(str(tmp_path / "trained"), plots=False, save_features=False))
  random = offline.evaluate_encoder(
      encoders.load_encoder(workdir=str(workdir), random_init=True), plan,
      offline.Output(str(tmp_path / "random"), plots=False, save_features=False))
  assert "supervised" in trained["encoder_init"] and "random" in random["encoder_init"]
  assert trained["linear_auroc_macro"] > random["linear_auroc_macro"] + 0.08, (
      trained["linear_auroc_macro"], random["linear_auroc_macro"])
