"""Training runs that fail loudly, never hang, never lose a line (issue 20, training side).

A full disk, an unwritable checkpoints/, a stuck save, a deleted lock, a moved workdir, a
damaged metrics.jsonl, a resume on other data or at another batch size, stop_at_step
already reached, an unwritable compilation cache, splits too small.

Real processes where the case is about processes (exit codes, signals, locks, mounts);
in-process where it is a function. Faults are real where this machine can make them: a
small tmpfs for the full disk (bytes, then inodes), `chattr +i` (root) or chmod 555 (not
root) for an unwritable folder. Where it cannot (no mount rights, no chattr), the fault is
injected at the filesystem call (tests/fault_injection.py) and the test prints which ran.
Nothing injects a hang for real on a local disk: the stuck save is always injected.
"""
import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, run_module
from test_fault_tolerance import (_checkpoint_steps, _metrics_steps, _running, _start,
                                  _wait_for_step)
from test_lifecycle import _host_state, _tiny_config
from test_train import _train_args

from simclr_jax import checkpointing
from simclr_jax import errors
from simclr_jax.training import checkpoints
from simclr_jax.training import run_control
from simclr_jax.training import settings
from simclr_jax.training import step_log

TESTS = pathlib.Path(__file__).resolve().parent
ENDLESS = ("--config.num_train_steps=100000",)


@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory):
  """synthetic_cxr/32 with 4 train images (fewer than a batch of 8) and 1 validation image."""
  from simclr_jax.data.synthetic_cxr import SyntheticCxr
  data_dir = tmp_path_factory.mktemp("small_tfds")
  SyntheticCxr(config="32", data_dir=str(data_dir), num_workers=1,
               split_sizes={"train": 4, "validation": 1, "test": 2}).download_and_prepare()
  return data_dir


def _stderr_lines(text):
  return [line for line in text.strip().splitlines() if line.strip()]


def _injected(kind, step):
  """Environment of a trainer started through tests/fault_injection.py."""
  return {"SIMCLR_TEST_FAULT": f"{kind}:{step}",
          "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS)])}


def _faulty_args(args):
  """`_train_args(...)` run through the fault injector instead of simclr_jax.train."""
  return ["fault_injection", *args[1:]]


@contextlib.contextmanager
def _tmpfs(path, options):
  """A tmpfs mounted at `path` with `options`; yields None where mounting is refused."""
  path.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                           capture_output=True).returncode == 0
  try:
    yield path if mounted else None
  finally:
    if mounted and subprocess.run(["umount", str(path)], capture_output=True).returncode:
      subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def _unwritable(folder):
  """Makes `folder` unwritable for this user: `chattr +i` as root (permission bits do not
  stop root), chmod 555 otherwise. Yields how, or None where neither works."""
  if os.geteuid() == 0:
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    how, undo = "chattr +i", ["chattr", "-i", str(folder)]
  else:
    folder.chmod(0o555)
    made = not os.access(folder, os.W_OK)
    how, undo = "chmod 555", ["chmod", "755", str(folder)]
  try:
    yield how if made else None
  finally:
    subprocess.run(undo, capture_output=True)


def _assert_one_line_error(trainer, start):
  """Exit 2, no traceback, and the last line of stderr starts with `start`."""
  stderr = trainer.stderr
  lines = _stderr_lines(stderr)
  assert trainer.returncode == 2, stderr[-3000:]
  assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr[-3000:]
  assert lines[-1].startswith(start), lines[-1]
  return lines


def _assert_intact(workdir, below):
  """The complete checkpoints are those before step `below`, the newest restorable, and no
  temporary directory is left."""
  steps = checkpointing.complete_steps(str(workdir))
  assert steps and steps[-1] < below, steps
  assert checkpointing.incomplete_checkpoints(str(workdir)) == []
  _, _, restored = checkpointing.load_for_eval(str(workdir))
  assert restored == steps[-1]
  return steps


# ------------------------------------------------------------------- point 1: saves

