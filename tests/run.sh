#!/usr/bin/env bash
# `make test`: the userspace tests, then the guest suite.  Exits non-zero on
# the first failing part; prints a summary with durations.
#
# Every step runs under a time limit (a hang names its step and still
# prints the summary), and every guest a step booted, killed ones
# included, has its kernel log judged (tests/judge.sh).  The run's random
# choices come from FERRY_SEED, printed first (tests/seed.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=${FERRY_OUT:-$PWD/out}/test
rm -rf "$out"; mkdir -p "$out"
. tests/seed.sh
echo "==== make test, FERRY_SEED=$FERRY_SEED"
summary="$out/summary"
: >"$summary"
t_start=$SECONDS
finish() {
	cat "$summary"
	echo "total $((SECONDS - t_start))s, FERRY_SEED=$FERRY_SEED"
}
# step <name> <limit-seconds> <guest-out-dir or -> <command>...
step() {
	local name=$1 limit=$2 logs=$3 t0=$SECONDS rc=0 cpu; shift 3
	echo "==== $name"
	# The CPU time the step's processes used (guests included): against
	# its wall time, how much of the machine's two cores it kept busy.
	# (GNU time comes with the dependencies, the first step.)
	local cf="$out/.cpu.$BASHPID" timer=()
	[ -x /usr/bin/time ] && timer=(/usr/bin/time -o "$cf" -f '%U %S')
	"${timer[@]}" timeout -k 30 "$limit" "$@" || rc=$?
	cpu=$(awk '/^[0-9.]+ [0-9.]+$/ { printf "%d", $1 + $2 }' "$cf" 2>/dev/null || true)
	rm -f "$cf"
	if [ $rc = 0 ] && [ "$logs" != - ] && ! tests/judge.sh "$logs"; then
		rc=1
		name="$name: kernel log"
	fi
	if [ $rc = 0 ]; then
		echo "PASS $name ($((SECONDS - t0))s, cpu ${cpu:-?}s)" >>"$summary"
		return 0
	fi
	if [ $rc = 124 ] || [ $rc = 137 ]; then
		echo "TIMEOUT $name (stopped after its limit of ${limit}s)" >>"$summary"
	else
		echo "FAIL $name ($((SECONDS - t0))s, cpu ${cpu:-?}s)" >>"$summary"
	fi
	# A failed step's guests are judged too: a splat explains a failure.
	[ "$logs" = - ] || tests/judge.sh "$logs" || true
	# What failed, in the summary: with the lanes' output interleaved, the
	# summary is what is read at the end of a long log.
	if [ "$logs" != - ]; then
		grep -ars '^FAIL\|^FERRY-TEST .* FAIL' "$logs" 2>/dev/null |
			sed "s|^$logs/||" | cut -c1-300 | tail -n 12 | sed 's/^/    /' >>"$summary" || true
	fi
	finish
	exit 1
}
# lanes <function>...: runs each function (a sequence of steps) at the
# same time as the others, its output prefixed with its name; fails, with
# the summary, when one of them failed.  What each lane keeps busy is
# measured from the summary's CPU seconds (see where it is called).
lanes() {
	local f pids=() rc=0 p
	for f in "$@"; do
		( set -o pipefail; ( "$f" ) 2>&1 | sed -u "s/^/[$f] /"; echo $? >"$out/lane-$f.rc" ) &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || true; done
	for f in "$@"; do [ "$(cat "$out/lane-$f.rc" 2>/dev/null)" = 0 ] || rc=1; done
	if [ $rc != 0 ]; then
		finish
		exit 1
	fi
}

step "dependencies" 1200 - scripts/deps.sh
CARGO_TARGET_DIR=$(scripts/cargo-target.sh)
export CARGO_TARGET_DIR
if [ -f userspace/Cargo.toml ]; then
	# The workspace's tests, the simulation and the fuzz corpora replayed
	# (ferryd/tests/fuzz_corpus.rs).
	step "cargo test (userspace)" 1800 - bash -c 'cd userspace && cargo test --workspace --quiet'
	step "cargo test (userspace, failpoints)" 1800 - bash -c 'cd userspace && cargo test -p ferryd --features failpoints --quiet failpoints_of -- --test-threads=1'
	# make userspace and make install into scratch DESTDIRs: the tree, the
	# DKMS source, the unit verified by systemd-analyze at its installed
	# path (tests/install.sh).
	step "make install, the systemd unit" 900 - tests/install.sh
