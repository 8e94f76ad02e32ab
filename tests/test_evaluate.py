"""Tests for simclr_jax/evaluate.py: label modes on the real ChestX-ray14 CSV, masked
multi-device feature extraction, the report, and the CLI on a real training run."""
import collections
import csv
import functools
import gzip
import json

import numpy as np
import pytest

from conftest import run_module, run_python
from simclr_jax import evaluate

NUM_CSV_ROWS = 112_120


# ----------------------------------------------------------------------------- label modes


@functools.lru_cache(maxsize=1)
def _read_data_entry(path):
  with gzip.open(path, "rt", newline="") as file:
    findings = [row["Finding Labels"].split("|") for row in csv.DictReader(file)]
  return findings, evaluate.read_data_entry_csv(path)


@pytest.fixture
def data_entry(shared_data):
  """(rows parsed here with the csv module, the evaluator's own reading of the CSV)."""
  return _read_data_entry(str(shared_data / "nih_sample" / "Data_Entry_2017_v2020.csv.gz"))


def test_csv_reading(data_entry):
  findings, table = data_entry
  assert len(findings) == NUM_CSV_ROWS == table["labels"].shape[0]
  assert table["labels"].shape == (NUM_CSV_ROWS, 14)
  assert int(table["no_finding"].sum()) == sum(f == ["No Finding"] for f in findings)
  pneumonia = evaluate.FINDINGS.index("Pneumonia")
  assert int(table["labels"][:, pneumonia].sum()) == sum("Pneumonia" in f for f in findings)


def test_single_label_mode_counts(data_entry):
  findings, table = data_entry
  labels = evaluate.select_labels("single", table)
  expected = collections.Counter(f[0] for f in findings if len(f) == 1)
  assert labels.mode == "single"
  assert labels.num_kept == sum(expected.values()) == sum(len(f) == 1 for f in findings)
  counted = collections.Counter(labels.class_names[c] for c in labels.labels[labels.kept])
  assert counted == expected
  assert len(labels.class_names) == 15 and labels.class_names[14] == "No Finding"


def test_primary_label_mode_counts(data_entry):
  findings, table = data_entry
  expected = collections.Counter(f[0] for f in findings)  # the first label listed
  with_text = evaluate.select_labels("primary", table)    # table carries 'finding_labels'
  assert with_text.num_kept == NUM_CSV_ROWS
  assert collections.Counter(with_text.class_names[c] for c in with_text.labels) == expected
  # Without the CSV text (TFDS multi-hot only): alphabetically first finding, which
  # differs from the listed first exactly where the CSV is not in alphabetical order.
  multi_hot_only = {"labels": table["labels"], "no_finding": table["no_finding"]}
  derived = evaluate.select_labels("primary", multi_hot_only)
  names = np.asarray(derived.class_names)[derived.labels]
  listed_first = np.asarray([f[0] for f in findings])
  alphabetical_first = np.asarray([min(f) for f in findings])
  np.testing.assert_array_equal(names, alphabetical_first)
  assert 0 < int(np.sum(names != listed_first)) < 100  # 31 rows in the v2020 CSV


def test_binary_label_mode_counts(data_entry):
  findings, table = data_entry
  labels = evaluate.select_labels("binary:pneumonia", table)
  assert labels.mode == "binary:Pneumonia"
  assert labels.class_names == ("no Pneumonia", "Pneumonia")
  assert labels.num_kept == NUM_CSV_ROWS
  assert int(labels.labels.sum()) == sum("Pneumonia" in f for f in findings)
  with pytest.raises(ValueError, match="binary:Hernia"):
    evaluate.select_labels("binary:Pneumonitis", table)
  with pytest.raises(ValueError, match="accepted values"):
    evaluate.select_labels("first", table)


def test_single_label_dataset_modes():
  examples = {"label": np.array([0, 1, 2, 1, -1])}
  labels = evaluate.select_labels("single", examples, ["normal", "mass", "effusion"])
  assert labels.mode == "label" and labels.num_kept == 4
  binary = evaluate.select_labels("binary:mass", examples, ["normal", "mass", "effusion"])
  assert binary.labels.tolist() == [0, 1, 0, 1, -1]


# ----------------------------------------------------------------------------- extraction

_MASKED_EXTRACTION_CODE = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from simclr_jax import evaluate

num_examples, batch_size = 23, 8   # 3 batches; the last one has 7 real rows + 1 padding

def batches():
  for start in range(0, num_examples, batch_size):
    ids = np.arange(start, start + batch_size)
    mask = ids < num_examples
    images = np.where(mask[:, None, None, None], ids[:, None, None, None] + 1, 0)
    yield {'image': np.broadcast_to(images, (batch_size, 2, 2, 1)).astype(np.uint8),
           'mask': mask, 'id': np.where(mask, ids, -7)}

def encode(variables, images):  # features = (pixel, 2 * pixel) * scale
  pixel = images[:, 0, 0, :].astype(jnp.float32)
  return jnp.concatenate([pixel, 2 * pixel], axis=-1) * variables['scale']