def test_full_disk_stops_the_run_at_once_with_one_line(tmp_path, synthetic_data_dir,
                                                       report_figures):
  """Bytes (a 640 kB tmpfs, saves in the background) and inodes (a tmpfs of 60 inodes,
  saves in the foreground), two trainers at once. Each stops with one line naming the
  step, the path and the cause, exit 2, its newest complete checkpoint intact and no
  temporary folder left (the background failure used to go unnoticed until the next save,
  then end in ~740 lines of tracebacks; the inodes case could hang). Without mount rights,
  ENOSPC is injected at the background commit and at the foreground folder creation
  instead (tests/fault_injection.py)."""
  # A checkpoint of this model is ~400 kB and 33 inodes: the second save fails.
  cases = {"bytes": ("size=640k", "--config.checkpoint_every_steps=10", "enospc_commit", 20),
           "inodes": ("size=16m,nr_inodes=60", "--config.checkpoint_every_steps=3",
                      "enospc_mkdir", 6)}
  with contextlib.ExitStack() as stack:
    trainers, how = {}, {}
    for name, (options, every, kind, step) in cases.items():
      mounted = stack.enter_context(_tmpfs(tmp_path / name, options))
      workdir = tmp_path / name   # the whole tmpfs (the logs go beside it)
      args = _train_args(workdir, synthetic_data_dir, *ENDLESS, every,
                         f"--config.async_checkpointing={name == 'bytes'}")
      if mounted:
        trainers[name], how[name] = _start(args), f"tmpfs {options}"
      else:
        trainers[name] = _start(_faulty_args(args), **_injected(kind, step))
        how[name] = f"injected {kind} at checkpoint {step} (no mount rights)"
    print(f"full disk: {how}")
    stack.enter_context(_running(*trainers.values()))
    for trainer in trainers.values():
      trainer.wait(timeout=240)
    figures = {}   # read before the tmpfs goes
    for name, trainer in trainers.items():
      workdir = tmp_path / name
      lines = _assert_one_line_error(trainer, "error: cannot save checkpoint ")
      step = int(lines[-1].split()[4])
      assert (f" to {workdir}/checkpoints/{step}: No space left on device [errno 28"
              in lines[-1])
      stopped = int(lines[-1].split("; stopped at step ")[1].split(".")[0])
      every = int(cases[name][1].split("=")[1])
      if name == "bytes":   # background: caught by the check after the step on which the
        # save gave up (a few steps later on a tmpfs; the injected fault comes at the end of
        # the save), at the latest by the next save
        assert step < stopped <= step + every, lines[-1]
      else:                 # foreground: at once
        assert stopped == step
      assert f"The newest complete checkpoint, step {step - every}, is kept" in lines[-1]
      assert _assert_intact(workdir, below=step)[-1] == step - every
      assert _metrics_steps(workdir) == list(range(1, _metrics_steps(workdir)[-1] + 1))
      figures[name] = {"how": how[name], "exit_code": trainer.returncode,
                       "failed_checkpoint": step, "stopped_at_step": stopped,
                       "stderr_lines": len(lines), "checkpoints": _checkpoint_steps(workdir)}
  report_figures(figures)


def test_a_full_disk_under_the_event_writer_is_one_warning_not_a_traceback(
    tmp_path, caplog, capsys):
  """tensorboardX writes its event file from its own thread; a full disk there (the fault
  injected at its file's write: ENOSPC) is one warning line, no thread traceback. The
  full-disk run above reaches this only when the event file is flushed at the wrong time."""
  import threading
  events = tmp_path / "tensorboard"
  before = threading.excepthook
  step_log._report_event_writer_errors(str(events))
  try:
    writer = step_log._summary_writer_class()(str(events), flush_secs=1)
    record_writer = writer._get_file_writer().event_writer._ev_writer._py_recordio_writer

    class FullDisk:
      def write(self, data):
        raise OSError(28, "No space left on device")
      def flush(self):
        pass
      def close(self):
        pass
    record_writer._writer = FullDisk()
    worker = writer._get_file_writer().event_writer._worker
    with caplog.at_level("WARNING"):
      writer.add_scalar("loss", 1.0, 1)
      worker.join(timeout=30)   # the thread ends on the error
      assert not worker.is_alive()
    assert f"TensorBoard events: cannot write {events} (No space left on device)" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
  finally:
    threading.excepthook = before


