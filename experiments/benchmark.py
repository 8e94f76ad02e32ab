"""Side-by-side throughput of the full SimCLR train step: simclr_jax vs the PyTorch baseline.

  python experiments/benchmark.py --framework both --model resnet50 --image_size 224 \
      --per_device_batch 256 --steps 30 --warmup 5 --dtype bfloat16 --channels_last \
      --torch_modes eager,compiled

One step is everything a training step does on the device:
  jax:   simclr_jax.training.step.train_step under pmap (on-device augmentation of both views,
         ResNet + head forward on the 2N views, NT-Xent, backward, pmean, optax update);
  torch: experiments.pytorch_baseline.train.train_step (forward of the 2N views, NT-Xent,
         backward, optimizer step). The seed augments on the CPU in DataLoader workers, so
         the torch step starts from views already on the device; `--input_pipeline` times
         that CPU work (and the Grain loader + JAX augmentation) separately.
Both use Adam (the seed's optimiser) without weight decay; the schedule does not change the
cost. Inputs are random uint8 images (jax) / random normalised views (torch) of the same
shapes, already on the device; the data does not change the cost.

PyTorch modes (`--torch_modes`, comma-separated; `--compile` = `--torch_modes compiled`):
  eager     the model as the seed runs it (AMP autocast with --dtype bfloat16, channels-last
            with --channels_last);
  compiled  the same with `torch.compile(model)` (--torch_compile_mode, --torch_compile_backend):
            the fastest PyTorch a careful user runs. Its compilation happens in the warm-up
            steps (`warmup_seconds`); give it --warmup >= 3.

Levers for the JAX step (recorded in every JSON line under `levers`, with the effective
XLA_FLAGS and the XLA_*/JAX_* environment), so each is one command to measure:
  --xla_flags="--flag=value ..."      appended to XLA_FLAGS before jax starts
  --xla_gpu_autotune_level N          cuDNN/cuBLAS/Triton autotuning: 0 off .. 4 (XLA's default)
  --set KEY=VALUE                     any simclr_jax config field (e.g. --set dtype=bfloat16,
                                      --set stem=cifar), repeatable
  --profile_dir DIR                   a jax.profiler trace (xprof / Perfetto) of
                                      --profile_steps steps after the timed ones (torch:
                                      torch.profiler Chrome trace)
  --xla_dump_dir DIR                  HLO (text) of every XLA module before/after optimisation

Prints one JSON line per run (keys: framework, mode, model, image_size, per_device_batch,
devices, global_batch, views_per_second, step_time_ms {median,p10,p90}, peak_memory_bytes,
peak_memory_source, device, platform, versions, dtype, channels_last, steps, warmup,
first_step_seconds, warmup_seconds, levers, xla_flags, environment, [input_pipeline]).
Several runs (`--framework both`, several --torch_modes) each run in their own subprocess so
that threads, memory peaks and imports do not interfere; a run that fails prints one line to
stderr, the others still report, and the exit code is 1. `--output FILE` also appends the lines.

For several GPUs: jax uses every local device (per-device batch fixed); for torch launch
  torchrun --nproc_per_node G experiments/benchmark.py --framework torch ...
(DDP, one process per GPU; rank 0 prints).
"""
import argparse
import ast
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # run as a script: make simclr_jax / experiments importable

from simclr_jax.runtime import doctor  # standard library only: imports no framework

RESULT_KEYS = ('framework', 'mode', 'model', 'image_size', 'per_device_batch', 'devices',
               'global_batch', 'views_per_second', 'step_time_ms', 'peak_memory_bytes',
               'peak_memory_source', 'device', 'platform', 'versions', 'dtype', 'channels_last',
               'steps', 'warmup', 'first_step_seconds', 'warmup_seconds', 'levers', 'xla_flags',
               'environment')
