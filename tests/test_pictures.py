"""Pictures of what the encoder learned (evaluation/pictures.py): the neighbour selection
against brute force, saliency of a tiny classifier, and the three PNGs of an evaluation."""
import importlib.util
import json

import jax
import numpy as np
import PIL.Image

from simclr_jax import models
from simclr_jax.config import default_config
from simclr_jax.evaluation import encoders
from simclr_jax.evaluation import offline
from simclr_jax.evaluation import pictures
from simclr_jax.evaluation import report as report_lib


def brute_force_neighbours(queries, train, k, query_patients, train_patients, own=None):
  """Float64 NumPy: cosine similarities, most similar first (lower row on ties)."""
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  similarity = queries.astype(np.float64) @ train.astype(np.float64).T
  if own is not None:
    similarity[np.arange(len(own)), own] = -np.inf
  index = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
  return (index, np.take_along_axis(similarity, index, axis=1),
          train_patients[index] == query_patients[:, None])


def test_choose_queries_spreads_over_classes_from_the_seed():
  labels = np.array([0] * 10 + [1] * 3 + [2] * 20 + [-1] * 5)
  chosen = pictures.choose_queries(labels, 8, seed=3)
  assert np.array_equal(chosen, pictures.choose_queries(labels, 8, seed=3))
  assert not np.array_equal(chosen, pictures.choose_queries(labels, 8, seed=4))
  # Turns, the most frequent class first (2, 0, 1, 2, ...); grouped by class.
  assert list(labels[chosen]) == [0, 0, 0, 1, 1, 2, 2, 2]
  assert list(labels[pictures.choose_queries(labels, 2, seed=3)]) == [0, 2]
  assert len(set(chosen)) == 8
  # Fewer rows than asked: every labelled row once.
  assert sorted(pictures.choose_queries(np.array([1, -1, 0, 1]), 8, seed=0)) == [0, 2, 3]


def test_nearest_train_neighbours_match_brute_force():
  rng = np.random.default_rng(0)
  train_patients = rng.integers(0, 12, size=60)
  centres = rng.normal(size=(12, 6))
  train = (centres[train_patients] + 0.8 * rng.normal(size=(60, 6))).astype(np.float32)
  query_patients = np.array([0, 3, 3, 7, 11, 20])   # patient 20 has no train image
  queries = (centres[query_patients % 12] + 0.8 * rng.normal(size=(6, 6))).astype(np.float32)
  found = pictures.nearest_train_neighbours(queries, train, k=8, query_patients=query_patients,
                                            train_patients=train_patients)
  index, similarity, same = brute_force_neighbours(queries, train, 8, query_patients,
                                                   train_patients)
  np.testing.assert_array_equal(found.index, index)
  np.testing.assert_allclose(found.similarity, similarity, atol=1e-6)
  np.testing.assert_array_equal(found.same_patient, same)
  assert same.any() and not same[-1].any()

  # Queries from the train split itself: each is left out of its own neighbours.
  own = np.array([4, 17, 59])
  found = pictures.nearest_train_neighbours(train[own], train, k=5,
                                            query_patients=train_patients[own],
                                            train_patients=train_patients,
                                            query_train_rows=own)
  index, similarity, same = brute_force_neighbours(train[own], train, 5, train_patients[own],
                                                   train_patients, own=own)
  np.testing.assert_array_equal(found.index, index)
  np.testing.assert_allclose(found.similarity, similarity, atol=1e-6)
  np.testing.assert_array_equal(found.same_patient, same)
  # No patient ids: nothing flagged.
  assert not pictures.nearest_train_neighbours(queries, train, k=3).same_patient.any()


def _tiny_classifier(image_size, num_classes=5):
  """An `Encoder` holding a random resnet_tiny + linear classifier (a supervised run's
  variables {'encoder', 'classifier'}). Drawn in NumPy from the shapes (no init to
  compile): He-normal kernels, BatchNorm scale 1, biases and running means 0, variances 1."""
  config = default_config()
  config.update(model="resnet_tiny", image_size=image_size, objective="supervised",
                width=1.0, stem="imagenet")
  config.supervised.num_classes = num_classes
  network = models.create_model(config)
  shapes = jax.eval_shape(lambda: network.init(
      jax.random.PRNGKey(0), np.zeros((1, image_size, image_size, 1), np.float32),
      train=False))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  variables = jax.tree_util.tree_map_with_path(draw, dict(shapes))
  return encoders.Encoder(config, variables, source="checkpoint",
                          init="trained (supervised objective), checkpoint step 7", step=7,
                          description="tiny classifier")


def test_an_evaluation_with_plots_writes_the_three_pictures(tmp_path, synthetic_data_dir,
                                                            monkeypatch):
  """A supervised run's encoder (a classifier head) evaluated with plots: neighbours.png,
  embedding_map.png and saliency.png, named in report.json with the map method and
  captioned in report.md; the saliency maps (spied on) are finite, non-negative and
  nonzero for every image; a report without plots removes them."""
  saliency_results = []

  def spy(*args, **kwargs):
    saliency_results.append(classifier_saliency(*args, **kwargs))
    return saliency_results[-1]

  classifier_saliency = pictures.classifier_saliency
  monkeypatch.setattr(pictures, "classifier_saliency", spy)
  encoder = _tiny_classifier(32)
  data = offline.Data(dataset="synthetic_cxr/32", data_dir=str(synthetic_data_dir),
                      split="test", batch_size=64)
  plan = offline.plan(data, {"knn": {}})   # knn reads the train split's features
  report = offline.evaluate_encoder(encoder, plan, offline.Output(str(tmp_path),
                                                                  save_features=False))
  # Saliency: 3 test images of each of the 5 classes, 32 x 32 like the network's input.
  (result,) = saliency_results
  assert result["saliency"].shape == result["inputs"].shape == (15, 32, 32)
  assert result["logits"].shape == (15, 5)
  assert np.isfinite(result["saliency"]).all() and (result["saliency"] >= 0).all()
  assert (result["saliency"].reshape(15, -1).max(axis=1) > 0).all()

  assert set(pictures.FILES) <= set(report["plots"])
  with open(tmp_path / "report.json") as file:
    on_disk = json.load(file)
  assert on_disk["plots"] == report["plots"]
  method = "UMAP" if importlib.util.find_spec("umap") else "t-SNE"
  assert on_disk["embedding_map_method"].startswith(method)
  sizes = {}
  for name in pictures.FILES:
    assert (tmp_path / name).stat().st_size > 0
    with PIL.Image.open(tmp_path / name) as image:
      image.load()   # decodes the whole file
      sizes[name] = image.size
    assert "checkpoint step 7" in on_disk["plot_captions"][name], name
  # Legible tiles: 8 rows of 1 query + 8 neighbours; 5 classes x 3 saliency pairs.
  width, height = sizes["neighbours.png"]
  assert width >= 9 * 140 and height >= 8 * 150
  width, height = sizes["saliency.png"]
  assert width >= 6 * 140 and height >= 5 * 150
  assert min(sizes["embedding_map.png"]) >= 600
  markdown = (tmp_path / "report.md").read_text()
  for name in pictures.FILES:
    assert f"![{name}]({name})" in markdown
  assert f"then {on_disk['embedding_map_method']}" in markdown

  # A report without plots (--plots=false) replaces this one: no picture is left.
  report_lib.write_report(on_disk, {}, str(tmp_path), plots=False, save_features=False,
                          overwrite=True)
  assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json", "report.md"]
