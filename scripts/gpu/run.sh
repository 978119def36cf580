#!/usr/bin/env bash
# Runs the CUDA checks and benchmarks packed by scripts/gpu/pack.sh on a GPU machine that has
# no Rust toolchain: run it from the repository root of a checkout there.
#
#   usage: scripts/gpu/run.sh BUNDLE OUT STEP [STEP...]
#   steps (each appends to OUT/summary.md and writes its own log under OUT):
#     env                 the GPU, the driver, the CUDA libraries the executables load
#     tests               every packed test binary, from its package's folder as `cargo test`
#                         runs it (CPU and CUDA variants) -> tests.log; a CUDA test that fails
#                         is run again with each of the project's CUDA kernels off in turn, and
#                         the kernels whose removal mends it stay off for the later steps
#                         (NODE_CUDA_KERNELS_OFF, also written to OUT/kernels-off)
#     bench[=ROUNDS]      the MNIST training step, ours (`mnist-step --device cuda`) and PyTorch
#                         + torchdiffeq, interleaved (scripts/compare-mnist-step.sh), ROUNDS
#                         rounds (default 2); ours again with the project's CUDA kernels off,
#                         all and one by one (NODE_CUDA_KERNELS_OFF=all, conv, group_norm,
#                         lincomb, concat, optim, none); ours with cudarc's events per
#                         buffer kept (--cuda-events); rknet, resnet and mlp with the step
#                         recorded as a CUDA graph (--cuda-graph); ODE-Net with the adjoint,
#                         backprop and checkpointed backprop; the ode_demo solve, the CNF and
#                         latent-ODE training steps, ours and torchdiffeq -> bench.log
#     profile[=VARIANT]   Nsight Compute's time of every kernel of one training step (default
#                         odenet-adjoint), summed by kernel -> profile.csv (raw) and the summary
#     table1=EPOCHS[:MIN] scripts/reproduce-table1.sh EPOCHS --device cuda with the packed
#                         train-mnist for at most MIN minutes (default 8), resumed from
#                         BUNDLE/table1.tar.xz when there -> table1.log and table1.tar.xz (every
#                         run's checkpoint and metrics: copy it into BUNDLE to go on next time)
#   env: CUDA_LIB (default /usr/local/cuda/lib64), PYTHON (default python3: torch, torchdiffeq),
#        TABLE1_DEVICE (default cuda; cpu for a dry run), MODELS, JOBS and GRAPH (as
#        reproduce-table1.sh's: JOBS=4 trains the four models at once, on the one GPU;
#        GRAPH=1 records the fixed-step models' step as a CUDA graph), BISECT_SECONDS
#        (default 600: the most the tests step spends re-running failed CUDA tests)
# Not run here: anything that needs cargo. A step that fails is reported and the next runs.
# NODE_CUDA_KERNELS_OFF set by the caller applies to every step (and is not bisected); unset,
# it is read from BUNDLE/kernels-off when there (an earlier call's OUT/kernels-off).
set -uo pipefail
cd "$(dirname "$0")/../.."
bundle=${1:?usage: $0 BUNDLE OUT STEP...}
out=${2:?usage: $0 BUNDLE OUT STEP...}
shift 2
[ $# -gt 0 ] || { echo "error: no step given (env, tests, bench, profile, table1=EPOCHS)" >&2; exit 2; }
mkdir -p "$out"
bundle=$(cd "$bundle" && pwd)
out=$(cd "$out" && pwd)
summary="$out/summary.md"
if [ -z "${NODE_CUDA_KERNELS_OFF:-}" ] && [ -s "$bundle/kernels-off" ]; then
  export NODE_CUDA_KERNELS_OFF=$(cat "$bundle/kernels-off")
  echo "NODE_CUDA_KERNELS_OFF=$NODE_CUDA_KERNELS_OFF (from $bundle/kernels-off)" | tee -a "$summary"
fi
py=${PYTHON:-python3}
export LD_LIBRARY_PATH="${CUDA_LIB:-/usr/local/cuda/lib64}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

unxz_to() {  # unxz_to ARCHIVE DIR: xz, or python3's lzma where xz is missing
  mkdir -p "$2"
  if command -v xz >/dev/null; then xz -dc "$1"; else
    "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  fi | tar -x -C "$2"
}
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
unxz_to "$bundle/bin.tar.xz" "$bin" || { echo "error: cannot unpack $bundle/bin.tar.xz" >&2; exit 1; }
exe() {  # exe KIND NAME: the packed executable's path, or an error
  local f
  f=$(awk -F'\t' -v k="$1" -v n="$2" '$2 == k && ($1 == n || $1 ~ "^"n"-") { print $1; exit }' "$bin/manifest")
  [ -n "$f" ] || { echo "error: no $1 $2 in the bundle" >&2; return 1; }
  echo "$bin/$f"
}
say() { echo "$*" | tee -a "$summary"; }
# The project's own CUDA kernels, by the names NODE_CUDA_KERNELS_OFF takes.
kernels="conv group_norm lincomb concat optim"
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }

