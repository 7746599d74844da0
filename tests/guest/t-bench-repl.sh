# Replication benchmark (scripts/bench.sh), two guests: node 0 primary,
# node 1 secondary, the link shaped inside the guests to 200 Mbit/s with
# 10 ms each way (20 ms round trip).  On the primary's data device:
#   1. throughput: 1 MiB sequential writes at QD4 for FERRY_BENCH_SECS
#      (default 20) after a 5 s ramp, overflow block (the writer waits for
#      the link rather than the group going ahead): the bytes ferryd put on
#      the link per second, as a fraction of the link;
#   2. lag: the same writes paced at 80% of what phase 1 shipped (80% of
#      the link when the guest can fill it; a TCG guest cannot, and a pace
#      above what it ships only measures a growing queue): the age of the
#      oldest record not acknowledged, sampled every 0.5 s;
#   3. bytes on the wire per byte written (record framing, compression).
# Prints "bench-repl|<name>|<value>" lines.
secs=${FERRY_BENCH_SECS:-20}
peer=10.99.0.$((2 - FERRY_NODE))
mkdir -p /tmp/www
httpd -p 7000 -h /tmp/www || fail "httpd"
if [ "$FERRY_NODE" = 0 ]; then
	REPL_PRIMARY_OPTS="spool_mb 128 overflow block" repl_devices primary
	repl_config primary
	# No disk spool: the writer is to wait for the link, whose throughput
	# this measures (the guest's root is in memory, too).
	echo 'spool_after_mb = 0' >>/etc/ferry/gr.toml
	/sbin/tc qdisc add dev eth0 root netem rate 200mbit delay 10ms limit 10000 || fail "netem"
	ferryd_start
	wire() { fstatus wire_bytes | awk '{ s += $1 } END { print s + 0 }'; }
	rec() { fstatus record_bytes | awk '{ s += $1 } END { print s + 0 }'; }
	fio --thread --name=t --filename=/dev/mapper/r1 --direct=1 --ioengine=libaio --rw=write --bs=1M \
		--iodepth=4 --time_based --runtime=$((secs + 5)) --size=30M >/tmp/f1.out 2>&1 &
	fp=$!
	sleep 5
	w0=$(wire); t0=$(cut -d' ' -f1 /proc/uptime)
	sleep "$secs"
	w1=$(wire); t1=$(cut -d' ' -f1 /proc/uptime)
	wait $fp || { cat /tmp/f1.out; fail "fio"; }
	awk -v a=$w0 -v b=$w1 -v s=$t0 -v e=$t1 'BEGIN { r = (b - a) / (e - s) / 1e6;
		printf "bench-repl|throughput_MBps|%.2f\nbench-repl|link_MBps|25.00\nbench-repl|throughput_fraction_of_link|%.3f\n", r, r / 25 }'
	# Drain the backlog of phase 1 first.
	for t in $(seq 1 600); do
		[ -z "$(fstatus lag_records | grep -v '^0$')" ] && break
		sleep 0.5
	done
	pace=$(awk -v a=$w0 -v b=$w1 -v s=$t0 -v e=$t1 'BEGIN { r = 0.8 * (b - a) / (e - s) / 1048576; if (r > 20) r = 20; printf "%d", r < 1 ? 1 : r }')
	echo "bench-repl|paced_at_MiBps|$pace"
	fio --thread --name=t --filename=/dev/mapper/r1 --direct=1 --ioengine=libaio --rw=write --bs=1M \
		--iodepth=4 --rate=${pace}m --time_based --runtime=$((secs + 5)) --size=30M >/tmp/f2.out 2>&1 &
	fp=$!
	sleep 5
	: >/tmp/lag
	for t in $(seq 1 $((secs * 2))); do
		fstatus lag_seconds | sort -n | tail -1 >>/tmp/lag
		sleep 0.5
	done
	wait $fp || { cat /tmp/f2.out; fail "fio (paced)"; }
	written=$(grep -o 'WRITE: bw=[^,]*, [^,]*, io=[0-9.]*[KMG]i*B' /tmp/f2.out | head -1)
	sort -n /tmp/lag | awk '{ v[NR] = $1 } END { printf "bench-repl|lag_median_ms|%.0f\nbench-repl|lag_max_ms|%.0f\n", v[int((NR + 1) / 2)] * 1000, v[NR] * 1000 }'
	echo "bench-repl|paced_fio|$written"
	awk -v w=$(wire) -v r=$(rec) 'BEGIN { printf "bench-repl|wire_bytes_per_record_byte|%.4f\n", w / r }'
	echo "bench-repl|record_bytes_per_data_byte|$(awk 'BEGIN { printf "%.4f", (1048576 + 112) / 1048576 }') (1 MiB writes: 112 bytes of header and tail each)"
	ferryctl status gr
	set -- $(dm status r1)
	[ "$8" = replicating ] || fail "the primary went $8"
	touch /tmp/www/done
	await_peer_file "$peer" bye
else
	repl_devices secondary
	repl_config secondary
	/sbin/tc qdisc add dev eth0 root netem delay 10ms limit 10000 || fail "netem"
	ferryd_start
	fetch done /dev/null 900 || fail "the primary never finished"
	ferryctl status gr
	touch /tmp/www/bye
	sleep 5  # time for the primary to see it
fi
killall httpd 2>/dev/null || true
