"""The evaluator's reliability (issue 20 points 4 and 5): one report per --out, whole or
not at all (two real evaluations into one --out at once, Ctrl-C), and one clear line for a
damaged or mismatched workdir; the classifier evaluator on a workdir with a classifier
head (issue 17 point 4). Workdirs are written in-process with orbax (the trainer's
format), evaluations run in-process unless an exit code or a signal is the point."""
import json
import shutil
import signal
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO_ROOT, subprocess_env
from simclr_jax import checkpointing
from simclr_jax import evaluate
from simclr_jax import models
from simclr_jax.config import default_config


class _IteratorState:
  def get_state(self):
    return {"position": 0}


def _random_variables(config) -> dict:
  """Variables of the config's SimCLR network with random values (shapes from tracing
  its init: no compilation)."""
  network = models.SimCLR(encoder=models.create_encoder(config),
                          head=models.create_head(config))
  shapes = jax.eval_shape(lambda: network.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), train=False))
  rng = np.random.default_rng(0)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  values = {key: (np.ones(leaf.shape, np.float32) if key[-1] == "var" else
                  np.zeros(leaf.shape, np.float32) if key[-1] == "mean" else
                  (0.1 * rng.normal(size=leaf.shape)).astype(np.float32))
            for key, leaf in flat.items()}
  return flax.traverse_util.unflatten_dict(values)


def _write_workdir(path, *, objective="simclr", steps=(2,)):
  """A workdir as the trainer leaves it: config.json + orbax checkpoints of resnet_tiny
  (random weights; 'supervised': an encoder and a 5-class classifier head)."""
  config = default_config()
  config.update(dict(model="resnet_tiny", image_size=32, dataset="synthetic_cxr/32",
                     objective=objective))
  variables = _random_variables(config)
  params, batch_stats = variables["params"], variables["batch_stats"]
  if objective == "supervised":
    features = models.simclr.feature_dim(config)
    rng = np.random.default_rng(0)
    params = {"encoder": params["encoder"],
              "classifier": {"kernel": rng.normal(size=(features, 5)).astype(np.float32),
                             "bias": np.zeros(5, np.float32)}}
    batch_stats = {"encoder": batch_stats["encoder"]}
  checkpointing.write_config(str(path), config)
  manager = checkpointing.create_manager(str(path), max_to_keep=5, async_saves=False)
  for step in steps:
    checkpointing.save(manager, step, {"step": np.int32(step), "params": params,
                                       "batch_stats": batch_stats},
                       np.zeros(2, np.uint32), _IteratorState())
  manager.wait_until_finished()
  manager.close()
  return path


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("workdirs")
  return {"simclr": _write_workdir(root / "simclr"),
          "supervised": _write_workdir(root / "supervised", objective="supervised")}


def _cli(argv, capsys):
  status = evaluate.main(["simclr_jax.evaluate", *map(str, argv)])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def _one_error_line(stderr: str) -> str:
  lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr
  return lines[0]


