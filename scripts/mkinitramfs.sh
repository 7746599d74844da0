#!/usr/bin/env bash
# Build what a test guest boots:
#
#   scripts/mkinitramfs.sh <out.cpio> <dm-ferry.ko> [<extra-binary>...]
#
# * <out.cpio>: a small initramfs (busybox, init, the module, the guest test
#   scripts, and the extra binaries in /ferry/bin);
# * <out.tools.img>: a read-only ext2 image with the dynamically linked
#   tools (dmsetup, fio, blkdiscard, e2fsprogs, sqlite3, tc, PostgreSQL) and every
#   library they need.  scripts/vm.sh attaches it as the last virtio disk
#   (serial "ferrytools"); the guest's init mounts it on /tools, and /usr,
#   /lib, /lib64 and /sbin point into it.  Nothing of it is unpacked at boot,
#   which under TCG saves seconds per guest.
#
# FERRY_INITRAMFS_KDIR=<kernel build tree> (optional; make bench sets it to
# the release kernel it boots): that kernel's DRBD modules, drbd.ko and
# lru_cache.ko when they are modular, go in /ferry/drbd, and the DRBD 8.4
# tools (drbdsetup-84, drbdmeta; Debian's drbd-utils) in the tools image,
# for tests/guest/t-bench-drbd.sh.  A module loads only into the kernel it
# was built with: without the variable no module is shipped.
set -euo pipefail

out=$1; ko=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root tools=$stage/tools
mkdir -p "$root"/{bin,proc,sys,dev,tmp,run,mnt,etc,root,tools,ferry/bin,ferry/tests}
mkdir -p "$tools"/{usr/bin,usr/sbin,sbin,lib,lib64}
for d in usr lib lib64 sbin; do ln -s "/tools/$d" "$root/$d"; done

# A host binary and every shared library it needs, into the tools image.
copy_elf() {
	local f=$1 dst=$2
	mkdir -p "$(dirname "$dst")"
	cp -L "$f" "$dst"
	{ ldd "$f" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
		[ -e "$tools$lib" ] && continue
		mkdir -p "$tools$(dirname "$lib")"
		cp -L "$lib" "$tools$lib"
	done
}

cp /bin/busybox "$root/bin/busybox"
copy_elf /usr/sbin/dmsetup "$tools/sbin/dmsetup"
copy_elf /usr/bin/fio "$tools/usr/bin/fio"
copy_elf /usr/sbin/blkdiscard "$tools/sbin/blkdiscard"
for t in mke2fs e2fsck; do copy_elf "/usr/sbin/$t" "$tools/sbin/$t"; done
[ -x /usr/bin/sqlite3 ] && copy_elf /usr/bin/sqlite3 "$tools/usr/bin/sqlite3"
[ -x /usr/sbin/tc ] && copy_elf /usr/sbin/tc "$tools/sbin/tc"
# perf (linux-perf): make bench's profile of the primary path
# (FERRY_BENCH_PROFILE=1), when the host has it.
[ -x /usr/bin/perf ] && copy_elf /usr/bin/perf "$tools/usr/bin/perf"
# PostgreSQL (the application test, repl-app): the server, initdb, pg_ctl,
# pgbench and psql, its modules (JIT left out) and shared data, and the
# time zone database it reads.  Each keeps its Debian path, so that the
# binaries find their data relative to themselves.
pg=/usr/lib/postgresql/15
if [ -x $pg/bin/postgres ]; then
	for t in postgres initdb pg_ctl pgbench psql; do copy_elf "$pg/bin/$t" "$tools$pg/bin/$t"; done
	mkdir -p "$tools$pg/lib"
	for so in $pg/lib/*.so; do
		case $so in */llvmjit*) continue ;; esac
		copy_elf "$so" "$tools$pg/lib/$(basename "$so")"
	done
	mkdir -p "$tools/usr/share"
	cp -a /usr/share/postgresql "$tools/usr/share/"
	cp -a /usr/share/zoneinfo "$tools/usr/share/"
fi
# DRBD 8.4's tools; the 8.4 drbdsetup lives under /usr/lib/drbd.
[ -x /usr/lib/drbd/drbdsetup-84 ] && copy_elf /usr/lib/drbd/drbdsetup-84 "$tools/sbin/drbdsetup-84"
[ -x /usr/sbin/drbdmeta ] && copy_elf /usr/sbin/drbdmeta "$tools/sbin/drbdmeta"
copy_elf /lib64/ld-linux-x86-64.so.2 "$tools/lib64/ld-linux-x86-64.so.2"

cp "$ko" "$root/ferry/dm-ferry.ko"
kdir=${FERRY_INITRAMFS_KDIR:-}
if [ -n "$kdir" ] && [ -f "$kdir/drivers/block/drbd/drbd.ko" ]; then
	mkdir -p "$root/ferry/drbd"
	cp "$kdir/drivers/block/drbd/drbd.ko" "$root/ferry/drbd/"
	# Its dependencies (modinfo -F depends: lru_cache), in load order.
	for m in $(/sbin/modinfo -F depends "$kdir/drivers/block/drbd/drbd.ko" | tr , ' '); do
		f=$(find "$kdir/lib" "$kdir/drivers" -name "$m.ko" | head -1)
		[ -n "$f" ] || { echo "mkinitramfs: drbd.ko needs $m.ko, not found in $kdir" >&2; exit 1; }
		cp "$f" "$root/ferry/drbd/"
		echo "$m" >>"$root/ferry/drbd/order"
	done
	echo drbd >>"$root/ferry/drbd/order"
fi
for f in "$@"; do copy_elf "$f" "$root/ferry/bin/$(basename "$f")"; done
cp "$top"/tests/guest/*.sh "$root/ferry/tests/"
cp "$top/tests/guest/init" "$root/init"
chmod +x "$root/init" "$root"/ferry/tests/*.sh
printf '%s\n' "root:x:0:0:root:/root:/bin/sh" "postgres:x:70:70:PostgreSQL:/tmp:/bin/sh" >"$root/etc/passwd"
printf '%s\n' "root:x:0:" "postgres:x:70:" >"$root/etc/group"

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) >"$out.tmp"
mv "$out.tmp" "$out"

img=${out%.cpio}.tools.img
mb=$(( $(du -sm "$tools" | cut -f1) * 5 / 4 + 16 ))
rm -f "$img.tmp"
mke2fs -q -F -t ext2 -b 4096 -L ferrytools -d "$tools" "$img.tmp" "${mb}M" >/dev/null
mv "$img.tmp" "$img"