TORCH_MODES = ('eager', 'compiled')
JAX_MODE = 'xla'  # pmap-compiled by XLA; the only JAX mode
# Environment variables that change what XLA, JAX or TorchInductor do; recorded per run.
RECORDED_ENV_PREFIXES = ('XLA_', 'JAX_', 'TF_GPU_', 'NCCL_', 'TORCHINDUCTOR_', 'CUDA_VISIBLE')


class BenchmarkError(RuntimeError):
  """A run that cannot be measured; main prints it as one line and exits 1."""


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add = parser.add_argument
  add('--framework', choices=('jax', 'torch', 'both'), default='both')
  add('--model', default='resnet50')
  add('--image_size', type=int, default=224)
  add('--per_device_batch', type=int, default=32, help='images per device (2 views each)')
  add('--steps', type=int, default=20, help='timed steps (median reported)')
  add('--warmup', type=int, default=3, help='untimed steps first (compilation, autotuning)')
  add('--dtype', choices=('float32', 'bfloat16'), default='float32',
      help='jax: config.dtype; torch: autocast bfloat16')
  add('--channels_last', action='store_true', help='torch: channels-last model and inputs')
  add('--learning_rate', type=float, default=1e-4)
  add('--input_pipeline', action='store_true',
      help='also time the data loader + augmentation per batch (needs --dataset prepared)')
  add('--dataset', default='synthetic_cxr/64', help='for --input_pipeline')
  add('--data_dir', default='runs/data', help='for --input_pipeline')
  add('--workers', type=int, default=0, help='for --input_pipeline: loader worker processes')
  add('--pipeline_batches', type=int, default=20, help='for --input_pipeline: batches timed')
  add('--output', default='', help='also append the JSON lines to this file')
  add('--seed', type=int, default=0)
  # PyTorch modes.
  add('--torch_modes', default=None,
      help=f'comma-separated PyTorch modes of {", ".join(TORCH_MODES)} (default eager)')
  add('--compile', action='store_true', help='= --torch_modes compiled (torch.compile(model))')
  add('--torch_compile_mode', default='default',
      choices=('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'))
  add('--torch_compile_backend', default='inductor',
      help='torch.compile backend (inductor; aot_eager compiles no kernels: tests)')
  # JAX / XLA levers.
  add('--xla_flags', default='',
      help='appended to XLA_FLAGS for the JAX run; write --xla_flags="--flag=value ..."')
  add('--xla_gpu_autotune_level', type=int, default=None, choices=range(0, 5),
      help='adds --xla_gpu_autotune_level=N (0: no autotuning; 4: XLA default)')
  add('--set', action='append', default=[], metavar='KEY=VALUE', dest='overrides',
      help='simclr_jax config override for the JAX run (repeatable), e.g. dtype=bfloat16')
  add('--profile_dir', default='', help='write a profiler trace of --profile_steps steps here')
  add('--profile_steps', type=int, default=5)
  add('--xla_dump_dir', default='', help='dump the HLO of the JAX train step here')
  args = parser.parse_args(argv)
  if args.compile and args.torch_modes not in (None, 'compiled'):
    parser.error(f'--compile means --torch_modes compiled; got also --torch_modes '
                 f'{args.torch_modes}: give one of them')
  modes = [m.strip() for m in (args.torch_modes or ('compiled' if args.compile else 'eager')
                               ).split(',') if m.strip()]
  unknown = [m for m in modes if m not in TORCH_MODES]
  if unknown or not modes:
    parser.error(f'--torch_modes {args.torch_modes!r}: accepted modes are '
                 f'{", ".join(TORCH_MODES)} (comma-separated)')
  args.torch_modes = ','.join(dict.fromkeys(modes))
  args.compile = False
  for override in args.overrides:
    if '=' not in override:
      parser.error(f'--set {override!r}: expected KEY=VALUE, e.g. --set dtype=bfloat16')
  return args


