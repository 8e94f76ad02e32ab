r"""Evaluates several encoders on the same data and writes one comparison table.

  python -m experiments.compare --simclr_workdir runs/demo/train --random_init \
      --dataset synthetic_cxr/64 --data_dir runs/data --split test --out runs/demo/compare
  python -m experiments.compare --simclr_workdir runs/nih/train --random_init \
      --imagenet_weights resnet50-11ad3fa6.pth --supervised_weights chexnet_r50.pth \
      --dataset nih_chest_xray14/256 --data_dir DIR --split test --k 14 --out runs/nih/compare

Methods (each one optional, evaluated in this order with `simclr_jax.evaluate.evaluate`,
identical data, split, label mode, k and seeds):
  simclr        the latest (or --step) checkpoint of a SimCLR run;
  random_init   the same architecture untrained: the SimCLR run's own step-0 network
                (or --model when there is no SimCLR run);
  imagenet      a torchvision ImageNet state_dict (architecture --model, default the
                SimCLR run's; width 1 only);
  supervised    a torchvision state_dict trained with labels (e.g. on the findings).

Writes OUT/<method>/report.{json,md} (+ plots), OUT/report.json = {method: report} and
OUT/report.md, the table in the seed's layout:
  Method | clustering accuracy | NMI | ARI | linear AUROC | labels used in pretraining
"""
import argparse
import json
import logging
import math
import os
import sys

from simclr_jax import evaluate

LABELS_USED = {
    "simclr": "none (self-supervised)",
    "random_init": "none",
    "imagenet": "ImageNet-1k classes (1.28M labelled images)",
    "supervised": "target-domain labels",
}


def _cell(value) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def comparison_markdown(rows: list, context: str = "") -> str:
  """rows: (method name, report, labels used) -> the seed's table (+ context lines)."""
  lines = []
  if context:
    lines += [context, ""]
  lines += ["| Method | clustering accuracy | NMI | ARI | linear AUROC | "
            "labels used in pretraining |", "|---|---|---|---|---|---|"]
  for name, report, labels_used in rows:
    lines.append(f"| {name} | {_cell(report.get('cluster_accuracy'))} | "
                 f"{_cell(report.get('nmi'))} | {_cell(report.get('ari'))} | "
                 f"{_cell(report.get('linear_auroc_macro'))} | {labels_used} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--simclr_workdir", help="SimCLR training run (config.json + checkpoints/).")
  parser.add_argument("--step", type=int, help="checkpoint step of the SimCLR run (default latest)")
  parser.add_argument("--random_init", action="store_true", help="add the untrained baseline")
  parser.add_argument("--imagenet_weights", help="torchvision ImageNet state_dict file")
  parser.add_argument("--supervised_weights", help="torchvision state_dict trained with labels")
  parser.add_argument("--supervised_labels", default=LABELS_USED["supervised"],
                      help="text for the 'labels used' column of the supervised row")
  parser.add_argument("--model", help="architecture without --simclr_workdir / for torch weights")
  parser.add_argument("--image_size", type=int,
                      help="input size (default: the SimCLR run's; 224 without one)")
  parser.add_argument("--dataset", required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--split", default="test")
  parser.add_argument("--train_split", default="train")
  parser.add_argument("--out", required=True)
  parser.add_argument("--k", type=int)
  parser.add_argument("--label_mode")
  parser.add_argument("--labels_csv", help="Data_Entry CSV: exact order for --label_mode primary")
  parser.add_argument("--label_fractions", default="0.01,0.1,1.0")
  parser.add_argument("--features", default="encoder", choices=evaluate.FEATURE_KINDS)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--kmeans_n_init", type=int, default=10)
  parser.add_argument("--max_examples", type=int)
  parser.add_argument("--plots", type=int, default=1, help="1: write PNG plots per method")
  parser.add_argument("--save_features", type=int, default=1)
  args = parser.parse_args(argv)
  logging.getLogger().setLevel(logging.INFO)
  # orbax/TFDS log every save/restore step through absl at INFO; keep ours only.
  logging.getLogger("absl").setLevel(logging.WARNING)

  simclr_config = None
  if args.simclr_workdir:
    from simclr_jax import checkpointing
    simclr_config = checkpointing.read_config(args.simclr_workdir)
  model = args.model or (simclr_config.model if simclr_config else None)
  image_size = args.image_size or (int(simclr_config.image_size) if simclr_config else 224)

  methods = []  # (key, display name, load_encoder kwargs, labels used)
  if args.simclr_workdir:
    methods.append(("simclr", "SimCLR (JAX)", dict(workdir=args.simclr_workdir, step=args.step,
                                                   image_size=args.image_size),
                    LABELS_USED["simclr"]))
  if args.random_init:
    kwargs = (dict(workdir=args.simclr_workdir, image_size=args.image_size)
              if args.simclr_workdir else dict(model=model, image_size=image_size))
    methods.append(("random_init", "Random init", dict(kwargs, random_init=True),
                    LABELS_USED["random_init"]))
  if args.imagenet_weights:
    methods.append(("imagenet", "ImageNet (torchvision)",
                    dict(torch_weights=args.imagenet_weights, model=model,
                         image_size=image_size), LABELS_USED["imagenet"]))
  if args.supervised_weights:
    methods.append(("supervised", "Supervised",
                    dict(torch_weights=args.supervised_weights, model=model,
                         image_size=image_size), args.supervised_labels))
  if not methods:
    parser.error("nothing to compare: give --simclr_workdir, --random_init, "
                 "--imagenet_weights and/or --supervised_weights.")
  if any(key in ("imagenet", "supervised") for key, *_ in methods) and not model:
    parser.error("--imagenet_weights/--supervised_weights need --model or --simclr_workdir.")
  if args.random_init and not args.simclr_workdir and not model:
    parser.error("--random_init without --simclr_workdir needs --model.")

  fractions = evaluate.parse_fractions(args.label_fractions)
  reports, rows = {}, []
  for key, name, kwargs, labels_used in methods:
    logging.info("Evaluating %s", name)
    encoder = evaluate.load_encoder(**kwargs)
    report = evaluate.evaluate(
        encoder, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
        out_dir=os.path.join(args.out, key), train_split=args.train_split or None, k=args.k,
        label_mode=args.label_mode, label_fractions=fractions, feature_kind=args.features,
        batch_size=args.batch_size, kmeans_n_init=args.kmeans_n_init,
        max_examples=args.max_examples, labels_csv=args.labels_csv, plots=bool(args.plots),
        save_features=bool(args.save_features))
    if key == "simclr":
      name = f"{name}, step {report['checkpoint_step']}"
    reports[key] = report
    rows.append((name, report, labels_used))

  first = next(iter(reports.values()))
  context = (f"# Encoder comparison\n\n`{args.dataset}` split `{args.split}`; label mode "
             f"`{first['label_mode']}` ({first['num_examples']} of {first['num_examples_total']} "
             f"examples), k = {first['k']}; {args.features} features; linear probe fitted on "
             f"`{args.train_split}` (macro AUROC).")
  table = comparison_markdown(rows, context)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "report.json"), "w") as file:
    json.dump(reports, file, indent=2)
  with open(os.path.join(args.out, "report.md"), "w") as file:
    file.write(table)
  sys.stdout.write(table)
  return reports


if __name__ == "__main__":
  main()
