"""The training core: pmapped step, device-split independence, CLI, resume, guards."""
import json
import pathlib

import numpy as np
import pytest

from conftest import REPO_ROOT, every_evaluator, run_module, run_python

# A step function run on 1 device and on 4 fake CPU devices with the same global batch.
# Augmentation is on (defaults), optimiser is SGD+momentum so any gradient-scale error
# shows directly in the parameters (Adam's first step would normalise it away).
_EQUIVALENCE_CODE = r"""
import functools, json
import jax, jax.numpy as jnp, numpy as np, flax
from simclr_jax import models, objectives, optim, train
from simclr_jax.config import default_config
from tests.conftest import update_differences

config = default_config()
config.model, config.width, config.image_size, config.batch_size = 'resnet_tiny', 1.0, 16, 8
config.head.hidden_dim, config.head.output_dim = 32, 16
config.optimizer.name, config.optimizer.learning_rate, config.optimizer.warmup_steps = 'sgd', 0.5, 0
model = models.create_model(config, axis_name=train.AXIS_NAME)
tx, lr_fn = optim.create_optimizer(config, total_steps=10, steps_per_epoch=10)
state = train.create_train_state(config, model, tx, jax.random.PRNGKey(0), (16, 16, 1))
images = np.random.RandomState(0).randint(0, 256, (8, 24, 24, 1)).astype(np.uint8)
rng = jax.random.PRNGKey(1)
step = functools.partial(train.train_step, tx=tx, learning_rate_fn=lr_fn,
                         objective=objectives.create_objective(config, model, 'batch'))

def run(num_devices):
  devices = jax.devices()[:num_devices]
  p_step = jax.pmap(step, axis_name=train.AXIS_NAME, devices=devices)
  replicated = flax.jax_utils.replicate(state, devices)
  replicated_rng = flax.jax_utils.replicate(rng, devices)
  batch = {'image': images.reshape(num_devices, 8 // num_devices, 24, 24, 1)}
  losses = []
  for _ in range(2):
    replicated, metrics = p_step(replicated, batch, replicated_rng)
    losses.append(float(metrics['loss'][0]))
  final = jax.device_get(flax.jax_utils.unreplicate(replicated))
  return losses, final

losses1, state1 = run(1)
losses4, state4 = run(4)
max_diff, moved = update_differences(state, state1, state4)
print(json.dumps({'devices': jax.device_count(), 'losses1': losses1, 'losses4': losses4,
                  'max_param_diff': max_diff, 'moved': moved}))
"""


def test_one_vs_four_devices_give_the_same_update():
  result = run_python(_EQUIVALENCE_CODE, num_devices=4)
  assert result["devices"] == 4
  np.testing.assert_allclose(result["losses1"], result["losses4"], rtol=1e-5, atol=1e-5)
  assert result["moved"] > 1e-3            # the step really changed the parameters
  assert result["max_param_diff"] < 1e-5


def test_train_step_metrics_and_resnet50_step():
  """One real ResNet-50 SimCLR step (small images) with the pmapped step on one device."""
  result = run_python(r"""
import functools, json
import jax, jax.numpy as jnp, numpy as np, flax
from simclr_jax import models, objectives, optim, train
from simclr_jax.config import default_config
config = default_config()
config.model, config.image_size, config.batch_size = 'resnet50', 32, 4
model = models.create_model(config, axis_name=train.AXIS_NAME)
tx, lr_fn = optim.create_optimizer(config, total_steps=10, steps_per_epoch=10)
state = train.create_train_state(config, model, tx, jax.random.PRNGKey(0), (32, 32, 1))
p_step = jax.pmap(functools.partial(train.train_step, tx=tx, learning_rate_fn=lr_fn,
    objective=objectives.create_objective(config, model, 'batch')), axis_name='batch')
images = np.random.RandomState(0).randint(0, 256, (1, 4, 40, 40, 1)).astype(np.uint8)
new_state, metrics = p_step(flax.jax_utils.replicate(state), {'image': images},
                            flax.jax_utils.replicate(jax.random.PRNGKey(0)))
metrics = {k: float(v[0]) for k, v in metrics.items()}
count = sum(x.size for x in jax.tree_util.tree_leaves(state.params['encoder']))
print(json.dumps({'metrics': metrics, 'step': int(new_state.step[0]), 'encoder_params': count}))
""", timeout=600)
  metrics = result["metrics"]
  assert result["step"] == 1
  # 1-channel input: torchvision's 23,508,032 minus the two colour channels of conv1.
  assert result["encoder_params"] == 23_508_032 - 2 * 64 * 7 * 7
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
          # A warm-up longer than these short runs is refused (config_checks).
          "--config.optimizer.warmup_steps=0",
          "--config.eval_every_steps=0",  # the online monitor has its own tests
          *extra]


def _final_variables(workdir):
  code = f"""
import json, numpy as np, jax
from simclr_jax import checkpointing
config, variables, step = checkpointing.load_for_eval({str(workdir)!r})
leaves = jax.tree_util.tree_leaves_with_path(variables)
np.savez({str(workdir / 'final.npz')!r}, **{{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}})
print(json.dumps({{'step': step}}))
"""
  step = run_python(code)["step"]
  return step, dict(np.load(workdir / "final.npz"))


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
  import jax
  from simclr_jax import convert
  from simclr_jax import models
  from simclr_jax.training import optim
  from simclr_jax import train
  from simclr_jax.config import default_config
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
  state = train.create_train_state(config, model, tx, jax.random.PRNGKey(0), (16, 16, 1))
  loaded = state.params["encoder"]
  np.testing.assert_allclose(loaded["conv_init"]["kernel"],
                             np.sum(rgb_variables["params"]["conv_init"]["kernel"], axis=2,
                                    keepdims=True), rtol=1e-6)
  np.testing.assert_array_equal(loaded["stage1_block0"]["conv2"]["kernel"],
                                rgb_variables["params"]["stage1_block0"]["conv2"]["kernel"])
  np.testing.assert_array_equal(state.batch_stats["encoder"]["bn_init"]["var"],
                                rgb_variables["batch_stats"]["bn_init"]["var"])
  random_state = train.create_train_state(_without_init(config), model, tx,
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
