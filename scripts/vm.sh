#!/usr/bin/env bash
# Boot one or two ferry test guests under QEMU and return their verdict.
#
#   scripts/vm.sh [options] <test>...
#
#   --guests N       1 or 2 guests (default 1).  Two guests are joined to each
#                    other, and to nothing else, by a QEMU socket netdev on
#                    127.0.0.1; they get 10.99.0.1 and 10.99.0.2.
#   --kernel FILE    bzImage (default: the cached debug kernel)
#   --initrd FILE    initramfs from scripts/mkinitramfs.sh (required); its
#                    tools image (FILE with .cpio -> .tools.img) is attached
#                    read-only as the last disk of every guest
#   --disk SPEC      a virtio disk for every guest, repeatable: SIZE (a new
#                    sparse raw file, e.g. 256M) or PATH (an existing image,
#                    with %n replaced by the guest number)
#   --out DIR        serial logs and disk images (default: a new temp dir)
#   --timeout SEC    hard limit on the whole run (default 900)
#   --mem MB         guest memory (default 512)
#   --smp N          vCPUs per guest (default 2, 1 with --icount)
#   --icount         deterministic guest time: -icount shift=0,sleep=off
#   --append STR     extra kernel command line
#   --kill-after SEC once guest 0 prints "FERRY-ARMED", wait SEC seconds
#                    (fractions allowed) and kill every guest with SIGKILL,
#                    as a power cut would; the exit status is then 0 if the
#                    guest was armed and had not failed
#
# The guests run the named tests (tests/guest/t-<test>.sh) and print
# "FERRY-VERDICT: PASS" or "FAIL".  The exit status is 0 when every guest
# passed, 1 when one failed, 124 on timeout, 2 when a guest gave no verdict
# (it crashed: its serial log is printed).
#
# Guests boot with ignore_loglevel: every kernel message reaches the serial
# log, which tests/judge.sh scans (tests/run.sh judges every guest it
# booted).
#
# FERRY_ACCEL=kvm uses hardware virtualization where the host has it; the
# default is TCG (-accel tcg -cpu max).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
guests=1 kernel= initrd= out= timeout=900 mem=512 smp= icount=0 append= kill_after=
disks=() tests=()
while [ $# -gt 0 ]; do
	case "$1" in
	--guests) guests=$2; shift 2 ;;
	--kernel) kernel=$2; shift 2 ;;
	--initrd) initrd=$2; shift 2 ;;
	--disk) disks+=("$2"); shift 2 ;;
	--out) out=$2; shift 2 ;;
	--timeout) timeout=$2; shift 2 ;;
	--mem) mem=$2; shift 2 ;;
	--smp) smp=$2; shift 2 ;;
	--icount) icount=1; shift ;;
	--append) append=$2; shift 2 ;;
	--kill-after) kill_after=$2; shift 2 ;;
	-h|--help) sed -n '2,30p' "$0"; exit 0 ;;
	-*) echo "vm.sh: unknown option $1" >&2; exit 2 ;;
	*) tests+=("$1"); shift ;;
	esac
done
[ -n "$initrd" ] || { echo "vm.sh: --initrd is required" >&2; exit 2; }
[ ${#tests[@]} -gt 0 ] || { echo "vm.sh: name at least one test" >&2; exit 2; }
case "$guests" in 1|2) ;; *) echo "vm.sh: --guests must be 1 or 2" >&2; exit 2 ;; esac
tools=${initrd%.cpio}.tools.img
[ -f "$tools" ] || { echo "vm.sh: no tools image $tools (scripts/mkinitramfs.sh makes it)" >&2; exit 2; }
[ -n "$kernel" ] || kernel="$("$here/build-kernel.sh" debug)/arch/x86/boot/bzImage"
[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/ferry-vm.XXXXXX")
mkdir -p "$out"
[ -n "$smp" ] || { [ $icount = 1 ] && smp=1 || smp=2; }

case "${FERRY_ACCEL:-tcg}" in
tcg) accel=(-accel tcg -cpu max,la57=off) ;;
kvm) accel=(-accel kvm -cpu host) ;;
*) echo "vm.sh: FERRY_ACCEL must be tcg or kvm" >&2; exit 2 ;;
esac
[ $icount = 1 ] && accel+=(-icount shift=0,sleep=off)

