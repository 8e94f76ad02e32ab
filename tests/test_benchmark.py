"""experiments/benchmark.py: JAX, PyTorch eager and torch.compile'd runs, levers, JSON lines."""
import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, subprocess_env

pytest.importorskip('torch')
pytest.importorskip('torchvision')

from experiments import benchmark  # noqa: E402  (after the torch skip)

DOCUMENTED_KEYS = {'framework', 'mode', 'model', 'image_size', 'per_device_batch', 'devices',
                   'global_batch', 'views_per_second', 'step_time_ms', 'peak_memory_bytes',
                   'peak_memory_source', 'device', 'platform', 'versions', 'dtype',
                   'channels_last', 'steps', 'warmup', 'first_step_seconds', 'warmup_seconds',
                   'levers', 'xla_flags', 'environment'}


@pytest.mark.slow
def test_benchmark_reports_jax_torch_eager_and_compiled_in_one_run(tmp_path):
  # aot_eager: the real torch.compile path (Dynamo + AOTAutograd) without generating C++
  # kernels, so the test does not spend a minute in the C++ compiler on CPU.
  output = tmp_path / 'results.jsonl'
  proc = subprocess.run(
      [sys.executable, 'experiments/benchmark.py', '--framework', 'both', '--model', 'resnet18',
       '--image_size', '32', '--per_device_batch', '4', '--steps', '2', '--warmup', '1',
       '--torch_modes', 'eager,compiled', '--torch_compile_backend', 'aot_eager',
       '--xla_gpu_autotune_level', '2', '--set', 'width=0.5', '--output', str(output)],
      capture_output=True, text=True, timeout=400, cwd=REPO_ROOT, env=subprocess_env(1))
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  assert [(line['framework'], line['mode']) for line in lines] == [
      ('jax', 'xla'), ('torch', 'eager'), ('torch', 'compiled')]
  assert [json.loads(line) for line in output.read_text().splitlines()] == lines
  for result in lines:
    assert DOCUMENTED_KEYS <= set(result), DOCUMENTED_KEYS - set(result)
    assert result['model'] == 'resnet18' and result['image_size'] == 32
    assert result['per_device_batch'] == 4 and result['devices'] == 1
    assert result['dtype'] == 'float32' and result['steps'] == 2
    assert result['views_per_second'] > 0 and result['peak_memory_bytes'] > 0
    assert set(result['step_time_ms']) == {'median', 'p10', 'p90'}
    times = result['step_time_ms']
    assert 0 < times['p10'] <= times['median'] <= times['p90']
    assert 0 < result['first_step_seconds'] <= result['warmup_seconds']
    assert result['platform'] == 'cpu' and result['device']
    for package in ('jax', 'jaxlib', 'flax', 'torch', 'torchvision'):
      assert result['versions'][package], package
  jax_result, eager, compiled = lines
  assert '--xla_gpu_autotune_level=2' in jax_result['xla_flags'].split()
  assert jax_result['levers']['xla_gpu_autotune_level'] == 2
  assert jax_result['levers']['config_overrides'] == ['width=0.5']
  assert jax_result['backend'] == 'cpu'
  assert compiled['levers']['torch_compile_backend'] == 'aot_eager'
  assert (eager['torch_module'], compiled['torch_module']) == ('SimCLRModel', 'OptimizedModule')
  assert 'jax/torch-eager views_per_second ratio' in proc.stderr
  assert 'jax/torch-compiled views_per_second ratio' in proc.stderr


def test_a_failing_torch_compile_is_one_line_and_exit_1(capsys):
  with pytest.raises(SystemExit) as exit_info:
    benchmark.main(['--framework', 'torch', '--model', 'resnet18', '--image_size', '32',
                    '--per_device_batch', '2', '--steps', '1', '--warmup', '1', '--compile',
                    '--torch_compile_backend', 'no_such_backend'])
  assert exit_info.value.code == 1
  captured = capsys.readouterr()
  assert captured.out == ''
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: torch.compile (backend '
                                                 'no_such_backend'), captured.err
  assert '--torch_modes eager' in lines[0]


