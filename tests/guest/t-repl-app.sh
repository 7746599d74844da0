# Two guests, an application on 256 MiB devices: PostgreSQL 15 on ext4 on
# a replicating pair, the WAL (pg_wal) on the log device r0, the data
# directory on the data device r1.  mkfs discards both devices and ext4
# zeroes its inode tables (write-zeroes), initdb and pgbench load and run
# the database (large bios: checkpoints and bulk loads), fstrim discards
# what is free.  The secondary applies every interval (its ferryd must not
# stop), is promoted, holds devices equal to the primary's, and PostgreSQL
# started on it finds the primary's last committed state: the same
# transaction count and balances.  pgbench's scale and seconds:
# ferry.app_scale (1) and ferry.app_seconds (10); make soak runs 4 and 60.
peer=10.99.0.$((2 - FERRY_NODE))
www_start repl-app
pg=/usr/lib/postgresql/15/bin
[ -x $pg/postgres ] || fail "PostgreSQL is not on the tools disk (scripts/deps.sh installs postgresql-15)"
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
export TZ=UTC
pgu() { su postgres -s /bin/sh -c "$*"; }
PGOPTS="-c listen_addresses='' -c unix_socket_directories=/tmp -c shared_buffers=16MB -c max_wal_size=64MB -c jit=off -c checkpoint_timeout=30s"
pg_start() { pgu "$pg/pg_ctl -D /mnt/pg/data -l /tmp/pg.log -w -t 600 start -o \"$PGOPTS\"" >/dev/null || { tail -20 /tmp/pg.log; return 1; }; }
pg_stop() { pgu "$pg/pg_ctl -D /mnt/pg/data -w -t 600 stop -m fast" >/dev/null; }
# The state a promoted secondary must find.
pg_state() { pgu "$pg/psql -h /tmp -At -c 'select (select count(*) from pgbench_history), (select sum(abalance) from pgbench_accounts), (select sum(delta) from pgbench_history), (select sum(bbalance) from pgbench_branches)' postgres"; }
app_devices() {  # app_devices primary|secondary: r0 (log) and r1 (data) over the whole disks
	ferry_load
	meta_wipe /dev/vdc /dev/vdd
	zero /dev/vda 8
	zero /dev/vdb 8
	n=$(sectors /dev/vda)
	if [ "$1" = primary ]; then o="group gr checkpoint_ms 100"; else o="mode secondary group gr"; fi
	c=$(( $(echo $o | wc -w) + 4 ))
	dm create r0 --table "0 $n ferry /dev/vda /dev/vdc $c $o device_id 0 role log" || fail "create r0"
	dm create r1 --table "0 $n ferry /dev/vdb /dev/vdd $c $o device_id 1 role data" || fail "create r1"
}
mounts() {
	mkdir -p /mnt/wal /mnt/pg
	mount -t ext4 /dev/mapper/r0 /mnt/wal && mount -t ext4 /dev/mapper/r1 /mnt/pg
}
# The postmaster's last children may still hold the mounts for a moment
# after pg_ctl stop returned.
unmount() { for i in 1 2 3 4 5 6 7 8 9 10; do umount "$1" 2>/dev/null && return 0; sleep 1; done; umount "$1"; }
allsums() { for d in /dev/vda /dev/vdb; do md5sum <$d | cut -c1-32; done | tr '\n' ' '; }

