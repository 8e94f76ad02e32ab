#!/usr/bin/env bash
# Choosing the thumbs SimCLR recipe honestly: a small grid of pretraining settings, each
# compared on the VALIDATION split (probe / kNN fitted on train), the test split never read.
#
#   DATA_DIR=runs/exp/data OUT=runs/exp/thumbs_grid experiments/thumbs_recipe_grid.sh
#   CANDIDATES=$'base|\nt02|--config.loss.temperature=0.2' SEEDS="0 1" experiments/thumbs_recipe_grid.sh
#
# Per candidate NAME (flags F on top of experiments/configs/thumbs.py) and seed S:
#   1. SimCLR pretraining   -> OUT/NAME/seed<S>/simclr            (thumbs_table.sh's layout, so
#                              `OUT=OUT/NAME experiments/thumbs_table.sh` reuses it afterwards)
#   2. experiments.compare  on the validation split, label mode "binary:No Finding", encoder
#                              features (the first candidate also the fair random init, seeded
#                              as its run) -> OUT/NAME/seed<S>/compare_validation
# then experiments.seed_table per candidate (OUT/NAME/table_validation.md) and the choice:
# the candidate with the highest mean over the seeds of CHOOSE_BY (default linear_auroc_macro:
# the validation linear-probe AUROC of encoder features) of the SimCLR row; a candidate within
# TIE (0.005) of the best counts as tied, and among tied ones the first listed (the cheaper /
# current one: list them so) wins. Written to OUT/choice.json and OUT/choice.md, the rule
# included. Fix CANDIDATES, CHOOSE_BY and TIE before looking at any number.
# Settings (environment): CANDIDATES (lines NAME|FLAGS; default: the thumbs.py recipe, 50
# epochs, CLAHE off, temperature 0.2), SEEDS ("0 1"), CHOOSE_BY, TIE, OUT
# (runs/thumbs_recipe_grid), DATA_DIR (OUT/data), THUMBS, CSV, PYTHON as thumbs_table.sh.
set -euo pipefail
OUT_DEFAULT=runs/thumbs_recipe_grid
SEEDS=${SEEDS:-0 1}
CHOOSE_BY=${CHOOSE_BY:-linear_auroc_macro}
TIE=${TIE:-0.005}
# The default list: thumbs.py as it is (100 epochs since the 2026-12-07 choice, which compared
# 50 and 100 epochs), then the other settings that choice pre-registered but did not run.
CANDIDATES=${CANDIDATES:-"base|
epochs50|--config.num_epochs=50
noclahe|--config.augment.clahe_prob=0
t02|--config.loss.temperature=0.2"}
# shellcheck source=experiments/thumbs_common.sh
source "$(dirname "$0")/thumbs_common.sh"   # THUMBS, CSV, OUT, SEEDS, PYTHON; prepares DATA_DIR

names=()
first=1
while IFS= read -r line; do
  [[ -n "${line//[[:space:]]/}" ]] || continue
  NAME=${line%%|*}
  FLAGS=${line#*|}
  [[ "$NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "error: CANDIDATES: bad name '$NAME' (line '$line')" >&2; exit 2; }
  names+=("$NAME")
  printf '%s\n' "$FLAGS" > "$OUT/$NAME.flags"
  for SEED in $SEEDS; do
    RUN=$OUT/$NAME/seed$SEED
    mkdir -p "$RUN"
    # shellcheck disable=SC2206  # FLAGS: whitespace-separated flags, no quoting
    TRAIN=(--config experiments/configs/thumbs.py --config.data_dir="$DATA_DIR"
           --config.seed="$SEED" --config.progress_bar=False $FLAGS)
    t0=$SECONDS
    echo "== $NAME seed $SEED: SimCLR pretraining ($FLAGS) -> $RUN/simclr"
    "$PYTHON" -m simclr_jax.train "${TRAIN[@]}" --workdir "$RUN/simclr" | tail -n 1
    echo "   trained in $((SECONDS - t0)) s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    extra=()
    if (( first )); then extra=(--random_init); fi
    t0=$SECONDS
    "$PYTHON" -m experiments.compare --simclr_workdir "$RUN/simclr" "${extra[@]}" \
        --dataset "$DATASET" --data_dir "$DATA_DIR" --split validation --train_split train \
        --label_mode "binary:No Finding" --label_fractions 0.1,1.0 --plots 0 \
        --out "$RUN/compare_validation" --overwrite > /dev/null \
        2> "$RUN/compare_validation.log" || { cat "$RUN/compare_validation.log" >&2; exit 1; }
    echo "   compared on validation in $((SECONDS - t0)) s:"
    grep '^| SimCLR\|^| Random' "$RUN/compare_validation/report.md" | sed 's/^/   /'
  done
  "$PYTHON" -m experiments.seed_table "$OUT/$NAME"/seed*/compare_validation/report.json \
      --out "$OUT/$NAME/table_validation.md" --overwrite > /dev/null
  first=0
done <<< "$CANDIDATES"

echo "== choice on the validation split (highest mean $CHOOSE_BY, ties within $TIE -> first listed)"
"$PYTHON" - "$OUT" "$CHOOSE_BY" "$TIE" "$SEEDS" "${names[@]}" <<'EOF'
import json, os, statistics, sys
out, key, tie, seeds, names = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].split(), sys.argv[5:]
def value(report, key):
  return report.get(key)
rows, random_init = {}, {}
for name in names:
  flags = open(os.path.join(out, f"{name}.flags")).read().strip()
  per_seed = {}
  for seed in seeds:
    with open(os.path.join(out, name, f"seed{seed}", "compare_validation", "report.json")) as f:
      comparison = json.load(f)
    simclr = comparison["simclr"]
    per_seed[seed] = {k: simclr.get(k) for k in (key, f"{key}_ci95", "linear_auroc_macro",
                                                   "linear_auroc_macro_ci95", "knn_auroc_macro",
                                                   "knn_auroc_macro_ci95", "patient_shortcut",
                                                   "patient_shortcut_chance")}
    if "random_init" in comparison:
      random_init[seed] = {k: comparison["random_init"].get(k) for k in (
          "linear_auroc_macro", "linear_auroc_macro_ci95", "knn_auroc_macro")}
  values = [per_seed[s][key] for s in seeds]
  rows[name] = {"flags": flags, "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else None,
                "knn_auroc_mean": statistics.fmean(per_seed[s]["knn_auroc_macro"] for s in seeds),
                "per_seed": per_seed}
best = max(row["mean"] for row in rows.values())
chosen = next(name for name in names if rows[name]["mean"] >= best - tie)
record = {"split": "validation", "criterion": f"highest mean over seeds {seeds} of the SimCLR "
          f"row's {key} (encoder features, label mode 'binary:No Finding', probe fitted on "
          f"train, scored on validation); candidates within {tie} of the best count as tied "
          f"and the first listed of them wins (fixed before looking)",
          "candidates_in_order": names, "chosen": chosen, "chosen_flags": rows[chosen]["flags"],
          "rows": rows, "random_init": random_init}
with open(os.path.join(out, "choice.json"), "w") as f:
  json.dump(record, f, indent=1)
lines = [f"# thumbs SimCLR recipe, chosen on the validation split", "", record["criterion"] + ".",
         "", f"| candidate | flags on thumbs.py | {key} mean ± sd | per seed [95 % interval] | kNN AUROC mean |",
         "|---|---|---|---|---|"]
for name, row in rows.items():
  cells = "; ".join(f"s{s} {row['per_seed'][s][key]:.3f} [{row['per_seed'][s][key + '_ci95'][0]:.3f}, "
                    f"{row['per_seed'][s][key + '_ci95'][1]:.3f}]" for s in seeds)
  sd = f" ± {row['sd']:.3f}" if row["sd"] is not None else ""
  mark = " **(chosen)**" if name == chosen else ""
  lines.append(f"| {name}{mark} | `{row['flags'] or '(none)'}` | {row['mean']:.3f}{sd} | {cells} | {row['knn_auroc_mean']:.3f} |")
if random_init:
  vals = [random_init[s]["linear_auroc_macro"] for s in seeds if s in random_init]
  lines += ["", "random init (fair, torchvision-style), same seeds: linear AUROC " + "; ".join(
      f"s{s} {random_init[s]['linear_auroc_macro']:.3f}" for s in seeds if s in random_init)
      + f" (mean {statistics.fmean(vals):.3f})"]
with open(os.path.join(out, "choice.md"), "w") as f:
  f.write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "thumbs_recipe_grid: done in $((SECONDS - start)) s; $OUT/choice.json, $OUT/choice.md"
