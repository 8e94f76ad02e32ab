"""The patient-shortcut figure: algorithms.patient_shortcut and its evaluator."""
import math

import numpy as np

from simclr_jax.evaluation import algorithms
from simclr_jax.evaluation import from_config
from simclr_jax.evaluation import representations


def brute_force_shortcut(features, patient_ids):
  """Float64 NumPy: nearest other row by cosine (lowest row on ties), one row at a time."""
  features = np.asarray(features, np.float64)
  features = features / np.linalg.norm(features, axis=1, keepdims=True)
  n = len(features)
  hits, chances = [], []
  for i in range(n):
    same = [j for j in range(n) if j != i and patient_ids[j] == patient_ids[i]]
    if not same:
      continue
    others = [j for j in range(n) if j != i]
    similarity = [features[i] @ features[j] for j in others]
    nearest = others[int(np.argmax(similarity))]
    hits.append(patient_ids[nearest] == patient_ids[i])
    chances.append(len(same) / (n - 1))
  return float(np.mean(hits)), float(np.mean(chances)), len(hits)


def test_matches_brute_force_with_singletons_and_chunks():
  rng = np.random.default_rng(0)
  patient_ids = rng.integers(0, 15, size=37)  # some patients once, some several times
  centres = rng.normal(size=(15, 6))
  features = centres[patient_ids] + 1.2 * rng.normal(size=(37, 6))
  expected = brute_force_shortcut(features, patient_ids)
  assert 0 < expected[0] < 1 and expected[2] < 37
  for chunk_size in (8, 1024):
    result = algorithms.patient_shortcut(features, patient_ids, chunk_size=chunk_size)
    assert result.num_images == expected[2]
    np.testing.assert_allclose((result.rate, result.chance), expected[:2], rtol=1e-12)


def test_identical_features_within_a_patient_score_one():
  rng = np.random.default_rng(1)
  patient_ids = np.repeat(np.arange(10), [1, 2, 3, 4, 1, 2, 3, 4, 2, 2])
  features = rng.normal(size=(10, 8))[patient_ids]  # duplicates of each patient's row
  rate, chance, num_images = algorithms.patient_shortcut(features, patient_ids)
  assert (rate, num_images) == (1.0, 22)
  sizes = np.bincount(patient_ids)[patient_ids]
  assert chance == np.mean(((sizes - 1) / 23)[sizes >= 2])


def test_random_features_are_near_chance_and_singletons_give_nan():
  rng = np.random.default_rng(2)
  patient_ids = np.repeat(np.arange(100), 4)
  rate, chance, num_images = algorithms.patient_shortcut(rng.normal(size=(400, 16)),
                                                         patient_ids)
  assert num_images == 400 and chance == 3 / 399
  assert rate < 4 * chance  # 400 draws at p = 0.0075: 3 expected
  rate, chance, num_images = algorithms.patient_shortcut(rng.normal(size=(5, 3)), np.arange(5))
  assert math.isnan(rate) and math.isnan(chance) and num_images == 0


def test_evaluator_yields_the_figure_when_the_split_has_patient_ids():
  rng = np.random.default_rng(3)
  patient_ids = np.repeat(np.arange(6), 3)
  examples = {"features": rng.normal(size=(6, 4))[patient_ids].astype(np.float32),
              "label": patient_ids % 2, "patient_id": patient_ids}
  [(name, evaluator)] = from_config(["patient_shortcut"])
  outputs = dict(evaluator.run(representations.build(examples, class_names=["a", "b"])))
  assert outputs == {"patient_shortcut": 1.0, "patient_shortcut_chance": 2 / 17,
                     "patient_shortcut_images": 18}
  del examples["patient_id"]
  assert not list(evaluator.run(representations.build(examples, class_names=["a", "b"])))


def test_report_markdown_shows_the_figure_and_its_chance_rate():
  from simclr_jax.evaluation import report as report_lib
  report = {"label_mode": "default", "num_examples": 18, "num_examples_total": 18,
            "num_classes": 2, "class_counts": {"a": 9, "b": 9}, "patient_shortcut": 0.75,
            "patient_shortcut_chance": 2 / 17}
  text = report_lib.report_markdown(report)
  assert "| patient shortcut (nearest neighbour of the same patient) | 0.7500 |" in text
  assert "| patient shortcut, chance | 0.1176 |" in text
  assert "- **patient_shortcut**: within the evaluated split" in text
