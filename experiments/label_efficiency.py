r"""Fewer labels, measured: fine-tuned AUROC against the label fraction, per initialisation.

  python -m experiments.label_efficiency --dataset nih_chest_xray14/thumbs64 \
      --data_dir runs/data --simclr_workdir runs/thumbs/simclr \
      [--imagenet_weights resnet18.pth] --fractions 0.01,0.1,1.0 --seeds 0,1,2 \
      --out runs/thumbs/label_efficiency [--config experiments/configs/thumbs_finetune.py] \
      [--label_mode "binary:No Finding"] [--train_flags="--config.num_epochs=30 ..."] \
      [--rows scratch,simclr_finetune] [--frozen_simclr_workdir runs/thumbs_50ep/simclr] \
      [--row_flags "simclr_finetune=--config.supervised.encoder_lr_multiplier=0.1" ...]

Per label fraction F and seed S it trains, with the same training subset (the patient-wise
subsample of the train split drawn with subset_seed S, `data/train_subset.py`) for every
row:
  scratch            the config's network from random initialisation
  simclr_finetune    initialised from --simclr_workdir (its newest complete checkpoint when
                     the script starts, pinned as WORKDIR@STEP for every run), all layers
  simclr_frozen      the same encoder frozen: only the classifier trains (on augmented views)
  imagenet_finetune  initialised from --imagenet_weights (only when given)
(--frozen_simclr_workdir gives the frozen row another pretraining, when validation chose
one for it; --rows picks some of them; --row_flags ROW=FLAGS adds --config flags to one row
only, after --train_flags, so each row can run the settings chosen for it on validation,
e.g. by experiments.finetune_search), each as
`python -m simclr_jax.train` would (in this process: training.loop), with
config.seed = S, supervised.label_fraction = F, supervised.subset_seed = S, then evaluates
it on --split (test) with the `classifier` evaluator (the head's own macro AUROC with a 95 %
interval resampling test patients). When the config sets supervised.select_by_validation,
the checkpoint evaluated is the best one on VALIDATION (`--step best`); settings are never
chosen on the test split.

Writes
  OUT/report.json        {"rows": {row: {"<fraction as given>": {"auroc_mean", "auroc_sd",
                         "auroc_ci95", "n_images", "n_patients", "seeds"}}}, "protocol":
                         ..., "definitions": ...}
  OUT/report.md          the table: mean ± sd [95 % interval] per row and fraction
  OUT/label_efficiency.png  AUROC against the fraction (log axis), one line per row, the
                         band the mean 95 % interval, error bars the sd over seeds
  OUT/runs/<row>-<key>/<fraction>/seed<S>/{train,eval}/   every run and its evaluation
auroc_mean / auroc_sd: mean and sample sd (n - 1; null for one seed) of the seeds' test
macro AUROC. auroc_ci95: the MEAN of the seeds' patient-bootstrap 95 % bounds (each seed's
interval from the same 1,000 resamples of the test patients): the test-sampling
uncertainty of one run, while auroc_sd is the spread over seeds (init, subset, order).
n_images / n_patients: the training subset's size (the mean over seeds when the seeds'
subsets differ in size; each seed's in `seeds`).

A re-run reuses every finished run (a complete final checkpoint and an evaluation report)
and trains only what is missing; <key> is a hash of the row's settings (config, train
flags, init source), so changed settings train new runs beside the old ones instead of
mixing with them. An OUT holding a report of another protocol (other data, label mode,
settings or init sources), or files of something else, is refused unless --overwrite.
Bad input (a fraction outside (0, 1], a label mode the dataset cannot give, an unlabelled
dataset, an init source of the wrong architecture or without a complete checkpoint, ...)
is one line and exit 2 before anything is trained or written. Progress: one line per run
with its time.
"""
import argparse
import hashlib
import json
import logging
import math
import os
import shlex
import signal
import statistics
import sys
import time

if __name__ == "__main__":  # Ctrl-C while the modules below load: one line, exit 130
  signal.signal(signal.SIGINT, lambda *_: (print("interrupted.", file=sys.stderr),
                                           os._exit(130)))

