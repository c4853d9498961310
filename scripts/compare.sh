#!/usr/bin/env bash
# The papers' comparison on one recipe and budget, with several seeds: the five methods (IJCV
# Table 1) and the denoising / SSH ablations of SourceSep-CC (Tables 8-9), then `trainer report`
# with mean ± std per method and per class, and which differences exceed the seed spread.
#
#   bash scripts/compare.sh                          # 3 seeds, --preset demo, on out/ (scripts/demo.sh makes it)
#   SEEDS="0 1" METHODS="deeplabv3 sourcesep-cc" ABLATIONS= bash scripts/compare.sh
#   TRAIN_ARGS="--iters1 100 --iters2 50" RUNS=runs/quick bash scripts/compare.sh
#
# Resumable: a finished run (report.json) is kept, an interrupted one continues from its last.pt.
# Cost with --preset demo on 2 CPU cores (bf16): 7-9 minutes a run, so the default 21 runs take
# about 3 hours (docs/results.md lists each run's time).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=${OUT:-out}
RUNS=${RUNS:-runs/compare}
REPORT=${REPORT:-reports/compare}
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"deeplabv3 mixup cutmix sourcesep-cc sourcesep-cm"}
ABLATIONS=${ABLATIONS-"no-denoise no-ssh"}   # of sourcesep-cc; empty = none
PRESET=${PRESET:-demo}
TRAIN_ARGS=${TRAIN_ARGS:-}
[ -f "$OUT/val/manifest.json" ] || { echo "compare: no shards in $OUT/ (run scripts/demo.sh first)" >&2; exit 1; }

train() {  # NAME ARGS...: one run, skipped when finished, resumed when interrupted
  local name=$1; shift
  if [ -f "$RUNS/$name/report.json" ]; then
    echo "compare: $RUNS/$name is finished, kept"
    return
  fi
  local resume=()
  [ -f "$RUNS/$name/last.pt" ] && resume=(--resume)
  echo "compare: training $name"
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
  trainer run --shards "$OUT" --preset "$PRESET" --out "$RUNS" --name "$name" --quiet "${resume[@]}" "$@" $TRAIN_ARGS
}

start=$(date +%s)
names=()
for seed in $SEEDS; do  # the methods for every seed first, then the ablations
  for method in $METHODS; do
    train "$method-s$seed" --method "$method" --seed "$seed"
    names+=("$RUNS/$method-s$seed")
  done
done
for seed in $SEEDS; do
  for ablation in $ABLATIONS; do
    train "sourcesep-cc-$ablation-s$seed" --method sourcesep-cc "--$ablation" --seed "$seed"
    names+=("$RUNS/sourcesep-cc-$ablation-s$seed")
  done
done
echo "compare: ${#names[@]} runs in $(( ($(date +%s) - start) / 60 )) min"
trainer report "${names[@]}" --out "$REPORT" --title "Methods over seeds"
