# A replication crash point, primary side (tests/repl-crash.sh): group gr
# shipped by ferryd under a workload (point_workload in lib.sh): "blocks",
# dependent writes (seed ferry.seed_base, default 1000, + point) across its
# log and data devices; "resync", the same writes on a group with a 4 MiB
# kernel spool, `overflow bitmap`, no disk spool and `resync = "auto"`,
# sent `ahead` by a link outage (netem loss 100% and 8 MiB more written
# than the spool holds) and armed once the link is back and the kernel is
# `resyncing`, so that the host's cut falls inside the resync; "ext4", a
# file workload on ext4 with its journal on the log device (r0) and the
# file system on the data device (r1), on a group set up as for "resync"
# and sent ahead and resyncing the same way (the 8 MiB more written as a
# file of that ext4), so that the cut falls inside its resync; "sqlite", one transaction after
# another in an SQLite database on that ext4.  Once the secondary has
# applied two intervals (an application: the interval open 6 s into it,
# after its first commit), "FERRY-ARMED <point>", and the host cuts the
# point short.  Points ferry.point to ferry.last run in this boot: the host
# ends each but the last by cutting this guest's link (QEMU's set_link: to
# the secondary, a power cut), which this guest sees as carrier loss; it
# then stops the workload, removes the group and unloads the module
# ("FERRY-CUT <point>") and starts the next point once the host has
# restored the link.  The last point ends with a real power cut (SIGKILL
# of QEMU).
# go_ahead_and_resync: a link outage sends group gr ahead (the writer goes
# on into the dirty bitmap, and 8 MiB written past its blocks overflow the
# 4 MiB spool); the link back, ferryd starts the resync by itself.  Returns
# once the kernel says `resyncing`: the copy of those chunks takes the
# guest 10 s or more, so the host's cut 1 to 6 s later falls inside it.
go_ahead_and_resync() {
	local t m0 m1 d0 d1 c0 c1 a0 a1
	/sbin/tc qdisc add dev eth0 root netem loss 100% || fail "point $pt: netem"
	if [ "$FERRY_WORKLOAD" = ext4 ]; then
		dd if=/dev/urandom of=/mnt/fs/bulk bs=1M count=8 conv=fsync 2>/dev/null || fail "point $pt: bulk file on ext4"
	else
		dd if=/dev/urandom of=/dev/mapper/r1 bs=1M seek=16 count=8 oflag=direct 2>/dev/null || fail "point $pt: bulk write to r1"
	fi
	for t in $(seq 1 240); do
		set -- $(dm status r0); m0=$8
		[ "$m0" = ahead ] && break
		sleep 0.5
	done
	[ "$m0" = ahead ] || { dm status; tail -20 /tmp/ferryd.log; fail "point $pt: the group did not go ahead with the link cut: $m0"; }
	sleep 2
	kill -0 $wp 2>/dev/null || { cat /tmp/w.out; fail "point $pt: the writer ended while ahead"; }
	set -- $(dm status r0); d0=${15}
	set -- $(dm status r1); d1=${15}
	/sbin/tc qdisc del dev eth0 root || fail "point $pt: netem off"
	phase "point $pt: ahead with $d0 + $d1 dirty chunks; link restored"
	for t in $(seq 1 600); do
		set -- $(dm status r0); m0=$8
		set -- $(dm status r1); m1=$8
		[ "$m0" = resyncing ] || [ "$m1" = resyncing ] && break
		[ "$m0 $m1" = "replicating replicating" ] && break
		sleep 0.2
	done
	[ "$m0" = resyncing ] || [ "$m1" = resyncing ] ||
		{ dm status; tail -20 /tmp/ferryd.log; fail "point $pt: not resyncing 120 s after the link came back: r0 $m0, r1 $m1"; }
	# Armed once the secondary acknowledged the resync's first marker (the
	# last record numbered now; the backlog of the spool goes first), so
	# that the cut falls inside the span the secondary has open.
	set -- $(dm status r0); c0=${10}
	set -- $(dm status r1); c1=${10}
	for t in $(seq 1 600); do
		set -- $(dm status r0); a0=${12} m0=$8
		set -- $(dm status r1); a1=${12} m1=$8
		[ "$a0" -ge "$c0" ] && [ "$a1" -ge "$c1" ] && break
		sleep 0.2
	done
	[ "$a0" -ge "$c0" ] && [ "$a1" -ge "$c1" ] ||
		{ dm status; tail -20 /tmp/ferryd.log; fail "point $pt: the resync's marker not acknowledged in 120 s: r0 $a0 of $c0, r1 $a1 of $c1"; }
	echo "point $pt: resyncing $d0 + $d1 dirty chunks; the secondary has the resync's first marker ($m0 $m1)"
}
for pt in $(seq "${FERRY_POINT:-1}" "${FERRY_LAST:-${FERRY_POINT:-1}}"); do
	FERRY_WORKLOAD=$(point_workload "$pt")
	rm -f /tmp/committed
	# The devices while the secondary checks the last point; ferryd once
	# the link is back.
	opts=
	resyncs=0
	case "$FERRY_WORKLOAD" in resync | ext4) resyncs=1 ;; esac
	[ $resyncs = 1 ] && opts="spool_mb 4 overflow bitmap"
	REPL_PRIMARY_OPTS=$opts repl_devices primary
	repl_config primary
	[ $resyncs = 1 ] && { echo 'spool_after_mb = 0'; echo 'resync = "auto"'; } >>/etc/ferry/gr.toml
	for t in $(seq 1 1500); do [ "$(carrier)" = 1 ] && break; sleep 0.2; done
	[ "$(carrier)" = 1 ] || fail "point $pt: the host did not restore the link in 300 s"
	phase "point $pt: link up"
	ferryd_start
	phase "point $pt: devices and ferryd up"
	case "$FERRY_WORKLOAD" in
	blocks | resync)
		ferry-test write --dev /dev/mapper/r0 --dev /dev/mapper/r1 --count 100000000 --blocks $REPL_BLOCKS \
			--seed $((${FERRY_SEED_BASE:-1000} + pt)) --log /dev/null >/tmp/w.out 2>&1 &
		;;
	ext4)
		mkfs_ext4_journal_r0
		mkdir -p /mnt/fs && mount -t ext4 -o journal_path=/dev/mapper/r0 /dev/mapper/r1 /mnt/fs || fail "mount"
		(
			i=0
			while :; do
				n=$((i % 64))
				mkdir -p /mnt/fs/d$((i % 8))
				dd if=/dev/urandom of=/mnt/fs/d$((i % 8))/t.$n bs=4k count=$((1 + i % 16)) 2>/dev/null
				mv /mnt/fs/d$((i % 8))/t.$n /mnt/fs/d$((i % 8))/f.$n
				[ $((i % 3)) = 0 ] && sync
				[ $((i % 7)) = 0 ] && rm -f /mnt/fs/d$(((i + 3) % 8))/f.*
				i=$((i + 1))
			done
		) >/tmp/w.out 2>&1 &
		;;
	sqlite)
		mkfs_ext4_journal_r0
		mkdir -p /mnt/db && mount -t ext4 -o journal_path=/dev/mapper/r0 /dev/mapper/r1 /mnt/db || fail "mount"
		sqlite3 /mnt/db/t.db "create table t(id integer primary key, v text not null, h text not null)" || fail "sqlite"
		(
			i=1
			while :; do
				sqlite3 /mnt/db/t.db "begin; insert into t values($i, hex(randomblob(300)), 'x'); update t set h = '$i' where id = $(( (i + 1) / 2 )); commit;" || exit 1
				echo "$i" >/tmp/committed
				i=$((i + 1))
			done
		) >/tmp/w.out 2>&1 &
		;;
	*) fail "unknown workload $FERRY_WORKLOAD" ;;
	esac
	wp=$!
	# Applications run a while first (mkfs alone fills intervals); the
	# secondary must then hold what they did until now: arm once it applied
	# the interval open now (everything completed before it lies in it or
	# before it).
	want=2
	if [ "$FERRY_WORKLOAD" = ext4 ] || [ "$FERRY_WORKLOAD" = sqlite ]; then
		sleep 6
		# (A guest the host runs slowly may take longer for the first.)
		if [ "$FERRY_WORKLOAD" = sqlite ]; then
			for t in $(seq 1 270); do
				[ -s /tmp/committed ] && break
				kill -0 $wp 2>/dev/null || break
				sleep 0.2
			done
			[ -s /tmp/committed ] || { cat /tmp/w.out; fail "no transaction committed in 60 s"; }
		fi
		set -- $(dm status r1); want=${16}
	fi
	# Armed once the secondary has applied those intervals (so that a power
	# cut finds something replicated: the check has something to judge).
	for t in $(seq 1 600); do
		[ "$(fstatus applied_epoch)" -ge "$want" ] 2>/dev/null && break
		kill -0 $wp 2>/dev/null || { cat /tmp/w.out; fail "workload stopped"; }
		sleep 0.2
	done
	[ "$(fstatus applied_epoch)" -ge "$want" ] || { tail /tmp/ferryd.log; fail "the secondary did not apply interval $want in 120 s"; }
	[ $resyncs = 1 ] && go_ahead_and_resync
	phase "point $pt: armed"
	echo "FERRY-ARMED $pt"
	if [ "$pt" = "${FERRY_LAST:-${FERRY_POINT:-1}}" ]; then
		wait $wp
		fail "the workload ended before the power cut: $(cat /tmp/w.out)"
	fi
	for t in $(seq 1 300); do
		[ "$(carrier)" = 0 ] && break
		kill -0 $wp 2>/dev/null || { cat /tmp/w.out; fail "point $pt: the workload stopped before the link cut"; }
		sleep 0.2
	done
	[ "$(carrier)" = 0 ] || fail "point $pt: the host did not cut the link in 60 s"
	phase "point $pt: link cut seen"
	# The workload's loop, then what it runs, so that nothing holds the mounts.
	kill $wp 2>/dev/null || true
	killall dd sqlite3 ferry-test 2>/dev/null || true
	wait $wp 2>/dev/null || true
	/sbin/tc qdisc del dev eth0 root 2>/dev/null || true
	ferry_cleanup || fail "point $pt: the group could not be removed after the link cut"
	echo "FERRY-CUT $pt"
done