if __package__ in (None, ""):  # `python experiments/label_efficiency.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr_jax import errors  # pylint: disable=wrong-import-position

ROWS = ("scratch", "simclr_finetune", "simclr_frozen", "imagenet_finetune")
ROW_TITLES = {"scratch": "from scratch", "simclr_finetune": "SimCLR, fine-tuned",
              "simclr_frozen": "SimCLR, frozen encoder", "imagenet_finetune": "ImageNet, fine-tuned"}
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "thumbs_finetune.py")
OUT_FILES = ("report.json", "report.md", "label_efficiency.png")
PROTOCOL = "label_efficiency"
METRIC = "classifier_auroc_macro"
DEFINITIONS = {
    "auroc": "test-split macro AUROC of each run's own classifier head on its training "
             "targets (classifier evaluator; a binary label mode: the AUROC of its second "
             "class)",
    "auroc_mean": "mean over the seeds",
    "auroc_sd": "sample standard deviation over the seeds (n - 1; null for one seed)",
    "auroc_ci95": "mean over the seeds of each seed's 95 % patient-bootstrap interval "
                  "(1,000 resamples of the test patients, the same for every run)",
    "n_images, n_patients": "the training subset: images and patients (mean over the seeds "
                            "when their subsets differ in size)",
    "seeds": "per seed: config.seed = subset_seed = the seed; the run and its figures",
}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--simclr_workdir", required=True,
                      help="SimCLR run whose newest complete checkpoint initialises the "
                           "simclr rows (or WORKDIR@STEP)")
  parser.add_argument("--frozen_simclr_workdir", default=None,
                      help="another SimCLR run (or WORKDIR@STEP) for the simclr_frozen row "
                           "only, when validation chose a different pretraining for it "
                           "(default: --simclr_workdir)")
  parser.add_argument("--imagenet_weights", help="torchvision state_dict: adds the "
                                                 "imagenet_finetune row")
  parser.add_argument("--fractions", default="0.01,0.1,1.0")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--out", required=True)
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="fine-tuning config file")
  parser.add_argument("--label_mode", default=None,
                      help="supervised.label_mode (default: the config's)")
  parser.add_argument("--train_flags", default="",
                      help="extra --config.KEY=VALUE flags for every run, one string: "
                           "--train_flags=\"--config.a=1 --config.b=2\"")
  parser.add_argument("--rows", default=None,
                      help="comma-separated rows to run (default: scratch, simclr_finetune, "
                           "simclr_frozen, and imagenet_finetune when --imagenet_weights is "
                           "given)")
  parser.add_argument("--row_flags", action="append", default=[], metavar="ROW=FLAGS",
                      help="extra --config.KEY=VALUE flags for one row only, after "
                           "--train_flags; repeat per row: --row_flags \"simclr_finetune="
                           "--config.supervised.encoder_lr_multiplier=0.1\"")
  parser.add_argument("--split", default="test", help="the split every run is scored on")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a report of another protocol in --out")
  return parser


def parse_fractions(text: str) -> list:
  """'0.01,0.1,1.0' -> [('0.01', 0.01), ...] (the text as given, the value)."""
  fractions = []
  for item in (part.strip() for part in str(text).split(",") if part.strip()):
    try:
      value = float(item)
    except ValueError:
      raise ValueError(f"--fractions={text!r}: {item!r} is not a number; give fractions in "
                       f"(0, 1], e.g. 0.01,0.1,1.0.") from None
    if not 0.0 < value <= 1.0:
      raise ValueError(f"--fractions={text!r}: {item} is not in (0, 1]; a label fraction is "
                       f"the share of the train split's patients, e.g. 0.01,0.1,1.0.")
    fractions.append((item, value))
  if not fractions or len({value for _, value in fractions}) != len(fractions):
    raise ValueError(f"--fractions={text!r}: give distinct fractions in (0, 1], e.g. "
                     f"0.01,0.1,1.0.")
  return fractions