def test_unwritable_checkpoints_folder_stops_the_run_with_one_line(tmp_path,
                                                                   synthetic_data_dir):
  """checkpoints/ exists but cannot be written (the workdir can): the first save stops the
  run, exit 2, one line (it used to hang in orbax's background folder creation, deaf to
  SIGTERM). `chattr +i` as root, chmod 555 otherwise; else EACCES injected at mkdir."""
  workdir = tmp_path / "w"
  (workdir / "checkpoints").mkdir(parents=True)
  args = _train_args(workdir, synthetic_data_dir, *ENDLESS,
                     "--config.checkpoint_every_steps=2")
  with _unwritable(workdir / "checkpoints") as how:
    if how is None:
      how = "injected EACCES at mkdir"
      trainer = _start(_faulty_args(args), **_injected("eacces_mkdir", 2))
    else:
      trainer = _start(args)
    print(f"unwritable checkpoints/: {how}")
    with _running(trainer):
      trainer.wait(timeout=240)
  lines = _assert_one_line_error(trainer, f"error: cannot save checkpoint 2 to "
                                          f"{workdir}/checkpoints/2: ")
  assert any(cause in lines[-1] for cause in
             ("Operation not permitted", "Permission denied", "Read-only file system"))
  assert lines[-1].endswith("; stopped at step 2. No checkpoint was completed.")
  assert os.listdir(workdir / "checkpoints") == []


def test_sigterm_ends_a_stuck_save_after_the_grace(tmp_path, synthetic_data_dir,
                                                   report_figures):
  """The commit of checkpoint 2 never returns (injected: a rename stuck in the kernel), so
  the save of step 4 waits for it. SIGTERM then ends the run stop_grace_seconds later, exit
  2, one line naming the checkpoint; it used to wait forever."""
  workdir = tmp_path / "w"
  args = _train_args(workdir, synthetic_data_dir, *ENDLESS,
                     "--config.checkpoint_every_steps=2", "--config.stop_grace_seconds=2")
  trainer = _start(_faulty_args(args), **_injected("hang_commit", 2))
  with _running(trainer):
    _wait_for_step(trainer, workdir, 4)
    time.sleep(0.5)
    assert trainer.poll() is None and _metrics_steps(workdir)[-1] == 4   # stuck at step 4
    signalled = time.monotonic()
    trainer.send_signal(signal.SIGTERM)
    trainer.wait(timeout=60)
  seconds = time.monotonic() - signalled
  lines = _assert_one_line_error(
      trainer, f"error: checkpoint 2 ({workdir}/checkpoints/2) was still being written 2 s "
               f"after SIGTERM (config.stop_grace_seconds): the save is stuck; stopped at "
               f"step 4 without it.")
  assert 2 <= seconds < 12, seconds
  report_figures({"exit_code": trainer.returncode, "seconds_after_sigterm": round(seconds, 1),
                  "last_line": lines[-1]})


