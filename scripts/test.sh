#!/usr/bin/env bash
# The whole test suite: install what is missing, build the test guest, check formatting and
# lints, run every test (unit, integration, and end-to-end tests that boot real QEMU guests
# under TCG). Guest-booting tests run with bounded parallelism (2 test threads per binary,
# one binary at a time); every wait inside the tests has a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-rust.sh
scripts/install-deps.sh --test
scripts/build-test-guest.sh --quiet >/dev/null
scripts/build-secureboot-esp.sh --quiet >/dev/null
# The "physical server" disk the V2V test converts (cached; built once with debootstrap).
scripts/build-p2v-source.sh --quiet >/dev/null
# The web console's bundle: npm ci from web/package-lock.json, rebuild, and fail when the
# committed web/dist/ (embedded in the binary) is not what web/src builds to.
scripts/build-web.sh --check

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
timeout 2700 cargo test --workspace -- --test-threads=2
# The archive readers' fuzz targets, briefly (cargo-fuzz; see crates/corral-archive/fuzz).
FUZZ_SECONDS=${FUZZ_SECONDS:-10} timeout 900 scripts/fuzz-brief.sh
