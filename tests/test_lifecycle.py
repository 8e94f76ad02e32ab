"""A workdir survives its users: settings checks, one trainer per workdir, Ctrl-C, damaged
checkpoints, metrics.jsonl under resume, read-only evaluation, the compilation cache.

In-process where the behaviour is a function (settings, checkpoints, metrics file);
real processes where it is about processes (lock, signals, live evaluation, exit codes).
"""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import grain
import numpy as np
import pytest

from conftest import REPO_ROOT, run_module
from test_fault_tolerance import (_checkpoint_steps, _metrics_steps, _running, _start,
                                  _wait_for_step)
from test_train import _train_args

from simclr_jax import checkpointing
from simclr_jax import errors
from simclr_jax.runtime import compilation_cache
from simclr_jax.training import checkpoints
from simclr_jax.training import run_control
from simclr_jax.training import settings
from simclr_jax.training import step_log


def _tiny_config(prepared_data_dir, **overrides):
  """The CLI tests' config (test_train._train_args) as a ConfigDict, 10 steps."""
  from experiments.configs import demo
  config = demo.get_config()
  config.dataset, config.image_size = "synthetic_cxr/32", 32
  config.data_dir = str(prepared_data_dir)
  config.model, config.batch_size = "resnet_tiny", 8
  config.head.hidden_dim, config.head.output_dim = 32, 16
  config.num_train_steps, config.optimizer.warmup_steps = 10, 0
  config.eval_every_steps = 0  # the demo's online monitor has its own tests
  for dotted, value in overrides.items():
    *sections, field = dotted.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[field] = value
  return config


# ------------------------------------------------------------------- settings (exit 2)

# (what, overrides, words the one-line message must hold). 96 training images, batch 8:
# 12 steps per epoch; the run is 10 steps.
BAD_SETTINGS = [
    ("learning rate < 0", {"optimizer.learning_rate": -0.01},
     ["config.optimizer.learning_rate=-0.01", "> 0"]),
    ("learning rate 0", {"optimizer.learning_rate": 0.0},
     ["config.optimizer.learning_rate=0.0", "> 0"]),
    ("temperature 0", {"loss.temperature": 0.0}, ["config.loss.temperature=0.0", "> 0"]),
    ("temperature < 0", {"loss.temperature": -0.5}, ["config.loss.temperature=-0.5", "> 0"]),
    ("zero steps", {"num_train_steps": 0},
     ["config.num_train_steps=0", "zero steps", "-1 to train for config.num_epochs"]),
    ("zero epochs", {"num_train_steps": -1, "num_epochs": 0},
     ["config.num_epochs=0", "zero epochs"]),
    ("batch < 0", {"batch_size": -4}, ["config.batch_size=-4", "positive", "e.g. 32"]),
    ("batch 0", {"batch_size": 0}, ["config.batch_size=0", "positive"]),
    ("warm-up steps longer than the run", {"optimizer.warmup_steps": 50},
     ["config.optimizer.warmup_steps=50", "longer than the run (10 steps)", "at most 10"]),
    ("warm-up epochs longer than the run",
     {"optimizer.warmup_steps": -1, "optimizer.warmup_epochs": 2.0},
     ["config.optimizer.warmup_epochs=2.0", "24 steps", "longer than the run (10 steps)"]),
    ("unknown dataset", {"dataset": "chexpert/64"},
     ["config.dataset='chexpert/64'", "synthetic_cxr/32", "nih_chest_xray14/224"]),
    ("unknown dataset size", {"dataset": "synthetic_cxr/33"},
     ["synthetic_cxr/33", "synthetic_cxr/32"]),
    ("data_dir not prepared", {"data_dir": "{empty}"},
     ["not prepared", "python -m simclr_jax.prepare synthetic_cxr"]),
    ("image larger than stored", {"image_size": 64}, ["config.image_size=64", "32px"]),
    ("checkpoint cadence", {"checkpoint_every_steps": 0}, ["config.checkpoint_every_steps=0"]),
]


@pytest.mark.parametrize("what, overrides, words", BAD_SETTINGS,
                         ids=[case[0] for case in BAD_SETTINGS])
