#!/usr/bin/env bash
# Issue 19's measurement: SimCLR with same-patient positives (config.pairs.same_patient_prob
# p in PROBS) x same-patient negatives masked (config.loss.mask_same_patient in MASKS) on the
# real 64 px thumbnails of ../shared/data/nih_thumbs, the thumbs recipe
# (experiments/configs/thumbs.py), over SEEDS; a row per setting with the thumbs table's columns,
# the linear AUROC at 10 % and 100 % of the train labels and the patient shortcut.
#
#   experiments/patient_pairs_table.sh            # 6 settings x 3 seeds: ~50-60 min on 2 quiet cores
#   OUT=runs/pairs_smoke SEEDS=0 TRAIN_FLAGS="--config.num_train_steps=3 --config.optimizer.warmup_steps=0" \
#       experiments/patient_pairs_table.sh        # a smoke run of the whole path
#
# Honest protocol: settings are compared on the VALIDATION split (probe, kNN and label
# fractions fitted on train), the setting with the best mean CHOOSE_BY over the seeds is chosen
# and recorded (OUT/chosen.json), and only then is every setting evaluated on the TEST split,
# once, the chosen row marked. Steps (each a CLI a user would type; a re-run reuses the prepared
# data and finished trainings, and evaluates again):
#   1. prepare   nih_chest_xray14/thumbs64 from THUMBS (+ the official label CSV), as
#                experiments/thumbs_table.sh does
#   2. train     per setting and seed: thumbs.py + --config.pairs.same_patient_prob=P
#                --config.loss.mask_same_patient=M -> OUT/p<P>_mask<M>/seed<S>/simclr
#   3. compare   on the validation split (label mode "binary:No Finding", label fractions 0.1
#                and 1.0; the first setting also evaluates the random init, seeded as its run)
#                -> .../compare_validation
#   4. experiments.patient_pairs_table --split validation -> OUT/table_validation.md, OUT/chosen.json
#   5. compare   on the test split, every setting -> .../compare_test; then (unless
#                FINETUNE_FRACTIONS is empty) experiments.label_efficiency from each setting's
#                run at those label fractions (patient-wise subsets, its seed; fine-tuned and
#                frozen encoder, and from scratch in the first setting) with
#                experiments/configs/thumbs_finetune.py, scored on test -> .../finetune_test;
#      experiments.patient_pairs_table --split test -> OUT/table_test.md
# Settings (environment): THUMBS (../shared/data/nih_thumbs from the repository root), CSV
# (THUMBS/../nih_sample/Data_Entry_2017_v2020.csv.gz), OUT (runs/patient_pairs_table), SEEDS
# ("0 1 2"), PROBS ("0 0.5 1"), MASKS ("False True"), CHOOSE_BY (fraction:0.1 = linear AUROC at
# 10 % labels; any experiments.seed_table column key), FINETUNE_FRACTIONS ("0.1"; "" skips
# the fine-tuning), FINETUNE_FLAGS (extra label_efficiency arguments, whitespace-separated, no
# quoting; default: the frozen row's learning rate chosen on validation by
# experiments/finetune_search.py, see experiments/configs/thumbs_finetune.py), TRAIN_FLAGS (extra --config.KEY=VALUE flags
# for every training; use a new OUT for each setting), PYTHON (.venv/bin/python if present).
set -euo pipefail
PROBS=${PROBS:-0 0.5 1}
MASKS=${MASKS:-False True}
CHOOSE_BY=${CHOOSE_BY:-fraction:0.1}
for name in PROBS MASKS; do
  [[ -n "${!name//[[:space:]]/}" ]] || { echo "error: $name='${!name}': give one or more values" >&2; exit 2; }
done
for mask in $MASKS; do
  [[ "$mask" == True || "$mask" == False ]] || { echo "error: MASKS='$MASKS': each True or False" >&2; exit 2; }
done
OUT_DEFAULT=runs/patient_pairs_table
# shellcheck source=experiments/thumbs_common.sh
source "$(dirname "$0")/thumbs_common.sh"   # THUMBS, CSV, OUT, SEEDS, PYTHON; prepares DATA_DIR

settings=()
for P in $PROBS; do for M in $MASKS; do settings+=("$P:$M"); done; done

