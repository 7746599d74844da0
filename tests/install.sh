#!/usr/bin/env bash
# `make install` into scratch DESTDIRs (part of `make test`'s userspace
# steps): every file where it belongs with its mode, nothing else; the
# module's source complete for DKMS and its dkms.conf sane; the systemd
# unit, at its installed path, passing `systemd-analyze verify` (any
# message is a failure) and `systemd-analyze security` under a threshold.
#
#   tests/install.sh [--no-build]     (--no-build: out/bin is there)
#
# Without systemd-analyze (a machine without systemd) the unit checks are
# skipped, saying so; scripts/deps.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

fail() { echo "FAIL install: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

[ "${1:-}" = --no-build ] || make --no-print-directory userspace CARGO_PROFILE="${CARGO_PROFILE:-test}"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' userspace/ferryd/Cargo.toml | head -n 1)
[ -n "$version" ] || fail "no version in userspace/ferryd/Cargo.toml"
grep -qx "PACKAGE_VERSION=\"$version\"" dkms.conf || fail "dkms.conf's PACKAGE_VERSION is not ferryd's $version"

tmp=$(mktemp -d /tmp/ferry-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# mode <path> <octal>
mode() {
	[ -e "$1" ] || fail "missing: ${1#$tmp/*/}"
	local m; m=$(stat -c %a "$1")
	[ "$m" = "$2" ] || fail "${1#$tmp/*/}: mode $m, not $2"
}

# check <destdir> <prefix> <sbindir>: the tree of one install.
check() {
	local d=$1 p=$2 sbin=$3 unit
	mode "$d$sbin/ferryd" 755
	mode "$d$p/bin/ferryctl" 755
	"$d$sbin/ferryd" --version | grep -qF "$version" || fail "ferryd --version is not $version"
	unit=$d$p/lib/systemd/system/ferryd@.service
	mode "$unit" 644
	grep -qx "ExecStart=$sbin/ferryd %i" "$unit" || fail "the unit's ExecStart= does not name $sbin/ferryd"
	grep -qx "Documentation=file://$p/share/doc/ferry/ferryd.rst" "$unit" || fail "the unit's Documentation= is not under $p"
	for f in README.md ferry.rst ferryd.rst protocol.rst testing.rst; do
		mode "$d$p/share/doc/ferry/$f" 644
	done
	# The module's source: what Kbuild reads, nothing built.
	local src=$d/usr/src/ferry-$version
	mode "$src" 755
	mode "$src/dkms.conf" 644
	mode "$src/Kbuild" 644
	local f n=0
	while read -r f; do
		mode "$src/$f" 644
		cmp -s "$f" "$src/$f" || fail "$f differs in $src"
		n=$((n + 1))
	done < <(git ls-files rust userspace/ferry-core/src)
	[ "$n" -gt 30 ] || fail "only $n source files listed"
	[ -z "$(find "$src" -type f ! -name '*.rs' ! -name '*.c' ! -name '*.h' ! -name Kbuild ! -name dkms.conf)" ] ||
		fail "built or stray files in $src: $(find "$src" -type f ! -name '*.rs' ! -name '*.c' ! -name '*.h' ! -name Kbuild ! -name dkms.conf | head -3)"
	[ "$(find "$src" -type f | wc -l)" = "$((n + 2))" ] || fail "$src holds files git does not know"
	# Nothing writable by others, nothing setuid, directories 0755.
	[ -z "$(find "$d" -perm /o+w,g+w,u+s,g+s)" ] || fail "writable by others or setuid: $(find "$d" -perm /o+w,g+w,u+s,g+s | head -3)"
	[ -z "$(find "$d" -type d ! -perm 755)" ] || fail "directory not 0755: $(find "$d" -type d ! -perm 755 | head -1)"
	# Man pages and completions, of both programs.
	for f in ferryd.8 ferryctl.8 ferryctl-status.8 ferryctl-promote.8 ferryctl-keygen.8; do
		mode "$d$p/share/man/man8/$f" 644
	done
	for b in ferryd ferryctl; do
		mode "$d$p/share/bash-completion/completions/$b" 644
		mode "$d$p/share/zsh/site-functions/_$b" 644
		mode "$d$p/share/fish/vendor_completions.d/$b.fish" 644
	done
	if command -v man >/dev/null; then
		man -l "$d$p/share/man/man8/ferryctl.8" 2>&1 | grep -q promote || fail "ferryctl.8 does not read as a manual page"
	fi
}

# dkms.conf as DKMS reads it (bash, with its variables set).
dkms=$(
	kernel_source_dir=/lib/modules/6.12.0/build dkms_tree=/var/lib/dkms
	. ./dkms.conf
	echo "$PACKAGE_NAME $PACKAGE_VERSION ${BUILT_MODULE_NAME[0]} ${DEST_MODULE_LOCATION[0]} $AUTOINSTALL"
	echo "${MAKE[0]}"
)
[ "$(head -n 1 <<<"$dkms")" = "ferry $version dm-ferry /updates/dkms yes" ] || fail "dkms.conf: $dkms"
[ "$(tail -n 1 <<<"$dkms")" = "make -C /lib/modules/6.12.0/build M=/var/lib/dkms/ferry/$version/build  modules" ] ||
	fail "dkms.conf's MAKE: $(tail -n 1 <<<"$dkms")"
ok "dkms.conf"

# The default: PREFIX=/usr/local.
make --no-print-directory install DESTDIR="$tmp/local" >/dev/null 2>"$tmp/log" || { cat "$tmp/log"; fail "make install"; }
check "$tmp/local" /usr/local /usr/local/sbin
ok "make install DESTDIR=... (PREFIX /usr/local)"
# A distribution's: PREFIX=/usr, the unit as it is in the source.
make --no-print-directory install DESTDIR="$tmp/usr" PREFIX=/usr >/dev/null 2>"$tmp/log" || { cat "$tmp/log"; fail "make install PREFIX=/usr"; }
check "$tmp/usr" /usr /usr/sbin
cmp -s userspace/ferryd/systemd/ferryd@.service "$tmp/usr/usr/lib/systemd/system/ferryd@.service" ||
	fail "with PREFIX=/usr the unit is not the source's"
ok "make install DESTDIR=... PREFIX=/usr"

if ! command -v systemd-analyze >/dev/null; then
	echo "SKIP the unit's checks: no systemd-analyze (scripts/deps.sh installs systemd)"
	exit 0
fi
# systemd-analyze --root: the installed tree, with the host's own units
# (the targets the unit's dependencies name) beside it.
units=/usr/lib/systemd/system
[ -e $units/sysinit.target ] || units=/lib/systemd/system
for d in local usr; do
	case $d in local) p=/usr/local ;; usr) p=/usr ;; esac
	root=$tmp/$d
	mkdir -p "$root/usr/lib/systemd"
	cp -an "$units" "$root/usr/lib/systemd/"
	out=$(systemd-analyze verify --root="$root" ferryd@db.service 2>&1) || fail "systemd-analyze verify ($p): $out"
	[ -z "$out" ] || fail "systemd-analyze verify ($p) says: $out"
	ok "systemd-analyze verify $p/lib/systemd/system/ferryd@.service"
done
# Exposure (0 to 10, lower is better): 2.1 with systemd 252
# (Documentation/ferryd.rst, "The service"); a change that opens the unit
# up fails here.
sec=$(systemd-analyze security --offline=true --threshold=25 --root="$tmp/usr" ferryd@db.service 2>&1) ||
	fail "systemd-analyze security: above 2.5: $(tail -n 1 <<<"$sec")"
ok "systemd-analyze security: $(tail -n 1 <<<"$sec" | sed 's/^→ //')"
