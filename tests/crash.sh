#!/usr/bin/env bash
# Crash points for G3: for each, boot a guest with fresh disks running
# tests/guest/t-crash-load.sh, cut its power (SIGKILL of QEMU) a random
# 0.5 to 6 s after the workload started, boot again on the same disks and
# run t-crash-check.sh.
#
#   tests/crash.sh <initramfs.cpio> <out-dir> [points]   (default 3;
#                                                       FERRY_CRASH_POINTS)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
initrd=$1 out=$2 points=${3:-${FERRY_CRASH_POINTS:-3}}
mkdir -p "$out"
. "$here/tests/seed.sh"
. "$here/tests/kmemleak.sh"
pass=0
for i in $(seq 1 "$points"); do
	d="$out/p$i"
	rm -rf "$d"; mkdir -p "$d"
	truncate -s 64M "$d/data.img"; truncate -s 64M "$d/meta.img"; truncate -s 64M "$d/log.img"
	disks=(--disk "$d/data.img" --disk "$d/meta.img" --disk "$d/log.img")
	delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.1f", 0.5 + (r % 56) / 10 }')
	# Killed before it could scan for leaks: no kmemleak at all (it costs
	# about a third of the debug kernel's time; see Documentation/testing.rst).
	"$here/scripts/vm.sh" --initrd "$initrd" --out "$d/load" "${disks[@]}" --timeout 300 \
		--append "$NO_KMEMLEAK" --kill-after "$delay" crash-load | tail -n 1
	# The check boot only reads what the power cut left (the constructor's
	# recovery, whose leaks the primary suite's meta test, under kmemleak,
	# covers): no kmemleak.
	if ! "$here/scripts/vm.sh" --initrd "$initrd" --out "$d/check" "${disks[@]}" --timeout 300 \
		--append "$NO_KMEMLEAK" crash-check >"$d/check.out" 2>&1; then
		cat "$d/check.out"
		echo "crash point $i (power cut ${delay}s after arming): FAIL"
		exit 1
	fi
	echo "crash point $i (power cut ${delay}s after arming): $(grep -a '^crash|' "$d/check/g0.log" | tr -d '\r') PASS"
	pass=$((pass + 1))
done
echo "crash: $pass of $points crash points passed"