def test_the_watchdog_ends_a_run_stuck_after_a_signal():
  """Whatever else hangs after SIGTERM (here: a step that never returns), the process
  ends grace + margin seconds later with one line, exit 2."""
  code = ("import os, signal, time\n"
          "from simclr_jax.training import run_control\n"
          "run_control.WATCHDOG_MARGIN_SECONDS = 0.5\n"
          "stop = run_control.StopSignals(grace_seconds=0.5)\n"
          "os.kill(os.getpid(), signal.SIGTERM)\n"
          "time.sleep(600)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, cwd=REPO_ROOT,
                        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert _stderr_lines(proc.stderr)[-1].startswith(
      "error: stopping on SIGTERM did not finish within 1 s")


# ------------------------------------------------------------------- point 2: the lock

def _hold_lock_in_another_process(path):
  """A process that locks `path` (fcntl, as a trainer does) and waits; returns it."""
  code = ("import fcntl, json, os, sys, time\n"
          f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
          "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
          "record = {'host': 'h', 'pid': os.getpid(), 'started': 't'}\n"
          "os.write(fd, json.dumps(record).encode())\n"
          "print('locked', flush=True)\n"
          "time.sleep(600)\n")
  holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  return holder


def test_a_deleted_lock_is_taken_again_a_stolen_one_or_a_moved_workdir_stops(tmp_path,
                                                                            caplog):
  workdir = tmp_path / "w"
  lock = run_control.WorkdirLock.acquire(str(workdir))
  lock.check(1)
  (workdir / ".lock").unlink()                       # rm W/.lock
  lock.check(2)
  assert lock.holds() and "was deleted while training (noticed after step 2); locked it " \
      "again" in caplog.text
  assert json.loads((workdir / ".lock").read_text())["pid"] == os.getpid()

  (workdir / ".lock").unlink()                       # and another process took it first
  holder = _hold_lock_in_another_process(workdir / ".lock")
  try:
    with pytest.raises(errors.WorkdirLost) as raised:
      lock.check(3)
  finally:
    holder.kill()
    holder.wait()
  assert "was replaced while training and another trainer holds it now (host h, PID " \
      f"{holder.pid}" in str(raised.value) and raised.value.exit_code == 2
  lock.release()

  moved = run_control.WorkdirLock.acquire(str(tmp_path / "m"))
  (tmp_path / "m").rename(tmp_path / "m2")
  with pytest.raises(errors.WorkdirLost, match=r"--workdir=.*/m was moved or deleted while "
                                                r"training \(noticed after step 5\)"):
    moved.check(5)
  moved.release()
  assert not (tmp_path / "m").exists()              # nothing made at the old path


def test_lock_deleted_then_workdir_moved_under_a_running_trainer(tmp_path, synthetic_data_dir,
                                                                 report_figures):
  """`rm W/.lock` while a trainer runs, then the same command again: the second trainer is
  refused (the first locked the file again). Then the workdir is moved away: the first
  stops with one line, exit 2, and nothing is made again at the old path. Its metrics
  have one line per step. The same command with stop_at_step at or below the step reached
  then stops at once, training nothing."""
  workdir, moved = tmp_path / "w", tmp_path / "moved"
  args = _train_args(workdir, synthetic_data_dir, *ENDLESS,
                     "--config.checkpoint_every_steps=3")
  first = _start(args)
  with _running(first):
    _wait_for_step(first, workdir, 3)
    (workdir / ".lock").unlink()
    second = _start(args)
    with _running(second):
      second.wait(timeout=120)
    assert first.poll() is None, first.stderr[-3000:]
    os.rename(workdir, moved)
    first.wait(timeout=120)
  # The second trainer: refused, naming the first.
  assert second.returncode == 2, second.stderr[-3000:]
  assert _stderr_lines(second.stderr)[-1].startswith(
      f"error: --workdir={workdir} is in use by another trainer (host ")
  assert f"PID {first.proc.pid}" in second.stderr
  assert "was deleted while training" in first.stderr and "locked it again" in first.stderr
  # The first: stopped when its workdir went away, nothing recreated there.
  _assert_one_line_error(first, f"error: --workdir={workdir} was moved or deleted while "
                                f"training (noticed after step ")
  assert not workdir.exists()
  steps = _metrics_steps(moved)
  assert steps == list(range(1, steps[-1] + 1))     # no duplicated or out-of-order step
  saved = _checkpoint_steps(moved)[-1]

  again = run_module(_train_args(moved, synthetic_data_dir, *ENDLESS,
                                 "--config.checkpoint_every_steps=3",
                                 f"--config.stop_at_step={saved}"), timeout=120)
  assert f"Checkpoint step {saved} is at or past config.stop_at_step={saved}; nothing to " \
      f"train" in again.stderr
  assert _metrics_steps(moved) == steps and _checkpoint_steps(moved)[-1] == saved
  report_figures({"second_trainer_exit_code": second.returncode,
                  "first_trainer_exit_code": first.returncode, "metrics_lines": len(steps),
                  "old_path_exists": workdir.exists(), "stop_at_step_rerun_exit_code":
                  again.returncode})


# ------------------------------------------------------------------- point 3: metrics

def test_a_damaged_metrics_line_is_set_aside_and_only_later_steps_dropped(tmp_path, caplog):
  """`sed -i '6i garbage' metrics.jsonl`, then a resume at step 15: the valid steps after
  the bad line stay (they used to be cut), the bad line is kept aside with its line number,
  and the lines of steps 16-20 (trained again) are dropped and counted."""
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": step, "loss": 1.0}) + "\n" for step in range(1, 21)]
  lines.insert(5, "garbage\n")
  lines.insert(9, json.dumps({"step": 3, "loss": 9.0}) + "\n")   # out of order
  path.write_text("".join(lines))
  inode = path.stat().st_ino
  caplog.set_level("WARNING")
  writer = step_log.MetricsWriter(str(tmp_path), start_step=15)
  writer.write(16, {"loss": 2.0})
  writer.close()
  assert path.stat().st_ino == inode
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(1, 17))
  [aside] = tmp_path.glob("metrics.jsonl.damaged-*")
  assert [json.loads(line) for line in aside.read_text().splitlines()] == [
      {"line": 6, "text": "garbage\n"}, {"line": 10, "text": lines[9]}]
  assert f"2 line(s) that cannot be read or are out of step order (line 6, 10) set aside " \
      f"in {aside}" in caplog.text
  assert "dropped 5 line(s) of steps after the restored checkpoint 15" in caplog.text


