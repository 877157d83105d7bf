#!/usr/bin/env bash
# Build the corral binary `corral p2v` is run from on old distributions: statically linked
# (glibc's static-pie, `-C target-feature=+crt-static`), stripped, needing nothing installed
# on the server (any x86-64 Linux kernel since 3.2). Out: target/p2v/corral.
# Name resolution: a static glibc cannot load the server's NSS modules, so give --to an
# address (https://192.0.2.10:8443) when the server's glibc differs from the build host's.
# Usage: scripts/build-p2v-static.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=x86_64-unknown-linux-gnu
cd "$ROOT"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$TARGET" -p corral -q
OUT="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$OUT/p2v"
strip -o "$OUT/p2v/corral" "$OUT/$TARGET/release/corral"
file "$OUT/p2v/corral" | grep -q "static" || { echo "build-p2v-static: the binary is not static" >&2; exit 1; }
echo "$OUT/p2v/corral: $(du -h "$OUT/p2v/corral" | cut -f1), $(file -b "$OUT/p2v/corral" | cut -d, -f1-3)"