free_port() {
	local p
	while :; do
		p=$(shuf -i 20000-59999 -n 1)
		ss -Htln "sport = :$p" | grep -q . || { echo $p; return; }
	done
}
port=$(free_port)
testlist=$(IFS=,; echo "${tests[*]}")
# Two guests run the same tests: each test starts on both together
# (tests/guest/lib.sh lockstep).
lockstep=; [ "$guests" = 2 ] && lockstep=ferry.lockstep=1

pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

start_guest() {
	local n=$1 args=() i=0 d f
	for d in "${disks[@]}"; do
		if [[ $d =~ ^[0-9]+[KMG]$ ]]; then
			f="$out/g$n-disk$i.img"
			rm -f "$f"; truncate -s "$d" "$f"
		else
			f=${d//%n/$n}
		fi
		args+=(-drive "file=$f,format=raw,if=none,id=d$i,cache=unsafe,discard=unmap"
		       -device "virtio-blk-pci,drive=d$i")
		i=$((i + 1))
	done
	args+=(-drive "file=$tools,format=raw,if=none,id=tools,readonly=on"
	       -device virtio-blk-pci,drive=tools,serial=ferrytools)
	if [ "$guests" = 2 ]; then
		local role=listen; [ "$n" = 1 ] && role=connect
		args+=(-netdev "socket,id=n0,$role=127.0.0.1:$port"
		       -device "virtio-net-pci,netdev=n0,mac=52:54:00:f0:00:0$((n + 1))")
	fi
	qemu-system-x86_64 "${accel[@]}" -nodefaults -no-user-config -nic none \
		-display none -no-reboot -m "$mem" -smp "$smp" \
		-kernel "$kernel" -initrd "$initrd" \
		-append "console=ttyS0 ignore_loglevel panic=-1 oops=panic ferry.node=$n ferry.nodes=$guests ferry.tests=$testlist $lockstep $append" \
		-chardev "file,id=s0,path=$out/g$n.log" -serial chardev:s0 \
		"${args[@]}" </dev/null >"$out/g$n.qemu.log" 2>&1 &
	pids+=($!)
}

start=$(date +%s)
start_guest 0
if [ "$guests" = 2 ]; then
	for _ in $(seq 100); do ss -Htln "sport = :$port" | grep -q . && break; sleep 0.1; done
	start_guest 1
fi

timed_out=0
deadline=$(( start + timeout ))
if [ -n "$kill_after" ]; then
	while kill -0 "${pids[0]}" 2>/dev/null && ! grep -aq '^FERRY-ARMED' "$out/g0.log" 2>/dev/null; do
		if [ "$(date +%s)" -ge $deadline ]; then timed_out=1; break; fi
		sleep 0.2
	done
	if [ $timed_out = 0 ] && grep -aq '^FERRY-ARMED' "$out/g0.log" && ! grep -aq '^FERRY-VERDICT' "$out/g0.log"; then
		sleep "$kill_after"
		cleanup
		for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
		if grep -aq '^FERRY-VERDICT\|^FAIL' "$out/g0.log"; then
			echo "vm.sh: ${tests[*]}: the guest stopped or failed before the kill"
			tail -n 40 "$out/g0.log"
			exit 1
		fi
		echo "vm.sh: ${tests[*]}: killed ${kill_after}s after arming, in $(( $(date +%s) - start ))s; logs in $out"
		exit 0
	fi
fi
for p in "${pids[@]}"; do
	while kill -0 "$p" 2>/dev/null; do
		if [ "$(date +%s)" -ge $deadline ]; then timed_out=1; break 2; fi
		sleep 0.5
	done
done
cleanup

rc=0
for n in $(seq 0 $((guests - 1))); do
	log="$out/g$n.log"
	grep -a '^FERRY-' "$log" 2>/dev/null | sed "s/^/[g$n] /" || true
	if grep -aq '^FERRY-VERDICT: PASS' "$log" 2>/dev/null; then
		continue
	fi
	if grep -aq '^FERRY-VERDICT: FAIL' "$log" 2>/dev/null; then
		[ $rc -ne 0 ] || rc=1
	else
		rc=2
	fi
	echo "---- g$n: last lines of $log ----"
	tail -n 80 "$log" 2>/dev/null || true
	cat "$out/g$n.qemu.log" 2>/dev/null || true
done
[ $timed_out = 1 ] && { echo "vm.sh: timed out after ${timeout}s"; rc=124; }
echo "vm.sh: ${tests[*]}: $( [ $rc = 0 ] && echo PASS || echo "FAIL ($rc)" ) in $(( $(date +%s) - start ))s; logs in $out"
exit $rc
