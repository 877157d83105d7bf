#!/usr/bin/env bash
# Build corral's test guest and test installer from Debian packages, cached outside the tree.
#
# Usage: scripts/build-test-guest.sh [--force] [--check] [--quiet]
#   --force  rebuild even when the cache is up to date
#   --check  after building, run scripts/boot-check.sh (boots every artifact under QEMU/TCG)
#   --quiet  print only the cache directory on stdout
#
# Output directory: ${CORRAL_TEST_GUEST_DIR:-$HOME/.cache/corral/test-guest}
#   vmlinuz            kernel of Debian's linux-image-cloud-amd64 (the real linux-image-<abi>-cloud-amd64)
#   initrd.img         busybox initramfs (scripts/guest/init) with the kernel's virtio/ata/button modules
#   disk.img           64 MiB raw BIOS-bootable disk: MBR + FAT16 partition + syslinux, same kernel
#                      and initrd, cmdline "console=ttyS0 corral.boot=disk corral.install.id=none"
#   disk.qcow2         the same disk as qcow2
#   kernel-version     e.g. 6.1.0-56-cloud-amd64
#   manifest.env       KEY=VALUE lines describing the artifacts (paths, versions)
#   stamp              cache key (sha256 of these scripts, kernel and busybox versions)
#   installer/tree/    exploded install tree of the "corral test installer":
#                        .treeinfo ([general] family = corral-test-installer), corral-test-installer.txt,
#                        images/pxeboot/vmlinuz   (Debian linux-image-amd64: has ahci, e1000, 8139cp)
#                        images/pxeboot/initrd.img (installer initrd, payload disk.img.gz embedded)
#                        images/disk.img.gz        (the payload: disk.img, gzip)
#   installer/installer.iso  El Torito (isolinux) installer CD: kernel, small initrd, images/disk.img.gz
#   installer/pxe/     boot.ipxe + vmlinuz + initrd.img for QEMU user-mode TFTP (bootfile=boot.ipxe)
#
# Kernel command-line options understood by the guest's /init (always use console=ttyS0):
#   corral.boot=SRC        printed as CORRAL-BOOT-SOURCE=SRC (default "kernel"; disk.img sets "disk",
#                          the ISO "cdrom", PXE "pxe")
#   corral.ip=A.B.C.D/N    configure the first NIC statically (or corral.ip=dhcp)
#   corral.ping=A.B.C.D    after the marker, ping the peer until it answers, then print
#                          CORRAL-PING-OK A.B.C.D
#   corral.poweroff        power off right after CORRAL-GUEST-READY
#   corral.debug           keep kernel messages on the console
#   corral.count           print CORRAL-COUNT N every second, N from 1 (live migration keeps counting)
#   corral.dirty=MIB       rewrite MIB MiB of memory with random bytes every second
#   Installer mode (any of the following turns it on):
#   corral.install[=URL]   run the installer; with an http/ftp tree URL, fetch URL/images/disk.img.gz
#                          (falls back to the CD-ROM, then to the payload embedded in the initrd)
#   corral.payload=URL     fetch this payload (http/https/ftp, gzip or raw) with busybox wget;
#                          failure is fatal. The NIC is configured by DHCP unless corral.ip is given.
#   corral.install.id=ID   stamp ID (max 32 chars) into the installed disk's syslinux.cfg; the
#                          installed system prints CORRAL-INSTALL-ID=ID
#   corral.install.disk=DEV  target disk (default: first of /dev/vda /dev/sda /dev/hda /dev/xvda)
#   corral.install.hang    simulate an installer that never finishes
#
# Console markers (each on its own line): CORRAL-BOOT-SOURCE=..., CORRAL-KERNEL=..., CORRAL-IP ...,
#   CORRAL-NIC <ifname> <mac>, CORRAL-INSTALL-ID=..., CORRAL-GUEST-READY, CORRAL-PING-OK <ip>,
#   CORRAL-POWERDOWN (ACPI power button pressed), CORRAL-INSTALLER-START, CORRAL-INSTALL-SOURCE=...,
#   CORRAL-INSTALL-TARGET=..., CORRAL-INSTALL-DONE, CORRAL-INSTALL-FAILED <reason>.
#
# Environment: CORRAL_TEST_GUEST_DIR (output), CORRAL_TEST_GUEST_DEB_DIR (downloaded .debs, default
#   "$CORRAL_TEST_GUEST_DIR-debs"), CORRAL_TEST_GUEST_KERNEL_PKG / CORRAL_TEST_GUEST_INSTALLER_KERNEL_PKG
#   (pin the real kernel packages).
#
# Nothing is installed into the host except the build tools (apt-get, when missing, as root); the
# kernels are fetched with `apt-get download` and unpacked with `dpkg-deb -x`. No root or loop mounts.
# See docs/test-guest.md.
set -euo pipefail
shopt -s inherit_errexit

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_SRC=$SCRIPT_DIR/guest
OUT=${CORRAL_TEST_GUEST_DIR:-$HOME/.cache/corral/test-guest}
OUT=${OUT%/}
DEB_DIR=${CORRAL_TEST_GUEST_DEB_DIR:-$OUT-debs}
DISK_MIB=64
ID_WIDTH=32
# Modules the guest may need; those a kernel lacks (the cloud kernel has no ahci, e1000, 8139*)
# are skipped, built-in ones need nothing. Order matters only for readability: dependencies are
# resolved from each module's own "depends=" field.
WANTED_MODULES=(virtio_pci virtio_blk virtio_scsi virtio_net sd_mod sr_mod ata_piix ata_generic
	ahci e1000 e1000e 8139cp 8139too button evdev isofs)
