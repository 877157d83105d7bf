#!/usr/bin/env bash
# Build the "physical server" the P2V tests convert (issue 12), from Debian packages, cached
# outside the tree: a Debian 12 system as an old server is set up, not as a cloud image.
#
# Usage: scripts/build-p2v-source.sh [--force] [--check] [--quiet]
#   --force  rebuild even when the cache is up to date
#   --check  boot the image under QEMU/TCG (SATA disk, e1000 NIC) until it reports ready
#   --quiet  print only the cache directory on stdout
#
# Output directory: ${CORRAL_P2V_SOURCE_DIR:-$HOME/.cache/corral/p2v-source}
#   disk.img      2 GiB raw BIOS disk, MBR:
#                   sda1  1.5 GiB ext4, the root file system, named /dev/sda1 in /etc/fstab and on
#                         the kernel command line (no UUIDs: the conversion must fix that)
#                   sda2  LVM PV of volume group srcvg; LV srcvg/var (400 MiB ext4) is /var
#                 GRUB 2 (i386-pc) in the MBR and its gap, /boot/grub/grub.cfg on sda1;
#                 systemd, Debian's linux-image-amd64, an initramfs holding only the modules of
#                 this hardware (MODULES=list: ahci, sd_mod, ext4, e1000; no virtio), ifupdown
#                 with the e1000 NIC by its kernel name (ens5 at PCI slot 5) on DHCP, lvm2,
#                 hostname oldweb, root password "corral" on the serial console.
#   manifest.env  KEY=VALUE: paths, kernel version, the NIC's name, the source's sha256
#   stamp         cache key (sha256 of this script and the suite)
#
# The system prints, on ttyS0, once multi-user.target is reached and its network is up:
#   CORRAL-SOURCE-READY host=<hostname> nic=<ifname> ip=<address/prefix> root=<root device>
# (from corral-source-ready.service), so a test sees both the boot and the DHCP lease.
#
# Needs root (debootstrap, chroot, a loop device for the LVM metadata: no mounts, no
# device-mapper: the file systems are made from directories with mke2fs -d and written in
# place, and the LV is created with --driverloaded n). Environment: CORRAL_P2V_SOURCE_DIR,
# CORRAL_P2V_MIRROR (default http://deb.debian.org/debian). See docs/p2v.md.
set -euo pipefail
shopt -s inherit_errexit

OUT=${CORRAL_P2V_SOURCE_DIR:-$HOME/.cache/corral/p2v-source}
OUT=${OUT%/}
MIRROR=${CORRAL_P2V_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
NIC=ens5
NIC_SLOT=5
ROOT_MIB=1536
PV_MIB=512
VAR_MIB=400
INCLUDE=systemd-sysv,udev,linux-image-amd64,initramfs-tools,grub-pc-bin,grub2-common,lvm2,ifupdown,isc-dhcp-client,iproute2,e2fsprogs,kmod,procps,netbase
PACKAGES=(debootstrap lvm2 grub-pc-bin fdisk e2fsprogs qemu-system-x86 qemu-utils)

FORCE=0 CHECK=0 QUIET=0
for a in "$@"; do
	case "$a" in
	--force) FORCE=1 ;;
	--check) CHECK=1 ;;
	--quiet) QUIET=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "unknown argument: $a (see --help)" >&2
		exit 2
		;;
	esac
done
say() { [ "$QUIET" = 1 ] || echo "p2v-source: $*" >&2; }

boot_check() {
	local log=$1 timeout=${2:-420}
	rm -f "$log"
	say "booting the source under QEMU/TCG (SATA, e1000 at slot $NIC_SLOT), up to ${timeout}s"
	timeout "$timeout" qemu-system-x86_64 -machine pc -accel tcg -m 1024 -nographic -no-reboot \
		-drive file="$OUT/disk.img",if=none,id=d0,format=raw,snapshot=on \
		-device ahci,id=sata -device ide-hd,drive=d0,bus=sata.0 \
		-netdev user,id=n0 -device e1000,netdev=n0,addr=$NIC_SLOT \
		-serial file:"$log" -monitor none -display none &
	local qemu=$! deadline=$((SECONDS + timeout))
	while [ $SECONDS -lt $deadline ]; do
		if grep -q "CORRAL-SOURCE-READY" "$log" 2>/dev/null; then
			kill "$qemu" 2>/dev/null || true
			wait "$qemu" 2>/dev/null || true
			grep -a "CORRAL-SOURCE-READY" "$log" | tail -1 >&2
			return 0
		fi
		kill -0 "$qemu" 2>/dev/null || break
		sleep 2
	done
	kill "$qemu" 2>/dev/null || true
	wait "$qemu" 2>/dev/null || true
	echo "p2v-source: the source did not report ready; its console:" >&2
	tail -n 40 "$log" >&2 || true
	return 1
}

