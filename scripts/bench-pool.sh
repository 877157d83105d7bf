#!/usr/bin/env bash
# The pools benchmark (issue 9): a 3-member etcd and 3 agents on loopback, N VMs over the
# pool, `vm list` latency on every member against reading the records from etcd, cross-host
# event latency, agent RSS. Writes its table under "## Pools (issue 9)" in docs/benchmarks.md.
# Usage: scripts/bench-pool.sh [--count N (5000)] [--no-doc] [--no-build]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bench/guest-bench.sh"
run_guest_bench pool_bench.py --count 5000 "$@"
