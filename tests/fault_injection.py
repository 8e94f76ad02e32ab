"""`python -m simclr_jax.train` with a fault injected at a filesystem call.

For the process tests of failed and stuck saves (tests/test_run_failures.py) where the
machine cannot make the real fault: a full tmpfs needs mount rights, an unwritable folder
needs `chattr +i` or a read-only bind mount (root ignores permission bits), and nothing
on a local disk makes a save hang. Run as

  SIMCLR_TEST_FAULT=KIND:STEP python -m fault_injection ARGS-OF-simclr_jax.train

(tests/ on PYTHONPATH). KIND:
  enospc_commit   the rename that commits checkpoint STEP (orbax's background finalize)
                  fails with ENOSPC, as a full disk fails a background write
  enospc_mkdir    making the folders of checkpoint STEP (the save's foreground part) fails
                  with ENOSPC, as a disk without free inodes does
  eacces_mkdir    the same with EACCES, as an unwritable checkpoints/ does
  hang_commit     the rename that commits checkpoint STEP never returns: a save stuck in a
                  system call (a hung network filesystem)
"""
import errno
import os
import runpy
import sys
import threading


def _is_step_folder(path, step: int) -> bool:
  name = os.path.basename(os.fspath(path))
  return name.startswith(f"{step}.orbax-checkpoint-tmp")


def install(kind: str, step: int) -> None:
  """Patches os.rename / os.mkdir for the checkpoint of `step`."""
  rename, mkdir = os.rename, os.mkdir

  def faulty_rename(src, dst, *args, **kwargs):
    if _is_step_folder(src, step):
      if kind == "hang_commit":
        threading.Event().wait()          # forever
      if kind == "enospc_commit":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(src))
    return rename(src, dst, *args, **kwargs)

  def faulty_mkdir(path, *args, **kwargs):
    if kind in ("eacces_mkdir", "enospc_mkdir") and _is_step_folder(path, step):
      code = errno.EACCES if kind == "eacces_mkdir" else errno.ENOSPC
      raise OSError(code, os.strerror(code), os.fspath(path))
    return mkdir(path, *args, **kwargs)

  os.rename, os.mkdir = faulty_rename, faulty_mkdir


if __name__ == "__main__":
  fault_kind, fault_step = os.environ["SIMCLR_TEST_FAULT"].split(":")
  install(fault_kind, int(fault_step))
  sys.argv[0] = "simclr_jax.train"
  runpy.run_module("simclr_jax.train", run_name="__main__", alter_sys=True)
