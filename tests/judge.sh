#!/usr/bin/env bash
# Judges the kernel log of every guest a run booted, those the host killed
# included: each serial log (the guests boot with ignore_loglevel, so every
# kernel message reaches it, with its printk timestamp) is scanned for the
# reports of the debug kernel: BUG, Oops, WARNING (lockdep's among them),
# KASAN, UBSAN, hung tasks, soft and hard lockups, RCU stalls, kmemleak,
# Rust panics, kernel panics.  Prints each report with what follows it and
# exits 1 if there is one.
#
#   tests/judge.sh <dir-or-log>...   (in a directory: every *.log but the
#                                     QEMU ones, *.qemu.log)
set -uo pipefail
KBAD='BUG:|Oops|WARNING:|Kernel panic|kernel BUG|general protection fault|KASAN|UBSAN:|INFO: task .* blocked|blocked for more than|soft lockup|hard LOCKUP|rcu: INFO|self-detected stall|possible circular locking|inconsistent lock state|lock held when returning|panicked at|Call Trace:|kmemleak: .*suspected'
logs=()
for a in "$@"; do
	if [ -d "$a" ]; then
		while IFS= read -r f; do logs+=("$f"); done < <(find "$a" -name '*.log' ! -name '*.qemu.log' -type f | sort)
	elif [ -f "$a" ]; then
		logs+=("$a")
	fi
done
bad=0
for f in "${logs[@]}"; do
	# Kernel lines only (the printk timestamp), not what the tests print.
	if tr -d '\r' <"$f" | grep -a -E '^\[ *[0-9]+\.[0-9]+\] ' | grep -a -E -m1 -q "$KBAD"; then
		echo "judge: kernel report in $f:"
		tr -d '\r' <"$f" | grep -a -E '^\[ *[0-9]+\.[0-9]+\] ' | grep -a -E -A25 "$KBAD" | head -60
		bad=1
	fi
done
[ $bad = 0 ] && echo "judge: ${#logs[@]} guest kernel logs clean"
exit $bad
