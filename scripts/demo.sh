#!/usr/bin/env bash
# `make demo`: boot a guest, create a ferry device on a virtio disk, run fio
# through it and print its table and status.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FERRY_OUT:-$PWD/out}/demo
mkdir -p "$out"
scripts/build-kernel.sh debug >/dev/null
make --no-print-directory module
scripts/mkinitramfs.sh "$out/initramfs.cpio" dm-ferry.ko
scripts/vm.sh --initrd "$out/initramfs.cpio" --out "$out/vm" --disk 256M --disk 64M demo
grep -a '^demo|' "$out/vm/g0.log" | cut -d'|' -f2-
