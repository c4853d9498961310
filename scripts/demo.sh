#!/usr/bin/env bash
# The main job end to end on the embedded default data (the synthetic VOC-layout demo set):
# set up, make the demo dataset if absent, build the clusters, mix, pack, draw one sample,
# train stage 1 + stage 2 on the shards and evaluate. ~12 minutes on 2 CPU cores (bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
DATA=${DATA:-data/demo-voc}
OUT=${OUT:-out}
WORKERS=${WORKERS:-2}
if [ ! -f "$DATA/ImageSets/Segmentation/train.txt" ]; then
  blendgen synth --out "$DATA" --seed 0 --workers "$WORKERS"
fi
blendgen build-clusters --dataset voc --root "$DATA" --split train --out "$OUT" --workers "$WORKERS"
blendgen mix --out "$OUT" --delta 0.7:1.0 --seed 0 --workers "$WORKERS"    # resumes; complete shards are kept
blendgen pack --out "$OUT" --split train --workers "$WORKERS"
blendgen pack --out "$OUT" --split val --workers "$WORKERS"
blendgen inspect "$OUT/mixed" --index 0 --out "$OUT/sample-0.png" --limit 3
blendgen stats "$OUT/mixed" --out "$OUT/mixed-stats.png" > "$OUT/mixed-stats.txt"
head -n 8 "$OUT/mixed-stats.txt"
RUN=${RUN:-demo}
TRAIN_ARGS=${TRAIN_ARGS:-}   # e.g. TRAIN_ARGS="--iters1 5 --iters2 5" RUN=smoke for a quick smoke run
if [ -f "runs/$RUN/report.json" ]; then
  echo "runs/$RUN is complete; remove it to train again"
elif [ -f "runs/$RUN/last.pt" ]; then
  trainer run --shards "$OUT" --preset demo --name "$RUN" --resume $TRAIN_ARGS   # an interrupted demo continues
else
  trainer run --shards "$OUT" --preset demo --name "$RUN" $TRAIN_ARGS
fi
python -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'final mIoU on {sys.argv[2]}/val: {100*r[\"miou\"]:.1f}% (pixel accuracy {100*r[\"pixel_acc\"]:.1f}%), report: runs/{sys.argv[3]}/report.md')" "runs/$RUN/report.json" "$OUT" "$RUN"
