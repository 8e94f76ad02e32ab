#!/usr/bin/env bash
# The nih_thumbs experiment done honestly, end to end (patient-wise splits, train 595 /
# validation 202 / test 203 images):
#   1. experiments/thumbs_recipe_grid.sh  SimCLR recipes compared on the VALIDATION split
#                                         (GRID_SEEDS, default "0 1"); the rule picks one
#                                         (OUT/grid/choice.md); the test split is not read
#   2. experiments/thumbs_table.sh        the chosen recipe only, SEEDS (default "0 1 2"),
#                                         SimCLR / supervised / random init on the test split
#                                         (the grid's runs of the chosen recipe are reused)
#   3. experiments.finetune_search        per row (scratch, SimCLR fine-tuned, SimCLR frozen)
#                                         the learning rate, encoder multiplier, augmentation
#                                         and pretraining (the grid's other candidates'
#                                         first-seed runs) at 1 % and 10 % labels, on the
#                                         VALIDATION split (OUT/finetune_search/choice.md)
#   4. experiments.label_efficiency       fine-tuning at label fractions 0.01, 0.1, 1.0
#                                         (seeds 0 1 2) with each row's chosen settings and
#                                         pretraining (a grid candidate's first-seed run),
#                                         experiments/configs/thumbs_finetune.py (checkpoint
#                                         chosen on validation), scored on test, once
#
#   OUT=runs/thumbs_protocol experiments/thumbs_protocol.sh
#   CANDIDATES=$'base|\nepochs100|--config.num_epochs=100' OUT=... experiments/thumbs_protocol.sh
#
# Settings (environment): OUT (runs/thumbs_protocol), DATA_DIR (OUT/data), CANDIDATES and
# CHOOSE_BY / TIE (thumbs_recipe_grid.sh), GRID_SEEDS ("0 1"), SEEDS ("0 1 2"), FRACTIONS
# (0.01,0.1,1.0), THUMBS, CSV, PYTHON (as thumbs_table.sh).
set -euo pipefail
OUT=$(realpath -m -- "${OUT:-runs/thumbs_protocol}")
DATA_DIR=$(realpath -m -- "${DATA_DIR:-$OUT/data}")
for name in THUMBS CSV; do
  if [[ -n "${!name:-}" ]]; then printf -v "$name" '%s' "$(realpath -m -- "${!name}")"; export "${name?}"; fi
done
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON DATA_DIR
start=$SECONDS
SEEDS_TEST=${SEEDS:-0 1 2}

echo "=== 1. recipe chosen on the validation split -> $OUT/grid"
OUT=$OUT/grid SEEDS="${GRID_SEEDS:-0 1}" experiments/thumbs_recipe_grid.sh
read -r CHOSEN < <("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["chosen"])' "$OUT/grid/choice.json")
FLAGS=$(cat "$OUT/grid/$CHOSEN.flags")

echo "=== 2. the chosen recipe ($CHOSEN: ${FLAGS:-thumbs.py as is}) on the test split, seeds $SEEDS_TEST"
OUT=$OUT/grid/$CHOSEN SEEDS="$SEEDS_TEST" TRAIN_FLAGS="$FLAGS" experiments/thumbs_table.sh

echo "=== 3. fine-tuning settings chosen on the validation split -> $OUT/finetune_search"
# The grid's other candidates (this run's, from its choice.json), each its first seed's run.
read -r SEED0 _ <<< "${GRID_SEEDS:-0 1}"
others=()
while read -r name; do
  others+=(--pretraining "$name=$OUT/grid/$name/seed$SEED0/simclr")
done < <("$PYTHON" -c 'import json,sys; c=json.load(open(sys.argv[1])); print("\n".join(n for n in c["candidates_in_order"] if n != c["chosen"]))' "$OUT/grid/choice.json")
"$PYTHON" -m experiments.finetune_search --dataset nih_chest_xray14/thumbs64 \
    --data_dir "$DATA_DIR" --simclr_workdir "$OUT/grid/$CHOSEN/seed$SEED0/simclr" \
    "${others[@]}" --config experiments/configs/thumbs_finetune.py --out "$OUT/finetune_search" \
    | tail -n 4
CHOSEN_TEXT=$("$PYTHON" -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["label_efficiency_args"]))' "$OUT/finetune_search/choice.json")
mapfile -t CHOSEN_ARGS <<< "$CHOSEN_TEXT"
(( ${#CHOSEN_ARGS[@]} > 1 )) || { echo "error: $OUT/finetune_search/choice.json holds no label_efficiency_args" >&2; exit 1; }

echo "=== 4. label efficiency with the chosen settings -> $OUT/label_efficiency"
"$PYTHON" -m experiments.label_efficiency --dataset nih_chest_xray14/thumbs64 \
    --data_dir "$DATA_DIR" "${CHOSEN_ARGS[@]}" \
    --fractions "${FRACTIONS:-0.01,0.1,1.0}" --seeds "$(tr ' ' ',' <<< "$SEEDS_TEST")" \
    --out "$OUT/label_efficiency" --config experiments/configs/thumbs_finetune.py
echo "thumbs_protocol: done in $((SECONDS - start)) s; $OUT/grid/choice.md, $OUT/grid/$CHOSEN/table.md, $OUT/finetune_search/choice.md, $OUT/label_efficiency"
