# Resync benchmark (scripts/bench.sh, part "resync"), two guests: node 0
# primary, node 1 secondary, the disks of bench-repl (vda, vdb 256 MiB data,
# vdc, vdd meta) and a fifth, vde (1 GiB), for the secondary's remote log:
# a resync span is staged whole there until its end is applied, and B's
# hold a copy of some 180 MiB and what fio wrote meanwhile, more than a
# tmpfs in the guest's memory holds.
# Group gr on the whole 256 MiB of each data disk; the primary's spool is
# 16 MiB with `overflow block block_timeout 10`, ferryd with
# `spool_after_mb = 0` (no disk spool) and `resync = "auto"`.  10 ms of
# delay each way (netem, in both guests), the primary's side rate-limited.
#
# Going ahead: the link is cut (netem loss 100% on the primary's eth0), the
# streams are seen disconnected (the secondary drops a connection silent
# for 5 s; ferryd cannot write START while none is connected), then the
# writes overflow the spool: the writer is held, the group goes `ahead`
# after block_timeout with nothing let in, and later writes are dirty
# chunks.  Restoring the shaped link, ferryd reconnects (its backoff, at
# most 5 s) and writes START: `resyncing`, then `replicating` once the
# secondary has applied the span.  (`overflow block`, not `bitmap`: on a
# link the application can outrun, a full spool must hold the writer, not
# send the group ahead, or B's runs would end their own resyncs.)
#
#   A  Resync throughput on the shaped link (FERRY_BENCH_LINK_MBIT, default
#      40).  With the link cut, fresh random data (/dev/urandom) in 1 MiB
#      direct writes: 20 MiB to the start of r1 (the spool's 16 MiB and
#      more: the group goes ahead), then FERRY_BENCH_RESYNC_MB (default
#      64) MiB over the same start of r1, dirty, and 1 MiB to r0.
#      Measured from the moment the link is restored until both devices
#      are `replicating` (the span applied at the secondary), polled every
#      0.5 s: the dirty bytes (dirty chunks x 64 KiB), the seconds, MB/s,
#      and the fraction of the link (dirty bits per second / the link's
#      bits per second).  The spool's records
#      from the cut cross the link in that time too, and the time includes
#      ferryd's reconnection: so also the time until both streams were
#      connected and until the group said `resyncing`, the fraction of the
#      link from the connection on with the spooled bytes counted
#      (everything ferryd had to send, over the time it could send), and
#      the bytes the primary's eth0 sent per dirty byte (and per byte
#      moved: dirty and spooled).
#   B  Application writes during a resync, on FERRY_BENCH_RESYNC_APP_MBIT
#      (default 200: a link the guest's CPU cannot fill, as in bench-repl;
#      on a link the writer outruns, the writer keeps the spool more than
#      half full and the resync, which takes a chunk only below half, waits
#      by design): fio 4 KiB random writes at QD8 (libaio, direct) for
#      FERRY_BENCH_SECS (default 15) on the last 64 MiB of r1, a region the
#      copy does not cover, in three conditions, their order rotated every
#      round:
#        norsync   replicating, no resync;
#        uncapped  during a resync of the first 192 MiB of r1 (written with
#                  the link cut, as in A), `resync_mbps 0`;
#        capped    the same with `resync_mbps FERRY_BENCH_RESYNC_CAP`
#                  (default 2 MiB/s), set before the link is restored.
#      fio starts once the group is `resyncing` and the copy has begun
#      (a chunk read: the spool's backlog from the cut is below half).
#      Reported: fio's IOPS; for the resyncs the chunks copied during the
#      run (`resync_left`, fields 16 and 17 of the status) and their rate,
#      and whether the resync was still running when fio ended (if it
#      ended first: when), and the share of the primary guest's one CPU
#      that was busy over the run (/proc/stat).  The status is polled every second in all three
#      conditions, the spool's fill with it (median reported).  After a
#      capped run the cap goes back to 0 and the rest of the copy runs out.
#
# FERRY_BENCH_ROUNDS (default 3) rounds, each A then B's three conditions;
# every measurement ends with both devices replicating, every record
# acknowledged and no dirty chunk, so that rounds are independent.
# Prints "bench-resync|<round>|<name>|<value>" lines (round 0: the
# settings); scripts/bench.sh prints the medians and ratios.
secs=${FERRY_BENCH_SECS:-15}
mbit=${FERRY_BENCH_LINK_MBIT:-40}
appmbit=${FERRY_BENCH_RESYNC_APP_MBIT:-200}
rounds=${FERRY_BENCH_ROUNDS:-3}
amb=${FERRY_BENCH_RESYNC_MB:-64}
cap=${FERRY_BENCH_RESYNC_CAP:-2}
peer=10.99.0.$((2 - FERRY_NODE))
SECT=524288        # 256 MiB: the whole data disks
APP_OFF=192        # fio's region, MiB: the last 64 of r1
APP_MB=64
BIG=$APP_OFF       # B's dirty writes: all of r1 before fio's region
SPOOL_MB=16
www_start bench-resync

