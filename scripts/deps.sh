#!/usr/bin/env bash
# Install everything ferry needs to build the kernel, the module, the guests
# and the userspace tools.  Idempotent: a second run does nothing but check.
#
#   scripts/deps.sh            install what is missing
#   scripts/deps.sh --env      print the environment (PATH, LIBCLANG_PATH)
#                              the kernel and module builds use
set -euo pipefail

FERRY_TOOLS=${FERRY_TOOLS:-${FERRY_CACHE:-/var/cache/ferry}/tools}
# rustc-web, rust-web-src and libstd-rust-web-dev must be the same version:
# the kernel looks for core's source where rust-web-src puts it, and a module
# built by another rustc than its tree's does not load.
RUSTC_WEB_VERSION=${FERRY_RUSTC_WEB_VERSION:-1.85.0+dfsg3-1~deb12u3}
BINDGEN_VERSION=${FERRY_BINDGEN_VERSION:-0.73.0}
LLVM_BIN=/usr/lib/llvm-19/bin

kernel_path() {
	echo "$LLVM_BIN:$FERRY_TOOLS/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

if [ "${1:-}" = "--env" ]; then
	echo "export PATH=$(kernel_path)"
	echo "export LIBCLANG_PATH=/usr/lib/llvm-19/lib"
	exit 0
fi

log() { echo "deps: $*" >&2; }

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

PKGS=(
	linux-source-6.12
	clang-19 llvm-19 lld-19 libclang-19-dev
	qemu-system-x86 busybox-static dmsetup fio e2fsprogs cpio
	flex bison bc libelf-dev libssl-dev dwarves xz-utils kmod
	python3 sqlite3 iproute2 time postgresql-15
	systemd
	# drbdsetup-84 (/usr/lib/drbd) and drbdmeta: DRBD 8.4, the kernel's own
	# drbd.ko, side by side with ferry in `make bench`.
	drbd-utils
)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
for p in rustc-web rust-web-src libstd-rust-web-dev; do
	v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
	[ "$v" = "$RUSTC_WEB_VERSION" ] || missing+=("$p=$RUSTC_WEB_VERSION")
done

if [ ${#missing[@]} -gt 0 ]; then
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	if ! apt-cache madison rustc-web | grep -qF "$RUSTC_WEB_VERSION"; then
		log "rustc-web $RUSTC_WEB_VERSION is not in the archive; set FERRY_RUSTC_WEB_VERSION to one of:"
		apt-cache madison rustc-web >&2
		exit 1
	fi
	$SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}" >/dev/null
	# Keep an unattended upgrade from moving the kernel's rustc under the cache.
	$SUDO apt-mark hold rustc-web rust-web-src libstd-rust-web-dev >/dev/null
fi

if ! "$FERRY_TOOLS/bin/bindgen" --version 2>/dev/null | grep -qF "$BINDGEN_VERSION"; then
	log "installing bindgen-cli $BINDGEN_VERSION into $FERRY_TOOLS"
	mkdir -p "$FERRY_TOOLS"
	# Built by the rustup toolchain (userspace); it only runs on the host.
	PATH="$HOME/.cargo/bin:$PATH" LIBCLANG_PATH=/usr/lib/llvm-19/lib \
		cargo install bindgen-cli --version "$BINDGEN_VERSION" --locked --root "$FERRY_TOOLS" >&2
fi

# promtool, Prometheus's linter (ferryd's metrics test runs it on a live
# scrape): the one program taken from Debian's prometheus package (19 MB),
# unpacked into $FERRY_TOOLS; installing the package would also install,
# enable and start a Prometheus server.
if ! "$FERRY_TOOLS/bin/promtool" --version >/dev/null 2>&1; then
	log "unpacking promtool from Debian's prometheus package into $FERRY_TOOLS"
	tmp=$(mktemp -d)
	if ! (cd "$tmp" && apt-get download -qq prometheus) >/dev/null 2>&1; then
		$SUDO apt-get update -qq
		(cd "$tmp" && apt-get download -qq prometheus) >/dev/null
	fi
	dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
	mkdir -p "$FERRY_TOOLS/bin"
	install -m 0755 "$tmp/usr/bin/promtool" "$FERRY_TOOLS/bin/promtool"
	rm -rf "$tmp"
fi

# Sanity: the kernel toolchain is the one we pinned.
PATH=$(kernel_path) rustc --version | grep -qF "${RUSTC_WEB_VERSION%%+*}" || {
	log "rustc on the kernel PATH is not $RUSTC_WEB_VERSION: $(PATH=$(kernel_path) rustc --version)"
	exit 1
}
log "ok: $(PATH=$(kernel_path) rustc --version), bindgen $BINDGEN_VERSION, clang $($LLVM_BIN/clang --version | head -1), $("$FERRY_TOOLS/bin/promtool" --version 2>&1 | head -1)"