def test_bad_settings_are_refused_in_one_line(what, overrides, words, tmp_path,
                                              synthetic_data_dir):
  overrides = {k: str(tmp_path) if v == "{empty}" else v for k, v in overrides.items()}
  with pytest.raises(errors.ConfigError) as raised:
    settings.check_run(_tiny_config(synthetic_data_dir, **overrides))
  message = str(raised.value)
  assert "\n" not in message, what
  for word in words:
    assert word in message, (what, message)
  assert raised.value.exit_code == 2
  assert not list(tmp_path.iterdir())                  # nothing written


def test_good_settings_give_the_run_plan_and_devices_are_checked(synthetic_data_dir):
  plan = settings.check_run(_tiny_config(synthetic_data_dir))
  assert (plan.total_steps, plan.steps_per_epoch, plan.per_device_batch) == (10, 12, 8)
  by_epochs = settings.check_run(_tiny_config(synthetic_data_dir, num_train_steps=-1,
                                                   num_epochs=2))
  assert by_epochs.total_steps == 24
  with pytest.raises(errors.ConfigError, match=r"batch_size=6 .* 4 devices.* 4 or 8"):
    settings.check_settings(_tiny_config(synthetic_data_dir, batch_size=6), 4)


def test_unknown_config_keys_and_unwritable_workdir(tmp_path, synthetic_data_dir):
  config = _tiny_config(synthetic_data_dir)
  assert "did you mean --config.optimizer.learning_rate?" in \
      settings.unknown_key_message(config, "optimizer.learning_rat")
  assert "--config.loss.temperature" in settings.unknown_key_message(config,
                                                                          "temperature")
  assert "no field 'foo'" in settings.unknown_key_message(config, "foo")
  assert settings.unknown_key_message(config, "optimizer.learning_rate") is None
  assert settings.unknown_key_message(config, "head") is None
  a_file = tmp_path / "file"
  a_file.write_text("")
  with pytest.raises(errors.WorkdirNotWritable, match="is not writable"):
    run_control.WorkdirLock.acquire(str(a_file / "run"))


def test_cli_unknown_key_is_one_line_with_a_suggestion(tmp_path):
  workdir = tmp_path / "w"
  proc = run_module(["simclr_jax.train", "--config", REPO_ROOT / "experiments/configs/demo.py",
                     "--workdir", workdir, "--config.optimizer.learning_rat=0.1"], check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      "error: --config.optimizer.learning_rat: the config has no field "
      "'optimizer.learning_rat'; did you mean --config.optimizer.learning_rate?"]
  assert not workdir.exists()
  # A mistyped config file: one line (ml_collections defers that error to first use).
  missing = run_module(["simclr_jax.train", "--config", "experiments/configs/demo2.py",
                        "--workdir", workdir], check=False)
  assert missing.returncode == 2, missing.stderr[-3000:]
  assert missing.stderr.strip().splitlines() == [
      "error: --config=experiments/configs/demo2.py: no such file (configs are in "
      "experiments/configs/)."]
  assert not workdir.exists()


# ------------------------------------------------------------------- checkpoints on disk

def _host_state(step):
  """A train-state-like tree; random values, so the array file does not compress away."""
  values = np.random.default_rng(step)
  return {"step": np.array(step, np.int32),
          "params": {"kernel": values.standard_normal((64, 32), np.float32)},
          "batch_stats": {"mean": np.full((32,), step, np.float32)},
          "opt_state": {"mu": values.standard_normal((64, 32), np.float32)}}


def _iterator():
  return iter(grain.MapDataset.range(1000).shuffle(seed=1).to_iter_dataset())


def _save_steps(workdir, steps):
  """Real (asynchronous) checkpoints at `steps`; returns the iterator state of each."""
  checkpointing.write_config(str(workdir), _tiny_config("unused"))
  iterator, positions = _iterator(), {}
  manager = checkpointing.create_manager(str(workdir), max_to_keep=10, async_saves=True)
  for step in steps:
    for _ in range(3):
      next(iterator)
    positions[step] = iterator.get_state()
    checkpointing.save(manager, step, _host_state(step), np.array([0, step], np.uint32),
                       iterator)
    next(iterator)   # drawn while the save is written: not part of the checkpoint
  manager.close()
  return positions


