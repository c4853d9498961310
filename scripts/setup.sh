#!/usr/bin/env bash
# Create .venv (if absent) and install the project with its pinned dependencies into it.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# torch/torchvision are pinned in setup.cfg to a pair verified together (~5.5 GB with CUDA
# libraries, which also run on the CPU); the first install takes a minute or two.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 \
  | grep -v -E "^(WARNING: Location|  !!|\s*$)" || true
.venv/bin/python -c "import torch, torchvision, cv2, h5py; print('setup: torch', torch.__version__, '| torchvision', torchvision.__version__, '| cuda available:', torch.cuda.is_available())"
