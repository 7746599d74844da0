# Side by side (scripts/bench.sh, part "drbd"): ferry, DRBD 8.4 protocol A
# (the kernel's own drbd.ko, drbdsetup-84) and dm-linear in the same two
# guests, alternating over FERRY_BENCH_ROUNDS rounds (default 3), the order
# rotated every round.  Node 0 is the primary, node 1 the secondary; the
# disks are those of t-bench-repl.sh: vda, vdb data, vdc, vdd meta.  Each
# system's device is 128 MiB of vdb (meta on vdd; ferry's log device on
# vda/vdc, unused here).  10 ms of delay each way (netem, in both guests),
# the primary's side also rate-limited, as in t-bench-repl.sh.
#
#   ferry   spool_mb 128, overflow block, checkpoint_ms 100, ferryd with its
#           defaults (LZ4, TLS) and spool_after_mb = 0: the writer waits
#           for the link, as in t-bench-repl.sh.
#   DRBD    protocol A, flexible external meta data on vdd, the initial
#           sync skipped (new-current-uuid --clear-bitmap while connected
#           Inconsistent/Inconsistent); its defaults otherwise (sndbuf
#           auto-tuned, max-buffers 2048, al-extents 1237, on-congestion
#           block) and the flush settings stated: disk-flushes yes,
#           md-flushes yes, disk-barrier no, disk-drain yes.
#   Flushes: fio writes with O_DIRECT and never flushes; each system keeps
#           its own meta data durable its usual way (DRBD flushes, ferry
#           FUA writes), on the same virtio disks (a volatile write cache;
#           QEMU cache=unsafe).
#
# Figures (fio, 128 MiB region of the device; latencies are fio's
# completion latencies):
#   A  200 Mbit/s: 4 KiB random writes QD32 (IOPS, p99), then 1 MiB
#      sequential writes QD4 (MB/s), FERRY_BENCH_SECS each after 1 s of ramp.
#   B  FERRY_BENCH_LINK_MBIT (default 40): 1 MiB writes QD4, measured for
#      FERRY_BENCH_SECS after the first 5 s (t-bench-repl.sh's window and
#      figure): the data handed to the network per second (ferry: record
#      bytes ferryd shipped; DRBD: its ns count), as a fraction of the
#      link; and what fio wrote over the whole run, the same way.
#   C  the same link, drained: FERRY_BENCH_BURST_MB (default 48) MiB of
#      1 MiB writes at QD4: the writer's time (fio's), and the time from
#      the writer's start until the secondary holds all of it: ferry, every
#      record acknowledged (dm status: acked = completed; the secondary
#      acknowledges what it holds durably); DRBD, the secondary's own
#      count of data written to its disk (/proc/drbd dw) reaching the
#      burst, which the secondary reports at once over a TCP connection
#      (the path of an acknowledgement: 10 ms).  Both are polled every
#      0.1 s.
#   D  the same link: 4 KiB random writes at QD1 paced at 80% of it
#      (fio --rate), FERRY_BENCH_SECS after 1 s of ramp: p50, p99, the
#      rate achieved.
# dm-linear runs A and D (no link).  Between phases the primary waits until
# its system has drained (ferry: all acknowledged; DRBD: nothing out of
# sync, nothing pending, its sockets' send queues empty).
# Prints "bench-drbd|<round>|<system>|<figure>|<value>" lines.
secs=${FERRY_BENCH_SECS:-20}
mbit=${FERRY_BENCH_LINK_MBIT:-40}
rounds=${FERRY_BENCH_ROUNDS:-3}
burst=${FERRY_BENCH_BURST_MB:-48}
peer=10.99.0.$((2 - FERRY_NODE))
SECT=262144 # 128 MiB
www_start bench-drbd

[ -f /ferry/drbd/order ] || fail "no drbd.ko in the initramfs (scripts/mkinitramfs.sh with FERRY_INITRAMFS_KDIR)"
command -v drbdsetup-84 >/dev/null && command -v drbdmeta >/dev/null || fail "no drbdsetup-84/drbdmeta (drbd-utils) in the tools image"
for m in $(cat /ferry/drbd/order); do
	grep -q "^$m " /proc/modules || insmod "/ferry/drbd/$m.ko" || fail "insmod $m"
