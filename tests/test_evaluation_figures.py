"""Figures that average like with like (issue 20 point 6) and carry intervals (issue 17
points 4 and 8): bootstrap intervals resampled by patient, the classifier evaluator, which
classes enter each macro AUROC, how the probe's solver stopped, k-means with fewer
distinct points than k, and the dataset's patients in several splits (issue 19 point 1).
In-process, tiny features."""
import functools
import json
import logging
import shutil

import numpy as np
import pytest
import sklearn.metrics

from simclr_jax.data import labels as labels_lib
from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation import from_config
from simclr_jax.evaluation import offline

FINDINGS = list(labels_lib.FINDINGS)


def _scored(num_patients, images_per_patient=1, seed=0, signal=1.0):
  """Binary truth with a noisy score; patient ids 0..num_patients-1."""
  rng = np.random.default_rng(seed)
  patients = np.repeat(np.arange(num_patients), images_per_patient)
  truth = rng.random(patients.size) < 0.4
  scores = truth * signal + rng.normal(size=patients.size)
  return truth, scores, patients


def _interval(truth, scores, patients):
  table = algorithms.auroc_table("auroc", truth[:, None], scores[:, None], ["x"],
                                 patient_ids=patients, resamples=1000)
  return table["auroc_macro"], table["auroc_macro_ci95"]


def test_bootstrap_interval_resamples_patients():
  """The interval contains the point estimate and narrows with more patients; more
  images of the same patients (duplicates) do not narrow it, the same images as new
  patients do: resampling is by patient. Weighted AUROC equals scikit-learn's."""
  truth, scores, patients = _scored(60)
  point, (low, high) = _interval(truth, scores, patients)
  assert point == pytest.approx(sklearn.metrics.roc_auc_score(truth, scores))
  assert low < point < high
  _, (low_more, high_more) = _interval(*_scored(600))
  assert high_more - low_more < 0.6 * (high - low)
  # Every image twice, same patients: the same resamples weigh both copies alike.
  same = _interval(np.tile(truth, 2), np.tile(scores, 2), np.tile(patients, 2))
  assert same[0] == pytest.approx(point) and same[1] == pytest.approx([low, high])
  # The copies as other patients: twice the patients, a narrower (and wrong) interval.
  new = _interval(np.tile(truth, 2), np.tile(scores, 2),
                  np.concatenate([patients, patients + 60]))
  assert new[1][1] - new[1][0] < 0.85 * (high - low)
  # Resample weights: sklearn's weighted AUROC, ties counted one half.
  rng = np.random.default_rng(1)
  rounded = np.round(scores, 1)
  weights = rng.integers(0, 3, size=(4, truth.size)).astype(np.float32)
  got = algorithms.weighted_auroc(truth, rounded, np.arange(truth.size), weights)
  np.testing.assert_allclose(got, [sklearn.metrics.roc_auc_score(
      truth, rounded, sample_weight=w) for w in weights], rtol=1e-6)