def test_damaged_or_mismatched_workdirs_are_one_line(tmp_path, workdirs, synthetic_data_dir,
                                                     capsys, monkeypatch):
  """A malformed config.json (file and position named), a config.json whose model no longer
  matches the checkpoint (field and parameter named, not a flax traceback), a truncated
  _METADATA (step and file named), --evaluators=classifier on an encoder without a
  classifier head: exit 2, one line. A checkpoint deleted while it is read (the trainer
  keeps the newest keep_checkpoints) is retried on the newest."""
  common = ["--dataset", "synthetic_cxr/32", "--data_dir", synthetic_data_dir,
            "--train_split=", "--evaluators", "similarity", "--out", tmp_path / "out"]

  def copy(name):
    return shutil.copytree(workdirs["simclr"], tmp_path / name)

  malformed = copy("malformed")
  (malformed / "config.json").write_text('{\n  model: "resnet_tiny"}')
  changed = copy("changed")
  config = json.loads((changed / "config.json").read_text())
  (changed / "config.json").write_text(json.dumps(dict(config, model="resnet18")))
  truncated = copy("truncated")
  metadata = truncated / "checkpoints" / "2" / "state" / "_METADATA"
  metadata.write_text(metadata.read_text()[:95])
  cases = {
      malformed: (f"{malformed}/config.json is not valid JSON (Expecting property name "
                  f"enclosed in double quotes at line 2 column 3)"),
      changed: f"checkpoint 2 of {changed} does not hold the network its config.json "
               f"describes (model='resnet18'",
      truncated: f"checkpoint 2 in {truncated}/checkpoints is damaged: {metadata} is "
                 f"unreadable (Unterminated string",
  }
  for workdir, expected in cases.items():
    status, _, stderr = _cli(["--workdir", workdir] + common, capsys)
    assert status == 2 and expected in _one_error_line(stderr), (workdir.name, stderr)
  status, _, stderr = _cli(["--workdir", workdirs["simclr"]] + common[:-4] + [
      "--evaluators", "classifier", "--out", tmp_path / "out"], capsys)
  assert status == 2 and "--evaluators=classifier: " in _one_error_line(stderr)
  assert "has no classifier head" in stderr
  assert not (tmp_path / "out").exists()

  # Deleted while read: the trainer saved step 4 and is deleting step 2 under the reader.
  racing = copy("racing")
  restore = ocp.Checkpointer.restore

  def restore_while_the_trainer_saves(self, path, *args, **kwargs):
    if "/2/" in str(path) and not (racing / "checkpoints" / "4").exists():
      shutil.copytree(racing / "checkpoints" / "2", racing / "checkpoints" / "4")
      (racing / "checkpoints" / "2" / "state" / "_METADATA").unlink()
    return restore(self, path, *args, **kwargs)

  monkeypatch.setattr(ocp.Checkpointer, "restore", restore_while_the_trainer_saves)
  _, variables, step = checkpointing.load_for_eval(str(racing))
  assert step == 4 and set(variables["params"]) == {"encoder", "head"}


def test_classifier_head_scored_in_evaluate(tmp_path, workdirs, synthetic_data_dir, capsys):
  """A workdir with a classifier head: the features come with its logits, and the
  classifier evaluator scores them on the evaluated split (AUROC with 95 % intervals,
  in report.json and report.md)."""
  out = tmp_path / "out"
  status, stdout, stderr = _cli(
      ["--workdir", workdirs["supervised"], "--dataset", "synthetic_cxr/32", "--data_dir",
       synthetic_data_dir, "--evaluators", "classifier,similarity", "--plots=false",
       "--out", out], capsys)
  assert status == 0, stderr
  report = json.loads((out / "report.json").read_text())
  assert report["classifier_label_mode"] == "" and report["classifier_examples"] == 40
  assert set(report["classifier_auroc"]) == {"0", "1", "2", "3", "4"} or len(
      report["classifier_auroc"]) == 5
  low, high = report["classifier_auroc_macro_ci95"]
  assert low <= report["classifier_auroc_macro"] <= high
  assert report["classifier_accuracy_ci95"] is not None
  assert np.load(out / "features.npz")["logits"].shape == (40, 5)
  assert f"| classifier AUROC (macro) | {report['classifier_auroc_macro']:.4f} [" in (
      out / "report.md").read_text()
  assert json.loads(stdout.splitlines()[-1])["classifier_auroc_macro_ci95"] == [low, high]


def _evaluate_process(out, *extra):
  """`python -m simclr_jax.evaluate` on the synthetic test split, random init (cheap)."""
  return subprocess.Popen(
      [sys.executable, "-m", "simclr_jax.evaluate", "--model", "resnet_tiny",
       "--image_size", "32", "--random_init", "--dataset", "synthetic_cxr/32",
       "--plots=false", "--out", str(out), *map(str, extra)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
      env=subprocess_env())


def _finish(processes, timeout=300):
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=timeout))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.communicate()
  return outputs


