r"""Evaluator run time at NIH size, and the online monitor's cost, on this machine (JSON).

  python -m experiments.benchmark_evaluate                    # NIH size, all evaluators
  python -m experiments.benchmark_evaluate --num_train 20000 --num_test 6000   # quicker
  python -m experiments.benchmark_evaluate --skip_evaluators --skip_extraction \
      --online_config experiments/configs/demo.py --online_data_dir runs/data

Sections (one JSON object on stdout; every section is optional):

* evaluators: every evaluator of the offline evaluation (`offline.evaluate_features`:
  k-means + scores, the device linear probe, kNN, label efficiency, similarity) on
  NIH-sized *synthetic* features: `--num_train` x `--feature_dim` train and `--num_test`
  test features with `--num_findings` multi-hot findings at ChestX-ray14's prevalences
  (each finding shifts a random direction under heavy noise), the default label mode
  (single_finding, k = 14) and label fractions 0.01, 0.1, 1.0. Timed cold, as in a fresh
  evaluator process (compilations included); each evaluator's seconds as the report
  gives them. `--sklearn_probe` also times scikit-learn's probe on the same data.
* feature_extraction: the real encoder (`--model`, default resnet50 -> 2048-d) in eval
  mode under the evaluator's pmapped extraction, on `--extraction_images` random images
  of `--image_size` px after one warm-up batch, extrapolated per image to
  num_train + num_test; `extraction_seconds_at_224px_estimate` scales that by
  (224 / image_size)^2: a proxy, not a measurement.
* online_monitor (`--online_config`): the training step time of that config (the real
  trainer CLI for `--online_train_steps` steps on `--online_data_dir`, its logged
  views/s after the first window) and the monitor's time per call (`OnlineMonitor.run`,
  warm), giving the monitor's share of training time at several eval_every_steps.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from simclr_jax.workdir import METRICS_FILE

# ChestX-ray14 prevalence of each finding (FINDINGS order), from Data_Entry_2017_v2020.
NIH_PREVALENCE = (0.103, 0.025, 0.119, 0.177, 0.052, 0.056, 0.013, 0.047, 0.042, 0.021,
                  0.022, 0.015, 0.030, 0.002)


def synthetic_nih_features(num_examples: int, feature_dim: int, num_findings: int, seed: int
                           ) -> dict:
  """Multi-hot findings and features that carry them weakly (AUROC well below 1)."""
  prevalence = np.resize(np.asarray(NIH_PREVALENCE), num_findings)
  directions = np.random.default_rng(1234).normal(size=(num_findings, feature_dim))
  rng = np.random.default_rng(seed)
  multi_hot = (rng.random((num_examples, num_findings)) < prevalence).astype(np.uint8)
  features = rng.standard_normal((num_examples, feature_dim), dtype=np.float32) * 4.0
  features += (multi_hot @ directions * 0.15).astype(np.float32)
  return {"features": features, "labels": multi_hot,
          "no_finding": multi_hot.sum(axis=1) == 0,
          "patient_id": np.arange(num_examples) // 3}


def time_evaluators(args) -> dict:
  from simclr_jax.evaluation import EVALUATORS
  from simclr_jax.evaluation import algorithms
  from simclr_jax.evaluation import from_config
  from simclr_jax.evaluation import offline
  start = time.perf_counter()
  train = synthetic_nih_features(args.num_train, args.feature_dim, args.num_findings, 0)
  test = synthetic_nih_features(args.num_test, args.feature_dim, args.num_findings, 1)
  generation_seconds = time.perf_counter() - start
  start = time.perf_counter()
  evaluators = from_config({name: {} for name in EVALUATORS} |
                           {"clustering": {"n_init": args.n_init}})
  report, _ = offline.evaluate_features(test, train, evaluators, seed=0)
  total_seconds = time.perf_counter() - start
  result = {
      "num_train": args.num_train, "num_test": args.num_test,
      "feature_dim": args.feature_dim, "num_findings": args.num_findings,
      "label_mode": report["label_mode"], "k": report["k"],
      "clustered_examples": report["num_examples"], "kmeans_n_init": args.n_init,
      "feature_generation_seconds": generation_seconds,
      "evaluators_seconds": total_seconds,
      "clustering_seconds": report["clustering_seconds"],
      "linear_probe_seconds": report["linear_probe_seconds"],
      "knn_seconds": report["knn_seconds"],
      "label_fractions_seconds": report["label_fractions_seconds"],
      "linear_auroc_macro": report["linear_auroc_macro"],
      "knn_auroc_macro": report["knn_auroc_macro"],
      "cluster_accuracy": report["cluster_accuracy"],
      "label_fractions": [{key: entry.get(key) for key in ("fraction", "num_train_examples",
                                                           "linear_auroc_macro")}
                          for entry in report["label_fractions"]],
  }
  if args.sklearn_probe:
    start = time.perf_counter()
    reference = algorithms.linear_probe(train["features"], train["labels"], test["features"],
                                     test["labels"], multi_label=True, solver="sklearn")
    result["sklearn_linear_probe_seconds"] = time.perf_counter() - start
    result["sklearn_linear_auroc_macro"] = reference["linear_auroc_macro"]
  return result


def time_extraction(model: str, image_size: int, stored_size: int, num_images: int,
                    batch_size: int, seed: int) -> dict:
  from simclr_jax.evaluation import encoders
  from simclr_jax.evaluation import features as features_lib
  encoder = encoders.load_encoder(model=model, image_size=image_size, random_init=True,
                                  seed=seed)
  encode_fn, variables = encoders.make_encode_fn(encoder, "encoder")
  rng = np.random.default_rng(seed)
  num_devices = jax.local_device_count()
  batch_size = -(-batch_size // num_devices) * num_devices

  def batches(count):
    for start in range(0, count, batch_size):
      size = min(batch_size, count - start)
      images = rng.integers(0, 256, (batch_size, stored_size, stored_size, 1), dtype=np.uint8)
      yield {"image": images, "mask": np.arange(batch_size) < size}

  start = time.perf_counter()
  features_lib.extract_features(encode_fn, variables, batches(batch_size))
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  out = features_lib.extract_features(encode_fn, variables, batches(num_images))
  seconds = time.perf_counter() - start
  per_image = seconds / num_images
  return {"model": model, "image_size": image_size, "stored_image_size": stored_size,
          "feature_dim": int(out["features"].shape[1]), "measured_images": num_images,
          "batch_size": batch_size, "devices": num_devices,
          "first_batch_with_compile_seconds": compile_seconds,
          "measured_seconds": seconds, "seconds_per_image": per_image,
          "images_per_second": 1.0 / per_image}


def time_online_monitor(args) -> dict:
  """Training step time of the config (real trainer) vs one OnlineMonitor.run call."""
  import flax
  import jax.numpy as jnp
  from simclr_jax import models
  from simclr_jax.evaluation import online
  import importlib.util
  spec = importlib.util.spec_from_file_location("online_config", args.online_config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data_dir = args.online_data_dir
  if args.online_evaluators:  # the config's settings, or the evaluator's defaults
    names = args.online_evaluators.split(",")
    config.online_eval.evaluators = {
        name: config.online_eval.evaluators.get(name, {}) for name in names}
  with tempfile.TemporaryDirectory() as workdir:
    log_every = max(1, args.online_train_steps // 4)
    command = [sys.executable, "-m", "simclr_jax.train", "--config", args.online_config,
               "--workdir", workdir, f"--config.data_dir={args.online_data_dir}",
               f"--config.num_train_steps={args.online_train_steps}",
               f"--config.log_every_steps={log_every}", "--config.progress_bar=False",
               f"--config.checkpoint_every_steps={args.online_train_steps}"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(os.path.join(workdir, METRICS_FILE)) as file:
      lines = [json.loads(line) for line in file if line.strip()]
  # The first window holds the compilation; the later ones are steady training.
  steady = [line["views_per_second"] for line in lines[1:]] or [lines[0]["views_per_second"]]
  views_per_second = float(np.median(steady))
  step_seconds = 2 * config.batch_size / views_per_second

  model = models.create_model(config)
  variables = model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, config.image_size, config.image_size, 1)), train=False)
  params = flax.jax_utils.replicate(variables["params"])
  batch_stats = flax.jax_utils.replicate(variables["batch_stats"])
  monitor = online.OnlineMonitor(config)
  start = time.perf_counter()
  monitor.run(0, params, batch_stats)
  first_call_seconds = time.perf_counter() - start
  calls = []
  for call in range(args.online_calls):
    start = time.perf_counter()
    scores = monitor.run(call + 1, params, batch_stats)
    calls.append(time.perf_counter() - start)
  call_seconds = float(np.median(calls))
  shares = {str(every): call_seconds / (every * step_seconds)
            for every in (50, 100, 200, 250, 500, 1000)}
  return {"config": args.online_config, "model": config.model, "width": config.width,
          "image_size": config.image_size, "batch_size": config.batch_size,
          "online_eval": config.online_eval.to_dict(),
          "train_steps_measured": args.online_train_steps,
          "views_per_second": views_per_second, "step_seconds": step_seconds,
          "monitor_first_call_seconds": first_call_seconds,
          "monitor_call_seconds": call_seconds, "monitor_call_in_steps": call_seconds /
          step_seconds, "monitor_share_of_training_at_eval_every_steps": shares,
          "last_scores": scores}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_train", type=int, default=86_000)
  parser.add_argument("--num_test", type=int, default=26_000)
  parser.add_argument("--feature_dim", type=int, default=2048)
  parser.add_argument("--num_findings", type=int, default=14)
  parser.add_argument("--n_init", type=int, default=10, help="k-means restarts (evaluator's)")
  parser.add_argument("--sklearn_probe", action="store_true",
                      help="also time scikit-learn's probe on the same features")
  parser.add_argument("--skip_evaluators", action="store_true")
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--stored_image_size", type=int, default=64)
  parser.add_argument("--extraction_images", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--skip_extraction", action="store_true")
  parser.add_argument("--online_config", help="config file whose online monitor to time")
  parser.add_argument("--online_data_dir", default="runs/data")
  parser.add_argument("--online_train_steps", type=int, default=40)
  parser.add_argument("--online_calls", type=int, default=3)
  parser.add_argument("--online_evaluators", help="the evaluators of online_eval.evaluators "
                      "to run, e.g. knn,clustering")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  result = {"command": "python -m experiments.benchmark_evaluate " + " ".join(sys.argv[1:]),
            "platform": jax.default_backend(), "devices": jax.local_device_count(),
            "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "processor": platform.processor(),
            "jax": jax.__version__,
            # Other processes share the CPUs: the 1-minute load average before the run.
            "load_average_before": os.getloadavg()[0]}
  if not args.skip_evaluators:
    result["evaluators"] = time_evaluators(args)
  if not args.skip_extraction:
    extraction = time_extraction(args.model, args.image_size, args.stored_image_size,
                                 args.extraction_images, args.batch_size, args.seed)
    images = args.num_train + args.num_test
    extraction["extrapolated_images"] = images
    extraction["extrapolated_seconds"] = extraction["seconds_per_image"] * images
    extraction["extraction_seconds_at_224px_estimate"] = (
        extraction["extrapolated_seconds"] * (224 / args.image_size) ** 2)
    result["feature_extraction"] = extraction
  if "evaluators" in result and "feature_extraction" in result:
    result["summary"] = {
        "evaluators_seconds": result["evaluators"]["evaluators_seconds"],
        "extraction_seconds_at_224px_estimate":
            result["feature_extraction"]["extraction_seconds_at_224px_estimate"]}
  if args.online_config:
    result["online_monitor"] = time_online_monitor(args)
  result["load_average_after"] = os.getloadavg()[0]
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