STAMP=$( (cat "$0"; echo "$SUITE $MIRROR") | sha256sum | cut -c1-16)
if [ "$FORCE" = 0 ] && [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] && [ -f "$OUT/disk.img" ]; then
	say "up to date in $OUT"
	if [ "$CHECK" = 1 ]; then boot_check "$OUT/check.log"; fi
	[ "$QUIET" = 1 ] && echo "$OUT"
	exit 0
fi

[ "$(id -u)" = 0 ] || { echo "p2v-source: needs root (debootstrap, chroot, a loop device)" >&2; exit 1; }
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/corral-p2v-source.XXXXXX")
LOOP=""
cleanup() {
	for m in proc sys dev; do umount "$WORK/root/$m" 2>/dev/null || true; done
	[ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
ROOT=$WORK/root

say "debootstrap $SUITE from $MIRROR (a few minutes)"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
	{ tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }

say "configuring the system"
echo oldweb >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\toldweb\n' >"$ROOT/etc/hosts"
cat >"$ROOT/etc/fstab" <<'EOF'
# <file system>        <mount point> <type> <options>          <dump> <pass>
/dev/sda1              /             ext4   errors=remount-ro  0      1
/dev/mapper/srcvg-var  /var          ext4   defaults           0      2
EOF
cat >"$ROOT/etc/network/interfaces" <<EOF
auto lo
iface lo inet loopback

# The e1000 NIC, by the name the kernel gives it in PCI slot $NIC_SLOT.
allow-hotplug $NIC
iface $NIC inet dhcp
EOF
# An initramfs for this hardware only, as update-initramfs with MODULES=dep makes on a real
# server: SATA and e1000, no virtio. The conversion must add what a VM needs.
sed -i 's/^MODULES=.*/MODULES=list/' "$ROOT/etc/initramfs-tools/initramfs.conf"
printf '%s\n' ahci libahci sd_mod ext4 e1000 dm_mod >"$ROOT/etc/initramfs-tools/modules"
cat >"$ROOT/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200n8"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_LINUX_UUID=true
EOF
cat >"$ROOT/usr/local/sbin/corral-source-ready" <<'EOF'
#!/bin/sh
# Report on the serial console that the system is up and which address DHCP gave it.
for i in $(seq 1 60); do
	nic=$(ip -o -4 addr show scope global | awk '{print $2; exit}')
	[ -n "$nic" ] && break
	sleep 1
done
ip4=$(ip -o -4 addr show dev "$nic" scope global 2>/dev/null | awk '{print $4; exit}')
echo "CORRAL-SOURCE-READY host=$(hostname) nic=${nic:-none} ip=${ip4:-none} root=$(findmnt -no SOURCE /)" >/dev/ttyS0
EOF
chmod 755 "$ROOT/usr/local/sbin/corral-source-ready"
cat >"$ROOT/etc/systemd/system/corral-source-ready.service" <<'EOF'
[Unit]
Description=Report the source server ready on the serial console
After=network-online.target multi-user.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/corral-source-ready

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/corral-source-ready.service \
	"$ROOT/etc/systemd/system/multi-user.target.wants/corral-source-ready.service"
for m in proc sys dev; do mkdir -p "$ROOT/$m"; mount --bind "/$m" "$ROOT/$m"; done
chroot "$ROOT" sh -c 'echo root:corral | chpasswd'
chroot "$ROOT" update-initramfs -u -k all >/dev/null 2>&1
for m in proc sys dev; do umount "$ROOT/$m"; done
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/*)")
# /boot/grub as grub-install and update-grub leave it: the modules and a configuration that
# names the root by device.
mkdir -p "$ROOT/boot/grub/i386-pc"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$ROOT/boot/grub/i386-pc/"
cat >"$ROOT/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set default=0
set timeout=1
menuentry 'Debian GNU/Linux' {
	insmod part_msdos
	insmod ext2
	set root='hd0,msdos1'
	linux /boot/vmlinuz-$KVER root=/dev/sda1 ro console=ttyS0,115200n8
	initrd /boot/initrd.img-$KVER
}
EOF
rm -rf "$ROOT/var/cache/apt/archives/"*.deb "$ROOT/var/lib/apt/lists/"*_Packages

say "making the file systems (root and /var) from the tree"
mkdir -p "$WORK/var"
(cd "$ROOT/var" && tar -cf - .) | (cd "$WORK/var" && tar -xf -)
find "$ROOT/var" -mindepth 1 -delete
truncate -s "${ROOT_MIB}M" "$WORK/root.ext4"
mkfs.ext4 -q -d "$ROOT" "$WORK/root.ext4"
truncate -s "${VAR_MIB}M" "$WORK/var.ext4"
mkfs.ext4 -q -d "$WORK/var" "$WORK/var.ext4"

say "assembling the disk: MBR, sda1, LVM on sda2, GRUB"
DISK=$WORK/disk.img
truncate -s "$((1 + ROOT_MIB + PV_MIB))M" "$DISK"
sfdisk -q "$DISK" <<EOF
label: dos
start=2048, size=$((ROOT_MIB * 2048)), type=83, bootable
start=$(((1 + ROOT_MIB) * 2048)), size=$((PV_MIB * 2048)), type=8e
EOF
dd if="$WORK/root.ext4" of="$DISK" bs=1M seek=1 conv=notrunc,sparse status=none
PV_OFFSET=$(((1 + ROOT_MIB) * 1024 * 1024))
LOOP=$(losetup -f --show -o "$PV_OFFSET" --sizelimit "$((PV_MIB * 1024 * 1024))" "$DISK")
LVM_NOHOST=(--driverloaded n --config 'backup { backup = 0 archive = 0 }')
export LVM_SUPPRESS_FD_WARNINGS=1
pvcreate -q -ff -y "${LVM_NOHOST[@]}" "$LOOP" >/dev/null
vgcreate -q "${LVM_NOHOST[@]}" srcvg "$LOOP" >/dev/null
lvcreate -q "${LVM_NOHOST[@]}" -an -Zn -L "${VAR_MIB}M" -n var srcvg >/dev/null 2>&1
PE_START=$(pvs --noheadings --units b --nosuffix -o pe_start "${LVM_NOHOST[@]}" "$LOOP" | tr -d ' ')
FIRST_PE=$(lvs --noheadings -o seg_pe_ranges "${LVM_NOHOST[@]}" srcvg/var | sed 's/.*:\([0-9]*\)-.*/\1/' | tr -d ' ')
EXTENT=$(vgs --noheadings --units b --nosuffix -o vg_extent_size "${LVM_NOHOST[@]}" srcvg | tr -d ' ')
losetup -d "$LOOP"
LOOP=""
dd if="$WORK/var.ext4" of="$DISK" bs=1M seek=$(((PV_OFFSET + PE_START + FIRST_PE * EXTENT) / 1048576)) \
	conv=notrunc,sparse status=none
grub-mkimage -O i386-pc -o "$WORK/core.img" -p '(hd0,msdos1)/boot/grub' biosdisk part_msdos ext2
dd if=/usr/lib/grub/i386-pc/boot.img of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$DISK" bs=512 seek=1 conv=notrunc status=none

mkdir -p "$OUT"
mv "$DISK" "$OUT/disk.img"
cat >"$OUT/manifest.env" <<EOF
CORRAL_P2V_SOURCE_DISK=$OUT/disk.img
CORRAL_P2V_SOURCE_KERNEL_VERSION=$KVER
CORRAL_P2V_SOURCE_NIC=$NIC
CORRAL_P2V_SOURCE_NIC_SLOT=$NIC_SLOT
CORRAL_P2V_SOURCE_SHA256=$(sha256sum "$OUT/disk.img" | cut -d' ' -f1)
EOF
echo "$STAMP" >"$OUT/stamp"
say "built $OUT/disk.img (kernel $KVER)"
if [ "$CHECK" = 1 ]; then boot_check "$OUT/check.log"; fi
[ "$QUIET" = 1 ] && echo "$OUT"
exit 0
