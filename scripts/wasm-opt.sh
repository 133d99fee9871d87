#!/usr/bin/env bash
# Shrinks the wasm wasm-bindgen wrote (`make build`: scripts/wasm-opt.sh pkg/tidemark_bg.wasm)
# with wasm-opt from the npm `binaryen` package (a devDependency of the root package.json,
# pinned in package-lock.json; nothing downloads a binary). It also drops the function
# names the wasm-release profile keeps for twiggy.
#
# -Oz without binaryen's inlining passes. Measured on this wasm (gzip -9, issue 17): as built
# 353 KB; plain -Oz 388 KB (its inlining makes the file smaller and its gzip larger, and the
# download is gzip); -O1 351 KB; -Oz without inlining 350 KB.
# The result is cached by the input's hash (wasm-pack rewrites pkg/ on every build, and
# wasm-opt takes 15 s to minutes on a shared machine), so an unchanged build stays quick.
set -euo pipefail
cd "$(dirname "$0")/.."
wasm=${1:?usage: scripts/wasm-opt.sh path/to/file.wasm}
opt=node_modules/.bin/wasm-opt
if [ ! -x "$opt" ]; then   # scripts/setup.sh installs it; this covers a build without setup
  echo "wasm-opt: npm ci (binaryen, from package-lock.json)"
  npm ci --no-audit --no-fund
fi
cache="${CARGO_TARGET_DIR:-target}/wasm-opt"
flags=(-Oz --skip-pass inlining --skip-pass inlining-optimizing --strip-debug --strip-producers --strip-target-features)
key=$( (sha256sum < "$wasm"; "$opt" --version; echo "${flags[*]}") | sha256sum | cut -c1-32)
out="$cache/$key.wasm"
if [ ! -f "$out" ]; then
  mkdir -p "$cache"
  before=$(stat -c %s "$wasm")
  # The target's default features (bulk memory, sign-ext, …) are in the wasm's
  # target_features section, which wasm-opt reads.
  "$opt" "${flags[@]}" "$wasm" -o "$out.tmp"
  mv "$out.tmp" "$out"
  ls -t "$cache"/*.wasm | tail -n +6 | xargs -r rm --   # keep the last five builds' copies
  echo "wasm-opt: $wasm: $before → $(stat -c %s "$out") bytes"
else
  echo "wasm-opt: $wasm: unchanged build, optimized copy from $out"
fi
cp "$out" "$wasm"
