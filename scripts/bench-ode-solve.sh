#!/usr/bin/env bash
# Runs the ode_demo solver benchmark and torchdiffeq on the same problem
# (scripts/bench-ode-solve-torch.py: same weights and initial states) back to back on this
# machine's CPU, and prints both tables.
#   usage: scripts/bench-ode-solve.sh
#   env:   PEER_PYTHON a Python with torch + torchdiffeq (default: python3; without one the
#                      torchdiffeq table is left out)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PEER_PYTHON:-python3}
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)  (compare only on an idle machine)"
cargo bench -q -p node-solvers --bench ode_demo 2>/dev/null
if "$py" -c "import torch, torchdiffeq" 2>/dev/null; then
  echo
  echo "torchdiffeq (same problem, same weights):"
  "$py" scripts/bench-ode-solve-torch.py cpu 20
else
  echo "torchdiffeq not run: set PEER_PYTHON to a Python with torch and torchdiffeq" >&2
fi
