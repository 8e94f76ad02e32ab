"""Tests for the evaluator: label modes on the real ChestX-ray14 CSV, masked multi-device
feature extraction, the report, the CLI's refusals (exit 2, one line) and the CLI and
compare on real training runs."""
import collections
import csv
import functools
import gzip
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, every_evaluator, run_module, subprocess_env
from simclr_jax import evaluate
from simclr_jax.data import labels
from simclr_jax.evaluation import EVALUATORS
from simclr_jax.evaluation import encoders
from simclr_jax.evaluation import from_config
from simclr_jax.evaluation import offline
from simclr_jax.evaluation import report as report_lib

NUM_CSV_ROWS = 112_120


# ----------------------------------------------------------------------------- label modes


@functools.lru_cache(maxsize=1)
def _read_data_entry(path):
  with gzip.open(path, "rt", newline="") as file:
    findings = [row["Finding Labels"].split("|") for row in csv.DictReader(file)]
  return findings, labels.data_entry_table(path)


@pytest.fixture
def data_entry(shared_data):
  """(rows parsed here with the csv module, data/labels.py's reading of the CSV)."""
  return _read_data_entry(str(shared_data / "nih_sample" / "Data_Entry_2017_v2020.csv.gz"))


def test_csv_reading(data_entry):
  findings, table = data_entry
  assert len(findings) == NUM_CSV_ROWS == table["labels"].shape[0]
  assert table["labels"].shape == (NUM_CSV_ROWS, 14)
  assert int(table["no_finding"].sum()) == sum(f == ["No Finding"] for f in findings)
  pneumonia = labels.FINDINGS.index("Pneumonia")
  assert int(table["labels"][:, pneumonia].sum()) == sum("Pneumonia" in f for f in findings)


def test_single_label_mode_counts(data_entry):
  findings, table = data_entry
  single = labels.select_labels("single", table)
  expected = collections.Counter(f[0] for f in findings if len(f) == 1)
  assert single.mode == "single"
  assert single.num_kept == sum(expected.values()) == sum(len(f) == 1 for f in findings)
  counted = collections.Counter(single.class_names[c] for c in single.labels[single.kept])
  assert counted == expected
  assert len(single.class_names) == 15 and single.class_names[14] == "No Finding"
  # The NIH default: the 14 findings (k = 14), No Finding and multi-finding images left out.
  default = labels.select_labels(None, table)
  assert default.mode == "single_finding" and default.class_names == labels.FINDINGS
  del expected["No Finding"]
  assert collections.Counter(default.class_names[c] for c in default.labels[default.kept]) == (
      expected)
  assert "No Finding" in default.description and "exactly one" in default.description


def test_primary_label_mode_counts(data_entry):
  findings, table = data_entry
  expected = collections.Counter(f[0] for f in findings)  # the first label listed
  with_text = labels.select_labels("primary", table)      # table carries 'finding_labels'
  assert with_text.num_kept == NUM_CSV_ROWS
  assert collections.Counter(with_text.class_names[c] for c in with_text.labels) == expected
  # Without the CSV text (TFDS multi-hot only): alphabetically first finding, which
  # differs from the listed first exactly where the CSV is not in alphabetical order.
  multi_hot_only = {"labels": table["labels"], "no_finding": table["no_finding"]}
  derived = labels.select_labels("primary", multi_hot_only)
  names = np.asarray(derived.class_names)[derived.labels]
  listed_first = np.asarray([f[0] for f in findings])
  alphabetical_first = np.asarray([min(f) for f in findings])
  np.testing.assert_array_equal(names, alphabetical_first)
  assert 0 < int(np.sum(names != listed_first)) < 100  # 31 rows in the v2020 CSV


def test_binary_label_mode_counts(data_entry):
  findings, table = data_entry
  binary = labels.select_labels("binary:pneumonia", table)
  assert binary.mode == "binary:Pneumonia"
  assert binary.class_names == ("no Pneumonia", "Pneumonia")
  assert binary.num_kept == NUM_CSV_ROWS
  assert int(binary.labels.sum()) == sum("Pneumonia" in f for f in findings)
  with pytest.raises(ValueError, match="binary:Hernia"):
    labels.select_labels("binary:Pneumonitis", table)
  with pytest.raises(ValueError, match="accepted values"):
    labels.select_labels("first", table)


