"""The life of a training run around its loop: lock, stop signals, guards, logs, resume.

`train.train_and_evaluate` uses these in this order:

  1. `StopSignals()` — installed before anything compiles, so a Ctrl-C never raises
     KeyboardInterrupt inside XLA (which crashed the interpreter with a segfault).
  2. `WorkdirLock.acquire(workdir)` — one trainer per workdir; a second one exits 2 at
     once, having written nothing.
  3. `restore_newest_good(...)` — resumes from the newest checkpoint that restores;
     damaged ones are moved aside to checkpoints/damaged-<step>/ (never deleted).
  4. the first step (compilation), then `MetricsWriter` (metrics.jsonl cut in place to
     the restored step, then appended) and config.json; an interrupt before this point
     leaves the workdir as it was.
  5. per step: `check_finite` (stop before a non-finite update is saved) and
     `StopSignals.should_stop`.

Every way a run ends on purpose is a `RunError` with an exit code and one line for the
user (no traceback): 2 for settings/workdir problems, 3 for a non-finite step, 130 for
Ctrl-C.
"""
import datetime
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

from simclr_jax import checkpointing

LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"


class RunError(Exception):
  """Ends a run with `exit_code` and the message as one line on stderr."""
  exit_code = 2


class WorkdirBusy(RunError):
  """Another trainer holds the workdir lock."""


class WorkdirNotWritable(RunError):
  """The workdir cannot be created or written."""


class NoUsableCheckpoint(RunError):
  """Checkpoints exist but none of them can be restored."""


class NonFiniteError(RunError, FloatingPointError):
  """A non-finite loss, gradient or parameter: stopped before anything was saved."""
  exit_code = 3


class Interrupted(RunError):
  """Ctrl-C (SIGINT): saved (or nothing written yet) and stopped."""
  exit_code = 130


# ----------------------------------------------------------------------------- lock

class WorkdirLock:
  """An exclusive lock on WORKDIR/.lock, held by process 0 for the whole run.

  A POSIX record lock (fcntl): the kernel releases it when the process ends, however it
  ends (kill -9 included), so a lock is never stale, and unlike flock it is not inherited
  by forked children (Grain workers) that could outlive the trainer. It works on NFS
  (lockd). The file stays after the run; it holds the last holder's host, PID and start
  time, which a second trainer prints.
  """

  def __init__(self, workdir: str, fd: int, created_workdir: bool):
    self.workdir, self._fd, self._created_workdir = workdir, fd, created_workdir

  @classmethod
  def acquire(cls, workdir: str) -> "WorkdirLock":
    """Takes the lock (creating the workdir if needed) or raises.

    Raises:
      WorkdirBusy: another process holds it (the message names its host and PID).
      WorkdirNotWritable: the workdir cannot be created or the lock file not written.
    """
    created = not os.path.isdir(workdir)
    path = os.path.join(workdir, LOCK_FILE)
    try:
      os.makedirs(workdir, exist_ok=True)
      # No O_TRUNC: a second trainer must not touch the holder's record.
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
      raise WorkdirNotWritable(
          f"--workdir={workdir} is not writable ({error.strerror or error}); choose a "
          f"directory you can write to.") from error
    try:
      fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      holder = _read_holder(fd)
      os.close(fd)
      if error.errno not in (errno.EACCES, errno.EAGAIN):
        raise WorkdirNotWritable(f"cannot lock {path}: {error}") from error
      raise WorkdirBusy(
          f"--workdir={workdir} is in use by another trainer ({holder}); wait for it to "
          f"finish or stop it, or use another --workdir.") from None
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return cls(workdir, fd, created)

  def release(self) -> None:
    """Releases the lock; removes a workdir this run created if it holds only the lock."""
    if self._fd is None:
      return
    if self._created_workdir and os.listdir(self.workdir) == [LOCK_FILE]:
      # Nothing else was written (e.g. stopped during compilation): leave no trace.
      try:
        os.unlink(os.path.join(self.workdir, LOCK_FILE))
        os.rmdir(self.workdir)
      except OSError:   # another trainer started here meanwhile: its workdir now
        pass
    os.close(self._fd)   # releases the lock
    self._fd = None


