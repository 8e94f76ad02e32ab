"""Multi-process training and preemption: real processes, real signals, bounded time."""
import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from conftest import REPO_ROOT, run_module, subprocess_env
from test_train import _assert_same_variables, _final_variables, _train_args


def _metrics_steps(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _checkpoint_steps(workdir):
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.exists() else []


class _Trainer:
  """A trainer subprocess whose output goes to files (a full pipe would block it)."""

  def __init__(self, args, log_dir, num_devices=1, new_session=False, **env):
    log_dir.mkdir(parents=True, exist_ok=True)
    count = len(list(log_dir.glob("*.err")))
    self._out = open(log_dir / f"{count}.out", "w+")
    self._err = open(log_dir / f"{count}.err", "w+")
    # new_session: its own process group, so a signal can go to the trainer and its
    # loader workers together, as a terminal's Ctrl-C does.
    self.proc = subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=REPO_ROOT,
                                 env=subprocess_env(num_devices, **env), stdout=self._out,
                                 stderr=self._err, text=True, start_new_session=new_session)

  def signal_group(self, sig):
    os.killpg(self.proc.pid, sig)

  def poll(self):
    return self.proc.poll()

  def kill(self):
    self.proc.kill()

  def send_signal(self, sig):
    self.proc.send_signal(sig)

  @property
  def returncode(self):
    return self.proc.returncode

  def wait(self, timeout):
    return self.proc.wait(timeout=timeout)

  @property
  def stderr(self):
    self._err.flush()
    self._err.seek(0)
    return self._err.read()

  def communicate(self, timeout):
    self.proc.wait(timeout=timeout)
    return None, self.stderr


def _start(args, num_devices=1, new_session=False, **env):
  log_dir = pathlib.Path(str(args[args.index("--workdir") + 1]) + "_logs")
  return _Trainer(args, log_dir, num_devices, new_session, **env)


@contextlib.contextmanager
def _running(*trainers):
  """Kills whichever of `trainers` still runs when the block ends (a failed assertion)."""
  try:
    yield
  finally:
    for trainer in trainers:
      if trainer.poll() is None:
        trainer.kill()


def _start_two_processes(workdir, data_dir, *extra):
  """A 2-process run (2 fake devices each) on one workdir, as two SLURM tasks start it."""
  port = _free_port()
  return [_start(_train_args(workdir, data_dir, *extra, f"--coordinator_address=127.0.0.1:{port}",
                             "--num_processes=2", f"--process_id={i}"), num_devices=2)
          for i in range(2)]


def _wait_for_step(proc, workdir, min_step, timeout=240):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    steps = _metrics_steps(workdir)
    if steps and steps[-1] >= min_step:
      return steps[-1]
    if proc.poll() is not None:
      raise AssertionError(f"trainer exited early (rc={proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f"no step >= {min_step} within {timeout}s")


LONG_RUN = ("--config.num_train_steps=40", "--config.checkpoint_every_steps=4")


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path,
                                                                     synthetic_data_dir):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  uninterrupted = _start(_train_args(straight, synthetic_data_dir, *LONG_RUN))  # meanwhile
  rng = np.random.default_rng(0)
  injected = []
  with _running(uninterrupted):
    for target in (7, 18, 29):   # kill three times, each after a random extra delay
      proc = _start(_train_args(killed, synthetic_data_dir, *LONG_RUN))
      _wait_for_step(proc, killed, target)
      time.sleep(float(rng.uniform(0.0, 0.3)))
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=60)
      injected.append((_metrics_steps(killed)[-1], _checkpoint_steps(killed)))
      assert proc.returncode == -signal.SIGKILL
      # Saves are asynchronous: the checkpoint of step N completes while the next steps
      # train, and the save of N + 4 first waits for it. So a kill loses at most two save
      # intervals, and the latest complete checkpoint is intact.
      last_logged, checkpoints = injected[-1]
      assert checkpoints and last_logged - checkpoints[-1] <= 2 * 4 + 1, injected
    uninterrupted.wait(timeout=240)
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
  run_module(_train_args(killed, synthetic_data_dir, *LONG_RUN))
  assert _checkpoint_steps(killed)[-1] == 40
  assert _metrics_steps(killed) == list(range(1, 41))   # one line per step after resumes
  _, straight_vars = _final_variables(straight)
  _, killed_vars = _final_variables(killed)
  _assert_same_variables(straight_vars, killed_vars)


