# Two guests: a resync the secondary has no room for is refused before it
# begins, and changes nothing; it starts by itself once there is room.
# The secondary's log_dir is an 8 MiB tmpfs (mounted before ferryd
# starts) with `resync_reserve_mb = 2`; the primary's kernel spool is
# 4 MiB with `overflow bitmap`, its disk spool off, `resync = "auto"`.  The
# link cut (netem loss 100%), 32 MiB written to the data device overflow
# the spool: the group must go `ahead` with dirty chunks (far more than
# the tmpfs holds).  The link restored, ferryd must ask the secondary for
# room before START and get a no: the primary stays `ahead` (no START
# accepted), its log and `ferryctl status gr` carry the refusal with both
# numbers (what the resync needs, what is free), its
# ferry_resync_room_refusals_total counts it; the secondary counts it too
# (the metric, and `resync_room` with a need beyond what is free), logs
# it, and over two more refusals its devices' checksums, its applied
# interval and its remote log stay as they were, no span open.  Then the
# tmpfs grows to 128 MiB: the resync must run by itself to `replicating`,
# and after the drain the promoted secondary's devices equal the
# primary's (checksums of the whole 32 MiB of each).
peer=10.99.0.$((2 - FERRY_NODE))
www_start repl-room
MIB=1048576
NETEM="delay 1ms"
metric() { timeout 10 wget -q -O - http://127.0.0.1:9789/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
REFUSALS='ferry_resync_room_refusals_total{group="gr"}'
modes() { set -- $(dm status r0); m0=$8; set -- $(dm status r1); m1=$8; echo "$m0 $m1"; }

if [ "$FERRY_NODE" = 0 ]; then
	# Both sites zeroed whole (initial_sync = "none": no initial copy).
	zero /dev/vda 32
	zero /dev/vdb 32
	REPL_PRIMARY_OPTS="spool_mb 4 overflow bitmap" repl_devices primary
	repl_config primary
	{ echo 'spool_after_mb = 0'; echo 'resync = "auto"'; } >>/etc/ferry/gr.toml
	ferryd_start
	/sbin/tc qdisc add dev eth0 root netem $NETEM || fail "netem"
	# A stream connects once it has a record: a checkpoint gives each one.
	dm message r0 0 checkpoint || fail 'checkpoint'
	for t in $(seq 1 1200); do
		[ "$(fstatus connected | grep -c true)" = 2 ] && break
		sleep 0.5
	done
	[ "$(fstatus connected | grep -c true)" = 2 ] || { ferryctl status gr; fail "the streams did not connect"; }
	phase "repl-room: link cut"
	/sbin/tc qdisc change dev eth0 root netem loss 100% || fail "cut"
	dd if=/dev/urandom of=/dev/mapper/r1 bs=1M count=32 oflag=direct 2>/dev/null || fail "write to r1"
	mode=
	for t in $(seq 1 120); do
		set -- $(dm status r1); mode=$8
		[ "$mode" = ahead ] && break
		sleep 0.5
	done
	[ "$mode" = ahead ] || { dm status; tail -20 /tmp/ferryd.log; fail "the group did not go ahead with the link cut: $mode"; }
	set -- $(dm status r0); d0=${15}
	set -- $(dm status r1); d1=${15}
	[ $((d0 + d1)) -gt 128 ] || fail "ahead with only $d0 + $d1 dirty chunks"
	ok "link cut: the group went ahead, $d0 + $d1 dirty chunks"
	phase "repl-room: link restored"
	/sbin/tc qdisc change dev eth0 root netem $NETEM || fail "restore"
	# The records spooled before the overflow drain; the resync is refused.
	repl_drained 240 || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "the spooled records did not drain: r0 $c0/$a0 r1 $c1/$a1"; }
	for t in $(seq 1 120); do
		grep -q 'resync refused by the secondary: it needs' /tmp/ferryd.log && break
		sleep 0.5
	done
	line=$(grep 'resync refused by the secondary: it needs' /tmp/ferryd.log | head -1)
	[ -n "$line" ] || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "no refusal logged"; }
	need=$(echo "$line" | sed -n 's/.*it needs \([0-9.]*\) MiB in its log_dir.*/\1/p')
	free=$(echo "$line" | sed -n 's/.*), \([0-9.]* [KMGT]*i*B\) are free (.*/\1/p')
	[ -n "$need" ] && [ -n "$free" ] || fail "the refusal does not say both numbers: $line"
	# The first question may have gone while the writes still went on
	# (the link is cut for less than the 5 s after which the secondary
	# drops a silent stream, so the question waits in TCP and is answered
	# after the restore): the need is checked on a later answer, to a
	# question asked after the last write: the dirty chunks' exactly,
	# 64 KiB and a record's 112 bytes each.
	for t in $(seq 1 60); do
		[ "$(fstatus resync_room_refusals)" -ge 2 ] 2>/dev/null && break
		sleep 0.5
	done
	nb=$(fstatus need)
	[ "$nb" = $(( (d0 + d1) * (65536 + 112) )) ] ||
		fail "the need said is not the dirty data's: $nb B for $d0 + $d1 chunks of 64 KiB (first refusal: $line)"
	[ "$(modes)" = "ahead ahead" ] || fail "not ahead after the refusal: $(modes)"
	grep -q 'START accepted' /tmp/ferryd.log && fail "START accepted with no room: $(grep 'START accepted' /tmp/ferryd.log)"
	ferryctl status gr >/tmp/st.room 2>&1 || true  # exits 2: ahead
	grep -q 'resync refused by the secondary: it needs .* in its log_dir (/var/lib/ferry/gr), .* are free' /tmp/st.room ||
		{ cat /tmp/st.room; fail "ferryctl status does not say the refusal"; }
	grep -q 'resyncs the secondary refused for room in its log_dir: [1-9]' /tmp/st.room ||
		{ cat /tmp/st.room; fail "ferryctl status does not count the refusals"; }
	n1=$(metric "$REFUSALS")
	[ "${n1:-0}" -ge 1 ] || fail "$REFUSALS is [$n1]"
	ok "refused: needs $need MiB, $free free (then $nb B for $d0 + $d1 chunks); still ahead; $REFUSALS $n1"
	publish refused "$need"
	# Held while the secondary looks: two more questions at least.
	fetch seen /tmp/seen 120 || fail "the secondary did not look"
	sleep 12
	[ "$(modes)" = "ahead ahead" ] || fail "not ahead while refused: $(modes)"
	grep -q 'START accepted' /tmp/ferryd.log && fail "START accepted with no room"
	n2=$(fstatus resync_room_refusals)
	[ "${n2:-0}" -gt "$n1" ] || fail "not asked again: resync_room_refusals $n2 (was $n1)"
	ok "held: still ahead, $n2 refusals"
	publish held "$n2"
	fetch grown /tmp/grown 120 || fail "the secondary did not grow its log_dir"
	phase "repl-room: room"
	t0=$(date +%s)
	seen=0
	for t in $(seq 1 480); do
		m=$(modes)
		case "$m" in *resyncing*) seen=1 ;; esac
		set -- $(dm status r0); dd0=${15}
		set -- $(dm status r1); dd1=${15}
		[ "$m" = "replicating replicating" ] && [ "$dd0 $dd1" = "0 0" ] && break
		sleep 0.5
	done
	secs=$(( $(date +%s) - t0 ))
	[ "$(modes)" = "replicating replicating" ] ||
		{ dm status; ferryctl status gr || true; tail -20 /tmp/ferryd.log; fail "not replicating $secs s after the room came: $(modes)"; }
	grep -q 'resync (automatic, the group is ahead): START accepted' /tmp/ferryd.log ||
		{ tail -20 /tmp/ferryd.log; fail "replicating, but no automatic START logged"; }
	ok "the resync started by itself and ended $secs s after the room came (resyncing seen: $seen)"
	repl_drained 240 || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "not drained: r0 $c0/$a0 r1 $c1/$a1"; }
	set -- $(dm status r0); dd0=${15}
	set -- $(dm status r1); dd1=${15}
	[ "$dd0 $dd1" = "0 0" ] || fail "dirty chunks left after the resync and the drain: $dd0 $dd1"
	primary_await_verdict "$(sums 32)"
