#!/usr/bin/env bash
# `make install`: ferryd, ferryctl, the systemd unit, the documentation,
# the man pages and shell completions, and the module's source for DKMS,
# under $DESTDIR.
#
# The Makefile passes the directories (PREFIX and those below it) and
# VERSION; the binaries come from out/bin (`make userspace`), so that
# `sudo make install` needs no Rust toolchain.
#
#   ferryd                  $SBINDIR
#   ferryctl                $BINDIR
#   ferryd@.service         $UNITDIR (ExecStart= and Documentation= made
#                           to name $SBINDIR and $DOCDIR)
#   Documentation/*.rst     $DOCDIR
#   man pages               $MANDIR/man8, from `ferryctl gen-man`
#   completions             of both, for bash, zsh and fish, from
#                           `ferryctl gen-completions`
#   the module's source     /usr/src/ferry-$VERSION (where DKMS looks,
#                           whatever PREFIX is): dkms.conf, Kbuild, rust/,
#                           userspace/ferry-core/src/
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DESTDIR=}" "${PREFIX:?}" "${BINDIR:?}" "${SBINDIR:?}" "${UNITDIR:?}" "${MANDIR:?}"
: "${DOCDIR:?}" "${BASHCOMPDIR:?}" "${ZSHCOMPDIR:?}" "${FISHCOMPDIR:?}" "${VERSION:?}"
BIN=${FERRY_BIN:-out/bin}

log() { echo "install: $*" >&2; }

for b in ferryd ferryctl; do
	[ -x "$BIN/$b" ] || { log "no $BIN/$b: run \`make userspace\` first (as yourself, then \`sudo make install\`)"; exit 1; }
done
dkms_version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' dkms.conf)
[ "$dkms_version" = "$VERSION" ] || { log "dkms.conf says version $dkms_version, ferryd $VERSION"; exit 1; }

# Directories 0755, files 0644 (0755 for programs), whatever the umask.
umask 022
inst() { install -D -m "$1" "$2" "$DESTDIR$3"; }

inst 0755 "$BIN/ferryd" "$SBINDIR/ferryd"
inst 0755 "$BIN/ferryctl" "$BINDIR/ferryctl"

unit=$(mktemp); trap 'rm -rf "$unit" "$unit.man"' EXIT
sed -e "s|^ExecStart=/usr/sbin/ferryd |ExecStart=$SBINDIR/ferryd |" \
	-e "s|^Documentation=file:///usr/share/doc/ferry/|Documentation=file://$DOCDIR/|" \
	userspace/ferryd/systemd/ferryd@.service >"$unit"
grep -q "^ExecStart=$SBINDIR/ferryd %i\$" "$unit" || { log "ferryd@.service: no ExecStart= to rewrite"; exit 1; }
inst 0644 "$unit" "$UNITDIR/ferryd@.service"

for f in README.md Documentation/*.rst; do
	inst 0644 "$f" "$DOCDIR/$(basename "$f")"
done

# Man pages and completions, of ferryd and ferryctl, come from ferryctl
# itself (Documentation/ferryd.rst, "Manual pages and completions").
gen=$unit.man
"$BIN/ferryctl" gen-man "$gen/man" >/dev/null
for p in "$gen"/man/*.8; do
	inst 0644 "$p" "$MANDIR/man8/$(basename "$p")"
done
for sh in bash zsh fish; do
	"$BIN/ferryctl" gen-completions "$sh" "$gen/$sh" >/dev/null
done
for b in ferryd ferryctl; do
	inst 0644 "$gen/bash/$b.bash" "$BASHCOMPDIR/$b"
	inst 0644 "$gen/zsh/_$b" "$ZSHCOMPDIR/_$b"
	inst 0644 "$gen/fish/$b.fish" "$FISHCOMPDIR/$b.fish"
done

# The module's source, as DKMS builds it: the files the build reads, none
# it made (objects, .cmd files, the bindgen output).
src=/usr/src/ferry-$VERSION
inst 0644 dkms.conf "$src/dkms.conf"
inst 0644 Kbuild "$src/Kbuild"
find rust userspace/ferry-core/src -type f \( -name '*.rs' -o -name '*.c' -o -name '*.h' \) \
	! -name bindings_generated.rs | LC_ALL=C sort | while read -r f; do
	inst 0644 "$f" "$src/$f"
done
log "installed ferry $VERSION under ${DESTDIR:-/} (PREFIX=$PREFIX; module source in $src)"