if [ "$FERRY_NODE" = 0 ]; then
	# A primary that fails tells the secondary at once, not after its wait.
	trap '[ -f "$WWW/done" ] || publish done FAIL' EXIT
	app_devices primary
	repl_config primary
	ferryd_start
	t0=$(date +%s)
	for d in r0 r1; do /sbin/mke2fs -q -F -t ext4 /dev/mapper/$d || fail "mkfs.ext4 $d"; done
	mounts || fail "mount"
	mkdir -p /mnt/wal/wal && chown postgres:postgres /mnt/pg /mnt/wal/wal
	pgu "$pg/initdb --no-sync -D /mnt/pg/data --waldir=/mnt/wal/wal -E UTF8 --no-locale -A trust -U postgres" >/tmp/initdb.out 2>&1 ||
		{ tail -20 /tmp/initdb.out; fail "initdb"; }
	pg_start || fail "postgres start"
	ok "initdb and start in $(( $(date +%s) - t0 )) s"
	pgu "$pg/pgbench -h /tmp -q -i -s ${FERRY_APP_SCALE:-1} postgres" >/tmp/pgb.out 2>&1 || { tail /tmp/pgb.out; fail "pgbench -i"; }
	pgu "$pg/pgbench -h /tmp -c 2 -T ${FERRY_APP_SECONDS:-10} postgres" >/tmp/pgb.out 2>&1 || { tail /tmp/pgb.out; fail "pgbench"; }
	tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' /tmp/pgb.out | head -1)
	state=$(pg_state)
	[ -n "$state" ] || fail "no state from the database"
	pg_stop || fail "postgres stop"
	fstrim /mnt/pg && fstrim /mnt/wal || fail "fstrim"
	unmount /mnt/pg && unmount /mnt/wal || fail "umount"
	ok "pgbench: $tps tps; state (transactions, balances) $state; stopped, trimmed, unmounted in $(( $(date +%s) - t0 )) s"
	dm message r1 0 cp app-done || fail "cp app-done"
	repl_drained 600 || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "not drained: r0 $c0/$a0 r1 $c1/$a1"; }
	set -- $(dm status r0)
	[ "$8" = replicating ] || fail "the primary went $8"
	ok "drained in $(( $(date +%s) - t0 )) s: r0 $a0 records, r1 $a1 records acknowledged"
	publish done "$(allsums) $(echo "$state" | tr ' ' '_')"
	fetch result /tmp/result 900 || fail "no result from the secondary"
	cat /tmp/result
	grep -q '^PASS' /tmp/result || fail "secondary: $(cat /tmp/result)"
	touch $WWW/bye
	sleep 5
	ok "the promoted secondary holds the database"
else
	app_devices secondary
	repl_config secondary
	ferryd_start
	fetch done /tmp/done 900 || fail "the primary never finished"
	[ "$(cat /tmp/done)" != FAIL ] || fail "the primary failed (see its log)"
	set -- $(cat /tmp/done); p0=$1 p1=$2 state=$(echo "$3" | tr '_' ' ')
	repl_applied 240 || res "FAIL: not applied: $(fstatus lag_records | tr '\n' ' ')"
	kill -0 $fdp 2>/dev/null || { tail -5 /tmp/ferryd.log; res "FAIL: the secondary's ferryd stopped: $(tail -1 /tmp/ferryd.log)"; }
	ferryctl status gr | head -20
	ferryctl promote gr >/tmp/promote.out 2>&1 || res "FAIL: promote: $(cat /tmp/promote.out)"
	set -- $(allsums)
	[ "$1 $2" = "$p0 $p1" ] || res "FAIL: the devices differ: secondary $1 $2, primary $p0 $p1"
	mounts || res "FAIL: mount the promoted secondary"
	pg_start || res "FAIL: PostgreSQL does not start on the promoted secondary"
	got=$(pg_state) || got="(no answer)"
	pg_stop || res "FAIL: PostgreSQL does not stop on the promoted secondary"
	unmount /mnt/pg || res "FAIL: /mnt/pg stays busy"
	unmount /mnt/wal || res "FAIL: /mnt/wal stays busy"
	[ "$got" = "$state" ] || res "FAIL: the promoted secondary's database: [$got], the primary's [$state]"
	res "PASS: devices equal ($p0 $p1), database state $got"
	cat $WWW/result
	await_peer_file "$peer" bye
	grep -q '^PASS' $WWW/result || fail "$(cat $WWW/result)"
	ok "promoted secondary verified"
fi
