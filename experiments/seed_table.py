r"""Summarises comparisons repeated with several seeds: mean ± standard deviation per cell.

  python -m experiments.seed_table runs/thumbs_table/seed*/compare/report.json \
      [--out runs/thumbs_table/table.md]

Each argument is the OUT/report.json of `python -m experiments.compare` (one seed each: the
pretraining seed, which also seeds the random-init row). Rows and columns are the seed's
table (`experiments.compare.comparison_markdown`); a cell is "mean ± sd" over the seeds
that have it (sample sd, n - 1), then one line per seed with the raw values. An --out that
exists is refused (exit 2) unless --overwrite.
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
# What must agree for two comparisons to be averaged.
SETTINGS = ("dataset", "split", "train_split", "label_mode", "k", "features")
ROW_NAMES = {"simclr": "SimCLR (JAX)", "supervised": "Supervised (JAX)",
             "random_init": "Random init (torchvision-style)",
             "imagenet": "ImageNet (torchvision)"}


def _value(report: dict, key: str):
  if key.startswith("fraction:"):
    value = compare._fraction_auroc(report, float(key.split(":", 1)[1]))  # pylint: disable=protected-access
  else:
    value = report.get(key)
  return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def summarise(comparisons: list) -> dict:
  """comparisons: [{row: report}] (one per seed) -> {row: {column key: [values]}}.

  Raises:
    ValueError: when the comparisons were not made on the same data, split and label mode.
  """
  settings = set()
  fractions = []
  for comparison in comparisons:
    for report in comparison.values():
      settings.add(tuple(report.get(key) for key in SETTINGS))
      for entry in report.get("label_fractions") or []:
        if entry.get("fraction") not in fractions:
          fractions.append(entry.get("fraction"))
  if len(settings) > 1:
    raise ValueError(f"the comparisons differ in ({', '.join(SETTINGS)}): "
                     f"{sorted(settings, key=str)}; summarise one setting at a time.")
  keys = [key for _, key in COLUMNS] + [f"fraction:{f}" for f in sorted(fractions)]
  table = {}
  for row in compare.ROWS:
    reports = [comparison[row] for comparison in comparisons if row in comparison]
    if reports:
      table[row] = {key: [v for v in (_value(r, key) for r in reports) if v is not None]
                    for key in keys}
  return table


def _mean_sd(values: list) -> str:
  if not values:
    return "n/a"
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(table: dict, seeds: list, context: str = "") -> str:
  """The seed's table with mean ± sd cells, then the raw values per seed."""
  keys = next(iter(table.values())).keys() if table else []
  header = ["Method"] + [name for name, _ in COLUMNS] + [
      f"linear AUROC @ {float(key.split(':', 1)[1]):g} labels" for key in keys
      if key.startswith("fraction:")]
  lines = ([context, ""] if context else []) + [
      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row, columns in table.items():
    lines.append("| " + " | ".join([ROW_NAMES.get(row, row)] +
                                  [_mean_sd(values) for values in columns.values()]) + " |")
  lines += ["", f"mean ± sd over seeds {', '.join(map(str, seeds))}; per seed:"]
  for row, columns in table.items():
    for key, values in columns.items():
      lines.append(f"- {ROW_NAMES.get(row, row)} {key}: "
                   + ", ".join(f"{v:.3f}" for v in values))
  return "\n".join(lines) + "\n"


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
  seeds = [os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
           for path in args.reports]
  first = next(iter(comparisons[0].values()))
  context = (f"`{first.get('dataset')}` split `{first.get('split')}`, label mode "
             f"`{first.get('label_mode')}`, k = {first.get('k')}, {first.get('features')} "
             f"features; {len(comparisons)} runs.")
  text = markdown(summarise(comparisons), seeds, context)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  print(text, end="")
  return text


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileExistsError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
