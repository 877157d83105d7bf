#!/usr/bin/env bash
# The issue-2 host-agent benchmark, in one run on one machine with one guest:
#   1. start overhead: `POST /v1/vms/NAME/actions/start` (returns once QMP `cont` is done, i.e.
#      the vCPUs run) against raw `qemu-system-x86_64` with the same argv until QMP answers;
#   2. `corral vm start` against `virsh start` (libvirt, domain type qemu), CLI wall time both;
#   3. idle agent RSS, fresh and with 1,000 defined VMs;
#   4. `GET /v1/vms` p50/p95 with 1,000 defined VMs, over the API's unix socket.
# Prints a summary table and writes it under "## Host agent (issue 2)" in docs/benchmarks.md.
#
# Usage: scripts/bench-agent.sh [--runs N (20)] [--vms N (1000)] [--requests N (200)] [--no-libvirt]
#                               [--no-doc] [--no-build]
# libvirt is measured by default: installed with apt-get when missing, libvirtd/virtlogd
# started in the background when not running (and stopped again afterwards).
# Findings in scripts/bench/agent-notes.md are appended to the doc section; to see where a
# start spends its time, run scripts/bench/profile_start.py against an agent.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=20
VMS=1000
REQUESTS=200
LIBVIRT=1
DOC=1
BUILD=1
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --vms) VMS=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        --no-libvirt) LIBVIRT=0; shift ;;
        --no-doc) DOC=0; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

GUEST_DIR=${CORRAL_TEST_GUEST_DIR:-$HOME/.cache/corral/test-guest}
if [ ! -f "$GUEST_DIR/manifest.env" ]; then
    echo "no test guest in $GUEST_DIR: run scripts/build-test-guest.sh first" >&2
    exit 1
fi
# manifest.env is KEY=VALUE lines, values unquoted (some contain spaces): read, do not source.
manifest() { sed -n "s/^$1=//p" "$GUEST_DIR/manifest.env" | tail -1; }
KERNEL=$(manifest CORRAL_TEST_GUEST_KERNEL)
INITRD=$(manifest CORRAL_TEST_GUEST_INITRD)
CMDLINE="console=ttyS0 no_timer_check"
MEMORY_MIB=512
VCPUS=1
BENCH="python3 $ROOT/scripts/bench/bench.py"

say() { printf '\n== %s\n' "$*"; }

if [ "$BUILD" = 1 ]; then
    say "building release"
    (cd "$ROOT" && cargo build --release -p corral)