def jax_xla_flags(args) -> str:
  """XLA_FLAGS for the JAX run: the environment's, then the benchmark's levers."""
  flags = [os.environ.get('XLA_FLAGS', '').strip(), args.xla_flags.strip()]
  if args.xla_gpu_autotune_level is not None:
    flags.append(f'--xla_gpu_autotune_level={args.xla_gpu_autotune_level}')
  if args.xla_dump_dir:
    # Every module: under pmap, JAX 0.10 names the train step's module jit__fun (no filter
    # by name); the largest module_*.jit__fun.*after_optimizations.txt is the step.
    flags.append(f'--xla_dump_to={args.xla_dump_dir} --xla_dump_hlo_as_text')
  return ' '.join(flag for flag in flags if flag)


def levers(args, framework: str) -> dict:
  """The switches of this run that can change its speed (JSON-ready)."""
  if framework == 'jax':
    return {'xla_flags_added': args.xla_flags or None,
            'xla_gpu_autotune_level': args.xla_gpu_autotune_level,
            'config_overrides': list(args.overrides), 'xla_dump_dir': args.xla_dump_dir or None}
  return {'torch_compile_mode': args.torch_compile_mode,
          'torch_compile_backend': args.torch_compile_backend,
          'channels_last': bool(args.channels_last)}


def recorded_environment() -> dict:
  return {k: v for k, v in sorted(os.environ.items()) if k.startswith(RECORDED_ENV_PREFIXES)}


