"""The books of the training loop: what each step logged, when, and how fast.

`StepLog` keeps them for `training.loop`: the first step's timing (compilation or a
compilation-cache hit), the metrics of the steps not yet logged, the lagged finite check
(the previous step's loss, gradients and parameters are checked while this one runs), the
speed of each logging window, the progress line, metrics.jsonl + TensorBoard
(`MetricsWriter`, process 0) and the run's last line.
"""
import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np

from simclr_jax.checkpointing import SELECTION_METRIC
from simclr_jax.errors import NonFiniteError
from simclr_jax.errors import WorkdirNotWritable
from simclr_jax.runtime import compilation_cache
from simclr_jax.runtime.progress import format_duration
from simclr_jax.runtime.progress import Progress
from simclr_jax.workdir import METRICS_DAMAGED_PREFIX
from simclr_jax.workdir import METRICS_FILE
from simclr_jax.workdir import TENSORBOARD_DIR


def check_finite(step: int, metrics: Dict[str, Any]) -> None:
  """Stops on a non-finite loss, gradient or updated parameters (before they are saved).

  Args:
    step: the step the metrics belong to.
    metrics: the train step's metrics (replicated: leading device axis).

  Raises:
    NonFiniteError: with the step and the value.
  """
  for name in ("loss", "grad_norm", "param_norm"):
    value = float(metrics[name][0])
    if not np.isfinite(value):
      raise NonFiniteError(
          f"Non-finite {name} ({value}) at step {step}; stopping. The last good checkpoint "
          f"is kept untouched. Lower the learning rate, check the inputs, or use float32.")


