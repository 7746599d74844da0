#!/usr/bin/env bash
# `make soak`: many crash points (FERRY_CRASH_POINTS, default 100,
# replication crash points, FERRY_REPL_POINTS, default 200, and power cuts
# of the secondary, FERRY_SEC_CUTS, default 10) against
# the module and tools of this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FERRY_OUT:-$PWD/out}/soak
mkdir -p "$out"
. tests/seed.sh
echo "soak: FERRY_SEED=$FERRY_SEED"
scripts/build-kernel.sh debug >/dev/null
make --no-print-directory module
scripts/mkinitramfs.sh "$out/initramfs.cpio" dm-ferry.ko $(scripts/guest-tools.sh)
tests/crash.sh "$out/initramfs.cpio" "$out/crash" "${FERRY_CRASH_POINTS:-100}"
tests/repl-crash.sh "$out/initramfs.cpio" "$out/repl-crash" "${FERRY_REPL_POINTS:-200}"
tests/repl-sec-crash.sh "$out/initramfs.cpio" "$out/repl-sec-crash" "${FERRY_SEC_CUTS:-10}"
tests/judge.sh "$out"
