# The meta device of a primary: formatted when new; its write-intent bitmap
# names every chunk written and not acknowledged, across a remove and a
# re-create; chunks whose writes are all acknowledged are cleared on disk;
# a clean release lets the stream continue, a crash (the superblock as the
# device left it while in use) makes the group ahead; a meta device of
# another device is refused.
ferry_load
meta_wipe /dev/vdc
T="0 65536 ferry /dev/vda /dev/vdc 4 group gm checkpoint_ms 0"
kmark m1
dm create m0 --table "$T" || fail "create"
klog_since m1 | grep -q "formatted its meta device" || fail "no format message"
# Ten writes, each in its own 64 KiB chunk.
ten_writes() {
	for i in 0 1 2 3 4 5 6 7 8 9; do
		dd if=/dev/urandom of=/dev/mapper/m0 bs=4k count=1 seek=$((i * 32)) oflag=direct 2>/dev/null
	done
}
# Nobody acknowledges them.
ten_writes
bits() { dd if=/dev/vdc bs=4k skip=256 count=1 iflag=direct 2>/dev/null | od -An -v -tu1 | tr -s ' ' '\n' |
	awk 'NF { n += ($1 % 2) + int($1 / 2) % 2 + int($1 / 4) % 2 + int($1 / 8) % 2 + int($1 / 16) % 2 + int($1 / 32) % 2 + int($1 / 64) % 2 + int($1 / 128) % 2 } END { print n + 0 }'; }
[ "$(bits)" = 10 ] || fail "on-disk bitmap has $(bits) bits after 10 unacknowledged writes"
ok "10 unacknowledged writes: 10 chunks marked on disk"
dm remove m0
dm create m0 --table "$T" || fail "re-create"
set -- $(dm status m0)
[ "$8" = ahead ] && [ "${15}" = 10 ] || fail "after re-create: $*"
ok "re-created: ahead, 10 dirty chunks from the meta device"
dm remove m0

# All acknowledged: the sweep clears the chunks on disk.
meta_wipe /dev/vdc
dm create m0 --table "$T" || fail "create"
reader_start gm /tmp/m.log
ten_writes
reader_stop
n=10
for i in $(seq 1 10); do n=$(bits); [ "$n" = 0 ] && break; sleep 1; done
[ "$n" = 0 ] || fail "$n chunks still marked after every write was acknowledged"
ok "every write acknowledged: the chunks cleared on disk"
set -- $(dm status m0); last=${10} epoch=${16}
# The superblock as a crash would leave it: written when the device
# joined, without the clean release's mark.
dd if=/dev/vdc of=/tmp/m-live.sb bs=4k count=2 iflag=direct 2>/dev/null
dm remove m0
dm create m0 --table "$T" || fail "re-create"
set -- $(dm status m0)
[ "$8" = replicating ] && [ "${15}" = 0 ] || fail "clean re-create: $*"
[ "${10} ${12} ${16}" = "$last $last $epoch" ] || fail "clean re-create: the stream stood at $last (interval $epoch): $*"
reader_start gm /tmp/m2.log
dd if=/dev/urandom of=/dev/mapper/m0 bs=4k count=1 oflag=direct 2>/dev/null
reader_stop
grep -q "reader|dev=0|.*first_dev_seq=$((last + 1))|" /tmp/m2.log.out || fail "the stream did not continue after $last: $(cat /tmp/m2.log.out)"
set -- $(dm status m0)
[ "${10}" -gt "$last" ] && [ "${12}" = "${10}" ] || fail "after the clean re-create, a write: $*"
ok "re-created after a clean release: replicating, nothing dirty, the stream continues after $last"
dm remove m0
dd if=/tmp/m-live.sb of=/dev/vdc bs=4k count=2 oflag=direct 2>/dev/null
kmark m2
dm create m0 --table "$T" || fail "re-create after a simulated crash"
set -- $(dm status m0)
[ "$8" = ahead ] || fail "a device that did not leave cleanly came back $8: $*"
klog_since m2 | grep -q "did not leave its group cleanly" || fail "no message for an unclean superblock"
ok "a superblock without the clean release's mark (a crash): ahead"
dm remove m0

# Another device's meta device is refused.
dm create x0 --table "0 65536 ferry /dev/vda /dev/vdc 4 group other checkpoint_ms 0" 2>/dev/null &&
	fail "accepted the meta device of group gm for group other"
dm create x0 --table "0 32768 ferry /dev/vda /dev/vdc 4 group gm checkpoint_ms 0" 2>/dev/null &&
	fail "accepted a meta device of another length"
klog_since m1 | grep -q "Meta device belongs to another device" || fail "no message for a foreign meta device"
ok "a meta device of another group or length is refused"

# A crafted superblock whose checksum holds but whose numbers cannot be
# continued from (an acknowledged dev_seq of 2^64 - 1, where the stream's
# next number would overflow) is refused by the constructor with its
# message, and left as it was (not formatted over).
meta_wipe /dev/vdc
dm create m0 --table "$T" || fail "create for the crafted superblock"
dm remove m0
for f in acked_dev_seq group_seq generation; do
	ferry-test sb-poke --dev /dev/vdc --field $f --value 18446744073709551615 >/dev/null || fail "sb-poke $f"
	before=$(dd if=/dev/vdc bs=4k count=2 iflag=direct 2>/dev/null | md5sum)
	kmark sb-$f
	dm create m0 --table "$T" 2>/tmp/dm.out && fail "a superblock with $f = 2^64 - 1 was taken"
	klog_since sb-$f | grep -q "Meta device's superblock holds numbers out of range" ||
		{ klog_since sb-$f; fail "no constructor error for $f"; }
	klog_since sb-$f | grep -q "superblock field $f out of range" || { klog_since sb-$f; fail "no reason for $f"; }
	[ "$(dd if=/dev/vdc bs=4k count=2 iflag=direct 2>/dev/null | md5sum)" = "$before" ] || fail "the crafted superblock was overwritten"
	dm remove m0 2>/dev/null || true
	meta_wipe /dev/vdc
	dm create m0 --table "$T" || fail "create after the wipe"
	dm remove m0
done
ok "superblocks with counters of 2^64 - 1 refused with the constructor's message, left unchanged"