def test_sigterm_saves_current_step_and_exits_zero(tmp_path, synthetic_data_dir):
  workdir = tmp_path / "w"
  proc = _start(_train_args(workdir, synthetic_data_dir, "--config.num_train_steps=100000",
                            "--config.checkpoint_every_steps=100000"))
  _wait_for_step(proc, workdir, 3)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  saved = _checkpoint_steps(workdir)
  assert saved and saved[-1] >= 3          # saved at the step it was at, not at 100000
  assert saved[-1] == _metrics_steps(workdir)[-1]
  assert "preemption" in stderr


def test_interrupted_save_is_ignored_with_a_log_line(tmp_path, synthetic_data_dir):
  workdir = tmp_path / "w"
  run_module(_train_args(workdir, synthetic_data_dir, "--config.num_train_steps=2",
                         "--config.checkpoint_every_steps=2"))
  # What a kill during the save of step 4 leaves behind: orbax's temporary directory.
  partial = workdir / "checkpoints" / "4.orbax-checkpoint-tmp-123456"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "garbage").write_text("half-written")
  proc = run_module(_train_args(workdir, synthetic_data_dir, "--config.num_train_steps=4",
                                "--config.checkpoint_every_steps=2"))
  assert "Ignoring incomplete checkpoint" in proc.stderr
  assert "Resumed from checkpoint step 2" in proc.stderr
  assert _checkpoint_steps(workdir) == [2, 4]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synthetic_data_dir):
  workdir = tmp_path / "w"
  run_module(_train_args(workdir, synthetic_data_dir, "--config.num_train_steps=2",
                         "--config.checkpoint_every_steps=1", "--config.optimizer.name=sgd",
                         "--config.optimizer.learning_rate=0.01"))
  # Resume with a learning rate that blows the parameters up at the first update (a
  # changed learning rate must be accepted explicitly on resume).
  proc = run_module(_train_args(workdir, synthetic_data_dir, "--config.num_train_steps=50",
                                "--config.checkpoint_every_steps=1",
                                "--config.optimizer.name=sgd",
                                "--config.optimizer.learning_rate=1e30",
                                "--allow_config_changes=optimizer.learning_rate"),
                    check=False)
  assert proc.returncode == 3, proc.stderr[-3000:]
  bad_step = int(re.search(r"Non-finite (?:loss|grad_norm|param_norm) \(\S+\) at step (\d+);",
                           proc.stderr).group(1))
  assert bad_step == 3                      # the first update after resuming at step 2
  assert _checkpoint_steps(workdir)[-1] == 2   # nothing written at or after it
  step, variables = _final_variables(workdir)
  assert step == 2 and all(np.isfinite(v).all() for v in variables.values())

  # Resuming this workdir with another optimizer, even when the change is accepted, is
  # refused with the reason (its checkpoints hold another optimizer state), not a crash.
  other = run_module(_train_args(workdir, synthetic_data_dir, "--config.num_train_steps=50",
                                 "--config.optimizer.name=adamw",
                                 "--allow_config_changes=optimizer.name,"
                                 "optimizer.learning_rate"), check=False)
  assert other.returncode == 2
  assert "different model or optimizer" in other.stderr and "config.json" in other.stderr
  assert json.loads((workdir / "config.json").read_text())["optimizer"]["name"] == "sgd"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process_with_four_devices(tmp_path, synthetic_data_dir):
  """2 processes x 2 CPU devices (jax.distributed on 127.0.0.1, gloo) == 1 x 4 devices.

  The single run goes straight to step 6 while the two processes run to 4 (at the same
  time: one process less than stopping and resuming it, and the resume is bit for bit)."""
  single = tmp_path / "single"
  single_run = _start(_train_args(single, synthetic_data_dir, "--config.num_train_steps=6",
                                  "--config.checkpoint_every_steps=2"), num_devices=4)
  multi = tmp_path / "multi"
  procs = _start_two_processes(multi, synthetic_data_dir, "--config.num_train_steps=6",
                               "--config.checkpoint_every_steps=2", "--config.stop_at_step=4")
  with _running(single_run, *procs):
    outputs = [proc.communicate(timeout=420) for proc in procs]
    single_run.wait(timeout=420)
  assert single_run.returncode == 0, single_run.stderr[-4000:]
  for proc, (_, stderr) in zip(procs, outputs):
    assert proc.returncode == 0, stderr[-4000:]
  assert "process 0 of 2" in outputs[0][1] and "process 1 of 2" in outputs[1][1]
  # Only process 0 writes metrics; one line per step.
  assert _metrics_steps(multi) == [1, 2, 3, 4]
  single_losses = [json.loads(l)["loss"] for l in (single / "metrics.jsonl").read_text().splitlines()]
  multi_losses = [json.loads(l)["loss"] for l in (multi / "metrics.jsonl").read_text().splitlines()]
  np.testing.assert_allclose(single_losses[:4], multi_losses, rtol=1e-5, atol=1e-5)
  single_vars, multi_vars = _final_variables(single, 4)[1], _final_variables(multi, 4)[1]
  for key in single_vars:
    np.testing.assert_allclose(single_vars[key], multi_vars[key], rtol=1e-5, atol=1e-5,
                               err_msg=key)
  # Every process saved its own Grain iterator state.
  data_iter = multi / "checkpoints" / "4" / "data_iter"
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= {p.name for p in data_iter.iterdir()}

  # Preempted on 2 hosts, resumed on 1 (another allocation): same as never leaving 1 host.
  finish = ("--config.num_train_steps=6", "--config.checkpoint_every_steps=2")
  resumed = run_module(_train_args(multi, synthetic_data_dir, *finish), num_devices=4)
  assert "written by another number of processes" in resumed.stderr
  assert _metrics_steps(multi) == [1, 2, 3, 4, 5, 6]
  single_vars, multi_vars = _final_variables(single, 6)[1], _final_variables(multi, 6)[1]
  for key in single_vars:
    np.testing.assert_allclose(single_vars[key], multi_vars[key], rtol=1e-5, atol=1e-5,
                               err_msg=key)


