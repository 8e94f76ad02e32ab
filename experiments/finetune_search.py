r"""Fine-tuning settings chosen on VALIDATION at 1-10 % labels (issue 17, point 6).

  python -m experiments.finetune_search --dataset nih_chest_xray14/thumbs64 \
      --data_dir runs/data --simclr_workdir runs/thumbs/simclr \
      [--pretraining 50ep=runs/thumbs_50ep/simclr] --out runs/thumbs/finetune_search

For each row of the label-efficiency protocol (scratch, simclr_finetune, simclr_frozen) it runs
`experiments.label_efficiency` on the VALIDATION split, at label fractions 0.01 and 0.1 and
seeds 0, 1, 2 (the same patient-wise subsets for every candidate), once per candidate setting:
  stage 1  the learning rate (and, fine-tuned, the encoder learning-rate multiplier)
  stage 2  the stage-1 winner with light augmentation (flip, crop, rotation only: no
           brightness/contrast jitter, blur or CLAHE) against the config's augmentation
  stage 3  (simclr rows, with --pretraining NAME=WORKDIR) the winner on another pretraining
           (e.g. a shorter one), against --simclr_workdir
Every run trains its fixed schedule (supervised.select_by_validation=0: the validation split is
what is scored here, so it must not also pick the checkpoint) and is scored on validation with
the classifier evaluator. The rule, fixed before any run: per row, the candidate with the highest
mean validation AUROC over the two fractions (each the mean over the seeds) wins; a candidate
must beat the current winner by more than TIE (0.005) to replace it, so ties keep the earlier
(the config's own settings come first). The test split is never read here: score it once,
afterwards, with label_efficiency and the chosen flags (printed, and in OUT/choice.json).

Writes OUT/<row>/<candidate>/ (a label_efficiency OUT per candidate: a re-run reuses its
finished runs), OUT/choice.json ({"rows": {row: {"chosen", "flags", "candidates": {name:
{"flags", "score", "fractions": {f: {"auroc_mean", "auroc_sd"}}}}}}, "rule", ...}) and
OUT/choice.md (the table); choice.json's "label_efficiency_args" are the arguments that run
every row with its chosen settings (experiments/thumbs_protocol.sh passes them on).
"""
import argparse
import json
import os
import re
import shlex
import sys
import time

if __package__ in (None, ""):  # `python experiments/finetune_search.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import label_efficiency  # pylint: disable=wrong-import-position

FRACTIONS = "0.01,0.1"
TIE = 0.005
NO_SELECTION = "--config.supervised.select_by_validation=0"
LIGHT_AUG = ("--config.augment.jitter_prob=0 --config.augment.blur_prob=0 "
             "--config.augment.clahe_prob=0")
_LR = "--config.optimizer.learning_rate="
_MULTIPLIER = "--config.supervised.encoder_lr_multiplier="
# Stage 1, per row: (name, flags); the first is thumbs_finetune.py as it was (lr 1e-3,
# multiplier 1). A frozen encoder trains only a linear head: larger rates, no multiplier.
STAGE1 = {
    "scratch": [("lr1e-3", _LR + "1e-3"), ("lr3e-4", _LR + "3e-4"), ("lr1e-4", _LR + "1e-4")],
    "simclr_finetune": [("lr1e-3", _LR + "1e-3"), ("lr3e-4", _LR + "3e-4"),
                        ("lr1e-4", _LR + "1e-4"),
                        ("lr1e-3_enc0.1", f"{_LR}1e-3 {_MULTIPLIER}0.1")],
    "simclr_frozen": [("lr1e-3", _LR + "1e-3"), ("lr1e-2", _LR + "1e-2")],
}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--simclr_workdir", required=True)
  parser.add_argument("--pretraining", action="append", default=[], metavar="NAME=WORKDIR",
                      help="another SimCLR run to try in stage 3 (repeatable)")
  parser.add_argument("--config", default=label_efficiency.DEFAULT_CONFIG)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--rows", default=",".join(STAGE1))
  parser.add_argument("--out", required=True)
  parser.add_argument("--overwrite", action="store_true",
                      help="passed to label_efficiency: replace a candidate's report of "
                           "other settings (its finished runs are still reused by key)")
  return parser


