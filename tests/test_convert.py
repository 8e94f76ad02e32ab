"""Tests for simclr_jax.convert against real torchvision ResNets (needs torch)."""
import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

from simclr_jax import convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.torch


@pytest.fixture(scope='module', autouse=True)
def _few_torch_threads():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _random_torchvision(name: str, seed: int = 0) -> torch.nn.Module:
  """torchvision ResNet in eval mode with random BN affine params and running stats.

  Fresh BNs have mean 0, var 1, scale 1, bias 0, which would hide a mix-up of
  the four; random values make every one of them matter.
  """
  torch.manual_seed(seed)
  model = getattr(torchvision.models, name)().eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return model


def _torch_features(model: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
  model.fc = torch.nn.Identity()
  with torch.no_grad():
    return model(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2))).numpy()


def _flax_features(encoder, variables, images_nhwc: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(lambda v, x: encoder.apply(v, x, train=False))(
      variables, images_nhwc))


@pytest.fixture(scope='module')
def resnet50_state_dict():
  return _random_torchvision('resnet50').state_dict()


def test_resnet50_features_match_torchvision(resnet50_state_dict):
  images = np.random.RandomState(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  model = torchvision.models.resnet50().eval()
  model.load_state_dict(resnet50_state_dict)
  expected = _torch_features(model, images)  # [2, 2048]

  variables = convert.torch_to_flax(resnet50_state_dict, 'resnet50')
  features = _flax_features(models.ResNet50(), variables, images)

  assert features.shape == expected.shape == (2, 2048)
  relative_error = np.max(np.abs(features - expected)) / np.max(np.abs(expected))
  assert relative_error <= 1e-4


def test_round_trip_torch_flax_torch_flax_is_exact(resnet50_state_dict):
  variables = convert.torch_to_flax(resnet50_state_dict, 'resnet50')
  exported = convert.flax_to_torch(variables, 'resnet50', as_torch=True)

  model = torchvision.models.resnet50()
  incompatible = model.load_state_dict(exported, strict=False)
  assert sorted(incompatible.missing_keys) == ['fc.bias', 'fc.weight']
  assert not incompatible.unexpected_keys
  for name, tensor in resnet50_state_dict.items():
    if not name.startswith('fc.') and not name.endswith('num_batches_tracked'):
      assert torch.equal(exported[name], tensor), name

  reimported = convert.torch_to_flax(exported, 'resnet50')
  assert jax.tree.structure(reimported) == jax.tree.structure(variables)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(reimported),
                                                  jax.tree.leaves(variables)))


def test_converted_tree_is_the_encoder_init_tree(resnet50_state_dict):
  variables = convert.torch_to_flax(resnet50_state_dict, 'resnet50', in_channels=1)
  expected = jax.eval_shape(
      lambda x: models.ResNet50().init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, 32, 32, 1), np.float32))
  assert (jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), variables)
          == jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), expected))


def test_one_channel_resnet18_equals_rgb_model_on_replicated_grey():
  state_dict = _random_torchvision('resnet18', seed=1).state_dict()
  grey = np.random.RandomState(2).normal(size=(2, 32, 32, 1)).astype(np.float32)
  grey_variables = convert.torch_to_flax(state_dict, 'resnet18', in_channels=1)
  rgb_variables = convert.torch_to_flax(state_dict, 'resnet18')
  assert grey_variables['params']['conv_init']['kernel'].shape == (7, 7, 1, 64)

  encoder = models.ResNet18()
  grey_features = _flax_features(encoder, grey_variables, grey)
  rgb_features = _flax_features(encoder, rgb_variables, np.repeat(grey, 3, axis=-1))
  np.testing.assert_allclose(grey_features, rgb_features, rtol=1e-5,
                             atol=1e-5 * np.max(np.abs(rgb_features)))