compare() {  # compare SETTING_DIR SEED SPLIT [--random_init] [flags]
  local run=$1/seed$2 split=$3
  shift 3
  "$PYTHON" -m experiments.compare --simclr_workdir "$run/simclr" "$@" \
      --dataset "$DATASET" --data_dir "$DATA_DIR" --split "$split" --train_split train \
      --label_mode "binary:No Finding" --label_fractions 0.1,1.0 --out "$run/compare_$split" \
      --overwrite > /dev/null 2> "$run/compare_$split.log" \
      || { cat "$run/compare_$split.log" >&2; exit 1; }
}

first=1
for setting in "${settings[@]}"; do
  P=${setting%%:*} M=${setting##*:}
  DIR=$OUT/p${P}_mask${M}
  for SEED in $SEEDS; do
    mkdir -p "$DIR/seed$SEED"
    # shellcheck disable=SC2206  # TRAIN_FLAGS: whitespace-separated flags, no quoting
    TRAIN=(--config experiments/configs/thumbs.py --config.data_dir="$DATA_DIR"
           --config.seed="$SEED" --config.progress_bar=False
           --config.pairs.same_patient_prob="$P" --config.loss.mask_same_patient="$M"
           ${TRAIN_FLAGS:-})
    echo "== p=$P mask=$M seed $SEED: SimCLR pretraining -> $DIR/seed$SEED/simclr"
    "$PYTHON" -m simclr_jax.train "${TRAIN[@]}" --workdir "$DIR/seed$SEED/simclr" | tail -n 1
    echo "== p=$P mask=$M seed $SEED: compare on the validation split"
    if (( first )); then
      compare "$DIR" "$SEED" validation --random_init --plots 0
    else
      compare "$DIR" "$SEED" validation --plots 0
    fi
  done
  first=0
done

echo "== choose on the validation split (mean $CHOOSE_BY) -> $OUT/table_validation.md, $OUT/chosen.json"
"$PYTHON" -m experiments.patient_pairs_table "$OUT" --split validation --choose_by "$CHOOSE_BY" \
    --out "$OUT/table_validation.md" | head -n 1

finetune() {  # finetune SETTING_DIR SEED ROWS: label efficiency from the setting's run, on test
  local run=$1/seed$2
  # shellcheck disable=SC2086  # FINETUNE_FLAGS: whitespace-separated arguments
  "$PYTHON" -m experiments.label_efficiency --dataset "$DATASET" --data_dir "$DATA_DIR" \
      --simclr_workdir "$run/simclr" --fractions "$FINETUNE_FRACTIONS" --seeds "$2" \
      --rows "$3" --label_mode "binary:No Finding" --split test --out "$run/finetune_test" \
      ${FINETUNE_FLAGS:-} > "$run/finetune_test.log" 2>&1 \
      || { tail -n 20 "$run/finetune_test.log" >&2; exit 1; }
}
FINETUNE_FRACTIONS=${FINETUNE_FRACTIONS-0.1}
FINETUNE_FLAGS=${FINETUNE_FLAGS---row_flags simclr_frozen=--config.optimizer.learning_rate=1e-2}

first=1
for setting in "${settings[@]}"; do
  P=${setting%%:*} M=${setting##*:}
  DIR=$OUT/p${P}_mask${M}
  for SEED in $SEEDS; do
    echo "== p=$P mask=$M seed $SEED: compare on the test split (once, after the choice)"
    if (( first )); then compare "$DIR" "$SEED" test --random_init; else compare "$DIR" "$SEED" test; fi
    if [[ -n "$FINETUNE_FRACTIONS" ]]; then
      echo "== p=$P mask=$M seed $SEED: label efficiency at $FINETUNE_FRACTIONS on the test split"
      if (( first )); then rows=scratch,simclr_finetune,simclr_frozen; else rows=simclr_finetune,simclr_frozen; fi
      finetune "$DIR" "$SEED" "$rows"
    fi
  done
  first=0
done
echo "== the test split (mean ± sd over seeds) -> $OUT/table_test.md"
"$PYTHON" -m experiments.patient_pairs_table "$OUT" --split test --out "$OUT/table_test.md"
echo "patient_pairs_table: done in $((SECONDS - start)) s; tables in $OUT/table_{validation,test}.md"
