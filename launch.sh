#!/usr/bin/env bash
# simclr_jax launcher. One entry point for every place the code runs.
#
#   ./launch.sh demo                      set up a venv, then the whole path (synthetic_cxr) on the
#                                         accelerator setup detected (GPU, TPU, else CPU)
#   ./launch.sh test [pytest args]        set up (incl. the PyTorch baseline) and run the test suite
#                                         (tests, then tests/multidevice on 4 fake CPU devices)
#   ./launch.sh setup [torch|tensorboard] only create/refresh the venv (JAX build of the accelerator)
#   ./launch.sh doctor [--json]           detected accelerator, JAX requirement, backend, versions
#   ./launch.sh prepare ARGS...           python -m simclr_jax.prepare ARGS
#   ./launch.sh train CONFIG WORKDIR [--config.KEY=VALUE ...]    one host, all local GPUs/TPU cores
#   ./launch.sh evaluate ARGS...          python -m simclr_jax.evaluate ARGS
#   ./launch.sh compare ARGS...           python -m experiments.compare ARGS (the seed's table)
#   ./launch.sh tensorboard WORKDIR [ARGS]  install requirements-tensorboard.txt, then
#                                         tensorboard --logdir WORKDIR/tensorboard ARGS
#   ./launch.sh slurm CONFIG WORKDIR [--nodes N] [--gpus_per_node G] [--partition P]
#                     [--time HH:MM:SS] [--dry_run] [-- --config.KEY=VALUE ...]
#                                         sbatch script: srun, one task per node, jax.distributed
#   ./launch.sh tpu TPU_NAME ZONE CONFIG WORKDIR [--project P] [--dry_run] [-- --config.KEY=VALUE ...]
#                                         the same train command on every worker of a TPU VM
#
# Environment: SIMCLR_VENV (default .venv), PYTHON (default python3.11, else python3),
# SIMCLR_ACCELERATOR=cpu|cuda12|cuda13|tpu (default: detected by python -m simclr_jax.doctor).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${SIMCLR_VENV:-$ROOT/.venv}
PYTHON_BIN=${PYTHON:-$(command -v python3.11 || command -v python3)}

# Creates the venv and installs requirements*.txt plus the JAX build of the accelerator
# (simclr_jax/runtime/doctor.py decides: cpu, cuda12, cuda13 or tpu) when any of them changed since
# the last install.
setup() {
  local files=(requirements.txt)
  case "${1:-}" in
    torch) files+=(requirements-torch.txt requirements-dev.txt);;
    tensorboard) files+=(requirements-tensorboard.txt);;
    "") ;;
    *) echo "setup: unknown extra '$1' (accepted: torch, tensorboard)" >&2; exit 2;;
  esac
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV with $PYTHON_BIN"
    "$PYTHON_BIN" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  local plan accelerator requirement reasons="$VENV/.simclr_setup_plan"
  # stdlib only: runs before jax is installed. The reason is shown when installing, warnings
  # (e.g. a GPU whose driver does not answer) every time.
  plan=$(py -m simclr_jax.doctor --setup_plan 2> "$reasons") || { cat "$reasons" >&2; exit 2; }
  grep '^\[setup\] warning' "$reasons" >&2 || true
  read -r accelerator requirement <<< "$plan"
  local stamp="$VENV/.simclr_requirements" installed_for="$VENV/.simclr_accelerator"
  # The stamp lists the requirement sets installed for ONE accelerator; after a switch
  # (cpu -> cuda13 -> cpu) none of them holds any more: install (and clean up) again.
  if [[ -f "$installed_for" && "$(cat "$installed_for")" != "$accelerator" ]]; then
    rm -f "$stamp"
  fi
  local want
  want=$( (cat "${files[@]}"; echo "$accelerator $requirement") | sha256sum | cut -d' ' -f1)
  if [[ ! -f "$stamp" ]] || ! grep -qx "$want" "$stamp"; then
    local stale
    stale=$(py -m simclr_jax.doctor --stale_packages "$accelerator")
    if [[ -n "$stale" ]]; then
      echo "[setup] removing the JAX plugins of another accelerator: $stale"
      # shellcheck disable=SC2086
      "$VENV/bin/python" -m pip uninstall -q -y $stale
    fi
    grep -v '^\[setup\] warning' "$reasons" || true
    echo "[setup] installing ${files[*]} and $requirement"
    local args=()
    for f in "${files[@]}"; do args+=(-r "$f"); done
    "$VENV/bin/python" -m pip install -q "${args[@]}" "$requirement"
    echo "$want" >> "$stamp"
    echo "$accelerator" > "$installed_for"
  fi
}

py() { PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/python" "$@"; }

demo() {
  local start=$SECONDS out=runs/demo
  setup
  py -m simclr_jax.doctor --brief  # which backend the demo runs on (warns if not the detected one)
  echo "[demo] 1/4 building synthetic_cxr/32 (TFDS, ArrayRecord) in runs/data"
  py -m simclr_jax.prepare synthetic_cxr --data_dir runs/data --image_size 32
  # A workdir of an earlier demo version (e.g. the 64 px demo) cannot be resumed with this
  # config: keep it under another name (never deleted) unless a trainer holds it.
  if [[ -f "$out/train/config.json" ]] \
      && ! grep -q '"dataset": "synthetic_cxr/32"' "$out/train/config.json"; then
    local kept
    kept="$out/train-earlier-$(date +%Y%m%d-%H%M%S)"
    if py -c 'import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)' "$out/train/.lock" 2>/dev/null; then
      mv "$out/train" "$kept"
      echo "[demo] $out/train held a run of an earlier demo version; kept as $kept"
    fi
  fi
  echo "[demo] 2/4 SimCLR pretraining (experiments/configs/demo.py) -> $out/train"
  py -m simclr_jax.train --config experiments/configs/demo.py --workdir "$out/train" "$@"
  echo "[demo] 3/4 evaluating the SimCLR encoder and the random-init encoder on the test split"
  py -m experiments.compare --simclr_workdir "$out/train" --random_init \
      --dataset synthetic_cxr/32 --data_dir runs/data --split test --train_split train \
      --out "$out" --overwrite
  echo "[demo] 4/4 done in $((SECONDS - start)) s: $out/report.json, $out/report.md"
  cat "$out/report.md"
}

slurm() {
  local config=$1 workdir=$2; shift 2
  local nodes=1 gpus=8 partition="" time="24:00:00" dry=0 extra=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --nodes) nodes=$2; shift 2;;
      --gpus_per_node) gpus=$2; shift 2;;
      --partition) partition=$2; shift 2;;
      --time) time=$2; shift 2;;
      --dry_run) dry=1; shift;;
      --) shift; extra=("$@"); break;;
      *) echo "slurm: unknown option $1" >&2; exit 2;;
    esac
  done
  mkdir -p "$workdir"
  local script="$workdir/simclr_slurm.sbatch"
  {
    echo "#!/bin/bash"
    echo "#SBATCH --job-name=simclr_jax"
    echo "#SBATCH --nodes=$nodes"
    echo "#SBATCH --ntasks-per-node=1"
    echo "#SBATCH --gpus-per-node=$gpus"
    echo "#SBATCH --time=$time"
    echo "#SBATCH --signal=TERM@120"
    echo "#SBATCH --requeue"
    echo "#SBATCH --output=$workdir/slurm-%j.out"
    [[ -n "$partition" ]] && echo "#SBATCH --partition=$partition"
    echo "cd $ROOT"
    echo "# One task per node; jax.distributed.initialize reads SLURM_* (simclr_jax/runtime/distributed.py)"
    echo "# and each task keeps all $gpus GPUs of its node."
    echo "export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))"
    echo "# SIGTERM 120 s before the limit: every task saves the same step and exits 0; --requeue resumes."
    printf 'srun --kill-on-bad-exit=1 %q -m simclr_jax.train --config %q --workdir %q' \
        "$VENV/bin/python" "$config" "$workdir"
    for a in "${extra[@]+"${extra[@]}"}"; do printf ' %q' "$a"; done
    echo
  } > "$script"
  if [[ $dry -eq 1 ]]; then
    cat "$script"
    echo "# would run: sbatch $script"
  else
    sbatch "$script"
  fi
}