out = evaluate.extract_features(encode, {'scale': jnp.float32(1.0)}, batches())
# A batch whose size is not a multiple of the 3 devices and that has no padding.
out2 = evaluate.extract_features(encode, {'scale': jnp.float32(1.0)}, iter([
    {'image': np.arange(1, 6, dtype=np.uint8).reshape(5, 1, 1, 1).repeat(2, 1).repeat(2, 2),
     'mask': np.ones(5, bool)}]))
print(json.dumps({'devices': jax.local_device_count(),
                  'features': out['features'].tolist(), 'ids': out['id'].tolist(),
                  'features2': out2['features'][:, 0].tolist()}))
"""


def test_masked_extraction_counts_every_example_once_in_order():
  result = run_python(_MASKED_EXTRACTION_CODE, num_devices=3)
  assert result["devices"] == 3
  assert result["ids"] == list(range(23))
  assert [row[0] for row in result["features"]] == [i + 1.0 for i in range(23)]
  assert [row[1] for row in result["features"]] == [2.0 * (i + 1) for i in range(23)]
  assert result["features2"] == [1.0, 2.0, 3.0, 4.0, 5.0]


# ----------------------------------------------------------------------------- report


def _split(num_per_class, seed, num_classes=3, dim=8):
  centres = np.random.default_rng(99).normal(size=(num_classes, dim)) * 6
  rng = np.random.default_rng(seed)
  label = np.repeat(np.arange(num_classes), num_per_class)
  features = centres[label] + rng.normal(size=(label.size, dim))
  return {"features": features.astype(np.float32), "label": label,
          "patient_id": np.arange(label.size) // 2}


def test_evaluate_features_and_outputs(tmp_path):
  report, arrays = evaluate.evaluate_features(
      _split(20, seed=1), _split(30, seed=2), class_names=["a", "b", "c"],
      label_fractions=(0.1, 1.0), kmeans_n_init=2)
  assert report["label_mode"] == "label" and report["k"] == 3
  assert report["num_examples"] == 60
  assert report["cluster_accuracy"] == 1.0 and report["nmi"] == pytest.approx(1.0)
  assert report["linear_accuracy"] == 1.0 and report["knn_accuracy"] == 1.0
  assert [entry["fraction"] for entry in report["label_fractions"]] == [0.1, 1.0]
  assert report["feature_quality"]["cosine_gap"] > 0.5
  report["feature_extraction_seconds"] = 0.0
  written = evaluate.write_outputs(report, arrays, str(tmp_path))
  on_disk = json.loads((tmp_path / "report.json").read_text())
  assert on_disk["cluster_accuracy"] == 1.0 and written["plots"]
  for name in ("report.md", "features.npz", "embedding_pca.png", "cluster_confusion.png",
               "label_efficiency.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  saved = np.load(tmp_path / "features.npz")
  assert saved["features"].shape == (60, 8) and saved["cluster_ids"].shape == (60,)
  assert "| cluster accuracy | 1.0000 |" in (tmp_path / "report.md").read_text()


def test_multi_label_report_uses_auroc():
  rng = np.random.default_rng(0)

  def nih_like(n):
    multi_hot = (rng.random((n, 14)) < 0.15).astype(np.uint8)
    features = multi_hot * 3.0 + rng.normal(size=(n, 14))
    return {"features": features.astype(np.float32), "labels": multi_hot,
            "no_finding": multi_hot.sum(1) == 0, "patient_id": np.arange(n) // 3}

  report, _ = evaluate.evaluate_features(nih_like(150), nih_like(300), k=14,
                                         label_fractions=(0.5, 1.0), kmeans_n_init=1)
  assert report["label_mode"] == "single" and report["k"] == 14
  assert set(report["linear_auroc"]) == set(evaluate.FINDINGS)
  assert report["linear_auroc_macro"] > 0.9
  assert "linear_accuracy" not in report


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def nih_thumbs_dir(tmp_path_factory):
  """The real 64 px ChestX-ray14 thumbnails (1,000 images) as TFDS nih_chest_xray14/thumbs64."""
  from conftest import SHARED_DATA
  if not (SHARED_DATA / "nih_thumbs").exists():
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  import tensorflow_datasets as tfds
  from simclr_jax.data import NihChestXray14
  data_dir = tmp_path_factory.mktemp("nih_tfds")
  builder = NihChestXray14(config="thumbs64", data_dir=str(data_dir), num_workers=1)
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
  report = evaluate.evaluate(
      encoder, dataset="nih_chest_xray14/thumbs64", data_dir=str(nih_thumbs_dir),
      split="test", train_split="train", out_dir=str(tmp_path), label_mode="primary",
      labels_csv=str(csv_path), label_fractions=(0.5, 1.0), batch_size=64,
      kmeans_n_init=1, plots=False)
  assert report["label_mode"] == "primary" and report["k"] == 15
  assert report["num_examples"] == report["num_examples_total"] == len(test_files) == 200
  expected_primary = collections.Counter(f[0] for f in test_findings)
  assert {n: c for n, c in report["class_counts"].items() if c} == expected_primary
  assert set(report["linear_auroc"]) == set(evaluate.FINDINGS)  # multi-hot probe
  assert 0.0 < report["linear_auroc_macro"] < 1.0
  assert report["num_train_examples"] == 600

  saved = np.load(tmp_path / "features.npz")
  examples = {"features": saved["features"], "labels": saved["multi_hot"]}
  single, _ = evaluate.evaluate_features(examples, label_mode="single", kmeans_n_init=1)
  assert single["num_examples"] == sum(len(f) == 1 for f in test_findings)
  assert {n: c for n, c in single["class_counts"].items() if c} == collections.Counter(
      f[0] for f in test_findings if len(f) == 1)
  binary, _ = evaluate.evaluate_features(examples, label_mode="binary:Effusion",
                                         kmeans_n_init=1)
  assert binary["k"] == 2 and binary["class_counts"]["Effusion"] == sum(
      "Effusion" in f for f in test_findings)
  from simclr_jax.data import nih
  assert evaluate.FINDINGS == nih.FINDINGS  # the evaluator's copy of the label order



@pytest.mark.slow
def test_cli_restores_a_checkpoint_written_by_train(tmp_path, synthetic_data_dir):
  """simclr_jax.train writes a checkpoint in one process; the evaluator CLI restores it in
  another (2 fake devices) and its features differ from the same run's step-0 network."""
  workdir = tmp_path / "train"
  run_module(["simclr_jax.train", "--config", "experiments/configs/demo.py",
              "--workdir", workdir, "--config.num_train_steps=2",
              "--config.dataset=synthetic_cxr/32", f"--config.data_dir={synthetic_data_dir}",
              "--config.model=resnet_tiny", "--config.image_size=32",
              "--config.batch_size=16", "--config.checkpoint_every_steps=2",
              "--config.optimizer.learning_rate=0.05", "--config.progress_bar=False",
              "--config.optimizer.warmup_steps=0"])   # no warm-up longer than the run
  common = ["--dataset", "synthetic_cxr/32", "--data_dir", synthetic_data_dir,
            "--split", "test", "--train_split", "train", "--batch_size", "12",
            "--label_fractions", "0.5,1.0", "--kmeans_n_init", "2"]
  trained = tmp_path / "eval"
  random = tmp_path / "eval_random"
  run_module(["simclr_jax.evaluate", "--workdir", workdir, "--out", trained, *common],
             num_devices=2)
  run_module(["simclr_jax.evaluate", "--workdir", workdir, "--random_init",
              "--out", random, "--plots=false", *common, "--train_split="], num_devices=2)
  report = json.loads((trained / "report.json").read_text())
  assert report["checkpoint_step"] == 2 and report["encoder_source"] == "checkpoint"
  assert report["num_examples"] == report["num_examples_total"] == 40
  assert report["k"] == 5 and report["label_mode"] == "label"
  for key in ("cluster_accuracy", "nmi", "ari", "purity", "linear_accuracy",
              "linear_auroc_macro", "knn_accuracy", "label_fractions",
              "feature_extraction_seconds", "clustering_seconds"):
    assert report[key] is not None, key
  features = np.load(trained / "features.npz")
  random_features = np.load(random / "features.npz")
  # Every test example once, in the dataset's record order.
  from simclr_jax import data
  source = data.data_source("synthetic_cxr/32", str(synthetic_data_dir), "test")
  records = [source[i] for i in range(len(source))]
  np.testing.assert_array_equal(features["patient_id"], [r["patient_id"] for r in records])
  np.testing.assert_array_equal(features["labels"], [r["label"] for r in records])
  assert not np.allclose(features["features"], random_features["features"])
  assert json.loads((random / "report.json").read_text())["checkpoint_step"] is None


def test_compare_writes_the_seed_table(tmp_path, synthetic_data_dir):
  from experiments import compare
  out = tmp_path / "compare"
  reports = compare.main([
      "--random_init", "--model", "resnet_tiny", "--image_size", "32",
      "--dataset", "synthetic_cxr/32", "--data_dir", str(synthetic_data_dir),
      "--split", "test", "--train_split", "train", "--label_fractions", "1.0",
      "--kmeans_n_init", "1", "--batch_size", "40", "--plots", "0", "--out", str(out)])
  assert list(reports) == ["random_init"]
  table = (out / "report.md").read_text()
  assert ("| Method | clustering accuracy | NMI | ARI | linear AUROC | "
          "labels used in pretraining |") in table
  row = next(line for line in table.splitlines() if line.startswith("| Random init"))
  assert f"{reports['random_init']['cluster_accuracy']:.4f}" in row and row.endswith("| none |")
  assert json.loads((out / "report.json").read_text())["random_init"]["k"] == 5
  assert (out / "random_init" / "report.json").exists()
