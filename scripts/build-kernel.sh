#!/usr/bin/env bash
# Build (once) the guest kernel that ferry's tests and benchmarks boot, and
# keep it, with the tree that `make M=` needs, in the cache:
#
#   ${FERRY_CACHE:-/var/cache/ferry}/kernel/<flavour>-<key>/linux
#
# <key> hashes everything that changes the result: the linux-source package
# version, the config fragments, this script, and the rustc, bindgen and clang
# versions.  A warm run only computes the key and prints the tree's path.
#
#   scripts/build-kernel.sh [debug|release]     build if needed; print KDIR
set -euo pipefail

flavour=${1:-debug}
here=$(cd "$(dirname "$0")" && pwd)
cache=${FERRY_CACHE:-/var/cache/ferry}
case "$flavour" in debug|release) ;; *) echo "build-kernel: unknown flavour '$flavour' (debug|release)" >&2; exit 2 ;; esac

"$here/deps.sh" >&2
eval "$("$here/deps.sh" --env)"

src_tar=/usr/src/linux-source-6.12.tar.xz
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
# Trees with the same base (source and toolchain) differ only in config.
base=$( {
	echo "$src_ver"
	rustc --version; bindgen --version; clang --version | head -1
} | sha256sum | cut -c1-16)
key=$( {
	echo "$base"
	cat "$here/kernel/base.config" "$here/kernel/$flavour.config" "$0"
} | sha256sum | cut -c1-16)

top="$cache/kernel/$flavour-$key"
kdir="$top/linux"
if [ -f "$top/.built" ]; then
	echo "$kdir"
	exit 0
fi

mkdir -p "$cache/kernel"
exec 9>"$cache/kernel/.lock"
flock 9
if [ -f "$top/.built" ]; then echo "$kdir"; exit 0; fi

log() { echo "build-kernel[$flavour]: $*" >&2; }
start=$(date +%s)
rm -rf "$top"
mkdir -p "$top"
# A built tree of the same base and flavour, if any, seeds the build: Kbuild
# then rebuilds only what the changed options touch.
seed=
for t in "$cache/kernel/$flavour"-*/; do
	t=${t%/}
	[ -f "$t/.built" ] && [ "$(cat "$t/.base" 2>/dev/null)" = "$base" ] && seed=$t
done
if [ -n "$seed" ]; then
	log "seeding from $seed"
	cp -a "$seed/linux" "$kdir"
else
	log "unpacking linux-source $src_ver"
	tar -C "$top" -xf "$src_tar"
	mv "$top"/linux-source-6.12 "$kdir"
fi
echo "$base" >"$top/.base"

cd "$kdir"
m() { make -s LLVM=1 "$@"; }
m tinyconfig >/dev/null
frag=$(cat "$here/kernel/base.config" "$here/kernel/$flavour.config")
args=()
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=y) o=${line%%=*}; args+=(--enable "${o#CONFIG_}") ;;
	CONFIG_*=*) o=${line%%=*}; args+=(--set-val "${o#CONFIG_}" "${line#*=}") ;;
	"# CONFIG_"*" is not set") o=${line#\# CONFIG_}; args+=(--disable "${o%% is not set}") ;;
	esac
done <<<"$frag"
scripts/config --file .config "${args[@]}"
m olddefconfig
# Kconfig silently drops what it cannot satisfy: check every line held.
bad=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*) grep -qx "$line" .config || { log "config: wanted $line, got: $(grep "^${line%%=*}=\|^# ${line%%=*} " .config || echo absent)"; bad=1; } ;;
	"# CONFIG_"*" is not set") o=${line#\# }; o=${o%% is not set}; ! grep -q "^$o=" .config || { log "config: wanted $o off"; bad=1; } ;;
	esac
done <<<"$frag"
[ $bad -eq 0 ] || exit 1
m rustavailable >&2

log "building with $(nproc) jobs (cold build: about 20 minutes on 2 cores)"
if ! make LLVM=1 -j"$(nproc)" >"$top/build.log" 2>&1; then
	tail -40 "$top/build.log" >&2
	exit 1
fi
touch "$top/.built"
ln -sfn "$flavour-$key" "$cache/kernel/$flavour"
log "built in $(( $(date +%s) - start )) s: $kdir/arch/x86/boot/bzImage"
echo "$kdir"
