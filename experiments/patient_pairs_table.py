r"""The patient-pairs grid (issue 19) on one split: a row per SimCLR setting, mean ± sd over seeds.

  python -m experiments.patient_pairs_table runs/patient_pairs --split validation \
      [--choose_by fraction:0.1] [--out runs/patient_pairs/table_validation.md]
  python -m experiments.patient_pairs_table runs/patient_pairs --split test \
      [--out runs/patient_pairs/table_test.md]

Reads ROOT/<setting>/seed<S>/compare_<split>/report.json, the comparisons that
experiments/patient_pairs_table.sh writes (one per setting and seed; the first setting's also
hold the random-init row), and the pairs.same_patient_prob and loss.mask_same_patient each
setting's runs were trained with (ROOT/<setting>/seed<S>/simclr/config.json). Every setting
is summarised by `experiments.seed_table` (its columns: the thumbs table's, the linear AUROC
at each label fraction, the patient shortcut and its chance rate; like only with like) and
becomes one row; the random init is one more.

Choosing honestly: with --split validation the setting with the highest mean --choose_by
(a column key of experiments.seed_table: cluster_accuracy, linear_auroc_macro,
knn_auroc_macro, fraction:0.1, ...) over the seeds is chosen and written to ROOT/chosen.json;
with --split test the chosen row is marked, and the table is refused without chosen.json
(choose on validation first: the test split is looked at once, after the choice).
"""
import argparse
import json
import os
import statistics
import sys

if __package__ in (None, ""):  # `python experiments/patient_pairs_table.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import seed_table  # pylint: disable=wrong-import-position

CHOSEN_FILE = "chosen.json"
# experiments.label_efficiency's rows -> this table's columns (seed_table's "<row>:<fraction>"
# keys); scratch is the random-init row's.
FINETUNE_ROWS = {"simclr_finetune": "finetuned", "simclr_frozen": "frozen"}


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as error:
    raise ValueError(f"{path}: not readable JSON ({error}).") from None


def _patient_settings(setting_dir: str, seeds: list) -> tuple:
  """(same_patient_prob, mask_same_patient) the setting's runs trained with (all alike)."""
  found = set()
  for seed in seeds:
    config = _read_json(os.path.join(setting_dir, seed, "simclr", "config.json"))
    found.add((float((config.get("pairs") or {}).get("same_patient_prob", 0.0)),
               bool((config.get("loss") or {}).get("mask_same_patient", False))))
  if len(found) != 1:
    raise ValueError(f"{setting_dir}: its seeds trained with different patient settings "
                     f"{sorted(found)}; one setting per folder.")
  return found.pop()


def collect(root: str, split: str) -> dict:
  """{setting folder: (seed names, comparisons, (p, mask))} of every setting under root, in
  the order of (p, mask).

  Raises:
    ValueError: no comparison on `split`, or settings run with different seeds.
  """
  settings = {}
  for name in sorted(os.listdir(root)):
    setting_dir = os.path.join(root, name)
    if not os.path.isdir(setting_dir):
      continue
    seeds = sorted(seed for seed in os.listdir(setting_dir) if os.path.isfile(
        os.path.join(setting_dir, seed, f"compare_{split}", "report.json")))
    if seeds:
      comparisons = [_read_json(os.path.join(setting_dir, seed, f"compare_{split}",
                                             "report.json")) for seed in seeds]
      settings[name] = (seeds, comparisons, _patient_settings(setting_dir, seeds))
  if not settings:
    raise ValueError(f"no ROOT/<setting>/seed<S>/compare_{split}/report.json under {root}; "
                     f"run experiments/patient_pairs_table.sh first.")
  settings = dict(sorted(settings.items(), key=lambda item: item[1][2]))
  seed_sets = {name: seeds for name, (seeds, _, _) in settings.items()}
  if len({tuple(seeds) for seeds in seed_sets.values()}) > 1:
    raise ValueError(f"the settings were evaluated with different seeds on {split} "
                     f"({seed_sets}); every setting needs the same seeds.")
  return settings


# What may differ between the label-efficiency reports of one table: the encoder each started
# from (and the row keys that hash it); everything else must be alike.
_FINETUNE_MAY_DIFFER = ("simclr_workdir", "frozen_simclr_workdir", "row_keys")


