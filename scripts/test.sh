#!/usr/bin/env bash
# The whole test suite: install what is missing, build the test guest, check formatting and
# lints, run every test (unit, integration, and end-to-end tests that boot real QEMU guests
# under TCG). Tests run under cargo-nextest, scheduled across all test binaries from one queue
# with bounded parallelism (.config/nextest.toml: at most two guest-booting tests at once,
# longest first, each killed after 15 minutes); every wait inside the tests has a timeout.
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
# cargo-nextest ships with the Rust image CI uses; elsewhere it is built once (about 3 min).
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked --quiet
timeout 2700 cargo nextest run --workspace
# nextest does not run documentation examples.
cargo test --workspace --doc --quiet
# The archive readers' fuzz targets, briefly (cargo-fuzz; see crates/corral-archive/fuzz).
FUZZ_SECONDS=${FUZZ_SECONDS:-10} timeout 900 scripts/fuzz-brief.sh
