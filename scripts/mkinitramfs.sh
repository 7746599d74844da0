#!/usr/bin/env bash
# Build the guest initramfs: busybox, dmsetup, fio, blkdiscard, e2fsprogs,
# the module, the project's guest tools and the guest test scripts.
#
#   scripts/mkinitramfs.sh <out.cpio> <dm-ferry.ko> [<extra-file>...]
#
# Extra files land in /ferry/bin of the guest.  The archive is not
# compressed: under TCG decompressing costs more than reading.
set -euo pipefail

out=$1; ko=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,proc,sys,dev,tmp,run,mnt,etc,root,ferry/bin,ferry/tests}

# A host binary and every shared library it needs, at the same paths.
copy_elf() {
	local f=$1 dst=${2:-$1}
	mkdir -p "$stage$(dirname "$dst")"
	cp -L "$f" "$stage$dst"
	ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
		[ -e "$stage$lib" ] && continue
		mkdir -p "$stage$(dirname "$lib")"
		cp -L "$lib" "$stage$lib"
	done
}

cp /bin/busybox "$stage/bin/busybox"
copy_elf /usr/sbin/dmsetup /sbin/dmsetup
copy_elf /usr/bin/fio /usr/bin/fio
copy_elf /usr/sbin/blkdiscard /sbin/blkdiscard
for t in mke2fs e2fsck; do copy_elf "/usr/sbin/$t" "/sbin/$t"; done
[ -x /usr/bin/sqlite3 ] && copy_elf /usr/bin/sqlite3 /usr/bin/sqlite3
[ -x /usr/sbin/tc ] && copy_elf /usr/sbin/tc /sbin/tc
copy_elf /lib64/ld-linux-x86-64.so.2

cp "$ko" "$stage/ferry/dm-ferry.ko"
for f in "$@"; do copy_elf "$f" "/ferry/bin/$(basename "$f")"; done
cp "$top"/tests/guest/*.sh "$stage/ferry/tests/"
cp "$top/tests/guest/init" "$stage/init"
chmod +x "$stage/init" "$stage"/ferry/tests/*.sh

echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"

(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) >"$out.tmp"
mv "$out.tmp" "$out"
