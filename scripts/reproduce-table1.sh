#!/usr/bin/env bash
# Reproduces the paper's Table 1 (MNIST): trains MLP, ResNet, RK-Net and ODE-Net and writes a
# Markdown table of measured figures beside the paper's test errors.
#   usage: scripts/reproduce-table1.sh [EPOCHS] [extra train-mnist args, e.g. --device cuda]
#   env:   OUT (default runs/table1), TRAIN_MNIST (a prebuilt binary; default: cargo run --release),
#          MODELS (default "mlp resnet rknet odenet"), TABLE (default $OUT/table1.md),
#          JOBS (default 1): models trained at the same time, each logging to $OUT/<model>.log
#          (on a GPU that one small-batch run leaves idle between its kernels, several runs
#          can share it; their step times then include the sharing),
#          GRAPH=1: the fixed-step models (mlp, resnet, rknet) train with --cuda-graph
# Each model trains with --resume into $OUT/<model>: run the script again to continue after an
# interruption (or in pieces under a time limit); finished models are not retrained. The
# learning-rate schedule is the reference's (×0.1 at epochs 60, 100, 140 of 160), scaled to EPOCHS.
# SIGTERM or SIGINT stop every run (each checkpoints the step it is on) and the script.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-160}
shift || true
out=${OUT:-runs/table1}
models=${MODELS:-mlp resnet rknet odenet}
table=${TABLE:-$out/table1.md}
if [ -n "${TRAIN_MNIST:-}" ]; then train=("$TRAIN_MNIST"); else train=(cargo run --release -q --bin train-mnist --); fi
jobs=${JOBS:-1}
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "error: JOBS must be a positive integer, not '$jobs'" >&2; exit 2; }
mkdir -p "$out"
field() { grep -o "\"$1\":[^,}]*" <<<"$2" | head -n1 | cut -d: -f2 | tr -d '"'; }
# The arguments of model $1's run, in the array `margs`.
args_for() {
  margs=(--model "$1" --epochs "$epochs" --schedule-epochs "$epochs" --resume --out-dir "$out/$1")
  if [ "${GRAPH:-0}" = 1 ] && [ "$1" != odenet ]; then margs+=(--cuda-graph); fi
}
pending=()
for m in $models; do
  last=$(tail -n1 "$out/$m/metrics.jsonl" 2>/dev/null || true)
  if [ -n "$last" ] && [ "$(field epoch "$last")" -ge "$epochs" ]; then
    echo "$m: $epochs epochs already trained"
  else
    pending+=("$m")
  fi
done
if [ "$jobs" -eq 1 ]; then
  for m in "${pending[@]}"; do
    echo "== $m ($epochs epochs)"
    args_for "$m"
    "${train[@]}" "${margs[@]}" "$@"
  done
else
  # At most $jobs runs at once, polled every few seconds (`wait PID` then gives each run's
  # status). Each run is in a session of its own, so that a signal to this script's process
  # group (Ctrl-C, `timeout`) reaches it once, passed on from here: a second one would make it
  # exit without its checkpoint. Each saves its step and stops.
  own_session=()
  command -v setsid > /dev/null && own_session=(setsid)
  declare -A pid_of=()
  stop() { trap '' TERM INT; kill -TERM "${pid_of[@]}" 2>/dev/null; wait; exit 143; }
  trap stop TERM INT
  failed=0
  reap() {
    local m
    for m in "${!pid_of[@]}"; do
      kill -0 "${pid_of[$m]}" 2>/dev/null && continue
      if wait "${pid_of[$m]}"; then echo "== $m: done"; else echo "== $m: failed (see $out/$m.log)"; failed=1; fi
      unset "pid_of[$m]"
    done
  }
  pause() { sleep 5 & wait $! || true; reap; }
  for m in "${pending[@]}"; do
    while [ "${#pid_of[@]}" -ge "$jobs" ]; do pause; done
    echo "== $m ($epochs epochs, log: $out/$m.log)"
    mkdir -p "$out/$m"
    args_for "$m"
    (exec "${own_session[@]}" "${train[@]}" "${margs[@]}" "$@") >> "$out/$m.log" 2>&1 &
    pid_of[$m]=$!
  done
  while [ "${#pid_of[@]}" -gt 0 ]; do pause; done
  [ "$failed" -eq 0 ] || { echo "error: a run failed" >&2; exit 1; }
fi
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
