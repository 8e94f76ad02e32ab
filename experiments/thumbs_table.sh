#!/usr/bin/env bash
# The seed's comparison table on real chest X-rays, on a CPU: SimCLR vs a supervised baseline
# trained here vs the fair (torchvision-style) random init, on the 1,000 real 64 px
# ChestX-ray14 thumbnails of ../shared/data/nih_thumbs (normal vs abnormal; train 600 /
# validation 200 / test 200).
#
#   experiments/thumbs_table.sh                  # ~8 min on 2 quiet CPU cores (3 seeds)
#   OUT=runs/thumbs SEEDS="0 1 2 3 4" experiments/thumbs_table.sh
#
# Steps (each a CLI a user would type; a re-run reuses the prepared data and finished
# trainings, and evaluates again), per seed 2-4:
#   1. prepare   nih_chest_xray14/thumbs64 from THUMBS (+ the official label CSV)
#   2. SimCLR    experiments/configs/thumbs.py on the train split (no labels)
#   3. supervised the same config with --config.objective=supervised (the 14 findings, BCE)
#   4. compare   SimCLR, supervised, random init on the SPLIT split (test), label mode
#                "binary:No Finding" (normal vs abnormal: k-means k = 2, linear probe, kNN),
#                label efficiency at 10 % and 100 % of the train labels
#      then SimCLR and random init again with the projection head's output as features
#      (--features projection; the supervised encoder has no projection head)
#   5. experiments.seed_table: every cell as mean ± sd over the seeds (the seed also seeds
#      the random-init row), for each feature kind
# Writes OUT/data, OUT/seed<S>/{simclr,supervised,compare,compare_projection}/,
# OUT/table.md (encoder features) and OUT/table_projection.md.
# Settings (environment): THUMBS (../shared/data/nih_thumbs from the repository root),
# CSV (THUMBS/../nih_sample/Data_Entry_2017_v2020.csv.gz), OUT (runs/thumbs_table), SEEDS ("0 1 2"),
# SPLIT (test: the split compared on; choose settings with SPLIT=validation and look at test
# once, for the chosen setting; validation reports go to compare_validation*/ and
# table_validation*.md beside the test ones), DATA_DIR (OUT/data),
# TRAIN_FLAGS (extra --config.KEY=VALUE flags for both trainings, e.g.
# "--config.augment.clahe_prob=0.5"; use a new OUT for each setting), PYTHON (.venv/bin/python
# if present, else python3).
set -euo pipefail
OUT_DEFAULT=runs/thumbs_table
SPLIT=${SPLIT:-test}
[[ "$SPLIT" =~ ^[A-Za-z0-9_]+$ ]] || { echo "error: SPLIT='$SPLIT': a split name, e.g. validation or test" >&2; exit 2; }
SUFFIX=""; [[ "$SPLIT" == test ]] || SUFFIX="_$SPLIT"   # compare$SUFFIX/, table$SUFFIX.md
# shellcheck source=experiments/thumbs_common.sh
source "$(dirname "$0")/thumbs_common.sh"   # THUMBS, CSV, OUT, SEEDS, PYTHON; prepares DATA_DIR
reports=()
projection_reports=()

for SEED in $SEEDS; do
  RUN=$OUT/seed$SEED
  # shellcheck disable=SC2206  # TRAIN_FLAGS: whitespace-separated flags, no quoting
  TRAIN=(--config experiments/configs/thumbs.py --config.data_dir="$DATA_DIR"
         --config.seed="$SEED" --config.progress_bar=False ${TRAIN_FLAGS:-})
  echo "== seed $SEED: SimCLR pretraining (experiments/configs/thumbs.py) -> $RUN/simclr"
  "$PYTHON" -m simclr_jax.train "${TRAIN[@]}" --workdir "$RUN/simclr" | tail -n 1
  echo "== seed $SEED: supervised baseline (same encoder, data, augmentation; one view, the findings) -> $RUN/supervised"
  "$PYTHON" -m simclr_jax.train "${TRAIN[@]}" --workdir "$RUN/supervised" \
      --config.objective=supervised | tail -n 1
  echo "== seed $SEED: compare on the $SPLIT split (normal vs abnormal) -> $RUN/compare$SUFFIX"
  "$PYTHON" -m experiments.compare --simclr_workdir "$RUN/simclr" \
      --supervised_workdir "$RUN/supervised" --random_init \
      --dataset "$DATASET" --data_dir "$DATA_DIR" --split "$SPLIT" --train_split train \
      --label_mode "binary:No Finding" --label_fractions 0.1,1.0 --out "$RUN/compare$SUFFIX" \
      --overwrite > /dev/null 2> "$RUN/compare$SUFFIX.log" || { cat "$RUN/compare$SUFFIX.log" >&2; exit 1; }
  grep '^|' "$RUN/compare$SUFFIX/report.md"
  reports+=("$RUN/compare$SUFFIX/report.json")
  echo "== seed $SEED: the same with the projection head's output as features (SimCLR, random init) -> $RUN/compare_projection$SUFFIX"
  "$PYTHON" -m experiments.compare --simclr_workdir "$RUN/simclr" --random_init \
      --dataset "$DATASET" --data_dir "$DATA_DIR" --split "$SPLIT" --train_split train \
      --label_mode "binary:No Finding" --label_fractions 0.1,1.0 --features projection \
      --out "$RUN/compare_projection$SUFFIX" --overwrite > /dev/null \
      2> "$RUN/compare_projection$SUFFIX.log" || { cat "$RUN/compare_projection$SUFFIX.log" >&2; exit 1; }
  projection_reports+=("$RUN/compare_projection$SUFFIX/report.json")
done

echo "== all seeds (mean ± sd), encoder features -> $OUT/table$SUFFIX.md"
"$PYTHON" -m experiments.seed_table "${reports[@]}" --out "$OUT/table$SUFFIX.md" --overwrite
echo "== all seeds (mean ± sd), projection-head features -> $OUT/table_projection$SUFFIX.md"
"$PYTHON" -m experiments.seed_table "${projection_reports[@]}" \
    --out "$OUT/table_projection$SUFFIX.md" --overwrite
echo "thumbs_table: done in $((SECONDS - start)) s; reports in $OUT/seed*/compare*, tables in $OUT/table*$SUFFIX.md ($SPLIT split)"
