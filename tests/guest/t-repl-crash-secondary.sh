# Replication crash points, secondary side (tests/repl-crash.sh): for each
# point, fresh secondary devices and ferryd; the host boots a primary that
# runs a workload until its power or link is cut; the host then drops this
# guest's carrier until it has said "REPL-CUTSEEN <point>" (a resync
# point's primary goes silent once before, in the outage that sends it
# ahead, and reconnects: silence alone does not end a point).  Once the
# primary's streams have gone silent and the last complete interval is
# applied, promote and check.  The workload is point_workload's (lib.sh).
# "blocks": dependent blocks, G1 by the prefix checker, whose image must
# end exactly at the last write the secondary applied (ferryd's
# applied_writes).  "resync": the same writes, cut inside a resync after an
# outage; the prefix checker must pass (the writes made while the primary
# was ahead are no records, so the image is not checked against
# applied_writes), and the point says whether a resync span was open at
# the cut, how many of its intervals the promotion dropped and how many
# spans were applied whole.  Then ext4 and SQLite by turns: ext4 (its
# journal on the log device r0, the file system on the data device r1:
# journal replayed by a mount, then e2fsck clean) and SQLite on that ext4
# (integrity check ok, the committed transactions present are 1..n, n >= 1:
# the primary arms only once the secondary applied the interval of a
# commit).  At every point G2 is checked where it holds: no log record
# became durable in the remote log after a data record of a later group
# order (ferryd's g2_violations).
points=${FERRY_POINTS:-1}
# make demo narrates (lines "demo|..." the host prints).
say() { [ -n "${FERRY_DEMO:-}" ] && echo "demo|$*"; return 0; }
sayout() { [ -n "${FERRY_DEMO:-}" ] && sed 's/^/demo|    /' "$1"; return 0; }
pass=0
for pt in $(seq 1 "$points"); do
	killall ferryd 2>/dev/null || true
	sleep 0.3
	dm remove_all >/dev/null 2>&1 || true
	rm -rf /tmp/ferry-log /tmp/ferryd.log
	repl_devices secondary
	repl_config secondary
	ferryd_start
	say "secondary guest: dm-ferry loaded; r0 (role log) and r1 (role data) in mode secondary, group gr; ferryd listening on :7789"
	echo "REPL-READY $pt"
	phase "point $pt: ready"
	up=0
	for t in $(seq 1 300); do
		fstatus connected | grep -q true && { up=1; break; }
		sleep 0.5
	done
	[ $up = 1 ] || fail "point $pt: the primary never connected"
	phase "point $pt: connected"
	say "the primary guest connected; it writes dependent blocks to its r0 and r1"
	workload=$(point_workload "$pt")
	# The host's word that it cut the primary off: this guest's carrier
	# drops until it answers.
	for t in $(seq 1 1800); do
		[ "$(carrier)" = 0 ] && break
		if [ $((t % 8)) = 1 ] && [ -n "${FERRY_DEMO:-}" ]; then
			say "\$ ferryctl status gr"
			ferryctl status gr >/tmp/st.out 2>&1 || true; sayout /tmp/st.out
		fi
		sleep 0.25
	done
	[ "$(carrier)" = 0 ] || fail "point $pt: the host did not say it cut the primary in 450 s"
	echo "REPL-CUTSEEN $pt"
	span_at_cut=$(fstatus resync_span_open)
	for t in $(seq 1 600); do [ "$(carrier)" = 1 ] && break; sleep 0.1; done
	[ "$(carrier)" = 1 ] || fail "point $pt: the host did not give the carrier back in 60 s"
	# The streams go silent and are dropped.
	for t in $(seq 1 240); do
		fstatus connected | grep -q true || break
		sleep 0.5
	done
	say "the primary's streams went silent (no keepalive for 5 s): it is gone"
	fstatus connected | grep -q true && fail "point $pt: streams still connected after 120 s"
	phase "point $pt: the streams went silent"
	# Let the last complete interval be applied.
	last=x settled=0
	for t in $(seq 1 60); do
		now="$(fstatus applied_epoch) $(fstatus applying_epoch)"
		[ "$now" = "$last" ] && [ "${now#* }" = 0 ] && { settled=1; break; }
		last=$now
		sleep 1
	done
	[ $settled = 1 ] || { tail -20 /tmp/ferryd.log; fail "point $pt: applying did not settle in 60 s (at $now)"; }
	phase "point $pt: applying settled"
	lag=$(fstatus lag_records | tr '\n' ' ')
	applied=$(fstatus applied_writes | tr '\n' ',' | sed 's/,$//')
	g2=$(fstatus g2_violations)
	case "$applied" in *[0-9],*[0-9]) ;; *) fail "point $pt: no applied_writes from ferryd: [$applied]" ;; esac
	[ "$g2" = 0 ] || { grep 'G2' /tmp/ferryd.log | head; fail "point $pt: G2 broken at the secondary: g2_violations=[$g2]"; }
	say "\$ ferryctl status gr"
	ferryctl status gr >/tmp/st.out 2>&1 || true; sayout /tmp/st.out
	say "\$ ferryctl promote gr"
	resync=
	if [ $workload = resync ] || [ $workload = ext4 ]; then
		resync=" resync: span_open_at_cut=$span_at_cut span_intervals_staged=$(fstatus resync_span_intervals) spans_applied=$(fstatus resync_spans_applied)"
	fi
	ferryctl promote gr >/tmp/promote.out 2>&1 || { cat /tmp/promote.out /tmp/ferryd.log; fail "point $pt: promote"; }
	if [ -n "$resync" ] && grep -q 'resync span was open' /tmp/promote.out; then
		resync="$resync promote_dropped_the_span=yes"
	fi
	sayout /tmp/promote.out
	phase "point $pt: promoted"
	say "\$ dmsetup status r0 r1"
	dm status >/tmp/st.out; sayout /tmp/st.out
	say "\$ ferry-test prefix-check --dev /dev/mapper/r0 --dev /dev/mapper/r1 ...   # G1: a prefix of the completion order?"
	if [ $workload = ext4 ]; then
		mkdir -p /mnt/fs
		if mount -t ext4 -o journal_path=/dev/mapper/r0 /dev/mapper/r1 /mnt/fs 2>/tmp/pc.out; then
			files=$(find /mnt/fs -type f | wc -l)
			umount /mnt/fs
			if /sbin/e2fsck -fn -j /dev/mapper/r0 /dev/mapper/r1 >/tmp/fsck.out 2>&1; then
				echo "ext4|PASS|journal (on r0) replayed by mount, e2fsck -fn clean|files=$files" >/tmp/pc.out
			else
				cat /tmp/fsck.out >/tmp/pc.out; echo "ext4|FAIL|e2fsck" >>/tmp/pc.out
			fi
		else
			echo "ext4|FAIL|mount: $(cat /tmp/pc.out)" >/tmp/pc.out
		fi
		okk=$(grep -c '^ext4|PASS' /tmp/pc.out || true)
	elif [ $workload = sqlite ]; then
		mkdir -p /mnt/db
		if mount -t ext4 -o journal_path=/dev/mapper/r0 /dev/mapper/r1 /mnt/db 2>/tmp/pc.out; then
			r=$(sqlite3 /mnt/db/t.db "pragma integrity_check; select count(*), coalesce(max(id), 0), coalesce(min(id), 1) from t;" 2>&1 | tr '\n' ' ')
			umount /mnt/db
			set -- $r
			n=$(echo "$2" | cut -d'|' -f1)
			# 1..n, and not empty: the primary armed after the secondary
			# applied the interval of a commit.
			if [ "$1" = ok ] && [ "$n" -ge 1 ] 2>/dev/null && [ "$n" = "$(echo "$2" | cut -d'|' -f2)" ] && [ "$(echo "$2" | cut -d'|' -f3)" = 1 ]; then
				echo "sqlite|PASS|integrity ok|transactions=1..$(echo "$2" | cut -d'|' -f2)" >/tmp/pc.out
			else
				echo "sqlite|FAIL|$r" >/tmp/pc.out
			fi
		else
			echo "sqlite|FAIL|mount: $(cat /tmp/pc.out)" >/tmp/pc.out
		fi
		okk=$(grep -c '^sqlite|PASS' /tmp/pc.out || true)
	elif [ $workload = resync ]; then
		if ferry-test prefix-check --dev /dev/mapper/r0 --dev /dev/mapper/r1 --blocks $REPL_BLOCKS \
			--seed $((${FERRY_SEED_BASE:-1000} + pt)) --min 1 >/tmp/pc.out 2>&1; then
			okk=1
		else
			okk=0
		fi
	elif ferry-test prefix-check --dev /dev/mapper/r0 --dev /dev/mapper/r1 --blocks $REPL_BLOCKS \
		--seed $((${FERRY_SEED_BASE:-1000} + pt)) --min 1 --applied-writes "$applied" >/tmp/pc.out 2>&1; then
		okk=1
	else
		okk=0
	fi
	phase "point $pt: checked"
	if [ "$okk" -ge 1 ]; then
		say "    $(cat /tmp/pc.out)"
		[ $workload = blocks ] && say "verdict: PASS: the promoted secondary holds exactly the primary's devices after its first $(sed -n 's/.*writes=\([0-9]*\).*/\1/p' /tmp/pc.out) writes"
		echo "REPL-POINT $pt PASS $(cat /tmp/pc.out) applied_epoch=${last% *} applied_writes=$applied not_applied=$lag g2_violations=$g2$resync"
		pass=$((pass + 1))
	else
		say "verdict: FAIL: $(cat /tmp/pc.out)"
		echo "REPL-POINT $pt FAIL $(cat /tmp/pc.out)"
		tail -20 /tmp/ferryd.log
		fail "point $pt ($workload): the promoted secondary failed its check"
	fi
done
ok "$pass of $points crash points: the promoted secondary held a prefix of the completion order"
