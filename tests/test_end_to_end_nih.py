"""Real X-rays through the CLIs a user types: prepare -> train -> evaluate.

Uses the 1,000 real ChestX-ray14 thumbnails in ../shared/data/nih_thumbs (64 px) with the
official label CSV; a tiny model and a few steps (this checks the path, not the quality).
"""
import json
import shutil

import numpy as np
import pytest

from conftest import REPO_ROOT, run_module


def test_prepare_train_evaluate_on_real_nih_thumbnails(tmp_path, shared_data):
  manual_dir = tmp_path / "manual"
  shutil.copytree(shared_data / "nih_thumbs", manual_dir / "nih_thumbs")
  shutil.copy(shared_data / "nih_sample" / "Data_Entry_2017_v2020.csv.gz", manual_dir)
  data_dir = tmp_path / "tfds"
  prepared = run_module(["simclr_jax.prepare", "nih", "--manual_dir", manual_dir / "nih_thumbs",
                         "--csv", manual_dir / "Data_Entry_2017_v2020.csv.gz",
                         "--data_dir", data_dir, "--image_size", "64", "--num_workers", "1"])
  # Patient-wise by default: the 30 patients the folders put in two splits are moved wholly
  # into one (600/200/200 folders -> 595/202/203 images).
  summary = json.loads(prepared.stdout.strip().splitlines()[-1])
  assert summary["patients_in_several_splits"] == 0
  assert "595" in prepared.stdout + prepared.stderr     # train images written

  workdir = tmp_path / "run"
  run_module(["simclr_jax.train", "--config", REPO_ROOT / "experiments/configs/nih_r50.py",
              "--workdir", workdir, f"--config.data_dir={data_dir}",
              "--config.dataset=nih_chest_xray14/thumbs64", "--config.image_size=32",
              "--config.model=resnet_tiny", "--config.batch_size=16",
              "--config.head.hidden_dim=32", "--config.head.output_dim=16",
              "--config.num_train_steps=3", "--config.checkpoint_every_steps=3",
              "--config.input.num_workers=0", "--config.log_every_steps=1",
              "--config.optimizer.warmup_steps=0",   # no warm-up longer than the run
              # The class-imbalance options (both off by default) on real multi-label data:
              "--config.input.class_balanced=True",
              "--config.loss.example_weights=inverse_frequency",
              "--config.progress_bar=False"])
  losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(losses) == 3 and np.all(np.isfinite(losses))

  out = tmp_path / "eval"
  run_module(["simclr_jax.evaluate", "--workdir", workdir, "--dataset",
              "nih_chest_xray14/thumbs64", "--data_dir", data_dir, "--split", "test",
              "--train_split", "train", "--out", out, "--label_mode", "binary:No Finding",
              "--label_fractions", "0.1,1.0", "--kmeans_n_init", "2", "--batch_size", "64"])
  report = json.loads((out / "report.json").read_text())
  assert report["checkpoint_step"] == 3
  assert report["num_examples"] == 203 and report["k"] == 2
  assert report["label_mode"] == "binary:No Finding"
  for key in ("cluster_accuracy", "nmi", "ari", "purity", "knn_accuracy"):
    assert report[key] is not None and np.isfinite(report[key]), key
  assert 0.5 <= report["cluster_accuracy"] <= 1.0      # 2 clusters: at least chance
  assert (out / "report.md").exists() and (out / "features.npz").exists()

  # The supervised baseline's inverse-frequency weights on this multi-label data: computed
  # from the training split; a finding on every (or no) image cannot be weighted.
  from experiments.configs import nih_r50
  from simclr_jax import errors
  from simclr_jax.objectives import supervised
  config = nih_r50.get_config()
  config.update(dict(dataset="nih_chest_xray14/thumbs64", data_dir=str(data_dir),
                     objective="supervised"))
  config.supervised.class_weights = "inverse_frequency"
  config = supervised.resolve(config)
  frequencies = np.asarray(config.supervised.class_frequencies)
  assert config.supervised.num_classes == 14 and frequencies.shape == (14,)
  assert np.all((0 < frequencies) & (frequencies < 1))
  config.supervised.class_frequencies = (1.0,) + tuple(frequencies[1:])
  with pytest.raises(errors.ConfigError, match=r"class_weights='inverse_frequency'.*"
                     r"each in \(0, 1\)"):
    supervised.resolve(config)
