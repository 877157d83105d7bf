#!/usr/bin/env bash
# The live-migration benchmark (issue 10): raw QMP migration against corral's, TLS and clear,
# and --with-storage bytes on the wire.
# Writes its table under "## Live migration (issue 10)" in docs/benchmarks.md.
# Usage: scripts/bench-migrate.sh [--rounds N (5)] [--no-doc] [--no-build]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bench/guest-bench.sh"
run_guest_bench migrate_bench.py --rounds 5 "$@"
