#!/usr/bin/env bash
# The prepared GPU check (bench/device_check.py): one call on a lent GPU machine, or its CPU
# rehearsal. Runs from the working tree with the machine's own Python (python -m blendgen /
# trainer / pytest): nothing is installed, nothing is downloaded.
#
#   bash bench/device_check.sh                        # GPU: figures in $OUT (or bench/results/device_check)
#   bash bench/device_check.sh --device cpu --tiny    # CPU rehearsal, < 1 minute
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" bench/device_check.py "$@"