def test_single_label_dataset_modes():
  examples = {"label": np.array([0, 1, 2, 1, -1])}
  single = labels.select_labels("single", examples, ["normal", "mass", "effusion"])
  assert single.mode == "label" and single.num_kept == 4
  binary = labels.select_labels("binary:mass", examples, ["normal", "mass", "effusion"])
  assert binary.labels.tolist() == [0, 1, 0, 1, -1]


# Multi-device feature extraction: tests/multidevice/test_features.py.


# ----------------------------------------------------------------------------- report


def _split(num_per_class, seed, num_classes=3, dim=8):
  centres = np.random.default_rng(99).normal(size=(num_classes, dim)) * 6
  rng = np.random.default_rng(seed)
  label = np.repeat(np.arange(num_classes), num_per_class)
  features = centres[label] + rng.normal(size=(label.size, dim))
  return {"features": features.astype(np.float32), "label": label,
          "patient_id": np.arange(label.size) // 2}


def test_evaluate_features_and_outputs(tmp_path):
  report, arrays = offline.evaluate_features(
      _split(20, seed=1), _split(30, seed=2),
      from_config(every_evaluator(clustering={"n_init": 2},
                                  label_efficiency={"fractions": (0.1, 1.0)})),
      class_names=["a", "b", "c"])
  assert report["label_mode"] == "label" and report["k"] == 3
  assert report["num_examples"] == 60 and "a, b, c" in report["label_set"]
  assert report["cluster_accuracy"] == 1.0 and report["nmi"] == pytest.approx(1.0)
  assert report["linear_accuracy"] == 1.0 and report["knn_accuracy"] == 1.0
  assert report["knn_auroc_macro"] == pytest.approx(1.0)
  assert [entry["fraction"] for entry in report["label_fractions"]] == [0.1, 1.0]
  assert report["feature_quality"]["cosine_gap"] > 0.5
  assert arrays["cluster_ids"].shape == (60,)   # an evaluator's per-example array
  report["feature_extraction_seconds"] = 0.0
  (tmp_path / "notes.txt").write_text("mine")   # not the report's: never touched
  written = report_lib.write_report(report, arrays, str(tmp_path))
  on_disk = json.loads((tmp_path / "report.json").read_text())
  assert on_disk["cluster_accuracy"] == 1.0 and written["plots"] == on_disk["plots"]
  for name in ("report.md", "features.npz", "embedding_pca.png", "cluster_confusion.png",
               "label_efficiency.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  saved = np.load(tmp_path / "features.npz")
  assert saved["features"].shape == (60, 8) and saved["cluster_ids"].shape == (60,)
  assert "| cluster accuracy | 1.0000 |" in (tmp_path / "report.md").read_text()

  # Reports are never mixed: refused without overwrite; replaced whole with it.
  with pytest.raises(report_lib.ReportExistsError, match="--overwrite"):
    report_lib.write_report(report, arrays, str(tmp_path), plots=False)
  report_lib.write_report(dict(report, k=4), arrays, str(tmp_path), plots=False,
                          save_features=False, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "report.json",
                                                        "report.md"]
  assert json.loads((tmp_path / "report.json").read_text())["k"] == 4


def test_nih_default_is_the_14_findings_with_k_14():
  """No k and no label mode on multi-label data: the seed's protocol, k = 14 over the 14
  findings (images with exactly one), named in the report; the probe uses every image."""
  rng = np.random.default_rng(0)

  def nih_like(n):
    multi_hot = (rng.random((n, 14)) < 0.04).astype(np.uint8)
    multi_hot[np.arange(n) % 2 == 0, rng.integers(0, 14, n)[np.arange(n) % 2 == 0]] = 1
    features = multi_hot * 3.0 + rng.normal(size=(n, 14))
    return {"features": features.astype(np.float32), "labels": multi_hot,
            "no_finding": multi_hot.sum(1) == 0, "patient_id": np.arange(n) // 3}

  evaluated = nih_like(300)
  report, _ = offline.evaluate_features(
      evaluated, nih_like(400), from_config(every_evaluator(
          clustering={"n_init": 1}, label_efficiency={"fractions": (1.0,)})))
  assert report["label_mode"] == "single_finding" and report["k"] == 14
  assert report["num_classes"] == 14 and "No Finding" not in report["class_names"]
  assert report["num_examples"] == int((evaluated["labels"].sum(1) == 1).sum())
  assert "14 ChestX-ray14 findings" in report["label_set"]
  assert set(report["linear_auroc"]) == set(labels.FINDINGS)
  assert report["linear_auroc_macro"] > 0.9 and report["knn_auroc_macro"] > 0.8
  assert "linear_accuracy" not in report


def _cli(argv, capsys):
  """The evaluator CLI in this process: (exit status, stdout, stderr)."""
  status = evaluate.main(["simclr_jax.evaluate", *map(str, argv)])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def test_cli_refuses_bad_settings_in_one_line(tmp_path, synthetic_data_dir, capsys):
  """k < 2, k > examples, unknown dataset/split/evaluator/label mode, an --out holding a
  report: exit 2 and one line naming the flag, before any encoder is built."""
  (tmp_path / "earlier").mkdir()
  (tmp_path / "earlier" / "cluster_confusion.png").write_bytes(b"png")
  common = ["--model", "resnet_tiny", "--random_init", "--data_dir", synthetic_data_dir]
  cases = {
      "--k=0": (["--dataset", "synthetic_cxr/32", "--k", "0"], "--k=0"),
      "--k=1": (["--dataset", "synthetic_cxr/32", "--k", "1"], "at least 2"),
      "k > examples": (["--dataset", "synthetic_cxr/32", "--k", "500"],
                       "--k=500 is larger than the 40 examples"),
      "dataset": (["--dataset", "no_such_dataset/32"], "no_such_dataset"),
      "split": (["--dataset", "synthetic_cxr/32", "--split", "nope"], "split 'nope'"),
      "evaluator": (["--dataset", "synthetic_cxr/32", "--evaluators", "clustering,foo"],
                    "--evaluators"),
      "label mode": (["--dataset", "synthetic_cxr/32", "--label_mode", "binary:x"],
                     "binary:mass"),
      "probe solver": (["--dataset", "synthetic_cxr/32", "--probe_solver", "cuml"],
                       "--probe_solver='cuml'"),
      "features": (["--dataset", "synthetic_cxr/32", "--features", "logits"],
                   "--features='logits'"),
      "image size": (["--dataset", "synthetic_cxr/32", "--image_size", "0"],
                     "--image_size=0"),
      "knn k": (["--dataset", "synthetic_cxr/32", "--knn_k", "0"], "--knn_k=0"),
      "k-means restarts": (["--dataset", "synthetic_cxr/32", "--kmeans_n_init", "0"],
                           "--kmeans_n_init=0"),
      "label fractions": (["--dataset", "synthetic_cxr/32", "--label_fractions", "0,1"],
                          "--label_fractions='0,1'"),
      "earlier report": (["--dataset", "synthetic_cxr/32", "--out", tmp_path / "earlier"],
                         "holds an earlier report (cluster_confusion.png)"),
  }
  for name, (extra, expected) in cases.items():
    out = ["--out", tmp_path / "new"] if "--out" not in extra else []
    status, stdout, stderr = _cli(common + out + extra, capsys)
    assert status == 2, name
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), (name, stderr)
    assert expected in stderr, (name, stderr)
  assert not (tmp_path / "new").exists()


def test_cli_checks_settings_once_before_the_encoder(tmp_path, synthetic_data_dir, capsys,
                                                    monkeypatch):
  """The flags fill one mapping {evaluator: settings}; from_config builds (and checks) it
  once per run, before the encoder is built, and the evaluators run as built."""
  built, loaded = [], []
  monkeypatch.setattr(offline, "from_config",
                      lambda spec: built.append(spec) or from_config(spec))
  monkeypatch.setattr(evaluate, "load_encoder",
                      lambda **kwargs: loaded.append(kwargs) or encoders.load_encoder(**kwargs))
  common = ["--model", "resnet_tiny", "--image_size", "32", "--random_init", "--dataset",
            "synthetic_cxr/32", "--data_dir", synthetic_data_dir, "--train_split", "train",
            "--evaluators", "knn,clustering", "--plots=false", "--save_features=false"]
  status, _, stderr = _cli(common + ["--out", tmp_path / "bad", "--knn_k", "0"], capsys)
  assert status == 2 and stderr == "error: --knn_k=0: must be >= 1.\n"
  assert built == [{"knn": {"k": 0}, "clustering": {"n_init": 10}}] and not loaded
  built.clear()
  status, stdout, _ = _cli(common + ["--out", tmp_path / "good", "--knn_k", "3", "--k", "4"],
                           capsys)
  assert status == 0 and len(built) == len(loaded) == 1
  assert built == [{"knn": {"k": 3}, "clustering": {"k": 4, "n_init": 10}}]
  report = json.loads((tmp_path / "good" / "report.json").read_text())
  assert report["evaluators"] == ["knn", "clustering"]
  assert report["knn_k"] == 3 and report["k"] == 4 and report["kmeans_n_init"] == 10
  assert json.loads(stdout.splitlines()[-1])["k"] == 4


# ----------------------------------------------------------------------------- NIH thumbnails


@pytest.fixture(scope="module")
def nih_thumbs_dir(tmp_path_factory):
  """The real 64 px ChestX-ray14 thumbnails (1,000 images) as TFDS nih_chest_xray14/thumbs64."""
  from conftest import SHARED_DATA
  if not (SHARED_DATA / "nih_thumbs").exists():
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  import tensorflow_datasets as tfds
  from simclr_jax.data import NihChestXray14
  data_dir = tmp_path_factory.mktemp("nih_tfds")
  # The folders as they are: the test counts the test folder's files independently.
  builder = NihChestXray14(config="thumbs64", data_dir=str(data_dir), num_workers=1,
                           keep_folder_splits=True)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(SHARED_DATA / "nih_thumbs")))
  return data_dir


