#!/usr/bin/env bash
# The pools benchmark (issue 9): a 3-member etcd and 3 agents on loopback, N VMs over the
# pool, `vm list` latency on every member against reading the records from etcd, cross-host
# event latency, agent RSS. Writes its table under "## Pools (issue 9)" in docs/benchmarks.md.
# Usage: scripts/bench-pool.sh [--count N (5000)] [--no-doc] [--no-build]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COUNT=5000 DOC=1 BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --count) COUNT=$2; shift 2 ;;
        --no-doc) DOC=0; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
GUEST_DIR=${CORRAL_TEST_GUEST_DIR:-$HOME/.cache/corral/test-guest}
[ -f "$GUEST_DIR/manifest.env" ] || { echo "no test guest: run scripts/build-test-guest.sh" >&2; exit 1; }
manifest() { sed -n "s/^$1=//p" "$GUEST_DIR/manifest.env" | tail -1; }
command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then (cd "$ROOT" && cargo build --release -p corral); fi
ARGS=(--corral "$ROOT/target/release/corral" --kernel "$(manifest CORRAL_TEST_GUEST_KERNEL)"
      --initrd "$(manifest CORRAL_TEST_GUEST_INITRD)" --count "$COUNT")
[ "$DOC" = 1 ] && ARGS+=(--doc "$ROOT/docs/benchmarks.md")
exec python3 "$ROOT/scripts/bench/pool_bench.py" "${ARGS[@]}"
