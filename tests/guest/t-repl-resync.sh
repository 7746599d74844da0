# Two guests: a primary that went ahead comes back by the automatic resync.
# Group gr on 256 MiB devices; the primary's kernel spool is 4 MiB with
# `overflow bitmap`, its disk spool off (`spool_after_mb = 0`), `resync =
# "auto"`.  A verifying writer (ferry-test write) runs on both devices; the
# link is cut (netem loss 100%) and 8 MiB more written to the data device
# overflow the spool: the group must go `ahead` with dirty chunks, and the
# writer goes on for a while.  The link restored, ferryd must start a
# resync by itself once both streams are connected: the kernel says
# `resyncing` (chunks left of the resync's total), then `replicating`
# again within 300 s, with no dirty chunk left after the drain.  The chunks
# resent (the resync's total) must be more than 0 and at most the devices'
# chunks; they are reported beside the dirty chunks at the restore.  The
# secondary, which must have applied a resync span whole, promoted, passes
# the prefix checker with every write present, and its devices equal the
# primary's (checksums of the whole 256 MiB of each).
peer=10.99.0.$((2 - FERRY_NODE))
www_start repl-resync
# The devices' size, MiB: 64 in make test (zeroing them first costs most
# of the test's time in TCG guests), FERRY_RESYNC_MB=256 in make soak.
MB=${FERRY_RESYNC_MB:-64}
SECT=$(( MB * 2048 ))
CHUNKS=$(( 2 * SECT / 128 ))  # both devices, 64 KiB chunks
BLOCKS=$(( MB * 64 ))  # the writer's 4 KiB blocks per device: a quarter of it
NETEM="delay 2ms"

if [ "$FERRY_NODE" = 0 ]; then
	# The whole disks zeroed (the two sites start equal: no initial copy).
	zero /dev/vda $MB
	zero /dev/vdb $MB
	REPL_SECTORS=$SECT REPL_PRIMARY_OPTS="spool_mb 4 overflow bitmap" repl_devices primary
	repl_config primary
	{ echo 'spool_after_mb = 0'; echo 'resync = "auto"'; } >>/etc/ferry/gr.toml
	ferryd_start
	/sbin/tc qdisc add dev eth0 root netem $NETEM || fail "netem"
	# Both streams connected first (the secondary zeroes its disks before
	# it listens): the spool must overflow with the cut, not before.  A
	# stream connects once it has a record: a checkpoint gives each one.
	dm message r0 0 checkpoint || fail 'checkpoint'
	for t in $(seq 1 1200); do
		[ "$(fstatus connected | grep -c true)" = 2 ] && break
		sleep 0.5
	done
	[ "$(fstatus connected | grep -c true)" = 2 ] || { ferryctl status gr; fail "the streams did not connect"; }
	rm -f /tmp/w.stop
	ferry-test write --dev /dev/mapper/r0 --dev /dev/mapper/r1 --count 10000000 --blocks $BLOCKS \
		--seed 11 --log /dev/null --stop-file /tmp/w.stop >/tmp/w.out 2>&1 &
	wp=$!
	sleep 5
	kill -0 $wp 2>/dev/null || { cat /tmp/w.out; fail "the writer ended early"; }
	phase "repl-resync: link cut"
	/sbin/tc qdisc change dev eth0 root netem loss 100% || fail "cut"
	# More than the kernel's spool holds, past the writer's blocks.
	dd if=/dev/urandom of=/dev/mapper/r1 bs=1M seek=$(( MB * 5 / 8 )) count=8 oflag=direct 2>/dev/null || fail "bulk write to r1"
	mode=
	for t in $(seq 1 240); do
		set -- $(dm status r0)
		mode=$8
		[ "$mode" = ahead ] && break
		sleep 0.5
	done
	[ "$mode" = ahead ] || { dm status; tail -20 /tmp/ferryd.log; fail "the group did not go ahead with the link cut: $mode"; }
	set -- $(dm status r1); d1=${15}
	[ "$d1" -gt 0 ] || fail "ahead without dirty chunks on r1: $(dm status r1)"
	ok "link cut: the group went ahead, r1 has $d1 dirty chunks"
	# (ferryd reads the kernel's lines at most once a second.)
	for t in 1 2 3 4 5; do
		[ "$(fstatus state)" = ahead ] && break
		sleep 1
	done
	[ "$(fstatus state)" = ahead ] || fail "ferryd's state is not ahead: $(fstatus state)"
	# The writer goes on while ahead: its writes go to the bitmap.
	sleep 8
	kill -0 $wp 2>/dev/null || { cat /tmp/w.out; fail "the writer ended while ahead"; }
	set -- $(dm status r0); dirty=${15}
	set -- $(dm status r1); dirty=$(( dirty + ${15} ))
	note=$(ferryctl status gr 2>&1 | grep 'dirty chunks' || true)
	phase "repl-resync: link restored ($dirty dirty chunks)"
	/sbin/tc qdisc change dev eth0 root netem $NETEM || fail "restore"
	ok "link restored with $dirty dirty chunks [$note]"
	t0=$(date +%s)
	# Resyncing, then replicating, within 300 s.  The writer stops 10 s
	# after the restore (its writes meanwhile are records again, or dirty
	# chunks when the group overflows once more).
	seen=0 resent=0 again=0 said= was=ahead
	for t in $(seq 1 600); do
		if [ -e /tmp/w.stop ] || [ $(( $(date +%s) - t0 )) -ge 10 ]; then touch /tmp/w.stop; fi
		set -- $(dm status r0); m0=$8 l0=${19:-0} n0=${20:-0}
		set -- $(dm status r1); m1=$8 l1=${19:-0} n1=${20:-0}
		if [ "$m0" = resyncing ] || [ "$m1" = resyncing ]; then
			if [ $seen = 0 ]; then
				ok "resyncing $(( $(date +%s) - t0 )) s after the restore: $((l0 + l1)) of $((n0 + n1)) chunks left"
				ferryctl status gr >/tmp/st.resync 2>&1 || true
				grep -q 'primary, resyncing' /tmp/st.resync && said="ferryctl status said resyncing"
			fi
			seen=1
			[ $((n0 + n1)) -gt "$resent" ] && resent=$((n0 + n1))
		elif [ "$m0" = ahead ] && [ "$was" != ahead ]; then
			again=$((again + 1))
		elif [ "$m0 $m1" = "replicating replicating" ] && [ -e /tmp/w.stop ]; then
			break
		fi
		was=$m0
		sleep 0.5
	done
	secs=$(( $(date +%s) - t0 ))
	[ "$m0 $m1" = "replicating replicating" ] ||
		{ dm status; ferryctl status gr || true; tail -30 /tmp/ferryd.log; fail "not replicating $secs s after the restore: r0 $m0, r1 $m1"; }
	grep -q 'resync (automatic, the group is ahead): START accepted' /tmp/ferryd.log ||
		{ tail -30 /tmp/ferryd.log; fail "replicating again, but ferryd logged no automatic START"; }
	if [ $seen = 0 ]; then
		# Over before a look saw it: the START's line says how many.
		resent=$(grep 'START accepted' /tmp/ferryd.log | tail -1 | sed -n 's/.*dirty_chunks=\([0-9]*\).*/\1/p')
	fi
	[ "${resent:-0}" -gt 0 ] && [ "$resent" -le $CHUNKS ] ||
		fail "chunks resent: [$resent], not in 1..$CHUNKS (dirty at the restore: $dirty)"
	ok "replicating again $secs s after the restore; chunks resent $resent (dirty at the restore $dirty, the devices' $CHUNKS), ahead again $again times${said:+; $said}"
	writer_drained_clean
	ok "$n dependent writes drained, no dirty chunk left"
	ferryctl status gr || true  # exits 2 when degraded
	primary_await_verdict "$n $(sums $MB)"