def test_nih_label_modes_through_the_dataset(tmp_path, shared_data, nih_thumbs_dir,
                                             data_entry):
  """Random-init tiny encoder on the real thumbnails: the kept counts of each label mode
  match the CSV rows of the test folder's files, counted here independently."""
  findings, table = data_entry
  findings_by_image = dict(zip(table["image_index"].tolist(), findings))
  test_files = sorted(p.name for p in (shared_data / "nih_thumbs" / "test").glob("*/*.png"))
  test_findings = [findings_by_image[name] for name in test_files]
  csv_path = shared_data / "nih_sample" / "Data_Entry_2017_v2020.csv.gz"

  encoder = evaluate.load_encoder(model="resnet_tiny", image_size=32, random_init=True)
  output = offline.Output(str(tmp_path), plots=False)
  plan = offline.plan(
      offline.Data(dataset="nih_chest_xray14/thumbs64", data_dir=str(nih_thumbs_dir),
                   split="test", train_split="train", label_mode="primary",
                   labels_csv=str(csv_path), batch_size=64),
      every_evaluator(clustering={"n_init": 1}, label_efficiency={"fractions": (0.5, 1.0)}),
      output)
  report = offline.evaluate_encoder(encoder, plan, output)
  assert report["label_mode"] == "primary" and report["k"] == 15
  assert report["num_examples"] == report["num_examples_total"] == len(test_files) == 200
  expected_primary = collections.Counter(f[0] for f in test_findings)
  assert {n: c for n, c in report["class_counts"].items() if c} == expected_primary
  assert set(report["linear_auroc"]) == set(labels.FINDINGS)  # multi-hot probe
  assert 0.0 < report["linear_auroc_macro"] < 1.0
  assert report["num_train_examples"] == 600

  saved = np.load(tmp_path / "features.npz")
  examples = {"features": saved["features"], "labels": saved["multi_hot"]}
  every = from_config(every_evaluator(clustering={"n_init": 1}))
  single, _ = offline.evaluate_features(examples, None, every, label_mode="single")
  assert single["num_examples"] == sum(len(f) == 1 for f in test_findings)
  assert {n: c for n, c in single["class_counts"].items() if c} == collections.Counter(
      f[0] for f in test_findings if len(f) == 1)
  default, _ = offline.evaluate_features(examples, None, every)
  assert default["k"] == 14 and default["num_examples"] == sum(
      len(f) == 1 and f != ["No Finding"] for f in test_findings)
  binary, _ = offline.evaluate_features(examples, None, every, label_mode="binary:Effusion")
  assert binary["k"] == 2 and binary["class_counts"]["Effusion"] == sum(
      "Effusion" in f for f in test_findings)


