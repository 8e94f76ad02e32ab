"""torchvision ResNet weights <-> Flax encoder variables.

Uses: ImageNet initialisation (`config.init_from`), parity tests against
torchvision, and exporting a trained encoder for PyTorch users.

Name mapping (Flax names are fixed in `simclr_jax/models/resnet.py`):

  torchvision                          Flax
  conv1.weight [out,in,kh,kw]          params/conv_init/kernel [kh,kw,in,out]
  bn1.weight / bias                    params/bn_init/scale / bias
  bn1.running_mean / running_var       batch_stats/bn_init/mean / var
  layer{i+1}.{j}.conv{k}, .bn{k}       stage{i}_block{j}/conv{k}, bn{k}
  layer{i+1}.{j}.downsample.0, .1      stage{i}_block{j}/downsample_conv, downsample_bn

`fc.*` (the classifier) and `*.num_batches_tracked` are ignored on import.
Torch is imported only by the functions that read or write torch files, so the
core install (no torch) can still convert state dicts of numpy arrays.
"""
from collections.abc import Mapping
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import models
from simclr_jax.config import with_defaults

# Flax leaf name -> torchvision tensor name suffix.
_PARAM_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_STATS_TO_TORCH = {'mean': 'running_mean', 'var': 'running_var'}
_STAGE_BLOCK = re.compile(r'^stage(\d+)_block(\d+)$')
_CHECKPOINT_WRAPPER_KEYS = ('state_dict', 'model', 'encoder')
_PREFIXES = ('module.', 'encoder.', 'backbone.')
# Up to this many names are printed in an error message.
_MAX_LISTED = 20


def _torch_module_name(flax_module: tuple[str, ...]) -> str:
  """('stage1_block0', 'downsample_conv') -> 'layer2.0.downsample.0'."""
  if flax_module == ('conv_init',):
    return 'conv1'
  if flax_module == ('bn_init',):
    return 'bn1'
  if len(flax_module) == 2:
    match = _STAGE_BLOCK.match(flax_module[0])
    if match:
      stage, block = int(match.group(1)), int(match.group(2))
      layer = {'downsample_conv': 'downsample.0',
               'downsample_bn': 'downsample.1'}.get(flax_module[1], flax_module[1])
      return f'layer{stage + 1}.{block}.{layer}'
  raise ValueError(f'No torchvision name for Flax module {"/".join(flax_module)!r}.')


def _torch_name(collection: str, path: tuple[str, ...]) -> str:
  """Torch state_dict key of one Flax leaf, e.g. ('params', ('bn_init', 'scale'))."""
  leaf_names = _PARAM_TO_TORCH if collection == 'params' else _STATS_TO_TORCH
  if path[-1] not in leaf_names:
    raise ValueError(f'No torchvision name for Flax leaf {collection}/{"/".join(path)}.')
  return f'{_torch_module_name(path[:-1])}.{leaf_names[path[-1]]}'


def _is_conv_kernel(path: tuple[str, ...]) -> bool:
  return path[-1] == 'kernel'


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # numpy has no bfloat16
    value = value.numpy()
  return np.asarray(value)


def _encoder_shapes(model_name: str, in_channels: int, stem: str) -> dict:
  """ShapeDtypeStruct tree {'params', 'batch_stats'} of the Flax encoder (no compute)."""
  if model_name not in models.MODELS:
    raise ValueError(f'model_name={model_name!r}: accepted values are {sorted(models.MODELS)}.')
  encoder = models.MODELS[model_name](stem=stem)
  images = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  return jax.eval_shape(lambda x: encoder.init(jax.random.key(0), x, train=False), images)


def _listing(title: str, names) -> str:
  names = sorted(names)
  shown = ', '.join(names[:_MAX_LISTED])
  more = f' ... and {len(names) - _MAX_LISTED} more' if len(names) > _MAX_LISTED else ''
  return f'\n  {title} ({len(names)}): {shown}{more}'


