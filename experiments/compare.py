r"""Evaluates several encoders on the same data and writes one comparison table.

  python -m experiments.compare --simclr_workdir runs/demo/train --random_init \
      --dataset synthetic_cxr/32 --data_dir runs/data --split test --out runs/demo/compare
  python -m experiments.compare --simclr_workdir runs/nih/train \
      --supervised_workdir runs/nih_supervised/train --random_init \
      --imagenet_weights resnet50-11ad3fa6.pth \
      --dataset nih_chest_xray14/256 --data_dir DIR --split test --out runs/nih/compare

Rows (each optional, evaluated in this order by `simclr_jax.evaluation.offline`, with
identical data, split, label mode, k and seeds):
  simclr        the latest (or --step) checkpoint of a SimCLR run of this project;
  supervised    a run of this project trained with config.objective="supervised" (its
                encoder; --supervised_workdir), or a torchvision state_dict trained with
                labels elsewhere (--supervised_weights);
  random_init   the same architecture untrained, torchvision-style (kaiming fan-out convs,
                BatchNorm scale 1: zero_init_residual=False), seeded as the SimCLR run;
  imagenet      a torchvision ImageNet state_dict (architecture --model, default the
                SimCLR run's; width 1 only).

Writes OUT/<row>/report.{json,md} (+ plots), OUT/report.json = {row: report} and
OUT/report.md, the seed's table: clustering accuracy, NMI, ARI, linear AUROC, kNN, the
linear AUROC at every label fraction (each AUROC with its 95 % interval, resampled by
patient), the classifier's own AUROC for rows with a classifier head (other rows record
why it was skipped), labels used. An OUT holding an earlier comparison is refused unless
--overwrite, which replaces all of it (rows and plots). The whole comparison is written
into a folder beside OUT and moved into place at the end, holding OUT meanwhile: a second
comparison or evaluation into the same OUT is refused, an interrupted one (Ctrl-C: exit
130) leaves OUT as it was.
"""
import argparse
import os
import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the modules below load: one line, exit 130
  signal.signal(signal.SIGINT, lambda *_: (print("interrupted.", file=sys.stderr),
                                           os._exit(130)))

import logging  # pylint: disable=wrong-import-position
import math  # pylint: disable=wrong-import-position

if __package__ in (None, ""):  # `python experiments/compare.py`: the repository on the path
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr_jax import errors  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import EVALUATORS  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import encoders  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import label_efficiency  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import offline  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import report as report_lib  # pylint: disable=wrong-import-position

ROWS = ("simclr", "supervised", "random_init", "imagenet")
LABELS_USED = {
    "simclr": "none (self-supervised)",
    "supervised": "target-domain labels",
    "random_init": "none",
    "imagenet": "ImageNet-1k classes (1.28M labelled images)",
}


def _cell(value, interval=None) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  if not isinstance(value, float):
    return str(value)
  return report_lib.with_interval(value, interval)


def _fraction_entry(report: dict, fraction: float) -> dict:
  for entry in report.get("label_fractions") or []:
    if entry.get("fraction") == fraction:
      return entry
  return {}


def _fraction_auroc(report: dict, fraction: float):
  return _fraction_entry(report, fraction).get("linear_auroc_macro")


def comparison_markdown(rows: list, fractions=(), context: str = "") -> str:
  """rows: (row name, report, labels used) -> the seed's table (+ context lines); AUROC
  cells carry their 95 % interval; a classifier column when a row has a classifier head,
  and a line per row saying why it was skipped for the others."""
  lines = [context, ""] if context else []
  fraction_columns = [f"linear AUROC @ {fraction:g} labels" for fraction in fractions]
  classifier = any(report.get("classifier_auroc_macro_classes") is not None
                   for _, report, _ in rows)
  header = (["Method", "clustering accuracy", "NMI", "ARI", "linear AUROC", "kNN accuracy",
             "kNN AUROC"] + fraction_columns + (["classifier AUROC"] if classifier else [])
            + ["labels used in pretraining"])
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, report, labels_used in rows:
    cells = [name] + [_cell(report.get(key), report.get(f"{key}_ci95")) for key in (
        "cluster_accuracy", "nmi", "ari", "linear_auroc_macro", "knn_accuracy",
        "knn_auroc_macro")]
    for fraction in fractions:
      entry = _fraction_entry(report, fraction)
      cells.append(_cell(entry.get("linear_auroc_macro"), entry.get("linear_auroc_macro_ci95")))
    if classifier:
      cells.append(_cell(report.get("classifier_auroc_macro"),
                         report.get("classifier_auroc_macro_ci95")))
    lines.append("| " + " | ".join(cells + [labels_used]) + " |")
  notes = [f"- {name}: classifier skipped, {report['classifier_skipped']}."
           for name, report, _ in rows if report.get("classifier_skipped")]
  warned = {}  # warning -> the rows that gave it (the dataset's, once for all rows)
  for name, report, _ in rows:
    for warning in report.get("warnings") or []:
      warned.setdefault(warning, []).append(name)
  notes += [f"- warning ({', '.join(names)}): {warning}" for warning, names in warned.items()]
  if notes:
    lines += [""] + notes
  lines += ["", "[a, b]: 95 % bootstrap interval, resampling the evaluated split's patients "
            "(the same resamples for every row)."]
  return "\n".join(lines) + "\n"


