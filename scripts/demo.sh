#!/usr/bin/env bash
# The main job end to end on the embedded default data (the synthetic VOC-layout demo set):
# set up, make the demo dataset if absent, build the class clusters.
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
