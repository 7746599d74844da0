#!/usr/bin/env bash
# Prints the cargo target directory of the userspace workspace: under
# FERRY_CACHE, keyed by Cargo.lock and the toolchain, so that a warm machine
# (CI's included) rebuilds only the project's own crates.  Older keys are
# removed when a new one is made.  CARGO_TARGET_DIR, when set, wins.
#
#   export CARGO_TARGET_DIR=$(scripts/cargo-target.sh)
set -euo pipefail
if [ -n "${CARGO_TARGET_DIR:-}" ]; then echo "$CARGO_TARGET_DIR"; exit 0; fi
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
cache=${FERRY_CACHE:-/var/cache/ferry}/cargo
key=$( { cat "$here/userspace/Cargo.lock"; rustc -vV; cargo -V; } | sha256sum | cut -c1-16)
if [ ! -d "$cache/$key" ]; then
	mkdir -p "$cache"
	find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} + 2>/dev/null || true
	mkdir -p "$cache/$key"
fi
echo "$cache/$key"
