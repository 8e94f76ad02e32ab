"""Run control: one trainer per workdir, and how a run stops early.

  `StopSignals()`: installed first, before anything compiles, so a Ctrl-C never raises
  KeyboardInterrupt inside XLA (which crashed the interpreter with a segfault).
  `lock_workdir(workdir)`: one trainer per workdir; a second one exits 2 at once, having
  written nothing. `WorkdirLock.check(step)`, before the run writes again: a lock file
  deleted under a running trainer is taken again (a second trainer stays refused); a
  workdir moved or deleted, or a lock another trainer took meanwhile, stops the run.
  `StopSignals.should_stop(step)` and `StopSignals.end(...)`: the three ways a run stops
  early (Ctrl-C, SIGTERM/preemption, config.stop_at_step), decided and ended here; a stop
  that cannot finish (a save that hangs) ends the process config.stop_grace_seconds after
  the signal.

Every way a run ends on purpose is an `errors.RunError` with an exit code and one line
for the user (no traceback).
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
import time
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from simclr_jax import checkpointing
from simclr_jax.errors import Interrupted
from simclr_jax.errors import RunError
from simclr_jax.errors import WorkdirBusy
from simclr_jax.errors import WorkdirLost
from simclr_jax.errors import WorkdirNotWritable
from simclr_jax.workdir import LOCK_FILE

# After a stop signal, the watchdog ends a run still alive this long after
# config.stop_grace_seconds (the bounded waits for a save raise at the grace itself).
WATCHDOG_MARGIN_SECONDS = 15.0


# ----------------------------------------------------------------------------- lock

class WorkdirLock:
  """An exclusive lock on WORKDIR/.lock, held by process 0 for the whole run.

  A POSIX record lock (fcntl): the kernel releases it when the process ends, however it
  ends (kill -9 included), so a lock is never stale, and unlike flock it is not inherited
  by forked children (Grain workers) that could outlive the trainer. It works on NFS
  (lockd). The file stays after the run; it holds the last holder's host, PID and start
  time, which a second trainer prints.

  A lock lives on the file, not on its name: `rm WORKDIR/.lock` would let a second trainer
  in. So before the run writes again (every step) `check` compares the file at the path
  with the one this lock holds (device and inode: one os.stat) and the workdir with the
  one it locked.
  """

  def __init__(self, workdir: str, fd: int, created_workdir: bool):
    self.workdir, self._fd, self._created_workdir = workdir, fd, created_workdir
    self._path = os.path.join(workdir, LOCK_FILE)
    self._workdir_id = _file_id(workdir)

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
      fd = _open_and_lock(path)
    except OSError as error:
      raise WorkdirNotWritable(
          f"--workdir={workdir} is not writable ({error.strerror or error}); choose a "
          f"directory you can write to.") from error
    except _Held as held:
      if held.errno not in (errno.EACCES, errno.EAGAIN):
        raise WorkdirNotWritable(f"cannot lock {path}: {held.error}") from held.error
      raise WorkdirBusy(
          f"--workdir={workdir} is in use by another trainer ({held.holder}); wait for it "
          f"to finish or stop it, or use another --workdir.") from None
    return cls(workdir, fd, created)

  def holds(self) -> bool:
    """The workdir is the one locked and its lock file the one this lock holds."""
    return (self._fd is not None and not self.moved() and
            _file_id(self._path) == _file_id(self._fd))

  def moved(self) -> bool:
    """The workdir's path no longer names the folder locked (moved, deleted, replaced)."""
    return _file_id(self.workdir) != self._workdir_id

  def check(self, step: int) -> None:
    """Before the run writes to the workdir again (called after every step).

    A lock file deleted (or replaced by an unlocked file) is locked again, with a warning:
    a second trainer started now is refused. Costs two os.stat calls.

    Raises:
      WorkdirLost: the workdir was moved or deleted (nothing is written at its old path
        any more), or another trainer holds the lock file now.
    """
    if self._fd is None or self.holds():
      return
    if self.moved():
      raise WorkdirLost(
          f"--workdir={self.workdir} was moved or deleted while training (noticed after "
          f"step {step}); stopped without writing there again. Put it back, or pass its new "
          f"place as --workdir, and run the same command to resume from its newest "
          f"checkpoint.")
    what = "replaced" if os.path.lexists(self._path) else "deleted"
    try:
      fd = _open_and_lock(self._path)
    except _Held as held:
      raise WorkdirLost(
          f"{self._path} was {what} while training and another trainer holds it now "
          f"({held.holder}); stopped after step {step} without writing to "
          f"--workdir={self.workdir} again.") from None
    except OSError as error:
      raise WorkdirLost(f"{self._path} was {what} while training and cannot be made again "
                        f"({error.strerror or error}); stopped after step {step}.") from None
    os.close(self._fd)   # the old file's lock: nobody can find that file any more
    self._fd = fd
    logging.warning("%s was %s while training (noticed after step %d); locked it again, so "
                    "a second trainer on this workdir is still refused.", self._path, what,
                    step)

  def release(self) -> None:
    """Releases the lock; removes a workdir this run created if it holds only the lock."""
    if self._fd is None:
      return
    try:
      if (self._created_workdir and self.holds() and
          os.listdir(self.workdir) == [LOCK_FILE]):
        # Nothing else was written (e.g. stopped during compilation): leave no trace.
        os.unlink(self._path)
        os.rmdir(self.workdir)
    except OSError:   # another trainer started here meanwhile: its workdir now
      pass
    os.close(self._fd)   # releases the lock
    self._fd = None


