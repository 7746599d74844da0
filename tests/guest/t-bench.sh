# Benchmark: fio on the raw disk, dm-linear, ferry as a pass-through and
# ferry as a primary (a reader acknowledging every record at once), in
# alternating rounds in this one guest.  Prints "bench|<round>|<target>|<workload>|
# <iops>|<MB/s>|<p99 us>" lines for scripts/bench.sh to reduce.
rounds=${FERRY_BENCH_ROUNDS:-5}
secs=${FERRY_BENCH_SECS:-8}
workloads=${FERRY_BENCH_WORKLOADS:-rand4k,seq1m}
ferry_load
dd if=/dev/zero of=/dev/vdb bs=1M count=16 oflag=direct 2>/dev/null
D=$(sectors /dev/vda)
dm create lin --table "0 $D linear /dev/vda 0" || fail "linear"
dm create fer --table "0 $D ferry /dev/vda /dev/vdb" || fail "ferry"
# overflow block: the writer waits for the reader rather than the group
# going ahead, so the figures are those of a primary that keeps replicating.
popts="spool_mb 128 checkpoint_ms 1000 overflow block $(echo "${FERRY_BENCH_PRIMARY_OPTS:-}" | tr , ' ')"
dm create pri --table "0 $D ferry /dev/vda /dev/vdb $(( 2 + $(echo $popts | wc -w) )) group bench $popts" || fail "primary"
ferry-test read --group bench --log /dev/null --quiet --no-verify --idle-ms 100000000 --max-ms 100000000 >/tmp/bench-reader.out 2>&1 &
reader=$!
dev_of() { case $1 in raw) echo /dev/vda ;; linear) echo /dev/mapper/lin ;; ferry) echo /dev/mapper/fer ;; primary) echo /dev/mapper/pri ;; esac; }
# Lay the data down once so that no target pays for first writes.
dd if=/dev/zero of=/dev/vda bs=1M count=$((D / 2048)) oflag=direct 2>/dev/null
# CPU time of the guest so far, in USER_HZ ticks: busy (user, nice,
# system, irq, softirq, steal), every CPU.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# FERRY_BENCH_RAMP: fio's ramp seconds (0 in the -icount run, where the CPU
# time of the whole run is divided by its I/Os).
ramp=${FERRY_BENCH_RAMP:-1}
run() {  # run <target> <workload>
	case $2 in
	rand4k) a="--rw=randwrite --bs=4k --iodepth=32" kb=4 ;;
	seq1m) a="--rw=write --bs=1M --iodepth=4" kb=1024 ;;
	esac
	c0=$(busy_ticks)
	fio --thread --name=b --filename="$(dev_of "$1")" --direct=1 --ioengine=libaio $a \
		--time_based --runtime="$secs" --ramp_time="$ramp" --size=$((D / 2))s \
		--minimal --terse-version=3 >/tmp/b.out 2>&1 || { cat /tmp/b.out; fail "fio $1 $2"; }
	c1=$(busy_ticks)
	# terse v3: field 47 write KiB, 48 write KiB/s, 49 write IOPS, 71 write
	# clat p99 (us).  Last: the guest's CPU time per I/O in ns (under
	# -icount, instructions per I/O: one instruction is 1 ns), the reader's
	# and the interrupts' included; meaningful when fio ran without a ramp.
	awk -F';' -v r="$3" -v t="$1" -v w="$2" -v kb="$kb" -v busy=$((c1 - c0)) '{ split($71, p, "=");
		ios = $47 / kb; printf "bench|%s|%s|%s|%s|%.1f|%s|%.0f\n", r, t, w, $49, $48 / 1024, p[2], (ios > 0 ? busy * 1e7 / ios : 0) }' /tmp/b.out
}
for r in $(seq 1 "$rounds"); do
	# Rotate the order every round so that no target always goes first.
	case $((r % 3)) in
	1) order="linear ferry primary raw" ;;
	2) order="ferry primary raw linear" ;;
	0) order="primary raw linear ferry" ;;
	esac
	for w in $(echo "$workloads" | tr , ' '); do
		for t in $order; do run "$t" "$w" "$r"; done
	done
done
# FERRY_BENCH_PROFILE: where the instructions of a 4 KiB random write go,
# on dm-linear and on the primary (perf's cpu-clock samples; under -icount
# the clock is the instruction count): the top symbols of each.
if [ -n "${FERRY_BENCH_PROFILE:-}" ]; then
	command -v perf >/dev/null || fail "FERRY_BENCH_PROFILE: no perf in the guest (install linux-perf)"
	for t in linear primary; do
		perf record -q -g -e cpu-clock -a -o /tmp/perf.data -- fio --thread --name=b --filename="$(dev_of $t)" \
			--direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=32 --time_based --runtime="$secs" \
			--size=$((D / 2))s --minimal >/dev/null 2>&1 || fail "perf record $t"
		perf report -i /tmp/perf.data --stdio --no-children -g none --sort dso,sym 2>/dev/null | grep -v '^#' | grep -v '^$' |
			head -"${FERRY_BENCH_PROFILE_LINES:-45}" | sed "s/^/prof|$t|/"
		# Inclusive: what each function costs with what it calls.
		perf report -i /tmp/perf.data --stdio --children -g none --sort sym --percent-limit 0.4 2>/dev/null |
			grep -v '^#' | grep -v '^$' | head -"${FERRY_BENCH_PROFILE_LINES:-45}" | sed "s/^/prof-incl|$t|/"
		# The module's hottest instructions (symbol+offset, for objdump -d
		# of dm-ferry.ko on the host).
		perf script -i /tmp/perf.data -G -F ip,sym,symoff,dso 2>/dev/null | awk '/dm_ferry/ { print $2 }' |
			sort | uniq -c | sort -rn | head -"${FERRY_BENCH_PROFILE_LINES:-45}" | sed "s/^/prof-ip|$t|/"
		perf report -i /tmp/perf.data --stdio --no-children -g none --sort comm,dso 2>/dev/null | grep -v '^#' | grep -v '^$' |
			head -12 | sed "s/^/prof-dso|$t|/"
	done
fi
# The primary must have replicated every round (never gone ahead).
set -- $(dm status pri)
[ "$8" = replicating ] || { cat /tmp/bench-reader.out; fail "primary went ahead during the benchmark: $*"; }
echo "bench-primary|completed=${10}|acked=${12}|spool_kb=${13}|not_shipped=${17}"
dmesg | grep -o 'record overhead [0-9]* bytes' | head -1 | sed 's/^/bench-record|/'
kill $reader
dm remove pri; dm remove fer; dm remove lin