# qemu-system-x86 before qemu-utils: the image's backported qemu-utils conflicts with it (DESIGN.md).
PACKAGES=(qemu-system-x86 qemu-utils busybox-static cpio xorriso isolinux syslinux syslinux-common
	mtools dosfstools fdisk socat gzip xz-utils ipxe-qemu)

FORCE=0 CHECK=0 QUIET=0
for a in "$@"; do
	case "$a" in
	--force) FORCE=1 ;;
	--check) CHECK=1 ;;
	--quiet) QUIET=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-test-guest: unknown argument: $a" >&2; exit 2 ;;
	esac
done

log() { [ "$QUIET" = 1 ] || echo "build-test-guest: $*" >&2; }
die() { echo "build-test-guest: error: $*" >&2; exit 1; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
		die "need root to run: $*"
	fi
}

APT_UPDATED=0
apt_update_once() {
	[ "$APT_UPDATED" = 1 ] && return 0
	log "apt-get update"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
	APT_UPDATED=1
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

ensure_packages() {
	local missing=() p
	mapfile -t missing < <(
		{ dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true; } |
			awk -v want="${PACKAGES[*]}" '$NF == "installed" { have[$1] = 1 }
				END { n = split(want, w, " "); for (i = 1; i <= n; i++) if (!(w[i] in have)) print w[i] }'
	)
	[ ${#missing[@]} = 0 ] && return 0
	log "installing missing packages: ${missing[*]}"
	apt_update_once
	# One at a time in PACKAGES order, so qemu-system-x86 replaces a conflicting qemu-utils first.
	for p in "${PACKAGES[@]}"; do
		pkg_installed "$p" && continue
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$p" >&2
	done
}

# The real (ABI-versioned) packages behind the kernel meta packages, e.g.
# linux-image-6.1.0-56-cloud-amd64, and their candidate versions. apt-cache loads its whole cache
# on every call (about a second here), so each query asks for all packages at once.
resolve_kernel_pkgs() { # prints "CLOUD GENERIC"
	apt-cache depends linux-image-cloud-amd64 linux-image-amd64 2>/dev/null | awk '
		/^[^ ]/ { meta = $1 }
		/^ *Depends: linux-image-[0-9]/ && !(meta in real) { real[meta] = $2 }
		END { print real["linux-image-cloud-amd64"], real["linux-image-amd64"] }'
}
candidate_versions() { # PKG... -> one "PKG VERSION" line each
	apt-cache policy "$@" 2>/dev/null | awk '
		/^[^ ]/ { sub(/:$/, "", $1); pkg = $1 }
		/^ *Candidate:/ { print pkg, $2 }'
}

# Download $1 (exact version $2) into $DEB_DIR/$1/$2/ unless already there; print the .deb path.
fetch_deb() {
	local pkg=$1 ver=$2 dir deb
	dir=$DEB_DIR/$pkg/${ver//:/%3a}
	deb=$(ls "$dir"/*.deb 2>/dev/null | head -n1 || true)
	if [ -z "$deb" ]; then
		log "apt-get download $pkg=$ver"
		rm -rf "$dir.tmp"
		mkdir -p "$dir.tmp"
		local sandbox=()
		[ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
		(cd "$dir.tmp" && apt-get "${sandbox[@]}" -qq download "$pkg=$ver" >&2)
		rm -rf "$dir"
		mv "$dir.tmp" "$dir"
		# Keep only the version in use.
		find "$DEB_DIR/$pkg" -mindepth 1 -maxdepth 1 ! -path "$dir" -exec rm -rf {} +
		deb=$(ls "$dir"/*.deb | head -n1)
	fi
	echo "$deb"
}

ARTIFACTS=(vmlinuz initrd.img disk.img disk.qcow2 kernel-version manifest.env
	installer/tree/.treeinfo installer/tree/corral-test-installer.txt
	installer/tree/images/pxeboot/vmlinuz installer/tree/images/pxeboot/initrd.img
	installer/tree/images/disk.img.gz installer/installer.iso installer/pxe/boot.ipxe)
artifacts_present() {
	local a
	for a in "${ARTIFACTS[@]}"; do [ -s "$OUT/$a" ] || return 1; done
}

finish() {
	# Remember the cheap key, so the next run skips the apt queries while nothing changed.
	fast_key >"$OUT/fast-stamp.tmp" && mv "$OUT/fast-stamp.tmp" "$OUT/fast-stamp"
	if [ "$QUIET" = 1 ]; then echo "$OUT"; else
		log "ready in $OUT (kernel $(cat "$OUT/kernel-version"))"
	fi
	if [ "$CHECK" = 1 ]; then
		CORRAL_TEST_GUEST_DIR=$OUT "$SCRIPT_DIR/boot-check.sh"
	fi
	exit 0
}

scripts_hash() {
	{
		cat "$SCRIPT_DIR/build-test-guest.sh"
		find "$GUEST_SRC" -type f -print0 | LC_ALL=C sort -z | xargs -0 cat
	} | sha256sum | cut -d' ' -f1
}
# Cheap cache key: the scripts, plus when apt's package lists and dpkg's database last changed
# (apt-get update or a package installation invalidates it and the full check runs).
fast_key() {
	echo "$(scripts_hash) $(stat -c %Y /var/lib/apt/lists /var/lib/dpkg/status 2>/dev/null | tr '\n' ' ')" \
		"${CORRAL_TEST_GUEST_KERNEL_PKG:-} ${CORRAL_TEST_GUEST_INSTALLER_KERNEL_PKG:-}"
}
if [ "$FORCE" = 0 ] && [ "$(cat "$OUT/fast-stamp" 2>/dev/null)" = "$(fast_key)" ] && artifacts_present; then
	finish
fi

# ---------------------------------------------------------------- packages and versions
ensure_packages
for tool in apt-get dpkg-deb cpio gzip mkfs.vfat mcopy syslinux sfdisk xorriso qemu-img flock sha256sum; do
	command -v "$tool" >/dev/null || die "missing tool after package installation: $tool"
done
BUSYBOX=$(dpkg -L busybox-static | grep -E '/s?bin/busybox$' | head -n1)
[ -x "$BUSYBOX" ] || die "busybox-static binary not found"
SYSLINUX_BIOS=/usr/lib/syslinux/modules/bios
ISOLINUX_BIN=/usr/lib/ISOLINUX/isolinux.bin
ISOHDPFX=/usr/lib/ISOLINUX/isohdpfx.bin
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
for f in "$SYSLINUX_BIOS/ldlinux.c32" "$ISOLINUX_BIN" "$ISOHDPFX" "$MBR_BIN"; do
	[ -f "$f" ] || die "missing $f"
done

read -r KPKG IPKG < <(resolve_kernel_pkgs) || true
if [ -z "$KPKG" ] || [ -z "$IPKG" ]; then
	apt_update_once
	read -r KPKG IPKG < <(resolve_kernel_pkgs) || true
fi
KPKG=${CORRAL_TEST_GUEST_KERNEL_PKG:-$KPKG}
IPKG=${CORRAL_TEST_GUEST_INSTALLER_KERNEL_PKG:-$IPKG}
[ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package (apt sources?)"
[ -n "$IPKG" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt sources?)"
KPKG_VER= IPKG_VER=
while read -r p v; do
	[ "$p" = "$KPKG" ] && KPKG_VER=$v
	[ "$p" = "$IPKG" ] && IPKG_VER=$v
done < <(candidate_versions "$KPKG" "$IPKG")
[ -n "$KPKG_VER" ] && [ "$KPKG_VER" != "(none)" ] || die "no candidate version for $KPKG"
[ -n "$IPKG_VER" ] && [ "$IPKG_VER" != "(none)" ] || die "no candidate version for $IPKG"
BUSYBOX_VER=$(dpkg-query -W -f='${Version}' busybox-static)

KEY=$(echo "$(scripts_hash) $KPKG=$KPKG_VER $IPKG=$IPKG_VER busybox-static=$BUSYBOX_VER disk=$DISK_MIB" |
	sha256sum | cut -d' ' -f1)
up_to_date() {
	[ "$FORCE" = 0 ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$KEY" ] && artifacts_present
}

up_to_date && finish

mkdir -p "$(dirname "$OUT")" "$DEB_DIR"
exec 9>"$OUT.lock"
flock 9
up_to_date && finish # another build finished while we waited

WORK=$(mktemp -d "$OUT.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/out
mkdir -p "$STAGE/installer/tree/images/pxeboot" "$STAGE/installer/pxe"

# ---------------------------------------------------------------- kernels
KDEB=$(fetch_deb "$KPKG" "$KPKG_VER")
IDEB=$(fetch_deb "$IPKG" "$IPKG_VER")
log "unpacking $(basename "$KDEB") and $(basename "$IDEB")"
dpkg-deb -x "$KDEB" "$WORK/k-guest"
dpkg-deb -x "$IDEB" "$WORK/k-installer"
KVER=${KPKG#linux-image-}
IVER=${IPKG#linux-image-}
[ -f "$WORK/k-guest/boot/vmlinuz-$KVER" ] || die "$KDEB has no boot/vmlinuz-$KVER"
[ -f "$WORK/k-installer/boot/vmlinuz-$IVER" ] || die "$IDEB has no boot/vmlinuz-$IVER"

# ---------------------------------------------------------------- initramfs
# build_rootfs KROOT KVER ROOTFS: busybox, /init, acpid handler, the kernel's needed modules.
build_rootfs() {
	local kroot=$1 kver=$2 root=$3 moddir="$1/lib/modules/$2"
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/acpi/PWRF,proc,sys,dev,tmp,run,mnt,root,payload}
	mkdir -p "$root/lib/modules/$kver"
	cp "$BUSYBOX" "$root/bin/busybox"
	local applet
	while read -r applet; do
		[ "$applet" = bin/busybox ] && continue
		[ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
	done < <("$BUSYBOX" --list-full)
	install -m 0755 "$GUEST_SRC/init" "$root/init"
	install -m 0755 "$GUEST_SRC/acpi-power" "$root/etc/acpi/PWRF/00000080"
	install -m 0755 "$GUEST_SRC/udhcpc.script" "$root/etc/udhcpc.script"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
	printf 'root:x:0:\n' >"$root/etc/group"
	printf 'export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nexport PS1='\''corral-guest:$PWD# '\''\n' >"$root/etc/profile"

	# Module name -> path (relative to lib/modules/KVER); "-" and "_" are the same in module names.
	local -A ko=() seen=()
	local f n
	while IFS= read -r -d '' f; do
		n=${f##*/}
		n=${n%%.ko*}
		ko[${n//-/_}]=${f#"$moddir"/}
	done < <(find "$moddir/kernel" -name '*.ko*' -print0)
	local order=() missing=() builtin=()
	add_module() {
		local name=${1//-/_} rel dst deps d
		[ -n "${seen[$name]:-}" ] && return 0
		seen[$name]=1
		rel=${ko[$name]:-}
		if [ -z "$rel" ]; then
			if grep -qE "/(${name}|${name//_/-})\.ko$" "$moddir/modules.builtin" 2>/dev/null; then
				builtin+=("$name")
			else
				missing+=("$name")
			fi
			return 0
		fi
		dst=$root/lib/modules/$kver/${rel%.ko*}.ko
		mkdir -p "$(dirname "$dst")"
		# busybox insmod cannot load compressed modules: store them decompressed.
		case "$rel" in
		*.ko.xz) xz -dc "$moddir/$rel" >"$dst" ;;
		*.ko.zst) zstd -qdc "$moddir/$rel" >"$dst" ;;
		*.ko.gz) gzip -dc "$moddir/$rel" >"$dst" ;;
		*) cp "$moddir/$rel" "$dst" ;;
		esac
		deps=$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p' | head -n1)
		for d in ${deps//,/ }; do add_module "$d"; done
		order+=("${rel%.ko*}.ko")
	}
	local m
	for m in "${WANTED_MODULES[@]}"; do add_module "$m"; done
	printf '%s\n' "${order[@]}" >"$root/etc/modules.load"
	log "$kver: ${#order[@]} modules; built in: ${builtin[*]:-none}; not available: ${missing[*]:-none}"
}

# cpio_gz DIR OUT: a reproducible newc archive (root-owned), gzip-compressed.
cpio_gz() {
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$2"
}

log "building guest initrd ($KVER)"
build_rootfs "$WORK/k-guest" "$KVER" "$WORK/root-guest"
cp "$WORK/k-guest/boot/vmlinuz-$KVER" "$STAGE/vmlinuz"
cpio_gz "$WORK/root-guest" "$STAGE/initrd.img"
echo "$KVER" >"$STAGE/kernel-version"

# ---------------------------------------------------------------- bootable disk
# MBR (syslinux mbr.bin) + one active FAT16 partition at 1 MiB holding syslinux, vmlinuz,
# initrd.img and syslinux.cfg. The filesystem is built as a separate image with mtools and
# dd'd into place: no root, no loop devices.
log "building ${DISK_MIB} MiB disk image"
PART_START=2048
PART_SECTORS=$((DISK_MIB * 2048 - PART_START))
FS=$WORK/fs.img
mkfs.vfat -C -F 16 -n CORRALBOOT -h "$PART_START" -i 434f5252 "$FS" $((PART_SECTORS / 2)) >/dev/null
{
	printf 'SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT corral\n'
	printf 'LABEL corral\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n'
	# The install id field is last and fixed width, so the installer can overwrite it in place.
	printf '  APPEND console=ttyS0 no_timer_check corral.boot=disk corral.install.id=%-*s\n' "$ID_WIDTH" none
} >"$WORK/syslinux.cfg"
mcopy -i "$FS" "$STAGE/vmlinuz" ::/vmlinuz
mcopy -i "$FS" "$STAGE/initrd.img" ::/initrd.img
mcopy -i "$FS" "$WORK/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$FS"
RAW=$WORK/disk.img
truncate -s "${DISK_MIB}M" "$RAW"
sfdisk --quiet --no-reread --no-tell-kernel "$RAW" <<EOF
label: dos
label-id: 0x434f5252
unit: sectors
start=$PART_START, size=$PART_SECTORS, type=6, bootable
EOF
dd if="$FS" of="$RAW" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$MBR_BIN" of="$RAW" bs=440 count=1 conv=notrunc status=none
rm -f "$FS"
# Byte offset of the install id field, for the installer's in-place stamp.
mapfile -t hits < <(grep -obUa 'corral\.install\.id=' "$RAW" | cut -d: -f1)
[ ${#hits[@]} = 1 ] || die "expected one install id field in disk.img, found ${#hits[@]}"
ID_KEY=corral.install.id=
ID_OFFSET=$((hits[0] + ${#ID_KEY}))
cp --sparse=always "$RAW" "$STAGE/disk.img"
qemu-img convert -f raw -O qcow2 "$RAW" "$STAGE/disk.qcow2"
gzip -6nc "$RAW" >"$WORK/disk.img.gz"

# ---------------------------------------------------------------- installer
log "building installer ($IVER)"
build_rootfs "$WORK/k-installer" "$IVER" "$WORK/root-installer"
echo "$ID_OFFSET" >"$WORK/root-installer/etc/payload-id-offset"
echo "$ID_WIDTH" >"$WORK/root-installer/etc/payload-id-width"
cpio_gz "$WORK/root-installer" "$WORK/installer-base.img"
# Full installer initrd = uncompressed cpio with payload/disk.img.gz (already compressed, and
# 512-byte padded so the next archive starts aligned) followed by the gzip'd base archive.
mkdir -p "$WORK/payload-root/payload"
ln "$WORK/disk.img.gz" "$WORK/payload-root/payload/disk.img.gz"
(cd "$WORK/payload-root" && printf '%s\n' payload payload/disk.img.gz | cpio -o -H newc -R 0:0 --quiet) \
	>"$WORK/installer-full.img"
cat "$WORK/installer-base.img" >>"$WORK/installer-full.img"

TREE=$STAGE/installer/tree
write_treeinfo() { # $1 = output file
	cat >"$1" <<EOF
[header]
type = productmd.treeinfo
version = 1.2

[release]
name = Corral Test Installer
short = corral-test-installer
version = 1

[general]
family = corral-test-installer
name = Corral Test Installer 1
version = 1
arch = x86_64
platforms = x86_64
kernel_args = console=ttyS0 corral.install

[tree]
arch = x86_64
platforms = x86_64
variants =

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img

[checksums]
images/pxeboot/vmlinuz = sha256:$(sha256sum <"$2" | cut -d' ' -f1)
images/pxeboot/initrd.img = sha256:$(sha256sum <"$3" | cut -d' ' -f1)
EOF
}
cat >"$TREE/corral-test-installer.txt" <<EOF
corral test installer 1
kernel: $IVER ($IPKG $IPKG_VER)
installs: disk.img (${DISK_MIB} MiB, kernel $KVER) onto the first virtual disk
boot the installer kernel with: console=ttyS0 corral.install[=TREE-URL] [corral.payload=URL]
EOF
cp "$WORK/k-installer/boot/vmlinuz-$IVER" "$TREE/images/pxeboot/vmlinuz"
cp "$WORK/installer-full.img" "$TREE/images/pxeboot/initrd.img"
cp "$WORK/disk.img.gz" "$TREE/images/disk.img.gz"
write_treeinfo "$TREE/.treeinfo" "$TREE/images/pxeboot/vmlinuz" "$TREE/images/pxeboot/initrd.img"

# PXE through QEMU's user-mode TFTP and the NIC's iPXE ROM (bootfile=boot.ipxe).
PXE=$STAGE/installer/pxe
ln "$TREE/images/pxeboot/vmlinuz" "$PXE/vmlinuz"
ln "$TREE/images/pxeboot/initrd.img" "$PXE/initrd.img"
printf '#!ipxe\nkernel vmlinuz console=ttyS0 no_timer_check corral.boot=pxe corral.install\ninitrd initrd.img\nboot\n' \
	>"$PXE/boot.ipxe"

# ISO: the same tree layout (small initrd; the installer finds images/disk.img.gz on the CD).
ISO=$WORK/iso
mkdir -p "$ISO/isolinux" "$ISO/images/pxeboot"
cp "$ISOLINUX_BIN" "$SYSLINUX_BIOS/ldlinux.c32" "$ISO/isolinux/"
printf 'SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT install\nLABEL install\n  KERNEL /images/pxeboot/vmlinuz\n  INITRD /images/pxeboot/initrd.img\n  APPEND console=ttyS0 no_timer_check corral.boot=cdrom corral.install\n' \
	>"$ISO/isolinux/isolinux.cfg"
ln "$TREE/images/pxeboot/vmlinuz" "$ISO/images/pxeboot/vmlinuz"
ln "$WORK/installer-base.img" "$ISO/images/pxeboot/initrd.img"
ln "$WORK/disk.img.gz" "$ISO/images/disk.img.gz"
cp "$TREE/corral-test-installer.txt" "$ISO/"
write_treeinfo "$ISO/.treeinfo" "$ISO/images/pxeboot/vmlinuz" "$ISO/images/pxeboot/initrd.img"
xorriso -as mkisofs -quiet -o "$STAGE/installer/installer.iso" -V CORRAL_INSTALLER -J -R \
	-b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
	-isohybrid-mbr "$ISOHDPFX" "$ISO" >"$WORK/xorriso.log" 2>&1 ||
	{ cat "$WORK/xorriso.log" >&2; die "xorriso failed"; }
[ -s "$STAGE/installer/installer.iso" ] || die "xorriso did not produce installer.iso"

cat >"$STAGE/manifest.env" <<EOF
CORRAL_TEST_GUEST_KERNEL=$OUT/vmlinuz
CORRAL_TEST_GUEST_INITRD=$OUT/initrd.img
CORRAL_TEST_GUEST_CMDLINE=console=ttyS0
CORRAL_TEST_GUEST_DISK_RAW=$OUT/disk.img
CORRAL_TEST_GUEST_DISK_QCOW2=$OUT/disk.qcow2
CORRAL_TEST_GUEST_KERNEL_VERSION=$KVER
CORRAL_TEST_GUEST_KERNEL_PACKAGE=$KPKG=$KPKG_VER
CORRAL_TEST_INSTALLER_TREE=$OUT/installer/tree
CORRAL_TEST_INSTALLER_ISO=$OUT/installer/installer.iso
CORRAL_TEST_INSTALLER_PXE_DIR=$OUT/installer/pxe
CORRAL_TEST_INSTALLER_KERNEL_VERSION=$IVER
CORRAL_TEST_INSTALLER_KERNEL_PACKAGE=$IPKG=$IPKG_VER
CORRAL_TEST_INSTALLER_CMDLINE=console=ttyS0 corral.install
CORRAL_TEST_GUEST_READY_MARKER=CORRAL-GUEST-READY
CORRAL_TEST_INSTALL_DONE_MARKER=CORRAL-INSTALL-DONE
EOF
echo "$KEY" >"$STAGE/stamp"

# Swap the new output in. Readers holding open files keep their (unlinked) inodes.
if [ -e "$OUT" ]; then
	mv "$OUT" "$WORK/old"
fi
mv "$STAGE" "$OUT"
rm -rf "$WORK"
trap - EXIT
log "built: vmlinuz initrd.img disk.img disk.qcow2 installer/{tree,installer.iso,pxe}"
finish
