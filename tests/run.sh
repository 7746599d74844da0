#!/usr/bin/env bash
# `make test`: the userspace tests, then the guest suite.  Exits non-zero on
# the first failing part; prints a summary with durations.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=${FERRY_OUT:-$PWD/out}/test
rm -rf "$out"; mkdir -p "$out"
summary=()
step() {
	local name=$1 t0=$SECONDS; shift
	echo "==== $name"
	if "$@"; then
		summary+=("PASS $name ($((SECONDS - t0))s)")
	else
		summary+=("FAIL $name ($((SECONDS - t0))s)")
		printf '%s\n' "${summary[@]}"
		exit 1
	fi
}

step "dependencies" scripts/deps.sh
if [ -f userspace/Cargo.toml ]; then
	step "cargo test (userspace)" bash -c 'cd userspace && cargo test --workspace --quiet'
fi
step "kernel (debug, cached)" scripts/build-kernel.sh debug
step "module" make --no-print-directory module
step "guest tools" bash -c "scripts/guest-tools.sh >'$out/tools.list'"
step "initramfs" bash -c "scripts/mkinitramfs.sh '$out/initramfs.cpio' dm-ferry.ko \$(cat '$out/tools.list')"

disks=(--disk 256M --disk 256M --disk 64M --disk 64M)
step "guest: target" scripts/vm.sh --initrd "$out/initramfs.cpio" --out "$out/vm-target" "${disks[@]}" \
	load passthrough segments bad-tables suspend remove-open flush-discard lifecycle
step "guest: primary" scripts/vm.sh --initrd "$out/initramfs.cpio" --out "$out/vm-primary" "${disks[@]}" \
	primary gate chardev overflow markers meta secondary
step "guest: crash points (G3)" tests/crash.sh "$out/initramfs.cpio" "$out/crash" "${FERRY_CRASH_POINTS:-3}"
step "guests: two joined guests" scripts/vm.sh --guests 2 --smp 1 --initrd "$out/initramfs.cpio" \
	--out "$out/vm-net" net-ping
step "guests: replication (drain, prefix, checksums)" scripts/vm.sh --guests 2 --smp 1 --initrd "$out/initramfs.cpio" \
	--out "$out/vm-repl" "${disks[@]}" repl
step "guests: the primary's disk spool" scripts/vm.sh --guests 2 --smp 1 --initrd "$out/initramfs.cpio" \
	--out "$out/vm-spool" "${disks[@]}" repl-spool
step "guests: secondary power cuts (G4, G5)" tests/repl-sec-crash.sh "$out/initramfs.cpio" "$out/repl-sec-crash" \
	"${FERRY_SEC_CUTS:-1}"
step "guests: replication crash points (G1, G2)" tests/repl-crash.sh "$out/initramfs.cpio" "$out/repl-crash" \
	"${FERRY_REPL_POINTS:-20}"

printf '%s\n' "${summary[@]}"