step_env() {
  say "## env ($(date -u +%FT%TZ))"
  { echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    nproc | sed 's/^/CPU cores: /'
    [ -f "$bundle/commit" ] && sed 's/^/bundle built from: /' "$bundle/commit"
    "$py" -c 'import torch, torchdiffeq; print("torch", torch.__version__, "torchdiffeq", torchdiffeq.__version__, "cuda", torch.version.cuda)' 2>&1
    first=$(awk -F'\t' 'NR == 1 { print $1 }' "$bin/manifest")
    ldd "$bin/$first" | grep -E "cuda|cublas|curand|nvrtc|not found"
    echo '```'
  } | tee -a "$summary"
}

step_tests() {
  local t0 log="$out/tests.log" fails=0 failed="$out/cuda-failures.tsv"
  t0=$(date +%s)
  : > "$failed"
  say "## tests"
  say "| binary | package | result | CUDA tests passed |"
  say "|---|---|---|---:|"
  while IFS=$'\t' read -r file kind pkg; do
    case $kind in test | lib) ;; *) continue ;; esac
    echo "=== $file ($pkg)" >> "$log"
    (cd "$pkg" && timeout 300 "$bin/$file" --test-threads=4) < /dev/null >> "$log" 2>&1
    local rc=$? result cuda section names
    section=$(sed -n "/^=== $file /,\$p" "$log")
    result=$(grep "^test result:" <<<"$section" | tail -n1 | sed 's/^test result: //; s/; finished.*//')
    cuda=$(grep -c "_cuda \.\.\. ok$" <<<"$section")
    [ $rc -eq 0 ] || { fails=$((fails + 1)); result="**rc $rc** $result"; }
    say "| $file | $pkg | $result | $cuda |"
    if [ $rc -ne 0 ]; then
      # The failed CUDA tests by name; none named (a crash, a time-out): all of the binary's.
      names=$(grep -oE "^test [^ ]+_cuda \.\.\. FAILED$" <<<"$section" | awk '{ print $2 }')
      [ -n "$names" ] || names="(its CUDA tests)"
      while read -r n; do printf '%s\t%s\t%s\n' "$file" "$pkg" "$n" >> "$failed"; done <<<"$names"
    fi
  done < "$bin/manifest"
  say ""
  say "tests: $fails binaries failed, $(elapsed "$t0")"
  if [ -s "$failed" ]; then bisect_kernels "$failed"; fi
}

