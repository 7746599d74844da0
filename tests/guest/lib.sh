# Shell helpers for the guest tests (sourced; busybox sh).

# Kernel log lines that fail a test: oopses, BUG/WARNING splats (lockdep
# and sleep-in-atomic reports are among them), KASAN, hung tasks, panics.
KLOG_BAD='BUG:|Oops|WARNING:|Kernel panic|general protection fault|INFO: task .* blocked|UBSAN:|Call Trace:|kmemleak: .*suspected'

# Reads a kernel log on stdin; prints its bad lines and returns 0 if any.
klog_bad() {
	grep -E -A30 "$KLOG_BAD" && return 0
	return 1
}

# Scans for leaks (kmemleak reports objects at least 5 s old, so wait) and
# prints what it finds.  Returns 1 when anything leaked.
kmemleak_check() {
	sleep 6
	echo scan >/sys/kernel/debug/kmemleak
	echo scan >/sys/kernel/debug/kmemleak
	if [ -s /sys/kernel/debug/kmemleak ]; then
		cat /sys/kernel/debug/kmemleak
		return 1
	fi
	return 0
}

# Debian's busybox runs its own applets before anything on PATH: call the
# real tools that share an applet's name (blkdiscard, mke2fs) by full path.

fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "  ok: $*"; }

# dmsetup without udev (the guest has none).  libdevmapper's note that the
# kernel has no System V semaphores is about udev synchronisation: dropped.
dm() {
	dmsetup --noudevsync "$@" 2>/tmp/dm.err
	set -- $?
	grep -v 'System V IPC' /tmp/dm.err >&2 || true
	return "$1"
}

# Size of a block device in 512-byte sectors.
sectors() { blockdev --getsz "$1"; }

# major:minor of a block device, as device-mapper prints it in tables.
devno() { cat "/sys/class/block/$(basename "$(readlink -f "$1")")/dev"; }

ferry_load() {
	grep -q '^dm_ferry ' /proc/modules || insmod /ferry/dm-ferry.ko || fail "insmod"
}

# Removes every device-mapper device and unloads the module.
ferry_cleanup() {
	killall ferry-test >/dev/null 2>&1 || true
	dm remove_all >/dev/null 2>&1 || true
	grep -q '^dm_ferry ' /proc/modules && rmmod dm_ferry
	return 0
}

# Wipes the superblocks (and bitmaps) of the meta devices a test uses, so
# that the test starts from new meta devices.
meta_wipe() {
	for m in "$@"; do
		dd if=/dev/zero of="$m" bs=1M count=16 oflag=direct 2>/dev/null || fail "wipe $m"
	done
}

# Starts `ferry-test read` for group $1 in the background with log $2 and
# further options; it drains until `reader_stop` and then idle for 1.5 s.
# Sets $rp.  reader_stop waits for it and fails the test if it failed.
reader_start() {
	g=$1 rlog=$2; shift 2
	rm -f "$rlog.stop"
	ferry-test read --group "$g" --log "$rlog" --idle-ms 1500 --stop-file "$rlog.stop" "$@" >"$rlog.out" 2>&1 &
	rp=$!
}
reader_stop() {
	touch "$rlog.stop"
	wait $rp || { tail -5 "$rlog"; cat "$rlog.out"; fail "reader"; }
}

# Puts a marker in the kernel log; klog_since prints what followed it.
kmark() { echo "FERRY-MARK $1" >/dev/kmsg; }
klog_since() { dmesg | sed -n "/FERRY-MARK $1\$/,\$p"; }

# Field N (1-based, after "<start> <len> ferry") of the status line of $1.
status_field() { dm status "$1" | awk -v n="$2" '{ print $(3 + n) }'; }

# Writes LEN MiB of a random pattern through $1 at MiB offset OFF and
# keeps the pattern in $3.
write_pattern() {
	head -c "$(( $4 * 1048576 ))" /dev/urandom >"$3"
	dd if="$3" of="$1" bs=1M seek="$2" oflag=direct conv=fsync,notrunc 2>/dev/null || fail "dd write to $1"
}

# Checks that LEN MiB at MiB offset OFF of device $1 equal file $3.
check_pattern() {
	dd if="$1" bs=1M skip="$2" count="$4" iflag=direct 2>/dev/null | cmp - "$3" || fail "pattern mismatch on $1 at ${2}M"
}

fio_verify() {
	fio --thread --output-format=terse --terse-version=3 --minimal --direct=1 --ioengine=libaio \
		--verify=crc32c --verify_fatal=1 --do_verify=1 "$@" >/tmp/fio.out 2>&1 ||
		{ cat /tmp/fio.out; fail "fio $*"; }
}