def candidate_argv(args, row: str, name: str, flags: str, simclr_workdir: str) -> list:
  """experiments.label_efficiency's arguments for one row and candidate: scored on the
  VALIDATION split, every run its fixed schedule (no checkpoint chosen on that split)."""
  argv = ["--dataset", args.dataset, "--data_dir", args.data_dir, "--simclr_workdir",
          simclr_workdir, "--fractions", FRACTIONS, "--seeds", args.seeds,
          "--out", os.path.join(args.out, row, name), "--config", args.config, "--rows", row,
          "--split", "validation", f"--train_flags={NO_SELECTION} {flags}"]
  return argv + (["--overwrite"] if args.overwrite else [])


def _run(args, row: str, name: str, flags: str, simclr_workdir: str) -> dict:
  """label_efficiency on validation for one row and candidate; returns its score entry (score
  None, so it cannot win, when a seed's AUROC is not finite, e.g. a diverged run)."""
  report = label_efficiency.main(candidate_argv(args, row, name, flags, simclr_workdir))
  fractions = {text: {key: report["rows"][row][text][key] for key in ("auroc_mean", "auroc_sd")}
               for text in FRACTIONS.split(",")}
  means = [entry["auroc_mean"] for entry in fractions.values()]
  score = None if None in means else sum(means) / len(means)
  print(f"finetune_search: {row} {name}: validation AUROC "
        + ", ".join(f"{text} {_figure(entry['auroc_mean'])}"
                    for text, entry in fractions.items())
        + f"; score {_figure(score)}", flush=True)
  return {"flags": flags, "simclr_workdir": simclr_workdir if row != "scratch" else None,
          "score": score, "fractions": fractions}


def _figure(value) -> str:
  return "n/a" if value is None else f"{value:.3f}"


def _best(candidates: dict) -> str:
  """The rule: highest score; a later candidate must win by more than TIE; a candidate
  without a score (a non-finite AUROC in some seed) never wins.

  Raises:
    ValueError: no candidate has a score.
  """
  chosen = None
  for name, entry in candidates.items():
    if entry["score"] is None:
      continue
    if chosen is None or entry["score"] > candidates[chosen]["score"] + TIE:
      chosen = name
  if chosen is None:
    raise ValueError(f"no candidate has a finite validation AUROC in every seed "
                     f"({', '.join(candidates)}); see their report.md files.")
  return chosen


def _check(args) -> tuple:
  """(rows, [(name, workdir)] of --pretraining); bad input raises ValueError."""
  pretrainings = [item.split("=", 1) for item in args.pretraining]
  for item in pretrainings:
    if len(item) != 2 or not item[0] or not item[1]:
      raise ValueError(f"--pretraining {'='.join(item)!r}: give NAME=WORKDIR")
  names = [name for name, _ in pretrainings]
  for name in names:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or names.count(name) > 1:
      raise ValueError(f"--pretraining {name}=...: give each pretraining a distinct NAME of "
                       f"letters, digits, '.', '_' or '-'.")
  rows = label_efficiency.parse_rows(args.rows, imagenet=True)   # known, distinct, in order
  for row in rows:
    if row not in STAGE1:
      raise ValueError(f"--rows={args.rows!r}: {row} is not searched; rows: "
                       f"{', '.join(STAGE1)}.")
  return rows, pretrainings


def search(args, row_names: list, pretrainings: list) -> dict:
  """Every stage for every row of `row_names` (checked by _check); the choice record."""
  rows = {}
  for row in row_names:
    candidates = {}
    for name, flags in STAGE1[row]:
      candidates[name] = _run(args, row, name, flags, args.simclr_workdir)
    stage1 = _best(candidates)
    light = f"{stage1}+light_aug"
    candidates[light] = _run(args, row, light, f"{candidates[stage1]['flags']} {LIGHT_AUG}",
                             args.simclr_workdir)
    stage2 = _best(candidates)
    if row != "scratch":
      for pretraining, workdir in pretrainings:
        name = f"{stage2}@{pretraining}"
        candidates[name] = _run(args, row, name, candidates[stage2]["flags"], workdir)
    chosen = _best(candidates)
    rows[row] = {"chosen": chosen, "flags": candidates[chosen]["flags"],
                 "simclr_workdir": candidates[chosen]["simclr_workdir"],
                 "stage1": stage1, "stage2": stage2, "candidates": candidates}
  return {"rows": rows, "label_efficiency_args": protocol_args(rows, args.simclr_workdir),
          "split": "validation", "fractions": FRACTIONS, "seeds": args.seeds,
          "dataset": args.dataset, "config": args.config,
          "simclr_workdir": args.simclr_workdir, "pretrainings": dict(pretrainings),
          "rule": (f"per row, highest mean validation AUROC over fractions {FRACTIONS} (each "
                   f"the mean over seeds {args.seeds}); a later candidate must win by more "
                   f"than {TIE}; every run trains its fixed schedule ({NO_SELECTION}) and its "
                   f"last checkpoint is scored (the test protocol afterwards keeps the "
                   f"config's checkpoint selection on validation)")}


