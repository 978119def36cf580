#!/usr/bin/env bash
# Checks the logic of the crates' CUDA kernels without a GPU: compiles each kernel source with
# a small CPU emulator (scripts/cuda-emulator/cuda_on_cpu.h: a thread per CUDA thread, barriers
# for __syncthreads and warp shuffles) and compares with plain double-precision references.
# What it cannot check: the Rust side's launches (argument order, views), NVRTC, timing —
# those need the GPU test binaries.
#   usage: scripts/check-cuda-kernels.sh      (needs g++ with C++20)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for check in scripts/cuda-emulator/check_*.cpp; do
  name=$(basename "$check" .cpp)
  g++ -std=c++20 -O1 -ffp-contract=off -pthread -Wall -Wno-unknown-pragmas -o "$out/$name" "$check"
  echo "== $name"
  "$out/$name"
done
