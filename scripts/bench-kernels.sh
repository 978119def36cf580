#!/usr/bin/env bash
# Per-op CPU benchmark of node-kernels beside Candle's stock ops and PyTorch (same run).
#   usage: scripts/bench-kernels.sh [FILTER]
#   env:   PEER_PYTHON  a Python with torch (default: python3; without
#                       one the PyTorch column is left empty)
set -euo pipefail
cd "$(dirname "$0")/.."
export PEER_PYTHON=${PEER_PYTHON:-python3}
"$PEER_PYTHON" -c "import torch" 2>/dev/null || { echo "no PyTorch in $PEER_PYTHON: column left empty" >&2; unset PEER_PYTHON; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)  (compare only on an idle machine)"
cargo bench -q -p node-kernels --bench kernels -- "$@"
