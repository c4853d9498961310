#!/usr/bin/env bash
# Create .venv (if absent) and install the project with its pinned dependencies into it.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch/torchvision are pinned in setup.cfg to a pair verified together (~5.5 GB with CUDA
# libraries, which also run on the CPU); the first install takes a minute or two.
NEED_GB=7
if ! compgen -G ".venv/lib/python*/site-packages/torch/__init__.py" >/dev/null; then  # torch not installed yet
  free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
  if [ "$free_kb" -lt $((NEED_GB * 1024 * 1024)) ]; then
    echo "setup: $(pwd) has $((free_kb / 1024)) MB free; installing torch needs about ${NEED_GB} GB (free some space and rerun)" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# pip's own noise is filtered out, but its exit status is kept: a failed install must stop here
# with pip's message, not surface later as a broken import.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
pip_status=0
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-cache-dir -e '.[test]' \
  >"$log" 2>&1 || pip_status=$?
grep -v -E "^(WARNING: Location|  !!|\s*$)" "$log" || true
if [ "$pip_status" -ne 0 ]; then
  echo "setup: pip install failed (exit $pip_status); its message is above" >&2
  exit "$pip_status"
fi
.venv/bin/python -c "import torch, torchvision, cv2, h5py; print('setup: torch', torch.__version__, '| torchvision', torchvision.__version__, '| cuda available:', torch.cuda.is_available())"