def parse_seeds(text: str) -> list:
  try:
    seeds = [int(part) for part in str(text).split(",") if part.strip()]
  except ValueError:
    raise ValueError(f"--seeds={text!r}: give comma-separated integers, e.g. 0,1,2.") from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(f"--seeds={text!r}: give distinct integers >= 0, e.g. 0,1,2.")
  return seeds


def load_config(path: str, train_flags: str):
  """The config file with the --config.KEY=VALUE flags of `train_flags` applied (typed as
  `python -m simclr_jax.train` types them)."""
  from absl import flags
  from ml_collections import config_flags
  from simclr_jax.training import settings
  if not os.path.isfile(path):
    raise ValueError(f"--config={path}: no such file (configs are in experiments/configs/).")
  extra = shlex.split(train_flags or "")
  bad = [flag for flag in extra if not flag.startswith("--config.")]
  if bad:
    raise ValueError(f"--train_flags: {bad[0]!r} is not a --config.KEY=VALUE flag.")
  def parse(argv):
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)   # overrides: sys_argv
    flag_values(argv)
    return flag_values.config

  try:
    config = parse(["label_efficiency", f"--config={path}"])
    for flag in extra:   # a mistyped field: one line with the closest names
      message = settings.unknown_key_message(config, flag[len("--config."):].split("=")[0])
      if message:
        raise ValueError(f"--train_flags: {message}")
    config = parse(["label_efficiency", f"--config={path}", *extra])
  except (flags.Error, AttributeError, KeyError, OSError, ImportError, SyntaxError) as error:
    raise ValueError(f"--train_flags / --config: {' '.join(str(error).split())}") from None
  return config.copy_and_resolve_references()


def parse_rows(text, imagenet: bool) -> list:
  """--rows -> the rows to run, in ROWS order (default: every row the inputs allow)."""
  allowed = [row for row in ROWS if imagenet or row != "imagenet_finetune"]
  if text is None:
    return allowed
  rows = [part.strip() for part in str(text).split(",") if part.strip()]
  for row in rows:
    if row not in ROWS:
      raise ValueError(f"--rows={text!r}: {row!r} is not a row; rows: {', '.join(ROWS)}.")
    if row not in allowed:
      raise ValueError(f"--rows={text!r}: {row} needs --imagenet_weights FILE.")
  if not rows or len(set(rows)) != len(rows):
    raise ValueError(f"--rows={text!r}: give distinct rows, e.g. scratch,simclr_finetune.")
  return [row for row in ROWS if row in rows]


def parse_row_flags(items: list, rows: list) -> dict:
  """['simclr_finetune=--config.a=1 --config.b=2', ...] -> {row: flags} (rows being run)."""
  found = {}
  for item in items or []:
    row, separator, flags = str(item).partition("=")
    row = row.strip()
    if not separator or row not in ROWS:
      raise ValueError(f"--row_flags={item!r}: give ROW=FLAGS with ROW one of "
                       f"{', '.join(ROWS)}, e.g. \"simclr_finetune=--config.supervised."
                       f"encoder_lr_multiplier=0.1\".")
    if row not in rows:
      raise ValueError(f"--row_flags={item!r}: row {row} is not run (rows: {', '.join(rows)}).")
    if row in found:
      raise ValueError(f"--row_flags: row {row} given twice; put its flags in one string.")
    found[row] = flags.strip()
  return found


def _set(config, **fields):
  """A copy of `config` with dotted fields set."""
  config = config.copy_and_resolve_references()
  config.update_from_flattened_dict(fields)
  return config


def _key(config) -> str:
  """A short hash of a row's settings: its run folders' name."""
  text = json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


