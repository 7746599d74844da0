# A replication crash point, primary side (tests/repl-crash.sh): group gr
# shipped by ferryd under a workload (ferry.workload): "blocks", dependent
# writes (seed 1000 + point) across its log and data devices; "ext4", a
# file workload on ext4 with its journal on the log device (r0) and the
# file system on the data device (r1); "sqlite", one transaction after
# another in an SQLite database on that ext4.  Then, once the secondary has
# applied two intervals (an application: the interval open 6 s into it,
# after its first commit), "FERRY-ARMED", and the host kills this guest.
repl_devices primary
repl_config primary
ferryd_start
case "${FERRY_WORKLOAD:-blocks}" in
blocks)
	ferry-test write --dev /dev/mapper/r0 --dev /dev/mapper/r1 --count 100000000 --blocks $REPL_BLOCKS \
		--seed $((1000 + ${FERRY_POINT:-0})) --log /dev/null >/tmp/w.out 2>&1 &
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
	[ "$FERRY_WORKLOAD" = sqlite ] && { [ -s /tmp/committed ] || { cat /tmp/w.out; fail "no transaction committed in 6 s"; }; }
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
echo FERRY-ARMED
wait $wp
fail "the workload ended before the power cut: $(cat /tmp/w.out)"
