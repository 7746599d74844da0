# Two guests: the primary's disk spool.  The link is shaped to 4 Mbit/s,
# the kernel's spool holds 4 MiB ("overflow block": without a disk spool
# the writer would wait for the link), and ferryd spools a data device's
# records past 1 MiB to the primary's disk.  16 MiB written to the data
# device must finish well before the link could have carried them, with
# the disk spool holding more than the kernel's spool could; ferryd killed
# (-9) while the disk spool holds records must find them again at restart;
# after the drain the disk spool is empty, the group never went ahead, and
# the promoted secondary's devices equal the primary's.
peer=10.99.0.$((2 - FERRY_NODE))
www_start repl-spool

if [ "$FERRY_NODE" = 0 ]; then
	REPL_PRIMARY_OPTS="spool_mb 4 overflow block"
	repl_devices primary
	repl_config primary
	echo 'spool_after_mb = 1' >>/etc/ferry/gr.toml
	ferryd_start
	/sbin/tc qdisc add dev eth0 root netem rate 4mbit limit 10000 || fail "netem"
	head -c 65536 /dev/urandom >/tmp/log.pat
	dd if=/tmp/log.pat of=/dev/mapper/r0 bs=4k oflag=direct 2>/dev/null || fail "log writes"
	head -c 16777216 /dev/urandom >/tmp/data.pat
	t0=$(cut -d' ' -f1 /proc/uptime)
	dd if=/tmp/data.pat of=/dev/mapper/r1 bs=1M oflag=direct 2>/dev/null || fail "data writes"
	t1=$(cut -d' ' -f1 /proc/uptime)
	held=$(fstatus disk_spool_bytes)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	ok "16 MiB written in $secs s (the link needs 32 s); the disk spool holds $held bytes"
	[ "${held:-0}" -gt 4194304 ] || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "the disk spool held $held bytes, no more than the kernel's 4 MiB spool"; }
	awk -v s="$secs" 'BEGIN { exit !(s < 32) }' || fail "the writer waited for the link ($secs s)"
	# (Segments go as they are acknowledged: no ls of a glob that may
	# name a file gone by the time ls looks.)
	find /var/lib/ferry/gr/spool -name '*.seg' 2>/dev/null | grep -q . || {
		ls -la /var/lib/ferry/gr/spool; ferryctl status gr || true; tail -20 /tmp/ferryd.log
		fail "no segment in the disk spool"
	}
	# ferryd dies while the disk spool holds records; the next one finds them.
	kill -9 $fdp
	sleep 1
	ferryd_start
	rec=$(grep -a "disk spool recovered" /tmp/ferryd.log | tail -1)
	case "$rec" in *"records="[1-9]*) ;; *) cat /tmp/ferryd.log; fail "restart: no spooled record recovered ($rec)" ;; esac
	ok "ferryd killed (-9) and restarted: $(echo "$rec" | sed 's/.*disk spool recovered *//')"
	repl_drained 400 || { ferryctl status gr; tail -20 /tmp/ferryd.log; fail "not drained: r0 $c0/$a0 r1 $c1/$a1"; }
	set -- $(dm status r1)
	[ "$8" = replicating ] || fail "the primary went $8"
	sleep 1
	[ "$(fstatus disk_spool_bytes)" = 0 ] || fail "disk spool not empty after the drain: $(fstatus disk_spool_bytes)"
	ls /var/lib/ferry/gr/spool/*.seg >/dev/null 2>&1 && fail "segments left: $(ls /var/lib/ferry/gr/spool)"
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
