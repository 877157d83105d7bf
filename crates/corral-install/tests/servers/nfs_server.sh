#!/bin/sh
# Serve DIR read-only over NFSv3 with nfs-ganesha (user-space server; the kernel NFS server
# does not run in containers). Runs in the foreground until killed; prints "READY" when the
# export answers. Needs root (rpcbind on port 111) and Debian packages nfs-ganesha,
# nfs-ganesha-vfs, rpcbind and libnfs-utils (for the readiness check).
#
# Usage: nfs_server.sh DIR WORKDIR
# Ganesha registers NFS with the host's rpcbind, so run one instance at a time.
set -eu
dir=$(realpath "$1"); work=$2
mkdir -p "$work"
if ! rpcinfo -p 127.0.0.1 >/dev/null 2>&1; then
    rpcbind -w
fi
cat > "$work/ganesha.conf" <<CONF
NFS_CORE_PARAM { Protocols = 3; NFS_Port = 20490; MNT_Port = 20491; NLM_Port = 20492; Rquota_Port = 20493; Bind_addr = 127.0.0.1; Enable_NLM = false; Enable_RQUOTA = false; }
NFSV4 { Graceless = true; }
EXPORT { Export_Id = 1; Path = $dir; Pseudo = $dir; Access_Type = RO; Squash = No_Root_Squash; Protocols = 3; Transports = TCP; SecType = sys; FSAL { Name = VFS; } }
LOG { Default_Log_Level = WARN; }
CONF
ganesha.nfsd -F -f "$work/ganesha.conf" -L "$work/ganesha.log" -p "$work/ganesha.pid" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' TERM INT EXIT
i=0
while ! nfs-ls "nfs://127.0.0.1$dir" >/dev/null 2>&1; do
    i=$((i+1))
    if [ $i -gt 100 ] || ! kill -0 $pid 2>/dev/null; then
        echo "FAILED: ganesha did not come up; log:" >&2; cat "$work/ganesha.log" >&2; exit 1
    fi
    sleep 0.1
done
echo READY
wait $pid