def add_finetuning(root: str, split: str, settings: dict, table: dict) -> None:
  """Adds the label-efficiency columns to `table` in place from each setting's and seed's
  ROOT/<setting>/seed<S>/finetune_<split>/report.json (experiments.label_efficiency at one or
  more fractions, scored on `split`): per fraction F, "finetuned:F" and "frozen:F" on each
  SimCLR row, "scratch:F" on the random init (from the one setting whose reports hold the
  scratch row). Nothing is added when no setting has such reports.

  Raises:
    ValueError: reports for some settings or seeds but not all, reports of different
      protocols (fractions, config, flags, label mode, split), or scratch in several settings.
  """
  paths = {(name, seed): os.path.join(root, name, seed, f"finetune_{split}", "report.json")
           for name, (seeds, _, _) in settings.items() for seed in seeds}
  present = [key for key, path in paths.items() if os.path.isfile(path)]
  if not present:
    return
  if len(present) < len(paths):
    missing = [os.path.relpath(path, root) for key, path in paths.items() if key not in present]
    raise ValueError(f"label-efficiency reports for some runs but not all (missing: "
                     f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}); run "
                     f"experiments/patient_pairs_table.sh to the end, or remove them.")
  reports = {key: _read_json(path) for key, path in paths.items()}

  def protocol(report):
    fields = dict(report.get("protocol") or {})
    for field in _FINETUNE_MAY_DIFFER:
      fields.pop(field, None)
    fields["fractions"] = sorted({f for row in report["rows"].values() for f in row})
    return json.dumps(fields, sort_keys=True)
  kinds = {protocol(report) for report in reports.values()}
  if len(kinds) > 1:
    raise ValueError(f"the label-efficiency reports under {root} were made with different "
                     f"settings ({len(kinds)} kinds: fractions, config, flags, label mode or "
                     f"split); one table holds one protocol.")
  if any((report.get("protocol") or {}).get("split", split) != split
         for report in reports.values()):
    raise ValueError(f"finetune_{split}/report.json files scored on another split.")
  with_scratch = [name for name, (seeds, _, _) in settings.items()
                  if "scratch" in reports[name, seeds[0]]["rows"]]
  if len(with_scratch) > 1:
    raise ValueError(f"the scratch row is in several settings' reports ({with_scratch}); "
                     f"train it once (it does not depend on the SimCLR setting).")
  for name, (seeds, _, patient) in settings.items():
    targets = {row: row_name(*patient) for row in FINETUNE_ROWS}
    if name in with_scratch and "random_init" in table:
      targets["scratch"] = "random_init"
    for row, target in targets.items():
      for fraction in reports[name, seeds[0]]["rows"].get(row, {}):
        table[target][f"{FINETUNE_ROWS.get(row, row)}:{fraction}"] = [
            reports[name, seed]["rows"].get(row, {}).get(fraction, {}).get("auroc_mean")
            for seed in seeds]
  keys = list(dict.fromkeys(key for columns in table.values() for key in columns))
  absent = [None] * len(next(iter(settings.values()))[0])
  for row, columns in table.items():   # every row the same columns in one order (markdown)
    table[row] = {key: columns.get(key, absent) for key in keys}


def row_name(probability: float, mask: bool) -> str:
  return f"SimCLR, same-patient p = {probability:g}, mask {'on' if mask else 'off'}"


def summarise(settings: dict) -> dict:
  """{row name: {column key: [value per seed]}}: one SimCLR row per setting, then the
  random init (from the first setting that evaluated it).

  Raises:
    ValueError: comparisons that are not alike (seed_table.check_alike, also across the
      settings' SimCLR rows) or settings with different columns.
  """
  every_simclr = [{"simclr": comparison["simclr"]}
                  for _, comparisons, _ in settings.values() for comparison in comparisons]
  seed_table.check_alike(every_simclr, [f"{name}/{seed}" for name, (seeds, _, _)
                                        in settings.items() for seed in seeds])
  table, random_init = {}, None
  for name, (seeds, comparisons, (probability, mask)) in settings.items():
    summary = seed_table.summarise(comparisons, seeds)
    table[row_name(probability, mask)] = summary["simclr"]
    if random_init is None and "random_init" in summary:
      random_init = summary["random_init"]
  if random_init is not None:
    table["random_init"] = random_init
  columns = {tuple(row) for row in table.values()}
  if len(columns) > 1:
    raise ValueError(f"the settings' tables have different columns ({sorted(columns)}); "
                     f"evaluate every setting with the same evaluators and label fractions.")
  return table


def choose(table: dict, choose_by: str) -> tuple:
  """(row name, mean over seeds) of the SimCLR row with the highest mean `choose_by`.

  Raises:
    ValueError: an unknown column, or a row without a value in every seed.
  """
  candidates = {name: columns for name, columns in table.items() if name != "random_init"}
  keys = next(iter(candidates.values())).keys()
  if choose_by not in keys:
    raise ValueError(f"--choose_by={choose_by}: not a column of these tables; accepted: "
                     f"{', '.join(keys)}.")
  means = {}
  for name, columns in candidates.items():
    values = columns[choose_by]
    if any(value is None for value in values):
      raise ValueError(f"--choose_by={choose_by}: row '{name}' lacks a value in some seed "
                       f"({values}); choose by a figure every run has.")
    means[name] = statistics.mean(values)
  best = max(means, key=means.get)
  return best, means[best]


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("root", help="OUT of experiments/patient_pairs_table.sh")
  parser.add_argument("--split", required=True, choices=("validation", "test"))
  parser.add_argument("--choose_by", default="fraction:0.1",
                      help="validation: the column whose mean over seeds chooses the setting")
  parser.add_argument("--out", help="write the table here (Markdown)")
  args = parser.parse_args(argv)
  settings = collect(args.root, args.split)
  table = summarise(settings)
  add_finetuning(args.root, args.split, settings, table)
  chosen_path = os.path.join(args.root, CHOSEN_FILE)
  if args.split == "validation":
    best, mean = choose(table, args.choose_by)
    chosen = {"row": best, "setting": next(
        name for name, (_, _, patient) in settings.items() if row_name(*patient) == best),
              "choose_by": args.choose_by, "validation_mean": mean}
    with open(chosen_path, "w") as f:
      json.dump(chosen, f, indent=2)
  else:
    if not os.path.isfile(chosen_path):
      raise ValueError(f"{chosen_path} not found: choose the setting on the validation split "
                       f"first (--split validation), then look at the test split once.")
    chosen = _read_json(chosen_path)
  rows = {(f"{name} (chosen on validation)" if name == chosen["row"] else name): columns
          for name, columns in table.items()}
  seeds, comparisons, _ = next(iter(settings.values()))
  context = (f"Patient pairs grid: {seed_table.describe(comparisons[0]['simclr'])}; "
             f"{len(settings)} settings x {len(seeds)} seeds. Chosen on validation by the mean "
             f"{seed_table._column_name(chosen['choose_by'])}: "  # pylint: disable=protected-access
             f"{chosen['row']} ({chosen['validation_mean']:.3f}).")
  return seed_table.emit(seed_table.markdown(rows, seeds, context), args.out)


if __name__ == "__main__":
  seed_table.cli(main)
