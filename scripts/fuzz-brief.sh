#!/usr/bin/env bash
# Run the fuzz targets briefly (CI does this after the tests): the native archive reader, the
# OVF parser, the XVA reader, every API request body, the console handshake and what a V2V
# conversion reads from an image, and the frames of a P2V upload, each for
# FUZZ_SECONDS (default 15) from the seed corpus. A crash, timeout or out-of-memory fails the
# script and leaves the input in crates/corral-archive/fuzz/artifacts/. See crates/corral-archive/fuzz/README.md.
#
# cargo-fuzz needs nightly compiler flags: with a nightly toolchain installed it is used,
# otherwise the stable compiler runs with RUSTC_BOOTSTRAP=1 (same flags, same libFuzzer).
set -euo pipefail
cd "$(dirname "$0")/../crates/corral-archive/fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-15}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
fi

"${FUZZ[@]}" build -O >/dev/null
cargo run --quiet --release --bin gen-seeds >/dev/null
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in native_reader ovf_parser xva_reader api_bodies console_handshake v2v_guest p2v_frames; do
  echo "fuzz: $target for ${SECONDS_EACH}s" >&2
  if ! "${FUZZ[@]}" run -O "$target" -- -max_total_time="$SECONDS_EACH" -max_len=65536 \
      -detect_leaks=0 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target failed; the input is in crates/corral-archive/fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "$log" >&2 || true
done
