"""Tests for simclr_jax/evaluation/algorithms/ and data/subsets.py: hand-computed cases and scikit-learn references."""
import numpy as np
import pytest
import sklearn.cluster
import sklearn.datasets
import sklearn.metrics

from simclr_jax.data import subsets
from simclr_jax.evaluation import algorithms


# ----------------------------------------------------------------------------- clustering


def test_permuted_labelling_scores_one():
  labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])
  permutation = np.array([7, 3, 5, 1])  # class c -> cluster permutation[c]
  scores = algorithms.clustering_scores(labels, permutation[labels])
  assert scores == {"cluster_accuracy": 1.0, "nmi": pytest.approx(1.0),
                    "ari": pytest.approx(1.0), "purity": 1.0}


def test_known_confusion():
  labels = np.array([0, 0, 0, 1, 1, 1])
  clusters = np.array([1, 1, 0, 0, 0, 0])
  # Contingency (cluster x class): c0 = [1, 3], c1 = [2, 0]; best matching c0->1, c1->0.
  assert algorithms.clustering_accuracy(labels, clusters) == pytest.approx(5 / 6)
  assert algorithms.purity(labels, clusters) == pytest.approx(5 / 6)
  assert algorithms.hungarian_matching(labels, clusters) == {0: 1, 1: 0}
  assert algorithms.clustering_scores(labels, clusters)["ari"] == pytest.approx(
      sklearn.metrics.adjusted_rand_score(labels, clusters))


def test_more_clusters_than_classes():
  labels = np.array([0, 0, 0, 0, 1, 1])
  clusters = np.array([0, 0, 1, 1, 2, 2])
  # One-to-one: only one of clusters 0/1 can be class 0 -> 4/6; purity is many-to-one.
  assert algorithms.clustering_accuracy(labels, clusters) == pytest.approx(4 / 6)
  assert algorithms.purity(labels, clusters) == 1.0


def test_fewer_clusters_than_classes():
  labels = np.array([0, 1, 2, 0, 1, 2])
  clusters = np.array([0, 0, 0, 1, 1, 1])
  assert algorithms.clustering_accuracy(labels, clusters) == pytest.approx(2 / 6)
  assert algorithms.purity(labels, clusters) == pytest.approx(2 / 6)
  matrix, cluster_values, class_values = algorithms.contingency_matrix(labels, clusters)
  assert matrix.tolist() == [[1, 1, 1], [1, 1, 1]]
  assert cluster_values.tolist() == [0, 1] and class_values.tolist() == [0, 1, 2]


def test_mismatched_lengths_raise():
  with pytest.raises(ValueError, match="same examples"):
    algorithms.clustering_accuracy([0, 1], [0])


# ----------------------------------------------------------------------------- k-means


@pytest.fixture(scope="module")
def blobs():
  features, labels = sklearn.datasets.make_blobs(
      n_samples=600, centers=6, n_features=24, cluster_std=4.0, random_state=3)
  return features.astype(np.float32), labels


def test_kmeans_matches_sklearn(blobs):
  features, labels = blobs
  ours = algorithms.kmeans(features, 6, n_init=3, seed=0, chunk_size=128)  # 600 % 128 != 0
  reference = sklearn.cluster.KMeans(6, n_init=3, random_state=0).fit(features)
  assert ours.assignments.shape == (600,) and ours.centroids.shape == (6, 24)
  assert sklearn.metrics.adjusted_rand_score(reference.labels_, ours.assignments) > 0.99
  assert ours.inertia == pytest.approx(reference.inertia_, rel=1e-4)
  assert algorithms.clustering_accuracy(labels, ours.assignments) > 0.98
  # Inertia is the sum of squared distances to the returned centroids.
  recomputed = np.sum((features - ours.centroids[ours.assignments]) ** 2)
  assert ours.inertia == pytest.approx(recomputed, rel=1e-4)
  assert ours.inertia == min(ours.restart_inertias)


def test_kmeans_deterministic_and_chunk_independent(blobs):
  features, _ = blobs
  first = algorithms.kmeans(features, 6, n_init=2, seed=5, chunk_size=128)
  again = algorithms.kmeans(features, 6, n_init=2, seed=5, chunk_size=128)
  one_chunk = algorithms.kmeans(features, 6, n_init=2, seed=5, chunk_size=600)
  np.testing.assert_array_equal(first.assignments, again.assignments)
  np.testing.assert_array_equal(first.centroids, again.centroids)
  assert sklearn.metrics.adjusted_rand_score(first.assignments, one_chunk.assignments) == 1.0


