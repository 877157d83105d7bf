#!/usr/bin/env bash
# Issue-12 P2V transfer benchmark (release build, on this host, needs root and loop devices):
#   a 10 GiB disk (a loop device over a sparse file) holding an ext4 with about 2 GiB of real
#   files (copies of /usr trees), mounted; `corral p2v --source-disk` copies it to an agent
#   on 127.0.0.1 over HTTPS while it is mounted, with 50 MiB written into it before the
#   final pass (--before-final-pass). Reported against the same run's reference,
#   `tar -cf - | zstd -T0 -1` of the same tree piped over TLS to a sink on 127.0.0.1 (socat):
#   - bytes on the wire / used data        (goal <= 1.05)
#   - p2v throughput / reference throughput (goal >= 0.8), both over the used data
#   - the final pass's duration (goal <= 10 s) and what it sent.
# Page caches are dropped before each measured run. Usage:
#   scripts/bench-p2v.sh [--runs N (3)] [--data-mib N (2048)] [--no-build]
set -euo pipefail
[ -n "${BENCH_TRACE:-}" ] && set -x
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3
DATA_MIB=2048
BUILD=1
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) RUNS=$2; shift 2 ;;
	--data-mib) DATA_MIB=$2; shift 2 ;;
	--no-build) BUILD=0; shift ;;
	-h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown argument: $1" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "bench-p2v: needs root (loop devices, mount, drop_caches)" >&2; exit 2; }
for t in socat zstd openssl losetup mkfs.ext4; do
	command -v "$t" >/dev/null || { echo "bench-p2v: $t is missing" >&2; exit 2; }
done
[ "$BUILD" = 1 ] && (cd "$ROOT" && cargo build --release -p corral -q)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/corral"
WORK=$(mktemp -d /tmp/corral-bench-p2v.XXXXXX)
LOOP= AGENT= SINK=
cleanup() {
	[ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null
	[ -n "$SINK" ] && kill "$SINK" 2>/dev/null
	mountpoint -q "$WORK/mnt" && umount "$WORK/mnt"
	[ -n "$LOOP" ] && losetup -d "$LOOP"
	rm -rf "$WORK"
}
trap cleanup EXIT
echo "load average at the start: $(cut -d" " -f1-3 /proc/loadavg)"

# The source: 10 GiB, ext4, about DATA_MIB MiB of files.
truncate -s 10G "$WORK/disk.img"
LOOP=$(losetup -f --show "$WORK/disk.img")
mkfs.ext4 -q "$LOOP"
mkdir -p "$WORK/mnt"
mount "$LOOP" "$WORK/mnt"
# Real files (compressible and not, like a server's): the first DATA_MIB MiB of a tar of
# /usr's trees. The last file may be cut short; that does not matter here.
find /usr/share /usr/bin /usr/lib -xdev -type f -size -64M -print0 2>/dev/null |
	tar --null -T - -cf - 2>/dev/null | head -c $((DATA_MIB << 20)) |
	tar -C "$WORK/mnt" -xf - 2>/dev/null || true
sync
USED=$(df -B1 --output=used "$WORK/mnt" | tail -1 | tr -d ' ')
echo "source: 10 GiB disk, $((USED >> 20)) MiB used ($(find "$WORK/mnt" -type f | wc -l) files)"

# The agent and the reference's TLS sink.
STATE="$WORK/state"
mkdir -p "$STATE"
PORT=$((20000 + RANDOM % 20000))
"$BIN" serve --state-dir "$STATE" --accel tcg --listen "127.0.0.1:$PORT" >"$WORK/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 100); do [ -S "$STATE/corral.sock" ] && break; sleep 0.1; done
FP=$("$BIN" --connect "$STATE/corral.sock" --json host info | sed -n 's/.*"cert_sha256": *"\([^"]*\)".*/\1/p')
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/sink.key" -out "$WORK/sink.crt" -days 1 -subj /CN=sink 2>/dev/null
SINK_PORT=$((PORT + 1))
socat -u OPENSSL-LISTEN:$SINK_PORT,reuseaddr,fork,cert="$WORK/sink.crt",key="$WORK/sink.key",verify=0 OPEN:/dev/null &
SINK=$!
sleep 0.5

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

printf '%-4s %10s %10s %8s %9s %9s %9s %7s %7s %9s %9s\n' run used_MiB wire_MiB wire/used p2v_s ref_s p2v_MB/s ref_MB/s ratio final_s final_MiB
for r in $(seq "$RUNS"); do
	# The reference: the same files, tar | zstd -T0 -1, over TLS to the sink.
	drop
	t0=$(now)
	tar -C "$WORK/mnt" -cf - . | zstd -q -T0 -1 | socat -u - OPENSSL:127.0.0.1:$SINK_PORT,verify=0
	ref=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')

	drop
	out=$("$BIN" --json p2v --source-disk "$LOOP" --to "https://127.0.0.1:$PORT" --token-file "$STATE/token" \
		--fingerprint "$FP" --name "bench$r" --no-wait \
		--before-final-pass "dd if=/dev/urandom of=$WORK/mnt/changed-$r bs=1M count=50 status=none" 2>"$WORK/p2v.err") || { cat "$WORK/p2v.err" >&2; exit 1; }
	field() { echo "$out" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
	wire=$(field wire_bytes)
	first=$(awk -v ms="$(field first_pass_ms)" 'BEGIN { print ms / 1000 }')
	final=$(awk -v ms="$(field final_pass_ms)" 'BEGIN { print ms / 1000 }')
	task=$(echo "$out" | sed -n 's/.*"task":"\([^"]*\)".*/\1/p')
	"$BIN" --connect "$STATE/corral.sock" task cancel "$task" >/dev/null 2>&1 || true
	printf '%-4s %10d %10d %8s %9.2f %9.2f %9.0f %7.0f %7s %9.2f %9d\n' "$r" $((USED >> 20)) $((wire >> 20)) \
		"$(ratio "$wire" "$USED")" "$first" "$ref" "$(ratio "$USED" "${first}e6")" "$(ratio "$USED" "${ref}e6")" \
		"$(ratio "$ref" "$first")" "$final" $(($(field final_pass_bytes) >> 20))
	rm -f "$WORK/mnt/changed-$r"
	sync
done
echo "goals: wire/used <= 1.05, ratio (p2v throughput / reference) >= 0.8, final pass <= 10 s"
