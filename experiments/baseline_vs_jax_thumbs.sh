#!/usr/bin/env bash
# SimCLR on 600 real 64x64 ChestX-ray14 thumbnails: simclr_jax vs the PyTorch baseline (the
# seed), same prepared data, same architecture / batch / epochs / optimiser, each evaluated by
# the same evaluator (python -m simclr_jax.evaluate), reports side by side.
#
#   experiments/baseline_vs_jax_thumbs.sh                 # defaults below, ~10-20 min on 2 CPU cores
#   EPOCHS=30 MODEL=resnet50 OUT=runs/thumbs_r50 experiments/baseline_vs_jax_thumbs.sh
#
# Writes OUT/{data,jax/train,jax/eval,jax/eval_random_init,torch/train,torch/eval}/ and
# OUT/comparison.{md,json}. Settings (environment variables):
#   THUMBS     folder in the nih_thumbs layout      (/work/shared/data/nih_thumbs)
#   OUT        output folder                        (runs/thumbs_compare)
#   DATA_DIR   TFDS data_dir for the prepared set   (OUT/data)
#   MODEL      resnet18|resnet34|resnet50           (resnet18)
#   EPOCHS     passes over the 600 training images  (10)
#   BATCH      global batch                         (64)
#   LR         Adam peak learning rate, cosine decay to 0, no warm-up (3e-4)
#   TEMPERATURE NT-Xent temperature                 (0.07, the seed's)
#   LABEL_MODE evaluator --label_mode (empty: the evaluator's default)
#   SEED       (0)
set -euo pipefail
cd "$(dirname "$0")/.."

THUMBS=${THUMBS:-/work/shared/data/nih_thumbs}
OUT=${OUT:-runs/thumbs_compare}
DATA_DIR=${DATA_DIR:-$OUT/data}
MODEL=${MODEL:-resnet18}
EPOCHS=${EPOCHS:-10}
BATCH=${BATCH:-64}
LR=${LR:-3e-4}
TEMPERATURE=${TEMPERATURE:-0.07}
LABEL_MODE=${LABEL_MODE:-}
SEED=${SEED:-0}
IMAGE_SIZE=64
DATASET=nih_chest_xray14/thumbs64
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

echo "== 1/5 prepare $THUMBS -> $DATA_DIR ($DATASET)"
$PYTHON -m simclr_jax.prepare nih --manual_dir "$THUMBS" --data_dir "$DATA_DIR" \
    --image_size "$IMAGE_SIZE" | tail -n 1 > "$OUT/prepare.json"
cat "$OUT/prepare.json"

# --overwrite: a re-run replaces these reports (the runs themselves resume, not restart).
EVAL_FLAGS=(--dataset "$DATASET" --data_dir "$DATA_DIR" --split test --train_split train --overwrite)
if [[ -n "$LABEL_MODE" ]]; then EVAL_FLAGS+=(--label_mode "$LABEL_MODE"); fi

echo "== 2/5 simclr_jax train ($MODEL, $EPOCHS epochs, batch $BATCH)"
# The demo config with the seed's settings: full-width ResNet, 2-layer MLP head
# (features -> features -> 128), T=0.07, Adam without weight decay, cosine decay from LR to 0
# without warm-up (simclr_jax always decays; the baseline runs --lr_schedule cosine to match).
$PYTHON -m simclr_jax.train --config experiments/configs/demo.py --workdir "$OUT/jax/train" \
    --config.dataset="$DATASET" --config.data_dir="$DATA_DIR" --config.image_size="$IMAGE_SIZE" \
    --config.batch_size="$BATCH" --config.num_epochs="$EPOCHS" --config.model="$MODEL" \
    --config.width=1.0 --config.stem=imagenet --config.head.kind=mlp \
    --config.head.hidden_dim=-1 --config.head.output_dim=128 \
    --config.loss.temperature="$TEMPERATURE" --config.optimizer.name=adam \
    --config.optimizer.learning_rate="$LR" --config.optimizer.lr_scaling=none \
    --config.optimizer.weight_decay=0.0 --config.optimizer.warmup_steps=0 \
    --config.seed="$SEED" --config.progress_bar=False

