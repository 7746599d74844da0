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
run() {  # run <target> <workload>
	case $2 in
	rand4k) a="--rw=randwrite --bs=4k --iodepth=32" ;;
	seq1m) a="--rw=write --bs=1M --iodepth=4" ;;
	esac
	fio --thread --name=b --filename="$(dev_of "$1")" --direct=1 --ioengine=libaio $a \
		--time_based --runtime="$secs" --ramp_time=1 --size=$((D / 2))s \
		--minimal --terse-version=3 >/tmp/b.out 2>&1 || { cat /tmp/b.out; fail "fio $1 $2"; }
	# terse v3: field 48 write KiB/s, 49 write IOPS, 71 write clat p99 (us)
	awk -F';' -v r="$3" -v t="$1" -v w="$2" '{ split($71, p, "="); printf "bench|%s|%s|%s|%s|%.1f|%s\n", r, t, w, $49, $48 / 1024, p[2] }' /tmp/b.out
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
# The primary must have replicated every round (never gone ahead).
set -- $(dm status pri)
[ "$8" = replicating ] || { cat /tmp/bench-reader.out; fail "primary went ahead during the benchmark: $*"; }
echo "bench-primary|completed=${10}|acked=${12}|spool_kb=${13}|not_shipped=${17}"
dmesg | grep -o 'record overhead [0-9]* bytes' | head -1 | sed 's/^/bench-record|/'
kill $reader
dm remove pri; dm remove fer; dm remove lin
