#!/usr/bin/env bash
# Runs the ode_demo solver benchmark and torchdiffeq's reference (`ode_solve.py` from the
# peer baseline) back to back on this machine, and prints both tables.
#   usage: scripts/bench-ode-solve.sh
#   env:   PEER_DIR    the peer baseline scripts (default: ../shared/peer beside the checkout)
#          PEER_PYTHON a Python with torch + torchdiffeq (default: $PEER_DIR/venv/bin/python;
#                      see $PEER_DIR/README.md for how to install it)
set -euo pipefail
cd "$(dirname "$0")/.."
peer=${PEER_DIR:-../shared/peer}
py=${PEER_PYTHON:-$peer/venv/bin/python}
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)  (compare only on an idle machine)"
cargo bench -q -p node-solvers --bench ode_demo 2>/dev/null
if [ -x "$py" ] && [ -f "$peer/ode_solve.py" ]; then
  # The peer script writes fixtures next to itself: run a copy.
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  cp -r "$peer"/. "$work"/ && chmod -R u+w "$work"
  echo
  echo "torchdiffeq (same problem, same weights):"
  "$py" "$work/ode_solve.py" 2>/dev/null | tail -n 1 | "$py" -c '
import json, sys
d = json.loads(sys.stdin.read())
for k, v in d["results"].items():
    print("| %s | NFE %s | median %.3f ms | min %.3f ms |" % (k, v["nfe"], v["time_per_solve_median_ms"], v["time_per_solve_min_ms"]))'
else
  echo "torchdiffeq not run: set PEER_PYTHON to a Python with torch and torchdiffeq" >&2
fi
