"""Every way a run of this package ends on purpose: the error classes and their exit codes.

A `RunError` reaches the user as one line on stderr (no traceback) and the process exits
with its `exit_code`: 2 for settings and workdir problems, 3 for a non-finite step, 130
for Ctrl-C. The checkpoint errors below are caught inside the package (the trainer moves a
damaged checkpoint aside; an incompatible one becomes a ConfigError).
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
