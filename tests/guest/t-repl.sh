# Two guests: node 0 is the primary, node 1 the secondary of group gr (a
# log device and a data device).  Dependent writes on the primary are
# shipped by ferryd, stored, acknowledged and applied by interval at the
# secondary; after the drain the secondary, promoted, holds every write
# (prefix checker) and its devices equal the primary's (checksums).
# Meanwhile: the link delays, reorders and duplicates packets (netem) and is
# cut for 7 s (the primary resumes from what was acknowledged, without
# going ahead); the secondary's ferryd is killed (-9) and restarted (redo
# of an interval in progress, if any); a peer with a wrong key is refused
# and counted; a corrupted record is rejected and counted, nothing stored.
# Consistency points inserted on the primary (one mid-way, one after the
# last write) are held at the secondary: the last one is reported.  G2 is
# checked at the secondary: no log record became durable in its remote log
# after a data record of a later group order (ferryd's g2_violations).  Then
# the primary restarts cleanly (devices removed and created again): its
# streams continue, and what it writes next reaches the secondary.
N=${FERRY_REPL_WRITES:-1000}
peer=10.99.0.$((2 - FERRY_NODE))
www_start repl

if [ "$FERRY_NODE" = 0 ]; then
	repl_devices primary
	repl_config primary
	ferryd_start
	NETEM="delay 5ms 3ms reorder 25% 50% duplicate 5%"
	/sbin/tc qdisc add dev eth0 root netem $NETEM || fail "netem"
	t0=$(date +%s)
	ferry-test write --dev /dev/mapper/r0 --dev /dev/mapper/r1 --count "$N" --blocks $REPL_BLOCKS \
		--seed 7 --log /dev/null >/tmp/w.out 2>&1 &
	wp=$!
	sleep 8
	/sbin/tc qdisc change dev eth0 root netem loss 100% || fail "cut"
	sleep 7
	/sbin/tc qdisc change dev eth0 root netem $NETEM || fail "restore"
	ok "link cut for 7 s at 8 s, restored"
	dm message r0 0 cp after-cut || fail "cp after-cut"
	wait $wp || { cat /tmp/w.out; fail "writer"; }
	ok "$N dependent writes on the primary in $(( $(date +%s) - t0 )) s"
	dm message r1 0 cp repl-last || fail "cp repl-last"
	# Drained: every record of both devices acknowledged, twice in a row
	# (a checkpoint marker may follow the last write).
	repl_drained 240 || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "not drained: r0 $c0/$a0 r1 $c1/$a1"; }
	ok "drained in $(( $(date +%s) - t0 )) s: r0 $a0 records, r1 $a1 records acknowledged"
	set -- $(dm status r0)
	[ "$8" = replicating ] || fail "the primary went $8: a resync would be needed"
	n0=$(grep -c 'device=0.*connected\|connected.*device=0' /tmp/ferryd.log || true)
	[ "$n0" -ge 2 ] || { cat /tmp/ferryd.log; fail "stream 0 connected $n0 times: no reconnect after the cut?"; }
	ok "still replicating (no resync needed); stream 0 connected $n0 times"
	# A clean restart of the primary: with every record acknowledged, the
	# devices are removed and created again; their streams and the group's
	# interval continue where they stood (the secondary is never sent a
	# number twice), and 4 MiB more on each device, past the writer's
	# blocks, reach the secondary.
	set -- $(dm status r0); was0=${10}
	set -- $(dm status r1); was1=${10} epoch=${16}
	kill $fdp; wait $fdp 2>/dev/null || true
	dm remove r0 && dm remove r1 || fail "remove for the restart"
	repl_devices primary keep
	set -- $(dm status r0)
	[ "$8 ${10} ${12}" = "replicating $was0 $was0" ] || fail "r0 after a clean restart: $* (it stood at $was0)"
	set -- $(dm status r1)
	[ "$8 ${10} ${12}" = "replicating $was1 $was1" ] && [ "${16}" -ge "$epoch" ] ||
		fail "r1 after a clean restart: $* (it stood at $was1, interval $epoch)"
	ferryd_start
	for d in r0 r1; do
		dd if=/dev/urandom of=/dev/mapper/$d bs=64k seek=128 count=64 oflag=direct 2>/dev/null || fail "write $d after the restart"
	done
	repl_drained 240 || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "not drained after the restart: r0 $c0/$a0 r1 $c1/$a1"; }
	ok "restarted cleanly: streams continued from $was0 and $was1 (interval $epoch), now at $a0 and $a1, drained"
	ferryctl status gr || true  # exits 2 when degraded
	publish done "$N $(sums) repl-last $(sums 4 8)"
	fetch result /tmp/result 300 || fail "no result from the secondary"
	cat /tmp/result
	grep -q '^PASS' /tmp/result || fail "secondary: $(cat /tmp/result)"
	touch $WWW/bye
	sleep 5  # time for the secondary to see it
	ok "secondary verified the replica"
