"""First step of a training start with a cold vs a warm persistent compilation cache.

  python -m experiments.benchmark_compilation_cache [--config experiments/configs/demo.py] \
      [--data_dir runs/data] [--repeats 1] [-- --config.KEY=VALUE ...]

Runs `python -m simclr_jax.train` (stopping after 2 steps) with an empty cache directory,
then again in a fresh workdir with the same config and the now-filled cache, `repeats`
times each, and reads `first_step_seconds` / `compilation_cache_hit` from each run's
metrics.jsonl. Prints one JSON object.
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from simclr_jax.workdir import METRICS_FILE

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _start(config: str, data_dir: str, workdir: pathlib.Path, cache: pathlib.Path,
           extra) -> dict:
  command = [sys.executable, "-m", "simclr_jax.train", "--config", config,
             "--workdir", str(workdir), f"--config.data_dir={data_dir}",
             "--config.stop_at_step=2", "--config.progress_bar=False", *extra]
  start = time.perf_counter()
  proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT),
                             "SIMCLR_COMPILATION_CACHE": str(cache)})
  if proc.returncode != 0:
    raise SystemExit(f"training failed:\n{proc.stderr[-4000:]}")
  first = json.loads((workdir / METRICS_FILE).read_text().splitlines()[0])
  return {"first_step_seconds": first["first_step_seconds"],
          "compilation_cache_hit": first["compilation_cache_hit"],
          "process_seconds": time.perf_counter() - start}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(REPO_ROOT / "experiments/configs/demo.py"))
  parser.add_argument("--data_dir", default="runs/data")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("overrides", nargs="*", help="--config.KEY=VALUE (after --)")
  args = parser.parse_args(argv)
  runs = {"cold": [], "warm": []}
  with tempfile.TemporaryDirectory(prefix="benchmark_compilation_cache_") as scratch:
    scratch = pathlib.Path(scratch)
    for repeat in range(args.repeats):
      cache = scratch / f"cache{repeat}"
      for kind in ("cold", "warm"):
        runs[kind].append(_start(args.config, args.data_dir, scratch / f"{kind}{repeat}",
                                 cache, args.overrides))
  import jax
  summary = {kind: {"first_step_seconds": round(statistics.median(
                        r["first_step_seconds"] for r in results), 2),
                    "process_seconds": round(statistics.median(
                        r["process_seconds"] for r in results), 2),
                    "compilation_cache_hit": [r["compilation_cache_hit"] for r in results]}
             for kind, results in runs.items()}
  report = {"benchmark": "compilation_cache", "device": jax.devices()[0].device_kind,
            "backend": jax.default_backend(), "cpus": os.cpu_count(),
            "machine": platform.platform(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
            "config": args.config, "overrides": args.overrides, **summary}
  print(json.dumps(report))
  return report


if __name__ == "__main__":
  main()