# ------------------------------------------------------------------- point 5: resumes

def test_resume_on_other_data_is_refused_unless_allowed(tmp_path, synthetic_data_dir,
                                                        small_data_dir):
  workdir = tmp_path / "w"
  manager = checkpointing.create_manager(str(workdir), max_to_keep=3, async_saves=False)
  iterator = _plain_iterator()
  checkpointing.save(manager, 3, _host_state(3), np.zeros(2, np.uint32), iterator)
  manager.close()
  plan = settings.check_run(_tiny_config(synthetic_data_dir))
  settings.record_config(str(workdir), plan.config, {}, 0, dataset=plan.dataset)
  assert json.loads((workdir / "dataset.json").read_text())["split_sizes"]["train"] == 96

  other = settings.check_run(_tiny_config(small_data_dir))
  with pytest.raises(errors.ConfigError) as raised:
    settings.check_workdir_config(str(workdir), other.config, (), dataset=other.dataset)
  message = str(raised.value)
  assert "\n" not in message and "at step 3 trained on other data than" in message
  assert f"{small_data_dir}/synthetic_cxr/32/" in message and "metadata.json" in message
  assert "split_sizes.train 96 -> 4" in message, message
  assert message.endswith("--allow_config_changes=data_dir.")
  changes = settings.check_workdir_config(str(workdir), other.config, ["data_dir"],
                                          dataset=other.dataset)
  assert changes["dataset.json: split_sizes.train"] == (96, 4)

  copy = tmp_path / "copy"                           # the same data, moved: fine
  shutil.copytree(synthetic_data_dir, copy)
  same = settings.check_run(_tiny_config(copy))
  assert set(settings.check_workdir_config(str(workdir), same.config, (),
                                           dataset=same.dataset)) == {"data_dir"}
  # A workdir from before dataset.json: compared with the data its config.json names.
  (workdir / "dataset.json").unlink()
  with pytest.raises(errors.ConfigError, match="split_sizes.train 96 -> 4"):
    settings.check_workdir_config(str(workdir), other.config, (), dataset=other.dataset)