tpu() {
  local name=$1 zone=$2 config=$3 workdir=$4; shift 4
  local project="" dry=0 extra=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --project) project=$2; shift 2;;
      --dry_run) dry=1; shift;;
      --) shift; extra=("$@"); break;;
      *) echo "tpu: unknown option $1" >&2; exit 2;;
    esac
  done
  local remote
  remote=$(printf 'cd ~/simclr_jax && SIMCLR_ACCELERATOR=tpu ./launch.sh setup && SIMCLR_TPU_POD=1 .venv/bin/python -m simclr_jax.train --config %q --workdir %q' "$config" "$workdir")
  for a in "${extra[@]+"${extra[@]}"}"; do remote+=$(printf ' %q' "$a"); done
  local cmd=(gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all)
  [[ -n "$project" ]] && cmd+=(--project "$project")
  cmd+=(--command "$remote")
  if [[ $dry -eq 1 ]]; then
    echo "# the repository must be at ~/simclr_jax on every worker, e.g.:"
    printf '%q ' gcloud compute tpus tpu-vm scp --recurse "$ROOT" "$name:~/simclr_jax" --zone "$zone" --worker=all; echo
    printf '%q ' "${cmd[@]}"; echo
  else
    "${cmd[@]}"
  fi
}

command=${1:-}
[[ $# -gt 0 ]] && shift
case "$command" in
  setup) setup "${1:-}";;
  demo) demo "$@";;
  # In-process and multi-device tests pin JAX to (fake) CPU devices themselves (tests/conftest.py);
  # tests/test_doctor.py runs a real train step on the detected accelerator.
  test)
    # Two pytest invocations: tests/multidevice needs a process of its own (4 fake CPU devices,
    # set before JAX starts). Both run; the exit code is the first failure's (5, nothing
    # selected by -k, is not a failure). The first spreads the test files over worker processes
    # (pytest-xdist; SIMCLR_TEST_WORKERS, default one per core up to 4; 0 runs them in this
    # process).
    setup torch; status=0
    cores=$(nproc 2>/dev/null || echo 1)
    workers=${SIMCLR_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
    [[ "$workers" =~ ^[0-9]+$ ]] || { echo "SIMCLR_TEST_WORKERS=$workers: give a number of worker processes (0: none)" >&2; exit 2; }
    # --durations: the slowest tests in every log, so the 10-minute budget can be tended.
    parallel=(-n "$workers" --dist loadfile --durations=15)
    for tests in tests tests/multidevice; do
      py -m pytest -q "$tests" "${parallel[@]}" "$@" || { rc=$?; [[ $rc -eq 5 || $status -ne 0 ]] || status=$rc; }
      parallel=()
    done
    exit "$status";;
  doctor)
    # Before any setup too: the venv's Python when there is one, else the system's.
    if [[ -x "$VENV/bin/python" ]]; then py -m simclr_jax.doctor "$@"
    else PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m simclr_jax.doctor "$@"; fi;;
  prepare) setup; py -m simclr_jax.prepare "$@";;
  train)
    [[ $# -ge 2 ]] || { echo "usage: ./launch.sh train CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2; exit 2; }
    setup; config=$1 workdir=$2; shift 2
    py -m simclr_jax.train --config "$config" --workdir "$workdir" "$@";;
  evaluate) setup; py -m simclr_jax.evaluate "$@";;
  compare) setup; py -m experiments.compare "$@";;
  tensorboard)
    [[ $# -ge 1 ]] || { echo "usage: ./launch.sh tensorboard WORKDIR [tensorboard args]" >&2; exit 2; }
    [[ -d "$1/tensorboard" ]] || { echo "tensorboard: $1/tensorboard does not exist (a training workdir holds one)" >&2; exit 2; }
    setup tensorboard; logdir=$1; shift
    "$VENV/bin/tensorboard" --logdir "$logdir/tensorboard" "$@";;
  slurm)
    [[ $# -ge 2 ]] || { echo "usage: ./launch.sh slurm CONFIG WORKDIR [options]" >&2; exit 2; }
    slurm "$@";;
  tpu)
    [[ $# -ge 4 ]] || { echo "usage: ./launch.sh tpu TPU_NAME ZONE CONFIG WORKDIR [options]" >&2; exit 2; }
    tpu "$@";;
  *) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 2;;
esac
