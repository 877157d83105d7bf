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
# The seed writer is a bin of this package, so the build above made it (with the fuzz flags,
# harmless for it); `cargo run` would build every dependency a second time without them.
triple=$(rustc -vV | sed -n 's/^host: //p')
"target/$triple/release/gen-seeds" >/dev/null
# Each target is one process on one core: as many run at once as there are cores, so the
# stage costs its fuzzing time divided by the cores, not multiplied by the targets.
parallel=$(nproc)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
fuzz_one() {
  local rc=0
  "${FUZZ[@]}" run -O "$1" -- -max_total_time="$SECONDS_EACH" -max_len=65536 \
    -detect_leaks=0 >"$logs/$1.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$1.rc"
}
targets=(native_reader ovf_parser xva_reader api_bodies console_handshake v2v_guest p2v_frames)
for target in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
  echo "fuzz: $target for ${SECONDS_EACH}s" >&2
  fuzz_one "$target" &
done
wait
failed=0
for target in "${targets[@]}"; do
  if [ "$(cat "$logs/$target.rc" 2>/dev/null)" = 0 ]; then
    grep -E '^Done [0-9]+ runs' "$logs/$target.log" | sed "s/^/fuzz: $target: /" >&2 || true
  else
    tail -n 40 "$logs/$target.log" >&2
    echo "fuzz: $target failed; the input is in crates/corral-archive/fuzz/artifacts/$target/" >&2
    failed=1
  fi
done
exit "$failed"