def protocol_args(rows: dict, simclr_workdir: str) -> list:
  """experiments.label_efficiency arguments that run the searched rows (only those), each
  with its chosen settings: its flags as --row_flags, the fine-tuned row's pretraining as
  --simclr_workdir and the frozen row's as --frozen_simclr_workdir when they differ."""
  finetune = (rows.get("simclr_finetune") or {}).get("simclr_workdir") or simclr_workdir
  frozen = (rows.get("simclr_frozen") or {}).get("simclr_workdir") or simclr_workdir
  args = ["--rows", ",".join(rows), "--simclr_workdir", finetune]
  if frozen != finetune and "simclr_frozen" in rows:
    args += ["--frozen_simclr_workdir", frozen]
  for row, entry in rows.items():
    args += ["--row_flags", f"{row}={entry['flags']}"]
  return args


def markdown(choice: dict) -> str:
  fractions = choice["fractions"].split(",")
  lines = [f"# Fine-tuning settings chosen on the validation split ({choice['dataset']})", "",
           f"Rule: {choice['rule']}. Seeds {choice['seeds']}; SimCLR encoder "
           f"`{choice['simclr_workdir']}`.", "",
           "| row | candidate | " + " | ".join(f"validation AUROC @ {f}" for f in fractions)
           + " | score |", "|---|---|" + "---|" * (len(fractions) + 1)]
  for row, entry in choice["rows"].items():
    for name, candidate in entry["candidates"].items():
      cells = []
      for fraction in fractions:
        figure = candidate["fractions"][fraction]
        sd = figure["auroc_sd"]
        cells.append(_figure(figure["auroc_mean"])
                     + (f" ± {sd:.3f}" if sd is not None and figure["auroc_mean"] is not None
                        else ""))
      mark = " **(chosen)**" if name == entry["chosen"] else ""
      lines.append(f"| {row} | {name}{mark} | " + " | ".join(cells)
                   + f" | {_figure(candidate['score'])} |")
  lines += ["", "The test split, once, with the chosen settings: `python -m "
            "experiments.label_efficiency ... "
            + " ".join(shlex.quote(arg) for arg in choice["label_efficiency_args"]) + "`",
            "", "Flags of each candidate:", ""]
  for row, entry in choice["rows"].items():
    for name, candidate in entry["candidates"].items():
      lines.append(f"- {row} / {name}: `{candidate['flags']}`"
                   + (f" from `{candidate['simclr_workdir']}`"
                      if candidate["simclr_workdir"] else ""))
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  args = _parser().parse_args(argv)
  start = time.perf_counter()
  rows, pretrainings = _check(args)
  os.makedirs(args.out, exist_ok=True)
  choice = search(args, rows, pretrainings)
  choice["total_seconds"] = time.perf_counter() - start
  with open(os.path.join(args.out, "choice.json"), "w") as file:
    json.dump(choice, file, indent=2)
  with open(os.path.join(args.out, "choice.md"), "w") as file:
    file.write(markdown(choice))
  for row, entry in choice["rows"].items():
    print(f"finetune_search: {row}: chosen {entry['chosen']}: {entry['flags']}")
  print(f"finetune_search: {choice['total_seconds']:.0f} s; {args.out}/choice.md")
  return choice


def cli(argv=None) -> int:
  """`main` with bad input as one line on stderr and exit status 2 (130 on Ctrl-C)."""
  return label_efficiency.errors.run_command(
      main, argv, "interrupted: finished runs are kept and reused by the next start.")


if __name__ == "__main__":
  sys.exit(cli())