if [ "$FERRY_NODE" = 1 ]; then
	[ "$(sectors /dev/vde)" = 2097152 ] || fail "vde is not the 1 GiB disk for the remote log: $(sectors /dev/vde) sectors"
	/sbin/mke2fs -q -t ext4 -F /dev/vde || fail "mkfs.ext4 vde"
	mkdir -p /var/lib/ferry
	mount -t ext4 /dev/vde /var/lib/ferry || fail "mount vde"
	REPL_SECTORS=$SECT repl_devices secondary
	repl_config secondary /var/lib/ferry/gr
	/sbin/tc qdisc add dev eth0 root netem delay 10ms limit 10000 || fail "netem"
	ferryd_start
	fetch done /dev/null $((600 + rounds * 1200)) || fail "the primary never finished"
	ferryctl status gr || true
	touch $WWW/bye
	sleep 5  # time for the primary to see it
	exit 0
fi

[ "$amb" -ge 1 ] && [ "$amb" -le "$BIG" ] || fail "FERRY_BENCH_RESYNC_MB must be 1 to $BIG: $amb"
REPL_SECTORS=$SECT REPL_PRIMARY_OPTS="spool_mb $SPOOL_MB overflow block block_timeout 10" repl_devices primary
repl_config primary
{ echo 'spool_after_mb = 0'; echo 'resync = "auto"'; } >>/etc/ferry/gr.toml
/sbin/tc qdisc add dev eth0 root netem rate "${mbit}mbit" delay 10ms limit 10000 || fail "netem"
ferryd_start

up() { cut -d' ' -f1 /proc/uptime; }
tx() { cat /sys/class/net/eth0/statistics/tx_bytes; }
shape() { /sbin/tc qdisc change dev eth0 root netem rate "${1}mbit" delay 10ms limit 10000 || fail "netem change"; }
out() { echo "bench-resync|$r|$1|$2"; }
die() {
	[ -z "${fp:-}" ] || kill "$fp" 2>/dev/null || true
	dm status || true
	ferryctl status gr 2>&1 || true
	tail -30 /tmp/ferryd.log
	fail "$*"
}
# st: both devices' status in one dmsetup call ("r0: <start> <len> ferry
# primary ..."): m0 m1 modes, sp the group's spool (KiB), d0 d1 dirty
# chunks, l0 l1 chunks left of the resync, n0 n1 its chunks (0 when none).
st() {
	m0= m1= sp=0 d0=0 d1=0 l0=0 l1=0 n0=0 n1=0
	eval "$(dmsetup --noudevsync status 2>/dev/null | awk '
		$1 == "r0:" { printf "m0=%s sp=%d d0=%d l0=%d n0=%d\n", $9, $14, $16, $20, $21 }
		$1 == "r1:" { printf "m1=%s d1=%d l1=%d n1=%d\n", $9, $16, $20, $21 }')"
}
resyncing() { [ "$m0" = resyncing ] || [ "$m1" = resyncing ]; }
# The streams connected (2), or none (0).
connected() { [ "$(fstatus connected | grep -c true)" = "$1" ]; }
# settle <what>: replicating, every record acknowledged, no dirty chunk.
settle() {
	for t in $(seq 1 1800); do
		st
		[ "$m0 $m1" = "replicating replicating" ] && break
		sleep 0.5
	done
	[ "$m0 $m1" = "replicating replicating" ] || die "$1: not replicating after 900 s: r0 $m0, r1 $m1"
	repl_drained 600 || die "$1: not drained in 300 s: r0 $c0/$a0 r1 $c1/$a1"
	for t in $(seq 1 120); do
		st
		[ "$d0 $d1" = "0 0" ] && break
		sleep 0.5
	done
	[ "$d0 $d1" = "0 0" ] || die "$1: dirty chunks left once replicating and drained: r0 $d0, r1 $d1"
	[ "$m0 $m1" = "replicating replicating" ] || die "$1: went $m0 $m1 while settling"
}
# cut_link <what>: the link cut, until no stream is connected (ferryd can
# then write no START before the link is back).
cut_link() {
	/sbin/tc qdisc change dev eth0 root netem loss 100% || fail "netem cut"
	for t in $(seq 1 120); do
		connected 0 && return 0
		sleep 0.5
	done
	die "$1: a stream still connected 60 s after the link was cut"
}
# ahead <what>: the group ahead (the writes past the spool were held for
# block_timeout, then went to the bitmap).
ahead() {
	for t in $(seq 1 120); do
		st
		[ "$m0" = ahead ] && return 0
		sleep 0.5
	done
	die "$1: the group did not go ahead with the link cut: r0 $m0, r1 $m1"
}
# The conditions of B in round $1.
order_of() {
	case $(($1 % 3)) in
	1) echo "norsync uncapped capped" ;;
	2) echo "uncapped capped norsync" ;;
	0) echo "capped norsync uncapped" ;;
	esac
}

