#!/usr/bin/env bash
# Build the project's programs that run inside the test guests, statically
# linked (the guests have no Rust runtime libraries), and print their paths.
#
#   scripts/guest-tools.sh
set -euo pipefail
cd "$(dirname "$0")/../userspace"
export PATH="$HOME/.cargo/bin:$PATH"
target=x86_64-unknown-linux-gnu
CARGO_TARGET_DIR=$(../scripts/cargo-target.sh)
export CARGO_TARGET_DIR
# --target keeps RUSTFLAGS away from build scripts and proc macros.
RUSTFLAGS='-C target-feature=+crt-static' \
	cargo build --quiet --profile guest --target "$target" -p ferry-test -p ferryd >&2
echo "$CARGO_TARGET_DIR/$target/guest/ferry-test"
echo "$CARGO_TARGET_DIR/$target/guest/ferryd"
echo "$CARGO_TARGET_DIR/$target/guest/ferryctl"