def _plain_iterator():
  import grain
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def test_resume_with_another_batch_size_restores_the_data_position(tmp_path,
                                                                  synthetic_data_dir,
                                                                  caplog):
  """Saved at batch 8 after 10 batches (80 examples); resumed at batch 16 it goes on at
  batch 5 (the same next examples), at batch 12 at batch 7 (4 examples skipped). The
  checkpoint is never called damaged."""
  from simclr_jax import data
  def iterator(batch_size):
    return data.create_train_iterator(_tiny_config(
        synthetic_data_dir, batch_size=batch_size, **{"input.num_workers": 0}))
  saved = iterator(8)
  saved.set_state(dict(saved.get_state(), global_batches_consumed=10))
  workdir = tmp_path / "w"
  manager = checkpointing.create_manager(str(workdir), max_to_keep=3, async_saves=False)
  checkpointing.save(manager, 10, _host_state(10), np.zeros(2, np.uint32), saved)
  manager.close()
  expected = np.concatenate([next(saved)["image"], next(saved)["image"]], axis=1)
  caplog.set_level("WARNING")
  for batch_size, position in ((16, 5), (12, 7)):
    resumed = iterator(batch_size)
    _, _, step = checkpoints.restore_newest_good(str(workdir), _host_state(0),
                                                 np.zeros(2, np.uint32), resumed)
    assert step == 10 and resumed.get_state()["global_batches_consumed"] == position
    if batch_size == 16:
      np.testing.assert_array_equal(next(resumed)["image"], expected)
    resumed.close()
  saved.close()
  assert "resuming at batch 7 of size 12 (4 examples skipped)" in caplog.text
  assert checkpointing.complete_steps(str(workdir)) == [10]
  assert not list((workdir / "checkpoints").glob("damaged-*"))


# ------------------------------------------------------------------- point 5: the rest

def test_unwritable_compilation_cache_is_one_warning_and_off(tmp_path, monkeypatch, caplog):
  """The cache is off with one warning (JAX warned at every entry, and the log still said
  'now cached in ...'). chattr +i as root, chmod 555 otherwise, else a write error injected."""
  import jax
  from simclr_jax.runtime import compilation_cache
  folder = tmp_path / "cache"
  folder.mkdir()
  config = _tiny_config("unused", compilation_cache_dir=str(folder))
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {name: getattr(jax.config, name) for name in names}
  monkeypatch.setattr(compilation_cache, "_enabled_dir", None)
  caplog.set_level("WARNING")
  with _unwritable(folder) as how:
    if how is None:
      how = "injected: writing into it raises EACCES"
      import tempfile
      def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
      monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    print(f"unwritable compilation cache: {how}")
    try:
      enabled = compilation_cache.enable(config)
    finally:
      for name, value in before.items():
        jax.config.update(name, value)
  assert enabled is None
  [warning] = [r.getMessage() for r in caplog.records if "ompilation cache" in r.getMessage()]
  assert warning.startswith(f"Compilation cache off: cannot write to {folder} (")
  assert list(folder.iterdir()) == []


def test_splits_too_small_name_the_numbers_and_the_fields(small_data_dir, caplog):
  """4 training images for a batch of 8: a warning with both numbers. 1 validation image
  for the online monitor: one line naming config.online_eval.eval_split (it named
  `--label_mode`, a flag of evaluate, not of the trainer)."""
  from simclr_jax.evaluation import online
  caplog.set_level("WARNING")
  plan = settings.check_run(_tiny_config(small_data_dir, eval_every_steps=2))
  assert ("config.train_split='train' of synthetic_cxr/32 has 4 images, fewer than "
          "config.batch_size=8: every batch repeats them") in caplog.text
  assert settings.warn_if_split_smaller_than_batch(8, 8, "x") is False
  with pytest.raises(ValueError) as raised:
    online.OnlineMonitor(plan.config)
  message = str(raised.value)
  assert message.startswith("config.online_eval.eval_split='validation' of synthetic_cxr/32 "
                            "gives the online monitor 1 image(s)")
  assert "--config.eval_every_steps=0" in message and "--label_mode" not in message
