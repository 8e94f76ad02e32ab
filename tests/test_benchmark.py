"""experiments/benchmark.py: the harness runs both frameworks and prints valid JSON lines."""
import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, subprocess_env

pytest.importorskip('torch')
pytest.importorskip('torchvision')

DOCUMENTED_KEYS = {'framework', 'model', 'image_size', 'per_device_batch', 'devices',
                   'global_batch', 'views_per_second', 'step_time_ms', 'peak_memory_bytes',
                   'peak_memory_source', 'device', 'platform', 'versions', 'dtype',
                   'channels_last', 'steps', 'warmup'}


@pytest.mark.slow
def test_benchmark_both_frameworks_prints_two_json_lines(tmp_path):
  output = tmp_path / 'results.jsonl'
  proc = subprocess.run(
      [sys.executable, 'experiments/benchmark.py', '--framework', 'both', '--model', 'resnet18',
       '--image_size', '32', '--per_device_batch', '4', '--steps', '2', '--warmup', '1',
       '--output', str(output)],
      capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=subprocess_env(1))
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  assert [line['framework'] for line in lines] == ['jax', 'torch']
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
    for package in ('jax', 'jaxlib', 'flax', 'torch', 'torchvision'):
      assert result['versions'][package], package
  assert 'jax/torch views_per_second ratio' in proc.stderr


def test_benchmark_rejects_unknown_framework():
  proc = subprocess.run(
      [sys.executable, 'experiments/benchmark.py', '--framework', 'tensorflow'],
      capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=subprocess_env(1))
  assert proc.returncode == 2 and 'invalid choice' in proc.stderr
