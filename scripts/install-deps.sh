#!/usr/bin/env bash
# Install the Debian 12 packages corral needs to run and to test, when they are missing.
# Idempotent; needs root (or sudo) only when something is missing.
#
# Pitfall (measured on these machines): the image ships a backported qemu-utils 10 that
# conflicts with qemu-system-x86 7.2. Installing qemu-system-x86 removes it; qemu-utils 7.2
# then installs cleanly. So: one after the other.
set -euo pipefail

RUN_PKGS=(qemu-system-x86 qemu-utils ovmf iproute2 osinfo-db)
TEST_PKGS=(busybox-static cpio xorriso isolinux syslinux syslinux-common extlinux mtools dosfstools
  fdisk socat zstd python3 python3-pyftpdlib nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils curl)

want=("${RUN_PKGS[@]}")
[[ "${1:-}" == "--test" ]] && want+=("${TEST_PKGS[@]}")

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# qemu-img must be the one matching qemu-system (7.2), see above.
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[[ ${#missing[@]} -eq 0 ]] && exit 0

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "corral: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
  $SUDO apt-get install -y -qq qemu-system-x86 >/dev/null
fi
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