done
ferry_load
mkdir -p /var/lock /var/run/drbd /var/lib/drbd
echo "bench-drbd|0|-|write_cache|$(cat /sys/block/vdb/queue/write_cache)"
echo "bench-drbd|0|-|drbd|$(head -1 /proc/drbd)"
# Lay the data down once, so that no system pays for first writes on the
# host (the ferry rounds zero vdb's first 8 MiB again: repl_devices).
dd if=/dev/zero of=/dev/vdb bs=1M count=$((SECT / 2048)) oflag=direct 2>/dev/null || fail "dd vdb"

up() { cut -d' ' -f1 /proc/uptime; }
order_of() {  # the systems of round $1
	case $(($1 % 3)) in
	1) echo "ferry drbd linear" ;;
	2) echo "drbd linear ferry" ;;
	0) echo "linear ferry drbd" ;;
	esac
}
drbd_field() { sed -n "s/.* $1:\([0-9]*\).*/\1/p" /proc/drbd | head -1; }
drbd_wait() {  # drbd_wait <pattern in /proc/drbd> <half-seconds>
	for t in $(seq 1 "$2"); do
		grep -q "$1" /proc/drbd && return 0
		sleep 0.5
	done
	cat /proc/drbd
	return 1
}
# Both nodes: minor 0 of resource rb on vdb, flexible external meta data on
# vdd (new), connected to the peer with protocol A.
drbd_up() {
	drbdmeta --force 0 v08 /dev/vdd flex-external create-md </dev/null >/tmp/drbdmeta.out 2>&1 ||
		{ cat /tmp/drbdmeta.out; fail "drbdmeta create-md"; }
	drbdsetup-84 new-resource rb || fail "drbd new-resource"
	drbdsetup-84 new-minor rb 0 0 || fail "drbd new-minor"
	drbdsetup-84 attach 0 /dev/vdb /dev/vdd flexible \
		--disk-flushes=yes --md-flushes=yes --disk-barrier=no --disk-drain=yes || fail "drbd attach"
	drbdsetup-84 connect rb "ipv4:10.99.0.$((FERRY_NODE + 1)):7788" "ipv4:$peer:7788" --protocol=A || fail "drbd connect"
}
drbd_down() { drbdsetup-84 down rb || { cat /proc/drbd; fail "drbd down"; }; }
ferry_down() {
	killall ferryd >/dev/null 2>&1 || true
	for w in $(seq 1 50); do pidof ferryd >/dev/null 2>&1 || break; sleep 0.1; done
	dm remove r1 || fail "remove r1"
	dm remove r0 || fail "remove r0"
	umount /var/lib/ferry 2>/dev/null || true
	rm -rf /etc/ferry /tmp/ferry-log
	mountpoint -q /var/lib/ferry 2>/dev/null || rm -rf /var/lib/ferry
}

if [ "$FERRY_NODE" = 1 ]; then
	/sbin/tc qdisc add dev eth0 root netem delay 10ms limit 10000 || fail "netem"
	for r in $(seq 1 "$rounds"); do
		for s in $(order_of "$r"); do
			[ "$s" = linear ] && continue
			phase "bench-drbd round $r: $s (secondary)"
			case $s in
			ferry)
				REPL_SECTORS=$SECT repl_devices secondary
				repl_config secondary
				ferryd_start ;;
			drbd) drbd_up ;;
			esac
			publish "ready-$r-$s" 1
			if [ "$s" = drbd ]; then
				# C: once armed, the moment the disk holds the burst.
				fetch "arm-$r" /dev/null 1800 || fail "the primary never armed the burst of round $r"
				base=$(drbd_field dw)
				publish "armed-$r" "$base"
				want=$((base + burst * 1024))
				for t in $(seq 1 6000); do
					[ "$(drbd_field dw)" -ge "$want" ] && break
					sleep 0.1
				done
				echo "held $(drbd_field dw)" | timeout 5 nc 10.99.0.1 7101 || true
			fi
			fetch "done-$r-$s" /dev/null 1800 || fail "the primary never finished $s in round $r"
			case $s in
			ferry) ferryctl status gr >/tmp/ferry-status.$r 2>&1 || true; ferry_down ;;
			drbd) cat /proc/drbd; drbd_down ;;
			esac
			publish "clean-$r-$s" 1
		done
	done
	fetch bye /dev/null 600 || true
	publish bye 1
	exit 0
