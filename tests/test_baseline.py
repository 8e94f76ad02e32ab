"""The PyTorch baseline (experiments/pytorch_baseline) against simclr_jax: loss, one SGD step, I/O."""
import json

import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from experiments.pytorch_baseline import augment as baseline_augment
from experiments.pytorch_baseline import loss as baseline_loss
from experiments.pytorch_baseline import model as baseline_model
from experiments.pytorch_baseline import train as baseline_train

torch.set_num_threads(2)

METRIC_KEYS = {'step', 'loss', 'learning_rate', 'positive_accuracy', 'positive_similarity',
               'negative_similarity', 'views_per_second', 'epoch'}


def _relative_difference(actual, expected) -> float:
  """max |actual - expected| / max |expected| (0 for two all-zero arrays)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = np.max(np.abs(expected))
  return float(np.max(np.abs(actual - expected)) / scale) if scale > 0 else float(
      np.max(np.abs(actual)))


def test_positive_mask_pairs_view_i_with_view_i_plus_n():
  mask = baseline_loss.NTXentLoss._create_positive_mask(3)
  assert mask.shape == (6, 6)
  assert mask.sum() == 6
  for i in range(3):
    assert mask[i, i + 3] and mask[i + 3, i]


def test_loss_and_metrics_match_jax_nt_xent():
  from simclr_jax import losses
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 8, 16))  # float64 [n=8, d=16]
  z2 = z2 + 0.5 * z1  # correlated views: loss ~1.2, between 0 and log(2n - 1)
  loss_fn = baseline_loss.NTXentLoss(temperature=0.07)
  torch_z1 = torch.tensor(z1, requires_grad=True)
  torch_z2 = torch.tensor(z2, requires_grad=True)
  torch_loss = loss_fn(torch_z1, torch_z2)  # float64 all the way
  torch_loss.backward()
  torch_metrics = loss_fn.metrics(torch_z1, torch_z2)

  # simclr_jax computes the loss in float32 (it casts); the inputs are the same float64 values.
  (jax_loss, jax_metrics), jax_grads = jax.value_and_grad(
      lambda a, b: losses.nt_xent_with_metrics(a, b, temperature=0.07), argnums=(0, 1),
      has_aux=True)(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))

  assert _relative_difference(jax_loss, torch_loss.item()) < 1e-6
  assert float(losses.nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.07)) == pytest.approx(
      torch_loss.item(), rel=1e-6)
  for name, value in torch_metrics.items():
    assert float(jax_metrics[name]) == pytest.approx(value, rel=1e-5, abs=1e-6), name
  assert _relative_difference(jax_grads[0], torch_z1.grad) < 1e-5
  assert _relative_difference(jax_grads[1], torch_z2.grad) < 1e-5


def _jax_sgd_step(inputs: dict, temperature: float, learning_rate: float) -> tuple:
  """(loss, {torch name: update}) of one plain SGD step of simclr_jax's network, float64.

  Inside `jax.enable_x64`: the rest of the pytest process stays float32. The encoder and
  head compute in float64; simclr_jax rounds the pooled features, the projections and the
  loss to float32 by design, which changes gradients only at the 1e-7 level. In float32 a
  ReLU input within ~1e-6 of 0 (one in ~10^5 of resnet18's activations here) can flip
  sides and change one BatchNorm bias gradient by 1e-2, which is float32 rounding, not a
  model difference.
  """
  import optax
  from simclr_jax import convert, losses, models
  with jax.enable_x64(True):
    encoder_state = {k[len('encoder.'):]: v for k, v in inputs.items()
                     if k.startswith('encoder.')}
    variables = convert.torch_to_flax(encoder_state, 'resnet18')  # 3 input channels, as the seed
    head_params = {f'dense{i}': {'kernel': inputs[f'head.{t}.weight'].T,
                                 'bias': inputs[f'head.{t}.bias']}
                   for i, t in enumerate((0, 2))}
    to64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
    params = to64({'encoder': variables['params'], 'head': head_params})
    batch_stats = to64({'encoder': variables['batch_stats']})
    model = models.SimCLR(encoder=models.ResNet18(dtype=jnp.float64),
                          head=models.ProjectionHead(hidden_dim=512, output_dim=128,
                                                     dtype=jnp.float64))
    views = jnp.asarray(inputs['views'].transpose(0, 2, 3, 1))  # NHWC float64, view 1 then 2

    def loss_fn(params):
      (_, projections), new_state = model.apply(
          {'params': params, 'batch_stats': batch_stats}, views, train=True,
          mutable=['batch_stats'])
      z1, z2 = jnp.split(projections, 2, axis=0)
      return losses.nt_xent(z1, z2, temperature), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    tx = optax.sgd(learning_rate)
    updates, _ = tx.update(grads, tx.init(params), params)
    encoder_updates = convert.flax_to_torch(
        {'params': updates['encoder'], 'batch_stats': new_state['batch_stats']['encoder']},
        'resnet18')
    outputs = {f'encoder.{k}': np.asarray(v) for k, v in encoder_updates.items()}
    for i, t in enumerate((0, 2)):
      outputs[f'head.{t}.weight'] = np.asarray(updates['head'][f'dense{i}']['kernel']).T
      outputs[f'head.{t}.bias'] = np.asarray(updates['head'][f'dense{i}']['bias'])
    return float(loss), outputs


def test_one_sgd_step_matches_jax():
  """Same weights + same views + one plain SGD step => same weights, both frameworks."""
  learning_rate, temperature, batch, size = 0.1, 0.07, 4, 32
  torch.manual_seed(0)
  # float32 initial weights and views (exactly representable on both sides), float64 compute.
  torch_model = baseline_model.SimCLRModel('resnet18').double()
  torch_model.train()
  views = torch.randn(2 * batch, 3, size, size, generator=torch.Generator().manual_seed(1)
                      ).double()  # view 1 rows, then view 2 rows (no augmentation)
  before = {f'encoder.{k}': v.numpy().copy() for k, v in torch_model.encoder.state_dict().items()}
  before.update({f'head.{k}': v.numpy().copy() for k, v in torch_model.head.state_dict().items()})
  inputs = {'views': views.numpy().copy(), **before}

  # torch: the baseline's own train step, SGD without momentum / weight decay, train-mode BN.
  optimizer = baseline_train.create_optimizer(torch_model.parameters(), 'sgd', learning_rate)
  torch_loss, _, _ = baseline_train.train_step(
      torch_model, baseline_loss.NTXentLoss(temperature), optimizer,
      torch.amp.GradScaler('cpu', enabled=False), views[:batch], views[batch:])
  after = {f'encoder.{k}': v.numpy() for k, v in torch_model.encoder.state_dict().items()}
  after.update({f'head.{k}': v.numpy() for k, v in torch_model.head.state_dict().items()})

  # jax: the computation of simclr_jax.training.step.train_step after augmentation, float64.
  jax_loss, jax_outputs = _jax_sgd_step(inputs, temperature=temperature,
                                        learning_rate=learning_rate)
  assert jax_loss == pytest.approx(torch_loss.item(), rel=1e-6)

  weight_diffs, update_diffs = {}, {}
  for name in after:
    if name.endswith('num_batches_tracked') or 'running_' in name:
      continue
    jax_after = before[name] + jax_outputs[name]
    weight_diffs[name] = _relative_difference(jax_after, after[name])
    update_diffs[name] = _relative_difference(jax_outputs[name], after[name] - before[name])
  assert len(weight_diffs) == len(list(torch_model.parameters()))  # every weight compared
  worst = max(weight_diffs, key=weight_diffs.get)
  worst_update = max(update_diffs, key=update_diffs.get)
  print(f'max relative difference: weights {weight_diffs[worst]:.2e} ({worst}), '
        f'updates {update_diffs[worst_update]:.2e} ({worst_update})')
  assert weight_diffs[worst] < 1e-5, (worst, weight_diffs[worst])  # brief: 1e-4
  # The update itself (what one step changes) agrees to the float32 rounding simclr_jax
  # applies to features, projections and loss.
  assert update_diffs[worst_update] < 1e-5, (worst_update, update_diffs[worst_update])

  # BatchNorm running statistics: the means agree; torch updates the running variance with
  # the UNBIASED batch variance (x n / (n - 1)), Flax with the biased one.
  for name, count in (('bn1', 2 * batch * 16 * 16), ('layer4.1.bn2', 2 * batch * 1 * 1)):
    mean_name, var_name = f'encoder.{name}.running_mean', f'encoder.{name}.running_var'
    assert _relative_difference(jax_outputs[mean_name], after[mean_name]) < 1e-5, name
    torch_batch_var = (after[var_name] - 0.9) / 0.1
    jax_batch_var = (jax_outputs[var_name] - 0.9) / 0.1
    assert _relative_difference(jax_batch_var * count / (count - 1), torch_batch_var) < 1e-5, name


def test_augmentation_is_the_seed_pipeline():
  transform = baseline_augment.seed_transform(32)
  names = [type(t).__name__ for t in transform.transforms]
  assert names == ['RandomResizedCrop', 'RandomHorizontalFlip', 'RandomRotation', 'ColorJitter',
                   'RandomGrayscale', 'GaussianBlur', 'ToDtype', 'Normalize']
  crop = transform.transforms[0]
  assert tuple(crop.scale) == (0.8, 1.0)
  image = np.random.default_rng(0).integers(0, 256, (40, 40, 1), dtype=np.uint8)
  view1, view2 = baseline_augment.TwoViews(transform)(image)
  assert view1.shape == view2.shape == (3, 32, 32) and view1.dtype == torch.float32
  assert not torch.equal(view1, view2)  # two independent draws
  # Grey replicated to RGB stays grey through the seed's colour ops: undoing the ImageNet
  # normalisation gives three equal channels.
  mean = torch.tensor(baseline_augment.IMAGENET_MEAN)[:, None, None]
  std = torch.tensor(baseline_augment.IMAGENET_STD)[:, None, None]
  pixels = view1 * std + mean
  assert torch.allclose(pixels[0], pixels[1], atol=1e-5)
  assert torch.allclose(pixels[0], pixels[2], atol=1e-5)
  with pytest.raises(ValueError, match='uint8'):
    baseline_augment.to_rgb_tensor(np.zeros((8, 8, 1), np.float32))


def test_evaluator_reproduces_torch_encoder_features(tmp_path):
  """`simclr_jax.evaluate --torch_weights` runs the baseline's encoder as torch does (RGB
  stem, grey repeated to 3 channels, per-channel ImageNet normalisation): same features."""
  from simclr_jax import evaluate
  size = 32
  torch.manual_seed(0)
  encoder = baseline_model.create_encoder('resnet18')
  with torch.no_grad():  # non-trivial running statistics, as after training
    for module in encoder.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
  encoder.eval()
  images = np.random.default_rng(0).integers(0, 256, (3, size, size, 1), dtype=np.uint8)
  transform = baseline_augment.eval_transform(size)
  with torch.no_grad():
    views = torch.stack([transform(baseline_augment.to_rgb_tensor(image)).as_subclass(
        torch.Tensor) for image in images])
    torch_features = encoder(views).numpy()

  weights = tmp_path / 'encoder_torchvision.pt'
  torch.save(encoder.state_dict(), weights)
  loaded = evaluate.load_encoder(torch_weights=str(weights), model='resnet18', image_size=size)
  encode, variables = evaluate.make_encode_fn(loaded)
  jax_features = np.asarray(encode(variables, jnp.asarray(images)))
  assert _relative_difference(jax_features, torch_features) < 1e-4


def _prepare_tiny_synthetic(data_dir) -> str:
  """A tiny synthetic_cxr/32 data set in data_dir (the data helper's builder, small splits)."""
  from simclr_jax import data as simclr_data
  builder = simclr_data.get_builder(
      'synthetic_cxr/32', str(data_dir), split_sizes={'train': 8, 'validation': 4, 'test': 4},
      num_workers=1)
  builder.download_and_prepare()
  return 'synthetic_cxr/32'


@pytest.mark.slow
def test_baseline_trains_two_steps_on_prepared_data(tmp_path):
  pytest.importorskip('simclr_jax.data')
  dataset = _prepare_tiny_synthetic(tmp_path / 'data')
  workdir = tmp_path / 'torch_run'
  baseline_train.main([
      '--dataset', dataset, '--data_dir', str(tmp_path / 'data'), '--image_size', '32',
      '--batch_size', '4', '--steps', '2', '--log_every', '1', '--model', 'resnet18',
      '--workdir', str(workdir), '--threads', '2'])
  lines = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [line['step'] for line in lines] == [1, 2]
  for line in lines:
    assert set(line) == METRIC_KEYS
    assert np.isfinite(line['loss'])
  state_dict = torch.load(workdir / 'encoder_torchvision.pt', weights_only=True)
  assert not any(name.startswith('fc.') for name in state_dict)
  resnet = torchvision.models.resnet18()
  result = resnet.load_state_dict(state_dict, strict=False)
  assert set(result.missing_keys) == {'fc.weight', 'fc.bias'} and not result.unexpected_keys
  config = json.loads((workdir / 'config.json').read_text())
  assert config['framework'] == 'torch' and config['model'] == 'resnet18'
