#!/usr/bin/env bash
# The one check to run on a new GPU machine (about 7 minutes on one H100/H200):
#
#   bash experiments/gpu_check.sh [OUT]          OUT defaults to runs/gpu_check/<UTC time>
#   GPU_CHECK_TINY=1 bash experiments/gpu_check.sh [OUT]   the same path with tiny settings
#                                                (CPU, a few minutes: checks the script itself)
#
#   1. doctor      python -m simclr_jax.doctor --json: accelerator, JAX backend, versions
#   2. benchmark   experiments/benchmark.py: the bare train step of JAX and of PyTorch eager and
#                  torch.compile'd (ResNet-50, 224 px, bf16 / AMP + channels-last, per-device
#                  batch 256, 30 timed steps after 5 warm-up)
#   3. prepare     synthetic_cxr at 256 px (4,096 train / 256 validation / 1,024 test)
#   4. train       the CLI with experiments/configs/nih_r50.py on it (bf16, 300 steps, a
#                  checkpoint every 100): its steady views/s against the bare step's
#   5. evaluate    python -m simclr_jax.evaluate on the test split
#   then ONE summary table on stdout, OUT/summary.json and OUT/summary.md; logs in OUT/logs/.
#   The dataset, checkpoints and evaluation go to GPU_CHECK_SCRATCH (default OUT/work; point it
#   elsewhere to keep OUT small: ~1.5 GB there at full size); OUT keeps copies of
#   metrics.jsonl and report.json.
#
# A phase that fails is reported (its log's last line) and the others still run (evaluate
# needs train). Exit status: 0 when every phase passed, else 1; 2 for a bad OUT.
# On a GPU image without grain/TFDS/array-record/ml_collections, wheels downloaded by
# ../shared/tools/gpu-wheels.sh into .whl/ are installed first (to /tmp/site, see there).
# Environment: PYTHON (default: python3 when .whl/ is used, else .venv/bin/python if present,
# else python3); GPU_CHECK_TRAIN_STEPS (300); GPU_CHECK_WORKERS (Grain workers, default
# min(12, cores - 2)); GPU_CHECK_TORCH_COMPILE_BACKEND (inductor; tiny mode: aot_eager, as
# Inductor's C++ build of ResNet-18 takes minutes on 2 CPU cores).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TINY=${GPU_CHECK_TINY:-0}
OUT=${1:-runs/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}
if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
  echo "gpu_check: $OUT exists and is not empty; give a new folder (nothing is overwritten)" >&2
  exit 2
fi
mkdir -p "$OUT/logs" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_SCRATCH:-$OUT/work}
if [[ -e "$WORK" && -n "$(ls -A "$WORK" 2>/dev/null)" ]]; then
  echo "gpu_check: GPU_CHECK_SCRATCH=$WORK exists and is not empty; give a new folder" >&2
  exit 2
fi
mkdir -p "$WORK" || { echo "gpu_check: cannot create $WORK" >&2; exit 2; }
START=$SECONDS

