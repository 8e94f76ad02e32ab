"""Does a checkpoint save stall training? Views/s of the logging window that holds a save,
synchronous vs asynchronous (orbax) saves, through the real training CLI.

  python -m experiments.benchmark_checkpointing [--model resnet_tiny --head_dim 4096 \
      --image_size 32 --batch_size 16 --steps 80 --log_every 5 --checkpoint_every 20] \
      [--data_dir DIR]

The defaults make a CPU step cheap and the state large (a 4096-wide projection head:
~50 M floats with Adam's moments, ~200 MB per checkpoint), the ratio of save to step
time of ResNet-50 on a GPU, where a 25-step window holding a save fell to half speed.

For each mode it runs `python -m simclr_jax.train` in a fresh process and reads
metrics.jsonl: each logged line carries the views/s of the window of `log_every` steps
that ends there. The save of step s starts right after step s is logged, so the window
ending at s + log_every holds it. Compared: the median views/s of those windows with
that of the other windows (the first window, which holds compilation, and the last are
left out). Also timed in this process: how long `checkpointing.save` blocks the caller,
and how long until the checkpoint is complete, for a state of the same size. Prints one
JSON object. Without --data_dir a small synthetic_cxr is prepared in a temporary
directory.
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


def _prepare(data_dir: pathlib.Path, image_size: int) -> str:
  from simclr_jax.data.synthetic_cxr import SyntheticCxr
  size = min(s for s in (16, 32, 64, 96, 128, 224, 256) if s >= image_size)
  builder = SyntheticCxr(config=str(size), data_dir=str(data_dir),
                         split_sizes={"train": 512, "validation": 16, "test": 16})
  builder.download_and_prepare()
  return f"synthetic_cxr/{size}"


def _run(mode: str, args, dataset: str, data_dir: str, workdir: pathlib.Path) -> dict:
  command = [
      sys.executable, "-m", "simclr_jax.train",
      "--config", str(REPO_ROOT / "experiments/configs/demo.py"), "--workdir", str(workdir),
      f"--config.dataset={dataset}", f"--config.data_dir={data_dir}",
      f"--config.image_size={args.image_size}", f"--config.model={args.model}",
      f"--config.width={args.width}", f"--config.batch_size={args.batch_size}",
      f"--config.head.hidden_dim={args.head_dim}",
      f"--config.head.output_dim={args.head_dim}", f"--config.num_train_steps={args.steps}",
      f"--config.log_every_steps={args.log_every}",
      f"--config.checkpoint_every_steps={args.checkpoint_every}",
      "--config.optimizer.warmup_steps=0", "--config.progress_bar=False",
      f"--config.async_checkpointing={mode == 'async'}"]
  start = time.perf_counter()
  proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
  if proc.returncode != 0:
    raise SystemExit(f"{mode} run failed:\n{proc.stderr[-4000:]}")
  wall = time.perf_counter() - start
  records = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
  windows = {r["step"]: r["views_per_second"] for r in records
             if r["step"] % args.log_every == 0}
  steps = sorted(windows)[1:-1]   # not the compilation window, not the last
  holding_save = [s for s in steps if (s - args.log_every) % args.checkpoint_every == 0]
  others = [s for s in steps if s not in holding_save]
  with_save = statistics.median(windows[s] for s in holding_save)
  without = statistics.median(windows[s] for s in others)
  checkpoint = workdir / "checkpoints" / str(args.steps)
  size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
  return {"views_per_second_window_with_save": round(with_save, 1),
          "views_per_second_other_windows": round(without, 1),
          "ratio": round(with_save / without, 3),
          "windows_with_save": len(holding_save), "other_windows": len(others),
          "checkpoint_mb": round(size / 2**20, 1), "wall_seconds": round(wall, 1)}


def _time_save_calls(megabytes: float, directory: pathlib.Path, repeats: int = 3) -> dict:
  """Median seconds `save` blocks and until the checkpoint is complete, per mode."""
  import grain
  import numpy as np
  from simclr_jax import checkpointing
  rows = int(megabytes * 2**20 / 4 / 4096) + 1
  state = {"params": {"kernel": np.random.default_rng(0).random((rows, 4096), np.float32)}}
  iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
  timings = {}
  for mode in ("sync", "async"):
    manager = checkpointing.create_manager(str(directory / mode), max_to_keep=3,
                                           async_saves=mode == "async")
    blocking, complete = [], []
    for step in range(1, repeats + 1):
      start = time.perf_counter()
      checkpointing.save(manager, step, state, np.zeros(2, np.uint32), iterator)
      blocking.append(time.perf_counter() - start)
      manager.wait_until_finished()
      complete.append(time.perf_counter() - start)
    manager.close()
    timings[mode] = {"save_call_blocks_seconds": round(statistics.median(blocking), 3),
                     "checkpoint_complete_seconds": round(statistics.median(complete), 3)}
  return timings


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet_tiny")
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--head_dim", type=int, default=4096,
                      help="hidden and output width of the projection head")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--steps", type=int, default=80)
  parser.add_argument("--log_every", type=int, default=5)
  parser.add_argument("--checkpoint_every", type=int, default=20)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--dataset", default=None, help="with --data_dir (default: "
                      "synthetic_cxr/<image_size>)")
  parser.add_argument("--modes", default="sync,async")
  args = parser.parse_args(argv)
  if args.checkpoint_every % args.log_every:
    parser.error("--checkpoint_every must be a multiple of --log_every")
  with tempfile.TemporaryDirectory(prefix="benchmark_checkpointing_") as scratch:
    scratch = pathlib.Path(scratch)
    if args.data_dir:
      data_dir, dataset = args.data_dir, args.dataset or f"synthetic_cxr/{args.image_size}"
    else:
      data_dir = str(scratch / "data")
      dataset = _prepare(scratch / "data", args.image_size)
    results = {mode: _run(mode, args, dataset, data_dir, scratch / mode)
               for mode in args.modes.split(",")}
    megabytes = max(r["checkpoint_mb"] for r in results.values())
    save_calls = _time_save_calls(megabytes, scratch / "save_calls")
    for mode, timing in save_calls.items():
      results.setdefault(mode, {}).update(timing)
  import jax
  report = {"benchmark": "checkpointing", "device": jax.devices()[0].device_kind,
            "backend": jax.default_backend(), "cpus": os.cpu_count(),
            "machine": platform.platform(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
            **{k: v for k, v in vars(args).items() if k not in ("modes",)}, **results}
  print(json.dumps(report))
  return report


if __name__ == "__main__":
  main()
