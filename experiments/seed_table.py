r"""Summarises comparisons repeated with several seeds: mean ± standard deviation per cell.

  python -m experiments.seed_table runs/thumbs_table/seed*/compare/report.json \
      [--out runs/thumbs_table/table.md]

Each argument is the OUT/report.json of `python -m experiments.compare` (one seed each: the
pretraining seed, which also seeds the random-init row). Rows and columns are the seed's
table (`experiments.compare.comparison_markdown`), plus the patient shortcut and its chance
rate where the reports have them (evaluator patient_shortcut); a cell is "mean ± sd" over the runs
(sample sd, n - 1), and only when every run has a value: a cell some runs lack (an
undefined AUROC) reads "n/a (values in k of n runs)" rather than a mean over fewer runs
than the table says. Then one line per cell with each seed's value, by seed name (the
folder above compare/, e.g. seed0); one line per AUROC cell with its 95 % patient-bootstrap
interval (the mean over the seeds of each bound, then each seed's); and the label-fraction
subsets' image / patient counts per seed.

Only like is averaged with like: comparisons whose rows, settings (data, split, label
mode, k, features, knn_k, k-means restarts, probe solver and settings, evaluators, label
fractions and their patient counts) or example counts differ are refused (exit 2), naming the field, the row and
each seed's value. An --out that exists is refused (exit 2) unless --overwrite.
"""
import argparse
import json
import math
import os
import statistics
import sys

if __package__ in (None, ""):  # `python experiments/seed_table.py`: the repository on the path
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import compare  # pylint: disable=wrong-import-position

COLUMNS = (("clustering accuracy", "cluster_accuracy"), ("NMI", "nmi"), ("ARI", "ari"),
           ("linear AUROC", "linear_auroc_macro"), ("kNN accuracy", "knn_accuracy"),
           ("kNN AUROC", "knn_auroc_macro"))
CLASSIFIER_COLUMN = ("classifier AUROC", "classifier_auroc_macro")
# Last, where the reports have them: nearest neighbour of the same patient vs chance.
PATIENT_COLUMNS = (("patient shortcut", "patient_shortcut"),
                   ("patient shortcut chance", "patient_shortcut_chance"))
# What must agree, for every row, between the comparisons averaged.
SETTINGS = ("dataset", "split", "train_split", "label_mode", "k", "features", "model",
            "image_size", "evaluators", "knn_k", "kmeans_n_init", "linear_probe_solver",
            "linear_probe_regularisation", "linear_probe_max_iter", "linear_probe_targets",
            "classifier_label_mode")
COUNTS = ("num_examples", "num_examples_total", "num_train_examples", "linear_train_examples",
          "classifier_examples")
ROW_NAMES = {"simclr": "SimCLR (JAX)", "supervised": "Supervised (JAX)",
             "random_init": "Random init (torchvision-style)",
             "imagenet": "ImageNet (torchvision)"}


def _value(report: dict, key: str):
  if key.startswith("fraction:"):
    value = compare._fraction_auroc(report, float(key.split(":", 1)[1]))  # pylint: disable=protected-access
  else:
    value = report.get(key)
  return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _label_fractions(report: dict):
  """The label-fraction rows' settings: (fraction, train patients). The image count is not
  compared: a patient-wise subset drawn with another seed holds as many patients but not as
  many images (the per-seed image counts are listed under the table)."""
  return [(entry.get("fraction"), entry.get("num_train_patients"))
          for entry in report.get("label_fractions") or []]


def _fraction_entry(report: dict, fraction: float) -> dict:
  return next((entry for entry in report.get("label_fractions") or []
               if entry.get("fraction") == fraction), {})