fi
step "kernel (debug, cached)" 3600 - scripts/build-kernel.sh debug
step "module" 600 - make --no-print-directory module
step "guest tools" 1800 - bash -c "scripts/guest-tools.sh >'$out/tools.list'"
step "initramfs" 600 - bash -c "scripts/mkinitramfs.sh '$out/initramfs.cpio' dm-ferry.ko \$(cat '$out/tools.list')"

disks=(--disk 256M --disk 256M --disk 64M --disk 64M)
# Two lanes at once, one per core.  Each test starts from no module, no
# device and no ferryd state (tests/guest/init).  A single guest keeps a
# core busy; a pair of guests 0.6 to 1.3 cores (they wait on each other
# and on the network; the crash points 5 s at each point for the streams
# to go silent).  Three lanes were tried: with up to six guests on the two
# cores every guest's CPU time about doubled, and the same tests took
# 2,585 s against 1,524 s with two lanes.  The lanes are balanced by the
# steps' measured times (Documentation/testing.rst).
single() {
	step "guest: target; overflow, secondary" 1600 "$out/vm-target" scripts/vm.sh --timeout 1500 \
		--initrd "$out/initramfs.cpio" --out "$out/vm-target" "${disks[@]}" \
		load passthrough segments bad-tables suspend remove-open flush-discard lifecycle overflow secondary
	step "guest: primary" 1600 "$out/vm-primary" scripts/vm.sh --timeout 1500 --initrd "$out/initramfs.cpio" --out "$out/vm-primary" "${disks[@]}" \
		primary gate chardev bigbio markers meta replay
	step "guest: crash points (G3)" 1200 "$out/crash" tests/crash.sh "$out/initramfs.cpio" "$out/crash" "${FERRY_CRASH_POINTS:-3}"
	step "guests: full disks, PostgreSQL" 2000 "$out/vm-repl-app" scripts/vm.sh \
		--guests 2 --smp 1 --mem 768 --timeout 1800 --initrd "$out/initramfs.cpio" --out "$out/vm-repl-app" "${disks[@]}" \
		net-ping repl-full-log repl-full-spool repl-app
}
pairs() {
	step "guests: network, replication (drain, prefix, checksums), disk spool, resync, initial copy, room for a resync" 2000 "$out/vm-repl" scripts/vm.sh \
		--guests 2 --smp 1 --mem 768 --timeout 1800 --initrd "$out/initramfs.cpio" --out "$out/vm-repl" "${disks[@]}" \
		net-ping repl repl-spool repl-resync repl-initial repl-room
	# 2 block points, 3 cut inside a resync, 2 applications (ext4, SQLite);
	# make soak runs 200, 50 and 4.
	step "guests: replication crash points (G1, G2; inside resyncs)" 3000 "$out/repl-crash" \
		env FERRY_REPL_RESYNCS="${FERRY_REPL_RESYNCS:-3}" FERRY_REPL_APPS="${FERRY_REPL_APPS:-2}" \
		tests/repl-crash.sh "$out/initramfs.cpio" "$out/repl-crash" "${FERRY_REPL_POINTS:-2}"
	step "guests: secondary power cuts (G4, G5)" 1500 "$out/repl-sec-crash" tests/repl-sec-crash.sh \
		"$out/initramfs.cpio" "$out/repl-sec-crash" "${FERRY_SEC_CUTS:-1}"
	# The first cut sends the primary ahead, the second falls inside the
	# resync that follows.
	step "guests: secondary power cuts inside a resync (G1, G4)" 1500 "$out/repl-sec-resync" \
		env FERRY_SEC_RESYNC=1 tests/repl-sec-crash.sh "$out/initramfs.cpio" "$out/repl-sec-resync" 2
}
lanes single pairs

finish
