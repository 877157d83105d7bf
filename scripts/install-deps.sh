#!/usr/bin/env bash
# Install the Debian 12 packages corral needs to run and to test, when they are missing.
# Idempotent; needs root (or sudo) only when something is missing.
#
# Pitfall (measured on these machines): the image ships a backported qemu-utils 10 that
# conflicts with qemu-system-x86 7.2. Installing qemu-system-x86 removes it; qemu-utils 7.2
# then installs cleanly. So: one after the other.
set -euo pipefail

# protobuf-compiler: the state store's etcd client (corral-store, so the agent) builds with protoc.
# libguestfs-tools (guestfish, virt-resize): `vm import --convert` converts a server's disk inside
# a libguestfs appliance (docs/p2v.md), which boots a kernel from /boot (see below).
# busybox-static, cpio, grub-pc-bin, xorriso: `corral p2v media` builds the cold-P2V boot ISO.
RUN_PKGS=(qemu-system-x86 qemu-utils ovmf iproute2 osinfo-db swtpm swtpm-tools protobuf-compiler
  libguestfs-tools busybox-static cpio grub-pc-bin xorriso)
TEST_PKGS=(busybox-static cpio xorriso isolinux syslinux syslinux-common extlinux mtools dosfstools
  fdisk socat zstd python3 python3-pyftpdlib nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils curl
  dnsmasq-base etcd-server chromium
  debootstrap lvm2 grub-pc-bin e2fsprogs)
# (debootstrap, lvm2, grub-pc-bin: scripts/build-p2v-source.sh builds the V2V test's server disk)

want=("${RUN_PKGS[@]}")
[[ "${1:-}" == "--test" ]] && want+=("${TEST_PKGS[@]}")

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# qemu-img must be the one matching qemu-system (7.2), see above.
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
# libguestfs's appliance needs a kernel in /boot; containers often have none.
compgen -G "/boot/vmlinuz-*" >/dev/null || missing+=(linux-image-amd64)
# The XVA import test drives an independent writer (@xen-orchestra/xva) with node; the web
# console is built with npm (esbuild) and tested in chromium driven by node (playwright-core).
if [[ "${1:-}" == "--test" ]]; then
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
fi

install_xva_writer() {
  # Into a cache dir, from the lock file in the tree (npm registry only).
  local src dir
  src="$(cd "$(dirname "$0")/.." && pwd)/crates/corral-archive/tests/xva-writer"
  dir="${CORRAL_XVA_WRITER_DIR:-$HOME/.cache/corral/xva-writer}"
  mkdir -p "$dir"
  cp "$src/package.json" "$src/package-lock.json" "$src/write-xva.mjs" "$dir/"
  if [[ ! -d "$dir/node_modules/@xen-orchestra/xva" ]]; then
    echo "corral: installing the XVA test writer into $dir" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --silent)
  fi
}

# The agent's unix socket is mode 0660 with group `corral` when that group exists, so its
# members use the CLI without sudo (as admins: docs/security.md); otherwise it is 0600.
ensure_group() {
  getent group corral >/dev/null && return 0
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "corral: creating group corral (its members may use the agent's socket)" >&2
  $sudo groupadd -f corral
}
ensure_group

if [[ ${#missing[@]} -eq 0 ]]; then
  [[ "${1:-}" == "--test" ]] && install_xva_writer
  exit 0
fi

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "corral: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
  $SUDO apt-get install -y -qq qemu-system-x86 >/dev/null
fi
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
[[ "${1:-}" == "--test" ]] && install_xva_writer
exit 0