class Run:
  """One (row, fraction, seed): its config, folders and plan."""

  def __init__(self, row: str, fraction_text: str, seed: int, config, out: str, key: str,
               split: str = "test"):
    self.row, self.fraction_text, self.seed, self.split = row, fraction_text, seed, split
    self.config = config
    folder = os.path.join(out, "runs", f"{row}-{key}", fraction_text, f"seed{seed}")
    # The evaluation of each split has its own folder: a run scored on validation is never
    # reused as its test figure (the row key covers the training settings, not the split).
    self.train_dir = os.path.join(folder, "train")
    self.eval_dir = os.path.join(folder, f"eval-{split}")
    self.timing_path = os.path.join(folder, "timing.json")
    self.plan = None
    self.report = None
    self.timing = {}      # {train_seconds, evaluation_seconds}: when it was trained
    self.reused = False

  @property
  def name(self) -> str:
    return f"{self.row} fraction {self.fraction_text} seed {self.seed}"

  def _steps(self) -> list:
    from simclr_jax import checkpointing
    return checkpointing.complete_steps(self.train_dir) if os.path.isdir(
        self.train_dir) else []

  def trained(self) -> bool:
    """Its training reached the final step (a complete checkpoint of it)."""
    steps = self._steps()
    return bool(steps) and steps[-1] >= self.plan.total_steps

  def finished(self) -> bool:
    """Trained, and an evaluation report of it (or of the best step) on its split."""
    steps = self._steps()
    report_path = os.path.join(self.eval_dir, "report.json")
    if not steps or steps[-1] < self.plan.total_steps or not os.path.isfile(report_path):
      return False
    try:
      with open(report_path) as file:
        report = json.load(file)
    except (OSError, ValueError):
      return False
    if report.get("checkpoint_step") not in steps or report.get("split") != self.split:
      return False
    self.report, self.reused = report, True
    try:
      with open(self.timing_path) as file:
        self.timing = json.load(file)
    except (OSError, ValueError):
      self.timing = {}
    return True


def _resolve_simclr(workdir: str) -> str:
  """--simclr_workdir pinned to WORKDIR@STEP (its newest complete checkpoint now)."""
  from simclr_jax import checkpointing
  from simclr_jax.training import init_from
  path, step = init_from.parse(workdir)
  if step is not None or not os.path.isdir(path):
    return workdir   # checked with the runs' settings
  steps = checkpointing.complete_steps(path)
  return f"{path}@{steps[-1]}" if steps else workdir


def plan_runs(args) -> tuple:
  """Every run, checked (settings, data, init sources) before any trains.

  Returns:
    (runs, protocol): the Run objects in training order and the protocol record.

  Raises:
    ValueError / RunError (exit 2): bad input, one line.
  """
  from simclr_jax import objectives
  from simclr_jax.training import init_from
  from simclr_jax.training import settings
  fractions = parse_fractions(args.fractions)
  seeds = parse_seeds(args.seeds)
  rows = parse_rows(getattr(args, "rows", None), bool(args.imagenet_weights))
  row_flags = parse_row_flags(getattr(args, "row_flags", []), rows)

  def base_config(extra: str = ""):
    base = load_config(args.config, " ".join(filter(None, [args.train_flags, extra])))
    base = _set(base, dataset=args.dataset, data_dir=args.data_dir)
    if base.objective != "supervised":
      raise ValueError(f"--config={args.config}: objective={base.objective!r}; the protocol "
                       f"fine-tunes: use a config with objective 'supervised' (e.g. "
                       f"experiments/configs/thumbs_finetune.py).")
    if args.label_mode is not None:
      base = _set(base, **{"supervised.label_mode": args.label_mode})
    return base

  base = base_config()
  simclr = _resolve_simclr(args.simclr_workdir)
  frozen_source = getattr(args, "frozen_simclr_workdir", None)
  if frozen_source and "simclr_frozen" not in rows:
    raise ValueError(f"--frozen_simclr_workdir={frozen_source}: row simclr_frozen is not run "
                     f"(--rows {','.join(rows)}).")
  frozen_simclr = _resolve_simclr(frozen_source) if frozen_source else simclr
  inits = {"scratch": ("", False), "simclr_finetune": (simclr, False),
           "simclr_frozen": (frozen_simclr, True)}
  if args.imagenet_weights:
    inits["imagenet_finetune"] = (args.imagenet_weights, False)
  inits = {row: inits[row] for row in rows}
  runs, keys = [], {}
  for row, (source, frozen) in inits.items():
    fields = {"init_from": source, "supervised.freeze_encoder": frozen}
    if frozen:
      fields["supervised.encoder_lr_multiplier"] = 1.0   # nothing to scale
    row_base = base_config(row_flags[row]) if row_flags.get(row) else base
    chosen_on = str(row_base.online_eval.eval_split)
    if objectives.selects_by_validation(row_base) and chosen_on == args.split:
      raise ValueError(f"--split={args.split}: the {row} runs choose their checkpoint on that "
                       f"split (config.online_eval.eval_split={chosen_on!r}, supervised."
                       f"select_by_validation={row_base.supervised.select_by_validation}), so "
                       f"its figures would be optimistic; score another split, or pass "
                       f"--train_flags=\"--config.supervised.select_by_validation=0\".")
    row_config = init_from.resolve(_set(row_base, **fields))   # the source is read once here
    keys[row] = _key(row_config)
    for fraction_text, fraction in fractions:
      for seed in seeds:
        config = _set(row_config, seed=seed, **{"supervised.label_fraction": fraction,
                                                 "supervised.subset_seed": seed})
        run = Run(row, fraction_text, seed, config, args.out, keys[row], args.split)
        run.plan = settings.check_run(config, run.train_dir)
        runs.append(run)
  protocol = {"dataset": args.dataset, "split": args.split,
              "label_mode": str(base.supervised.label_mode or ""),
              "config": os.path.abspath(args.config), "train_flags": args.train_flags,
              "simclr_workdir": simclr, "imagenet_weights": args.imagenet_weights,
              "row_keys": keys}
  if frozen_simclr != simclr:   # only when given, like row_flags
    protocol["frozen_simclr_workdir"] = frozen_simclr
  if row_flags:   # only when given: reports written without per-row flags stay comparable
    protocol["row_flags"] = row_flags
  return runs, protocol