else
	repl_devices secondary
	repl_config secondary
	NETEM="delay 5ms 3ms reorder 25% 50% duplicate 5%"
	/sbin/tc qdisc add dev eth0 root netem $NETEM || fail "netem"
	ferryd_start
	metric() { wget -q -O - http://127.0.0.1:9789/metrics | grep "^ferry_$1" | awk '{ s += $2 } END { print s + 0 }'; }
	wrong=ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100
	[ "$(ferry-test link-probe --peer 127.0.0.1:7789 --group gr --key $wrong)" = "probe|refused" ] ||
		fail "a peer with a wrong key was not refused"
	[ "$(metric auth_refused_total)" = 1 ] || fail "refused peer not counted: $(metric auth_refused_total)"
	ok "a peer with the wrong key refused and counted"
	out=$(ferry-test link-probe --peer 127.0.0.1:7789 --group gr --key $REPL_KEY --device 1 --corrupt)
	case "$out" in *"probe|closed-after-corrupt"*) ;; *) fail "corrupt record: $out" ;; esac
	[ "$(metric 'records_rejected_total{group="gr",reason="checksum"}')" = 1 ] ||
		fail "corrupt record not counted: $(wget -q -O - http://127.0.0.1:9789/metrics | grep rejected)"
	ok "a corrupted record rejected (checksum) and counted, the connection closed"
	# Kill ferryd while it receives and applies, then restart it.
	for t in $(seq 1 600); do
		[ "$(fstatus done | head -1)" -gt 200 ] 2>/dev/null && break
		sleep 0.2
	done
	[ "$(fstatus done | head -1)" -gt 200 ] 2>/dev/null ||
		{ ferryctl status gr; tail -20 /tmp/ferryd.log; fail "the secondary applied 200 records of stream 0 in 120 s: none to kill ferryd in"; }
	# Aim for the middle of an interval: kill as soon as one is seen being
	# applied (the redo then runs at restart).
	for t in $(seq 1 100); do
		set -- $(dm status r0)
		[ "$8" = applying ] && break
	done
	kill -9 $fdp
	set -- $(dm status r0)
	was="$8 $9 ${10}"
	ferryd_start
	grep -q "redo" /tmp/ferryd.log && was="$was, redone at restart"
	ok "ferryd killed (-9) at [$was] and restarted"
	fetch done /tmp/done 600 || fail "the primary never finished"
	set -- $(cat /tmp/done); n=$1 p0=$2 p1=$3 cp=$4 q0=$5 q1=$6
	ok "primary drained $n writes"
	repl_applied 120 || res "FAIL: not applied: $(fstatus lag_records | tr '\n' ' ')"
	# G2 where it holds: no log record became durable in the remote log
	# after a data record of a later group order.
	g2=$(fstatus g2_violations)
	[ "$g2" = 0 ] || { grep G2 /tmp/ferryd.log | head -5; res "FAIL: G2 broken at the secondary: g2_violations=[$g2]"; }
	ferryctl status gr | tee /tmp/status.out
	# The last consistency point the primary inserted is held.
	held=$(sed -n 's/^  last consistency point held: \([0-9]*\) (\(.*\))$/\1 \2/p' /tmp/status.out)
	case "$held" in
	*" $cp") ok "consistency point $held held at the secondary" ;;
	*) res "FAIL: last consistency point held: [$held], not $cp" ;;
	esac
	[ "$(metric consistency_point_id)" = "${held%% *}" ] || res "FAIL: metric consistency_point_id $(metric consistency_point_id)"
	ferryctl promote gr >/tmp/promote.out 2>&1 || res "FAIL: promote: $(cat /tmp/promote.out)"
	cat /tmp/promote.out
	if ferry-test prefix-check --dev /dev/mapper/r0 --dev /dev/mapper/r1 --blocks $REPL_BLOCKS --seed 7 --min "$n" >/tmp/pc.out 2>&1; then
		set -- $(sums) $(sums 4 8)
		if [ "$1 $2 $3 $4" = "$p0 $p1 $q0 $q1" ]; then
			res "PASS: $(cat /tmp/pc.out); checksums equal ($1 $2), also of what was written after the primary's restart ($3 $4)"
		else
			res "FAIL: checksums differ: secondary $1 $2 $3 $4, primary $p0 $p1 $q0 $q1"
		fi
	else
		res "FAIL: $(cat /tmp/pc.out)"
	fi
	cat $WWW/result
	# Serve until the primary has the result.
	await_peer_file "$peer" bye
	grep -q '^PASS' $WWW/result || fail "$(cat $WWW/result)"
	ok "replica verified"
fi
