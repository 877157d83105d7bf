#!/usr/bin/env bash
# The live-migration benchmark (issue 10): raw QMP migration against corral's, TLS and clear,
# and --with-storage bytes on the wire.
# Writes its table under "## Live migration (issue 10)" in docs/benchmarks.md.
# Usage: scripts/bench-migrate.sh [--rounds N (5)] [--no-doc] [--no-build]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COUNT=5 DOC=1 BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) COUNT=$2; shift 2 ;;
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
      --initrd "$(manifest CORRAL_TEST_GUEST_INITRD)" --rounds "$COUNT")
[ "$DOC" = 1 ] && ARGS+=(--doc "$ROOT/docs/benchmarks.md")
exec python3 "$ROOT/scripts/bench/migrate_bench.py" "${ARGS[@]}"