# bisect_kernels FAILURES: runs each failed CUDA test again with NODE_CUDA_KERNELS_OFF=all,
# then (where that mends it) with each kernel off alone, and keeps off (exported for the
# later steps) the kernels whose removal alone mends a test, or all of them where only `all`
# does. A test that fails with them all off is not the kernels' doing and is not run again.
# At most BISECT_SECONDS (default 600) in all, so that a hanging test cannot eat the call.
bisect_kernels() {
  local log="$out/tests.log" off_set="" n=0 file pkg name t0 budget=${BISECT_SECONDS:-600} late=0
  t0=$(date +%s)
  say ""
  if [ -n "${NODE_CUDA_KERNELS_OFF:-}" ]; then
    say "CUDA tests failed with NODE_CUDA_KERNELS_OFF=$NODE_CUDA_KERNELS_OFF already set (by the caller, or the bundle's kernels-off): not bisected"
    return
  fi
  say "### failed CUDA tests, again with the project's kernels off (pass: that removal mends it; –: not run, as it fails with all off)"
  say "| test | all | ${kernels// / | } |"
  say "|---|---|$(for _ in $kernels; do printf -- '---|'; done)"
  while IFS=$'\t' read -r file pkg name; do
    n=$((n + 1))
    [ $n -le 8 ] || { say "(further failures not bisected)"; break; }
    local row="| $file $name |" mends="" all_mends=0 off filter
    filter=(--exact "$name")
    [ "$name" = "(its CUDA tests)" ] && filter=(_cuda)
    for off in all $kernels; do
      if [ "$off" != all ] && [ $all_mends -eq 0 ]; then
        row+=" – |"
        continue
      fi
      if [ $(($(date +%s) - t0)) -ge "$budget" ]; then
        row+=" (time) |"
        late=1
        continue
      fi
      echo "=== bisect: $file $name with NODE_CUDA_KERNELS_OFF=$off" >> "$log"
      if (cd "$pkg" && NODE_CUDA_KERNELS_OFF=$off timeout 240 "$bin/$file" "${filter[@]}" \
        --test-threads=4) < /dev/null >> "$log" 2>&1; then
        row+=" pass |"
        if [ "$off" = all ]; then all_mends=1; else mends+=" $off"; fi
      else
        row+=" fail |"
      fi
    done
    say "$row"
    if [ -n "$mends" ]; then
      off_set+="$mends"
    elif [ $all_mends -eq 1 ]; then
      off_set+=" all"
    fi
  done < "$1"
  off_set=$(tr ' ' '\n' <<<"$off_set" | awk 'NF && !seen[$0]++' | paste -sd, -)
  [[ ",$off_set," == *,all,* ]] && off_set=all
  [ $late -eq 0 ] || say "(the bisection stopped at its time limit, BISECT_SECONDS=$budget: \"(time)\" was not run)"
  if [ -z "$off_set" ]; then
    [ $late -eq 1 ] || say "No kernel of the project's own is to blame: the failures stay with Candle's ops."
    return
  fi
  export NODE_CUDA_KERNELS_OFF=$off_set
  echo "$off_set" > "$out/kernels-off"
  say "The later steps run with NODE_CUDA_KERNELS_OFF=$off_set (copy OUT/kernels-off into the bundle to keep them off in later calls)."
}

