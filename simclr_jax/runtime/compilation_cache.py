"""JAX's persistent compilation cache, on by default: a restart skips compiling.

The train step of ResNet-50 takes 28-30 s to compile on a GPU, at every start and every
resume. With the cache, a process that compiles a computation it compiled before (same
program, same devices, same JAX/XLA version) loads the executable from disk instead.

Where the cache lives (the first that is set):
  1. config.compilation_cache_dir
  2. the environment variable SIMCLR_COMPILATION_CACHE (a path; `off` disables the cache)
  3. $XDG_CACHE_HOME/simclr_jax/xla, else ~/.cache/simclr_jax/xla
`config.compilation_cache = False` (or SIMCLR_COMPILATION_CACHE=off) turns it off.

The cache is trusted code: do not point it at a folder others can write to.
"""
import logging
import os
import tempfile
import threading
from typing import Optional

import jax

ENV_VAR = "SIMCLR_COMPILATION_CACHE"
_OFF = ("off", "0", "false", "no", "none")
# Cache every computation that takes at least this long to compile: the train and
# evaluation steps (seconds) but not the many tiny helper computations (milliseconds).
MIN_COMPILE_SECONDS = 0.2

_events = {"/jax/compilation_cache/cache_hits": 0, "/jax/compilation_cache/cache_misses": 0}
_events_lock = threading.Lock()
_listening = False
_enabled_dir: Optional[str] = None


def _count_event(event: str, **kwargs) -> None:
  del kwargs
  if event in _events:
    with _events_lock:
      _events[event] += 1


def cache_hits() -> int:
  """Executables loaded from the persistent cache by this process so far."""
  return _events["/jax/compilation_cache/cache_hits"]


def cache_writes() -> int:
  """Executables compiled and written to the persistent cache by this process so far."""
  return _events["/jax/compilation_cache/cache_misses"]


def default_directory() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "simclr_jax", "xla")


def resolve_directory(config=None) -> Optional[str]:
  """The cache directory `enable` would use, or None when the cache is off."""
  configured = ""
  if config is not None:
    from simclr_jax.config import with_defaults   # a workdir's config.json may be older
    config = with_defaults(config)
    if not config.compilation_cache:
      return None
    configured = config.compilation_cache_dir
  from_env = os.environ.get(ENV_VAR, "").strip()
  if from_env.lower() in _OFF:
    return None
  return os.path.abspath(os.path.expanduser(configured or from_env or default_directory()))


def enable(config=None) -> Optional[str]:
  """Turns on JAX's persistent compilation cache for this process.

  Call it before the first computation you want cached; calling it again with the
  same directory does nothing.

  Args:
    config: an experiment config (uses compilation_cache, compilation_cache_dir), or None
      for the environment/default directory.

  Returns:
    The cache directory, or None when the cache is off (by config or environment) or the
    directory cannot be created or written (one warning; JAX would otherwise warn at
    every computation it fails to cache).
  """
  global _listening, _enabled_dir
  if not _listening:
    jax.monitoring.register_event_listener(_count_event)
    _listening = True
  directory = resolve_directory(config)
  if directory is None or directory == _enabled_dir:
    return directory
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as error:
    logging.warning("Compilation cache off: cannot create %s (%s).", directory, error)
    return None
  try:   # a real write: permission bits do not stop root, a read-only mount or +i does
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
      pass
  except OSError as error:
    logging.warning("Compilation cache off: cannot write to %s (%s); set "
                    "config.compilation_cache_dir or %s to a writable folder.", directory,
                    error.strerror or error, ENV_VAR)
    return None
  from jax.experimental.compilation_cache import compilation_cache as jax_cache
  if _enabled_dir is not None:
    jax_cache.reset_cache()   # another directory: JAX opens its cache once per directory
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)   # any size
  _enabled_dir = directory
  logging.debug("Persistent compilation cache: %s", directory)
  return directory
