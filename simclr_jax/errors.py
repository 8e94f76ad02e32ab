"""Every way a run of this package ends on purpose: the error classes and their exit codes.

A `RunError` reaches the user as one line on stderr (no traceback) and the process exits
with its `exit_code`: 2 for settings and workdir problems (a checkpoint that cannot be
written, a workdir moved or taken over while training included), 3 for a non-finite step,
130 for Ctrl-C. The checkpoint errors below are caught inside the package (the trainer
moves a damaged checkpoint aside; an incompatible one becomes a ConfigError).
"""


class RunError(Exception):
  """Ends a run with `exit_code` and the message as one line on stderr."""
  exit_code = 2


class ConfigError(RunError, ValueError):
  """A setting that cannot run (on these devices, with this data, in this workdir)."""


class WorkdirBusy(RunError):
  """Another trainer holds the workdir lock."""


class WorkdirNotWritable(RunError):
  """The workdir cannot be created or written."""


class WorkdirLost(RunError):
  """The workdir was moved or deleted, or its lock taken by another trainer, while
  training: the run stops before it writes there again."""


class SaveFailed(RunError):
  """A checkpoint could not be written (no space, no inodes, permission, its folder gone),
  or did not finish within config.stop_grace_seconds of a stop signal. The run stops; the
  newest complete checkpoint is kept.

  `abandoned`: the save's threads may still be blocked; the process exits without
  waiting for them (train.py). Exit 2, or 130 when a Ctrl-C was waiting for the save.
  """

  def __init__(self, message: str, *, abandoned: bool = False, exit_code: int = 2):
    super().__init__(message)
    self.abandoned, self.exit_code = abandoned, exit_code


class NoUsableCheckpoint(RunError):
  """Checkpoints exist but none of them can be restored."""


class NonFiniteError(RunError, FloatingPointError):
  """A non-finite loss, gradient or parameter: stopped before anything was saved."""
  exit_code = 3


class Interrupted(RunError):
  """Ctrl-C (SIGINT): saved (or nothing written yet) and stopped."""
  exit_code = 130


class DamagedCheckpoint(Exception):
  """A complete-looking checkpoint that cannot be restored (missing or unreadable files)."""

  def __init__(self, step: int, reason: str):
    super().__init__(f"checkpoint {step}: {reason}")
    self.step, self.reason = step, reason


class IncompatibleCheckpoint(ValueError):
  """An intact checkpoint whose state tree differs from this config's (model/optimizer)."""


def one_line(error: BaseException) -> str:
  """An exception's message on one line (its class name when it has none)."""
  return " ".join(str(error).split()) or type(error).__name__


def run_command(main, argv, interrupted: str) -> int:
  """Runs a command line's `main(argv)`; returns its exit status.

  A RunError, ValueError or OSError (bad settings or data, no space) is one line on stderr
  and exit status 2 (a RunError's own code); Ctrl-C prints `interrupted` and gives 130.
  """
  import signal
  import sys
  import threading
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt
  try:
    main(argv)
  except RunError as error:
    print(f"error: {one_line(error)}", file=sys.stderr)
    return error.exit_code
  except (ValueError, OSError) as error:  # OSError: e.g. no space for the output
    message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    print(f"error: {message}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(interrupted, file=sys.stderr)
    return 130
  return 0