def _read_holder(fd: int) -> str:
  try:
    record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    return (f"host {record['host']}, PID {record['pid']}, started {record['started']}")
  except (ValueError, KeyError, OSError):
    return "holder not recorded yet"


def lock_workdir(workdir: str) -> Optional[WorkdirLock]:
  """Process 0 takes the lock; every process raises the same error if it cannot.

  Returns:
    The lock on process 0, None on the other processes.
  """
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock.acquire(workdir)
    except RunError as caught:
      error = caught
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      raise WorkdirBusy(f"process 0 could not lock --workdir={workdir}; see its log.")
  if error is not None:
    raise error
  return lock


# ----------------------------------------------------------------------------- signals

class StopSignals:
  """SIGTERM and SIGINT (Ctrl-C) stop the run at a step boundary, after a save.

  * SIGTERM (preemption, a scheduler's time limit): save at the current step, exit 0,
    so a requeued job resumes there.
  * first SIGINT: save at the current step, exit 130 with one line saying so.
  * second SIGINT: abort at once, without saving (dies by SIGINT; the last complete
    checkpoint stays the latest).

  Installed before anything compiles: the handlers only set a flag, so a Ctrl-C during
  compilation no longer raises KeyboardInterrupt while XLA is compiling (that tore the
  interpreter down under XLA's threads: a segfault).

  On several processes, JAX's preemption service (distributed.initialize) catches
  SIGTERM and lets all processes agree on one step; a SIGINT is forwarded to it as a
  SIGTERM to this process, so a Ctrl-C also stops every process at the same step (the
  stop is only taken at the step the service agreed on, see `should_stop`).
  """

  def __init__(self):
    self.reason: Optional[str] = None       # None | 'preemption' | 'interrupt'
    self._interrupts = 0
    self._previous: Dict[int, Any] = {}
    from jax._src import distributed as jax_distributed
    self._multi_process = (jax.process_count() > 1 and
                           jax_distributed.global_state.preemption_sync_manager is not None)
    if jax.process_count() > 1 and not self._multi_process:
      logging.warning("JAX's preemption service is not running: SIGTERM is handled per "
                      "process (start through simclr_jax.runtime.distributed.initialize).")
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Not on the main thread: SIGTERM/SIGINT keep their default action.")
      return
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_interrupt)
    if not self._multi_process:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_terminate)

  @property
  def requested(self) -> bool:
    return self.reason is not None

  def _on_terminate(self, signum, frame):
    del signum, frame
    if self.reason is None:
      logging.warning("SIGTERM: will save a checkpoint at the current step and exit.")
      self.reason = "preemption"

  def _on_interrupt(self, signum, frame):
    del frame
    self._interrupts += 1
    if self._interrupts > 1:
      print("Second Ctrl-C: aborting without saving; the newest complete checkpoint is "
            "kept.", file=sys.stderr, flush=True)
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    logging.warning("Ctrl-C: stopping after the current step (saving a checkpoint once "
                    "training has started); Ctrl-C again aborts at once without saving.")
    self.reason = "interrupt"
    if self._multi_process:
      os.kill(os.getpid(), signal.SIGTERM)   # through JAX's preemption service

  def should_stop(self, step: int) -> bool:
    """True when the run should save at `step` and stop (same answer on every process).

    On several processes only JAX's preemption service decides (the signalled process
    knows before the others; stopping on its own flag would leave the others waiting in
    the next collective); `reason` keeps what this process received, for its exit code.
    """
    if self._multi_process:
      from jax.experimental import multihost_utils
      if not multihost_utils.reached_preemption_sync_point(step):
        return False
      if self.reason is None:
        self.reason = "preemption"
      return True
    return self.reason is not None

  def close(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


# ----------------------------------------------------------------------------- guards

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


# ----------------------------------------------------------------------------- metrics

class MetricsWriter:
  """WORKDIR/metrics.jsonl (one JSON line per logged step) + TensorBoard; process 0 only.

  The file is only ever appended to. On resume, the lines after the restored step (their
  steps are trained again) are cut off in place (truncate), never rewritten through a
  temporary file: the caller holds the workdir lock, and no reader sees a file replaced.
  """

  def __init__(self, workdir: str, start_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter
    path = os.path.join(workdir, METRICS_FILE)
    if os.path.exists(path):
      cut = _end_of_steps_up_to(path, start_step)
      if cut < os.path.getsize(path):
        os.truncate(path, cut)
    self._jsonl = open(path, "a")
    # purge_step: TensorBoard hides the events of steps after it from earlier runs.
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                      purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, scalars: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      # Online monitor scalars get their own TensorBoard section.
      tag = (f"online/{name[len('online_'):]}" if name.startswith("online_")
             else f"train/{name}")
      self._tensorboard.add_scalar(tag, float(value), step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


def _end_of_steps_up_to(path: str, step: int) -> int:
  """Byte offset where the first line of a later step (or a line cut short) starts."""
  offset = 0
  with open(path, "rb") as f:
    for line in f:
      try:
        if not line.endswith(b"\n") or int(json.loads(line)["step"]) > step:
          break
      except (ValueError, KeyError, TypeError):   # a line cut short by a kill
        break
      offset += len(line)
  return offset


# ----------------------------------------------------------------------------- resume

def restore_newest_good(workdir: str, state: Any, rng: jax.Array, data_iterator: Any
                        ) -> Tuple[Any, jax.Array, int]:
  """Restores the newest checkpoint that can be restored; moves damaged ones aside.

  Tries the complete checkpoints from the newest down. One that cannot be restored
  (a truncated array file, a missing _METADATA or data-iterator state, ...) is logged
  with its step and the reason; once an older one restores, the damaged ones are moved
  to checkpoints/damaged-<step>/ (never deleted) and training resumes from the good one.

  Args:
    workdir: the run's directory (the caller holds its lock).
    state, rng: host-side targets with the structure to restore.
    data_iterator: set to the restored step's position.

  Returns:
    (state, rng, step); the targets unchanged and step 0 without checkpoints.

  Raises:
    NoUsableCheckpoint: checkpoints exist but none restores (nothing is moved).
    checkpointing.IncompatibleCheckpoint: the newest intact one holds another model.
  """
  leftovers = checkpointing.incomplete_checkpoints(workdir)
  if leftovers:
    logging.warning("Ignoring incomplete checkpoint directories in %s (a save was "
                    "interrupted; removed when this run saves): %s",
                    checkpointing.checkpoint_directory(workdir), ", ".join(leftovers))
  damaged: List[checkpointing.DamagedCheckpoint] = []
  for step in reversed(checkpointing.complete_steps(workdir)):
    try:
      restored_state, restored_rng = checkpointing.restore(workdir, step, state, rng,
                                                           data_iterator)
      problem = None
    except checkpointing.DamagedCheckpoint as error:
      problem = error
    if not _all_processes_agree(problem is None):
      problem = problem or checkpointing.DamagedCheckpoint(step, "damaged on another process")
    if problem is not None:
      logging.warning("Cannot restore checkpoint %d in %s: %s", step,
                      checkpointing.checkpoint_directory(workdir), problem.reason)
      damaged.append(problem)
      continue
    for bad in damaged:
      if jax.process_index() == 0:
        moved_to = checkpointing.move_aside(workdir, bad.step)
        logging.warning("Moved damaged checkpoint %d to %s; resuming from step %d.",
                        bad.step, moved_to, step)
    if damaged and jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("simclr_jax: damaged checkpoints moved aside")
    logging.info("Resumed from checkpoint step %d in %s", step,
                 checkpointing.checkpoint_directory(workdir))
    return restored_state, restored_rng, step
  if damaged:
    listing = "; ".join(f"step {d.step}: {d.reason}" for d in damaged)
    raise NoUsableCheckpoint(
        f"No checkpoint in {checkpointing.checkpoint_directory(workdir)} can be restored "
        f"({listing}). Move them out of the way to start again from step 0, or use "
        f"another --workdir.")
  return state, rng, 0


def _all_processes_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))