def parse_override_value(text: str):
  """'3' -> 3, '1e-3' -> 0.001, 'True' -> True, '(1, 2)' -> (1, 2), anything else -> str."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides) -> None:
  """Applies KEY=VALUE (dotted keys) to the ml_collections config; BenchmarkError if invalid."""
  for override in overrides:
    key, text = override.split('=', 1)
    node, parts = config, key.split('.')
    for index, part in enumerate(parts):
      if part not in node:
        where = '.'.join(parts[:index]) or 'config'
        raise BenchmarkError(f'--set {override}: {where} has no field {part!r} (fields: '
                             f'{", ".join(sorted(node.keys()))})')
      if index < len(parts) - 1:
        node = node[part]
    try:
      setattr(node, parts[-1], parse_override_value(text))
    except TypeError as error:
      raise BenchmarkError(f'--set {override}: {error}') from None


def versions() -> dict:
  """Installed versions of the frameworks, their plugins (CUDA/TPU builds) and Python."""
  return {k: v for k, v in doctor.package_versions().items()
          if v or k in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'torchvision', 'numpy')}


def cpu_name() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores visible)"
  except OSError:
    pass
  return f'{platform.processor() or platform.machine()} ({os.cpu_count()} cores visible)'


def rss_peak_bytes() -> int:
  """Peak resident set size of this process (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def summarise_times(seconds: list) -> dict:
  """Median / p10 / p90 step time in ms."""
  milliseconds = sorted(1000.0 * s for s in seconds)
  if len(milliseconds) == 1:
    return {'median': milliseconds[0], 'p10': milliseconds[0], 'p90': milliseconds[0]}
  deciles = statistics.quantiles(milliseconds, n=10, method='inclusive')
  return {'median': statistics.median(milliseconds), 'p10': deciles[0], 'p90': deciles[-1]}


def timed_loop(run_step, synchronize, steps: int, warmup: int) -> tuple:
  """Runs warmup + steps calls of run_step().

  Returns:
    (timed, first, warmup_total): wall seconds of each timed step, of the first call (which
    includes compilation / autotuning) and of all warm-up calls, or None without warm-up.
  """
  first = warmup_total = None
  warmup_start = time.perf_counter()
  for index in range(warmup):
    start = time.perf_counter()
    run_step()
    if index == 0:
      synchronize()
      first = time.perf_counter() - start
  synchronize()
  if warmup:
    warmup_total = time.perf_counter() - warmup_start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run_step()
    synchronize()
    times.append(time.perf_counter() - start)
  return times, first, warmup_total


def base_result(args, framework: str, mode: str, devices: int) -> dict:
  return {
      'framework': framework, 'mode': mode, 'model': args.model, 'image_size': args.image_size,
      'per_device_batch': args.per_device_batch, 'devices': devices,
      'global_batch': args.per_device_batch * devices, 'dtype': args.dtype,
      'channels_last': bool(args.channels_last) if framework == 'torch' else None,
      'steps': args.steps, 'warmup': args.warmup, 'versions': versions(),
      # Other processes on a shared machine slow both frameworks; recorded, not corrected.
      'load_average_1m_at_start': round(os.getloadavg()[0], 2), 'cpu_count': os.cpu_count(),
      'date_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
      'levers': levers(args, framework), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'environment': recorded_environment(),
  }


# ----------------------------------------------------------------------------- JAX


def jax_config(args, global_batch: int):
  """simclr_jax's default config with the benchmark's model, sizes and Adam."""
  from simclr_jax import config as config_lib
  config = config_lib.default_config()
  config.model = args.model
  config.image_size = args.image_size
  config.batch_size = global_batch
  config.dtype = args.dtype
  config.dataset = args.dataset
  config.data_dir = args.data_dir
  config.seed = args.seed
  config.input.num_workers = args.workers
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = args.learning_rate
  config.optimizer.lr_scaling = 'none'
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 0.0
  apply_overrides(config, args.overrides)
  return config


def benchmark_jax(args) -> dict:
  # Before jax starts: XLA reads XLA_FLAGS once, when the first backend is created.
  os.environ['XLA_FLAGS'] = jax_xla_flags(args)
  import flax
  import jax
  import numpy as np
  from simclr_jax import augment
  from simclr_jax import objectives
  from simclr_jax.training import optim
  from simclr_jax.training import step as step_lib

  devices = jax.local_device_count()
  config = jax_config(args, args.per_device_batch * devices)
  result = base_result(args, 'jax', JAX_MODE, devices)
  result['dtype'] = config.dtype  # --set dtype=... wins over --dtype
  total_steps = args.steps + args.warmup
  # The real train step of simclr_jax.training, pmapped as the training loop does.
  objective = objectives.of(config)
  model = objective.build_model(config, step_lib.AXIS_NAME)
  tx, learning_rate_fn = optim.create_optimizer(config, total_steps, steps_per_epoch=total_steps)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(args.seed))
  state = step_lib.create_train_state(config, model, tx, init_rng,
                                      (args.image_size, args.image_size, 1))
  p_train_step = step_lib.pmap_train_step(
      tx, learning_rate_fn, objective.build_loss(config, model, step_lib.AXIS_NAME))
  replicated_state = step_lib.to_devices(state)
  holder = {'state': replicated_state, 'metrics': None}
  replicated_rng = flax.jax_utils.replicate(train_rng)
  images = np.random.default_rng(args.seed).integers(
      0, 256, (devices, args.per_device_batch, args.image_size, args.image_size, 1),
      dtype=np.uint8)
  # train_step's batch: {'image': uint8 [devices, per_device, S, S, 1]}, resident on the devices.
  batch = {'image': jax.pmap(lambda x: x)(images)}

  def run_step():
    holder['state'], holder['metrics'] = p_train_step(holder['state'], batch, replicated_rng)

  def synchronize():
    jax.block_until_ready((holder['state'], holder['metrics']))

  times, first_step_seconds, warmup_seconds = timed_loop(run_step, synchronize, args.steps,
                                                         args.warmup)
  loss = float(np.asarray(holder['metrics']['loss'])[0])
  if args.profile_dir:
    profile_dir = os.path.join(args.profile_dir, 'jax')
    # The .xplane.pb opens in TensorBoard with tensorboard-plugin-profile (xprof); the
    # perfetto_trace.json.gz in https://ui.perfetto.dev without installing anything.
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      for _ in range(args.profile_steps):
        run_step()
      synchronize()
    result['profile_dir'] = profile_dir
  if not np.isfinite(loss):
    raise FloatingPointError(f'jax benchmark: non-finite loss {loss}')

  device = jax.local_devices()[0]
  memory_stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if memory_stats and 'peak_bytes_in_use' in memory_stats:
    peak, source = int(memory_stats['peak_bytes_in_use']), 'device.memory_stats()'
  else:
    peak, source = rss_peak_bytes(), 'process RSS peak'
  result.update({
      'views_per_second': 2 * result['global_batch'] / statistics.median(times),
      'step_time_ms': summarise_times(times), 'peak_memory_bytes': peak,
      'peak_memory_source': source, 'platform': device.platform,
      'backend': jax.default_backend(),
      'device': cpu_name() if device.platform == 'cpu' else device.device_kind,
      'final_loss': loss, 'first_step_seconds': first_step_seconds,
      'warmup_seconds': warmup_seconds,
      'load_average_1m_at_end': round(os.getloadavg()[0], 2),
  })
  if args.input_pipeline:
    result['input_pipeline'] = jax_input_pipeline(args, config, augment)
  return result