if compgen -G ".whl/*.whl" > /dev/null; then
  echo "[gpu_check] installing .whl/*.whl into /tmp/site (what the GPU image lacks)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/logs/wheels.log" 2>&1 \
    || { echo "gpu_check: installing .whl/ failed, see $OUT/logs/wheels.log" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
  PY=${PYTHON:-python3}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
  elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
  else PY=python3; fi
fi

cores=$(nproc)
workers=${GPU_CHECK_WORKERS:-$(( cores - 2 < 12 ? (cores > 2 ? cores - 2 : 1) : 12 ))}
if [[ "$TINY" == 1 ]]; then
  size=32; steps=${GPU_CHECK_TRAIN_STEPS:-20}; per_device=8; workers=${GPU_CHECK_WORKERS:-1}
  bench=(--model resnet18 --image_size 32 --per_device_batch "$per_device" --steps 2 --warmup 2
         --dtype float32 --torch_modes eager,compiled
         --torch_compile_backend "${GPU_CHECK_TORCH_COMPILE_BACKEND:-aot_eager}")
  prepare=(--image_size 32 --train_size 256 --validation_size 64 --test_size 128)
  train=(--config.model=resnet18 --config.image_size=32 --config.dtype=float32
         --config.log_every_steps=5 --config.checkpoint_every_steps=10
         --config.optimizer.warmup_steps=2)   # nih_r50's 10 warm-up epochs exceed the run
else
  size=256; steps=${GPU_CHECK_TRAIN_STEPS:-300}; per_device=256
  bench=(--model resnet50 --image_size 224 --per_device_batch "$per_device" --steps 30 --warmup 5
         --dtype bfloat16 --channels_last --torch_modes eager,compiled
         --torch_compile_backend "${GPU_CHECK_TORCH_COMPILE_BACKEND:-inductor}")
  prepare=(--image_size 256 --train_size 4096 --validation_size 256 --test_size 1024)
  train=(--config.dtype=bfloat16 --config.log_every_steps=25 --config.checkpoint_every_steps=100
         --config.optimizer.warmup_steps=50)  # a short run: its own warm-up
fi

declare -A STATUS
# phase NAME CMD...: runs CMD with its output in OUT/logs/NAME.log; records status and seconds.
phase() {
  local name=$1; shift
  local began=$SECONDS
  echo "[gpu_check] $name: $*" | cut -c1-220
  "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - began))
  printf '%s\t%s\t%s\n' "$name" "$rc" "$took" >> "$OUT/phases.tsv"
  if [[ $rc -eq 0 ]]; then
    echo "[gpu_check] $name: ok in ${took}s"
  else
    echo "[gpu_check] $name: FAILED (exit $rc) in ${took}s: $(grep -v '^\s*$' "$OUT/logs/$name.log" | tail -1 | cut -c1-300)"
  fi
  STATUS[$name]=$rc
  return $rc
}

phase doctor sh -c "\"$PY\" -m simclr_jax.doctor --json > \"$OUT/doctor.json\""
devices=$("$PY" -c "import json,sys; r=json.load(open(sys.argv[1])).get('jax_runtime') or {}; print(r.get('device_count') or 1)" "$OUT/doctor.json" 2>/dev/null || echo 1)
phase benchmark "$PY" experiments/benchmark.py --framework both "${bench[@]}" \
  --output "$OUT/benchmark.jsonl"
phase prepare "$PY" -m simclr_jax.prepare synthetic_cxr --data_dir "$WORK/data" "${prepare[@]}"
if [[ ${STATUS[prepare]} -eq 0 ]]; then
  phase train "$PY" -m simclr_jax.train --config experiments/configs/nih_r50.py \
    --workdir "$WORK/train" --config.dataset="synthetic_cxr/$size" --config.data_dir="$WORK/data" \
    --config.batch_size=$((per_device * devices)) --config.num_train_steps="$steps" \
    --config.input.num_workers="$workers" "${train[@]}"
  cp "$WORK/train/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null
fi
if [[ ${STATUS[train]:-1} -eq 0 ]]; then
  phase evaluate "$PY" -m simclr_jax.evaluate --workdir "$WORK/train" \
    --dataset "synthetic_cxr/$size" --data_dir "$WORK/data" --split test --train_split train \
    --out "$WORK/eval"
  cp "$WORK/eval/report.json" "$OUT/eval_report.json" 2>/dev/null
fi

"$PY" - "$OUT" "$((SECONDS - START))" "$TINY" <<'SUMMARY'
"""Reads the phases' outputs and prints the one summary table (also summary.json/.md)."""
import json
import pathlib
import statistics
import sys

out, total_seconds, tiny = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == '1'


def read_json(path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def read_lines(path):
  try:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  except (OSError, ValueError):
    return []


phases = {}
if (out / 'phases.tsv').exists():
  for line in (out / 'phases.tsv').read_text().splitlines():
    name, rc, seconds = line.split('\t')
    phases[name] = {'exit': int(rc), 'seconds': int(seconds)}
doctor = read_json(out / 'doctor.json') or {}
runtime = doctor.get('jax_runtime') or {}
bench = read_lines(out / 'benchmark.jsonl')
by_mode = {(r['framework'], r['mode']): r for r in bench}
jax_step = by_mode.get(('jax', 'xla'))

metrics = read_lines(out / 'train_metrics.jsonl')
windows = [(m['step'], m['views_per_second']) for m in metrics if 'views_per_second' in m]
train = {}
if windows:
  later = windows[1:] or windows  # the first window holds compilation
  steady = statistics.median(v for _, v in later)
  slowest_step, slowest = min(later, key=lambda w: w[1])
  train = {'steps': windows[-1][0], 'windows': len(windows),
           'steady_views_per_second': steady,
           'slowest_window': {'step': slowest_step, 'views_per_second': slowest},
           'first_window_views_per_second': windows[0][1],
           'final_loss': metrics[-1].get('loss')}
  for key in ('first_step_seconds', 'compile_seconds'):
    values = [m[key] for m in metrics if key in m]
    if values:
      train[key] = values[0]
  if jax_step:
    train['fraction_of_bare_step'] = steady / jax_step['views_per_second']


def flatten(tree, prefix=''):
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from flatten(value, f'{prefix}{key}.')
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield prefix[:-1], tree


report = read_json(out / 'eval_report.json') or {}
# The report's headline numbers, under the names the evaluator has used (first found wins).
wanted = (('cluster_accuracy', 'clustering_accuracy'), ('nmi',), ('ari',),
          ('linear_auroc_macro', 'macro_auroc'), ('knn_accuracy',),
          ('feature_extraction_seconds',), ('total_seconds',))
found = {}
for key, value in flatten(report):
  found.setdefault(key.split('.')[-1], (key, value))
evaluation = {}
for names in wanted:
  present = [found[name] for name in names if name in found]
  if present:
    key, value = present[0]
    evaluation[key] = value

rows = []
def row(what, value, note=''):
  rows.append((what, value, note))

def fmt(value, digits=0):
  return '-' if value is None else f'{value:,.{digits}f}'

device = (jax_step or {}).get('device') or runtime.get('device_kind') or '?'
row('device', f"{runtime.get('device_count', '?')} x {device}",
    f"JAX backend {runtime.get('backend', '?')}, detected {doctor.get('accelerator', '?')}")
versions = doctor.get('versions') or {}
row('versions', ', '.join(f'{k} {versions[k]}' for k in
                          ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax',
                           'torch') if versions.get(k)), '')
for (framework, mode), label in ((('jax', 'xla'), 'JAX bare step'),
                                 (('torch', 'eager'), 'PyTorch eager'),
                                 (('torch', 'compiled'), 'PyTorch torch.compile')):
  r = by_mode.get((framework, mode))
  if r:
    row(f'{label} views/s', fmt(r['views_per_second']),
        f"{r['model']} {r['image_size']}px {r['dtype']}, batch {r['per_device_batch']}/device, "
        f"{r['step_time_ms']['median']:.1f} ms/step, peak {r['peak_memory_bytes'] / 2**30:.1f} GiB, "
        f"warm-up {r['warmup_seconds']:.0f} s")
  else:
    row(f'{label} views/s', '-', 'failed or not run (see logs/benchmark.log)')
if jax_step and ('torch', 'compiled') in by_mode:
  row('JAX / torch.compile', f"{jax_step['views_per_second'] / by_mode[('torch', 'compiled')]['views_per_second']:.2f}x", '')
if jax_step and ('torch', 'eager') in by_mode:
  row('JAX / PyTorch eager', f"{jax_step['views_per_second'] / by_mode[('torch', 'eager')]['views_per_second']:.2f}x", '')
if train:
  row('CLI steady views/s', fmt(train['steady_views_per_second']),
      f"median of {train['windows'] - 1} logging windows after the first; "
      + (f"{100 * train['fraction_of_bare_step']:.0f}% of the bare step"
         if 'fraction_of_bare_step' in train else ''))
  row('CLI slowest window', fmt(train['slowest_window']['views_per_second']),
      f"window ending at step {train['slowest_window']['step']} (a save at step N falls in "
      f"the window after N; saves every {'10' if tiny else '100'} steps)")
  if 'first_step_seconds' in train:
    row('CLI first step', f"{train['first_step_seconds']:.1f} s", 'compilation (or cache)')
  row('CLI final loss', fmt(train['final_loss'], 4), f"{train['steps']} steps")
for key, value in evaluation.items():
  row(f'eval {key}', fmt(value, 1 if key.endswith('seconds') else 3), 'test split')
for name, info in phases.items():
  row(f'phase {name}', 'ok' if info['exit'] == 0 else f"FAILED ({info['exit']})",
      f"{info['seconds']} s")
row('total wall time', f'{total_seconds} s', 'tiny settings (not a GPU measurement)' if tiny else '')

width = max(len(r[0]) for r in rows)
value_width = max(len(str(r[1])) for r in rows)
lines = [f"| {'what'.ljust(width)} | {'value'.ljust(value_width)} | note |",
         f"|{'-' * (width + 2)}|{'-' * (value_width + 2)}|------|"]
lines += [f'| {w.ljust(width)} | {str(v).ljust(value_width)} | {n} |' for w, v, n in rows]
table = '\n'.join(lines)
print('\n' + table)
(out / 'summary.md').write_text(table + '\n')
summary = {'tiny': tiny, 'total_seconds': total_seconds, 'phases': phases, 'doctor': doctor,
           'benchmark': bench, 'train': train, 'evaluation': evaluation}
(out / 'summary.json').write_text(json.dumps(summary, indent=1))
print(f'\n[gpu_check] {out}/summary.json, summary.md, logs/')
SUMMARY

for name in doctor benchmark prepare train evaluate; do
  [[ ${STATUS[$name]:-1} -eq 0 ]] || exit 1
done
exit 0
