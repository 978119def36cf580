#!/usr/bin/env bash
# Per-op CPU benchmark of node-kernels beside Candle's stock ops and PyTorch (same run).
#   usage: scripts/bench-kernels.sh [FILTER]
#   env:   PEER_PYTHON  a Python with torch (default: ../shared/peer/venv/bin/python; without
#                       one the PyTorch column is left empty)
set -euo pipefail
cd "$(dirname "$0")/.."
export PEER_PYTHON=${PEER_PYTHON:-../shared/peer/venv/bin/python}
[ -x "$PEER_PYTHON" ] || { echo "no PyTorch at $PEER_PYTHON: column left empty" >&2; unset PEER_PYTHON; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)  (compare only on an idle machine)"
cargo bench -q -p node-kernels --bench kernels -- "$@"
