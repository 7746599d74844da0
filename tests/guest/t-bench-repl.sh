# Replication benchmark (scripts/bench.sh), two guests: node 0 primary,
# node 1 secondary, 10 ms of delay each way (20 ms round trip) added inside
# the guests (netem), the primary's side also rate-limited.
#   1. 200 Mbit/s: 1 MiB sequential writes at QD4 for FERRY_BENCH_SECS
#      (default 20) after a 5 s ramp, overflow block (the writer waits for
#      the link rather than the group going ahead).  A TCG guest cannot
#      fill this link (its emulated CPU copies, checksums, compresses and
#      encrypts every byte): the figure is the CPU's ceiling, not ferry's
#      use of the link.
#   2. FERRY_BENCH_LINK_MBIT (default 40), a link the guest can fill: the
#      same writes; what the link carried (the primary's eth0, every header
#      included) and what ferryd put on it (records, frames) per second, as
#      fractions of the link.
#   3. On that link and on FERRY_BENCH_LAG_MBIT (default 20), one with
#      room to spare in the guests' CPUs: 64 KiB writes paced at 80% of
#      the link, the lag, the age of the oldest record not acknowledged,
#      sampled every 0.5 s.
#   4. Bytes on the wire per byte written (record framing, compression).
# Prints "bench-repl|<name>|<value>" lines.
secs=${FERRY_BENCH_SECS:-20}
mbit=${FERRY_BENCH_LINK_MBIT:-40}
peer=10.99.0.$((2 - FERRY_NODE))
www_start bench-repl
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
	tx() { cat /sys/class/net/eth0/statistics/tx_bytes; }
	up() { cut -d' ' -f1 /proc/uptime; }
	drain() {
		for t in $(seq 1 600); do
			[ -z "$(fstatus lag_records | grep -v '^0$')" ] && return 0
			sleep 0.5
		done
		fail "the backlog did not drain"
	}
	# throughput <name> <link Mbit/s>: 1 MiB writes at QD4, as fast as
	# they go; prints what records, frames and the interface carried.
	throughput() {
		/sbin/tc qdisc change dev eth0 root netem rate ${2}mbit delay 10ms limit 10000 || fail "netem change"
		fio --thread --name=t --filename=/dev/mapper/r1 --direct=1 --ioengine=libaio --rw=write --bs=1M \
			--iodepth=4 --time_based --runtime=$((secs + 5)) --size=30M >/tmp/f1.out 2>&1 &
		fp=$!
		sleep 5
		r0=$(rec) w0=$(wire) x0=$(tx) t0=$(up)
		sleep "$secs"
		r1=$(rec) w1=$(wire) x1=$(tx) t1=$(up)
		wait $fp || { cat /tmp/f1.out; fail "fio"; }
		awk -v n=$1 -v l=$2 -v r0=$r0 -v r1=$r1 -v w0=$w0 -v w1=$w1 -v x0=$x0 -v x1=$x1 -v s=$t0 -v e=$t1 'BEGIN {
			d = e - s; link = l * 1e6 / 8
			printf "bench-repl|%s_link_MBps|%.2f\n", n, link / 1e6
			printf "bench-repl|%s_records_MBps|%.2f\n", n, (r1 - r0) / d / 1e6
			printf "bench-repl|%s_records_fraction_of_link|%.3f\n", n, (r1 - r0) / d / link
			printf "bench-repl|%s_frames_fraction_of_link|%.3f\n", n, (w1 - w0) / d / link
			printf "bench-repl|%s_eth0_fraction_of_link|%.3f\n", n, (x1 - x0) / d / link }'
		drain
	}
	throughput at200mbit 200
	throughput at${mbit}mbit "$mbit"
	# lag <link Mbit/s>: 64 KiB writes paced at 80% of the link, the age
	# of the oldest record not acknowledged every 0.5 s.
	lag() {
		/sbin/tc qdisc change dev eth0 root netem rate ${1}mbit delay 10ms limit 10000 || fail "netem change"
		pace=$(awk -v l="$1" 'BEGIN { printf "%d", 0.8 * l * 1e6 / 8 / 1024 }')
		fio --thread --name=t --filename=/dev/mapper/r1 --direct=1 --ioengine=libaio --rw=write --bs=64k \
			--iodepth=${FERRY_BENCH_LAG_QD:-1} --rate=${pace}k --time_based --runtime=$((secs + 5)) --size=30M >/tmp/f2.out 2>&1 &
		fp=$!
		sleep 5
		: >/tmp/lag
		for t in $(seq 1 $((secs * 2))); do
			fstatus lag_seconds | sort -n | tail -1 >>/tmp/lag
			sleep 0.5
		done
		wait $fp || { cat /tmp/f2.out; fail "fio (paced)"; }
		written=$(grep -o 'WRITE: bw=[^,]*' /tmp/f2.out | head -1)
		sort -n /tmp/lag | awk -v l=$1 -v p=$pace -v w="$written" '{ v[NR] = $1 } END {
			printf "bench-repl|at%smbit_lag_paced_at_KiBps|%d (fio %s)\n", l, p, w
			printf "bench-repl|at%smbit_lag_median_ms|%.0f\n", l, v[int((NR + 1) / 2)] * 1000
			printf "bench-repl|at%smbit_lag_p90_ms|%.0f\n", l, v[int(NR * 0.9 + 0.5)] * 1000
			printf "bench-repl|at%smbit_lag_max_ms|%.0f\n", l, v[NR] * 1000 }'
		drain
	}
	lag "$mbit"
	lag "${FERRY_BENCH_LAG_MBIT:-20}"
	awk -v w=$(wire) -v r=$(rec) 'BEGIN { printf "bench-repl|wire_bytes_per_record_byte|%.4f\n", w / r }'
	echo "bench-repl|record_bytes_per_data_byte|$(awk 'BEGIN { printf "%.4f for 1 MiB writes, %.4f for 64 KiB ones", (1048576 + 112) / 1048576, (65536 + 112) / 65536 }') (112 bytes of header and tail each)"
	ferryctl status gr || true
	set -- $(dm status r1)
	[ "$8" = replicating ] || fail "the primary went $8"
	touch $WWW/done
	await_peer_file "$peer" bye
else
	repl_devices secondary
	repl_config secondary
	/sbin/tc qdisc add dev eth0 root netem delay 10ms limit 10000 || fail "netem"
	ferryd_start
	fetch done /dev/null 900 || fail "the primary never finished"
	ferryctl status gr || true
	touch $WWW/bye
	sleep 5  # time for the primary to see it
fi