def test_kmeans_duplicates_and_bad_input():
  # 3 distinct points, k = 3: every restart must find the exact solution (inertia 0),
  # which needs k-means++ to cope with a zero potential and empty clusters.
  points = np.repeat(np.eye(3, 5, dtype=np.float32) * 10, [5, 1, 4], axis=0)
  result = algorithms.kmeans(points, 3, n_init=2, seed=0)
  assert result.inertia == pytest.approx(0.0, abs=1e-4)
  assert algorithms.clustering_accuracy(np.repeat([0, 1, 2], [5, 1, 4]), result.assignments) == 1
  with pytest.raises(ValueError, match="k=11"):
    algorithms.kmeans(points, 11)
  with pytest.raises(ValueError, match="NaN"):
    algorithms.kmeans(np.full((4, 2), np.nan), 2)


# ----------------------------------------------------------------------------- kNN, probe


def _separable(num_per_class=40, num_classes=3, dim=16, seed=0):
  centres = np.random.default_rng(123).normal(size=(num_classes, dim)) * 5  # same per call
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), num_per_class)
  features = centres[labels] + rng.normal(size=(labels.size, dim)) * 0.5
  return features.astype(np.float32), labels


def test_knn_hand_case_and_separable():
  train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], np.float32)
  train_labels = np.array([0, 0, 1, 1, 2])
  test = np.array([[1, 0.05], [0.05, 1], [-1, -0.1]], np.float32)
  votes = algorithms.knn_predict(train, train_labels, test, k=1)
  assert np.argmax(votes, axis=1).tolist() == [0, 1, 2]
  # k=3 majority for the first test point: neighbours 0, 0 and (class 1 at 0.1 cos) -> 0.
  votes = algorithms.knn_predict(train, train_labels, test[:1], k=3)
  assert votes.tolist() == [[2.0, 1.0, 0.0]]
  features, labels = _separable()
  test_features, test_labels = _separable(seed=1)
  for weighting in ("majority", "weighted"):
    assert algorithms.knn_accuracy(features, labels, test_features, test_labels, k=20,
                                weighting=weighting) == 1.0


def test_linear_probe_single_label():
  features, labels = _separable()
  test_features, test_labels = _separable(seed=1)
  result = algorithms.linear_probe(features, labels, test_features, test_labels,
                                multi_label=False, class_names=["a", "b", "c"])
  assert result["linear_accuracy"] == 1.0
  assert result["linear_auroc_macro"] == pytest.approx(1.0)
  assert set(result["linear_auroc"]) == {"a", "b", "c"}
  # Random labels: chance-level accuracy, so the probe does not just memorise.
  shuffled = np.random.default_rng(0).permutation(test_labels)
  chance = algorithms.linear_probe(features, labels, test_features, shuffled, multi_label=False)
  assert chance["linear_accuracy"] < 0.6


def test_linear_probe_multi_label():
  rng = np.random.default_rng(0)
  targets = rng.integers(0, 2, size=(200, 3))
  targets[:, 2] = 0  # a label with no positive: constant score, AUROC undefined (NaN)
  features = (targets[:, :2] * 4.0 + rng.normal(size=(200, 2)) * 0.3).astype(np.float32)
  features = np.concatenate([features, rng.normal(size=(200, 4))], axis=1)
  result = algorithms.linear_probe(features[:120], targets[:120], features[120:], targets[120:],
                                multi_label=True, class_names=["x", "y", "z"])
  assert result["linear_auroc"]["x"] > 0.99 and result["linear_auroc"]["y"] > 0.99
  assert np.isnan(result["linear_auroc"]["z"])
  assert result["linear_auroc_macro"] == pytest.approx(
      (result["linear_auroc"]["x"] + result["linear_auroc"]["y"]) / 2)


def _noisy_multi_label(n, seed, num_labels=5, dim=24):
  """Findings that shift a few feature directions, under heavy noise (AUROC ~0.6-0.9)."""
  directions = np.random.default_rng(7).normal(size=(num_labels, dim))  # same per call
  rng = np.random.default_rng(seed)
  targets = (rng.random((n, num_labels)) < 0.25).astype(np.int64)
  features = targets @ directions * 0.6 + rng.normal(size=(n, dim)) * 2.0 + 3.0
  return features.astype(np.float32), targets


