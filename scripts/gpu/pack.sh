#!/usr/bin/env bash
# Packs CUDA-built executables (and optionally MNIST) into one folder for a GPU machine that has
# no Rust toolchain; `scripts/gpu/run.sh BUNDLE OUT STEP...` runs them there.
#
#   usage: PATHS | scripts/gpu/pack.sh BUNDLE [--mnist [DIR]]
#     PATHS: the executables of a `cargo build --release --features cuda --tests --benches
#            --bins`, one path per line, or that build's `--message-format=json` output.
#   Keeps: every binary (`--bins`), and the test and bench binaries whose sources mention
#   `cuda` (the device-generic suites; the CPU-only ones are left here).
#   Writes: BUNDLE/bin.tar.xz (stripped executables and a `manifest`: file, kind, package
#   folder), and with --mnist BUNDLE/mnist.tar.xz (the four IDX files of DIR, default
#   data/mnist, fetched first if missing).
#
# One solid xz archive: each stripped executable is ~50 MB, ~40 of them Candle's CUDA kernels,
# the same in all, and a 64 MiB dictionary stores them once (about 7 MB for the first and 1
# for each next). xz because any machine can unpack it (python3's lzma, if not xz).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${1:?usage: PATHS | $0 BUNDLE [--mnist [DIR]]}
shift
mnist=""
if [ "${1:-}" = --mnist ]; then mnist=${2:-$root/data/mnist}; fi
mkdir -p "$bundle"
bundle=$(cd "$bundle" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
cat > "$work/paths"

# Which target each executable is, from cargo's metadata: `name-<16 hex>` is a test, bench or
# lib-test target (underscored name), anything else a binary.
(cd "$root" && cargo metadata --no-deps --format-version 1) > "$work/metadata.json"
python3 - "$root" "$work/metadata.json" "$work/paths" "$work/select.tsv" <<'PY'
import json, os, re, sys
root, meta, paths, out = sys.argv[1:5]
targets = {}
for p in json.load(open(meta))["packages"]:
    pkg = os.path.relpath(os.path.dirname(p["manifest_path"]), root)
    for t in p["targets"]:
        kind = t["kind"][0]
        if kind in ("lib", "rlib"):
            kind = "lib"
        targets.setdefault((t["name"].replace("-", "_"), kind == "bin"), []).append((kind, pkg, t["src_path"]))
def mentions_cuda(kind, src):
    files = [src]
    if kind == "lib":
        files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.dirname(src)) for f in fs]
    return any("cuda" in open(f, errors="ignore").read() for f in files)
chosen = {}  # one executable per target (the last listed: cargo lists fresh ones too)
for line in open(paths):
    line = line.strip()
    if line.startswith("{"):  # a line of cargo's --message-format=json
        path = json.loads(line).get("executable")
        if not path:
            continue
    elif line:
        path = line
    else:
        continue
    base = os.path.basename(path)
    m = re.fullmatch(r"(.+)-[0-9a-f]{16}", base)
    key = (m.group(1), False) if m else (base.replace("-", "_"), True)
    found = [t for t in targets.get(key, []) if (t[0] == "bin") == key[1]]
    if not found:
        print(f"  skipped {base}: not a test, bench or binary target of this workspace", file=sys.stderr)
        continue
    kind, pkg, src = found[0]
    if kind != "bin" and not mentions_cuda(kind, src):
        print(f"  skipped {base}: {kind} target without CUDA tests", file=sys.stderr)
        continue
    chosen[(kind, pkg, key[0])] = f"{path}\t{base}\t{kind}\t{pkg}\n"
with open(out, "w") as o:
    o.writelines(chosen.values())
PY
[ -s "$work/select.tsv" ] || { echo "error: no executable of this workspace on stdin" >&2; exit 1; }
while IFS=$'\t' read -r path base kind pkg; do
  strip -o "$work/bin/$base" "$path"
  printf '%s\t%s\t%s\n' "$base" "$kind" "$pkg" >> "$work/bin/manifest"
  echo "  packed $base ($kind, $pkg)" >&2
done < "$work/select.tsv"
echo "compressing $(wc -l < "$work/bin/manifest") executables (xz -9, a few minutes)..." >&2
tar -C "$work/bin" -cf - . | xz -9 -T2 > "$bundle/bin.tar.xz.part"
mv -f "$bundle/bin.tar.xz.part" "$bundle/bin.tar.xz"
# Which source the executables were built from (run.sh's `env` step prints it).
{ git -C "$root" rev-parse HEAD; git -C "$root" status --porcelain --untracked-files=no | sed 's/^/modified: /'; } \
  > "$bundle/commit" 2>/dev/null || true

if [ -n "$mnist" ]; then
  "$root/scripts/fetch-mnist.sh" "$mnist" >&2
  tar -C "$mnist" -cf - train-images-idx3-ubyte train-labels-idx1-ubyte \
    t10k-images-idx3-ubyte t10k-labels-idx1-ubyte | xz -9 -T2 > "$bundle/mnist.tar.xz.part"
  mv -f "$bundle/mnist.tar.xz.part" "$bundle/mnist.tar.xz"
fi
du -sh "$bundle"/* >&2