def torch_to_flax(state_dict: Mapping[str, Any], model_name: str,
                  in_channels: int | None = None, stem: str = 'imagenet') -> dict:
  """Converts a torchvision ResNet state_dict to Flax encoder variables.

  Args:
    state_dict: torchvision names -> torch tensors or numpy arrays. `fc.*` and
      `*.num_batches_tracked` are ignored.
    model_name: resnet18|resnet34|resnet50|resnet101|resnet152 (any name in
      `models.MODELS`; the mapping is generic over stage sizes).
    in_channels: input channels of the Flax model; None keeps the torch model's.
      1 with 3-channel torch weights sums the RGB kernels of the first conv, so a
      grey image x gives what the torch model gives for x replicated to RGB.
    stem: the Flax stem, 'imagenet' for torchvision weights.

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays, the
    same tree as `models.MODELS[model_name]().init(...)`.

  Raises:
    ValueError: listing missing, unexpected and wrongly shaped keys.
  """
  tensors = {key: value for key, value in state_dict.items()
             if not key.startswith('fc.') and not key.endswith('num_batches_tracked')}
  if 'conv1.weight' not in tensors:
    raise ValueError(f'state_dict for {model_name} has no conv1.weight; keys start with: '
                     f'{sorted(tensors)[:5]}. Is this a torchvision ResNet state_dict?')
  torch_in_channels = _to_numpy(tensors['conv1.weight']).shape[1]
  in_channels = torch_in_channels if in_channels is None else in_channels
  if in_channels != torch_in_channels and in_channels != 1:
    raise ValueError(f'in_channels={in_channels} with {torch_in_channels}-channel torch '
                     'weights: accepted are None (keep), the same count, or 1 (sum kernels).')

  expected = _encoder_shapes(model_name, in_channels, stem)
  flat_variables, missing, wrong_shape, used = {}, [], [], set()
  for collection in ('params', 'batch_stats'):
    for path, shape_dtype in _flatten(expected[collection]).items():
      name = _torch_name(collection, path)
      if name not in tensors:
        missing.append(name)
        continue
      used.add(name)
      value = _to_numpy(tensors[name]).astype(np.float32)
      if _is_conv_kernel(path):
        if path == ('conv_init', 'kernel') and value.shape[1] != in_channels:
          value = value.sum(axis=1, keepdims=True)  # RGB -> grey (in_channels == 1)
        value = value.transpose(2, 3, 1, 0)  # [out,in,kh,kw] -> [kh,kw,in,out]
      if value.shape != shape_dtype.shape:
        wrong_shape.append(f'{name} {tuple(value.shape)} (Flax {collection}/{"/".join(path)} '
                           f'needs {tuple(shape_dtype.shape)})')
        continue
      flat_variables[(collection,) + path] = value
  unexpected = set(tensors) - used
  if missing or unexpected or wrong_shape:
    message = f'state_dict does not match torchvision {model_name} (stem={stem!r}):'
    if missing:
      message += _listing('missing keys', missing)
    if unexpected:
      message += _listing('unexpected keys', unexpected)
    if wrong_shape:
      message += _listing('wrong shapes', wrong_shape)
    raise ValueError(message)
  return _unflatten(flat_variables)


def _encoder_variables(variables: Mapping) -> tuple[Mapping, Mapping]:
  """(params, batch_stats) of the encoder, from encoder or whole-SimCLR variables."""
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  if 'encoder' in params:
    return params['encoder'], batch_stats.get('encoder', {})
  return params, batch_stats


def flax_to_torch(variables: Mapping, model_name: str, as_torch: bool = False) -> dict:
  """Converts Flax encoder variables to a torchvision ResNet state_dict.

  Args:
    variables: {'params', 'batch_stats'} of the encoder, or of the whole SimCLR
      model (its 'encoder' sub-trees are used; the head is dropped).
    model_name: resnet18|resnet34|resnet50|resnet101|resnet152 (checked against
      the variables).
    as_torch: return torch tensors (imports torch) instead of numpy arrays.

  Returns:
    torchvision names -> float32 arrays, plus `num_batches_tracked` (0) per
    BatchNorm, without `fc.*`: `torchvision.models.resnet50().load_state_dict(
    flax_to_torch(v, 'resnet50', as_torch=True), strict=False)` reports only fc
    as missing.

  Raises:
    ValueError: when the variables do not have the tree of `model_name`.
  """
  params, batch_stats = _encoder_variables(variables)
  if 'conv_init' not in params:
    raise ValueError(f'variables have no params/conv_init; top-level names: {sorted(params)}.')
  kernel_shape = np.shape(params['conv_init']['kernel'])  # [kh, kw, in, out]
  stem = 'imagenet' if kernel_shape[0] == 7 else 'cifar'
  expected = _encoder_shapes(model_name, kernel_shape[2], stem)
  given = {'params': _flatten(params), 'batch_stats': _flatten(batch_stats)}

  problems = []
  for collection in ('params', 'batch_stats'):
    expected_flat = _flatten(expected[collection])
    for path in sorted(set(expected_flat) ^ set(given[collection])):
      side = 'missing' if path in expected_flat else 'unexpected'
      problems.append(f'{side} {collection}/{"/".join(path)}')
    for path in sorted(set(expected_flat) & set(given[collection])):
      if np.shape(given[collection][path]) != expected_flat[path].shape:
        problems.append(f'{collection}/{"/".join(path)} has shape '
                        f'{np.shape(given[collection][path])}, {model_name} needs '
                        f'{expected_flat[path].shape}')
  if problems:
    raise ValueError(f'variables do not match Flax {model_name}:' + _listing('problems', problems))

  state_dict = {}
  # Module by module in creation order, parameters then running stats, like torch.
  modules = dict.fromkeys(path[:-1] for path in given['params'])
  for module in modules:
    for collection, leaf_names in (('params', ('kernel', 'scale', 'bias')),
                                   ('batch_stats', ('mean', 'var'))):
      for leaf in leaf_names:
        path = module + (leaf,)
        if path not in given[collection]:
          continue
        value = np.asarray(jax.device_get(given[collection][path]), dtype=np.float32)
        if _is_conv_kernel(path):
          value = value.transpose(3, 2, 0, 1)  # [kh,kw,in,out] -> [out,in,kh,kw]
        state_dict[_torch_name(collection, path)] = np.ascontiguousarray(value)
    if module + ('mean',) in given['batch_stats']:
      state_dict[f'{_torch_module_name(module)}.num_batches_tracked'] = np.array(0, np.int64)
  if as_torch:
    import torch  # pylint: disable=g-import-not-at-top
    # Copies: jax arrays come out read-only, and torch tensors must own writable memory.
    state_dict = {name: torch.from_numpy(np.array(value)) for name, value in state_dict.items()}
  return state_dict