def test_bad_state_dict_gives_clear_error():
  state_dict = {name: tensor.numpy() for name, tensor in
                torchvision.models.resnet18().state_dict().items()}
  del state_dict['layer2.0.downsample.1.running_var']
  state_dict['layer2.0.extra.weight'] = np.zeros(3, np.float32)
  state_dict['layer1.0.conv1.weight'] = np.zeros((64, 64, 1, 1), np.float32)
  with pytest.raises(ValueError) as error:
    convert.torch_to_flax(state_dict, 'resnet18')
  message = str(error.value)
  assert 'resnet18' in message
  assert 'missing keys (1): layer2.0.downsample.1.running_var' in message
  assert 'unexpected keys (1): layer2.0.extra.weight' in message
  assert 'layer1.0.conv1.weight (1, 1, 64, 64)' in message  # wrong shape, Flax layout

  with pytest.raises(ValueError, match=r'missing keys \(80\): layer1.2.bn1.bias'):
    convert.torch_to_flax(torchvision.models.resnet18().state_dict(), 'resnet34')
  with pytest.raises(ValueError, match="model_name='resnet19'"):
    convert.torch_to_flax(state_dict, 'resnet19')
  with pytest.raises(ValueError, match='no conv1.weight'):
    convert.torch_to_flax({'weight': np.zeros(3)}, 'resnet18')


@pytest.fixture(scope='module')
def tiny_simclr_variables():
  """Variables of a whole SimCLR model with a resnet_tiny encoder, random values."""
  config = ml_collections.ConfigDict(dict(model='resnet_tiny', width=1.0, stem='imagenet',
                                          dtype='float32', head=dict(kind='mlp', output_dim=4)))
  model = models.create_model(config)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  rng = np.random.RandomState(0)
  return config, jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(np.float32),
                              shapes)


def test_save_and_load_torch_weights(tmp_path, tiny_simclr_variables):
  config, variables = tiny_simclr_variables
  encoder_variables = {'params': variables['params']['encoder'],
                       'batch_stats': variables['batch_stats']['encoder']}
  path = tmp_path / 'encoder.pt'
  convert.save_torch_weights(variables, 'resnet_tiny', path)  # whole-SimCLR tree accepted
  saved = torch.load(path, weights_only=True)
  assert 'layer2.0.downsample.0.weight' in saved and 'bn1.num_batches_tracked' in saved

  loaded = convert.load_torch_weights(path, config, in_channels=None)
  assert jax.tree.structure(loaded) == jax.tree.structure(encoder_variables)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(encoder_variables)):
    np.testing.assert_array_equal(a, b)

  grey = convert.load_torch_weights(path, config)  # default in_channels=1 for X-rays
  np.testing.assert_allclose(grey['params']['conv_init']['kernel'][:, :, 0],
                             encoder_variables['params']['conv_init']['kernel'].sum(axis=2),
                             rtol=1e-6)


def test_load_torch_weights_unwraps_simclr_checkpoints(tmp_path, tiny_simclr_variables):
  config, variables = tiny_simclr_variables
  state_dict = convert.flax_to_torch(variables, 'resnet_tiny', as_torch=True)
  checkpoint = {'epoch': 3, 'state_dict': {
      **{f'module.encoder.{name}': tensor for name, tensor in state_dict.items()},
      'module.projection_head.0.weight': torch.zeros(4, 4)}}
  path = tmp_path / 'simclr.pth'
  torch.save(checkpoint, path)
  loaded = convert.load_torch_weights(path, config, in_channels=None)
  np.testing.assert_array_equal(loaded['params']['stage1_block0']['conv2']['kernel'],
                                variables['params']['encoder']['stage1_block0']['conv2']['kernel'])

  with pytest.raises(ValueError, match='config.width=0.5'):
    convert.load_torch_weights(path, ml_collections.ConfigDict(dict(model='resnet_tiny',
                                                                    width=0.5)))
  with pytest.raises(ValueError, match=r"(?s)config.model='resnet18'.*missing keys"):
    convert.load_torch_weights(path, ml_collections.ConfigDict(dict(model='resnet18')))