fi

/sbin/tc qdisc add dev eth0 root netem rate 200mbit delay 10ms limit 10000 || fail "netem"
link() { /sbin/tc qdisc change dev eth0 root netem rate "$1mbit" delay 10ms limit 10000 || fail "netem change"; }
# fio_run <out> <fio options>: one job on $dev, terse output in <out>.
fio_run() {
	o=$1; shift
	fio --thread --name=b --filename="$dev" --direct=1 --ioengine=libaio --size=128M "$@" \
		--minimal --terse-version=3 >"$o" 2>&1 || { cat "$o"; fail "fio $sys $*"; }
}
# terse v3: 47 write KiB, 48 write KiB/s, 49 IOPS, 50 runtime ms, 65 clat p50, 71 clat p99 (us)
tf() { awk -F';' -v f="$2" '{ v = $f; sub(/.*=/, "", v); print v }' "$1"; }
out() { echo "bench-drbd|$r|$sys|$1|$2"; }
drained() {  # until the system holds nothing not replicated, at most 300 s
	case $sys in
	linear) return 0 ;;
	ferry) repl_drained 600 || fail "ferry did not drain" ;;
	drbd)
		stable=0 ns0=
		for t in $(seq 1 600); do
			ns=$(drbd_field ns)
			# The send queues (not yet acknowledged by the peer's TCP) of
			# DRBD's two sockets, port 7788 at either end.
			q=$(awk 'NR > 1 && ($2 ~ /:1E6C$/ || $3 ~ /:1E6C$/) { split($5, q, ":"); if (q[1] != "00000000") n++ } END { print n + 0 }' /proc/net/tcp)
			if [ "$(drbd_field oos)" = 0 ] && [ "$(drbd_field ap)" = 0 ] && [ "$(drbd_field pe)" = 0 ] &&
				[ "$q" = 0 ] && [ "$ns" = "$ns0" ]; then
				stable=$((stable + 1)); [ $stable -ge 2 ] && return 0
			else
				stable=0
			fi
			ns0=$ns
			sleep 0.5
		done
		cat /proc/drbd /proc/net/tcp; fail "DRBD did not drain" ;;
	esac
}
# Data bytes handed to the network so far.
shipped() {
	case $sys in
	ferry) fstatus record_bytes | awk '{ s += $1 } END { printf "%.0f\n", s }' ;;
	drbd) echo $(( $(drbd_field ns) * 1024 )) ;;
	esac
}
linkB=$(awk -v l="$mbit" 'BEGIN { printf "%d", l * 1e6 / 8 }')
pace=$(awk -v l="$mbit" 'BEGIN { printf "%d", 0.8 * l * 1e6 / 8 / 1024 }')
echo "bench-drbd|0|-|paced_asked_KiBps|$pace"
echo "bench-drbd|0|-|burst_mb|$burst"

