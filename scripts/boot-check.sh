#!/usr/bin/env bash
# Boot every test-guest artifact under QEMU (TCG, q35) and check its console markers.
#
# Usage: scripts/boot-check.sh [CHECK...]   (default: all checks, in order)
# Checks: kernel reboot disk-virtio disk-ide ping-pair install-kernel install-http-ide install-iso
#         install-pxe install-fail
#
# Artifacts come from ${CORRAL_TEST_GUEST_DIR:-$HOME/.cache/corral/test-guest} (build them with
# scripts/build-test-guest.sh). Every wait has a timeout (CORRAL_BOOT_CHECK_TIMEOUT seconds, default
# 90); every QEMU started here is killed on exit. Prints one line per check with the observed times.
# Serial output of each VM is kept in $CORRAL_BOOT_CHECK_LOGS (default: a temporary directory, kept
# and printed on failure).
set -euo pipefail
shopt -s inherit_errexit

D=${CORRAL_TEST_GUEST_DIR:-$HOME/.cache/corral/test-guest}
D=${D%/}
TIMEOUT=${CORRAL_BOOT_CHECK_TIMEOUT:-90}
ALL=(kernel reboot disk-virtio disk-ide ping-pair install-kernel install-http-ide install-iso install-pxe
	install-fail)
