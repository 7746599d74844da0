#!/usr/bin/env bash
# Replication crash points (G1, G2): one secondary guest stays up; for each
# point a primary guest writes and replicates on fresh devices, the host
# cuts it off 1 to 6 s after it armed, and the secondary promotes and
# checks what it holds.  The two guests are joined only to each other
# (QEMU socket netdev on 127.0.0.1; the secondary listens, so each new
# primary can connect).
#
# A cut is one of two kinds, the same to the secondary (its stream stops
# between two packets and nothing follows): a power cut, SIGKILL of the
# primary's QEMU, or a link cut, QEMU's set_link off on the primary's
# netdev, after which the primary guest tears its group down and runs the
# next point (the host restores the link once the secondary is ready for
# it).  The points are split into FERRY_REPL_KILLS (default 3) primary
# boots, each ending in a power cut; the other points are link cuts, which
# spare a boot each.
#
#   tests/repl-crash.sh <initramfs.cpio> <out-dir> [points]   (default 20;
#                                                            FERRY_REPL_POINTS)
#
# After a cut the host drops the secondary's carrier until the secondary
# says it saw it (REPL-CUTSEEN): the end of a point is the host's to say.
#
# The points run dependent self-describing writes (checked by the prefix
# checker); FERRY_REPL_RESYNCS (default 5) more points run them on a group
# that a link outage sent ahead and that the host cuts inside its resync
# (G1 while resyncing: the secondary holds its last consistent point or
# the span's end, never a part of the span); FERRY_REPL_APPS (default 4)
# more points follow, alternating a file workload on ext4 (fsck), cut
# inside the resync that follows an overflow as the resync points are, and
# SQLite transactions (integrity check, committed prefix).  FERRY_REPL_SEED_BASE (default 1000): the writers'
# seeds are it plus the point's number, and it moves the host's random
# choices, so that two runs at once (make test) check different points.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
initrd=$1 out=$2 blocks=${3:-${FERRY_REPL_POINTS:-20}} resyncs=${FERRY_REPL_RESYNCS:-5} apps=${FERRY_REPL_APPS:-4}
points=$((blocks + resyncs + apps))
mkdir -p "$out"
rm -f "$out"/*.log
. "$here/tests/guests.sh"
seed_base=${FERRY_REPL_SEED_BASE:-1000}
[ "$seed_base" = 1000 ] || RANDOM=$(( (RANDOM + seed_base) % 65536 ))

# FERRY_DEMO=1 (make demo): the guests narrate on lines "demo|...", which
# are printed here as they come.
shown=0
demo_flush() {
	[ -n "${FERRY_DEMO:-}" ] || return 0
	local n
	n=$({ tr -d '\r' <"$out/secondary.log"; } 2>/dev/null | grep -a '^demo|' | wc -l)
	if [ "$n" -gt "$shown" ]; then
		{ tr -d '\r' <"$out/secondary.log"; } 2>/dev/null | grep -a '^demo|' | sed -n "$((shown + 1)),${n}p" | cut -d'|' -f2-
		shown=$n
	fi
}

t0=$(date +%s)
kills=${FERRY_REPL_KILLS:-3}
[ "$kills" -ge 1 ] || kills=1
[ "$kills" -le "$points" ] || kills=$points
guest 1 "$out/secondary.log" listen repl-crash-secondary "ferry.points=$points ferry.block_points=$blocks ferry.resync_points=$resyncs ferry.seed_base=$seed_base ${FERRY_DEMO:+ferry.demo=1}"
spid=$gpid
wait_listen || { echo "repl-crash: the secondary guest does not listen"; exit 1; }
boot=0 last=0 link_cuts=0 power_cuts=0 mid_resync=0 in_resync=0
for i in $(seq 1 "$points"); do
	if ! wait_for "$out/secondary.log" "^REPL-READY $i\$" 300 $spid; then
		tail -40 "$out/secondary.log"; echo "repl-crash: secondary not ready for point $i"; exit 1
	fi
	# (point_workload of tests/guest/lib.sh)
	workload=blocks
	if [ "$i" -gt $((blocks + resyncs)) ]; then
		workload=sqlite; [ $(( (i - blocks - resyncs) % 2 )) = 1 ] && workload=ext4
	elif [ "$i" -gt "$blocks" ]; then
		workload=resync
	fi
	if [ "$i" -gt "$last" ]; then
		# A new primary boot for points i..last.
		boot=$((boot + 1))
		last=$(( points * boot / kills ))
		plog="$out/primary-$boot.log"
		# Every primary boot ends in a power cut, before it could scan
		# for leaks: no kmemleak (the secondary keeps it and scans).
		guest 0 "$plog" connect repl-crash-primary "ferry.point=$i ferry.last=$last ferry.block_points=$blocks ferry.resync_points=$resyncs ferry.seed_base=$seed_base $NO_KMEMLEAK"
		ppid=$gpid
	else
		# The same primary, once it has torn down the last point's group.
		if ! wait_for "$plog" "^FERRY-CUT $((i - 1))\$" 300 $ppid; then
			tail -40 "$plog"; echo "repl-crash: point $((i - 1)): the primary did not tear down after the link cut"; exit 1
		fi
		monitor 0 "set_link n0 on" >/dev/null || { echo "repl-crash: point $i: set_link on failed"; exit 1; }
	fi
	if ! wait_for "$plog" "^FERRY-ARMED $i\$" 300 $ppid; then
		tail -40 "$plog"; echo "repl-crash: point $i: the primary did not arm"; exit 1
	fi
	delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.1f", 1 + (r % 51) / 10 }')
	[ -n "${FERRY_DEMO:-}" ] && delay=8.0
	end=$(awk -v d="$delay" 'BEGIN { printf "%d", d * 10 }')
	for k in $(seq 1 "$end"); do sleep 0.1; [ $((k % 10)) = 0 ] && demo_flush; done
	demo_flush
	if [ "$i" = "$last" ]; then
		cut="power cut"
		[ -n "${FERRY_DEMO:-}" ] && echo "host: power cut of the primary guest (SIGKILL of its QEMU) ${delay}s into the workload"
		kill -9 $ppid; wait $ppid 2>/dev/null || true
		power_cuts=$((power_cuts + 1))
	else
		cut="link cut"
		monitor 0 "set_link n0 off" >/dev/null || { echo "repl-crash: point $i: set_link off failed"; exit 1; }
		link_cuts=$((link_cuts + 1))
	fi
	monitor 1 "set_link n0 off" >/dev/null || { echo "repl-crash: point $i: set_link off (secondary) failed"; exit 1; }
	if ! wait_for "$out/secondary.log" "^REPL-CUTSEEN $i\$" 120 $spid; then
		tail -40 "$out/secondary.log"; echo "repl-crash: point $i: the secondary did not see its carrier drop"; exit 1
	fi
	monitor 1 "set_link n0 on" >/dev/null || { echo "repl-crash: point $i: set_link on (secondary) failed"; exit 1; }
	if ! wait_for "$out/secondary.log" "^REPL-POINT $i " 400 $spid; then
		tail -60 "$out/secondary.log"; echo "repl-crash: point $i: no verdict from the secondary"; exit 1
	fi
	demo_flush
	line=$(grep -a "^REPL-POINT $i " "$out/secondary.log" | tr -d '\r')
	echo "crash point $i ($workload, $cut ${delay}s after arming): ${line#REPL-POINT $i }"
	case "$line" in *" PASS "*) ;; *) tail -40 "$out/secondary.log"; exit 1 ;; esac
	case "$line" in *span_open_at_cut=true*) mid_resync=$((mid_resync + 1)) ;; esac
	case "$workload" in resync | ext4) in_resync=$((in_resync + 1)) ;; esac
done
if ! wait_for "$out/secondary.log" '^FERRY-VERDICT' 300 $spid || ! grep -aq '^FERRY-VERDICT: PASS' "$out/secondary.log"; then
	tail -40 "$out/secondary.log"; echo "repl-crash: secondary verdict not PASS"; exit 1
fi
echo "repl-crash: $points of $points crash points passed ($power_cuts power cuts, $link_cuts link cuts; $in_resync cut while resyncing (ext4 ones included), $mid_resync of them inside a resync span the secondary had open) in $(( $(date +%s) - t0 ))s"