def test_sigterm_to_all_processes_and_ctrl_c_to_one_save_one_common_step(
    tmp_path, synthetic_data_dir):
  """What SLURM does at the time limit: SIGTERM to every task. JAX's preemption service
  makes both processes save the same step, then both exit 0. A Ctrl-C to one process
  stops both at one agreed step too."""
  workdir = tmp_path / "w"
  endless = ("--config.num_train_steps=100000", "--config.checkpoint_every_steps=100000")
  procs = _start_two_processes(workdir, synthetic_data_dir, *endless)
  with _running(*procs):
    _wait_for_step(procs[0], workdir, 3)
    for proc in procs:
      proc.send_signal(signal.SIGTERM)
    for proc in procs:
      proc.wait(timeout=180)
  for proc in procs:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Stopping early (preemption)" in proc.stderr
  saved = _checkpoint_steps(workdir)
  assert saved and saved[-1] == _metrics_steps(workdir)[-1] >= 3

  # Resumed, then Ctrl-C on process 0 only (its terminal): the signalled process must not
  # stop on its own (the other would wait forever in the next collective); both stop at
  # the step JAX's preemption service agrees on, and that step is saved.
  procs = _start_two_processes(workdir, synthetic_data_dir, *endless)
  with _running(*procs):
    _wait_for_step(procs[0], workdir, saved[-1] + 3)
    procs[0].send_signal(signal.SIGINT)
    for proc in procs:
      proc.wait(timeout=180)
  assert procs[0].returncode == 130, procs[0].stderr[-3000:]
  assert procs[1].returncode == 0, procs[1].stderr[-3000:]
  interrupted = _checkpoint_steps(workdir)[-1]
  assert interrupted == _metrics_steps(workdir)[-1] > saved[-1]
  assert procs[0].stderr.strip().splitlines()[-1].startswith(
      f"Interrupted (Ctrl-C): saved checkpoint at step {interrupted} ")
  assert f"saved checkpoint at step {interrupted}; exiting" in procs[1].stderr


def test_launchers_dry_run(tmp_path):
  slurm = subprocess.run(
      ["bash", "launch.sh", "slurm", "experiments/configs/nih_r50.py", str(tmp_path / "run"),
       "--nodes", "2", "--gpus_per_node", "4", "--dry_run", "--", "--config.batch_size=512"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
  assert slurm.returncode == 0, slurm.stderr
  assert "#SBATCH --nodes=2" in slurm.stdout and "#SBATCH --ntasks-per-node=1" in slurm.stdout
  assert "#SBATCH --signal=TERM@" in slurm.stdout
  assert "srun" in slurm.stdout and "-m simclr_jax.train" in slurm.stdout
  assert "--config.batch_size=512" in slurm.stdout
  tpu = subprocess.run(
      ["bash", "launch.sh", "tpu", "my-tpu", "us-central2-b",
       "experiments/configs/nih_r50_simclr.py", "gs://bucket/run", "--dry_run"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
  assert tpu.returncode == 0, tpu.stderr
  assert "gcloud compute tpus tpu-vm ssh my-tpu" in tpu.stdout
  assert "--worker=all" in tpu.stdout and "simclr_jax.train" in tpu.stdout