def _multi_label(n, seed, dim=6):
  """NIH-like multi-hot data, every other image normal; findings 0-5 shift features."""
  rng = np.random.default_rng(seed)
  multi_hot = (rng.random((n, 14)) < 0.3).astype(np.uint8)
  multi_hot[::2] = 0
  features = rng.normal(size=(n, dim)) + multi_hot[:, :dim] * 2.0
  return {"features": features.astype(np.float32), "labels": multi_hot,
          "patient_id": np.arange(n) // 2}


def test_a_class_without_train_positives_is_left_out_of_every_macro():
  """Hernia has positives in the evaluated split but none in train: the probe, kNN and
  the classifier leave it out of their macro (and say so); before, the multi-label probe
  scored it 0.5 and counted it. Single-label data: a class absent from train likewise."""
  train, evaluated = _multi_label(120, seed=1), _multi_label(80, seed=2)
  train["labels"][:, 13] = 0                     # no train positives of Hernia
  rng = np.random.default_rng(3)
  evaluated["logits"] = (evaluated["labels"] * 2.0 + rng.normal(size=(80, 14))).astype(
      np.float32)
  evaluators = from_config({"linear_probe": {}, "knn": {"k": 5}, "classifier": {}})
  report, arrays = offline.evaluate_features(evaluated, train, evaluators,
                                             label_mode="primary", classifier_label_mode="")
  for name in ("linear_auroc", "knn_auroc", "classifier_auroc"):
    left_out = report[f"{name}_macro_left_out"]
    assert left_out == {"Hernia": algorithms.scores.NO_TRAIN_POSITIVES}, name
    assert report[f"{name}_macro_classes"] == FINDINGS[:13], name
    assert np.isnan(report[name]["Hernia"]), name
    assert report[f"{name}_macro"] == pytest.approx(np.mean(
        [report[name][f] for f in FINDINGS[:13]])), name
    low, high = report[f"{name}_macro_ci95"]
    assert low < report[f"{name}_macro"] < high, name
  # The classifier scores its head: per finding, scikit-learn's AUROC of the logits.
  for j, finding in enumerate(FINDINGS[:13]):
    assert report["classifier_auroc"][finding] == pytest.approx(
        sklearn.metrics.roc_auc_score(evaluated["labels"][:, j], evaluated["logits"][:, j]))
  assert arrays["logits"].shape == (80, 14)

  def blobs(per_class, seed, classes):
    rng = np.random.default_rng(seed)
    label = np.repeat(np.asarray(classes), per_class)
    return {"features": (np.eye(4)[label] * 4 + rng.normal(size=(label.size, 4))).astype(
        np.float32), "label": label, "patient_id": np.arange(label.size)}

  single, _ = offline.evaluate_features(
      blobs(10, 1, [0, 1, 2, 3]), blobs(15, 2, [0, 1, 2]), evaluators,
      class_names=["a", "b", "c", "d"])
  for name in ("linear_auroc", "knn_auroc"):
    assert single[f"{name}_macro_left_out"] == {"d": algorithms.scores.NO_TRAIN_POSITIVES}
    assert single[f"{name}_macro_classes"] == ["a", "b", "c"]
  assert single["classifier_skipped"].startswith("the encoder has no classifier head")


def test_classifier_single_label_and_binary_targets():
  """Softmax targets: accuracy and one-vs-rest AUROC of the head's probabilities equal
  scikit-learn's; a binary label mode (the checkpoint's supervised.label_mode) is one
  AUROC; a head whose outputs do not fit its targets is one clear error."""
  rng = np.random.default_rng(0)
  label = np.repeat(np.arange(3), 20)
  logits = (np.eye(3)[label] * 1.5 + rng.normal(size=(60, 3))).astype(np.float32)
  evaluated = {"features": rng.normal(size=(60, 4)).astype(np.float32), "label": label,
               "logits": logits, "patient_id": np.arange(60) // 3}
  classifier = from_config(["classifier"])
  report, _ = offline.evaluate_features(evaluated, None, classifier,
                                        class_names=["a", "b", "c"], classifier_label_mode="")
  probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  assert report["classifier_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == label))
  for c, name in enumerate("abc"):
    assert report["classifier_auroc"][name] == pytest.approx(
        sklearn.metrics.roc_auc_score(label == c, probabilities[:, c]))
  for key in ("classifier_accuracy", "classifier_auroc_macro"):
    low, high = report[f"{key}_ci95"]
    assert low <= report[key] <= high, key

  multi = _multi_label(60, seed=4)
  normal = multi["labels"].sum(axis=1) == 0
  multi["logits"] = (np.stack([~normal, normal], axis=1) + rng.normal(size=(60, 2))).astype(
      np.float32)
  binary, _ = offline.evaluate_features(multi, None, classifier, label_mode="binary:No Finding",
                                        classifier_label_mode="binary:No Finding")
  assert binary["classifier_auroc_macro_classes"] == ["No Finding"]
  probability = np.exp(multi["logits"][:, 1]) / np.exp(multi["logits"]).sum(axis=1)
  assert binary["classifier_auroc_macro"] == pytest.approx(
      sklearn.metrics.roc_auc_score(normal, probability))
  with pytest.raises(ValueError, match="the head has 2 outputs but its targets"):
    offline.evaluate_features(multi, None, classifier, label_mode="binary:No Finding",
                              classifier_label_mode="")


def test_probe_records_how_its_solver_stopped_and_kmeans_its_clusters(caplog):
  """The probe reports iterations and its final gradient, and warns when it stopped on
  the iteration cap (both solvers); k-means warns when the features hold fewer distinct
  points than k."""
  train, evaluated = _multi_label(100, seed=5), _multi_label(40, seed=6)
  probe = functools.partial(algorithms.linear_probe, train["features"], train["labels"],
                            evaluated["features"], evaluated["labels"], multi_label=True)
  converged = probe()
  assert not converged["linear_probe_stopped_at_cap"]
  assert 2 < converged["linear_probe_iterations"] < 1000
  assert converged["linear_probe_gradient_max"] < 1e-5
  capped = probe(solver="sklearn", max_iter=2)                     # scikit-learn's n_iter_
  assert capped["linear_probe_stopped_at_cap"] and capped["linear_probe_iterations"] == 2
  assert capped["linear_probe_gradient_max"] is None               # scikit-learn: unknown
  with caplog.at_level(logging.WARNING):
    report, _ = offline.evaluate_features(
        evaluated, train, from_config({"linear_probe": {"max_iter": 2},
                                       "label_efficiency": {"fractions": (0.5,), "max_iter": 2}}),
        label_mode="binary:No Finding")
  assert report["linear_probe_stopped_at_cap"] and report["linear_probe_iterations"] == 2
  assert report["linear_probe_gradient_max"] > 1e-5
  assert report["label_fractions"][0]["linear_probe_stopped_at_cap"]
  assert sum("iteration cap" in line for line in report["warnings"]) == 2
  assert "stopped on its iteration cap (max_iter=2" in caplog.text

  rng = np.random.default_rng(7)   # the shape of `evaluated`: one k-means compilation
  points = rng.normal(size=(3, 6)).astype(np.float32)[np.arange(40) % 3]
  collapsed = {"features": points, "label": np.arange(40) % 2}
  with caplog.at_level(logging.WARNING):
    report, _ = offline.evaluate_features(collapsed, None, from_config(
        {"clustering": {"k": 5, "n_init": 1}}))
  assert report["k"] == 5 and report["kmeans_clusters_used"] == 3
  assert report["warnings"] == [
      "k-means used 3 of the k = 5 clusters asked for: the features hold only 3 distinct "
      "points (identical features: a collapsed encoder?)."]


def test_patients_in_several_splits_warned_and_recorded(tmp_path, synthetic_data_dir,
                                                         caplog, capsys):
  """A dataset whose metadata counts patients in several splits: evaluate warns once and
  records it; a dataset prepared before the count existed says nothing (None)."""
  from simclr_jax import evaluate
  from simclr_jax.data import registry
  leaky = tmp_path / "data"
  shutil.copytree(synthetic_data_dir, leaky)
  (metadata_file,) = leaky.glob("synthetic_cxr/32/*/metadata.json")
  metadata = json.loads(metadata_file.read_text())
  metadata.pop("patients_in_several_splits", None)
  metadata_file.write_text(json.dumps(metadata))
  data = offline.Data("synthetic_cxr/32", str(leaky), train_split="")
  assert offline.plan(data, {"similarity": {}}).patients_in_several_splits is None
  metadata_file.write_text(json.dumps(dict(metadata, patients_in_several_splits=3)))
  registry.prepared_builder.cache_clear()  # the builder read the metadata before
  with caplog.at_level(logging.WARNING):
    status = evaluate.main(["evaluate", "--model", "resnet_tiny", "--image_size", "32",
                            "--random_init", "--dataset", "synthetic_cxr/32", "--data_dir",
                            str(leaky), "--train_split=", "--evaluators", "similarity",
                            "--max_examples", "8", "--batch_size", "8", "--plots=false",
                            "--save_features=false",
                            "--out", str(tmp_path / "out")])
  assert status == 0, capsys.readouterr().err
  assert [record.getMessage() for record in caplog.records
          if "more than one split" in record.getMessage()] == [
      "synthetic_cxr/32: 3 patient(s) have images in more than one split (the dataset's "
      "metadata says so): the probe, kNN and classifier figures may be flattered by "
      "recognising patients."]
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["patients_in_several_splits"] == 3
  assert "3 patient(s) of synthetic_cxr/32 have images in more than one split" in (
      report["warnings"][0])
  assert "patients in several splits: 3" in (tmp_path / "out" / "report.md").read_text()
