#!/usr/bin/env bash
# Reproduces the paper's Table 1 (MNIST): trains MLP, ResNet, RK-Net and ODE-Net and writes a
# Markdown table of measured figures beside the paper's test errors.
#   usage: scripts/reproduce-table1.sh [EPOCHS] [extra train-mnist args, e.g. --device cuda]
#   env:   OUT (default runs/table1), TRAIN_MNIST (a prebuilt binary; default: cargo run --release),
#          MODELS (default "mlp resnet rknet odenet"), TABLE (default $OUT/table1.md)
# Each model trains with --resume into $OUT/<model>: run the script again to continue after an
# interruption (or in pieces under a time limit); finished models are not retrained. The
# learning-rate schedule is the reference's (×0.1 at epochs 60, 100, 140 of 160), scaled to EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-160}
shift || true
out=${OUT:-runs/table1}
models=${MODELS:-mlp resnet rknet odenet}
table=${TABLE:-$out/table1.md}
if [ -n "${TRAIN_MNIST:-}" ]; then train=("$TRAIN_MNIST"); else train=(cargo run --release -q --bin train-mnist --); fi
mkdir -p "$out"
field() { grep -o "\"$1\":[^,}]*" <<<"$2" | head -n1 | cut -d: -f2 | tr -d '"'; }
for m in $models; do
  last=$(tail -n1 "$out/$m/metrics.jsonl" 2>/dev/null || true)
  if [ -n "$last" ] && [ "$(field epoch "$last")" -ge "$epochs" ]; then
    echo "$m: $epochs epochs already trained"
    continue
  fi
  echo "== $m ($epochs epochs)"
  "${train[@]}" --model "$m" --epochs "$epochs" --schedule-epochs "$epochs" --resume --out-dir "$out/$m" "$@"
done
paper() { case $1 in mlp) echo 1.60;; resnet) echo 0.41;; rknet) echo 0.47;; odenet) echo 0.42;; esac; }
label() { case $1 in mlp) echo "1-layer MLP";; resnet) echo ResNet;; rknet) echo RK-Net;; odenet) echo ODE-Net;; esac; }
{
  echo "| model | test error (measured) | test error (paper) | parameters | time per training step | NFE forward / backward | peak RSS of the run | epochs | device |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
  for m in $models; do
    f="$out/$m/metrics.jsonl"
    [ -f "$f" ] || continue
    last=$(tail -n1 "$f")
    err=$(awk -v a="$(field test_acc "$last")" 'BEGIN { printf "%.2f%%", 100 * (1 - a) }')
    nfe="–"
    case $m in rknet|odenet) nfe="$(field nfe_f "$last") / $(field nfe_b "$last")";; esac
    step=$(awk -v s="$(field time_per_step_s "$last")" 'BEGIN { printf "%.3f s", s }')
    echo "| $(label $m) | $err | $(paper $m)% | $(field params "$last") | $step | $nfe | $(field peak_rss_mib "$last") MiB | $(field epoch "$last") | $(field device "$last") |"
  done
} > "$table"
cat "$table"
