#!/usr/bin/env bash
# `make demo`: two guests joined only to each other.  The secondary guest
# loads dm-ferry, creates a log and a data device in mode secondary and
# starts ferryd; the primary guest does the same in mode primary and writes
# dependent blocks while the secondary prints `ferryctl status` (lag); the
# host cuts the primary's power; the secondary promotes and runs the
# checker, whose verdict ends the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FERRY_OUT:-$PWD/out}/demo
mkdir -p "$out"
scripts/build-kernel.sh debug >/dev/null
make --no-print-directory module
scripts/mkinitramfs.sh "$out/initramfs.cpio" dm-ferry.ko $(scripts/guest-tools.sh)
echo "host: booting the secondary guest, then the primary guest (TCG: a minute or two)"
FERRY_DEMO=1 FERRY_REPL_APPS=0 FERRY_REPL_RESYNCS=0 tests/repl-crash.sh "$out/initramfs.cpio" "$out/run" 1
tests/judge.sh "$out/run"