class MetricsWriter:
  """WORKDIR/metrics.jsonl (one JSON line per logged step) + TensorBoard; process 0 only.

  The file is only ever appended to. On resume (`resume_metrics_file`) the lines after the
  restored step (their steps are trained again) are dropped in place (truncate, then the
  kept lines after the cut appended again), never through a temporary file: the caller
  holds the workdir lock, and no reader sees a file replaced. A line that cannot be read
  is set aside, never dropped. A line that cannot be written stops the run (exit 2).
  """

  def __init__(self, workdir: str, start_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self._path = os.path.join(workdir, METRICS_FILE)
    try:
      if os.path.exists(self._path):
        resume_metrics_file(self._path, start_step)
      self._jsonl = open(self._path, "a")
    except OSError as error:
      raise _not_writable(self._path, start_step + 1, error) from None
    # purge_step: TensorBoard hides the events of steps after it from earlier runs.
    events = os.path.join(workdir, TENSORBOARD_DIR)
    _report_event_writer_errors(events)
    self._tensorboard = _summary_writer_class()(events,
                                      purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, scalars: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    try:
      self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self._jsonl.flush()
    except OSError as error:
      raise _not_writable(self._path, step, error) from None
    for name, value in scalars.items():
      # Online monitor scalars get their own TensorBoard section.
      tag = (f"online/{name[len('online_'):]}" if name.startswith("online_")
             else f"train/{name}")
      self._tensorboard.add_scalar(tag, float(value), step)

  def close(self) -> None:
    if self.enabled:
      try:
        self._jsonl.close()
      except OSError:   # the line that could not be written: reported already
        pass
      try:
        self._tensorboard.close()   # flushes the event file in this thread
      except OSError as error:
        logging.warning("TensorBoard events: cannot write the last events (%s).",
                        error.strerror or error)


_EVENTS_DIR = [""]   # the folder the newest event writer of this process writes


def _report_event_writer_errors(events_dir: str) -> None:
  """tensorboardX writes its event file from a thread of its own: an OSError there (a full
  disk) would print that thread's traceback. It becomes one warning line instead: the event
  file stops, metrics.jsonl and the checkpoints report their own failures (one line, exit 2).
  Exceptions of other threads go to the hook that was there. The hook is installed once per
  process and names the newest writer's folder (a trainer has one)."""
  _EVENTS_DIR[0] = events_dir
  if getattr(threading.excepthook, "_simclr_events", False):
    return
  previous = threading.excepthook

  def hook(args):
    frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
    if (isinstance(args.exc_value, OSError)
        and any("tensorboardX" in frame.filename for frame in frames)):
      logging.warning("TensorBoard events: cannot write %s (%s); the event file stops here, "
                      "metrics.jsonl goes on.", _EVENTS_DIR[0],
                      args.exc_value.strerror or args.exc_value)
      return
    previous(args)

  hook._simclr_events = True
  threading.excepthook = hook


def _summary_writer_class():
  """tensorboardX.SummaryWriter, imported without PyTorch.

  tensorboardX imports torch when it is installed (only to accept torch tensors, which
  this writer never gets): seconds at every start of the trainer.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None   # `import torch` raises ImportError: tensorboardX goes on
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _not_writable(path: str, step: int, error: OSError) -> WorkdirNotWritable:
  return WorkdirNotWritable(
      f"cannot write {path} at step {step} ({error.strerror or error}); stopped. Free space "
      f"or make it writable, then run the same command to resume from the newest "
      f"checkpoint.")


def resume_metrics_file(path: str, step: int) -> None:
  """Keeps the lines of metrics.jsonl up to `step` (the restored checkpoint), in place.

  Lines of later steps are dropped (they are trained again), and so is a last line cut
  short by a kill; the log says how many. A line that cannot be read (not JSON, no
  integer step) or whose step is not after the line before it is set aside with its line
  number in metrics.jsonl.damaged-<time> beside it, and reported; the lines after it stay.
  The file keeps its inode: it is cut at the first line that goes and the kept lines after
  that are appended again (a `tail -f` keeps following it).
  """
  with open(path, "rb") as f:
    lines = f.readlines()
  kept, damaged, dropped = [], [], 0
  first_change, last_step = len(lines), None
  for index, line in enumerate(lines):
    logged_step = _logged_step(line) if line.endswith(b"\n") else None
    if logged_step is None and index == len(lines) - 1 and not line.endswith(b"\n"):
      dropped += 1                                  # cut short by a kill
    elif logged_step is None or (last_step is not None and logged_step <= last_step):
      if logged_step is None or logged_step <= step:
        damaged.append({"line": index + 1, "text": line.decode("utf-8", "backslashreplace")})
      else:
        dropped += 1                                # a later step, repeated: trained again
    elif logged_step > step:
      dropped += 1
    else:
      kept.append((index, line))
      last_step = logged_step
      continue
    first_change = min(first_change, index)
  if first_change == len(lines):
    return
  if damaged:
    aside = _set_aside(path, damaged)
    logging.warning("%s: %d line(s) that cannot be read or are out of step order (line %s) "
                    "set aside in %s; the other lines are kept.", path, len(damaged),
                    ", ".join(str(record["line"]) for record in damaged[:10]), aside)
  if dropped:
    logging.warning("%s: dropped %d line(s) of steps after the restored checkpoint %d (they "
                    "are trained again).", path, dropped, step)
  offset = sum(len(line) for line in lines[:first_change])
  with open(path, "r+b") as f:
    f.truncate(offset)
    f.seek(offset)
    f.writelines(line for index, line in kept if index > first_change)
    f.flush()
    os.fsync(f.fileno())


def _logged_step(line: bytes) -> Optional[int]:
  """The step of a metrics line, or None when it is not a JSON object with an int step."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  step = record.get("step") if isinstance(record, dict) else None
  return step if isinstance(step, int) and not isinstance(step, bool) else None


def _set_aside(path: str, damaged: List[Dict[str, Any]]) -> str:
  """Writes the damaged lines (JSON: line number and text) beside `path`; returns the file."""
  stamp = time.strftime("%Y%m%dT%H%M%S")
  aside = os.path.join(os.path.dirname(path), f"{METRICS_DAMAGED_PREFIX}{stamp}")
  suffix = 1
  while os.path.exists(aside):
    suffix += 1
    aside = os.path.join(os.path.dirname(path), f"{METRICS_DAMAGED_PREFIX}{stamp}-{suffix}")
  with open(aside, "w") as f:
    for record in damaged:
      f.write(json.dumps(record) + "\n")
  return aside


class _PlainLines:
  """stdout that says it is not a terminal: Progress then logs lines instead of a bar."""

  def write(self, text: str) -> int:
    return sys.stdout.write(text)

  def flush(self) -> None:
    sys.stdout.flush()

  def isatty(self) -> bool:
    return False


class StepLog:
  """Timers, progress and metrics of one start of a training run (see the module doc).

  Per step the loop calls `step_starts()` before the step, `first_step(metrics)` after it
  (True once: the first step of this start, then `open` makes the files), `step_done`,
  and `write_if_due` once the step's online scalars are known; `close` at the end.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, start_step: int,
               total_steps: int, steps_per_epoch: int, views_per_image: int,
               cache_dir: Optional[str]):
    self._workdir, self._start_step, self._cache_dir = workdir, start_step, cache_dir
    self._total_steps, self._steps_per_epoch = total_steps, steps_per_epoch
    self._log_every = config.log_every_steps
    self._views_per_step = views_per_image * config.batch_size
    self._progress = Progress(total_steps, desc="train", unit="step", every=self._log_every,
                              initial=start_step, enabled=jax.process_index() == 0,
                              stream=sys.stdout if config.progress_bar else _PlainLines())
    self._writer: Optional[MetricsWriter] = None   # opened after the first step
    self._pending: List[Tuple[int, Any]] = []      # metrics of steps not yet logged (device)
    self._last_checked: Optional[Tuple[int, Any]] = None
    self._window_start, self._window_steps = time.perf_counter(), 0
    self._timing_first_step = True
    self._first_step: Dict[str, Any] = {}          # logged with the first step of this start
    self._first_step_start = self._cache_hits_before = self._steady_start = None
    self._last_loss: Optional[float] = None

  def step_starts(self) -> None:
    """Before a step: starts the clock of the first step of this start."""
    if self._timing_first_step:
      self._cache_hits_before = compilation_cache.cache_hits()
      self._first_step_start = time.perf_counter()

  def first_step(self, metrics: Dict[str, Any]) -> bool:
    """After a step: False, or True once: the first step of this start is compiled (or
    loaded from the compilation cache); its time is logged, and left out of the ETA."""
    if not self._timing_first_step:
      return False
    self._timing_first_step = False
    jax.block_until_ready(metrics)
    self._steady_start = time.perf_counter()
    self._progress.restart_interval(pending=1)
    self._first_step = {
        "first_step_seconds": self._steady_start - self._first_step_start,
        "compilation_cache_hit": compilation_cache.cache_hits() > self._cache_hits_before}
    cache_dir = self._cache_dir
    logging.info("First step took %.1f s (%s).", self._first_step["first_step_seconds"],
                 f"train step loaded from the compilation cache {cache_dir}"
                 if self._first_step["compilation_cache_hit"] else
                 "compiling the train step" +
                 (f", now cached in {cache_dir}" if cache_dir else "; compilation cache off"))
    return True

  def open(self, step: int, metrics: Dict[str, Any]) -> None:
    """Checks the first step, then opens metrics.jsonl (cut to the start step) and
    TensorBoard: nothing is written before a first step that finished and is finite."""
    check_finite(step, metrics)
    self._writer = MetricsWriter(self._workdir, self._start_step)

  def step_done(self, step: int, metrics: Dict[str, Any]) -> None:
    """Keeps the step's metrics; checks the previous step's while this one runs (one step
    of lag keeps the device busy); non-finite values stop before anything is saved."""
    self._pending.append((step, metrics))
    self._window_steps += 1
    if self._last_checked is not None:
      check_finite(*self._last_checked)
    self._last_checked = (step, metrics)

  def write_if_due(self, step: int, *, force: bool, online: Dict[str, float]) -> None:
    """Logs the pending steps on a logging step (or when `force`d: a checkpoint step, the
    first step, a step with online scalars), and moves the progress line on.

    Args:
      step: the step just done.
      force: log now whatever the step (it is about to be saved).
      online: the online monitor's scalars of this step ({} when it did not run); the
        seconds it took are left out of views/s and the ETA.
    """
    if online:
      self._window_start += online["online_eval_seconds"]   # views/s: training only
      self._progress.exclude(online["online_eval_seconds"])  # and the ETA
    fields, once = {}, {}
    if step % self._log_every == 0 or force or self._first_step or online:
      check_finite(step, self._pending[-1][1])
      self._last_checked = None   # checked now; not again next step
      elapsed = time.perf_counter() - self._window_start
      views_per_second = self._views_per_step * self._window_steps / max(elapsed, 1e-9)
      for logged_step, metrics in self._pending:
        if logged_step % self._log_every == 0 or logged_step == step:
          scalars = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
          scalars["views_per_second"] = views_per_second
          scalars["epoch"] = logged_step / self._steps_per_epoch
          if logged_step == step:
            scalars.update(self._first_step)
            scalars.update(online)
          self._writer.write(logged_step, scalars)   # the one place per-step scalars go
          self._last_loss = scalars["loss"]
      fields = {"epoch": step / self._steps_per_epoch, "loss": self._last_loss,
                "views/s": views_per_second}
      # On the next printed line only (the step's line when it is a logging step).
      once = {name.replace("online_", ""): online[name]
              for name in ("online_knn_accuracy", "online_knn_auroc", SELECTION_METRIC)
              if name in online}
      self._first_step, self._pending = {}, []
      self._window_start, self._window_steps = time.perf_counter(), 0
    self._progress.update(1, once=once, **fields)

  def close(self, outcome: str, step: int) -> None:
    """Closes the files; the last progress line says how the run ended and its speed."""
    if self._writer is not None:
      self._writer.close()
    text = f"{outcome} at step {step}/{self._total_steps}"
    if self._last_loss is not None:
      text += f", loss {self._last_loss:.4f}"
    steady_steps = step - self._start_step - 1   # after the first step (compilation)
    if self._steady_start is not None and steady_steps > 0:
      seconds = time.perf_counter() - self._steady_start
      text += (f", {steady_steps} steps in {format_duration(seconds)} after the first "
               f"({self._views_per_step * steady_steps / max(seconds, 1e-9):.0f} views/s)")
    self._progress.close(text)