def _time_batches(next_batch, count: int) -> tuple:
  """(last batch, mean seconds per batch) over `count` batches after a first, untimed one.

  Timing a run of batches (not single next() calls) measures what the pipeline sustains
  once its prefetch buffer has drained.
  """
  batch = next_batch()  # start workers, open files
  start = time.perf_counter()
  for _ in range(count):
    batch = next_batch()
  return batch, (time.perf_counter() - start) / max(count, 1)


def jax_input_pipeline(args, config, augment) -> dict:
  """ms per global batch of the Grain loader, and of on-device augmentation alone."""
  import jax
  import jax.numpy as jnp
  from simclr_jax import data

  iterator = data.create_train_iterator(config)
  batch, batch_seconds = _time_batches(lambda: next(iterator)['image'], args.pipeline_batches)
  images = jnp.asarray(batch[0])  # one device's share

  @jax.jit
  def make_views(rng, images):
    ids = jnp.arange(images.shape[0])
    return augment.make_views(rng, images, ids, config.augment, config.image_size)

  rng = jax.random.PRNGKey(0)
  jax.block_until_ready(make_views(rng, images))
  augment_times, _, _ = timed_loop(lambda: jax.block_until_ready(make_views(rng, images)),
                                lambda: None, args.pipeline_batches, 1)
  return {'loader_ms_per_batch': 1000 * batch_seconds,
          'augment_ms_per_device_batch': summarise_times(augment_times),
          'stored_image_size': int(batch.shape[2]), 'workers': args.workers,
          'where_augmentation_runs': 'device (inside the train step)'}


# --------------------------------------------------------------------------- torch


