#!/bin/sh
# Lay out the real Debian installer (package debian-installer-12-netboot-amd64) the way a
# Debian mirror does, under DEST (default ~/.cache/corral/debian-mirror). Idempotent.
#   DEST/dists/bookworm/Release
#   DEST/dists/bookworm/main/installer-amd64/current/images/MANIFEST
#   DEST/dists/bookworm/main/installer-amd64/current/images/netboot/{version.info,debian-installer/amd64/{linux,initrd.gz}}
set -eu
dest=${1:-$HOME/.cache/corral/debian-mirror}
images=$dest/dists/bookworm/main/installer-amd64/current/images
if [ -s "$images/netboot/debian-installer/amd64/initrd.gz" ]; then echo "$dest"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
deb=$(ls /var/cache/apt/archives/debian-installer-12-netboot-amd64_*.deb 2>/dev/null | tail -n1 || true)
if [ -z "$deb" ]; then
    (cd "$work" && apt-get download debian-installer-12-netboot-amd64 >/dev/null)
    deb=$(ls "$work"/debian-installer-12-netboot-amd64_*.deb | tail -n1)
fi
dpkg-deb -x "$deb" "$work/x"
mkdir -p "$images"
cp -a "$work"/x/usr/lib/debian-installer/images/12/amd64/text "$images/netboot"
printf 'netboot/debian-installer/amd64/linux\tLinux kernel for netboot\nnetboot/debian-installer/amd64/initrd.gz\tinitrd for netboot\n' > "$images/MANIFEST"
cat > "$dest/dists/bookworm/Release" <<REL
Origin: Debian
Label: Debian
Suite: stable
Version: 12
Codename: bookworm
Architectures: all amd64
Components: main
Description: Debian 12 (laid out from debian-installer-12-netboot-amd64 by corral's tests)
REL
echo "$dest"
