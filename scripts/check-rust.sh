#!/usr/bin/env bash
# Check that cargo and rustc exist and are at least the workspace's rust-version (Cargo.toml),
# and fail with the exact instruction to fix it. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n1)
fix="install or update Rust with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\"  (or, with rustup present: rustup update stable)"
for tool in cargo rustc; do
	command -v "$tool" >/dev/null || {
		echo "corral: $tool (Rust $need or newer) is required; $fix" >&2
		exit 1
	}
done
have=$(rustc --version | awk '{print $2}')
# Compare major.minor(.patch) numerically: the lower of the two sorts first.
lowest=$(printf '%s\n%s\n' "$need" "${have%%-*}" | sort -t. -k1,1n -k2,2n -k3,3n | head -n1)
if [ "$lowest" != "$need" ]; then
	echo "corral: Rust $have is too old; this workspace needs $need or newer (rust-version in Cargo.toml); $fix" >&2
	exit 1
fi
