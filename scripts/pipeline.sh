#!/usr/bin/env bash
# The whole pipeline on a labelled dataset in PASCAL VOC layout (JPEGImages/, SegmentationClass/,
# ImageSets/Segmentation/SPLIT.txt), e.g. your own photos or CamVid:
#
#   bash scripts/pipeline.sh ROOT
#   EVAL_SPLIT=test METHOD=deeplabv3 RUN=camvid-dl3 bash scripts/pipeline.sh /data/camvid
#
# set-up -> build-clusters -> mix (sourcesep-cc only) -> pack -> trainer run -> trainer eval on
# EVAL_SPLIT; prints that split's mIoU, the IoU per class and the path of its report.json. Run it
# again to resume: every step keeps what it finished (complete shards, the run's last.pt).
# docs/photos.md has the CamVid run of it, its numbers and its wall time.
#
# Environment (defaults):
#   CLASSES_FILE  the class-names file, one per line in id order (ROOT/classes.txt if present,
#                 else VOC's 21 classes); id 0 is background only if it is named "background"
#   TRAIN_SPLIT   train     the split trained on (stage 1 blends and stage 2 images)
#   VAL_SPLIT     val       the split of the learning curve during training (EVAL_SPLIT if ROOT has
#                           no val list)
#   EVAL_SPLIT    val       the split scored at the end
#   PRESET        photos-cpu   trainer run --preset (demo, photos-cpu, bmvc-r101, ijcv-r101, ijcv-r50)
#   METHOD        sourcesep-cc  trainer run --method
#   MAX_SAMPLES   12000     blendgen mix --max-samples (a seeded subsample of the clustered plan);
#                           "all" = the whole plan (~96 blends per image where images hold most classes)
#   OUT           out/<ROOT's name>           shard root
#   RUNS          runs      where run directories go (trainer run --out)
#   RUN           <ROOT's name>-<METHOD>      run name under RUNS
#   WORKERS       2         processes for build-clusters, mix and pack
#   TRAIN_ARGS    (none)    more trainer run options, e.g. "--seed 1"
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash scripts/pipeline.sh ROOT   (a dataset in VOC layout; see the comments at the top)" >&2
  exit 2
fi
ROOT=$(cd "$1" && pwd) || { echo "pipeline: $1 is not a directory" >&2; exit 2; }
cd "$(dirname "$0")/.."
NAME=$(basename "$ROOT")
TRAIN_SPLIT=${TRAIN_SPLIT:-train}
EVAL_SPLIT=${EVAL_SPLIT:-val}
PRESET=${PRESET:-photos-cpu}
METHOD=${METHOD:-sourcesep-cc}
MAX_SAMPLES=${MAX_SAMPLES:-12000}
OUT=${OUT:-out/$NAME}
RUNS=${RUNS:-runs}
RUN=${RUN:-$NAME-$METHOD}
WORKERS=${WORKERS:-2}
TRAIN_ARGS=${TRAIN_ARGS:-}
LISTS="$ROOT/ImageSets/Segmentation"
for split in "$TRAIN_SPLIT" "$EVAL_SPLIT"; do
  [ -f "$LISTS/$split.txt" ] || { echo "pipeline: $LISTS/$split.txt: no such split list" >&2; exit 2; }
done
if [ -z "${VAL_SPLIT:-}" ]; then
  if [ -f "$LISTS/val.txt" ]; then VAL_SPLIT=val; else VAL_SPLIT=$EVAL_SPLIT; fi
fi
if [ -z "${CLASSES_FILE:-}" ] && [ -f "$ROOT/classes.txt" ]; then CLASSES_FILE="$ROOT/classes.txt"; fi
DATASET=(--dataset voc --root "$ROOT")
if [ -n "${CLASSES_FILE:-}" ]; then
  DATASET+=(--option "classes_file=$(cd "$(dirname "$CLASSES_FILE")" && pwd)/$(basename "$CLASSES_FILE")")
fi

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
step() { echo; echo "== $* ($(date +%H:%M:%S))"; }

step "build-clusters on $ROOT ($TRAIN_SPLIT)"
blendgen build-clusters "${DATASET[@]}" --split "$TRAIN_SPLIT" --out "$OUT" --workers "$WORKERS"
if [ "$METHOD" = sourcesep-cc ]; then
  step "mix -> $OUT/mixed"
  SUBSAMPLE=()
  [ "$MAX_SAMPLES" = all ] || SUBSAMPLE=(--max-samples "$MAX_SAMPLES")
  blendgen mix --out "$OUT" --delta 0.7:1.0 --seed 0 --workers "$WORKERS" "${SUBSAMPLE[@]}"
fi
# The trainer reads SHARDS/train (stage 2, the baselines) and SHARDS/val (the curve).
step "pack $TRAIN_SPLIT, $VAL_SPLIT, $EVAL_SPLIT"
blendgen pack --out "$OUT" --split "$TRAIN_SPLIT" --dest "$OUT/train" --workers "$WORKERS"
blendgen pack --out "$OUT" --split "$VAL_SPLIT" --dest "$OUT/val" --workers "$WORKERS"
[ "$EVAL_SPLIT" = "$VAL_SPLIT" ] || blendgen pack --out "$OUT" --split "$EVAL_SPLIT" --workers "$WORKERS"
EVAL_DIR=$([ "$EVAL_SPLIT" = "$VAL_SPLIT" ] && echo val || echo "$EVAL_SPLIT")

DIR=$RUNS/$RUN
step "trainer run $DIR ($PRESET, $METHOD)"
TRAIN=(trainer run --shards "$OUT" --preset "$PRESET" --method "$METHOD" --out "$RUNS" --name "$RUN")
if [ -f "$DIR/report.json" ]; then
  echo "$DIR is complete; remove it to train again"
elif [ -f "$DIR/last.pt" ]; then
  "${TRAIN[@]}" --resume $TRAIN_ARGS
else
  "${TRAIN[@]}" $TRAIN_ARGS
fi

# The weights the run ended with: stage2.pt after the denoising stage, else stage1.pt.
CKPT=$DIR/stage$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['stage'])" "$DIR/report.json").pt
step "trainer eval $CKPT on $EVAL_SPLIT"
trainer eval --checkpoint "$CKPT" --shards "$OUT" --split "$EVAL_DIR" --out "$DIR/eval-$EVAL_SPLIT" --quiet
echo "report: $DIR/eval-$EVAL_SPLIT/report.json"