def test_runs_and_forwarded_options():
  args = benchmark.parse_args(['--framework', 'both', '--torch_modes', 'eager,compiled',
                               '--set', 'dtype=bfloat16', '--set', 'stem=cifar',
                               '--xla_flags=--xla_gpu_enable_latency_hiding_scheduler=true'])
  assert benchmark.planned_runs(args) == [('jax', 'xla'), ('torch', 'eager'),
                                          ('torch', 'compiled')]
  command = benchmark.subprocess_command(args, 'torch', 'compiled')
  assert command[command.index('--torch_modes') + 1] == 'compiled'
  assert [command[i + 1] for i, a in enumerate(command) if a == '--set'] == [
      'dtype=bfloat16', 'stem=cifar']
  assert '--xla_flags=--xla_gpu_enable_latency_hiding_scheduler=true' in command
  assert benchmark.parse_args(command[2:]).xla_flags == (
      '--xla_gpu_enable_latency_hiding_scheduler=true')
  compiled_only = benchmark.parse_args(['--framework', 'torch', '--compile'])
  assert benchmark.planned_runs(compiled_only) == [('torch', 'compiled')]
  assert benchmark.planned_runs(benchmark.parse_args(['--framework', 'torch'])) == [
      ('torch', 'eager')]


@pytest.mark.parametrize('argv, message', [
    (['--framework', 'tensorflow'], 'invalid choice'),
    (['--torch_modes', 'eager,fast'], "--torch_modes 'eager,fast': accepted modes are eager, "
                                      'compiled'),
    (['--compile', '--torch_modes', 'eager'], '--compile means --torch_modes compiled'),
    (['--set', 'dtype'], "--set 'dtype': expected KEY=VALUE"),
])
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    benchmark.parse_args(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_unknown_config_override_exits_2_naming_the_field(capsys):
  with pytest.raises(SystemExit) as exit_info:
    benchmark.main(['--framework', 'jax', '--set', 'optimizer.learning_rat=0.1'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "optimizer has no field 'learning_rat'" in err and 'learning_rate' in err


def test_loader_extrapolation_takes_the_lower_per_worker_rate_and_the_receive_ceiling():
  from experiments import benchmark_loader
  rates = {0: {'images_per_second': 2000.0, 'main_process_cpu_ms_per_batch': 64.0},  # 4000/CPU-s
           1: {'images_per_second': 2500.0, 'main_process_cpu_ms_per_batch': 4.0},
           4: {'images_per_second': 2200.0, 'main_process_cpu_ms_per_batch': 3.2}}
  estimate = benchmark_loader.extrapolate(rates, batch_size=256, local_cores=2, host_cores=16)
  # Wall rate per worker only from runs with fewer workers than local cores (1 worker here).
  assert estimate['per_worker_wall_images_per_second'] == 2500.0
  assert estimate['per_worker_wall_from_worker_counts'] == [1]
  assert estimate['per_core_images_per_cpu_second'] == 4000.0
  assert estimate['main_process_receive_ceiling_images_per_second'] == 80000.0
  assert estimate['host_workers'] == 14
  assert estimate['images_per_second'] == 2500.0 * 14
  capped = benchmark_loader.extrapolate(rates, batch_size=256, local_cores=2, host_cores=64)
  assert capped['images_per_second'] == 80000.0  # the main process cannot receive more


def test_gpu_check_never_writes_into_a_non_empty_folder(tmp_path):
  (tmp_path / 'mine.txt').write_text('a user file')
  proc = subprocess.run(['bash', 'experiments/gpu_check.sh', str(tmp_path)], capture_output=True,
                        text=True, cwd=REPO_ROOT, timeout=30)
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr.strip() == (f'gpu_check: {tmp_path} exists and is not empty; give a new '
                                 'folder (nothing is overwritten)')
  assert [p.name for p in tmp_path.iterdir()] == ['mine.txt']
