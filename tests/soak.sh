#!/usr/bin/env bash
# `make soak`: the deep tier, against the module and tools of this tree.
# Each part can be skipped by setting its count to 0.
#
#   FERRY_SIM_SOAK      simulation seeds beyond make test's 10,000 (1,000,000)
#   FERRY_FUZZ_SECONDS  seconds of fuzzing per fuzz target (300; cargo-fuzz
#                       is installed into FERRY_CACHE/tools when missing)
#   FERRY_REPLAY_MB     MiB written under the replay checker (256)
#   FERRY_RESYNC_MB     devices of the resync test (repl-resync, 256; make
#                       test runs it on 64)
#   FERRY_CRASH_POINTS  power cuts of a primary (G3) (100)
#   FERRY_REPL_POINTS   replication crash points (G1, G2) (200), and
#   FERRY_REPL_RESYNCS  more cut inside a resync (50)
#   FERRY_INITIAL_MB    devices of the initial full copy (repl-initial, 256;
#                       make test runs it on 32)
#   FERRY_APP_SCALE, FERRY_APP_SECONDS  PostgreSQL replicated and promoted
#                       (repl-app): pgbench's scale (4; make test 1) and
#                       seconds (60; make test 10)
#   FERRY_SEC_CUTS      power cuts of a secondary (G4, G5) (10)
#   FERRY_SEC_RESYNC_CUTS  power cuts of a secondary, all but the first
#                       inside a resync (10)
#   FERRY_LIFECYCLE_ROUNDS  create/remove cycles and concurrent churn of one
#                       group (100; make test runs 10)
#
# Every guest's kernel log is judged (tests/judge.sh); the seed of the
# random choices is printed first (tests/seed.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=${FERRY_OUT:-$PWD/out}/soak
mkdir -p "$out"
. tests/seed.sh
echo "soak: FERRY_SEED=$FERRY_SEED"
t0=$SECONDS
part() { echo "==== soak: $1 ($((SECONDS - t0))s in)"; }
CARGO_TARGET_DIR=$(scripts/cargo-target.sh)
export CARGO_TARGET_DIR

if [ "${FERRY_SIM_SOAK:-1000000}" -gt 0 ]; then
	part "simulation, ${FERRY_SIM_SOAK:-1000000} seeds from 10,000"
	(cd userspace && FERRY_SIM_SEEDS=${FERRY_SIM_SOAK:-1000000} FERRY_SIM_START=10000 \
		cargo test --quiet -p ferry-core --test simulation -- --ignored soak)
fi

if [ "${FERRY_FUZZ_SECONDS:-300}" -gt 0 ]; then
	tools=${FERRY_CACHE:-/var/cache/ferry}/tools
	if ! "$tools/bin/cargo-fuzz" --version >/dev/null 2>&1; then
		cargo install cargo-fuzz --locked --root "$tools"
	fi
	# cargo-fuzz needs unstable flags: allowed on the stable toolchain.
	for t in $(sed -n 's/^name = "\(.*_.*\)"$/\1/p' userspace/fuzz/Cargo.toml); do
		part "fuzz $t, ${FERRY_FUZZ_SECONDS:-300} s"
		(cd userspace && env -u CARGO_TARGET_DIR RUSTC_BOOTSTRAP=1 PATH="$tools/bin:$PATH" \
			cargo fuzz run -O "$t" -- -max_total_time="${FERRY_FUZZ_SECONDS:-300}" -print_final_stats=1 \
			2>&1 | tail -n 15)
	done
fi

scripts/build-kernel.sh debug >/dev/null
make --no-print-directory module
scripts/mkinitramfs.sh "$out/initramfs.cpio" dm-ferry.ko $(scripts/guest-tools.sh)
disks=(--disk 256M --disk 256M --disk 64M --disk 64M)
if [ "${FERRY_REPLAY_MB:-256}" -gt 0 ]; then
	part "replay checker over ${FERRY_REPLAY_MB:-256} MiB of writes"
	scripts/vm.sh --initrd "$out/initramfs.cpio" --out "$out/replay" --timeout 3600 \
		--disk 256M --disk 256M --disk 64M --disk 1G --append "ferry.replay_mb=${FERRY_REPLAY_MB:-256} ferry.replay_log=/dev/vdd" replay
fi
if [ "${FERRY_LIFECYCLE_ROUNDS:-100}" -gt 0 ]; then
	part "lifecycle, ${FERRY_LIFECYCLE_ROUNDS:-100} rounds"
	scripts/vm.sh --initrd "$out/initramfs.cpio" --out "$out/lifecycle" --timeout 3600 "${disks[@]}" \
		--append "ferry.lifecycle_rounds=${FERRY_LIFECYCLE_ROUNDS:-100}" lifecycle
fi
if [ "${FERRY_RESYNC_MB:-256}" -gt 0 ]; then
	part "resync after an overflow, ${FERRY_RESYNC_MB:-256} MiB devices"
	scripts/vm.sh --guests 2 --smp 1 --mem 768 --timeout 3600 --initrd "$out/initramfs.cpio" --out "$out/resync" "${disks[@]}" \
		--append "ferry.resync_mb=${FERRY_RESYNC_MB:-256}" repl-resync
fi
if [ "${FERRY_INITIAL_MB:-256}" -gt 0 ]; then
	part "initial full copy, ${FERRY_INITIAL_MB:-256} MiB devices"
	scripts/vm.sh --guests 2 --smp 1 --mem 768 --timeout 3600 --initrd "$out/initramfs.cpio" --out "$out/initial" "${disks[@]}" \
		--append "ferry.initial_mb=${FERRY_INITIAL_MB:-256}" repl-initial
fi
if [ "${FERRY_APP_SECONDS:-60}" -gt 0 ]; then
	part "PostgreSQL, pgbench scale ${FERRY_APP_SCALE:-4} for ${FERRY_APP_SECONDS:-60} s"
	scripts/vm.sh --guests 2 --smp 1 --mem 768 --timeout 3600 --initrd "$out/initramfs.cpio" --out "$out/app" "${disks[@]}" \
		--append "ferry.app_scale=${FERRY_APP_SCALE:-4} ferry.app_seconds=${FERRY_APP_SECONDS:-60}" repl-app
fi
[ "${FERRY_CRASH_POINTS:-100}" -gt 0 ] && { part "crash points"; tests/crash.sh "$out/initramfs.cpio" "$out/crash" "${FERRY_CRASH_POINTS:-100}"; }
[ "${FERRY_REPL_POINTS:-200}" -gt 0 ] && { part "replication crash points"; FERRY_REPL_KILLS=${FERRY_REPL_KILLS:-20} FERRY_REPL_RESYNCS=${FERRY_REPL_RESYNCS:-50} tests/repl-crash.sh "$out/initramfs.cpio" "$out/repl-crash" "${FERRY_REPL_POINTS:-200}"; }
[ "${FERRY_SEC_CUTS:-10}" -gt 0 ] && { part "secondary power cuts"; tests/repl-sec-crash.sh "$out/initramfs.cpio" "$out/repl-sec-crash" "${FERRY_SEC_CUTS:-10}"; }
[ "${FERRY_SEC_RESYNC_CUTS:-10}" -gt 0 ] && { part "secondary power cuts inside resyncs"; FERRY_SEC_RESYNC=1 tests/repl-sec-crash.sh "$out/initramfs.cpio" "$out/repl-sec-resync" "${FERRY_SEC_RESYNC_CUTS:-10}"; }
tests/judge.sh "$out"
echo "soak: PASS in $((SECONDS - t0))s, FERRY_SEED=$FERRY_SEED"