step_bench() {
  local rounds=${1:-2} t0 log="$out/bench.log" demo cnf ffjord latent cde lsde
  t0=$(date +%s)
  say "## bench"
  local step
  step=$(exe bin mnist-step) || { say "no mnist-step in the bundle"; return; }
  MNIST_STEP="$step" PEER_PYTHON="$py" \
    scripts/compare-mnist-step.sh odenet-adjoint,odenet-direct,rknet,resnet "$rounds" 10 cuda \
    2>&1 | tee -a "$log" >> "$summary"
  # The same build with Candle's CUDA ops in place of the project's own kernels (conv,
  # group_norm, lincomb, concat, optim), one after the other: what each set is worth.
  # Kernels already off (by the caller, or by the tests' bisection) stay off throughout.
  local keep=${NODE_CUDA_KERNELS_OFF:-} off
  for off in all $kernels none; do
    off="$off${keep:+,$keep}"
    { echo; echo "### ours with NODE_CUDA_KERNELS_OFF=$off"
      NODE_CUDA_KERNELS_OFF=$off "$step" --device cuda --reps 10 --warmup 2; } 2>&1 | tee -a "$log" >> "$summary"
  done
  # cudarc's two events per buffer kept (node_kernels::skip_unused_cuda_events not called).
  { echo; echo "### ours with cudarc's events per buffer (--cuda-events)"
    "$step" --device cuda --reps 10 --warmup 2 --cuda-events; } 2>&1 | tee -a "$log" >> "$summary"
  # The fixed-step models' step recorded once as a CUDA graph and replayed.
  { echo; echo "### ours, the step recorded as a CUDA graph (--cuda-graph)"
    "$step" --device cuda --reps 10 --warmup 2 --variants rknet,resnet,mlp --cuda-graph; } 2>&1 | tee -a "$log" >> "$summary"
  # ODE-Net's three gradient modes side by side (torchdiffeq has no checkpointed mode).
  { echo; echo "### ODE-Net: adjoint, backprop and checkpointed backprop"
    "$step" --device cuda --reps 10 --warmup 2 --variants odenet-adjoint,odenet-direct,odenet-checkpoint; } 2>&1 | tee -a "$log" >> "$summary"
  if demo=$(exe bench ode_demo); then
    { echo; "$demo" --device cuda --reps 20; echo
      "$py" scripts/bench-ode-solve-torch.py cuda 20; } 2>&1 | tee -a "$log" >> "$summary"
  fi
  if cnf=$(exe bench cnf); then
    { echo; "$cnf" --device cuda --reps 5; echo
      "$py" scripts/bench-cnf-torch.py cuda 5; } 2>&1 | tee -a "$log" >> "$summary"
  fi
  if ffjord=$(exe bench ffjord); then
    { echo; "$ffjord" --device cuda --reps 5; echo
      "$py" scripts/bench-ffjord-torch.py cuda 5; } 2>&1 | tee -a "$log" >> "$summary"
  fi
  if latent=$(exe bench latent_ode); then
    { echo; "$latent" --device cuda --reps 5; echo
      "$py" scripts/bench-latent-ode-torch.py cuda 5; } 2>&1 | tee -a "$log" >> "$summary"
  fi
  if cde=$(exe bench cde); then
    { echo; "$cde" --device cuda --reps 10; echo
      if "$py" -c "import torchcde" 2>/dev/null; then
        "$py" scripts/bench-cde-torch.py cuda 10
      else
        echo "torchcde is not installed: its table is left out"
      fi; } 2>&1 | tee -a "$log" >> "$summary"
  fi
  if lsde=$(exe bench latent_sde); then
    { echo; "$lsde" --device cuda --reps 5; echo
      if "$py" -c "import torchsde" 2>/dev/null; then
        "$py" scripts/bench-latent-sde-torch.py cuda 5
      else
        echo "torchsde is not installed: its table is left out"
      fi; } 2>&1 | tee -a "$log" >> "$summary"
  fi
  if gan=$(exe bench sde_gan); then
    { echo; "$gan" --device cuda --reps 5; echo
      if "$py" -c "import torchsde, torchcde" 2>/dev/null; then
        "$py" scripts/bench-sde-gan-torch.py cuda 5
      else
        echo "torchsde or torchcde is not installed: its table is left out"
      fi; } 2>&1 | tee -a "$log" >> "$summary"
  fi
  if hnn=$(exe bench hnn); then
    { echo; "$hnn" --device cuda --reps 20; echo
      "$py" scripts/bench-hnn-torch.py cuda 20; } 2>&1 | tee -a "$log" >> "$summary"
  fi
  if shooting=$(exe bench shooting); then
    { echo; "$shooting" --device cuda --reps 10; echo
      "$py" scripts/bench-shooting-torch.py cuda 10; } 2>&1 | tee -a "$log" >> "$summary"
  fi
  say ""
  say "bench: $(elapsed "$t0")"
}