else
	zero /dev/vda $MB
	zero /dev/vdb $MB
	REPL_SECTORS=$SECT repl_devices secondary
	repl_config secondary
	/sbin/tc qdisc add dev eth0 root netem $NETEM || fail "netem"
	ferryd_start
	fetch done /tmp/done 900 || fail "the primary never finished"
	set -- $(cat /tmp/done); n=$1 p0=$2 p1=$3
	ok "primary drained $n writes"
	repl_applied 240 || res "FAIL: not applied: $(fstatus lag_records | tr '\n' ' ')"
	spans=$(fstatus resync_spans_applied)
	[ "${spans:-0}" -ge 1 ] 2>/dev/null || res "FAIL: no resync span applied at the secondary: [$spans]"
	[ "$(fstatus resync_span_open)" = false ] || res "FAIL: a resync span is still open"
	ok "$spans resync spans applied"
	ferryctl promote gr >/tmp/promote.out 2>&1 || res "FAIL: promote: $(cat /tmp/promote.out)"
	cat /tmp/promote.out
	if ferry-test prefix-check --dev /dev/mapper/r0 --dev /dev/mapper/r1 --blocks $BLOCKS --seed 11 --min "$n" >/tmp/pc.out 2>&1; then
		set -- $(sums $MB)
		if [ "$1 $2" = "$p0 $p1" ]; then
			res "PASS: $(cat /tmp/pc.out); checksums of $MB MiB equal ($1 $2)"
		else
			res "FAIL: checksums differ: secondary $1 $2, primary $p0 $p1"
		fi
	else
		res "FAIL: $(cat /tmp/pc.out)"
	fi
	cat $WWW/result
	await_peer_file "$peer" bye
	grep -q '^PASS' $WWW/result || fail "$(cat $WWW/result)"
	ok "replica verified"
fi