# ----------------------------------------------------------------------------- end to end


def _train(workdir, synthetic_data_dir, *extra):
  run_module(["simclr_jax.train", "--config", "experiments/configs/demo.py",
              "--workdir", workdir, "--config.num_train_steps=2",
              "--config.dataset=synthetic_cxr/32", f"--config.data_dir={synthetic_data_dir}",
              "--config.model=resnet_tiny", "--config.image_size=32",
              "--config.batch_size=16", "--config.checkpoint_every_steps=2",
              "--config.optimizer.learning_rate=0.05", "--config.progress_bar=False",
              "--config.optimizer.warmup_steps=0",  # no warm-up longer than the run
              "--config.eval_every_steps=0", *extra])


@pytest.mark.slow
def test_cli_restores_a_checkpoint_written_by_train(tmp_path, synthetic_data_dir):
  """simclr_jax.train writes a checkpoint in one process; the evaluator CLI restores it in
  another (2 fake devices), logs progress lines to a non-TTY stdout, and with --overwrite
  replaces that report whole by the random-init baseline's."""
  workdir = tmp_path / "train"
  _train(workdir, synthetic_data_dir)
  common = ["--dataset", "synthetic_cxr/32", "--data_dir", synthetic_data_dir,
            "--split", "test", "--train_split", "train", "--batch_size", "12",
            "--label_fractions", "0.5,1.0", "--kmeans_n_init", "2"]
  out = tmp_path / "eval"
  trained = run_module(["simclr_jax.evaluate", "--workdir", workdir, "--out", out, *common],
                       num_devices=2)
  assert "[features test] batch 4/4" in trained.stdout      # 40 images / 12 per batch
  assert "[evaluators] evaluator 7/7" in trained.stdout   # classifier: skipped, no head
  report = json.loads((out / "report.json").read_text())
  assert report["checkpoint_step"] == 2 and report["encoder_source"] == "checkpoint"
  assert report["encoder_init"].startswith("trained (simclr objective), checkpoint step 2")
  assert report["num_examples"] == report["num_examples_total"] == 40
  assert report["k"] == 5 and report["label_mode"] == "label"
  for key in ("cluster_accuracy", "nmi", "ari", "purity", "linear_accuracy",
              "linear_auroc_macro", "knn_accuracy", "knn_auroc_macro", "label_fractions",
              "feature_extraction_seconds", "clustering_seconds"):
    assert report[key] is not None, key
  features = dict(np.load(out / "features.npz"))
  # Every test example once, in the dataset's record order.
  from simclr_jax import data
  source = data.data_source("synthetic_cxr/32", str(synthetic_data_dir), "test")
  records = [source[i] for i in range(len(source))]
  np.testing.assert_array_equal(features["patient_id"], [r["patient_id"] for r in records])
  np.testing.assert_array_equal(features["labels"], [r["label"] for r in records])

  # The same --out again: refused in-process (test_cli_refuses_bad_settings_in_one_line),
  # replaced whole with --overwrite here (no plots this time: none may be left).
  random_args = ["simclr_jax.evaluate", "--workdir", workdir, "--random_init", "--out", out,
                 "--plots=false", *common, "--train_split="]
  run_module(random_args + ["--overwrite"])
  assert sorted(p.name for p in out.iterdir()) == ["features.npz", "report.json", "report.md"]
  random_report = json.loads((out / "report.json").read_text())
  assert random_report["checkpoint_step"] is None and "linear_auroc_macro" not in random_report
  assert "zero_init_residual=False" in random_report["encoder_init"]
  assert not np.allclose(features["features"], np.load(out / "features.npz")["features"])


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_two_processes_gather_features_and_process_0_writes(tmp_path, synthetic_data_dir):
  """2 processes (jax.distributed on 127.0.0.1): each encodes its block of the split, the
  features are gathered in record order, process 0 alone writes the report; the features
  equal one process encoding the whole split."""
  out = tmp_path / "eval"
  port = _free_port()
  args = ["-m", "simclr_jax.evaluate", "--model", "resnet_tiny", "--image_size", "32",
          "--random_init", "--dataset", "synthetic_cxr/32", "--data_dir",
          str(synthetic_data_dir), "--split", "test", "--train_split=", "--evaluators",
          "similarity", "--plots=false", "--batch_size",
          "8", "--out", str(out), f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2"]
  processes = [subprocess.Popen([sys.executable, *args, f"--process_id={index}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO_ROOT, env=subprocess_env(1))
               for index in range(2)]
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=300))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  assert json.loads(outputs[0][0].splitlines()[-1])["num_examples"] == 40
  # Process 1 neither logs progress nor a summary (gloo prints its own connection line).
  assert not [line for line in outputs[1][0].splitlines()
              if line.startswith(("[features", "[evaluators", "{"))]
  assert "[features test]" in outputs[0][0]
  report = json.loads((out / "report.json").read_text())
  assert report["processes"] == 2 and report["num_examples_total"] == 40
  saved = np.load(out / "features.npz")
  from simclr_jax import data
  from simclr_jax.evaluation import encoders
  from simclr_jax.evaluation import features as features_lib
  source = data.data_source("synthetic_cxr/32", str(synthetic_data_dir), "test")
  np.testing.assert_array_equal(saved["patient_id"],
                                [source[i]["patient_id"] for i in range(len(source))])
  encoder = encoders.load_encoder(model="resnet_tiny", image_size=32, random_init=True)
  single = features_lib.encode_split(*encoders.make_encode_fn(encoder), "synthetic_cxr/32",
                                     str(synthetic_data_dir), "test", batch_size=16)
  np.testing.assert_allclose(saved["features"], single["features"], rtol=1e-5, atol=1e-5)


def _supervised_workdir(path, synthetic_data_dir):
  """A run of this project with objective "supervised", written by the trainer (config.json,
  orbax checkpoint of the Supervised model: params {'encoder', 'classifier'}, no projection
  head); returns its encoder variables as the checkpoint holds them."""
  from simclr_jax import checkpointing
  _train(path, synthetic_data_dir, "--config.objective=supervised",
         "--config.num_train_steps=4", "--config.checkpoint_every_steps=4")
  _, variables, step = checkpointing.load_for_eval(str(path))
  assert step == 4 and set(variables["params"]) == {"encoder", "classifier"}
  return {"params": variables["params"]["encoder"],
          "batch_stats": variables["batch_stats"]["encoder"]}


def test_compare_writes_the_seed_table(tmp_path, synthetic_data_dir, monkeypatch):
  """Rows SimCLR/supervised/random init/ImageNet, here a supervised run of this project
  (--supervised_workdir) and the fair random init; refuses an earlier comparison."""
  from experiments import compare
  supervised = tmp_path / "supervised"
  supervised_variables = _supervised_workdir(supervised, synthetic_data_dir)
  out = tmp_path / "compare"
  argv = ["--supervised_workdir", str(supervised), "--random_init",
          "--dataset", "synthetic_cxr/32", "--data_dir", str(synthetic_data_dir),
          "--split", "test", "--train_split", "train", "--label_fractions", "0.5,1.0",
          "--kmeans_n_init", "1", "--batch_size", "40", "--plots", "0", "--out", str(out)]
  built = []   # the evaluators are built (their settings checked) once for every row
  monkeypatch.setattr(offline, "from_config",
                      lambda spec: built.append(spec) or from_config(spec))
  reports = compare.main(argv)
  assert list(reports) == ["supervised", "random_init"]
  assert len(built) == 1 and list(built[0]) == list(EVALUATORS)
  table = (out / "report.md").read_text()
  assert ("| Method | clustering accuracy | NMI | ARI | linear AUROC | kNN accuracy | "
          "kNN AUROC | linear AUROC @ 0.5 labels | linear AUROC @ 1 labels | "
          "classifier AUROC | labels used in pretraining |") in table
  row = next(line for line in table.splitlines() if line.startswith("| Random init"))
  assert f"{reports['random_init']['cluster_accuracy']:.4f}" in row and row.endswith("| none |")
  low, high = reports["random_init"]["linear_auroc_macro_ci95"]       # AUROC with interval
  assert f"{reports['random_init']['linear_auroc_macro']:.4f} [{low:.4f}, {high:.4f}]" in row
  row = next(line for line in table.splitlines() if line.startswith("| Supervised (JAX), step 4"))
  assert row.endswith("| target-domain labels (synthetic_cxr/32) |")
  assert f"{reports['supervised']['label_fractions'][0]['linear_auroc_macro']:.4f}" in row
  # The supervised run's own head is scored; the random init has none: skipped, and why.
  supervised_report = reports["supervised"]
  low, high = supervised_report["classifier_auroc_macro_ci95"]
  assert f"{supervised_report['classifier_auroc_macro']:.4f} [{low:.4f}, {high:.4f}]" in row
  assert supervised_report["classifier_examples"] == 40
  assert "classifier_auroc_macro" not in reports["random_init"]
  assert ("- Random init (torchvision-style): classifier skipped, the encoder has no "
          "classifier head") in table
  assert "zero_init_residual=False" in table    # the init of each row is stated
  assert json.loads((out / "report.json").read_text())["random_init"]["k"] == 5
  # The supervised row is the checkpoint's encoder: its features are that network's.
  loaded = encoders.load_encoder(workdir=str(supervised))
  assert set(loaded.variables["params"]) == {"encoder", "classifier"}
  encode, variables = encoders.make_encode_fn(loaded)
  images = np.asarray(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1)), np.uint8)
  direct, direct_variables = encoders.make_encode_fn(encoders.Encoder(
      loaded.config, supervised_variables, source="test", init="test"))
  outputs = encode(variables, images)   # a classifier head: its logits come along
  assert outputs["logits"].shape == (2, 5)
  np.testing.assert_allclose(outputs["features"], direct(direct_variables, images), rtol=1e-6)

  with pytest.raises(report_lib.ReportExistsError, match="earlier comparison"):
    compare.main(argv)
  # --overwrite with a row that cannot load (a workdir without checkpoints): the earlier
  # comparison is still there afterwards.
  before = sorted(p.relative_to(out) for p in out.rglob("*"))
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  (untrained / "config.json").write_text((supervised / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
    compare.main(["--supervised_workdir", str(untrained)] + argv[2:] + ["--overwrite"])
  assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
  reports = compare.main(argv[2:] + ["--overwrite", "--model", "resnet_tiny", "--image_size",
                                    "32", "--evaluators", "similarity"])  # one row now
  assert list(reports) == ["random_init"]
  assert not (out / "supervised").exists()
  # A SimCLR run is not a supervised row; and the file path works as README once said
  # (without PYTHONPATH: the script puts the repository on the path itself).
  simclr_like = tmp_path / "simclr_like"
  simclr_like.mkdir()
  (simclr_like / "config.json").write_text(json.dumps({"objective": "simclr"}))
  proc = subprocess.run(
      [sys.executable, "experiments/compare.py", "--supervised_workdir", str(simclr_like),
       "--dataset", "synthetic_cxr/32", "--data_dir", str(synthetic_data_dir),
       "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300,
      cwd=REPO_ROOT, env={k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"})
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"error: --supervised_workdir={simclr_like}: its config.json has objective='simclr', "
      "not 'supervised'; pass SimCLR runs as --simclr_workdir."]
