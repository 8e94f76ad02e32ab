"""SimCLR pretraining from the command line (the work is in simclr_jax/training/).

  python -m simclr_jax.train --config experiments/configs/demo.py --workdir runs/demo/train \
      [--config.KEY=VALUE ...] [--allow_config_changes=FIELD,...]

Starting on a workdir that already holds checkpoints resumes from the newest good one
(`training.loop.train_and_evaluate`). Exit codes (simclr_jax/errors.py): 0 done or
preempted (SIGTERM) or stopped at config.stop_at_step, 2 bad settings / workdir in use /
no restorable checkpoint / a checkpoint or file that cannot be written / a workdir moved
or taken over while training / a stop whose save did not finish within
config.stop_grace_seconds, 3 a non-finite step, 130 Ctrl-C.
"""
import logging
import os
import sys
from typing import Optional, Sequence

import ml_collections

from simclr_jax.errors import Interrupted
from simclr_jax.errors import RunError
from simclr_jax.errors import SaveFailed


def _load_config_file(argv: Sequence[str]) -> Optional[ml_collections.ConfigDict]:
  """The config named by --config in argv (for messages about its overrides)."""
  import importlib.util
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    else:
      continue
    path, _, parameter = value.partition(":")
    try:
      spec = importlib.util.spec_from_file_location("_simclr_config", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      return module.get_config(parameter) if parameter else module.get_config()
    except Exception:  # pylint: disable=broad-except  (the flag parser reports it)
      return None
  return None


def parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl flag parsing with one-line errors (exit 2) instead of tracebacks.

  A mistyped `--config.KEY` makes ml_collections raise three chained tracebacks; here it
  is one line with the closest fields ("did you mean").
  """
  from absl import flags
  try:
    remaining = flags.FLAGS(argv)
    if flags.FLAGS["config"].present:
      flags.FLAGS.config.get("dataset")   # ml_collections defers a load error to first use
    return remaining
  except flags.Error as error:
    print(f"error: {error}", file=sys.stderr)
  except (AttributeError, KeyError) as error:   # an override of a field that is not there
    from simclr_jax.training import settings
    config = _load_config_file(argv)
    message = None
    if config is not None:
      for arg in argv:
        if arg.startswith("--config."):
          key = arg[len("--config."):].split("=", 1)[0]
          message = settings.unknown_key_message(config, key)
          if message:
            break
    print(f"error: {message or ' '.join(str(error).split())}", file=sys.stderr)
  except (OSError, ImportError, SyntaxError) as error:   # --config file missing or broken
    config_file = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"),
                       next((arg.split("=", 1)[1] for arg in argv
                             if arg.startswith("--config=")), "?"))
    cause = error.__cause__ or error
    if not os.path.isfile(config_file):
      print(f"error: --config={config_file}: no such file (configs are in experiments/configs/).",
            file=sys.stderr)
    else:
      print(f"error: --config={config_file}: cannot load the config file "
            f"({type(cause).__name__}: {' '.join(str(cause).split())[:200]}).", file=sys.stderr)
  sys.exit(2)


def define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.")
  flags.DEFINE_list("allow_config_changes", [],
                    "Config fields a resumed run may change although they change what a "
                    "step computes (e.g. optimizer.learning_rate); the previous config is "
                    "kept in WORKDIR/config_history.jsonl.")
  flags.mark_flags_as_required(["config", "workdir"])
  # Also accept the distributed flags here so one command works everywhere.
  from simclr_jax.runtime import distributed
  distributed.define_flags()


def main(argv):
  del argv
  from absl import flags
  from simclr_jax.runtime import distributed
  logging.getLogger().setLevel(logging.INFO)
  # orbax/TFDS log every save/restore step through absl at INFO; keep ours only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  # A failed save is one line (training/checkpoints.py), not orbax's tracebacks of it.
  logging.getLogger("absl").addFilter(_without_orbax_errors)
  sys.unraisablehook = _without_closed_loop_errors(sys.unraisablehook)
  message, exit_code, abandoned = None, 0, False
  try:
    from simclr_jax.training import loop
    distributed.initialize()
    loop.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                            allow_config_changes=flags.FLAGS.allow_config_changes)
  except RunError as error:
    prefix = "" if isinstance(error, Interrupted) else "error: "
    message, exit_code = f"{prefix}{error}", error.exit_code
    abandoned = isinstance(error, SaveFailed) and error.abandoned
  except KeyboardInterrupt:   # before the handlers were installed (start-up)
    message, exit_code = "Interrupted during start-up; nothing was written.", 130
  # Exit outside the except blocks: the exception's frames (and the loader's shared-memory
  # batches they hold) are released first, so nothing is left for the resource tracker.
  if message is not None:
    print(message, file=sys.stderr, flush=True)
    if abandoned:   # a stuck save's threads would keep the interpreter from exiting
      sys.stdout.flush()
      os._exit(exit_code)
    sys.exit(exit_code)


def _without_closed_loop_errors(unraisablehook):
  """sys.unraisablehook without TensorStore's echo of a failed save: its callbacks report
  "RuntimeError: Event loop is closed" once per pending write after orbax gave up."""
  def hook(unraisable):
    if not (unraisable.exc_type is RuntimeError and
            str(unraisable.exc_value) == "Event loop is closed"):
      unraisablehook(unraisable)
  return hook


def _without_orbax_errors(record: logging.LogRecord) -> bool:
  """Drops orbax's error records (tracebacks of a failed save, reported in one line)."""
  return not (record.levelno >= logging.ERROR and
              f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main, flags_parser=parse_flags)
