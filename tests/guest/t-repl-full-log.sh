# Two guests: the secondary's log_dir fills up.  Its remote log is on a
# 4 MiB tmpfs, filled to the last block before the primary writes: every
# append fails with ENOSPC and is rolled back, nothing is acknowledged, and
# replication pauses without stopping a stream (the secondary's
# ferry_remote_log_full 1, log_stopped null); the primary keeps the
# records (its kernel's spool, 16 MiB, holds them) and is not ahead.  Once
# the filler is removed, replication goes on by itself: the primary
# drains, the secondary's log_full clears, and its promoted devices equal
# the primary's.
peer=10.99.0.$((2 - FERRY_NODE))
www_start repl-full-log
metric() { timeout 10 wget -q -O - http://127.0.0.1:9789/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
FULL='ferry_remote_log_full{group="gr"}'

if [ "$FERRY_NODE" = 0 ]; then
	REPL_PRIMARY_OPTS="spool_mb 16 overflow block"
	repl_devices primary
	repl_config primary
	ferryd_start
	fetch full /tmp/full 300 || fail "the secondary's log_dir was never full"
	head -c 65536 /dev/urandom >/tmp/log.pat
	dd if=/tmp/log.pat of=/dev/mapper/r0 bs=4k oflag=direct 2>/dev/null || fail "log writes"
	head -c 4194304 /dev/urandom >/tmp/data.pat
	dd if=/tmp/data.pat of=/dev/mapper/r1 bs=64k oflag=direct 2>/dev/null || fail "data writes"
	sleep 8
	set -- $(dm status r1); m1=$8 c1=${10} a1=${12}
	set -- $(dm status r0); m0=$8
	[ "$m0 $m1" = "replicating replicating" ] || fail "the primary went $m0 $m1 while the secondary was full"
	[ "$a1" -lt "$c1" ] || fail "r1: all $c1 records acknowledged while the secondary's log_dir was full"
	ok "paused: r1 $a1 of $c1 records acknowledged, still replicating (the kernel holds the rest)"
	publish paused "$c1 $a1"
	fetch freed /tmp/freed 120 || fail "the secondary never freed its log_dir"
	t0=$(cut -d' ' -f1 /proc/uptime)
	repl_drained 120 || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "not drained once there was room: r0 $c0/$a0 r1 $c1/$a1"; }
	t1=$(cut -d' ' -f1 /proc/uptime)
	set -- $(dm status r1)
	[ "$8" = replicating ] || fail "the primary went $8"
	ok "resumed by itself: drained $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s after the room came back"
	primary_await_verdict "$(sums 32)"
else
	mkdir -p /var/lib/ferry
	mount -t tmpfs -o size=4m,mode=0700 tmpfs /var/lib/ferry || fail "tmpfs"
	repl_devices secondary
	repl_config secondary /var/lib/ferry/gr
	ferryd_start
	# Everything but what ferryd holds already goes to a filler.
	dd if=/dev/zero of=/var/lib/ferry/filler bs=4k 2>/dev/null || true  # until ENOSPC
	[ "$(df -k /var/lib/ferry | awk 'NR == 2 { print $4 }')" = 0 ] || fail "log_dir not full: $(df -k /var/lib/ferry)"
	ok "log_dir full: $(du -k /var/lib/ferry/filler | cut -f1) KiB of filler"
	publish full yes
	fetch paused /tmp/paused 120 || res "FAIL: the primary never paused"
	[ "$(metric "$FULL")" = 1 ] || res "FAIL: $FULL is $(metric "$FULL"), not 1"
	why=$(fstatus log_full)
	case "$why" in *"No space left"*) ;; *) res "FAIL: log_full says '$why'" ;; esac
	[ -z "$(fstatus log_stopped | grep -v '^null$')" ] || res "FAIL: a stream stopped: $(fstatus log_stopped)"
	kill -0 $fdp || res "FAIL: ferryd exited"
	grep -q "remote log full" /tmp/ferryd.log || res "FAIL: not logged: $(tail -5 /tmp/ferryd.log)"
	ok "paused: log_full '$why'"
	rm -f /var/lib/ferry/filler
	publish freed yes
	fetch done /tmp/done 300 || res "FAIL: the primary never finished"
	set -- $(cat /tmp/done); p0=$1 p1=$2
	repl_applied 120 || res "FAIL: not applied: $(fstatus lag_records | tr '\n' ' ')"
	[ "$(metric "$FULL")" = 0 ] || res "FAIL: $FULL still $(metric "$FULL") after the drain"
	[ "$(fstatus log_full)" = null ] || res "FAIL: log_full still says $(fstatus log_full)"
	secondary_verify_sums 32 "$p0" "$p1"
fi