step_profile() {
  local variant=${1:-odenet-adjoint} t0 csv="$out/profile.csv"
  t0=$(date +%s)
  say "## profile: one $variant step (Nsight Compute, gpu__time_duration.sum per kernel)"
  command -v ncu >/dev/null || { say "ncu not found"; return; }
  local step
  step=$(exe bin mnist-step) || { say "no mnist-step in the bundle"; return; }
  timeout 420 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$csv" \
    "$step" --device cuda --variants "$variant" --reps 1 --warmup 0 \
    --child "$variant" > "$out/profile-step.txt" 2>&1 || say "ncu: rc $?"
  "$py" - "$csv" <<'PY' | tee -a "$summary"
import csv, re, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"'))
        if r.get("Metric Name") == "gpu__time_duration.sum"]
by, n = {}, {}
for r in rows:
    name = re.sub(r"[(<].*", "", r["Kernel Name"])
    v = float(r["Metric Value"].replace(",", "")) * {"ns": 1e-6, "us": 1e-3, "usecond": 1e-3,
        "nsecond": 1e-6, "ms": 1.0, "msecond": 1.0}.get(r["Metric Unit"], 1e-6)
    by[name] = by.get(name, 0.0) + v
    n[name] = n.get(name, 0) + 1
total = sum(by.values())
print(f"{len(rows)} kernel launches, {total:.1f} ms of kernel time in all\n")
print("| kernel | launches | ms | share |\n|---|---:|---:|---:|")
for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:30]:
    print(f"| {k} | {n[k]} | {v:.2f} | {100 * v / total:.1f}% |")
PY
  say ""
  say "profile: $(elapsed "$t0") (the step's own wall time without the profiler: see bench)"
}

step_table1() {
  local spec=${1:?table1=EPOCHS[:MINUTES]} epochs minutes t0 log="$out/table1.log" train
  epochs=${spec%%:*}
  minutes=8
  [ "$spec" != "$epochs" ] && minutes=${spec#*:}
  t0=$(date +%s)
  say "## table1: $epochs epochs, at most $minutes min this call"
  train=$(exe bin train-mnist) || { say "no train-mnist in the bundle"; return; }
  unxz_to "$bundle/mnist.tar.xz" data/mnist || { say "no MNIST in the bundle (pack.sh --mnist)"; return; }
  (cd data/mnist && sha256sum --check --quiet ../../scripts/mnist.sha256) || { say "MNIST checksums differ"; return; }
  if [ -f "$bundle/table1.tar.xz" ]; then
    # The bundle's runs replace any here (kept aside, not deleted).
    [ -e runs/table1 ] && mv runs/table1 "runs/table1.before-$(date +%s)"
    unxz_to "$bundle/table1.tar.xz" runs/table1
  fi
  TRAIN_MNIST="$train" OUT=runs/table1 \
    timeout --kill-after=30 "${minutes}m" scripts/reproduce-table1.sh "$epochs" \
    --device "${TABLE1_DEVICE:-cuda}" \
    >> "$log" 2>&1
  say "reproduce-table1.sh: rc $? (124: stopped at the time limit; run again to go on)"
  tar -C runs/table1 -cf - . | xz -6 -T0 > "$out/table1.tar.xz"
  [ -f runs/table1/table1.md ] && cat runs/table1/table1.md >> "$summary"
  for m in runs/table1/*/metrics.jsonl; do
    [ -f "$m" ] && say "$(basename "$(dirname "$m")"): $(tail -n1 "$m")"
  done
  say "table1: $(elapsed "$t0")"
}

for s in "$@"; do
  name=${s%%=*}
  arg=""
  [ "$name" != "$s" ] && arg=${s#*=}
  case $name in
    env) step_env ;;
    tests) step_tests ;;
    bench) step_bench $arg ;;
    profile) step_profile $arg ;;
    table1) step_table1 "$arg" ;;
    *) say "unknown step: $s" ;;
  esac
done
