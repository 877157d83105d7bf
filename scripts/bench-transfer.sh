#!/usr/bin/env bash
# Issue-4 benchmark through the agent (API over its unix socket, release build):
#   1. linked clone of a halted VM with a 1 GiB and with a 100 GiB disk: `POST .../clone`
#      round trip (curl) and the agent's own task time, N runs each (goal <= 10 ms);
#   2. export of a VM with an empty 100 GiB disk: `GET .../export` streamed to /dev/null, and
#      `corral vm export` to a file (goal < 1 s);
#   3. with the export/import benchmark's data (~/.cache/corral-bench/disk.raw and
#      allocated.bin, from the corral-archive bench example): end-to-end `corral vm import`
#      of that VM's archive (upload over the socket, decode, verify, qcow2 written directly,
#      volume placed, VM recorded) against `zstd -d -T0` of the same bytes (goal >= 0.8 x).
# The format library's throughput figures come from
# `cargo run --release -p corral-archive --example bench` (see docs/benchmarks.md).
# Usage: scripts/bench-transfer.sh [--runs N (20)] [--import-runs N (5)] [--no-build]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=20
IMPORT_RUNS=5
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --import-runs) IMPORT_RUNS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ "$BUILD" = 1 ] && (cd "$ROOT" && cargo build --release -p corral -q)
echo "load average at the start: $(cut -d" " -f1-3 /proc/loadavg)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/corral"
STATE=$(mktemp -d /tmp/corral-bench-transfer.XXXXXX)
SOCK="$STATE/corral.sock"
"$BIN" serve --state-dir "$STATE" --accel tcg >"$STATE/agent.log" 2>&1 &
AGENT=$!
trap 'kill $AGENT 2>/dev/null; wait $AGENT 2>/dev/null; rm -rf "$STATE"' EXIT
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
C() { "$BIN" --connect "$SOCK" "$@"; }
C vm create --name small --disk 1G --no-nics >/dev/null
C vm create --name big --disk 100G --no-nics >/dev/null

clone_times() { # SRC -> "curl_ms task_ms" per line
    for i in $(seq "$RUNS"); do
        local dst="$1-c$i"
        local t
        t=$(curl -s -o "$STATE/ans.json" -w '%{time_total}' --unix-socket "$SOCK" \
            -X POST -H 'content-type: application/json' -d "{\"name\":\"$dst\"}" \
            "http://corral/v1/vms/$1/clone")
        python3 - "$t" "$STATE/ans.json" "$SOCK" <<'PY'
import json, sys, subprocess
t, ans, sock = float(sys.argv[1]), json.load(open(sys.argv[2])), sys.argv[3]
task = json.loads(subprocess.check_output(["curl", "-s", "--unix-socket", sock, f"http://corral/v1/tasks/{ans['task']}"]))
print(f"{t*1e3:.2f} {task['finished_at_ms'] - task['started_at_ms']}")
PY
    done
}
clone_times small >"$STATE/small.txt"
clone_times big >"$STATE/big.txt"

export_api=()
for _ in 1 2 3; do
    export_api+=("$(curl -s -o /dev/null -w '%{time_total}' --unix-socket "$SOCK" \
        "http://corral/v1/vms/big/export")")
done
export_cli=()
for i in 1 2 3; do
    s=$(date +%s.%N)
    C vm export big -o "$STATE/big$i.corral" >/dev/null 2>&1
    e=$(date +%s.%N)
    export_cli+=("$(python3 -c "print($e - $s)")")
done
SIZE=$(stat -c %s "$STATE/big1.corral")

python3 - "$STATE/small.txt" "$STATE/big.txt" "$SIZE" "${export_api[*]}" "${export_cli[*]}" <<'PY'
import sys, statistics
def load(p):
    rows = [tuple(map(float, l.split())) for l in open(p) if l.strip()]
    return [r[0] for r in rows], [r[1] for r in rows]
def q(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
s_rt, s_task = load(sys.argv[1]); b_rt, b_task = load(sys.argv[2])
api = [float(x) for x in sys.argv[4].split()]; cli = [float(x) for x in sys.argv[5].split()]
print("| measure | median | p95 / max | goal |")
print("|---|---|---|---|")
print(f"| linked clone, 1 GiB disk: API round trip | {statistics.median(s_rt):.1f} ms | {q(s_rt, .95):.1f} ms | <= 10 ms |")
print(f"| linked clone, 1 GiB disk: agent task time | {statistics.median(s_task):.0f} ms | {q(s_task, .95):.0f} ms | |")
print(f"| linked clone, 100 GiB disk: API round trip | {statistics.median(b_rt):.1f} ms | {q(b_rt, .95):.1f} ms | <= 10 ms |")
print(f"| linked clone, 100 GiB disk: agent task time | {statistics.median(b_task):.0f} ms | {q(b_task, .95):.0f} ms | |")
print(f"| export, empty 100 GiB disk: `GET .../export` to /dev/null | {statistics.median(api)*1e3:.0f} ms | {max(api)*1e3:.0f} ms | < 1 s |")
print(f"| export, empty 100 GiB disk: `corral vm export` to a file | {statistics.median(cli)*1e3:.0f} ms | {max(cli)*1e3:.0f} ms | < 1 s |")
print(f"| archive size of the empty 100 GiB disk | {int(sys.argv[3])} bytes | | |")
PY

DATA="${CORRAL_BENCH_DATA:-$HOME/.cache/corral-bench}"
if [ -f "$DATA/disk.raw" ] && [ -f "$DATA/allocated.bin" ]; then
    C vm create --name deb --disk ",from=$DATA/disk.raw,format=raw" --no-nics >/dev/null
    C vm export deb -o "$STATE/deb.corral" >/dev/null 2>&1
    zstd -q -f -T0 -1 -c "$DATA/allocated.bin" >"$STATE/alloc.zst"
    cat "$STATE/deb.corral" "$STATE/alloc.zst" >/dev/null
    imp=(); unz=()
    for i in $(seq "$IMPORT_RUNS"); do
        s=$(date +%s.%N)
        zstd -q -f -d -T0 -c "$STATE/alloc.zst" >"$STATE/alloc.out"
        e=$(date +%s.%N)
        unz+=("$(python3 -c "print($e - $s)")")
        rm -f "$STATE/alloc.out"
        s=$(date +%s.%N)
        C vm import "$STATE/deb.corral" --name "deb-i$i" >/dev/null 2>&1
        e=$(date +%s.%N)
        imp+=("$(python3 -c "print($e - $s)")")
        C vm delete "deb-i$i" >/dev/null
    done
    MIB=$(python3 -c "import os; print(os.path.getsize('$DATA/allocated.bin') / 2**20)")
    python3 - "$MIB" "${imp[*]}" "${unz[*]}" <<'PY'
import sys, statistics
mib = float(sys.argv[1]); imps = list(map(float, sys.argv[2].split())); unzs = list(map(float, sys.argv[3].split()))
imp, unz = min(imps), min(unzs)
n = len(imps)
print(f"| import through the agent, {mib:.0f} MiB allocated (best of {n}) | {imp:.2f} s ({mib/imp:.0f} MiB/s) | median {statistics.median(imps):.2f} s | |")
print(f"| `zstd -d -T0` of the same bytes (best of {n}, each right before an import) | {unz:.2f} s ({mib/unz:.0f} MiB/s) | median {statistics.median(unzs):.2f} s | |")
print(f"| agent import / zstd -d (best / median) | {unz/imp:.2f} x / {statistics.median(unzs)/statistics.median(imps):.2f} x | | >= 0.8 x |")
PY
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
fi