# A: the resync's throughput on the shaped link.
bench_a() {
	phase "bench-resync round $r: A"
	shape "$mbit"
	settle "A (before)"
	cut_link A
	# The spool's 16 MiB and more: the writer is held, then the group goes
	# ahead; then the dirty data, over the same start of r1, and a little
	# on r0.
	dd if=/dev/urandom of=/dev/mapper/r1 bs=1M count=$((SPOOL_MB + 4)) oflag=direct 2>/dev/null || fail "A: write to r1"
	ahead A
	dd if=/dev/urandom of=/dev/mapper/r1 bs=1M count="$amb" oflag=direct 2>/dev/null || fail "A: write to r1"
	dd if=/dev/urandom of=/dev/mapper/r0 bs=1M count=1 oflag=direct 2>/dev/null || fail "A: write to r0"
	st
	[ "$m0" = ahead ] || die "A: $m0 after the writes, not ahead"
	[ "$d1" -gt 0 ] || die "A: ahead without dirty chunks on r1"
	dirty=$((d0 + d1)) spool=$sp
	starts=$(grep -c 'START accepted' /tmp/ferryd.log || true)
	x0=$(tx)
	shape "$mbit"
	t0=$(up)
	tcon= ts=
	for t in $(seq 1 1200); do
		[ -n "$tcon" ] || ! connected 2 || tcon=$(up)
		st
		[ -n "$ts" ] || ! resyncing || ts=$(up)
		[ "$m0 $m1" = "replicating replicating" ] && break
		sleep 0.5
	done
	t1=$(up) x1=$(tx)
	[ "$m0 $m1" = "replicating replicating" ] || die "A: not replicating 600 s after the link came back: r0 $m0, r1 $m1"
	[ "$(grep -c 'START accepted' /tmp/ferryd.log || true)" -gt "$starts" ] ||
		die "A: replicating again, but ferryd logged no START accepted since the link came back"
	awk -v r="$r" -v d="$dirty" -v s="$spool" -v t0="$t0" -v tc="$tcon" -v ts="$ts" -v t1="$t1" \
		-v x0="$x0" -v x1="$x1" -v l="$mbit" 'BEGIN {
		db = d * 65536; sb = s * 1024; T = t1 - t0; link = l * 1e6 / 8; x = x1 - x0
		printf "bench-resync|%d|A_dirty_MiB|%.1f\n", r, db / 1048576
		printf "bench-resync|%d|A_spooled_MiB|%.1f\n", r, sb / 1048576
		printf "bench-resync|%d|A_s|%.1f\n", r, T
		if (tc != "") printf "bench-resync|%d|A_connected_s|%.1f\n", r, tc - t0
		if (ts != "") printf "bench-resync|%d|A_resyncing_s|%.1f\n", r, ts - t0
		printf "bench-resync|%d|A_MBps|%.2f\n", r, db / T / 1e6
		printf "bench-resync|%d|A_fraction_of_link|%.3f\n", r, db / T / link
		if (tc != "" && t1 > tc) printf "bench-resync|%d|A_moved_fraction_of_link_from_connected|%.3f\n", r, (db + sb) / (t1 - tc) / link
		printf "bench-resync|%d|A_eth0_bytes_per_dirty_byte|%.3f\n", r, x / db
		printf "bench-resync|%d|A_eth0_bytes_per_moved_byte|%.3f\n", r, x / (db + sb) }'
	settle A
}

