#!/usr/bin/env bash
# Build the `cli` and `xtask` binaries with burn's CUDA backend, offline.
#
# burn 0.22.1's `cuda` feature pulls cubecl-llvm, whose build dependency (tracel-llvm-bundler)
# downloads an LLVM 23.1 bundle from GitHub: that fails without internet. This script stands
# Debian's LLVM 22 in for the bundle: it installs llvm-22-dev, libpolly-22-dev, libzstd-dev and
# libz3-dev, lays out the folder the bundler looks for under $XDG_DATA_HOME with links into
# /usr/lib/llvm-22 and the "installed" marker file, and adds the `liblibz3.so` link the bundler's
# linker flags ask for. CUDA itself needs no toolkit at build time (cudarc loads the driver's
# libraries when the program runs).
#
#   scripts/build-cuda.sh            # then: target/release/cli train --device cuda:0 …
#   scripts/build-cuda.sh --lint     # clippy over the CUDA build (no binaries, ≈ 7 min on 2
#                                    # cores from nothing; in target/cuda unless
#                                    # CARGO_TARGET_DIR says otherwise): what CI runs
set -euo pipefail
cd "$(dirname "$0")/.."

llvm=/usr/lib/llvm-22
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
if [ ! -x "$llvm/bin/llvm-config" ]; then
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-22-dev \
    libpolly-22-dev libzstd-dev libz3-dev
fi

export XDG_DATA_HOME="${XDG_DATA_HOME:-$PWD/target/cuda-llvm}"
bundle="$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4"
mkdir -p "$bundle"
for part in bin lib include; do
  ln -sfn "$llvm/$part" "$bundle/$part"
done
# Created once: the bundler's build script reruns (and the whole cubecl stack rebuilds) whenever
# this file is newer than its last run.
[ -e "$bundle/.tracel-llvm-installed" ] || touch -d 2000-01-01 "$bundle/.tracel-llvm-installed"

libdir=/usr/lib/x86_64-linux-gnu
if [ ! -e "$libdir/liblibz3.so" ]; then
  z3=$(ls "$libdir"/libz3.so* 2>/dev/null | head -n 1)
  [ -n "$z3" ] || { echo "libz3 not found in $libdir" >&2; exit 1; }
  $sudo ln -sf "$z3" "$libdir/liblibz3.so"
fi

if [ "${1:-}" = "--lint" ]; then
  shift
  # The CUDA-only code (`gpu_products`, `parse_device`'s CUDA arms) is compiled nowhere else.
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}" cargo clippy -p cli -p xtask -p encoder \
    -p trainer --features cli/cuda,xtask/cuda --all-targets "$@" -- -D warnings
  echo "the CUDA build is clippy-clean"
  exit 0
fi

cargo build --release -p cli -p xtask --features cli/cuda,xtask/cuda "$@"
echo "built ${CARGO_TARGET_DIR:-target}/release/cli and xtask with CUDA support"