def _interval(report: dict, key: str):
  """The report's 95 % patient-bootstrap interval [low, high] of a column, or None."""
  if key.startswith("fraction:"):
    value = _fraction_entry(report, float(key.split(":", 1)[1])).get("linear_auroc_macro_ci95")
  else:
    value = report.get(f"{key}_ci95")
  if (isinstance(value, (list, tuple)) and len(value) == 2
      and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
    return [float(v) for v in value]
  return None


def check_alike(comparisons: list, seeds: list) -> None:
  """Refuses comparisons that are not the same experiment with another seed.

  Raises:
    ValueError: naming the rows, or the field, the row and each seed's value.
  """
  row_sets = [sorted(comparison) for comparison in comparisons]
  if any(rows != row_sets[0] for rows in row_sets):
    listed = "; ".join(f"{seed}: {', '.join(rows)}" for seed, rows in zip(seeds, row_sets))
    raise ValueError(f"the comparisons differ in their rows ({listed}); every run must "
                     f"compare the same encoders.")
  fields = [(field, lambda report, field=field: report.get(field)) for field in SETTINGS + COUNTS]
  fields.append(("label_fractions (fraction, train patients)", _label_fractions))
  for field in ("dataset", "split", "train_split", "label_mode", "k", "features"):
    values = {repr(report.get(field)) for comparison in comparisons
              for report in comparison.values()}
    if len(values) > 1:
      raise ValueError(f"the comparisons differ in {field}: {sorted(values)}; summarise one "
                       f"setting at a time.")
  for row in row_sets[0]:
    for field, read in fields:
      values = [read(comparison[row]) for comparison in comparisons]
      if any(value != values[0] for value in values):
        listed = ", ".join(f"{seed}: {value!r}" for seed, value in zip(seeds, values))
        raise ValueError(f"the comparisons differ in {field} (row {row}: {listed}); "
                         f"summarise one setting at a time.")


def summarise(comparisons: list, seeds: list = None) -> dict:
  """comparisons: [{row: report}] (one per seed) -> {row: {column key: [value or None
  per seed]}}.

  Raises:
    ValueError: when the comparisons are not alike (`check_alike`).
  """
  seeds = seeds or [f"run{i}" for i in range(len(comparisons))]
  check_alike(comparisons, seeds)
  fractions = [fraction for fraction, _ in _label_fractions(
      next(iter(comparisons[0].values())))]
  columns = list(COLUMNS)
  if any(report.get(CLASSIFIER_COLUMN[1]) is not None for comparison in comparisons
         for report in comparison.values()):
    columns.append(CLASSIFIER_COLUMN)
  keys = [key for _, key in columns] + [f"fraction:{f}" for f in sorted(fractions)]
  if any(report.get(PATIENT_COLUMNS[0][1]) is not None for comparison in comparisons
         for report in comparison.values()):
    keys += [key for _, key in PATIENT_COLUMNS]
  table = {}
  for row in compare.ROWS:
    if row in comparisons[0]:
      table[row] = {key: [_value(comparison[row], key) for comparison in comparisons]
                    for key in keys}
  return table


def intervals(comparisons: list) -> dict:
  """{row: {column key: [[low, high] or None per seed]}} for the columns whose reports carry
  a 95 % patient-bootstrap interval (`<key>_ci95`; label fractions: their rows' linear one)."""
  found = {}
  for row in compare.ROWS:
    if row not in comparisons[0]:
      continue
    fractions = sorted(fraction for fraction, _ in _label_fractions(comparisons[0][row]))
    keys = [key for _, key in COLUMNS + (CLASSIFIER_COLUMN,)] + [
        f"fraction:{fraction}" for fraction in fractions]
    columns = {key: [_interval(comparison[row], key) for comparison in comparisons]
               for key in keys}
    columns = {key: bounds for key, bounds in columns.items()
               if any(bound is not None for bound in bounds)}
    if columns:
      found[row] = columns
  return found


def intervals_markdown(found: dict, seeds: list) -> str:
  """One line per row and column: the mean of the seeds' 95 % bounds, then each seed's."""
  if not found:
    return ""
  lines = ["", "95 % intervals (patient bootstrap of the evaluated split; first the mean over "
               "the seeds of each bound, then each seed's):"]
  for row, columns in found.items():
    for key, bounds in columns.items():
      complete = [bound for bound in bounds if bound is not None]
      mean = (f"[{statistics.mean(b[0] for b in complete):.3f}, "
              f"{statistics.mean(b[1] for b in complete):.3f}]"
              if len(complete) == len(bounds) else f"n/a (in {len(complete)} of {len(bounds)} runs)")
      lines.append(f"- {ROW_NAMES.get(row, row)} {_column_name(key)}: {mean}; " + ", ".join(
          f"{seed} " + ("n/a" if bound is None else f"[{bound[0]:.3f}, {bound[1]:.3f}]")
          for seed, bound in zip(seeds, bounds)))
  return "\n".join(lines) + "\n"


def fraction_sizes_markdown(comparisons: list, seeds: list) -> str:
  """The label-fraction subsets' image / patient counts per seed (patient-wise subsets drawn
  with each seed differ in images)."""
  first = next(iter(comparisons[0].values()))
  lines = []
  for fraction, _ in _label_fractions(first):
    sizes = [(_fraction_entry(next(iter(c.values())), fraction).get("num_train_examples"),
              _fraction_entry(next(iter(c.values())), fraction).get("num_train_patients"))
             for c in comparisons]
    lines.append(f"- label fraction {fraction:g}: " + ", ".join(
        f"{seed} {images} images / {patients} patients"
        for seed, (images, patients) in zip(seeds, sizes)))
  return ("\ntraining subsets of the label-fraction columns:\n" + "\n".join(lines) + "\n"
          if lines else "")


# label_efficiency rows as columns ("<kind>:<fraction>"): the classifier's own test AUROC.
FINETUNE_COLUMNS = {"finetuned": "fine-tuned", "frozen": "frozen-encoder",
                    "scratch": "from-scratch"}


def _column_name(key: str) -> str:
  if key.startswith("fraction:"):
    return f"linear AUROC @ {float(key.split(':', 1)[1]):g} labels"
  kind, _, fraction = key.partition(":")
  if kind in FINETUNE_COLUMNS and fraction:   # experiments.patient_pairs_table's
    return f"{FINETUNE_COLUMNS[kind]} AUROC @ {float(fraction):g} labels"
  return {k: name for name, k in COLUMNS + (CLASSIFIER_COLUMN,) + PATIENT_COLUMNS}[key]


def _mean_sd(values: list) -> str:
  """'mean ± sd' over every run; never over fewer runs than there are."""
  present = [value for value in values if value is not None]
  if not present:
    return "n/a"
  if len(present) < len(values):
    return f"n/a (values in {len(present)} of {len(values)} runs)"
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(table: dict, seeds: list, context: str = "") -> str:
  """The seed's table with mean ± sd cells, then the raw values per seed, by seed name."""
  keys = list(next(iter(table.values())).keys()) if table else []
  header = ["Method"] + [_column_name(key) for key in keys]
  lines = ([context, ""] if context else []) + [
      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row, columns in table.items():
    lines.append("| " + " | ".join([ROW_NAMES.get(row, row)] +
                                  [_mean_sd(values) for values in columns.values()]) + " |")
  lines += ["", f"mean ± sd over {len(seeds)} runs ({', '.join(seeds)}); per seed:"]
  for row, columns in table.items():
    for key, values in columns.items():
      lines.append(f"- {ROW_NAMES.get(row, row)} {_column_name(key)}: " + ", ".join(
          f"{seed} {'n/a' if value is None else f'{value:.3f}'}"
          for seed, value in zip(seeds, values)))
  return "\n".join(lines) + "\n"


def _seed_names(paths: list) -> list:
  """The folder above compare/ of each report (e.g. seed0), or the path when those clash."""
  names = [os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
           for path in paths]
  return names if len(set(names)) == len(names) else list(paths)


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("reports", nargs="+", help="OUT/report.json of experiments.compare")
  parser.add_argument("--out", help="write the table here (Markdown)")
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)
  if args.out and os.path.exists(args.out) and not args.overwrite:
    raise FileExistsError(f"--out={args.out} exists; pass --overwrite to replace it.")
  comparisons = []
  for path in args.reports:
    try:
      with open(path) as f:
        comparison = json.load(f)
    except (OSError, ValueError) as error:
      raise ValueError(f"{path}: not a readable comparison report.json ({error}).") from None
    if (not isinstance(comparison, dict) or not comparison
        or not all(row in compare.ROWS and isinstance(report, dict)
                   for row, report in comparison.items())):
      raise ValueError(f"{path}: not the OUT/report.json of experiments.compare (expected "
                       f"{{row: report}} with rows among {', '.join(compare.ROWS)}; a row's "
                       f"own OUT/<row>/report.json is one report).")
    comparisons.append(comparison)
  seeds = _seed_names(args.reports)
  table = summarise(comparisons, seeds)
  context = f"{describe(next(iter(comparisons[0].values())))}; {len(comparisons)} runs."
  return emit(markdown(table, seeds, context)
              + intervals_markdown(intervals(comparisons), seeds)
              + fraction_sizes_markdown(comparisons, seeds), args.out)


def describe(report: dict) -> str:
  """What a comparison evaluated: '`dataset` split `split`, label mode `mode`, k = K, KIND
  features'."""
  return (f"`{report.get('dataset')}` split `{report.get('split')}`, label mode "
          f"`{report.get('label_mode')}`, k = {report.get('k')}, {report.get('features')} "
          f"features")


def emit(text: str, out: str = None) -> str:
  """Prints the table and writes it to `out` (when given); returns it."""
  if out:
    with open(out, "w") as f:
      f.write(text)
  print(text, end="")
  return text


def cli(main_function) -> None:
  """Runs a table's main(); a refusal is one line on stderr and exit 2."""
  try:
    main_function()
  except (ValueError, FileExistsError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  cli(main)