# B: fio during condition $1.
bench_b() {
	c=$1
	phase "bench-resync round $r: B $c"
	shape "$appmbit"
	settle "B $c (before)"
	if [ "$c" != norsync ]; then
		cut_link "B $c"
		dd if=/dev/urandom of=/dev/mapper/r1 bs=1M count=$BIG oflag=direct 2>/dev/null || fail "B $c: write to r1"
		ahead "B $c"
		st
		[ "$d1" -gt 0 ] || die "B $c: ahead without dirty chunks on r1"
		out "B_${c}_dirty_MiB" "$(awk -v d=$((d0 + d1)) 'BEGIN { printf "%.1f", d / 16 }')"
		mbps=0
		[ "$c" = uncapped ] || mbps=$cap
		dm message r1 0 resync_mbps "$mbps" || die "B $c: message resync_mbps $mbps"
		shape "$appmbit"
		for t in $(seq 1 1200); do
			st
			resyncing && [ $((l0 + l1)) -lt $((n0 + n1)) ] && break
			[ "$m0 $m1" = "replicating replicating" ] && die "B $c: the resync was over before fio started"
			sleep 0.25
		done
		resyncing && [ $((l0 + l1)) -lt $((n0 + n1)) ] ||
			die "B $c: no copy under way 300 s after the link came back: r0 $m0 ($l0 of $n0 left), r1 $m1 ($l1 of $n1 left)"
	fi
	L0=$((l0 + l1)) N0=$((n0 + n1))
	cpu0=$(head -1 /proc/stat)
	fio --thread --name=b --filename=/dev/mapper/r1 --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=8 \
		--offset="${APP_OFF}M" --size="${APP_MB}M" --time_based --runtime="$secs" \
		--minimal --terse-version=3 >/tmp/fio.b 2>&1 &
	fp=$!
	t0=$(up)
	ended=
	: >/tmp/spool.b
	while kill -0 "$fp" 2>/dev/null; do
		st
		echo "$sp" >>/tmp/spool.b
		case "$m0 $m1" in
		*ahead*) die "B $c: the group went ahead during the fio run (r0 $m0, r1 $m1)" ;;
		esac
		if [ "$c" = norsync ]; then
			[ "$m0 $m1" = "replicating replicating" ] || die "B $c: went $m0 $m1 during the fio run"
		elif [ -z "$ended" ] && ! resyncing; then
			ended=$(up)
		fi
		sleep 1
	done
	wait "$fp" || { fp=; cat /tmp/fio.b; die "B $c: fio"; }
	fp=
	t1=$(up)
	# The guest's one CPU over the run: the share not idle (idle and
	# iowait are fields 5 and 6 of the cpu line).
	echo "$cpu0 $(head -1 /proc/stat)" | awk -v r="$r" -v c="$c" '{
		n = NF / 2; t = 0; i = 0
		for (k = 2; k <= n; k++) { d = $(n + k) - $k; t += d; if (k == 5 || k == 6) i += d }
		if (t > 0) printf "bench-resync|%d|B_%s_cpu_busy|%.3f\n", r, c, 1 - i / t }'
	st
	# terse v3: field 49 write IOPS
	out "B_${c}_iops" "$(awk -F';' 'NF > 100 { print $49 }' /tmp/fio.b)"
	out "B_${c}_spool_median_KiB" "$(sort -n /tmp/spool.b | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] + 0 }')"
	if [ "$c" != norsync ]; then
		if [ -z "$ended" ] && resyncing && [ $((n0 + n1)) = "$N0" ]; then
			copied=$((L0 - l0 - l1)) run=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
			out "B_${c}_running_at_end" yes
		else
			# Over before fio: every chunk left at its start was copied.
			[ -n "$ended" ] || ended=$t1
			copied=$L0 run=$(awk -v a="$t0" -v b="$ended" 'BEGIN { print b - a }')
			out "B_${c}_running_at_end" no
			out "B_${c}_over_after_s" "$(awk -v s="$run" 'BEGIN { printf "%.1f", s }')"
		fi
		out "B_${c}_copied_chunks" "$copied"
		out "B_${c}_copy_MBps" "$(awk -v c="$copied" -v s="$run" 'BEGIN { printf "%.2f", (s > 0 ? c * 65536 / s / 1e6 : 0) }')"
		[ "$mbps" = 0 ] || dm message r1 0 resync_mbps 0 || die "B $c: message resync_mbps 0"
	fi
	settle "B $c"
}

# Both streams connected before the first cut (the secondary makes its
# log's file system first); a stream connects once it has a record: a
# checkpoint gives each one.
dm message r0 0 checkpoint || fail "checkpoint"
for t in $(seq 1 1200); do
	connected 2 && break
	sleep 0.5
done
connected 2 || die "the streams did not connect"
r=0
out link_mbit "$mbit"
out app_link_mbit "$appmbit"
out resync_cap_MiBps "$cap"
out fio_secs "$secs"
out a_write_MiB "$amb"
out b_write_MiB "$BIG"
out spool_mb "$SPOOL_MB"
out rounds "$rounds"
fp=
for r in $(seq 1 "$rounds"); do
	bench_a
	for c in $(order_of "$r"); do
		bench_b "$c"
	done
done
ferryctl status gr || true
st
[ "$m0 $m1" = "replicating replicating" ] || die "the primary went $m0 $m1"
touch $WWW/done
await_peer_file "$peer" bye