for r in $(seq 1 "$rounds"); do
	for sys in $(order_of "$r"); do
		phase "bench-drbd round $r: $sys"
		[ "$sys" = linear ] || fetch "ready-$r-$sys" /dev/null 600 || fail "the secondary never got $sys ready in round $r"
		case $sys in
		linear)
			dm create lin --table "0 $SECT linear /dev/vdb 0" || fail "linear"
			dev=/dev/mapper/lin ;;
		ferry)
			REPL_SECTORS=$SECT REPL_PRIMARY_OPTS="spool_mb 128 overflow block" repl_devices primary
			repl_config primary
			echo 'spool_after_mb = 0' >>/etc/ferry/gr.toml
			ferryd_start
			dev=/dev/mapper/r1 ;;
		drbd)
			drbd_up
			drbd_wait 'cs:Connected' 240 || fail "DRBD did not connect"
			drbdsetup-84 new-current-uuid 0 --clear-bitmap || fail "new-current-uuid --clear-bitmap"
			drbd_wait 'ds:UpToDate/UpToDate' 120 || fail "DRBD not UpToDate/UpToDate after new-current-uuid"
			drbdsetup-84 primary 0 || fail "drbd primary"
			drbd_wait 'ro:Primary/Secondary' 40 || fail "DRBD not primary"
			dev=/dev/drbd0 ;;
		esac
		# A: the primary's cost, on a link that is not the limit.
		link 200
		fio_run /tmp/a1 --rw=randwrite --bs=4k --iodepth=32 --time_based --runtime="$secs" --ramp_time=1
		out rand4k_qd32_iops "$(tf /tmp/a1 49)"
		out rand4k_qd32_p99_us "$(tf /tmp/a1 71)"
		drained
		fio_run /tmp/a2 --rw=write --bs=1M --iodepth=4 --time_based --runtime="$secs" --ramp_time=1
		out seq1m_qd4_MBps "$(awk -v k="$(tf /tmp/a2 48)" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }')"
		drained
		link "$mbit"
		if [ "$sys" != linear ]; then
			# B: sustained writes on the slow link; t-bench-repl.sh's
			# window and figure: the data handed to the network per second
			# from 5 s on (ferry: the records ferryd shipped; DRBD: its ns
			# count), as a fraction of the link.  What fio got over the
			# whole run is printed too (ferry's spool absorbs the start).
			fio --thread --name=b --filename="$dev" --direct=1 --ioengine=libaio --rw=write --bs=1M --iodepth=4 \
				--size=128M --time_based --runtime=$((secs + 5)) --minimal --terse-version=3 >/tmp/b 2>&1 &
			fp=$!
			sleep 5
			d0=$(shipped) t0=$(up)
			sleep "$secs"
			d1=$(shipped) t1=$(up)
			wait $fp || { cat /tmp/b; fail "fio sustained $sys"; }
			out sustained_fraction_of_link "$(awk -v a="$d0" -v b="$d1" -v s="$t0" -v e="$t1" -v l="$linkB" 'BEGIN { printf "%.3f", (b - a) / (e - s) / l }')"
			out sustained_fio_fraction_of_link "$(awk -v k="$(tf /tmp/b 48)" -v l="$linkB" 'BEGIN { printf "%.3f", k * 1024 / l }')"
			drained
			# C: a burst; the secondary holds all of it when...
			rm -f /tmp/held_at
			if [ "$sys" = drbd ]; then
				# ... it says so (the secondary watches its own disk).
				( nc -l -p 7101 | { read -r x; up >/tmp/held_at; cat >/dev/null; } ) &
				publish "arm-$r" 1
				fetch "armed-$r" /dev/null 120 || fail "the secondary did not arm the burst"
			fi
			fio --thread --name=c --filename="$dev" --direct=1 --ioengine=libaio --rw=write --bs=1M --iodepth=4 \
				--size="${burst}M" --minimal --terse-version=3 >/tmp/c 2>&1 || { cat /tmp/c; fail "fio burst $sys"; }
			t1=$(up)
			wsecs=$(awk -v m="$(tf /tmp/c 50)" 'BEGIN { printf "%.2f", m / 1000 }')
			t0=$(awk -v a="$t1" -v b="$wsecs" 'BEGIN { printf "%.2f", a - b }')
			for t in $(seq 1 3000); do
				if [ "$sys" = ferry ]; then
					set -- $(dm status r1)
					[ "${10}" = "${12}" ] && { up >/tmp/held_at; break; }
				else
					[ -s /tmp/held_at ] && break
				fi
				sleep 0.1
			done
			[ -s /tmp/held_at ] || fail "$sys: the secondary never held the burst"
			out burst_writer_s "$wsecs"
			out burst_held_s "$(awk -v a="$(cat /tmp/held_at)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')"
			drained
		fi
		# D: paced small writes at QD1.
		fio_run /tmp/d --rw=randwrite --bs=4k --iodepth=1 --rate="${pace}k" --time_based --runtime="$secs" --ramp_time=1
		out paced_p50_us "$(tf /tmp/d 65)"
		out paced_p99_us "$(tf /tmp/d 71)"
		out paced_KiBps "$(tf /tmp/d 48)"
		drained
		case $sys in
		linear) dm remove lin || fail "remove lin" ;;
		ferry)
			set -- $(dm status r1)
			[ "$8" = replicating ] || fail "the ferry primary went $8"
			ferry_down ;;
		drbd) cat /proc/drbd; drbd_down ;;
		esac
		if [ "$sys" != linear ]; then
			publish "done-$r-$sys" 1
			fetch "clean-$r-$sys" /dev/null 300 || fail "the secondary did not clean up $sys in round $r"
		fi
	done
done
publish bye 1
await_peer_file "$peer" bye || true
