r"""Evaluator run time, split into feature extraction vs clustering, on this machine.

  python -m experiments.benchmark_evaluate                       # defaults below, CPU
  python -m experiments.benchmark_evaluate --num_examples 20000 --n_init 3   # quicker

What is measured (JSON on stdout, one object):

* clustering: `metrics.kmeans` (the evaluator's JAX k-means: k-means++ seeding, Lloyd
  iterations, `n_init` restarts) timed for real on `num_examples` x `feature_dim`
  float32 features with k clusters, plus the scores (Hungarian accuracy, NMI, ARI,
  purity). The features are random: `--features gaussian` is pure N(0, 1) noise (no
  cluster structure, the slow case for Lloyd), `--features blobs` puts them around k
  random centres (signal-to-noise `--blob_separation`), closer to trained features.
* feature extraction: the real encoder (`--model`, default resnet50 -> 2048-d features)
  in eval mode under the evaluator's own pmapped `extract_features`, on
  `--extraction_images` images of `--image_size` px (after one warm-up batch that
  compiles), extrapolated linearly per image to `num_examples`. Compute grows about
  with the pixel count, so `extraction_seconds_at_224px_estimate` scales the measured
  time by (224 / image_size)^2: a rough proxy, not a measurement.
"""
import argparse
import json
import os
import platform
import time

import jax
import numpy as np


def time_kmeans(num_examples: int, feature_dim: int, k: int, n_init: int, features_kind: str,
                blob_separation: float, seed: int) -> dict:
  from simclr_jax import metrics
  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  labels = rng.integers(0, k, num_examples)
  features = rng.standard_normal((num_examples, feature_dim), dtype=np.float32)
  if features_kind == "blobs":
    centres = rng.standard_normal((k, feature_dim), dtype=np.float32)
    features += blob_separation * centres[labels]
  generation_seconds = time.perf_counter() - start

  # Timed cold, as in a fresh evaluator process (includes the jit compilation); a second,
  # single-restart run with another seed then shows the warm per-restart cost.
  start = time.perf_counter()
  result = metrics.kmeans(features, k, n_init=n_init, seed=seed)
  kmeans_seconds = time.perf_counter() - start
  start = time.perf_counter()
  scores = metrics.clustering_scores(labels, result.assignments)
  scoring_seconds = time.perf_counter() - start
  start = time.perf_counter()
  again = metrics.kmeans(features, k, n_init=1, seed=seed + 1)
  one_restart_warm_seconds = time.perf_counter() - start
  return {
      "num_examples": num_examples, "feature_dim": feature_dim, "k": k, "n_init": n_init,
      "features": features_kind, "feature_generation_seconds": generation_seconds,
      "kmeans_seconds": kmeans_seconds,
      "kmeans_iterations_best_restart": result.num_iterations,
      "kmeans_one_restart_warm_seconds": one_restart_warm_seconds,
      "kmeans_one_restart_iterations": again.num_iterations,
      "scoring_seconds": scoring_seconds,
      "clustering_seconds": kmeans_seconds + scoring_seconds,
      "cluster_accuracy": scores["cluster_accuracy"],
  }


def time_extraction(model: str, image_size: int, stored_size: int, num_images: int,
                    batch_size: int, seed: int) -> dict:
  from simclr_jax import evaluate
  encoder = evaluate.load_encoder(model=model, image_size=image_size, random_init=True,
                                  seed=seed)
  encode_fn, variables = evaluate.make_encode_fn(encoder, "encoder")
  rng = np.random.default_rng(seed)
  num_devices = jax.local_device_count()
  batch_size = -(-batch_size // num_devices) * num_devices

  def batches(count):
    for start in range(0, count, batch_size):
      size = min(batch_size, count - start)
      images = rng.integers(0, 256, (batch_size, stored_size, stored_size, 1), dtype=np.uint8)
      yield {"image": images, "mask": np.arange(batch_size) < size}

  start = time.perf_counter()
  warm = evaluate.extract_features(encode_fn, variables, batches(batch_size))
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  out = evaluate.extract_features(encode_fn, variables, batches(num_images))
  seconds = time.perf_counter() - start
  per_image = seconds / num_images
  return {"model": model, "image_size": image_size, "stored_image_size": stored_size,
          "feature_dim": int(out["features"].shape[1]), "measured_images": num_images,
          "batch_size": batch_size, "devices": num_devices,
          "first_batch_with_compile_seconds": compile_seconds,
          "measured_seconds": seconds, "seconds_per_image": per_image,
          "images_per_second": 1.0 / per_image,
          "warmup_features_shape": list(warm["features"].shape)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_examples", type=int, default=100_000)
  parser.add_argument("--feature_dim", type=int, default=2048)
  parser.add_argument("--k", type=int, default=14)
  parser.add_argument("--n_init", type=int, default=10, help="as the evaluator's default")
  parser.add_argument("--features", choices=("gaussian", "blobs"), default="gaussian")
  parser.add_argument("--blob_separation", type=float, default=1.0)
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--stored_image_size", type=int, default=64)
  parser.add_argument("--extraction_images", type=int, default=192)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--skip_extraction", action="store_true")
  parser.add_argument("--skip_kmeans", action="store_true")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  result = {"command": "python -m experiments.benchmark_evaluate " + " ".join(
      f"--{k}={v}" for k, v in vars(args).items()),
      "platform": jax.default_backend(), "devices": jax.local_device_count(),
      "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
      "machine": platform.machine(), "jax": jax.__version__,
      # Other processes share the CPUs: the 1-minute load average before the run.
      "load_average_before": os.getloadavg()[0]}
  if not args.skip_extraction:
    extraction = time_extraction(args.model, args.image_size, args.stored_image_size,
                                 args.extraction_images, args.batch_size, args.seed)
    extraction["extrapolated_seconds"] = extraction["seconds_per_image"] * args.num_examples
    extraction["extraction_seconds_at_224px_estimate"] = (
        extraction["extrapolated_seconds"] * (224 / args.image_size) ** 2)
    result["feature_extraction"] = extraction
  if not args.skip_kmeans:
    result["clustering"] = time_kmeans(args.num_examples, args.feature_dim, args.k,
                                       args.n_init, args.features, args.blob_separation,
                                       args.seed)
  if "feature_extraction" in result and "clustering" in result:
    extraction_seconds = result["feature_extraction"]["extrapolated_seconds"]
    clustering_seconds = result["clustering"]["clustering_seconds"]
    result["summary"] = {
        "num_examples": args.num_examples,
        "feature_extraction_seconds": extraction_seconds,
        "clustering_seconds": clustering_seconds,
        "clustering_share": clustering_seconds / (extraction_seconds + clustering_seconds)}
  result["load_average_after"] = os.getloadavg()[0]
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