def check_out(out: str, protocol: dict, overwrite: bool) -> None:
  """Refuses an OUT holding another protocol's report (or files it did not write)."""
  found = [name for name in OUT_FILES if os.path.isfile(os.path.join(out, name))]
  if not found or overwrite:
    return
  try:
    with open(os.path.join(out, "report.json")) as file:
      earlier = json.load(file)
  except (OSError, ValueError):
    earlier = {}
  if earlier.get("protocol_name") == PROTOCOL:
    same = {key: earlier.get("protocol", {}).get(key) for key in protocol}
    if same == json.loads(json.dumps(protocol)):
      return
    differing = [key for key in protocol if same[key] != json.loads(json.dumps(protocol[key]))]
    raise ValueError(f"--out={out} holds a label-efficiency report of another protocol "
                     f"({', '.join(differing)} differ); pass --overwrite to replace the "
                     f"report (its runs stay in {out}/runs) or choose another --out.")
  raise ValueError(f"--out={out} holds {', '.join(found)} not written by this protocol; pass "
                   f"--overwrite to replace them or choose another --out.")


def train_and_evaluate(run: Run, split: str) -> dict:
  """Trains (or resumes) the run, then scores it on `split` with the classifier; records
  the times in the run's timing.json."""
  from simclr_jax.evaluation import encoders
  from simclr_jax.evaluation import offline
  from simclr_jax.evaluation import report as report_lib
  from simclr_jax.training import loop
  start = time.perf_counter()
  earlier = {}
  if run.trained():   # scored on another split before: evaluate again, keep its training time
    try:
      with open(run.timing_path) as file:
        earlier = json.load(file)
    except (OSError, ValueError):
      earlier = {}
  else:
    loop.train_and_evaluate(run.config, run.train_dir)
  trained = time.perf_counter()
  config = run.plan.config
  label_mode = str(config.supervised.label_mode or "") or None
  plan = offline.plan(offline.Data(dataset=config.dataset, data_dir=str(config.data_dir),
                                   split=split, train_split=config.train_split,
                                   label_mode=label_mode),
                      {"classifier": {}})
  step = "best" if config.supervised.select_by_validation > 0 else None
  encoder = encoders.load_encoder(workdir=run.train_dir, step=step)
  report = offline.evaluate_encoder(encoder, plan, offline.Output(
      run.eval_dir, overwrite=True, plots=False, save_features=False))
  run.timing = {"train_seconds": earlier.get("train_seconds", trained - start),
                "evaluation_seconds": time.perf_counter() - trained}
  report_lib.write_json(run.timing_path, run.timing)
  return report