def earlier_comparison_files(out: str) -> list:
  """Files of an earlier comparison in OUT: its table and every row's report."""
  found = [os.path.join(out, name) for name in report_lib.earlier_report_files(out)]
  for row in ROWS:
    folder = os.path.join(out, row)
    found += [os.path.join(folder, name) for name in report_lib.earlier_report_files(folder)]
  return found


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--simclr_workdir", help="SimCLR training run (config.json + checkpoints/)")
  parser.add_argument("--step", type=encoders.parse_step,
                      help="checkpoint step of the SimCLR run (default latest)")
  parser.add_argument("--supervised_workdir",
                      help="run of this project with config.objective=supervised")
  parser.add_argument("--supervised_step", type=encoders.parse_step,
                      help="its checkpoint step (default latest; 'best': its best validation "
                           "checkpoint)")
  parser.add_argument("--supervised_weights", help="torchvision state_dict trained with labels")
  parser.add_argument("--supervised_labels", default=LABELS_USED["supervised"],
                      help="text for the 'labels used' column of the supervised row")
  parser.add_argument("--random_init", action="store_true",
                      help="add the untrained (torchvision-style) baseline")
  parser.add_argument("--imagenet_weights", help="torchvision ImageNet state_dict file")
  parser.add_argument("--model", help="architecture without a workdir / for torch weights")
  parser.add_argument("--image_size", type=int,
                      help="input size (default: the SimCLR run's; 224 without one)")
  # Named as offline.Data's fields and offline.SETTING_FLAGS, with their defaults.
  data = offline.Data
  parser.add_argument("--dataset", required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--split", default=data.split)
  parser.add_argument("--train_split", default=data.train_split)
  parser.add_argument("--out", required=True)
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an earlier comparison in --out (all rows and plots)")
  parser.add_argument("--evaluators", default=",".join(EVALUATORS),
                      help=f"comma-separated evaluators; known: {', '.join(EVALUATORS)}")
  parser.add_argument("--k", type=int, default=offline.flag_default("k"),
                      help="k-means clusters (default: the label mode's classes; 14 for NIH)")
  parser.add_argument("--label_mode", default=data.label_mode)
  parser.add_argument("--labels_csv", default=data.labels_csv,
                      help="Data_Entry CSV: exact order for --label_mode primary")
  parser.add_argument("--label_fractions",
                      default=",".join(map(str, offline.flag_default("label_fractions"))))
  parser.add_argument("--features", default=data.features, choices=encoders.FEATURE_KINDS)
  parser.add_argument("--probe_solver", default=offline.flag_default("probe_solver"),
                      choices=("jax", "sklearn"))
  parser.add_argument("--batch_size", type=int, default=data.batch_size)
  parser.add_argument("--knn_k", type=int, default=offline.flag_default("knn_k"))
  parser.add_argument("--kmeans_n_init", type=int, default=offline.flag_default("kmeans_n_init"))
  parser.add_argument("--max_examples", type=int, default=data.max_examples)
  parser.add_argument("--plots", type=int, default=1, help="1: write PNG plots per row")
  parser.add_argument("--save_features", type=int, default=1)
  return parser


def _rows(args, parser) -> list:
  """(key, display name, load_encoder kwargs, labels used) of every requested row."""
  from simclr_jax import checkpointing
  if args.supervised_workdir and args.supervised_weights:
    parser.error("give --supervised_workdir or --supervised_weights, not both.")
  simclr_config = (checkpointing.read_config(args.simclr_workdir) if args.simclr_workdir
                   else None)
  supervised_config = (checkpointing.read_config(args.supervised_workdir)
                       if args.supervised_workdir else None)
  if supervised_config is not None and encoders.objective_of(supervised_config) != "supervised":
    raise ValueError(f"--supervised_workdir={args.supervised_workdir}: its config.json has "
                     f"objective={encoders.objective_of(supervised_config)!r}, not "
                     f"'supervised'; pass SimCLR runs as --simclr_workdir.")
  architecture_config = simclr_config or supervised_config
  model = args.model or (architecture_config.model if architecture_config else None)
  image_size = args.image_size or (int(architecture_config.image_size)
                                   if architecture_config else 224)
  rows = []
  if args.simclr_workdir:
    rows.append(("simclr", "SimCLR (JAX)", dict(workdir=args.simclr_workdir, step=args.step,
                                                image_size=args.image_size),
                 LABELS_USED["simclr"]))
  if args.supervised_workdir:
    rows.append(("supervised", "Supervised (JAX)",
                 dict(workdir=args.supervised_workdir, step=args.supervised_step,
                      image_size=args.image_size),
                 f"{args.supervised_labels} ({supervised_config.dataset})"))
  elif args.supervised_weights:
    rows.append(("supervised", "Supervised (torchvision weights)",
                 dict(torch_weights=args.supervised_weights, model=model, image_size=image_size),
                 args.supervised_labels))
  if args.random_init:
    base = args.simclr_workdir or args.supervised_workdir
    kwargs = (dict(workdir=base, image_size=args.image_size) if base
              else dict(model=model, image_size=image_size))
    rows.append(("random_init", "Random init (torchvision-style)",
                 dict(kwargs, random_init=True), LABELS_USED["random_init"]))
  if args.imagenet_weights:
    rows.append(("imagenet", "ImageNet (torchvision)",
                 dict(torch_weights=args.imagenet_weights, model=model, image_size=image_size),
                 LABELS_USED["imagenet"]))
  if not rows:
    parser.error("nothing to compare: give --simclr_workdir, --supervised_workdir, "
                 "--random_init, --imagenet_weights and/or --supervised_weights.")
  if (args.imagenet_weights or args.supervised_weights) and not model:
    parser.error("--imagenet_weights/--supervised_weights need --model or a workdir.")
  if args.random_init and not (args.simclr_workdir or args.supervised_workdir) and not model:
    parser.error("--random_init without a workdir needs --model.")
  return rows


def _check_no_earlier(out: str, overwrite: bool) -> list:
  """The files of an earlier comparison in OUT; refused unless `overwrite`."""
  earlier = earlier_comparison_files(out)
  if earlier and not overwrite:
    raise report_lib.ReportExistsError(
        f"--out={out} holds an earlier comparison ({len(earlier)} files, e.g. "
        f"{os.path.relpath(earlier[0], out)}); pass --overwrite to replace it (every row "
        f"and plot) or choose another --out.")
  return earlier


def main(argv=None) -> dict:
  """Evaluates every requested row; returns {row: report}.

  Raises:
    ValueError / FileNotFoundError: bad settings or data (`cli` turns them into exit 2).
  """
  parser = _parser()
  args = parser.parse_args(argv)
  logging.getLogger().setLevel(logging.INFO)
  # orbax/TFDS log every save/restore step through absl at INFO; keep ours only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  fractions = label_efficiency.parse_fractions(args.label_fractions)
  rows = _rows(args, parser)
  _check_no_earlier(args.out, args.overwrite)
  # OUT is ours until the comparison is in place: another one into it is refused.
  with report_lib.reserve(args.out, args.overwrite), report_lib.staging(args.out) as staged:
    reports, table = _evaluate_rows(args, rows, fractions, staged)
    # Only now is anything earlier replaced: the whole comparison goes in at once.
    earlier = _check_no_earlier(args.out, args.overwrite)
    report_lib.commit(staged, args.out, earlier)
    for row in ROWS:  # row folders the earlier comparison left empty
      folder = os.path.join(args.out, row)
      if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)
  sys.stdout.write(table)
  return reports


