#!/usr/bin/env bash
# Runs the training-step benchmarks of the CNF, FFJORD, the latent ODE, the neural CDE, the
# latent SDE, the SDE-GAN and the HNN, and torchdiffeq's, torchcde's, torchsde's and
# PyTorch's (scripts/bench-cnf-torch.py, bench-ffjord-torch.py, bench-latent-ode-torch.py,
# bench-cde-torch.py, bench-latent-sde-torch.py, bench-sde-gan-torch.py, bench-hnn-torch.py:
# the same models, data and settings from their own initialisation), alternately on this
# machine's CPU.
#   usage: scripts/bench-small-models.sh [ROUNDS]   (default 2)
#   env:   PEER_PYTHON a Python with torch + torchdiffeq (default: python3; without one the
#                      torchdiffeq tables are left out; without torchcde or torchsde,
#                      their tables)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PEER_PYTHON:-python3}
rounds=${1:-2}
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)  (compare only on an idle machine)"
cargo bench -q -p node-models --bench cnf --bench ffjord --bench latent_ode --bench cde --bench latent_sde --bench sde_gan --bench hnn --no-run 2>/dev/null
peer=0
if "$py" -c "import torch, torchdiffeq" 2>/dev/null; then
  peer=1
else
  echo "torchdiffeq not run: set PEER_PYTHON to a Python with torch and torchdiffeq" >&2
fi
for r in $(seq "$rounds"); do
  echo; echo "== round $r: ours"
  cargo bench -q -p node-models --bench cnf 2>/dev/null
  cargo bench -q -p node-models --bench ffjord 2>/dev/null
  cargo bench -q -p node-models --bench latent_ode 2>/dev/null
  cargo bench -q -p node-models --bench cde 2>/dev/null
  cargo bench -q -p node-models --bench latent_sde 2>/dev/null
  cargo bench -q -p node-models --bench sde_gan 2>/dev/null
  cargo bench -q -p node-models --bench hnn 2>/dev/null
  if [ "$peer" = 1 ]; then
    echo; echo "== round $r: torchdiffeq"
    "$py" scripts/bench-cnf-torch.py cpu 5
    "$py" scripts/bench-ffjord-torch.py cpu 5
    "$py" scripts/bench-latent-ode-torch.py cpu 5
    "$py" scripts/bench-hnn-torch.py cpu 20
    if "$py" -c "import torchcde" 2>/dev/null; then
      "$py" scripts/bench-cde-torch.py cpu 10
    else
      echo "torchcde is not installed: its table is left out"
    fi
    if "$py" -c "import torchsde" 2>/dev/null; then
      "$py" scripts/bench-latent-sde-torch.py cpu 5
      if "$py" -c "import torchcde" 2>/dev/null; then
        "$py" scripts/bench-sde-gan-torch.py cpu 5
      fi
    else
      echo "torchsde is not installed: its table is left out"
    fi
  fi
done
