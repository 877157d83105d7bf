#!/usr/bin/env bash
# Benchmark of the web console (one command, outside the test suite): an agent on a
# temporary state directory with VM_COUNT diskless VMs (default 1000) plus one probe VM, then
# web/tests/bench.mjs in headless Chromium: first paint of the tree, filter keystroke
# latency, event-to-row latency, and graphical console open (ticket included) to first frame.
# Uses the dev build (no release builds on the shared machines); the figures are the page's
# and the event path's, the agent's own speed is benchmarked elsewhere. Results: one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
VM_COUNT=${VM_COUNT:-1000}
# The page is embedded at compile time: build it first.
scripts/build-web.sh >/dev/null
cargo build -q -p corral
bin=target/debug/corral
state=$(mktemp -d /tmp/corral-bench-console.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --state-dir "$state" --accel tcg --no-autostart --listen "127.0.0.1:$port" >"$state/agent.log" 2>&1 &
agent=$!
cleanup() {
  kill "$agent" 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
  for p in "$state"/run/*/qemu.pid; do [[ -f "$p" ]] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT
for _ in $(seq 100); do [[ -S "$state/corral.sock" ]] && break; sleep 0.2; done
[[ -S "$state/corral.sock" ]] || { echo "the agent did not start; log:" >&2; cat "$state/agent.log" >&2; exit 1; }
create() {
  curl -sf --unix-socket "$state/corral.sock" -X POST http://corral/v1/vms \
    -H 'Content-Type: application/json' \
    -d "{\"name\":\"$1\",\"memory_bytes\":67108864,\"disks\":[],\"nics\":[]}" >/dev/null
}
start=$(date +%s.%N)
for i in $(seq -f '%04g' 1 "$VM_COUNT"); do create "vm$i"; done
create probe
echo "created $((VM_COUNT + 1)) VMs in $(echo "$(date +%s.%N) - $start" | bc) s" >&2
gz=$(cat web/dist/app.js web/dist/app.css web/dist/index.html | gzip -9n | wc -c)
echo "bundle: $gz bytes gzip" >&2
cd web
CORRAL_URL="https://127.0.0.1:$port" CORRAL_TOKEN="$(cat "$state/token")" VM_COUNT=$((VM_COUNT + 1)) \
  PROBE_VM=probe timeout 600 node tests/bench.mjs
