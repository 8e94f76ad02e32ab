"""Tests for simclr_jax.models: shapes, parameter counts, dtypes, heads, global BN."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from simclr_jax import models


def _shapes(module, input_shape, **init_kwargs):
  """Variable shapes of `module` without running it."""
  images = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  return jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, train=False, **init_kwargs), images)


def _random_variables(module, input_shape, seed=0, **init_kwargs):
  """Variables of `module` filled from numpy (compiling `init` is slow on a busy CPU)."""
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'var':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name == 'scale':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if name == 'kernel' else 10
    return (rng.normal(0, 1, leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, _shapes(module, input_shape, **init_kwargs))


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      model='resnet_tiny', width=0.125, stem='cifar', dtype='float32',
      head=dict(kind='mlp', hidden_dim=-1, output_dim=8, num_layers=2),
      supervised=dict(num_classes=-1)))
  config.update_from_flattened_dict(overrides)
  return config


# torchvision resnetXX() parameter counts minus the fc layer.
@pytest.mark.parametrize('constructor, expected_params, expected_features', [
    (models.ResNet18, 11_176_512, 512),
    (models.ResNet34, 21_284_672, 512),
    (models.ResNet50, 23_508_032, 2048),
    (models.ResNet101, 42_500_160, 2048),
], ids=['resnet18', 'resnet34', 'resnet50', 'resnet101'])
def test_parameter_count_and_feature_dim_match_torchvision(constructor, expected_params,
                                                           expected_features):
  encoder = constructor()
  variables = _shapes(encoder, (1, 64, 64, 3))
  assert _count(variables['params']) == expected_params
  features = jax.eval_shape(lambda v: encoder.apply(v, jnp.zeros((2, 64, 64, 3)), train=False),
                            variables)
  assert features.shape == (2, expected_features)
  assert features.dtype == jnp.float32
  assert encoder.features == expected_features


def test_resnet50_parameter_names_follow_contract():
  params = _shapes(models.ResNet50(), (1, 32, 32, 3))['params']
  assert {'conv_init', 'bn_init', 'stage0_block0', 'stage3_block2'} <= set(params)
  assert set(params['stage1_block0']) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3',
                                          'downsample_conv', 'downsample_bn'}
  assert 'downsample_conv' not in params['stage1_block1']
  # v1.5: the stride sits on the 3x3 conv.
  assert params['stage1_block0']['conv2']['kernel'].shape == (3, 3, 128, 128)


def test_one_channel_input_changes_only_first_conv():
  rgb = _shapes(models.ResNet50(), (1, 32, 32, 3))
  grey = _shapes(models.ResNet50(), (1, 32, 32, 1))
  assert _count(rgb['params']) - _count(grey['params']) == 7 * 7 * 2 * 64
  rgb_flat = jax.tree_util.tree_flatten_with_path(rgb)[0]
  grey_flat = jax.tree_util.tree_flatten_with_path(grey)[0]
  changed = [jax.tree_util.keystr(path) for (path, a), (_, b) in zip(rgb_flat, grey_flat)
             if a.shape != b.shape]
  assert changed == ["['params']['conv_init']['kernel']"]


def test_width_multiplier_scales_every_channel_dimension():
  full = _shapes(models.ResNet18(width=1.0), (1, 32, 32, 3))
  half = _shapes(models.ResNet18(width=0.5), (1, 32, 32, 3))

  def expected_half(path, leaf):
    shape = list(leaf.shape)
    if len(shape) == 4:  # conv kernel [kh, kw, in, out]; the image keeps its 3 channels
      in_channels = shape[2] if path[1].key == 'conv_init' else shape[2] // 2
      return (shape[0], shape[1], in_channels, shape[3] // 2)
    return (shape[0] // 2,)

  assert (jax.tree_util.tree_map_with_path(lambda p, leaf: tuple(leaf.shape), half)
          == jax.tree_util.tree_map_with_path(expected_half, full))
  assert models.feature_dim(_config(model='resnet18', width=0.5)) == 256


def test_bfloat16_compute_keeps_float32_params_and_features():
  images = np.random.RandomState(1).normal(size=(2, 16, 16, 1)).astype(np.float32)
  variables = _random_variables(models.ResNetTiny(width=0.125, stem='cifar'), images.shape)
  bf16_shapes = _shapes(models.ResNetTiny(width=0.125, stem='cifar', dtype=jnp.bfloat16),
                        images.shape)
  assert {leaf.dtype for leaf in jax.tree.leaves(bf16_shapes)} == {jnp.dtype(jnp.float32)}
  outputs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    encoder = models.ResNetTiny(width=0.125, stem='cifar', dtype=dtype)
    outputs[dtype] = jax.jit(lambda v, x: encoder.apply(v, x, train=False))(variables, images)
  assert outputs[jnp.bfloat16].dtype == jnp.float32
  # Same params, different compute precision: close but not identical.
  assert not np.array_equal(outputs[jnp.bfloat16], outputs[jnp.float32])
  np.testing.assert_allclose(outputs[jnp.bfloat16], outputs[jnp.float32], rtol=0.1, atol=0.05)


def test_stems_and_bad_stem():
  cifar = _shapes(models.ResNetTiny(stem='cifar'), (1, 16, 16, 1))
  imagenet = _shapes(models.ResNetTiny(stem='imagenet'), (1, 16, 16, 1))
  assert cifar['params']['conv_init']['kernel'].shape == (3, 3, 1, 64)
  assert imagenet['params']['conv_init']['kernel'].shape == (7, 7, 1, 64)
  with pytest.raises(ValueError, match="stem='vit'.*imagenet"):
    _shapes(models.ResNetTiny(stem='vit'), (1, 16, 16, 1))


def test_projection_heads():
  features = jax.ShapeDtypeStruct((4, 32), jnp.float32)
  mlp = models.ProjectionHead(hidden_dim=32, output_dim=8)
  variables = jax.eval_shape(lambda x: mlp.init(jax.random.key(0), x, train=False), features)
  assert jax.tree.map(lambda leaf: leaf.shape, variables) == {'params': {
      'dense0': {'kernel': (32, 32), 'bias': (32,)},
      'dense1': {'kernel': (32, 8), 'bias': (8,)}}}

  v2 = models.ProjectionHead(hidden_dim=16, output_dim=8, num_layers=3, use_bn=True,
                             dtype=jnp.bfloat16)
  variables = jax.eval_shape(lambda x: v2.init(jax.random.key(0), x, train=False), features)
  assert jax.tree.map(lambda leaf: leaf.shape, variables) == {
      'params': {'dense0': {'kernel': (32, 16)}, 'bn0': {'scale': (16,), 'bias': (16,)},
                 'dense1': {'kernel': (16, 16)}, 'bn1': {'scale': (16,), 'bias': (16,)},
                 'dense2': {'kernel': (16, 8)}, 'bn2': {'scale': (8,)}},
      'batch_stats': {name: {'mean': (size,), 'var': (size,)}
                      for name, size in (('bn0', 16), ('bn1', 16), ('bn2', 8))}}
  projections = jax.eval_shape(lambda v, x: v2.apply(v, x, train=False), variables, features)
  assert projections.shape == (4, 8) and projections.dtype == jnp.float32


@pytest.mark.parametrize('kind, num_layers, head_has_batch_stats',
                         [('mlp', 2, False), ('simclr_v2', 3, True)])
def test_simclr_model_returns_features_and_projections(kind, num_layers, head_has_batch_stats):
  config = _config(**{'head.kind': kind, 'head.num_layers': num_layers})
  model = models.create_model(config)
  images = np.random.RandomState(0).normal(size=(4, 16, 16, 1)).astype(np.float32)
  variables = _random_variables(model, images.shape)
  assert set(variables['params']) == {'encoder', 'head'}
  assert ('head' in variables['batch_stats']) == head_has_batch_stats
  # hidden_dim -1 => the encoder's feature dim (16 for resnet_tiny at width 0.125).
  assert variables['params']['head']['dense0']['kernel'].shape == (16, 16)
  (features, projections), updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, images)
  assert features.shape == (4, models.feature_dim(config)) == (4, 16)
  assert projections.shape == (4, 8)
  assert features.dtype == projections.dtype == jnp.float32
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(
      variables['batch_stats'])


def test_factories_read_config():
  config = _config(model='resnet50', width=1.0, stem='imagenet', dtype='bfloat16')
  encoder = models.create_encoder(config, axis_name='batch')
  assert isinstance(encoder, models.ResNet)
  assert (encoder.dtype, encoder.axis_name, encoder.stem) == (jnp.bfloat16, 'batch', 'imagenet')
  assert models.feature_dim(config) == 2048
  head = models.create_model(config).head
  assert (head.hidden_dim, head.output_dim, head.use_bn) == (2048, 8, False)


@pytest.mark.parametrize('overrides, message', [
    ({'model': 'resnet51'}, r"config.model='resnet51'.*resnet50"),
    ({'head.kind': 'linear'}, r"config.head.kind='linear'.*simclr_v2"),
    ({'dtype': 'float16'}, r"config.dtype='float16'.*bfloat16"),
    ({'stem': 'vit'}, r"config.stem='vit'.*cifar"),
    ({'head.hidden_dim': 0}, r'config.head.hidden_dim=0'),
])
def test_factory_errors_name_field_and_accepted_values(overrides, message):
  with pytest.raises(ValueError, match=message):
    models.create_model(_config(**overrides))


# Global BatchNorm over 2 devices: tests/multidevice/test_batchnorm.py.


def _block_outputs_and_residual_branches(encoder, last_bn_name, images):
  """Per block: (input, output, residual branch = its last BN's output), eval mode."""
  is_block = lambda module: isinstance(module, (models.BasicBlock, models.Bottleneck))
  capture = lambda module, method: method == '__call__' and (
      is_block(module) or (module.name == last_bn_name and is_block(module.parent)))

  @jax.jit
  def init_and_apply(images):  # the real initialisers (kaiming fan-out convs)
    variables = encoder.init(jax.random.key(0), images[:1], train=False)
    _, state = encoder.apply(variables, images, train=False, capture_intermediates=capture,
                             mutable=['intermediates'])
    return variables['params'], state['intermediates']

  params, intermediates = init_and_apply(images)
  blocks = sorted(name for name in intermediates if name.startswith('stage'))
  previous = None
  result = {}
  for name in blocks:
    output = np.asarray(intermediates[name]['__call__'][0])
    branch = np.asarray(intermediates[name][last_bn_name]['__call__'][0])
    has_downsample = 'downsample_conv' in params[name]
    result[name] = (previous if not has_downsample else None, output, branch)
    previous = output
  return result


@pytest.mark.parametrize('block', ['basic', 'bottleneck'])
def test_zero_init_residual_false_gives_every_block_a_working_residual_branch(block):
  """torchvision's random network vs google-research/simclr's identity-start blocks."""
  images = np.random.RandomState(2).normal(size=(4, 16, 16, 1)).astype(np.float32)
  for zero_init_residual in (False, True):
    if block == 'basic':  # through the config field, as train/evaluate build it
      encoder = models.create_encoder(_config(zero_init_residual=zero_init_residual,
                                              width=0.25))
      last_bn = 'bn2'
    else:
      encoder = models.ResNet(stage_sizes=[2], block_cls=models.Bottleneck, width=0.125,
                              stem='cifar', zero_init_residual=zero_init_residual)
      last_bn = 'bn3'
    blocks = _block_outputs_and_residual_branches(encoder, last_bn, images)
    assert len(blocks) == 2
    for name, (block_input, output, branch) in blocks.items():
      if zero_init_residual:
        # The residual branch is exactly 0: each block starts as the identity (or, with a
        # downsample, as its shortcut alone).
        assert not np.any(branch), name
        if block_input is not None:
          np.testing.assert_array_equal(output, block_input, err_msg=name)
      else:
        # Every residual branch contributes, and differently for different images.
        scale = np.abs(output).mean()
        assert np.abs(branch).mean() > 0.1 * scale, name
        assert np.abs(branch[0] - branch[1:]).mean() > 0.1 * np.abs(branch).mean(), name
        if block_input is not None:
          assert np.abs(output - block_input).mean() > 0.1 * scale, name


def test_supervised_model_has_encoder_and_classifier():
  config = _config(objective='supervised', **{'supervised.num_classes': 7})
  model = models.create_model(config, axis_name='batch', num_classes=3)  # argument wins
  assert isinstance(model, models.Supervised) and model.encoder.axis_name == 'batch'
  variables = _shapes(models.create_model(config, num_classes=3), (2, 16, 16, 1))
  assert set(variables['params']) == {'encoder', 'classifier'}
  assert set(variables['batch_stats']) == {'encoder'}
  assert jax.tree.map(lambda leaf: leaf.shape, variables['params']['classifier']) == {
      'kernel': (16, 3), 'bias': (3,)}
  # Same encoder names as SimCLR's: evaluation reads params['encoder'] of both.
  simclr_variables = _shapes(models.create_model(_config()), (2, 16, 16, 1))
  assert (jax.tree.structure(variables['params']['encoder'])
          == jax.tree.structure(simclr_variables['params']['encoder']))
  features, logits = jax.eval_shape(
      lambda v, x: models.create_model(config, num_classes=3).apply(v, x, train=False),
      variables, jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32))
  assert features.shape == (2, 16) and logits.shape == (2, 3)
  assert features.dtype == logits.dtype == jnp.float32
  # Without the argument, the config's resolved count.
  assert models.create_model(config).num_classes == 7


@pytest.mark.parametrize('overrides, num_classes, message', [
    ({'objective': 'supervised'}, None, r'config.supervised.num_classes=-1'),
    ({'objective': 'supervised'}, 0, r'config.supervised.num_classes=0'),
    ({'objective': 'byol'}, None, r"config.objective='byol'.*simclr.*supervised"),
])
def test_create_model_errors_name_the_field(overrides, num_classes, message):
  config = _config(**overrides)
  with pytest.raises(ValueError, match=message):
    models.create_model(config, num_classes=num_classes)