def test_two_evaluations_into_one_out_give_one_report(tmp_path, synthetic_data_dir,
                                                      report_figures):
  """Two `python -m simclr_jax.evaluate --overwrite` into one --out (20 and 30 examples),
  the second started while the first holds --out: one complete report (report.json,
  report.md and features.npz of the same run) and one clear refusal, never a mix; the
  user's own file is never touched. The first is paused (SIGSTOP) once its lock beside
  --out exists, so the overlap does not depend on timing. (More tries, with and without
  overwrite: test_concurrent_report_writers_never_mix.)"""
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  common = ["--data_dir", synthetic_data_dir, "--train_split=", "--evaluators", "similarity",
            "--overwrite"]
  lock = tmp_path / ".out.report-lock"
  first = _evaluate_process(out, "--max_examples", 20, *common)
  try:
    deadline = time.monotonic() + 240
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)
    held = lock.exists()   # paused inside its reservation (not already finished)
    second = _evaluate_process(out, "--max_examples", 30, *common)
    second_output = _finish([second])[0]
  finally:
    first.send_signal(signal.SIGCONT)
  first_output = _finish([first])[0]
  assert held, first_output[1][-3000:]
  assert first.returncode == 0, first_output[1][-3000:]
  assert second.returncode == 2, second_output[1][-3000:]
  assert "is being written by another evaluation" in _one_error_line(second_output[1])
  report = json.loads((out / "report.json").read_text())
  assert report["num_examples_total"] == 20
  assert np.load(out / "features.npz")["features"].shape[0] == 20   # the same run's
  assert "20 of 20 examples kept" in (out / "report.md").read_text()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock or staging left
  assert sorted(p.name for p in out.iterdir()) == ["features.npz", "notes.txt", "report.json",
                                                  "report.md"]
  assert (out / "notes.txt").read_text() == "mine"
  report_figures({"exit codes": [first.returncode, second.returncode]})


_WRITER = """
import sys, time
import numpy as np
from simclr_jax.evaluation import report as report_lib
out, count, hold, overwrite = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
arrays = {"features": np.full((count, 2), count, np.float32), "labels": np.zeros(count, int)}
report = {"num_examples": count, "num_examples_total": count, "label_mode": "label",
          "num_classes": 1, "class_counts": {"a": count}}
try:
  with report_lib.reserve(out, overwrite):   # as the command line holds --out
    time.sleep(hold)
    report_lib.write_report(report, arrays, out, plots=False, overwrite=overwrite)
except ValueError as error:  # ReportBusyError, ReportExistsError
  print(error, file=sys.stderr)
  sys.exit(2)
"""


def test_concurrent_report_writers_never_mix(tmp_path):
  """Several tries of two processes writing a report into one folder at once (the
  report module alone, so tries are cheap), into a new folder and with overwrite into one
  holding a report: each time one complete report, the other refused while the first
  holds the folder (or, without overwrite, after it wrote), or replacing it whole."""
  outcomes = []
  for attempt in range(6):
    overwrite = attempt % 2
    out = tmp_path / ("out" if overwrite else f"new{attempt}")
    hold = "0.5" if attempt < 4 else "0"   # 0: only the writes themselves overlap
    processes = [subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out), str(count), hold, str(overwrite)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env=subprocess_env()) for count in (3 + attempt, 30 + attempt)]
    outputs = _finish(processes, timeout=120)
    codes = [process.returncode for process in processes]
    assert 0 in codes and set(codes) <= {0, 2}, outputs
    for code, (_, stderr) in zip(codes, outputs):
      assert code == 0 or "being written by another evaluation" in stderr or (
          not overwrite and "holds an earlier report" in stderr), stderr
    report = json.loads((out / "report.json").read_text())
    count = report["num_examples"]
    assert count in (3 + attempt, 30 + attempt)
    features = np.load(out / "features.npz")["features"]
    assert features.shape == (count, 2) and (features == count).all()
    assert f"{count} of {count} examples kept" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["features.npz", "report.json",
                                                    "report.md"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    outcomes.append(codes)
  assert any(2 in codes for codes in outcomes), outcomes  # they did overlap


def test_ctrl_c_exits_130_in_one_line_and_writes_nothing(tmp_path, synthetic_data_dir):
  """Ctrl-C while the evaluation runs: exit 130, one line, no traceback, no --out (nor a
  lock or a half-written folder beside it)."""
  out = tmp_path / "out"
  process = _evaluate_process(out, "--data_dir", synthetic_data_dir, "--batch_size", "4",
                              "--evaluators", "clustering,knn,linear_probe",
                              "--kmeans_n_init", "50")
  try:
    deadline = time.monotonic() + 240
    for line in process.stdout:  # progress lines go to stdout when it is not a terminal
      if line.startswith("[features") or time.monotonic() > deadline:
        break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.communicate()
  assert process.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == (
      "interrupted: no partial report was written to --out.")
  assert sorted(p.name for p in tmp_path.iterdir()) == []