def benchmark_torch(args, mode: str) -> dict:
  """One PyTorch run; mode 'eager' or 'compiled' (torch.compile of the model)."""
  import torch
  from experiments.pytorch_baseline import loss as loss_lib
  from experiments.pytorch_baseline import train as baseline

  dist_info = baseline.setup_distributed()
  result = base_result(args, 'torch', mode, dist_info.world_size)
  amp = 'bf16' if args.dtype == 'bfloat16' else 'none'
  model_args = argparse.Namespace(
      model=args.model, head_hidden_dim=-1, head_output_dim=128, sync_bn=False,
      channels_last=args.channels_last, seed=args.seed)
  model = baseline.create_model(model_args, dist_info)
  model.train()
  if mode == 'compiled':
    # The whole model (forward + backward through AOTAutograd); AMP and channels-last as in
    # eager mode. The loss and the optimizer step stay eager, as a user would write it.
    try:
      model = torch.compile(model, mode=None if args.torch_compile_mode == 'default'
                            else args.torch_compile_mode, backend=args.torch_compile_backend)
    except Exception as error:  # pylint: disable=broad-except  # e.g. an unknown backend
      raise compile_failure(args, dist_info.device.type, error) from None
  loss_fn = loss_lib.NTXentLoss(0.07)
  optimizer = baseline.create_optimizer(model.parameters(), 'adam', args.learning_rate)
  scaler = torch.amp.GradScaler(dist_info.device.type, enabled=False)
  memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
  generator = torch.Generator().manual_seed(args.seed)
  shape = (args.per_device_batch, 3, args.image_size, args.image_size)
  views1, views2 = (torch.randn(shape, generator=generator).to(
      dist_info.device, memory_format=memory_format) for _ in range(2))
  holder = {}
  is_cuda = dist_info.device.type == 'cuda'

  def run_step():
    holder['loss'], _, _ = baseline.train_step(model, loss_fn, optimizer, scaler, views1, views2,
                                               amp=amp)

  def synchronize():
    if is_cuda:
      torch.cuda.synchronize()

  if is_cuda:
    torch.cuda.reset_peak_memory_stats()
  try:
    times, first_step_seconds, warmup_seconds = timed_loop(run_step, synchronize, args.steps,
                                                           args.warmup)
  except Exception as error:  # pylint: disable=broad-except
    if mode != 'compiled':
      raise
    raise compile_failure(args, dist_info.device.type, error) from None
  loss = holder['loss'].item()
  if args.profile_dir:
    from torch import profiler
    activities = [profiler.ProfilerActivity.CPU] + (
        [profiler.ProfilerActivity.CUDA] if is_cuda else [])
    os.makedirs(args.profile_dir, exist_ok=True)
    trace = os.path.join(args.profile_dir, f'torch_{mode}.json')
    with profiler.profile(activities=activities) as prof:
      for _ in range(args.profile_steps):
        run_step()
      synchronize()
    prof.export_chrome_trace(trace)
    result['profile_trace'] = trace
  if is_cuda:
    peak, source = torch.cuda.max_memory_allocated(), 'torch.cuda.max_memory_allocated()'
    device_name = torch.cuda.get_device_name(dist_info.device)
  else:
    peak, source, device_name = rss_peak_bytes(), 'process RSS peak', cpu_name()
  result.update({
      'views_per_second': 2 * result['global_batch'] / statistics.median(times),
      'step_time_ms': summarise_times(times), 'peak_memory_bytes': peak,
      'peak_memory_source': source, 'platform': dist_info.device.type, 'device': device_name,
      'final_loss': loss, 'first_step_seconds': first_step_seconds,
      'warmup_seconds': warmup_seconds,
      'load_average_1m_at_end': round(os.getloadavg()[0], 2),
      'torch_threads': torch.get_num_threads(),
      'torch_module': type(model).__name__,  # OptimizedModule when torch.compile wrapped it
  })
  if args.input_pipeline:
    result['input_pipeline'] = torch_input_pipeline(args, dist_info)
  return result


def compile_failure(args, device_type: str, error: Exception) -> BenchmarkError:
  """torch.compile's (often very long) error as one line saying what to do."""
  first = next((line.strip() for line in str(error).splitlines() if line.strip()), '')
  return BenchmarkError(
      f'torch.compile (backend {args.torch_compile_backend}, mode {args.torch_compile_mode}) '
      f'failed on {device_type}: {type(error).__name__}: {first[:300].rstrip(".")}. Inductor '
      'on CPU needs a working C++ compiler (gcc/g++); measure eager only with --torch_modes eager')


def torch_input_pipeline(args, dist_info) -> dict:
  """ms per per-device batch of DataLoader + the seed's CPU augmentation of both views."""
  import torch
  from experiments.pytorch_baseline import augment
  from experiments.pytorch_baseline import data

  dataset = data.PreparedImageDataset(
      args.dataset, args.data_dir, 'train',
      transform=augment.TwoViews(augment.seed_transform(args.image_size)))
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=args.per_device_batch, shuffle=True, drop_last=True,
      num_workers=args.workers, pin_memory=dist_info.device.type == 'cuda',
      generator=torch.Generator().manual_seed(args.seed))

  def next_batch():
    nonlocal iterator
    try:
      return next(iterator)
    except StopIteration:
      iterator = iter(loader)
      return next(iterator)

  iterator = iter(loader)
  _, batch_seconds = _time_batches(next_batch, args.pipeline_batches)
  return {'loader_and_augment_ms_per_batch': 1000 * batch_seconds,
          'stored_image_size': dataset.stored_image_shape()[0],
          'workers': args.workers, 'where_augmentation_runs': 'CPU (DataLoader)'}