echo "== 3/5 PyTorch baseline train (same data, model, batch, epochs, Adam $LR cosine)"
$PYTHON -m experiments.pytorch_baseline.train --dataset "$DATASET" --data_dir "$DATA_DIR" \
    --split train --image_size "$IMAGE_SIZE" --batch_size "$BATCH" --epochs "$EPOCHS" \
    --model "$MODEL" --optimizer adam --lr "$LR" --weight_decay 0 --lr_schedule cosine \
    --temperature "$TEMPERATURE" --seed "$SEED" --workdir "$OUT/torch/train"

echo "== 4/5 evaluate (the same evaluator for both, test split, probe on train)"
$PYTHON -m simclr_jax.evaluate --workdir "$OUT/jax/train" "${EVAL_FLAGS[@]}" \
    --out "$OUT/jax/eval" | tail -n 1
$PYTHON -m simclr_jax.evaluate --workdir "$OUT/jax/train" --random_init "${EVAL_FLAGS[@]}" \
    --out "$OUT/jax/eval_random_init" | tail -n 1
$PYTHON -m simclr_jax.evaluate --torch_weights "$OUT/torch/train/encoder_torchvision.pt" \
    --model "$MODEL" --image_size "$IMAGE_SIZE" "${EVAL_FLAGS[@]}" --out "$OUT/torch/eval" \
    | tail -n 1

echo "== 5/5 side by side -> $OUT/comparison.md"
$PYTHON - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = {'simclr_jax': out / 'jax', 'pytorch baseline': out / 'torch'}
reports = {'simclr_jax': out / 'jax/eval/report.json',
           'pytorch baseline': out / 'torch/eval/report.json',
           'random init (jax)': out / 'jax/eval_random_init/report.json'}
reports = {name: json.loads(path.read_text()) for name, path in reports.items()}

def last_metrics(run):
  lines = (run / 'train/metrics.jsonl').read_text().splitlines()
  return json.loads(lines[-1]) if lines else {}

def mean_views_per_second(run):
  values = [json.loads(l)['views_per_second'] for l in (run / 'train/metrics.jsonl').read_text().splitlines()]
  return sum(values[1:]) / max(len(values) - 1, 1) if len(values) > 1 else (values or [None])[0]

training = {name: {**last_metrics(run), 'mean_views_per_second': mean_views_per_second(run)}
            for name, run in runs.items()}
keys = [k for k in ('cluster_accuracy', 'nmi', 'ari', 'purity', 'linear_auroc_macro',
                    'linear_accuracy', 'knn_accuracy', 'num_examples', 'k', 'label_mode')
        if any(k in r for r in reports.values())]
names = list(reports)
lines = ['# SimCLR on nih_thumbs (64 px): simclr_jax vs PyTorch baseline', '',
         '| metric | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
for key in keys:
  lines.append(f'| {key} | ' + ' | '.join(fmt(reports[n].get(key, '')) for n in names) + ' |')
lines += ['', '| training (last logged step) | ' + ' | '.join(training) + ' |',
          '|---' * (len(training) + 1) + '|']
for key in ('step', 'epoch', 'loss', 'positive_accuracy', 'positive_similarity',
            'negative_similarity', 'mean_views_per_second'):
  lines.append(f'| {key} | ' + ' | '.join(fmt(t.get(key, '')) for t in training.values()) + ' |')
(out / 'comparison.md').write_text('\n'.join(lines) + '\n')
(out / 'comparison.json').write_text(json.dumps(
    {'evaluation': {n: {k: reports[n].get(k) for k in keys} for n in names},
     'training': training}, indent=2))
print('\n'.join(lines))
PY