else
	zero /dev/vda 32
	zero /dev/vdb 32
	mkdir -p /var/lib/ferry
	mount -t tmpfs -o size=8m,mode=0700 tmpfs /var/lib/ferry || fail "tmpfs"
	repl_devices secondary
	repl_config secondary /var/lib/ferry/gr
	echo 'resync_reserve_mb = 2' >>/etc/ferry/gr.toml
	ferryd_start
	fetch refused /tmp/refused 600 || fail "the primary never saw a refusal"
	n1=$(metric "$REFUSALS")
	[ "${n1:-0}" -ge 1 ] || res "FAIL: $REFUSALS is [$n1] after a refusal"
	need=$(fstatus need) avail=$(fstatus available) reserve=$(fstatus reserve)
	[ "$reserve" = $((2 * MIB)) ] || res "FAIL: resync_room's reserve is [$reserve]"
	[ "${need:-0}" -gt $(( ${avail:-0} - ${reserve:-0} )) ] && [ "$need" -gt $((8 * MIB)) ] ||
		res "FAIL: resync_room: need [$need], available [$avail], reserve [$reserve]"
	grep -q 'resync refused: no room in log_dir, needed' /tmp/ferryd.log || res "FAIL: the refusal is not logged: $(tail -5 /tmp/ferryd.log)"
	# What the secondary holds, once what it can apply is applied.
	snap() {
		e=$(fstatus applied_epoch)
		echo "epoch $e span $(fstatus resync_span_open) sums $(sums 32) log $(cat /var/lib/ferry/gr/stream-*.log /var/lib/ferry/gr/state.json 2>/dev/null | md5sum | cut -c1-32)"
	}
	prev=
	for t in $(seq 1 40); do
		now=$(snap)
		[ "$now" = "$prev" ] && break
		prev=$now
		sleep 1
	done
	ok "refused ($n1): need $need, available $avail, reserve $reserve; holds $now"
	publish seen yes
	fetch held /tmp/held 120 || res "FAIL: the primary did not hold"
	after=$(snap)
	[ "$after" = "$now" ] || res "FAIL: the secondary changed while the resync was refused: before [$now], after [$after]"
	case "$after" in *"span false"*) ;; *) res "FAIL: a resync span is open: $after" ;; esac
	n2=$(metric "$REFUSALS")
	[ "${n2:-0}" -gt "$n1" ] || res "FAIL: $REFUSALS $n2, was $n1: not asked again"
	ok "unchanged over $n2 refusals"
	mount -o remount,size=128m /var/lib/ferry || res "FAIL: remount"
	publish grown yes
	fetch done /tmp/done 600 || res "FAIL: the primary never finished"
	set -- $(cat /tmp/done); p0=$1 p1=$2
	repl_applied 240 || res "FAIL: not applied: $(fstatus lag_records | tr '\n' ' ')"
	spans=$(fstatus resync_spans_applied)
	[ "${spans:-0}" -ge 1 ] 2>/dev/null || res "FAIL: no resync span applied: [$spans]"
	grep -q 'room for a resync again' /tmp/ferryd.log || res "FAIL: the yes after the refusals is not logged"
	secondary_verify_sums 32 "$p0" "$p1"
fi
