#!/usr/bin/env bash
# Power cuts of the secondary (G4, G5 across crashes): the primary guest
# stays up writing (until the secondary's last boot asks it to stop); the
# secondary guest, whose remote log is on ext4 on its
# own disk, is killed (SIGKILL of QEMU) 0.5 to 3 s after it has applied
# three more intervals, FERRY_SEC_CUTS times (default 2), and booted again
# on the same disks each time; after the last boot the secondary waits for
# the primary's drain, promotes and checks every write and the checksums.
# FERRY_SEC_RESYNC=1: the primary's group has a 2 MiB spool and `overflow
# bitmap`, so that it goes ahead while the secondary is down and resyncs
# when it is back; every cut after the first falls inside that resync (the
# secondary arms once its resync span is open with intervals staged), and
# the last boot finds the span in its remote log and finishes it.
#
#   tests/repl-sec-crash.sh <initramfs.cpio> <out-dir> [cuts]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
initrd=$1 out=$2 cuts=${3:-${FERRY_SEC_CUTS:-2}}
mode="ferry.sec_resync=${FERRY_SEC_RESYNC:-0}"
mkdir -p "$out"
rm -f "$out"/*.log "$out"/*.img
. "$here/tests/guests.sh"

t0=$(date +%s)
guest 0 "$out/primary.log" listen repl-sec-primary "ferry.cuts=$cuts $mode"
ppid=$gpid
wait_listen || { echo "repl-sec-crash: the primary guest does not listen"; exit 1; }
for c in $(seq 1 "$cuts"); do
	slog="$out/secondary-$c.log"
	# Killed before it could scan for leaks: no kmemleak.
	guest 1 "$slog" connect repl-sec-secondary "ferry.cut=$c $mode $NO_KMEMLEAK" keep
	spid=$gpid
	if ! wait_for "$slog" '^FERRY-ARMED' 600 $spid; then
		tail -40 "$slog"; echo "repl-sec-crash: the secondary did not arm (boot $c)"; exit 1
	fi
	delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.1f", 0.5 + (r % 26) / 10 }')
	sleep "$delay"
	kill -9 $spid; wait $spid 2>/dev/null || true
	echo "secondary power cut $c: ${delay}s after arming; $({ tr -d '\r' <"$slog"; } | grep -a 'ok: ' | sed 's/^ *ok: //' | tr '\n' ';')"
done
slog="$out/secondary-final.log"
guest 1 "$slog" connect repl-sec-secondary "ferry.cut=final $mode" keep
spid=$gpid
rc=0
for p in $ppid $spid; do
	end=$(( $(date +%s) + 1500 ))
	while kill -0 $p 2>/dev/null; do
		[ "$(date +%s)" -lt $end ] || { rc=124; break; }
		sleep 1
	done
done
for l in "$slog" "$out/primary.log"; do
	tr -d '\r' <"$l" | grep -a 'ok: \|FAIL\|^PASS\|FERRY-VERDICT' | sed "s|^|[$(basename "$l" .log)] |"
	tr -d '\r' <"$l" | grep -aq '^FERRY-VERDICT: PASS' || rc=1
done
[ $rc = 0 ] || { tail -40 "$slog"; echo "repl-sec-crash: FAIL"; exit 1; }
echo "repl-sec-crash: $cuts secondary power cuts, replica verified, in $(( $(date +%s) - t0 ))s"