class _Held(Exception):
  """The lock file is locked by another process."""

  def __init__(self, error: OSError, holder: str):
    super().__init__(holder)
    self.error, self.errno, self.holder = error, error.errno, holder


def _open_and_lock(path: str) -> int:
  """Opens (creating) and locks `path`, then records this process in it; returns the fd.

  Raises:
    OSError: the file cannot be created or opened.
    _Held: another process holds the lock.
  """
  # No O_TRUNC: a second trainer must not touch the holder's record.
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as error:
    holder = _read_holder(fd)
    os.close(fd)
    raise _Held(error, holder) from None
  record = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
  return fd


def _file_id(path_or_fd: Any) -> Optional[Tuple[int, int]]:
  """(device, inode) of what a path names, or of an open fd; None when it is gone."""
  try:
    status = (os.fstat(path_or_fd) if isinstance(path_or_fd, int) else
              os.stat(path_or_fd))
  except OSError:
    return None
  return status.st_dev, status.st_ino


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


def check_workdir(lock: Optional[WorkdirLock], step: int) -> None:
  """`lock.check(step)` on the process holding the lock (process 0); nothing elsewhere."""
  if lock is not None:
    lock.check(step)


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

  * config.stop_at_step (job time limits): save at that step, exit 0 (a run already at or
    past it stops before training: training/loop.py).

  A stop waits for the save it starts (and one in flight) at most `grace_seconds`
  (config.stop_grace_seconds) after the signal (`past_deadline`, training/checkpoints.py);
  should anything else hang (a save stuck in a system call, a step that never returns), a
  watchdog ends the process `WATCHDOG_MARGIN_SECONDS` later with one line.

  On several processes, JAX's preemption service (distributed.initialize) catches
  SIGTERM and lets all processes agree on one step; a SIGINT is forwarded to it as a
  SIGTERM to this process, so a Ctrl-C also stops every process at the same step (the
  stop is only taken at the step the service agreed on, see `should_stop`).
  """

  def __init__(self, stop_at_step: int = -1, grace_seconds: float = 90.0):
    self.reason: Optional[str] = None       # None | 'preemption' | 'interrupt'
    self.outcome: Optional[str] = None      # how the run stopped early (`end`), in words
    self.grace_seconds = float(grace_seconds)
    self._requested_at: Optional[float] = None   # time.monotonic() of the first signal
    self._watchdog: Optional[threading.Timer] = None
    self._stop_at_step = stop_at_step
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

  def past_deadline(self) -> bool:
    """A signal came more than grace_seconds ago: stop waiting for a save."""
    return (self._requested_at is not None and
            time.monotonic() > self._requested_at + self.grace_seconds)

  def describe(self) -> str:
    """The signal that stopped the run, in words."""
    return "Ctrl-C" if self.reason == "interrupt" else "SIGTERM"

  def _request(self, reason: str) -> None:
    """The first signal: remember it and when, and arm the watchdog."""
    if self.reason is not None:
      return
    self.reason, self._requested_at = reason, time.monotonic()
    self._watchdog = threading.Timer(self.grace_seconds + WATCHDOG_MARGIN_SECONDS,
                                     self._abandon)
    self._watchdog.daemon = True
    self._watchdog.start()

  def _abandon(self) -> None:
    """The watchdog: the run did not end after a signal; exit without waiting any more."""
    seconds = self.grace_seconds + WATCHDOG_MARGIN_SECONDS
    print(f"error: stopping on {self.describe()} did not finish within {seconds:.0f} s "
          f"(config.stop_grace_seconds={self.grace_seconds:g}): a save or a step is stuck; "
          f"exiting without it. The newest complete checkpoint is kept; run the same "
          f"command to resume from it.", file=sys.stderr, flush=True)
    import multiprocessing
    for child in multiprocessing.active_children():   # the data loader's workers
      child.terminate()
    os._exit(Interrupted.exit_code if self.reason == "interrupt" else RunError.exit_code)

  def _on_terminate(self, signum, frame):
    del signum, frame
    if self.reason is None:
      logging.warning("SIGTERM: will save a checkpoint at the current step and exit.")
      self._request("preemption")

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
    self._request("interrupt")
    if self._multi_process:
      os.kill(os.getpid(), signal.SIGTERM)   # through JAX's preemption service

  def should_stop(self, step: int) -> bool:
    """True when the run should save at `step` and stop (same answer on every process):
    a signal, or `step` is config.stop_at_step. Called after every step.

    On several processes only JAX's preemption service decides on signals (the signalled
    process knows before the others; stopping on its own flag would leave the others
    waiting in the next collective); `reason` keeps what this process received, for its
    exit code.
    """
    return self._signalled(step) or self.at_stop_step(step)

  def at_stop_step(self, step: int) -> bool:
    """`step` is at or past config.stop_at_step (> 0)."""
    return 0 < self._stop_at_step <= step

  def _signalled(self, step: int) -> bool:
    if self._multi_process:
      from jax.experimental import multihost_utils
      if not multihost_utils.reached_preemption_sync_point(step):
        return False
      self._request("preemption")   # no-op when this process got the signal itself
      return True
    return self.reason is not None

  def end(self, step: int, workdir: str, *, saved: bool) -> None:
    """Ends a run that stops early at `step`: sets `outcome` and logs, or raises.

    Args:
      step: the step the run stops at.
      workdir: the run's directory (for the message).
      saved: the checkpoint of `step` is complete; False when the run stops during its
        first step (compilation), before anything was written.

    Raises:
      Interrupted: on Ctrl-C (exit 130), with the line saying what was saved.
    """
    if not saved:
      self.outcome = "stopped before the first step finished; nothing written"
      if self.reason == "interrupt":
        raise Interrupted(f"Interrupted (Ctrl-C) before the first step finished; nothing "
                          f"was written to {workdir}.")
      logging.warning("Stopping early (preemption) before the first step finished; "
                      "nothing was written.")
      return
    if self.reason == "interrupt":
      self.outcome = "interrupted (Ctrl-C)"
      raise Interrupted(
          f"Interrupted (Ctrl-C): saved checkpoint at step {step} in "
          f"{checkpointing.checkpoint_directory(workdir)}; run the same command to resume.")
    reason = "preemption" if self.requested else "stop_at_step"
    self.outcome = f"stopped early ({reason})"
    logging.warning("Stopping early (%s): saved checkpoint at step %d; exiting.", reason, step)

  def close(self) -> None:
    if self._watchdog is not None:
      self._watchdog.cancel()
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