def _unwrap_checkpoint(checkpoint: Any, path: str) -> dict:
  """Finds the state_dict inside a checkpoint and strips wrapper prefixes."""
  while isinstance(checkpoint, Mapping):
    wrapper = next((key for key in _CHECKPOINT_WRAPPER_KEYS
                    if isinstance(checkpoint.get(key), Mapping)), None)
    if wrapper is None:
      break
    checkpoint = checkpoint[wrapper]
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f'{path}: expected a state_dict (dict of tensors), got '
                     f'{type(checkpoint).__name__}.')

  def strip(key: str) -> tuple[str, bool]:
    had_part_prefix = False
    while True:
      prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
      if prefix is None:
        return key, had_part_prefix
      had_part_prefix |= prefix != 'module.'
      key = key[len(prefix):]

  stripped = {key: strip(key) for key in checkpoint}
  # A whole SimCLR checkpoint: keep the encoder/backbone part, drop the head etc.
  if any(had_prefix for _, had_prefix in stripped.values()):
    return {name: checkpoint[key] for key, (name, had_prefix) in stripped.items() if had_prefix}
  return {name: checkpoint[key] for key, (name, _) in stripped.items()}


def load_torch_weights(path: str | os.PathLike, config, in_channels: int | None = 1) -> dict:
  """Reads a torchvision ResNet checkpoint as Flax encoder variables.

  Accepted files (read with `torch.load(weights_only=True)`):
    * a plain torchvision state_dict (`torch.save(model.state_dict(), path)`);
    * a dict holding it under 'state_dict', 'model' or 'encoder' (nested wrappers
      are followed);
    * keys may carry 'module.' (DataParallel/DDP), 'encoder.' or 'backbone.'
      prefixes, which are stripped. When some keys carry 'encoder.'/'backbone.',
      only those are used, so a whole SimCLR checkpoint with a projection head loads.
  `fc.*` and `num_batches_tracked` are ignored.

  Args:
    path: the .pt/.pth file.
    config: reads `model` and `stem` (must be 'imagenet' for torchvision weights);
      `width` must be 1.0.
    in_channels: input channels of the Flax encoder; 1 (default, X-rays) sums the
      RGB kernels of the first conv; None keeps the file's.

  Returns:
    {'params': ..., 'batch_stats': ...} of the encoder (float32 numpy arrays), the
    tree `models.create_encoder(config).init(...)` gives.
  """
  import torch  # pylint: disable=g-import-not-at-top
  config = with_defaults(config)
  width = float(config.width)
  if width != 1.0:
    raise ValueError(f'config.width={width}: torchvision ResNet weights exist for width 1.0 only.')
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f'{path}: cannot read as a torch weights file with weights_only=True '
                     f'({error}). Re-save just the state_dict.') from error
  state_dict = _unwrap_checkpoint(checkpoint, str(path))
  try:
    return torch_to_flax(state_dict, config.model, in_channels=in_channels,
                         stem=config.stem)
  except ValueError as error:
    raise ValueError(f'{path} (config.model={config.model!r}): {error}') from error


def save_torch_weights(variables: Mapping, model_name: str, path: str | os.PathLike) -> None:
  """Writes encoder variables as a torchvision state_dict file (no `fc.*`).

  Load with `torchvision.models.resnet50().load_state_dict(torch.load(path), strict=False)`
  (the 1-channel first conv of an X-ray encoder needs `model.conv1` replaced by a
  1-input-channel conv first).
  """
  import torch  # pylint: disable=g-import-not-at-top
  torch.save(flax_to_torch(variables, model_name, as_torch=True), path)
