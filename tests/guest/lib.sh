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

# A two-guest test's failure is published (`failed`), so that the peer's
# fetch gives up at once instead of waiting out its tries.
fail() {
	echo "FAIL: $*"
	[ -z "${WWW:-}" ] || publish failed "$*" 2>/dev/null || true
	exit 1
}
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
# Returns 1 (and says why) when the module cannot be unloaded: a reference
# the module leaked, or a device it left behind.
ferry_cleanup() {
	killall ferry-test ferryd >/dev/null 2>&1 || true
	local w
	for w in $(seq 1 50); do
		pidof ferry-test ferryd >/dev/null 2>&1 || break
		sleep 0.1
	done
	umount /mnt/* >/dev/null 2>&1 || true
	dm remove_all >/dev/null 2>&1 || true
	grep -q '^dm_ferry ' /proc/modules || return 0
	rmmod dm_ferry 2>/tmp/rmmod.err && return 0
	echo "ferry_cleanup: rmmod dm_ferry failed: $(cat /tmp/rmmod.err); left: $(dmsetup --noudevsync ls 2>&1 | tr '\n' ' ')"
	grep '^dm_ferry ' /proc/modules
	return 1
}

# Wipes the superblocks (and bitmaps) of the meta devices a test uses, so
# that the test starts from new meta devices.
# zero <dev> <MiB>: the device's first MiB zeroed (write-zeroes, which
# QEMU turns into a hole: far faster under TCG than writing them).
zero() {
	/sbin/blkdiscard -z -l $(($2 << 20)) "$1" 2>/dev/null ||
		dd if=/dev/zero of="$1" bs=1M count="$2" oflag=direct 2>/dev/null || fail "zero $1"
}
meta_wipe() {
	for m in "$@"; do zero "$m" 16; done
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
# phase <text>: a time-stamped line in the kernel log (the serial log shows
# where a long test spends its time).
phase() { echo "ferry-test: $*" >/dev/kmsg; }
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

# ---- replication between two guests (node 0 primary 10.99.0.1, node 1
# secondary 10.99.0.2).  Group gr: device 0 (role log) on vda with meta
# vdc, device 1 (role data) on vdb with meta vdd; 32 MiB each (REPL_SECTORS:
# another size, in 512-byte sectors).
REPL_KEY=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
REPL_PEER=10.99.0.2
repl_config() {  # repl_config primary|secondary [log_dir]
	mkdir -p /etc/ferry
	(umask 077; echo "$REPL_KEY" >/etc/ferry/gr.key)
	{
		echo 'group = "gr"'
		echo "role = \"$1\""
		echo 'key_file = "/etc/ferry/gr.key"'
		if [ "$1" = primary ]; then
			echo "peer = \"$REPL_PEER:7789\""
			# The tests zero both sites first: no initial copy
			# (REPL_INITIAL_SYNC=full: t-repl-initial).
			echo "initial_sync = \"${REPL_INITIAL_SYNC:-none}\""
		else
			echo 'listen = "0.0.0.0:7789"'
			echo "log_dir = \"${2:-/tmp/ferry-log}\""
		fi
	} >/etc/ferry/gr.toml
}
repl_devices() {  # repl_devices primary|secondary [keep]: devices of group gr, fresh unless keep
	ferry_load
	if [ "${2:-}" != keep ]; then
		meta_wipe /dev/vdc /dev/vdd
		zero /dev/vda 8
		zero /dev/vdb 8
	fi
	local S=${REPL_SECTORS:-65536}
	if [ "$1" = primary ]; then
		# REPL_PRIMARY_OPTS: more options (benchmarks).
		o="group gr checkpoint_ms 100 ${REPL_PRIMARY_OPTS:-}"
		n=$(( $(echo $o | wc -w) + 4 ))
		dm create r0 --table "0 $S ferry /dev/vda /dev/vdc $n $o device_id 0 role log" || fail "create r0"
		dm create r1 --table "0 $S ferry /dev/vdb /dev/vdd $n $o device_id 1 role data" || fail "create r1"
	else
		o="mode secondary group gr"
		dm create r0 --table "0 $S ferry /dev/vda /dev/vdc 8 $o device_id 0 role log" || fail "create r0"
		dm create r1 --table "0 $S ferry /dev/vdb /dev/vdd 8 $o device_id 1 role data" || fail "create r1"
	fi
}
ferryd_start() {  # starts ferryd for gr; sets $fdp
	ferryd gr >>/tmp/ferryd.log 2>&1 &
	fdp=$!
	for i in $(seq 1 50); do
		timeout 5 wget -q -O /dev/null http://127.0.0.1:9789/status 2>/dev/null && return 0
		kill -0 $fdp 2>/dev/null || { cat /tmp/ferryd.log; fail "ferryd exited"; }
		sleep 0.2
	done
	cat /tmp/ferryd.log; fail "ferryd status endpoint not up"
}
# A field of ferryd's status document, one value per line (streams).
fstatus() { timeout 10 wget -q -O - http://127.0.0.1:9789/status 2>/dev/null | sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p"; }
# The writer's workload of the replication tests.
REPL_BLOCKS=2048
# The workload of replication crash point <pt> (tests/repl-crash.sh):
# points 1..FERRY_BLOCK_POINTS "blocks", the FERRY_RESYNC_POINTS after them
# "resync", then "ext4" and "sqlite" by turns.
point_workload() {
	local b=${FERRY_BLOCK_POINTS:-$1} r=${FERRY_RESYNC_POINTS:-0}
	if [ "$1" -le "$b" ]; then
		echo blocks
	elif [ "$1" -le $((b + r)) ]; then
		echo resync
	elif [ $(( ($1 - b - r) % 2 )) = 1 ]; then
		echo ext4
	else
		echo sqlite
	fi
}
# The link's carrier as this guest sees it (1 up, 0 down): the host of the
# crash points cuts and restores links with QEMU's set_link.
carrier() { cat /sys/class/net/eth0/carrier 2>/dev/null || echo 0; }
# ext4 over both devices of group gr, so that an application's order runs
# across them: the journal on the log device r0, the file system on the
# data device r1 (mount with -o journal_path=/dev/mapper/r0; e2fsck -j).
mkfs_ext4_journal_r0() {
	/sbin/mke2fs -q -O journal_dev -F /dev/mapper/r0 || fail "mkfs journal on r0"
	/sbin/mke2fs -q -t ext4 -J device=/dev/mapper/r0 -F /dev/mapper/r1 || fail "mkfs ext4 on r1"
}
# Two-guest exchanges: each guest serves /tmp/www on port 7000, one httpd
# for all the tests of a boot; a test publishes its files in its own
# directory, $WWW (www_start <test>), so that what a test published stays
# served after it ended and the next test in the same boot never reads it.
www_start() {
	WWW_DIR=$1 WWW=/tmp/www/$1
	rm -rf "$WWW"; mkdir -p "$WWW"
	pidof httpd >/dev/null || httpd -p 7000 -h /tmp/www || fail "httpd"
}
# publish <file> <text>: <file> of this test with <text> as its content,
# whole or not at all (written aside, then renamed): the peer fetches it
# the moment it appears.
publish() { echo "$2" >"$WWW/.$1.new" && mv "$WWW/.$1.new" "$WWW/$1"; }
# lockstep <test>: with ferry.lockstep=1 (scripts/vm.sh, two guests that
# run the same tests in one boot), until the peer reached <test> too, at
# most 20 minutes: a test that failed early on one node must not leave
# the next test of the two nodes out of step.
lockstep() {
	local peer=10.99.0.$((2 - FERRY_NODE)) t
	mkdir -p /tmp/www/lockstep
	pidof httpd >/dev/null || httpd -p 7000 -h /tmp/www || return 1
	touch "/tmp/www/lockstep/$1"
	for t in $(seq 1 1200); do
		timeout 3 wget -q -O /dev/null "http://$peer:7000/lockstep/$1" 2>/dev/null && return 0
		sleep 1
	done
	echo "lockstep: the peer did not reach $1 in 20 minutes"
	return 1
}
# Until <peer> serves <file> of this test on port 7000, or stops answering
# ping (it finished and powered off), at most about a minute.
# Returns 1 when the minute is up with the peer still there.
await_peer_file() {  # await_peer_file <peer> <file>
	for t in $(seq 1 60); do
		timeout 3 wget -q -O /dev/null "http://$1:7000/$WWW_DIR/$2" 2>/dev/null && return 0
		ping -c 1 -W 1 "$1" >/dev/null 2>&1 || return 0
		sleep 1
	done
	echo "await_peer_file: $1 neither served /$2 nor went away in a minute"
	return 1
}
# $peer is the other guest.  fetch <path> <out> <tries>: until the peer
# serves <path> of this test; fails at once when the peer's test failed
# (it serves `failed`, see fail).
fetch() {
	for t in $(seq 1 "$3"); do
		timeout 20 wget -q -O "$2" "http://$peer:7000/$WWW_DIR/$1" 2>/dev/null && return 0
		if timeout 5 wget -q -O /tmp/peer.failed "http://$peer:7000/$WWW_DIR/failed" 2>/dev/null; then
			echo "fetch $1: the peer's test failed: $(cat /tmp/peer.failed)"
			return 1
		fi
		sleep 1
	done
	return 1
}
# Checksums of <MiB> (default 8) of vda and vdb, from <MiB> (default 0).
sums() { for d in /dev/vda /dev/vdb; do dd if=$d bs=1M count=${1:-8} skip=${2:-0} iflag=direct 2>/dev/null | md5sum | cut -c1-32; done | tr '\n' ' '; }
# The secondary's verdict for the primary; the first FAIL stands.
res() { grep -q '^FAIL' "$WWW/result" 2>/dev/null || publish result "$*"; }
# Primary, at the end of a two-guest test: publishes `done` with the given
# words (the checksums to compare, first), waits for the secondary's
# verdict and fails on anything but PASS.
primary_await_verdict() {
	publish done "$*"
	fetch result /tmp/result 300 || fail "no result from the secondary"
	cat /tmp/result
	grep -q '^PASS' /tmp/result || fail "secondary: $(cat /tmp/result)"
	touch $WWW/bye
	sleep 5  # time for the secondary to see it
	ok "secondary verified the replica"
}
# Secondary, once applied: promote, then the first <mib> MiB of each device
# must equal the primary's checksums <p0> <p1>; the verdict is published,
# served until the primary has it, and fails the test unless PASS.
secondary_verify_sums() {  # secondary_verify_sums <mib> <p0> <p1>
	local mib=$1 p0=$2 p1=$3
	ferryctl promote gr >/tmp/promote.out 2>&1 || res "FAIL: promote: $(cat /tmp/promote.out)"
	set -- $(sums "$mib")
	if [ "$1 $2" = "$p0 $p1" ]; then
		res "PASS: checksums equal ($1 $2)"
	else
		res "FAIL: checksums differ: secondary $1 $2, primary $p0 $p1"
	fi
	cat $WWW/result
	await_peer_file "$peer" bye
	grep -q '^PASS' $WWW/result || fail "$(cat $WWW/result)"
	ok "replica verified"
}
# Primary, after a resync under the writer $wp (ferry-test write, output
# in /tmp/w.out): the writer ended (its write count in $n), every record is
# acknowledged, and both devices are replicating with no dirty chunk.
writer_drained_clean() {
	wait $wp || { cat /tmp/w.out; fail "writer"; }
	n=$(sed -n 's/^writer|writes=//p' /tmp/w.out)
	[ "${n:-0}" -gt 0 ] || { cat /tmp/w.out; fail "no write count from the writer"; }
	repl_drained 480 || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "not drained: r0 $c0/$a0 r1 $c1/$a1"; }
	set -- $(dm status r0); m0=$8 d0=${15}
	set -- $(dm status r1); m1=$8 d1=${15}
	[ "$m0 $m1" = "replicating replicating" ] || fail "went $m0 $m1 while draining"
	[ "$d0 $d1" = "0 0" ] || fail "dirty chunks left after the resync and the drain: r0 $d0, r1 $d1"
}
# Primary: until r0 and r1 have every record acknowledged, three times in a
# row, at most <tries> half-seconds; sets c0 a0 c1 a1 (completed, acked).
repl_drained() {
	stable=0
	for t in $(seq 1 "$1"); do
		set -- $(dm status r0); c0=${10} a0=${12}
		set -- $(dm status r1); c1=${10} a1=${12}
		if [ "$c0" = "$a0" ] && [ "$c1" = "$a1" ]; then
			stable=$((stable + 1)); [ $stable -ge 3 ] && return 0
		else
			stable=0
		fi
		sleep 0.5
	done
	return 1
}
# Secondary: until every stream has applied all it holds, twice in a row,
# at most <tries> half-seconds.
repl_applied() {
	stable=0
	for t in $(seq 1 "$1"); do
		lags=$(fstatus lag_records)
		# An unreachable ferryd gives no lines: not applied.
		if [ -n "$lags" ] && [ -z "$(echo "$lags" | grep -v '^0$')" ]; then
			stable=$((stable + 1)); [ $stable -ge 2 ] && return 0
		else
			stable=0
		fi
		sleep 0.5
	done
	return 1
}
