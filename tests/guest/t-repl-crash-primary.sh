# A replication crash point, primary side (tests/repl-crash.sh): group gr
# shipped by ferryd under a workload: "blocks", dependent writes (seed
# ferry.seed_base, default 1000, + point) across its log and data devices; "ext4", a file workload on ext4
# with its journal on the log device (r0) and the file system on the data
# device (r1); "sqlite", one transaction after another in an SQLite
# database on that ext4 (points after ferry.block_points alternate ext4
# and sqlite).  Once the secondary has applied two intervals (an
# application: the interval open 6 s into it, after its first commit),
# "FERRY-ARMED <point>", and the host cuts the point short.  Points
# ferry.point to ferry.last run in this boot: the host ends each but the
# last by cutting this guest's link (QEMU's set_link: to the secondary, a
# power cut), which this guest sees as carrier loss; it then stops the
# workload, removes the group and unloads the module ("FERRY-CUT <point>")
# and starts the next point once the host has restored the link.  The
# last point ends with a real power cut (SIGKILL of QEMU).
carrier() { cat /sys/class/net/eth0/carrier 2>/dev/null || echo 0; }
for pt in $(seq "${FERRY_POINT:-1}" "${FERRY_LAST:-${FERRY_POINT:-1}}"); do
	FERRY_WORKLOAD=blocks
	if [ "$pt" -gt "${FERRY_BLOCK_POINTS:-$pt}" ]; then
		FERRY_WORKLOAD=sqlite; [ $(( (pt - FERRY_BLOCK_POINTS) % 2 )) = 1 ] && FERRY_WORKLOAD=ext4
	fi
	rm -f /tmp/committed
	# The devices while the secondary checks the last point; ferryd once
	# the link is back.
	repl_devices primary
	repl_config primary
	for t in $(seq 1 1500); do [ "$(carrier)" = 1 ] && break; sleep 0.2; done
	[ "$(carrier)" = 1 ] || fail "point $pt: the host did not restore the link in 300 s"
	phase "point $pt: link up"
	ferryd_start
	phase "point $pt: devices and ferryd up"
	case "${FERRY_WORKLOAD:-blocks}" in
	blocks)
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
	if [ "${FERRY_WORKLOAD:-blocks}" != blocks ]; then
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
	ferry_cleanup || fail "point $pt: the group could not be removed after the link cut"
	echo "FERRY-CUT $pt"
done