def _evaluate_rows(args, rows: list, fractions, staged: str) -> tuple[dict, str]:
  """Every row evaluated into the staging folder `staged`, and the table written there;
  returns ({row: report}, the table)."""
  # Bad settings fail here, once for every row, before any encoder is built.
  plan = offline.plan(offline.data_from_flags(args), offline.evaluators_config(args))
  # Every row's encoder loads (checkpoint, weights file) before any is evaluated.
  loaded = []
  for key, name, kwargs, labels_used in rows:
    logging.info("Loading %s", name)
    loaded.append((key, name, encoders.load_encoder(**kwargs), labels_used))
  reports, table_rows = {}, []
  for key, name, encoder, labels_used in loaded:
    logging.info("Evaluating %s", name)
    report = offline.evaluate_encoder(
        encoder, plan, offline.Output(os.path.join(staged, key), overwrite=True,
                                      plots=bool(args.plots),
                                      save_features=bool(args.save_features)))
    if encoder.step is not None:
      name = f"{name}, step {report['checkpoint_step']}"
    reports[key] = report
    table_rows.append((name, report, labels_used))

  first = next(iter(reports.values()))
  inits = "; ".join(f"{name}: {report['encoder_init']}" for name, report, _ in table_rows)
  context = (f"# Encoder comparison\n\n`{args.dataset}` split `{args.split}`; label mode "
             f"`{first['label_mode']}` ({first['label_set']}: {first['num_examples']} of "
             f"{first['num_examples_total']} examples), k = {first.get('k')}; {args.features} "
             f"features; linear probe and kNN fitted on `{args.train_split}` (macro AUROC; "
             f"label fractions patient-wise).\n\nEncoder init: {inits}.")
  table = comparison_markdown(table_rows, fractions, context)
  report_lib.write_json(os.path.join(staged, "report.json"), reports)
  with open(os.path.join(staged, "report.md"), "w") as file:
    file.write(table)
  return reports, table


def cli(argv=None) -> int:
  """`main` with bad settings and data as one line on stderr and exit status 2 (130 on
  Ctrl-C)."""
  return errors.run_command(main, argv, "interrupted: no partial comparison was written to "
                                        "--out.")


if __name__ == "__main__":
  offline.enable_compilation_cache()
  sys.exit(cli())