def _drop_compiled() -> None:
  """Frees the process's compiled XLA executables between runs.

  Each run compiles its own train and evaluation steps, and JAX keeps every executable of
  the process alive. After ~58 runs in one process (experiments.finetune_search) XLA's CPU
  compiler failed with "LLVM compilation error: Cannot allocate memory" and the process died
  with 20 GB free (likely the process's memory-mapping limit, vm.max_map_count 65530; not
  confirmed). With the executables dropped after each run, the process kept ~2,000
  mappings; the next run reloads its steps from the persistent compilation cache (when that
  cache is on; else it compiles them again).
  """
  import jax
  jax.clear_caches()


def _mean(values: list):
  return statistics.fmean(values) if values else None


def _whole(value):
  return int(value) if value is not None and float(value).is_integer() else value


def summarise(runs: list, protocol: dict) -> dict:
  """The report: rows -> fractions -> mean, sd, interval, subset sizes and the seeds."""
  rows = {}
  for run in runs:
    report = run.report or {}
    auroc = report.get(METRIC)
    subset = run.plan.config.supervised.subset
    entry = {"seed": run.seed, "auroc": auroc if _finite(auroc) else None,
             "auroc_ci95": report.get(f"{METRIC}_ci95"),
             "n_images": int(subset.num_images), "n_patients": int(subset.num_patients),
             "subset_sha256": subset.ids_sha256, "checkpoint_step": report.get(
                 "checkpoint_step"), "run": run.train_dir,
             "train_seconds": run.timing.get("train_seconds"),
             "evaluation_seconds": run.timing.get("evaluation_seconds"),
             "reused": run.reused}
    rows.setdefault(run.row, {}).setdefault(run.fraction_text, []).append(entry)
  table = {}
  for row, fractions in rows.items():
    table[row] = {}
    for fraction_text, seeds in fractions.items():
      values = [seed["auroc"] for seed in seeds if seed["auroc"] is not None]
      bounds = [seed["auroc_ci95"] for seed in seeds
                if isinstance(seed["auroc_ci95"], list) and None not in seed["auroc_ci95"]]
      complete = len(values) == len(seeds)
      table[row][fraction_text] = {
          "auroc_mean": _mean(values) if complete else None,
          "auroc_sd": statistics.stdev(values) if complete and len(values) > 1 else None,
          "auroc_ci95": ([_mean([b[0] for b in bounds]), _mean([b[1] for b in bounds])]
                         if complete and len(bounds) == len(seeds) else None),
          "n_images": _whole(_mean([seed["n_images"] for seed in seeds])),
          "n_patients": _whole(_mean([seed["n_patients"] for seed in seeds])),
          "seeds": seeds}
  return {"protocol_name": PROTOCOL, "rows": table, "protocol": protocol,
          "metric": METRIC, "definitions": DEFINITIONS}


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def _cell(entry: dict) -> str:
  if entry.get("auroc_mean") is None:
    return "n/a"
  text = f"{entry['auroc_mean']:.3f}"
  if entry.get("auroc_sd") is not None:
    text += f" ± {entry['auroc_sd']:.3f}"
  if entry.get("auroc_ci95"):
    text += f" [{entry['auroc_ci95'][0]:.3f}, {entry['auroc_ci95'][1]:.3f}]"
  return text


