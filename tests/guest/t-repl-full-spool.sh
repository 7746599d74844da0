# Two guests: the primary's spool_dir fills up.  The link is shaped to
# 4 Mbit/s, the kernel's spool holds 4 MiB ("overflow block"), ferryd
# spools a data device's records past 1 MiB to spool_dir, a 4 MiB tmpfs
# filled to the last block before anything is written.  12 MiB written to
# the data device: no segment is written (nothing left of a failed one),
# ferry_disk_spool_full 1, the records stay in the kernel's spool, so the
# writer waits for the link, and the group is not ahead.  Once the filler
# is removed, spooling goes on by itself (segments written, the writer
# done); after the drain spool_full is null, the disk spool empty, and
# the promoted secondary's devices equal the primary's.
peer=10.99.0.$((2 - FERRY_NODE))
www_start repl-full-spool
metric() { timeout 10 wget -q -O - http://127.0.0.1:9789/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
FULL='ferry_disk_spool_full{group="gr"}'

if [ "$FERRY_NODE" = 0 ]; then
	mkdir -p /var/lib/ferry
	mount -t tmpfs -o size=4m,mode=0700 tmpfs /var/lib/ferry || fail "tmpfs"
	REPL_PRIMARY_OPTS="spool_mb 4 overflow block"
	repl_devices primary
	repl_config primary
	echo 'spool_after_mb = 1' >>/etc/ferry/gr.toml
	echo 'spool_dir = "/var/lib/ferry/gr/spool"' >>/etc/ferry/gr.toml
	ferryd_start
	dd if=/dev/zero of=/var/lib/ferry/filler bs=4k 2>/dev/null || true  # until ENOSPC
	[ "$(df -k /var/lib/ferry | awk 'NR == 2 { print $4 }')" = 0 ] || fail "spool_dir not full: $(df -k /var/lib/ferry)"
	/sbin/tc qdisc add dev eth0 root netem rate 4mbit limit 10000 || fail "netem"
	head -c 65536 /dev/urandom >/tmp/log.pat
	dd if=/tmp/log.pat of=/dev/mapper/r0 bs=4k oflag=direct 2>/dev/null || fail "log writes"
	head -c 12582912 /dev/urandom >/tmp/data.pat
	t0=$(cut -d' ' -f1 /proc/uptime)
	dd if=/tmp/data.pat of=/dev/mapper/r1 bs=1M oflag=direct 2>/dev/null &
	wp=$!
	sleep 6
	kill -0 $wp 2>/dev/null || fail "the writer did not wait with the disk spool full"
	[ "$(metric "$FULL")" = 1 ] || { ferryctl status gr; fail "$FULL is $(metric "$FULL"), not 1"; }
	why=$(fstatus spool_full)
	case "$why" in *"No space left"*) ;; *) fail "spool_full says '$why'" ;; esac
	[ "$(fstatus disk_spool_bytes)" = 0 ] || fail "the disk spool holds $(fstatus disk_spool_bytes) bytes while full"
	find /var/lib/ferry/gr/spool -name '*.seg' 2>/dev/null | grep -q . && fail "a segment was left: $(ls -l /var/lib/ferry/gr/spool)"
	set -- $(dm status r1)
	[ "$8" = replicating ] || fail "the primary went $8 with the disk spool full"
	grep -q "disk spool full" /tmp/ferryd.log || fail "not logged: $(tail -5 /tmp/ferryd.log)"
	ok "spool_dir full: the writer waits, nothing spooled, still replicating; spool_full '$why'"
	rm -f /var/lib/ferry/filler
	wait $wp || fail "data writes"
	t1=$(cut -d' ' -f1 /proc/uptime)
	ok "room again: 12 MiB written in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
	# Spooling goes on, or the link carried the backlog before the next
	# try (each second): either way the failure is over, within seconds.
	for i in $(seq 1 20); do
		grep -q "room again\|nothing left to spool" /tmp/ferryd.log && break
		sleep 0.5
	done
	grep -q "room again\|nothing left to spool" /tmp/ferryd.log || fail "the disk spool stays full: $(tail -5 /tmp/ferryd.log)"
	repl_drained 240 || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "not drained: r0 $c0/$a0 r1 $c1/$a1"; }
	set -- $(dm status r1)
	[ "$8" = replicating ] || fail "the primary went $8"
	sleep 1
	[ "$(metric "$FULL")" = 0 ] || fail "$FULL still $(metric "$FULL")"
	[ "$(fstatus spool_full)" = null ] || fail "spool_full still says $(fstatus spool_full)"
	[ "$(fstatus disk_spool_bytes)" = 0 ] || fail "disk spool not empty after the drain: $(fstatus disk_spool_bytes)"
	ok "drained, still replicating; the disk spool is empty"
	primary_await_verdict "$(sums 32)"
else
	repl_devices secondary
	repl_config secondary
	ferryd_start
	fetch done /tmp/done 600 || fail "the primary never finished"
	set -- $(cat /tmp/done); p0=$1 p1=$2
	repl_applied 120 || res "FAIL: not applied: $(fstatus lag_records | tr '\n' ' ')"
	secondary_verify_sums 32 "$p0" "$p1"
fi
