#!/usr/bin/env bash
# Checks scripts/gpu/run.sh's `tests` step without a GPU (and without Rust): a bundle of fake
# test binaries (shell scripts that pass or fail by NODE_CUDA_KERNELS_OFF, as a broken kernel
# would make a real one) goes through it, and the summary, the bisection of the failed CUDA
# tests and OUT/kernels-off must come out as expected. A GPU session is short: its runner
# should not be what fails there. `.ci/run` runs this.
#   usage: scripts/gpu/check-run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle/bin"

# fake NAME BODY: a test binary that prints libtest's lines; BODY sets `rc` and prints.
fake() {
  cat > "$work/bundle/bin/$1" <<EOF
#!/usr/bin/env bash
off=",\${NODE_CUDA_KERNELS_OFF:-},"
is_off() { [[ \$off == *,\$1,* || \$off == *,all,* ]]; }
filters=()
for a in "\$@"; do [[ \$a == --* ]] || filters+=("\$a"); done
# libtest's filtering: no filter, or one that the test's name contains.
want() { [ \${#filters[@]} -eq 0 ] && return 0; for f in "\${filters[@]}"; do [[ \$name == *"\$f"* ]] && return 0; done; return 1; }
rc=0
$2
echo "test result: \$([ \$rc -eq 0 ] && echo ok || echo FAILED). finished in 0.01s"
exit \$rc
EOF
  chmod +x "$work/bundle/bin/$1"
}
# Passes whatever is off.
fake good-0 'name=a_cuda; echo "test a_cpu ... ok"; echo "test a_cuda ... ok"'
# One test mended by turning lincomb off, another by conv; a CPU test that always passes.
fake two-1 '
echo "test c_cpu ... ok"
name=lc_cuda; if want; then
  if is_off lincomb; then echo "test lc_cuda ... ok"; else echo "test lc_cuda ... FAILED"; rc=101; fi
fi
name=model_cuda; if want; then
  if is_off conv; then echo "test model_cuda ... ok"; else echo "test model_cuda ... FAILED"; rc=101; fi
fi
name=other_cuda; if want; then echo "test other_cuda ... FAILED"; rc=101; fi'
printf 'good-0\ttest\tcrates/node-solvers\ntwo-1\ttest\tcrates/node-models\n' > "$work/bundle/bin/manifest"
if command -v xz >/dev/null; then
  tar -C "$work/bundle/bin" -cf - . | xz > "$work/bundle/bin.tar.xz"
else
  tar -C "$work/bundle/bin" -cf - . |
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(sys.stdin.buffer, lzma.open(sys.argv[1], "w"))' "$work/bundle/bin.tar.xz"
fi
rm -r "$work/bundle/bin"

fail() { echo "check-run: $*" >&2; echo "--- summary:" >&2; cat "$work/out/summary.md" >&2; exit 1; }
expect() { grep -qF -- "$1" "$work/out/summary.md" || fail "summary lacks: $1"; }

scripts/gpu/run.sh "$work/bundle" "$work/out" tests > /dev/null
expect "| good-0 | crates/node-solvers | ok. finished in 0.01s | 1 |"
expect "| two-1 | crates/node-models | **rc 101** FAILED. finished in 0.01s | 0 |"
expect "tests: 1 binaries failed"
expect "| test | all | conv | group_norm | lincomb | concat | optim |"
expect "| two-1 lc_cuda | pass | fail | fail | pass | fail | fail |"
expect "| two-1 model_cuda | pass | pass | fail | fail | fail | fail |"
expect "| two-1 other_cuda | fail | – | – | – | – | – |"
[ "$(cat "$work/out/kernels-off")" = "lincomb,conv" ] || fail "kernels-off: $(cat "$work/out/kernels-off")"

# The next call takes the list from the bundle: the mended tests pass (other_cuda still fails,
# and is not bisected: the list was set).
cp "$work/out/kernels-off" "$work/bundle/"
rm -r "$work/out"
scripts/gpu/run.sh "$work/bundle" "$work/out" tests > /dev/null
expect "NODE_CUDA_KERNELS_OFF=lincomb,conv (from"
expect "tests: 1 binaries failed"
expect "already set (by the caller, or the bundle's kernels-off): not bisected"
[ ! -e "$work/out/kernels-off" ] || fail "kernels-off written again"

# A list set by the caller is kept, not bisected.
rm -r "$work/out" "$work/bundle/kernels-off"
NODE_CUDA_KERNELS_OFF=optim scripts/gpu/run.sh "$work/bundle" "$work/out" tests > /dev/null
expect "already set (by the caller, or the bundle's kernels-off): not bisected"
echo "scripts/gpu/run.sh: tests step, bisection and kernels-off as expected"
