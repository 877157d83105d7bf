#!/usr/bin/env bash
# Build a disk that boots Linux through Debian's Secure Boot chain, for corral's Secure Boot
# test (`vm create --firmware uefi-secure`): OVMF (Microsoft keys enrolled) -> shim (signed by
# Microsoft) -> GRUB (signed by Debian) -> the test guest's kernel (Debian's signed
# linux-image-cloud-amd64) -> the test guest's busybox initrd.
#
# Usage: scripts/build-secureboot-esp.sh [--force] [--quiet]
#   --quiet  print only the cache directory on stdout
#
# Output: ${CORRAL_SECUREBOOT_DIR:-$HOME/.cache/corral/secureboot}
#   esp.img        64 MiB raw disk: GPT with one EFI system partition (FAT32 at 1 MiB) holding
#                  EFI/BOOT/BOOTX64.EFI (shimx64.efi.signed), EFI/BOOT/grubx64.efi
#                  (grubx64.efi.signed), EFI/debian/grub.cfg (and a copy beside GRUB),
#                  /vmlinuz and /initrd.img from the test guest. GRUB boots
#                  "console=ttyS0 no_timer_check corral.debug corral.boot=secureboot", so the
#                  kernel's own log (e.g. "Secure boot enabled") reaches the serial console.
#   stamp          cache key: sha256 of this script, the shim and GRUB package versions and
#                  the test guest's stamp (its kernel); any change rebuilds.
#
# Built without root, loop devices or device-mapper: sfdisk writes the partition table into a
# plain file, mtools formats and fills the partition at its byte offset. The packages are
# fetched with `apt-get download` and unpacked with `dpkg-deb -x` (nothing is installed).
set -euo pipefail

FORCE=0
QUIET=0
for a in "$@"; do
	case "$a" in
	--force) FORCE=1 ;;
	--quiet) QUIET=1 ;;
	*) echo "usage: $0 [--force] [--quiet]" >&2; exit 2 ;;
	esac
done
log() { [ "$QUIET" = 1 ] || echo "secureboot-esp: $*" >&2; }

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${CORRAL_SECUREBOOT_DIR:-$HOME/.cache/corral/secureboot}
GUEST=$("$HERE/build-test-guest.sh" --quiet)
mkdir -p "$(dirname "$OUT")"

for tool in apt-get apt-cache dpkg-deb sfdisk mformat mmd mcopy sha256sum flock; do
	command -v "$tool" >/dev/null || {
		echo "secureboot-esp: $tool is missing (scripts/install-deps.sh --test installs it)" >&2
		exit 1
	}
done

exec 9>"$OUT.lock"
flock 9

pkg_version() { apt-cache policy "$1" | awk '/Candidate:/ {print $2}'; }
SHIM_VER=$(pkg_version shim-signed)
GRUB_VER=$(pkg_version grub-efi-amd64-signed)
if [ -z "$SHIM_VER" ] || [ "$SHIM_VER" = "(none)" ] || [ -z "$GRUB_VER" ] || [ "$GRUB_VER" = "(none)" ]; then
	echo "secureboot-esp: shim-signed or grub-efi-amd64-signed is not in the package lists (run apt-get update)" >&2
	exit 1
fi
KEY=$(
	{
		sha256sum "$0" | cut -d' ' -f1
		echo "shim-signed=$SHIM_VER grub-efi-amd64-signed=$GRUB_VER"
		cat "$GUEST/stamp"
	} | sha256sum | cut -d' ' -f1
)
if [ "$FORCE" = 0 ] && [ -f "$OUT/esp.img" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$KEY" ]; then
	[ "$QUIET" = 1 ] && echo "$OUT"
	exit 0
fi

WORK=$(mktemp -d "$OUT.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log "downloading shim-signed $SHIM_VER and grub-efi-amd64-signed $GRUB_VER"
(cd "$WORK" && timeout 300 apt-get download -q "shim-signed=$SHIM_VER" "grub-efi-amd64-signed=$GRUB_VER" >/dev/null 2>&1) || {
	echo "secureboot-esp: apt-get download of shim-signed/grub-efi-amd64-signed failed" >&2
	exit 1
}
for d in "$WORK"/*.deb; do dpkg-deb -x "$d" "$WORK/root"; done
SHIM=$WORK/root/usr/lib/shim/shimx64.efi.signed
GRUB=$WORK/root/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed
for f in "$SHIM" "$GRUB"; do
	[ -f "$f" ] || { echo "secureboot-esp: $f is not in the package" >&2; exit 1; }
done

# GRUB's signed image looks for its configuration under its built-in prefix /EFI/debian; a copy
# beside the binary covers a GRUB that uses the directory it was loaded from.
cat >"$WORK/grub.cfg" <<'EOF'
set timeout=0
set default=0
serial --unit=0 --speed=115200
terminal_output serial console
menuentry "corral secure boot test" {
	echo "CORRAL-GRUB-LOADING-KERNEL"
	linux /vmlinuz console=ttyS0 no_timer_check corral.debug corral.boot=secureboot
	initrd /initrd.img
}
EOF

DISK_MIB=64
PART_START=2048
PART_SECTORS=$((DISK_MIB * 2048 - PART_START - 34))
IMG=$WORK/esp.img
truncate -s "${DISK_MIB}M" "$IMG"
log "partitioning and formatting $DISK_MIB MiB (GPT, EFI system partition)"
sfdisk --quiet --no-reread --no-tell-kernel "$IMG" <<EOF
label: gpt
unit: sectors
start=$PART_START, size=$PART_SECTORS, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"
EOF
P="$IMG@@$((PART_START * 512))"
export MTOOLS_SKIP_CHECK=1
mformat -i "$P" -F -T "$PART_SECTORS" -h 64 -s 32 -H "$PART_START" -v CORRALESP ::
mmd -i "$P" ::/EFI ::/EFI/BOOT ::/EFI/debian
mcopy -i "$P" "$SHIM" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$P" "$GRUB" ::/EFI/BOOT/grubx64.efi
mcopy -i "$P" "$WORK/grub.cfg" ::/EFI/debian/grub.cfg
mcopy -i "$P" "$WORK/grub.cfg" ::/EFI/BOOT/grub.cfg
mcopy -i "$P" "$GUEST/vmlinuz" ::/vmlinuz
mcopy -i "$P" "$GUEST/initrd.img" ::/initrd.img

mkdir -p "$OUT"
mv "$IMG" "$OUT/esp.img.new" && mv "$OUT/esp.img.new" "$OUT/esp.img"
echo "$KEY" >"$OUT/stamp"
log "built $OUT/esp.img"
[ "$QUIET" = 1 ] && echo "$OUT"
exit 0
