#!/usr/bin/env bash
# The main job: install what is missing, build corral, start the host agent with its embedded
# defaults, and start a demo VM from the project's test guest. The agent runs in the
# foreground; Ctrl-C stops it (the demo VM keeps running, as guests outlive the agent).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-rust.sh
scripts/install-deps.sh --test
GUEST=$(scripts/build-test-guest.sh --quiet)
cargo build --release -p corral
BIN=$PWD/target/release/corral

STATE=${CORRAL_STATE_DIR:-}
ARGS=()
[[ -n "$STATE" ]] && ARGS+=(--state-dir "$STATE")
[[ -z "$STATE" ]] && STATE=$([[ $(id -u) -eq 0 ]] && echo /var/lib/corral || echo "${XDG_STATE_HOME:-$HOME/.local/state}/corral")
mkdir -p "$STATE"
SOCK="$STATE/corral.sock"
export CORRAL_CONNECT="$SOCK"

"$BIN" serve "${ARGS[@]}" --probe-kernel "$GUEST/vmlinuz" --probe-initrd "$GUEST/initrd.img" "$@" &
AGENT=$!
trap 'kill $AGENT 2>/dev/null; wait $AGENT 2>/dev/null' INT TERM
for _ in $(seq 100); do [[ -S "$SOCK" ]] && "$BIN" host info >/dev/null 2>&1 && break; sleep 0.2; done
"$BIN" host info

# The demo VM boots from its own disk: a copy of the test guest's bootable image.
if ! "$BIN" vm show demo >/dev/null 2>&1; then
  "$BIN" vm create --name demo --description "corral demo VM (test guest)" --memory 256M \
    --disk ",from=$GUEST/disk.qcow2" --nic default
fi
[[ $("$BIN" --json vm show demo | grep -o '"power_state": *"[a-z]*"') == *running* ]] || "$BIN" vm start demo
for _ in $(seq 120); do "$BIN" vm console demo --log 2>/dev/null | grep -q CORRAL-GUEST-READY && break; sleep 0.5; done
"$BIN" vm list
cat <<TXT

The demo VM is running. In another terminal:
  export CORRAL_CONNECT=$SOCK
  $BIN vm console demo        # interactive serial console (Ctrl-] detaches)
  $BIN vm console demo --log  # what it printed so far
  $BIN vm shutdown demo       # ACPI power button
The agent runs in this terminal; Ctrl-C stops it (VMs keep running).
TXT
wait $AGENT