fi
CORRAL=$ROOT/target/release/corral
[ -x "$CORRAL" ] || { echo "no $CORRAL (build failed?)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/corral-bench.XXXXXX)
RESULTS=$WORK/results.json
STATE=$WORK/state
SOCK=$STATE/corral.sock
AGENT_PID=
STARTED_LIBVIRTD=
STARTED_VIRTLOGD=
DOMAIN=corral-bench-$$
DOMAIN_DEFINED=
LV_BOOT=
KVM_MODE_ORIG=

stop_pid() { # pid, seconds: TERM, wait, then KILL
    local pid=$1 t=$2 i
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < t * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop_agent() {
    if [ -n "$AGENT_PID" ]; then
        stop_pid "$AGENT_PID" 10
        AGENT_PID=
    fi
    # QEMUs outlive the agent by design: stop the ones this run left behind, by pid file.
    local pf pid
    for pf in "$STATE"/run/*/qemu.pid "$WORK"/raw/*.pid; do
        [ -f "$pf" ] || continue
        pid=$(cat "$pf" 2>/dev/null || true)
        if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$WORK"; then
            stop_pid "$pid" 5
        fi
    done
}

cleanup() {
    set +e
    stop_agent
    if [ -n "$DOMAIN_DEFINED" ]; then
        timeout 30 virsh -q -c qemu:///system destroy "$DOMAIN" >/dev/null 2>&1
        timeout 30 virsh -q -c qemu:///system undefine "$DOMAIN" >/dev/null 2>&1
    fi
    [ -n "$LV_BOOT" ] && rm -rf "$LV_BOOT"
    [ -n "$STARTED_LIBVIRTD" ] && stop_pid "$STARTED_LIBVIRTD" 15
    [ -n "$STARTED_VIRTLOGD" ] && stop_pid "$STARTED_VIRTLOGD" 5
    if [ -n "$KVM_MODE_ORIG" ]; then
        chown "${KVM_MODE_ORIG#* }" /dev/kvm
        chmod "${KVM_MODE_ORIG%% *}" /dev/kvm
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_agent() {
    rm -rf "$STATE"
    mkdir -p "$STATE"
    "$CORRAL" serve --state-dir "$STATE" --accel tcg >"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        if curl -sf --max-time 2 --unix-socket "$SOCK" http://localhost/v1/host >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$AGENT_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "agent did not answer within 30 s:" >&2
    tail -20 "$WORK/agent.log" >&2
    exit 1
}

host_desc() {
    local cpu
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
    echo "$(nproc) cores ($cpu), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), TCG, $(qemu-system-x86_64 --version | head -1)"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 3a. idle RSS on a fresh state dir ---------------------------------------------------------
say "idle agent RSS (fresh state dir)"
start_agent
sleep 2
$BENCH rss --results "$RESULTS" --pid "$AGENT_PID" --key rss_idle

# --- 1. start overhead -------------------------------------------------------------------------
say "start overhead: corral API start vs raw QEMU spawn until QMP answers ($RUNS runs each, alternating)"
"$CORRAL" --connect "$SOCK" vm create --name bench-start --vcpus "$VCPUS" --memory "${MEMORY_MIB}M" \
    --kernel "$KERNEL" --initrd "$INITRD" --cmdline "$CMDLINE" >/dev/null
VM_ID=$(curl -sf --max-time 10 --unix-socket "$SOCK" http://localhost/v1/vms/bench-start |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
$BENCH start-overhead --results "$RESULTS" --sock "$SOCK" --name bench-start --runs "$RUNS" \
    --qemu-log "$STATE/run/$VM_ID/qemu.log" --scratch "$WORK/raw"

# --- 2. libvirt --------------------------------------------------------------------------------
libvirt_ready() { timeout 20 virsh -q -c qemu:///system uri >/dev/null 2>&1; }
skip_libvirt() {
    echo "libvirt skipped: $1" >&2
    python3 - "$RESULTS" "$1" <<'EOF'
import json, sys
p, why = sys.argv[1], sys.argv[2]
d = json.load(open(p)); d["virsh_skipped"] = why; json.dump(d, open(p, "w"), indent=2)
EOF
}
run_libvirt() {
    if ! command -v virsh >/dev/null || [ ! -x /usr/sbin/libvirtd ]; then
        echo "installing libvirt (apt-get install libvirt-daemon-system libvirt-clients)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu >"$WORK/apt.log" 2>&1 ||
            { skip_libvirt "apt-get install failed (see apt output)"; return 0; }
    fi
    # Debian's udev rule makes /dev/kvm root:kvm 0660; without udev it is root-only, and libvirt
    # then throws its QEMU capability cache away on every start ("KVM was enabled when probing,
    # but it is not available now"), adding ~4 s to each `virsh start`. Restored on exit.
    if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
        KVM_MODE_ORIG="$(stat -c '%a %U:%G' /dev/kvm)"
        chgrp kvm /dev/kvm && chmod 660 /dev/kvm
    fi
    if ! libvirt_ready; then
        if ! pgrep -x virtlogd >/dev/null; then
            /usr/sbin/virtlogd -d && STARTED_VIRTLOGD=$(pgrep -nx virtlogd)
        fi
        if ! pgrep -x libvirtd >/dev/null; then
            /usr/sbin/libvirtd -d && sleep 1 && STARTED_LIBVIRTD=$(pgrep -nx libvirtd)
        fi
        local i
        for ((i = 0; i < 30; i++)); do libvirt_ready && break; sleep 1; done
        libvirt_ready || { skip_libvirt "libvirtd did not answer within 30 s"; return 0; }
    fi
    # libvirt runs QEMU as libvirt-qemu, which cannot read under /root: copy kernel and initrd.
    LV_BOOT=/var/lib/libvirt/boot/$DOMAIN
    mkdir -p "$LV_BOOT"
    cp "$KERNEL" "$LV_BOOT/vmlinuz"
    cp "$INITRD" "$LV_BOOT/initrd.img"
    # Same shape as corral's VM: q35, TCG, -cpu max, same memory/vCPUs/kernel/initrd/cmdline,
    # one virtio NIC on user-mode networking, serial console, VNC.
    cat >"$WORK/domain.xml" <<EOF
<domain type='qemu'>
  <name>$DOMAIN</name>
  <memory unit='MiB'>$MEMORY_MIB</memory>
  <vcpu>$VCPUS</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$LV_BOOT/vmlinuz</kernel>
    <initrd>$LV_BOOT/initrd.img</initrd>
    <cmdline>$CMDLINE</cmdline>
  </os>
  <cpu mode='maximum'/>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' listen='127.0.0.1' autoport='yes'/>
  </devices>
</domain>
EOF
    # The first define may probe QEMU's capabilities (tens of seconds under TCG).
    timeout 180 virsh -q -c qemu:///system define "$WORK/domain.xml" >/dev/null ||
        { skip_libvirt "virsh define failed"; return 0; }
    DOMAIN_DEFINED=1
}
say "corral vm start (CLI wall) vs virsh start ($RUNS runs each, alternating)"
if [ "$LIBVIRT" = 1 ]; then
    run_libvirt
else
    skip_libvirt "--no-libvirt"
fi
$BENCH libvirt-compare --results "$RESULTS" --sock "$SOCK" --name bench-start --corral "$CORRAL" \
    --runs "$RUNS" ${DOMAIN_DEFINED:+--domain "$DOMAIN"}
if [ -n "$DOMAIN_DEFINED" ]; then
    timeout 30 virsh -q -c qemu:///system undefine "$DOMAIN" >/dev/null && DOMAIN_DEFINED=
fi

# --- 4 and 3b. 1,000 defined VMs ---------------------------------------------------------------
say "defining $VMS halted VMs through the API"
$BENCH create-many --results "$RESULTS" --sock "$SOCK" --count "$VMS" --parallel 4 \
    --kernel "$KERNEL" --initrd "$INITRD" --cmdline "$CMDLINE"
sleep 2
$BENCH rss --results "$RESULTS" --pid "$AGENT_PID" --key rss_1000
say "GET /v1/vms latency with $VMS VMs ($REQUESTS requests, one connection)"
$BENCH list-latency --results "$RESULTS" --sock "$SOCK" --requests "$REQUESTS" --key list_1000
stop_agent

# --- summary -----------------------------------------------------------------------------------
say "summary"
COMMAND="scripts/bench-agent.sh${ORIG_ARGS[*]:+ ${ORIG_ARGS[*]}}"
REPORT_ARGS=(--results "$RESULTS" --command "$COMMAND" --machine "$(host_desc)"
    --guest-cmdline "$CMDLINE" --load "Load average at start: $LOAD_START (other work shares the cores).")
[ -f "$ROOT/scripts/bench/agent-notes.md" ] && REPORT_ARGS+=(--notes "$ROOT/scripts/bench/agent-notes.md")
[ "$DOC" = 1 ] && REPORT_ARGS+=(--doc "$ROOT/docs/benchmarks.md")
$BENCH report "${REPORT_ARGS[@]}"
