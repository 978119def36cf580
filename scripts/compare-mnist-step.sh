#!/usr/bin/env bash
# One MNIST training step (batch 128), ours beside PyTorch + torchdiffeq, interleaved: each
# round times every variant with `mnist-step` and then with the PyTorch script, so that both
# sides see the same machine state; per-round ratios (ours / PyTorch, of the medians) and the
# median ratio over the rounds. On a shared machine whose speed drifts by ±30% within minutes,
# this is what "measured in one run" can mean.
#
#   usage: scripts/compare-mnist-step.sh [variants, comma-separated] [rounds] [reps] [device]
#          (defaults: all four variants, 3 rounds, 7 timed steps per run, cpu)
#   env:   PEER_PYTHON  a Python with torch + torchdiffeq (default: python3)
#          MNIST_STEP   a prebuilt mnist-step (default: built here with cargo)
set -euo pipefail
cd "$(dirname "$0")/.."

variants=${1:-odenet-adjoint,odenet-direct,rknet,resnet}
rounds=${2:-3}
reps=${3:-7}
device=${4:-cpu}
python=${PEER_PYTHON:-python3}

if ! "$python" -c "import torch, torchdiffeq" 2>/dev/null; then
    echo "error: $python cannot import torch and torchdiffeq; set PEER_PYTHON" >&2
    exit 2
fi
if [ -n "${MNIST_STEP:-}" ]; then
    step=$MNIST_STEP
else
    features=()
    [ "$device" = cuda ] && features=(--features cuda)
    cargo build --release -q "${features[@]}" --bin mnist-step
    step=target/release/mnist-step
fi

# The median column of a table row: ours `| v | params | nfe | nfe | median | min | rss |`,
# PyTorch's `| v | nfe | nfe | median | min |`.
median() { awk -F'|' -v v="$1" -v col="$2" '$2 ~ " "v" " { gsub(/ /, "", $col); print $col }'; }

echo "MNIST step, batch 128, $device, $reps timed steps per run, $rounds interleaved rounds"
echo "| variant | round | ours ms | PyTorch ms | ratio |"
echo "|---|---:|---:|---:|---:|"
declare -A ratios
IFS=, read -ra list <<<"$variants"
for r in $(seq 1 "$rounds"); do
    for v in "${list[@]}"; do
        ours=$("$step" --device "$device" --variants "$v" --reps "$reps" --child "$v" | median "$v" 6)
        theirs=$("$python" scripts/bench-mnist-step-torch.py "$device" "$reps" "$v" | median "$v" 5)
        if [ -z "$ours" ] || [ -z "$theirs" ]; then
            echo "error: no timing for $v (ours '$ours', PyTorch '$theirs')" >&2
            exit 1
        fi
        ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }')
        ratios[$v]="${ratios[$v]:-} $ratio"
        echo "| $v | $r | $ours | $theirs | $ratio |"
    done
done
echo
echo "| variant | ratios | median ratio |"
echo "|---|---|---:|"
for v in "${list[@]}"; do
    med=$(tr ' ' '\n' <<<"${ratios[$v]}" | grep . | sort -g | awk '{ a[NR] = $1 } END {
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
    echo "| $v |${ratios[$v]} | $med |"
done