def markdown(report: dict, fractions: list) -> str:
  protocol = report["protocol"]
  seeds = sorted({seed["seed"] for row in report["rows"].values()
                  for entry in row.values() for seed in entry["seeds"]})
  lines = ["# Label efficiency: fine-tuned classifier AUROC against the label fraction", "",
           f"`{protocol['dataset']}`, scored on split `{protocol['split']}`; label mode "
           f"`{protocol['label_mode'] or 'the dataset’s own'}`; config `{protocol['config']}`"
           + (f" with `{protocol['train_flags']}`" if protocol["train_flags"] else "")
           + f"; seeds {', '.join(map(str, seeds))}; SimCLR encoder "
           f"`{protocol['simclr_workdir']}`"
           + (f" (frozen-encoder row: `{protocol['frozen_simclr_workdir']}`)"
              if protocol.get("frozen_simclr_workdir") else "")
           + (f"; ImageNet weights `{protocol['imagenet_weights']}`"
              if protocol.get("imagenet_weights") else "")
           + "".join(f"; {ROW_TITLES[row]} also `{flags}`"
                     for row, flags in (protocol.get("row_flags") or {}).items()) + ".", "",
           "| row | " + " | ".join(f"label fraction {text}" for text in fractions) + " |",
           "|---|" + "---|" * len(fractions)]
  for row, entries in report["rows"].items():
    lines.append(f"| {ROW_TITLES[row]} | "
                 + " | ".join(_cell(entries.get(text, {})) for text in fractions) + " |")
  first = next(iter(report["rows"].values()))
  lines.append("| training subset (images / patients) | " + " | ".join(
      f"{first[text]['n_images']} / {first[text]['n_patients']}" for text in fractions) + " |")
  lines += ["", "mean ± sd over the seeds [95 % interval]; every row of a column trains on "
            "the same patient-wise subsets (one per seed)."]
  lines += ["", "## Definitions", ""] + [f"- **{name}**: {text}"
                                        for name, text in report["definitions"].items()]
  lines += ["", "## Runs", "", "| row | fraction | seed | AUROC [95 %] | step | images | "
            "patients | training s | evaluation s |", "|---|---|---|---|---|---|---|---|---|"]
  for row, entries in report["rows"].items():
    for text, entry in entries.items():
      for seed in entry["seeds"]:
        interval = seed["auroc_ci95"] or [None, None]
        auroc = "n/a" if seed["auroc"] is None else f"{seed['auroc']:.3f}"
        if interval[0] is not None:
          auroc += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
        seconds = [("n/a" if seed[name] is None else f"{seed[name]:.1f}")
                   for name in ("train_seconds", "evaluation_seconds")]
        lines.append(f"| {row} | {text} | {seed['seed']} | {auroc} | "
                     f"{seed['checkpoint_step']} | {seed['n_images']} | "
                     f"{seed['n_patients']} | {' | '.join(seconds)} |")
  return "\n".join(lines) + "\n"


