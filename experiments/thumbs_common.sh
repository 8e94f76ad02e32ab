# Sourced by the nih_thumbs experiment scripts (thumbs_table.sh, patient_pairs_table.sh) after
# they set OUT_DEFAULT: resolves THUMBS, CSV, OUT and DATA_DIR (paths given in the environment
# are relative to where the script was started; the defaults to the repository root), moves to
# the repository root, picks PYTHON (.venv/bin/python if present, else python3), checks SEEDS and
# the inputs, and prepares nih_chest_xray14/thumbs64 into DATA_DIR (default OUT/data; a re-run
# reuses it; give one DATA_DIR to several OUTs to share one prepared copy).
for name in THUMBS CSV OUT DATA_DIR; do
  if [[ -n "${!name:-}" ]]; then printf -v "$name" '%s' "$(realpath -m -- "${!name}")"; fi
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."

THUMBS=${THUMBS:-../shared/data/nih_thumbs}
CSV=${CSV:-$(dirname "$THUMBS")/nih_sample/Data_Entry_2017_v2020.csv.gz}
OUT=${OUT:-$OUT_DEFAULT}
SEEDS=${SEEDS:-0 1 2}
[[ -n "${SEEDS//[[:space:]]/}" ]] || { echo "error: SEEDS='$SEEDS': give one or more seeds, e.g. SEEDS=\"0 1 2\"" >&2; exit 2; }
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATASET=nih_chest_xray14/thumbs64
DATA_DIR=${DATA_DIR:-$OUT/data}
[[ -d "$THUMBS" ]] || { echo "error: THUMBS=$THUMBS is not a folder (nih_thumbs layout)" >&2; exit 2; }
[[ -f "$CSV" ]] || { echo "error: CSV=$CSV not found (the official Data_Entry CSV)" >&2; exit 2; }
mkdir -p "$OUT"
start=$SECONDS

echo "== prepare $THUMBS -> $DATA_DIR ($DATASET)"
"$PYTHON" -m simclr_jax.prepare nih --manual_dir "$THUMBS" --csv "$CSV" --data_dir "$DATA_DIR" \
    --image_size 64 | tail -n 2
