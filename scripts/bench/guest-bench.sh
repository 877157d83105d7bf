# Shared by scripts/bench-pool.sh and scripts/bench-migrate.sh (sourced): their arguments, the
# test guest, etcd and the release build, then the Python benchmark with the guest's kernel
# and initrd. The caller's lines 2-5 are its --help.
#
#   run_guest_bench SCRIPT.py COUNT_FLAG DEFAULT_COUNT "$@"
run_guest_bench() {
    local script=$1 flag=$2 count=$3 doc=1 build=1
    shift 3
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    while [ $# -gt 0 ]; do
        case "$1" in
            "$flag") count=$2; shift 2 ;;
            --no-doc) doc=0; shift ;;
            --no-build) build=0; shift ;;
            -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
            *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
        esac
    done
    local guest_dir=${CORRAL_TEST_GUEST_DIR:-$HOME/.cache/corral/test-guest}
    [ -f "$guest_dir/manifest.env" ] || { echo "no test guest: run scripts/build-test-guest.sh" >&2; exit 1; }
    manifest() { sed -n "s/^$1=//p" "$guest_dir/manifest.env" | tail -1; }
    command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server" >&2; exit 1; }
    if [ "$build" = 1 ]; then (cd "$root" && cargo build --release -p corral); fi
    local args=(--corral "$root/target/release/corral" --kernel "$(manifest CORRAL_TEST_GUEST_KERNEL)"
                --initrd "$(manifest CORRAL_TEST_GUEST_INITRD)" "$flag" "$count")
    [ "$doc" = 1 ] && args+=(--doc "$root/docs/benchmarks.md")
    exec python3 "$root/scripts/bench/$script" "${args[@]}"
}