def _tree_snapshot(root):
  return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in pathlib.Path(root).rglob("*"))


def test_load_for_eval_is_read_only_and_reads_only_complete_checkpoints(tmp_path):
  workdir = tmp_path / "w"
  _save_steps(workdir, [1, 2])
  # A save in flight: orbax's temporary directory of step 3 (an evaluation used to delete
  # it, killing the trainer).
  in_flight = workdir / "checkpoints" / "3.orbax-checkpoint-tmp-1234567"
  (in_flight / "state").mkdir(parents=True)
  (in_flight / "state" / "part").write_text("being written")
  before = _tree_snapshot(workdir)
  assert checkpointing.complete_steps(str(workdir)) == [1, 2]
  config, variables, step = checkpointing.load_for_eval(str(workdir))
  assert step == 2 and config.model == "resnet_tiny"
  np.testing.assert_array_equal(variables["params"]["kernel"], _host_state(2)["params"]["kernel"])
  _, variables, step = checkpointing.load_for_eval(str(workdir), step=1)
  assert step == 1 and variables["batch_stats"]["mean"][0] == 1.0
  assert _tree_snapshot(workdir) == before      # nothing created, changed or deleted


def _damage(step_dir, damage):
  if damage == "truncated array file":
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and
                  p.parent.name == "d"]
    largest = max(data_files, key=lambda p: p.stat().st_size)
    os.truncate(largest, largest.stat().st_size // 2)
  elif damage == "deleted _METADATA":
    (step_dir / "state" / "_METADATA").unlink()
  else:
    for path in (step_dir / "data_iter").glob("process_*.json"):
      path.unlink()


DAMAGES = {"truncated array file": "state unreadable",
           "deleted _METADATA": "missing state/_METADATA",
           "deleted data-iterator state": "data-iterator state"}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_resumed(
    tmp_path, damage, caplog):
  workdir = tmp_path / "w"
  positions = _save_steps(workdir, [1, 2])
  _damage(workdir / "checkpoints" / "2", damage)
  iterator = _iterator()
  caplog.set_level("WARNING")
  state, rng, step = checkpoints.restore_newest_good(
      str(workdir), _host_state(0), np.zeros(2, np.uint32), iterator)
  assert step == 1
  np.testing.assert_array_equal(state["params"]["kernel"], _host_state(1)["params"]["kernel"])
  np.testing.assert_array_equal(rng, [0, 1])
  assert iterator.get_state() == positions[1]          # the position saved with step 1
  assert (workdir / "checkpoints" / "damaged-2" / "state").is_dir()   # kept, not deleted
  assert checkpointing.complete_steps(str(workdir)) == [1]
  assert re.search(rf"Cannot restore checkpoint 2 in .*: .*{DAMAGES[damage]}", caplog.text)
  assert "Moved damaged checkpoint 2 to" in caplog.text


def test_no_restorable_checkpoint_names_each_and_moves_nothing(tmp_path):
  workdir = tmp_path / "w"
  _save_steps(workdir, [1, 2])
  _damage(workdir / "checkpoints" / "2", "deleted _METADATA")
  _damage(workdir / "checkpoints" / "1", "deleted data-iterator state")
  with pytest.raises(errors.NoUsableCheckpoint) as raised:
    checkpoints.restore_newest_good(str(workdir), _host_state(0), np.zeros(2, np.uint32),
                                    _iterator())
  message = str(raised.value)
  assert raised.value.exit_code == 2 and "\n" not in message
  assert "step 2: missing state/_METADATA" in message and "step 1: missing data_iter" in message
  assert checkpointing.complete_steps(str(workdir)) == [1, 2]


# ------------------------------------------------------------------- config and metrics

def test_resume_refuses_config_changes_that_alter_training_and_keeps_the_old_config(
    tmp_path, synthetic_data_dir):
  workdir = tmp_path / "w"
  _save_steps(workdir, [3])
  stored = json.loads((workdir / "config.json").read_text())
  config = _tiny_config("unused")
  changed = _tiny_config("unused", **{"optimizer.learning_rate": 0.01, "num_train_steps": 40,
                                      "input.num_workers": 2, "data_dir": "elsewhere"})
  with pytest.raises(errors.ConfigError) as raised:
    settings.check_workdir_config(str(workdir), changed, ())
  message = str(raised.value)
  assert "at step 3" in message and "optimizer.learning_rate 0.002 -> 0.01" in message
  assert "--allow_config_changes=optimizer.learning_rate." in message
  assert "num_train_steps" not in message and "num_workers" not in message
  assert settings.check_workdir_config(str(workdir), config, ()) == {}
  with pytest.raises(errors.ConfigError, match="did you mean"):
    settings.check_workdir_config(str(workdir), changed, ["optimizer.learning_rat"])

  changes = settings.check_workdir_config(str(workdir), changed, ["optimizer.learning_rate"])
  assert set(changes) == {"optimizer.learning_rate", "num_train_steps", "input.num_workers",
                          "data_dir"}
  settings.record_config(str(workdir), changed, changes, start_step=3)
  assert json.loads((workdir / "config.json").read_text())["optimizer"]["learning_rate"] == 0.01
  [record] = [json.loads(line) for line in
              (workdir / "config_history.jsonl").read_text().splitlines()]
  assert record["previous_config"] == stored and record["replaced_at_step"] == 3
  assert record["changes"]["optimizer.learning_rate"] == [0.002, 0.01]


def test_metrics_file_is_cut_in_place_on_resume(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": step, "loss": 1.0}) + "\n" for step in range(1, 9)]
  path.write_text("".join(lines) + '{"step": 9, "lo')     # the last line cut by a kill
  inode = path.stat().st_ino
  with open(path) as follower:                           # e.g. `tail -f metrics.jsonl`
    writer = step_log.MetricsWriter(str(tmp_path), start_step=5)
    writer.write(6, {"loss": 2.0})
    writer.close()
    assert path.stat().st_ino == inode                   # the same file, never replaced
    follower.seek(0)
    records = [json.loads(line) for line in follower]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert records[-1]["loss"] == 2.0


def test_compilation_cache_directory(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compilation_cache.resolve_directory() == str(tmp_path / "xdg" / "simclr_jax" / "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert compilation_cache.resolve_directory() == os.path.expanduser("~/.cache/simclr_jax/xla")
  monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "env"))
  config = _tiny_config("unused")
  assert compilation_cache.resolve_directory(config) == str(tmp_path / "env")
  config.compilation_cache_dir = str(tmp_path / "configured")
  assert compilation_cache.resolve_directory(config) == str(tmp_path / "configured")
  config.compilation_cache = False
  assert compilation_cache.resolve_directory(config) is None
  monkeypatch.setenv(compilation_cache.ENV_VAR, "off")
  assert compilation_cache.resolve_directory(_tiny_config("unused")) is None


# ------------------------------------------------------------------- real processes

@pytest.fixture
def read_only_data_dir(tmp_path, synthetic_data_dir):
  """A copy of the synthetic data that cannot be written (immutable when run as root)."""
  copy = tmp_path / "read_only_data"
  shutil.copytree(synthetic_data_dir, copy)
  subprocess.run(["chmod", "-R", "a-w", str(copy)], check=True)
  if os.geteuid() == 0:   # root ignores permissions, not the immutable attribute
    subprocess.run(["chattr", "-R", "+i", str(copy)], capture_output=True)
  yield copy
  subprocess.run(["chattr", "-R", "-i", str(copy)], capture_output=True)
  subprocess.run(["chmod", "-R", "u+w", str(copy)], check=True)


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_one_trainer_per_workdir_ctrl_c_saves_and_the_restart_skips_compiling(
    tmp_path, read_only_data_dir, report_figures):
  """A run's life: a second trainer is turned away, Ctrl-C saves and exits 130, the
  restart resumes there with the train step loaded from the compilation cache. The data
  directory is read-only throughout, and the log has a progress line every
  log_every_steps. The Ctrl-C goes to the whole process group, as a terminal sends it,
  Grain loader workers included."""
  workdir, cache = tmp_path / "w", tmp_path / "xla_cache"
  args = _train_args(workdir, read_only_data_dir, "--config.num_train_steps=100000",
                     "--config.checkpoint_every_steps=100000", "--config.log_every_steps=2",
                     "--config.input.num_workers=1")
  trainer = _start(args, new_session=True, SIMCLR_COMPILATION_CACHE=cache)
  with _running(trainer):
    _wait_for_step(trainer, workdir, 4)
    config_before = (workdir / "config.json").read_bytes()
    second = run_module(_train_args(workdir, read_only_data_dir,
                                    "--config.optimizer.learning_rate=0.01"), check=False,
                        SIMCLR_COMPILATION_CACHE=cache)
    assert trainer.poll() is None
    trainer.signal_group(signal.SIGINT)
    trainer.wait(timeout=120)
  # The second trainer: exit 2, one line naming the holder, nothing written.
  assert second.returncode == 2, second.stderr[-3000:]
  [line] = second.stderr.strip().splitlines()
  assert "is in use by another trainer" in line and f"PID {trainer.proc.pid}" in line
  assert (workdir / "config.json").read_bytes() == config_before
  assert not (workdir / "config_history.jsonl").exists()

  # Ctrl-C: saved at the step it was at, one line, exit 130.
  assert trainer.returncode == 130, trainer.stderr[-3000:]
  saved = _checkpoint_steps(workdir)[-1]
  last_line = trainer.stderr.strip().splitlines()[-1]
  assert last_line.startswith(f"Interrupted (Ctrl-C): saved checkpoint at step {saved} ")
  assert "Traceback" not in trainer.stderr and "KeyboardInterrupt" not in trainer.stderr
  assert "leaked" not in trainer.stderr   # the loader workers' shared memory
  assert _metrics_steps(workdir)[-1] == saved >= 4
  first = _metrics(workdir)[0]
  assert first["step"] == 1 and first["compilation_cache_hit"] is False
  assert first["first_step_seconds"] > 0

  # Progress on stdout (not a terminal): a line every 2 steps, then a summary.
  stdout = (workdir.parent / "w_logs" / "0.out").read_text().splitlines()
  progress = [re.fullmatch(r"\[train\] step (\d+)/100000 \(\S+\) epoch \S+ loss \S+ "
                           r"views/s \S+( ETA .+)?", line) for line in stdout[:-1]]
  assert all(progress), stdout
  steps = [int(match.group(1)) for match in progress]
  assert steps[:2] == [2, 4] and all(s % 2 == 0 for s in steps[:-1])
  assert stdout[-1].startswith(f"[train] interrupted (Ctrl-C) at step {saved}/100000, loss ")

  # The restart resumes at the saved step and loads the train step from the cache.
  resumed = run_module([*args, f"--config.stop_at_step={saved + 2}"],
                       SIMCLR_COMPILATION_CACHE=cache)
  assert f"Resumed from checkpoint step {saved}" in resumed.stderr
  records = _metrics(workdir)
  assert [r["step"] for r in records] == sorted({r["step"] for r in records})
  restart = next(r for r in records if r["step"] == saved + 1)
  assert restart["compilation_cache_hit"] is True and restart["first_step_seconds"] > 0
  assert _checkpoint_steps(workdir)[-1] == saved + 2
  report_figures({"second_trainer_exit_code": second.returncode,
                  "second_trainer_wrote": "nothing",
                  "ctrl_c_exit_code": trainer.returncode, "saved_at_ctrl_c": saved,
                  "checkpoints_after_restart": _checkpoint_steps(workdir),
                  "metrics_lines": len(records),
                  "first_step_seconds_cold": first["first_step_seconds"],
                  "first_step_seconds_from_cache": restart["first_step_seconds"]})


def test_ctrl_c_during_compilation_writes_nothing_and_a_second_one_aborts(
    tmp_path, synthetic_data_dir, report_figures):
  cold_cache = tmp_path / "xla_cache"
  workdir = tmp_path / "w"
  trainer = _start(_train_args(workdir, synthetic_data_dir, "--config.num_train_steps=100"),
                   SIMCLR_COMPILATION_CACHE=cold_cache)
  with _running(trainer):
    _wait_for_log(trainer, "devices (")     # set-up started; the first step compiles next
    time.sleep(1.0)
    trainer.send_signal(signal.SIGINT)
    trainer.wait(timeout=180)
  assert trainer.returncode == 130, trainer.stderr[-3000:]
  assert "Traceback" not in trainer.stderr and "Fatal Python error" not in trainer.stderr
  assert trainer.stderr.strip().splitlines()[-1].startswith(
      "Interrupted (Ctrl-C) before the first step finished; nothing was written")
  assert not workdir.exists()                         # the run created it, and removed it

  again = _start(_train_args(tmp_path / "w2", synthetic_data_dir,
                             "--config.num_train_steps=100"),
                 SIMCLR_COMPILATION_CACHE=cold_cache)
  with _running(again):
    _wait_for_log(again, "devices (")
    again.send_signal(signal.SIGINT)
    time.sleep(0.3)
    again.send_signal(signal.SIGINT)
    again.wait(timeout=60)
  assert again.returncode == -signal.SIGINT, again.stderr[-3000:]
  assert "Second Ctrl-C: aborting without saving" in again.stderr
  assert _checkpoint_steps(tmp_path / "w2") == []
  report_figures({"ctrl_c_during_compilation_exit_code": trainer.returncode,
                  "workdir_left": workdir.exists(),
                  "second_ctrl_c_exit_code": again.returncode,
                  "checkpoints_after_second_ctrl_c": _checkpoint_steps(tmp_path / "w2")})


def _wait_for_log(proc, text, timeout=240):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if text in proc.stderr:
      return
    if proc.poll() is not None:
      raise AssertionError(f"exited early (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    time.sleep(0.05)
  raise AssertionError(f"{text!r} not logged within {timeout}s")


def test_evaluation_while_training_never_disturbs_the_trainer(tmp_path, synthetic_data_dir,
                                                              report_figures):
  """A trainer saving (asynchronously) at every step while the evaluator CLI runs in a loop
  on the same workdir: every evaluation succeeds; the trainer, stopped by SIGTERM while
  saving, exits 0 with every checkpoint complete and one metrics line per step."""
  workdir = tmp_path / "w"
  trainer = _start(_train_args(workdir, synthetic_data_dir, "--config.num_train_steps=100000",
                               "--config.checkpoint_every_steps=1",
                               "--config.keep_checkpoints=100000"))
  evaluated = []
  with _running(trainer):
    _wait_for_step(trainer, workdir, 2)
    for i in range(3):
      out = tmp_path / f"eval{i}"
      proc = run_module(["simclr_jax.evaluate", "--workdir", workdir, "--dataset",
                         "synthetic_cxr/32", "--data_dir", synthetic_data_dir, "--split",
                         "test", "--train_split=", "--out", out, "--plots=false"], check=False)
      assert proc.returncode == 0, proc.stderr[-3000:]
      evaluated.append(json.loads((out / "report.json").read_text())["checkpoint_step"])
      assert trainer.poll() is None, trainer.stderr[-3000:]
    trainer.send_signal(signal.SIGTERM)
    trainer.wait(timeout=120)
  assert trainer.returncode == 0, trainer.stderr[-3000:]
  assert "Stopping early (preemption)" in trainer.stderr
  last = _metrics_steps(workdir)[-1]
  assert evaluated == sorted(evaluated) and evaluated[-1] < last
  assert _metrics_steps(workdir) == list(range(1, last + 1))
  assert _checkpoint_steps(workdir) == list(range(1, last + 1))
  assert checkpointing.incomplete_checkpoints(str(workdir)) == []   # no save left unfinished
  _, _, step = checkpointing.load_for_eval(str(workdir))
  assert step == last
  report_figures({
      "trainer_exit_code": trainer.returncode, "checkpoints": len(_checkpoint_steps(workdir)),
      "metrics_lines": len(_metrics_steps(workdir)), "last_step": last,
      "evaluations_ok": len(evaluated), "evaluated_steps": evaluated})