def plot(report: dict, fractions: list, path: str) -> None:
  """AUROC against the fraction (log x), one line per row: the band is the mean 95 %
  interval, the error bars the sd over seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.NullLocator below)
  figure, axes = plt.subplots(figsize=(6.4, 4.4))
  colours = plt.get_cmap("tab10")
  for index, (row, entries) in enumerate(report["rows"].items()):
    points = [(value, entries[text]) for text, value in fractions
              if entries.get(text, {}).get("auroc_mean") is not None]
    if not points:
      continue
    x = [value for value, _ in points]
    mean = [entry["auroc_mean"] for _, entry in points]
    sd = [entry["auroc_sd"] or 0.0 for _, entry in points]
    colour = colours(index)
    axes.errorbar(x, mean, yerr=sd, marker="o", capsize=3, color=colour,
                  label=ROW_TITLES[row])
    banded = [(value, entry["auroc_ci95"]) for value, entry in points if entry["auroc_ci95"]]
    if banded:
      axes.fill_between([value for value, _ in banded], [ci[0] for _, ci in banded],
                        [ci[1] for _, ci in banded], color=colour, alpha=0.15, linewidth=0)
  axes.set_xscale("log")
  axes.set_xticks([value for _, value in fractions])
  axes.set_xticklabels([text for text, _ in fractions])
  axes.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  axes.set_xlabel("label fraction (patient-wise share of the train split)")
  axes.set_ylabel(f"test macro AUROC ({report['protocol']['split']})")
  axes.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
  axes.legend(fontsize=8)
  protocol = report["protocol"]
  seeds = len(next(iter(next(iter(report["rows"].values())).values()))["seeds"])
  axes.set_title("Label efficiency", fontsize=10)
  figure.text(0.5, 0.005, f"{protocol['dataset']} | label mode "
              f"{protocol['label_mode'] or 'own'} | {seeds} seed(s): line = mean, bars = sd, "
              f"band = mean 95 % patient-bootstrap interval | SimCLR "
              f"{protocol['simclr_workdir']}"
              + (f" (frozen: {protocol['frozen_simclr_workdir']})"
                 if protocol.get("frozen_simclr_workdir") else ""),
              ha="center", va="bottom", fontsize=6, wrap=True)
  figure.tight_layout(rect=(0, 0.07, 1, 1))
  figure.savefig(path, dpi=110)
  plt.close(figure)


def _write_whole(path: str, write) -> None:
  """write(temporary path beside `path`), then one rename: no half-written file."""
  root, extension = os.path.splitext(path)
  temporary = f"{root}.tmp{os.getpid()}{extension}"
  try:
    write(temporary)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def _write_text(text: str):
  def write(path: str) -> None:
    with open(path, "w") as file:
      file.write(text)
  return write


def write_outputs(out: str, report: dict, fractions: list) -> None:
  """OUT/report.json, report.md and label_efficiency.png, each written whole."""
  from simclr_jax.evaluation import report as report_lib
  os.makedirs(out, exist_ok=True)
  _write_whole(os.path.join(out, "report.json"),
               lambda path: report_lib.write_json(path, report))
  _write_whole(os.path.join(out, "report.md"),
               _write_text(markdown(report, [text for text, _ in fractions])))
  _write_whole(os.path.join(out, "label_efficiency.png"),
               lambda path: plot(report, fractions, path))


def main(argv=None) -> dict:
  """Runs the protocol; returns the report.

  Raises:
    ValueError / FileNotFoundError / RunError: bad input (exit 2 in `cli`).
  """
  args = _parser().parse_args(argv)
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  start = time.perf_counter()
  runs, protocol = plan_runs(args)
  check_out(args.out, protocol, args.overwrite)
  total = len(runs)
  for index, run in enumerate(runs, 1):
    if run.finished():
      print(f"[{index}/{total}] {run.name}: reused (finished: step "
            f"{run.report.get('checkpoint_step')}, {args.split} AUROC "
            f"{_format(run.report.get(METRIC))})", flush=True)
      continue
    print(f"[{index}/{total}] {run.name}: training {run.plan.total_steps} steps on "
          f"{run.plan.config.supervised.subset.num_images} images -> {run.train_dir}",
          flush=True)
    run.report = train_and_evaluate(run, args.split)
    _drop_compiled()
    interval = run.report.get(f"{METRIC}_ci95") or [None, None]
    print(f"[{index}/{total}] {run.name}: done in {run.timing['train_seconds']:.1f} s "
          f"training + {run.timing['evaluation_seconds']:.1f} s evaluation; {args.split} AUROC "
          f"{_format(run.report.get(METRIC))} [{_format(interval[0])}, "
          f"{_format(interval[1])}] (step {run.report.get('checkpoint_step')})", flush=True)
  fractions = parse_fractions(args.fractions)
  report = summarise(runs, protocol)
  report["total_seconds"] = time.perf_counter() - start
  write_outputs(args.out, report, fractions)
  print(f"wrote {args.out}/report.json, report.md, label_efficiency.png "
        f"({len(runs)} runs, {report['total_seconds']:.0f} s)", flush=True)
  return report


def _format(value) -> str:
  return f"{value:.4f}" if _finite(value) else "n/a"


def cli(argv=None) -> int:
  """`main` with bad input as one line on stderr and exit status 2 (130 on Ctrl-C)."""
  return errors.run_command(main, argv, "interrupted: finished runs are kept and reused by "
                                        "the next start.")


if __name__ == "__main__":
  sys.exit(cli())
