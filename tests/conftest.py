"""Shared test helpers.

The pytest process itself sees one CPU device. Tests that need several devices are ordinary
test functions in tests/multidevice/, run as their own pytest invocation on 4 fake CPU
devices (its conftest sets them before jax starts); this invocation leaves that package out.
Subprocesses (``run_module``) are for what needs real processes: the CLI, signals, kills,
locks, several processes.
"""
import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# What the user asked for (e.g. JAX_PLATFORMS=cpu ./launch.sh test), before the default below:
# test_doctor's accelerator test runs on the default backend unless the user pinned one.
USER_JAX_PLATFORMS = os.environ.get("JAX_PLATFORMS")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The persistent XLA compilation cache (simclr_jax/runtime/compilation_cache.py) of this test
# session, inherited by every subprocess: a process compiling a program compiled before in
# the session loads it instead, and nothing is written into the user's ~/.cache. Set
# SIMCLR_COMPILATION_CACHE (a path, or off) to choose otherwise.
if "SIMCLR_COMPILATION_CACHE" not in os.environ:
  _SESSION_XLA_CACHE = tempfile.mkdtemp(prefix="simclr_jax_xla_cache_")
  atexit.register(shutil.rmtree, _SESSION_XLA_CACHE, ignore_errors=True)
  os.environ["SIMCLR_COMPILATION_CACHE"] = _SESSION_XLA_CACHE


def subprocess_env(num_devices: int = 1, **extra) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_module(args: list, num_devices: int = 1, timeout: float = 600, check: bool = True,
               **env) -> subprocess.CompletedProcess:
  """Runs `python -m ...args` like a user would type it; returns the CompletedProcess."""
  proc = subprocess.run(
      [sys.executable, "-m", *map(str, args)], capture_output=True, text=True,
      timeout=timeout, env=subprocess_env(num_devices, **env), cwd=REPO_ROOT)
  if check and proc.returncode != 0:
    raise AssertionError(
        f"{' '.join(map(str, args))} failed (rc={proc.returncode})\n"
        f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-8000:]}")
  return proc


def every_evaluator(**settings) -> dict:
  """{evaluator: settings} of every evaluator (the evaluate CLI's default --evaluators),
  with `settings` for some: the mapping `simclr_jax.evaluation.from_config` builds."""
  from simclr_jax.evaluation import EVALUATORS
  return {name: settings.get(name, {}) for name in EVALUATORS}


def pytest_ignore_collect(collection_path, config):
  """tests/multidevice needs its own process (4 devices set before jax starts): collected
  only when it is named on the command line (`pytest tests/multidevice`)."""
  if collection_path.name == "multidevice" and collection_path.parent == pathlib.Path(
      __file__).parent:
    named = [pathlib.Path(arg.split("::")[0]).resolve() for arg in config.args]
    return not any(collection_path == path or collection_path in path.parents
                   for path in named)
  return None


# The test files that start the most training processes, longest first (measured on 2 cores).
# `./launch.sh test` hands whole files to its workers (pytest-xdist --dist loadfile) in
# collection order: these go first, so none of them starts last and runs alone at the end.
# The other files keep their order, and every file keeps its tests' order.
LONGEST_FILES_FIRST = ("test_fault_tolerance.py", "test_evaluate.py", "test_train.py",
                       "test_finetune.py", "test_lifecycle.py", "test_run_failures.py",
                       "test_evaluate_output.py", "test_benchmark.py", "test_end_to_end_nih.py",
                       "test_own_data.py", "test_baseline.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable


@pytest.fixture
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.exists():
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> pathlib.Path:
  """A tiny synthetic_cxr/32 (TFDS ArrayRecord) shared by the tests of one session."""
  from simclr_jax.data.synthetic_cxr import SyntheticCxr
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = SyntheticCxr(config="32", data_dir=str(data_dir),
                         split_sizes={"train": 96, "validation": 16, "test": 40})
  builder.download_and_prepare()
  return data_dir


# ---------------------------------------------------------------- figures in the CI log
# The process tests' figures (exit codes, checkpoints, metrics lines) are printed at the end of
# every run, passed or not, so a CI log carries them without -s.
_FIGURES: list = []


@pytest.fixture
def report_figures(request):
  """report_figures(dict): adds the test's figures to the summary printed after the run."""
  def add(figures: dict) -> None:
    _FIGURES.append((request.node.nodeid, figures))
  return add


def pytest_terminal_summary(terminalreporter):
  if _FIGURES:
    terminalreporter.section("figures of the process tests")
    for nodeid, figures in _FIGURES:
      terminalreporter.write_line(f"{nodeid}: {json.dumps(figures)}")