CHECKS=("$@")
[ ${#CHECKS[@]} -gt 0 ] || CHECKS=("${ALL[@]}")

for f in vmlinuz initrd.img disk.qcow2 installer/tree/images/pxeboot/vmlinuz installer/installer.iso; do
	[ -s "$D/$f" ] || { echo "boot-check: $D/$f missing; run scripts/build-test-guest.sh" >&2; exit 1; }
done
for tool in qemu-system-x86_64 qemu-img socat busybox; do
	command -v "$tool" >/dev/null || { echo "boot-check: $tool not found" >&2; exit 1; }
done

LOGS=${CORRAL_BOOT_CHECK_LOGS:-$(mktemp -d /tmp/corral-boot-check.XXXXXX)}
mkdir -p "$LOGS"
declare -A PID=() T0=()
HTTPD_PID=
FAILED=0

cleanup() {
	local n
	for n in "${!PID[@]}"; do
		kill "${PID[$n]}" 2>/dev/null || true
	done
	[ -n "$HTTPD_PID" ] && kill "$HTTPD_PID" 2>/dev/null
	wait 2>/dev/null || true
	if [ "$FAILED" = 0 ] && [ -z "${CORRAL_BOOT_CHECK_LOGS:-}" ]; then rm -rf "$LOGS"; else
		echo "boot-check: serial logs in $LOGS" >&2
	fi
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# The machine every check uses; the lead's argv builder produces the same shape.
QEMU_BASE=(qemu-system-x86_64 -machine q35 -accel tcg -m 256 -smp 1 -nodefaults -no-user-config
	-display none -monitor none)

# start_vm NAME QEMU-ARGS...: serial to $LOGS/NAME.log, QMP on $LOGS/NAME.qmp
start_vm() {
	local name=$1
	shift
	rm -f "$LOGS/$name.log" "$LOGS/$name.qmp"
	echo "${QEMU_BASE[*]} -serial file:$LOGS/$name.log -qmp unix:$LOGS/$name.qmp,server=on,wait=off $*" \
		>"$LOGS/$name.argv"
	T0[$name]=$(now)
	"${QEMU_BASE[@]}" -serial "file:$LOGS/$name.log" -qmp "unix:$LOGS/$name.qmp,server=on,wait=off" \
		"$@" </dev/null >"$LOGS/$name.qemu.out" 2>&1 &
	PID[$name]=$!
}

# console NAME: the serial log without the CRs the guest's tty adds.
console() { tr -d '\r' 2>/dev/null <"$LOGS/$1.log" || true; }

# wait_marker NAME REGEX [COUNT]: wait until REGEX matched COUNT lines; prints seconds since start.
wait_marker() {
	local name=$1 re=$2 count=${3:-1} deadline n
	deadline=$(($(date +%s) + TIMEOUT))
	while :; do
		n=$(console "$name" | grep -cE "$re" || true)
		[ "${n:-0}" -ge "$count" ] && break
		if ! kill -0 "${PID[$name]}" 2>/dev/null; then
			n=$(console "$name" | grep -cE "$re" || true)
			[ "${n:-0}" -ge "$count" ] && break
			echo "boot-check: $name: QEMU exited before '$re' x$count" >&2
			cat "$LOGS/$name.qemu.out" >&2
			return 1
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "boot-check: $name: no '$re' x$count within ${TIMEOUT}s" >&2
			return 1
		fi
		sleep 0.05
	done
	elapsed "${T0[$name]}"
}

# qmp NAME COMMAND: run one QMP command (after capability negotiation).
qmp() {
	local name=$1 cmd=$2
	printf '{"execute":"qmp_capabilities"}\n{"execute":"%s"}\n' "$cmd" |
		socat -t 1 - "UNIX-CONNECT:$LOGS/$name.qmp" >"$LOGS/$name.qmp.out" 2>&1
}

# wait_exit NAME: wait for QEMU to exit by itself; prints seconds waited.
wait_exit() {
	local name=$1 t deadline
	t=$(now)
	deadline=$(($(date +%s) + TIMEOUT))
	while kill -0 "${PID[$name]}" 2>/dev/null; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "boot-check: $name: QEMU still running ${TIMEOUT}s later" >&2
			return 1
		fi
		sleep 0.05
	done
	wait "${PID[$name]}" 2>/dev/null || true
	unset "PID[$name]"
	elapsed "$t"
}

stop_vm() {
	local name=$1
	[ -n "${PID[$name]:-}" ] || return 0
	kill "${PID[$name]}" 2>/dev/null || true
	wait "${PID[$name]}" 2>/dev/null || true
	unset "PID[$name]"
}

expect_line() { # NAME REGEX
	console "$1" | grep -qE "$2" || { echo "boot-check: $1: no line matching '$2'" >&2; return 1; }
}

blank_disk() { qemu-img create -q -f qcow2 "$LOGS/$1.qcow2" 1G; }
overlay_disk() { qemu-img create -q -f qcow2 -F qcow2 -b "$D/disk.qcow2" "$LOGS/$1.qcow2"; }

VIRTIO_NIC=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0)
KERNEL=(-kernel "$D/vmlinuz" -initrd "$D/initrd.img")
IKERNEL=(-kernel "$D/installer/tree/images/pxeboot/vmlinuz" -initrd "$D/installer/tree/images/pxeboot/initrd.img")
virtio_disk() { echo "-drive file=$1,format=qcow2,if=none,id=d0 -device virtio-blk-pci,drive=d0,bootindex=$2"; }
ide_disk() { echo "-drive file=$1,format=qcow2,if=none,id=d0 -device ide-hd,drive=d0,bus=ide.0,bootindex=$2"; }

# boot_disk_check NAME DISK-ARGS...: boot from disk, marker, ACPI shutdown.
boot_disk_and_shutdown() {
	local name=$1 boot down
	shift
	start_vm "$name" "$@" "${VIRTIO_NIC[@]}"
	boot=$(wait_marker "$name" '^CORRAL-GUEST-READY')
	expect_line "$name" '^CORRAL-BOOT-SOURCE=disk'
	qmp "$name" system_powerdown
	down=$(wait_exit "$name")
	echo "marker ${boot}s, ACPI shutdown ${down}s"
}

check_kernel() {
	local boot down
	start_vm kernel "${KERNEL[@]}" -append "console=ttyS0" "${VIRTIO_NIC[@]}"
	boot=$(wait_marker kernel '^CORRAL-GUEST-READY')
	expect_line kernel '^CORRAL-BOOT-SOURCE=kernel'
	qmp kernel system_powerdown
	wait_marker kernel '^CORRAL-POWERDOWN' >/dev/null
	down=$(wait_exit kernel)
	echo "marker ${boot}s, ACPI shutdown ${down}s"
}

check_reboot() {
	local boot again
	start_vm reboot "${KERNEL[@]}" -append "console=ttyS0" "${VIRTIO_NIC[@]}"
	boot=$(wait_marker reboot '^CORRAL-GUEST-READY')
	qmp reboot system_reset
	again=$(wait_marker reboot '^CORRAL-GUEST-READY' 2)
	qmp reboot quit
	wait_exit reboot >/dev/null
	echo "marker ${boot}s, marker again ${again}s after start"
}

check_disk-virtio() {
	overlay_disk disk-virtio
	# shellcheck disable=SC2046
	boot_disk_and_shutdown disk-virtio $(virtio_disk "$LOGS/disk-virtio.qcow2" 1)
}

check_disk-ide() {
	overlay_disk disk-ide
	# shellcheck disable=SC2046
	boot_disk_and_shutdown disk-ide $(ide_disk "$LOGS/disk-ide.qcow2" 1)
}

# Two guests on one L2 segment (QEMU socket netdev, standing in for a bridge) reach each other.
check_ping-pair() {
	local port=17000 a b
	while busybox nc -z 127.0.0.1 "$port" 2>/dev/null; do port=$((port + 1)); done
	start_vm ping-a "${KERNEL[@]}" -append "console=ttyS0 corral.ip=10.0.0.2/24 corral.ping=10.0.0.3" \
		-netdev "socket,id=n0,listen=127.0.0.1:$port" -device virtio-net-pci,netdev=n0,mac=52:54:00:c0:00:02
	sleep 0.3
	start_vm ping-b "${KERNEL[@]}" -append "console=ttyS0 corral.ip=10.0.0.3/24 corral.ping=10.0.0.2" \
		-netdev "socket,id=n0,connect=127.0.0.1:$port" -device virtio-net-pci,netdev=n0,mac=52:54:00:c0:00:03
	a=$(wait_marker ping-a '^CORRAL-PING-OK 10\.0\.0\.3')
	b=$(wait_marker ping-b '^CORRAL-PING-OK 10\.0\.0\.2')
	expect_line ping-a '^CORRAL-IP eth0 10\.0\.0\.2/24'
	expect_line ping-a '^CORRAL-NIC eth0 52:54:00:c0:00:02'
	qmp ping-a system_powerdown
	qmp ping-b system_powerdown
	wait_exit ping-a >/dev/null
	wait_exit ping-b >/dev/null
	echo "ping ok ${a}s / ${b}s after start"
}

# Installer via -kernel/-initrd (as the agent does for install trees), payload from the initrd,
# then the installed disk boots and shows the stamped install id.
check_install-kernel() {
	local inst done_at boot
	blank_disk install-kernel
	# shellcheck disable=SC2046
	start_vm install-kernel-run "${IKERNEL[@]}" -append "console=ttyS0 corral.install corral.install.id=check-kernel" \
		$(virtio_disk "$LOGS/install-kernel.qcow2" 1) "${VIRTIO_NIC[@]}"
	done_at=$(wait_marker install-kernel-run '^CORRAL-INSTALL-DONE')
	expect_line install-kernel-run '^CORRAL-INSTALL-SOURCE=initrd'
	inst=$(wait_exit install-kernel-run)
	# shellcheck disable=SC2046
	start_vm install-kernel-boot $(virtio_disk "$LOGS/install-kernel.qcow2" 1) "${VIRTIO_NIC[@]}"
	boot=$(wait_marker install-kernel-boot '^CORRAL-GUEST-READY')
	expect_line install-kernel-boot '^CORRAL-BOOT-SOURCE=disk'
	expect_line install-kernel-boot '^CORRAL-INSTALL-ID=check-kernel$'
	qmp install-kernel-boot system_powerdown
	wait_exit install-kernel-boot >/dev/null
	echo "install done ${done_at}s (+${inst}s to exit), installed disk marker ${boot}s"
}

# Tree served over HTTP (busybox httpd), installer on emulated hardware (SATA/AHCI disk + e1000)
# fetching the payload from the tree; then the disk boots on IDE and, switched, on virtio.
check_install-http-ide() {
	local port=18080 done_at boot1 boot2
	while busybox nc -z 127.0.0.1 "$port" 2>/dev/null; do port=$((port + 1)); done
	busybox httpd -f -p "127.0.0.1:$port" -h "$D/installer/tree" &
	HTTPD_PID=$!
	blank_disk install-http
	# shellcheck disable=SC2046
	start_vm install-http-run "${IKERNEL[@]}" \
		-append "console=ttyS0 corral.install=http://10.0.2.2:$port/ corral.install.id=check-http" \
		$(ide_disk "$LOGS/install-http.qcow2" 1) -netdev user,id=n0 -device e1000,netdev=n0
	done_at=$(wait_marker install-http-run '^CORRAL-INSTALL-DONE')
	expect_line install-http-run "^CORRAL-INSTALL-SOURCE=http://10.0.2.2:$port/images/disk.img.gz"
	expect_line install-http-run '^CORRAL-INSTALL-TARGET=/dev/sda'
	wait_exit install-http-run >/dev/null
	kill "$HTTPD_PID" 2>/dev/null || true
	wait "$HTTPD_PID" 2>/dev/null || true
	HTTPD_PID=
	# shellcheck disable=SC2046
	start_vm install-http-boot-ide $(ide_disk "$LOGS/install-http.qcow2" 1) -netdev user,id=n0 -device e1000,netdev=n0
	boot1=$(wait_marker install-http-boot-ide '^CORRAL-GUEST-READY')
	expect_line install-http-boot-ide '^CORRAL-INSTALL-ID=check-http$'
	qmp install-http-boot-ide system_powerdown
	wait_exit install-http-boot-ide >/dev/null
	# shellcheck disable=SC2046
	start_vm install-http-boot-virtio $(virtio_disk "$LOGS/install-http.qcow2" 1) "${VIRTIO_NIC[@]}"
	boot2=$(wait_marker install-http-boot-virtio '^CORRAL-GUEST-READY')
	expect_line install-http-boot-virtio '^CORRAL-INSTALL-ID=check-http$'
	qmp install-http-boot-virtio system_powerdown
	wait_exit install-http-boot-virtio >/dev/null
	echo "install done ${done_at}s, installed disk marker ${boot1}s (ide), ${boot2}s (virtio)"
}

# Installer CD (El Torito/isolinux) on the q35 AHCI bus; payload read from the CD.
check_install-iso() {
	local done_at boot
	blank_disk install-iso
	# shellcheck disable=SC2046
	start_vm install-iso-run $(virtio_disk "$LOGS/install-iso.qcow2" 2) \
		-drive "file=$D/installer/installer.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on" \
		-device ide-cd,drive=cd0,bus=ide.1,bootindex=1 "${VIRTIO_NIC[@]}"
	done_at=$(wait_marker install-iso-run '^CORRAL-INSTALL-DONE')
	expect_line install-iso-run '^CORRAL-BOOT-SOURCE=cdrom'
	expect_line install-iso-run '^CORRAL-INSTALL-SOURCE=cdrom:/dev/sr0'
	wait_exit install-iso-run >/dev/null
	# shellcheck disable=SC2046
	start_vm install-iso-boot $(virtio_disk "$LOGS/install-iso.qcow2" 2) \
		-drive if=none,id=cd0,media=cdrom,readonly=on -device ide-cd,drive=cd0,bus=ide.1,bootindex=1 \
		"${VIRTIO_NIC[@]}"
	boot=$(wait_marker install-iso-boot '^CORRAL-GUEST-READY')
	expect_line install-iso-boot '^CORRAL-BOOT-SOURCE=disk'
	qmp install-iso-boot system_powerdown
	wait_exit install-iso-boot >/dev/null
	echo "install done ${done_at}s, installed disk marker ${boot}s (empty CD drive first in boot order)"
}

# PXE: the NIC's iPXE ROM loads boot.ipxe, vmlinuz and initrd.img from QEMU's user-mode TFTP.
check_install-pxe() {
	local done_at boot
	blank_disk install-pxe
	# shellcheck disable=SC2046
	start_vm install-pxe-run $(virtio_disk "$LOGS/install-pxe.qcow2" 2) \
		-netdev "user,id=n0,tftp=$D/installer/pxe,bootfile=boot.ipxe" -device virtio-net-pci,netdev=n0,bootindex=1
	done_at=$(wait_marker install-pxe-run '^CORRAL-INSTALL-DONE')
	expect_line install-pxe-run '^CORRAL-BOOT-SOURCE=pxe'
	wait_exit install-pxe-run >/dev/null
	# shellcheck disable=SC2046
	start_vm install-pxe-boot $(virtio_disk "$LOGS/install-pxe.qcow2" 1) "${VIRTIO_NIC[@]}"
	boot=$(wait_marker install-pxe-boot '^CORRAL-GUEST-READY')
	qmp install-pxe-boot system_powerdown
	wait_exit install-pxe-boot >/dev/null
	echo "install done ${done_at}s, installed disk marker ${boot}s"
}

# A payload URL that cannot be fetched: the installer says so and stays up (no power-off, so an
# agent does not mistake it for a finished install).
check_install-fail() {
	local t
	blank_disk install-fail
	# shellcheck disable=SC2046
	start_vm install-fail "${IKERNEL[@]}" -append "console=ttyS0 corral.install corral.payload=http://10.0.2.2:9/none.img.gz" \
		$(virtio_disk "$LOGS/install-fail.qcow2" 1) "${VIRTIO_NIC[@]}"
	t=$(wait_marker install-fail '^CORRAL-INSTALL-FAILED cannot fetch')
	sleep 1
	kill -0 "${PID[install-fail]}" || { echo "boot-check: install-fail: guest powered off" >&2; return 1; }
	stop_vm install-fail
	echo "failure reported ${t}s"
}

for c in "${CHECKS[@]}"; do
	declare -F "check_$c" >/dev/null || { echo "boot-check: unknown check $c (known: ${ALL[*]})" >&2; exit 2; }
done
kill_vms() {
	local n
	for n in "${!PID[@]}"; do stop_vm "$n"; done
	if [ -n "$HTTPD_PID" ]; then kill "$HTTPD_PID" 2>/dev/null || true; fi
}
for c in "${CHECKS[@]}"; do
	# Each check runs in its own subshell with errexit on; its VMs die with it.
	set +e
	(
		set -e
		trap kill_vms EXIT
		"check_$c"
	) >"$LOGS/$c.result"
	rc=$?
	set -e
	if [ "$rc" = 0 ]; then
		printf 'PASS %-18s %s\n' "$c" "$(cat "$LOGS/$c.result")"
	else
		printf 'FAIL %-18s %s\n' "$c" "$(cat "$LOGS/$c.result")"
		FAILED=1
	fi
done
exit "$FAILED"