# ---------------------------------------------------------------------------- main


def planned_runs(args) -> list:
  """(framework, mode) of every run this invocation makes."""
  runs = [('jax', JAX_MODE)] if args.framework in ('jax', 'both') else []
  if args.framework in ('torch', 'both'):
    runs += [('torch', mode) for mode in args.torch_modes.split(',')]
  return runs


def subprocess_command(args, framework: str, mode: str) -> list:
  """This script's command line for one run (all other options forwarded)."""
  command = [sys.executable, __file__, '--framework', framework]
  if framework == 'torch':
    command += ['--torch_modes', mode]
  for name, value in vars(args).items():
    if name in ('framework', 'output', 'torch_modes', 'compile') or value is None:
      continue
    if isinstance(value, bool):
      command += [f'--{name}'] if value else []
    elif name == 'overrides':
      for override in value:
        command += ['--set', override]
    else:
      command.append(f'--{name}={value}')  # '=' form: values may start with '--'
  return command


def run_in_subprocess(args, framework: str, mode: str) -> dict:
  """Runs one (framework, mode) in a fresh interpreter; returns its JSON line.

  Raises:
    BenchmarkError: the run failed; the message is one line (the run's last error line).
  """
  proc = subprocess.run(subprocess_command(args, framework, mode), capture_output=True,
                        text=True, cwd=REPO_ROOT)
  if proc.returncode != 0:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error:')]
    last = (errors or lines or ['(no output)'])[-1].removeprefix('error: ')
    raise BenchmarkError(f'{framework} {mode} run failed (exit {proc.returncode}): {last}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def run_here(args, framework: str, mode: str) -> dict:
  return benchmark_jax(args) if framework == 'jax' else benchmark_torch(args, mode)


def main(argv=None) -> list:
  args = parse_args(argv)
  runs = planned_runs(args)
  if args.overrides and runs[0][0] == 'jax':
    try:  # bad input fails here, before any run starts
      jax_config(args, args.per_device_batch)
    except BenchmarkError as error:
      print(f'error: {error}', file=sys.stderr)
      sys.exit(2)
  results, failures = [], []
  for framework, mode in runs:
    try:
      result = (run_here(args, framework, mode) if len(runs) == 1
                else run_in_subprocess(args, framework, mode))
    except BenchmarkError as error:
      print(f'error: {error}', file=sys.stderr, flush=True)
      failures.append(f'{framework}/{mode}')
      continue
    missing = set(RESULT_KEYS) - set(result)
    if missing:
      raise RuntimeError(f'benchmark result for {framework}/{mode} lacks {sorted(missing)}')
    results.append(result)
  if int(os.environ.get('RANK', '0')) != 0:
    return results
  for result in results:
    print(json.dumps(result), flush=True)
  if args.output:
    with open(args.output, 'a') as output:
      for result in results:
        output.write(json.dumps(result) + '\n')
  jax_results = [r for r in results if r['framework'] == 'jax']
  for result in results:
    if jax_results and result['framework'] == 'torch':
      ratio = jax_results[0]['views_per_second'] / result['views_per_second']
      print(f'# jax/torch-{result["mode"]} views_per_second ratio: {ratio:.3f}', file=sys.stderr)
  if failures:
    if len(runs) > 1:
      print(f'error: {len(failures)} of {len(runs)} runs failed: {", ".join(failures)}',
            file=sys.stderr)
    sys.exit(1)
  return results


if __name__ == '__main__':
  main()