@pytest.mark.parametrize("regularisation", [1.0, 0.01])
def test_device_probe_matches_sklearn(regularisation):
  """The JAX/optax L-BFGS probe solves scikit-learn's LogisticRegression(C) objective on
  standardised features: per-label AUROC within 1e-3 for multi-label (independent
  sigmoids), multinomial and binary targets."""
  train_x, train_y = _noisy_multi_label(400, seed=0)
  test_x, test_y = _noisy_multi_label(300, seed=1)
  train_y[:, 4] = 0  # no positive in train: not learnt, no AUROC, left out of the macro
  results = {solver: algorithms.linear_probe(train_x, train_y, test_x, test_y, multi_label=True,
                                          regularisation=regularisation, solver=solver)
             for solver in ("jax", "sklearn")}
  for name, auroc in results["sklearn"]["linear_auroc"].items():
    assert 0.55 < auroc < 0.97 or name == "4", (name, auroc)  # neither trivial nor chance
    assert results["jax"]["linear_auroc"][name] == pytest.approx(auroc, abs=1e-3,
                                                                 nan_ok=True), name
  for result in results.values():
    assert np.isnan(result["linear_auroc"]["4"]) and "4" in result["linear_auroc_macro_left_out"]
    assert result["linear_auroc_macro_classes"] == ["0", "1", "2", "3"]
  # Single-label: 4 classes (multinomial softmax) and 2 classes (one sigmoid).
  for num_classes in (4, 2):
    train_labels = train_y[:, :2] @ [1, 2] % num_classes
    test_labels = test_y[:, :2] @ [1, 2] % num_classes
    single = {solver: algorithms.linear_probe(train_x, train_labels, test_x, test_labels,
                                           multi_label=False, regularisation=regularisation,
                                           solver=solver) for solver in ("jax", "sklearn")}
    for name, auroc in single["sklearn"]["linear_auroc"].items():
      assert single["jax"]["linear_auroc"][name] == pytest.approx(auroc, abs=1e-3), name
    assert single["jax"]["linear_accuracy"] == pytest.approx(
        single["sklearn"]["linear_accuracy"], abs=2 / len(test_labels))


def test_knn_label_scores_hand_case():
  train = np.array([[1, 0], [0.8, 0.2], [0, 1]], np.float32)
  multi_hot = np.array([[1, 0], [1, 1], [0, 1]])
  neighbours = algorithms.knn_neighbours(train, np.array([[1, 0.1]], np.float32), k=2)
  assert neighbours[1].tolist() == [[0, 1]]
  scores = algorithms.knn_label_scores(neighbours, multi_hot, weighting="majority")
  np.testing.assert_allclose(scores, [[1.0, 0.5]])


# ----------------------------------------------------------------------------- label efficiency


def test_patient_subsample():
  patients = np.repeat(np.arange(50), 3)               # 50 patients, 3 images each
  targets = np.zeros(150, np.int64)
  targets[149] = 1                                     # one rare positive (patient 49)
  subset = subsets.patient_subsample(patients, targets, 0.1, seed=0)
  chosen = np.unique(patients[subset])
  # Whole patients only; 5 drawn (+1 for the rare class if it was not among them).
  assert np.isin(np.flatnonzero(np.isin(patients, chosen)), subset).all()
  assert len(chosen) in (5, 6) and 149 in subset
  np.testing.assert_array_equal(subset, subsets.patient_subsample(patients, targets, 0.1,
                                                                  seed=0))
  assert subsets.patient_subsample(patients, targets, 1.0).size == 150
  multi_hot = np.zeros((150, 2), np.int64)
  multi_hot[[10, 140], 1] = 1
  subset = subsets.patient_subsample(patients, multi_hot, 0.02, seed=1)
  assert multi_hot[subset, 1].sum() >= 1
  with pytest.raises(ValueError, match="fraction"):
    subsets.patient_subsample(patients, targets, 0.0)


def test_label_efficiency_reports_sizes():
  features, labels = _separable(num_per_class=30)
  test_features, test_labels = _separable(num_per_class=10, seed=1)
  results = algorithms.label_efficiency(features, labels, test_features, test_labels,
                                     np.arange(labels.size), [0.1, 1.0], multi_label=False)
  assert [r["num_train_examples"] for r in results] == [9, 90]
  assert all(r["linear_accuracy"] == 1.0 for r in results)


# ----------------------------------------------------------------------------- feature quality


def test_feature_quality_hand_case_and_brute_force():
  features = np.array([[1, 0], [2, 0], [0, 3], [0, 1]], np.float32)
  quality = algorithms.feature_quality(features, [0, 0, 1, 1])
  assert quality["within_class_cosine"] == pytest.approx(1.0)
  assert quality["between_class_cosine"] == pytest.approx(0.0)
  rng = np.random.default_rng(0)
  features, labels = rng.normal(size=(30, 5)), rng.integers(0, 3, 30)
  labels[0] = -1  # ignored
  normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
  cosine = normalised @ normalised.T
  use = labels >= 0
  same = (labels[:, None] == labels[None]) & ~np.eye(30, dtype=bool) & use[:, None] & use[None]
  different = (labels[:, None] != labels[None]) & use[:, None] & use[None]
  quality = algorithms.feature_quality(features, labels)
  assert quality["within_class_cosine"] == pytest.approx(cosine[same].mean())
  assert quality["between_class_cosine"] == pytest.approx(cosine[different].mean())
