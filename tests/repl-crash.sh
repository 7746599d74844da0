#!/usr/bin/env bash
# Replication crash points (G1, G2): one secondary guest stays up; for each
# point the host boots a primary guest on fresh disks, lets it write and
# replicate, cuts its power (SIGKILL of QEMU) 1 to 6 s after it armed, and
# the secondary promotes and checks what it holds.  The two guests are
# joined only to each other (QEMU socket netdev on 127.0.0.1; the
# secondary listens, so each new primary can connect).
#
#   tests/repl-crash.sh <initramfs.cpio> <out-dir> [points]   (default 20;
#                                                            FERRY_REPL_POINTS)
#
# The points run dependent self-describing writes (checked by the prefix
# checker); FERRY_REPL_APPS (default 4) more points follow, alternating a
# file workload on ext4 (fsck) and SQLite transactions (integrity check,
# committed prefix).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
initrd=$1 out=$2 blocks=${3:-${FERRY_REPL_POINTS:-20}} apps=${FERRY_REPL_APPS:-4}
points=$((blocks + apps))
mkdir -p "$out"
rm -f "$out"/*.log
. "$here/tests/guests.sh"

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
guest 1 "$out/secondary.log" listen repl-crash-secondary "ferry.points=$points ferry.block_points=$blocks ${FERRY_DEMO:+ferry.demo=1}"
spid=$gpid
for i in $(seq 1 "$points"); do
	if ! wait_for "$out/secondary.log" "^REPL-READY $i\$" 300 $spid; then
		tail -40 "$out/secondary.log"; echo "repl-crash: secondary not ready for point $i"; exit 1
	fi
	plog="$out/primary-$i.log"
	workload=blocks
	if [ "$i" -gt "$blocks" ]; then
		workload=sqlite; [ $(( (i - blocks) % 2 )) = 1 ] && workload=ext4
	fi
	guest 0 "$plog" connect repl-crash-primary "ferry.point=$i ferry.workload=$workload"
	ppid=$gpid
	if ! wait_for "$plog" '^FERRY-ARMED' 300 $ppid; then
		tail -40 "$plog"; echo "repl-crash: point $i: the primary did not arm"; exit 1
	fi
	delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.1f", 1 + (r % 51) / 10 }')
	[ -n "${FERRY_DEMO:-}" ] && delay=8.0
	end=$(awk -v d="$delay" 'BEGIN { printf "%d", d * 10 }')
	for k in $(seq 1 "$end"); do sleep 0.1; [ $((k % 10)) = 0 ] && demo_flush; done
	demo_flush
	[ -n "${FERRY_DEMO:-}" ] && echo "host: power cut of the primary guest (SIGKILL of its QEMU) ${delay}s into the workload"
	kill -9 $ppid; wait $ppid 2>/dev/null || true
	if ! wait_for "$out/secondary.log" "^REPL-POINT $i " 400 $spid; then
		tail -60 "$out/secondary.log"; echo "repl-crash: point $i: no verdict from the secondary"; exit 1
	fi
	demo_flush
	line=$(grep -a "^REPL-POINT $i " "$out/secondary.log" | tr -d '\r')
	echo "crash point $i ($workload, power cut ${delay}s after arming): ${line#REPL-POINT $i }"
	case "$line" in *" PASS "*) ;; *) tail -40 "$out/secondary.log"; exit 1 ;; esac
done
if ! wait_for "$out/secondary.log" '^FERRY-VERDICT' 300 $spid || ! grep -aq '^FERRY-VERDICT: PASS' "$out/secondary.log"; then
	tail -40 "$out/secondary.log"; echo "repl-crash: secondary verdict not PASS"; exit 1
fi
echo "repl-crash: $points of $points crash points passed in $(( $(date +%s) - t0 ))s"
