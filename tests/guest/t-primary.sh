# Mode primary, one data device: every completed write reaches the reader
# of /dev/ferry/<group> exactly once, in group order, with its exact
# payload; the reader's shadow image equals the device; status adds up.
ferry_load
meta_wipe /dev/vdc
S=65536  # 32 MiB: the shadow image lives in guest memory
dd if=/dev/zero of=/dev/vda bs=1M count=32 oflag=direct 2>/dev/null
dm create p0 --table "0 $S ferry /dev/vda /dev/vdc 2 group g1" || fail "create"
[ -c /dev/ferry/g1 ] || fail "no /dev/ferry/g1"
ls -l /dev/ferry/g1 | grep -q '^crw-------' || fail "/dev/ferry/g1 is not 0600: $(ls -l /dev/ferry/g1)"
dm table p0 | grep -q "ferry $(devno /dev/vda) $(devno /dev/vdc) 2 group g1\$" || fail "table: $(dm table p0)"
[ "$(status_field p0 1)" = primary ] || fail "status: $(dm status p0)"
[ "$(status_field p0 5)" = replicating ] || fail "status: $(dm status p0)"
ok "primary device, /dev/ferry/g1 (0600), table and status"

# Dependent self-describing writes: exactly once, in completion order.
reader_start g1 /tmp/r1.log
ferry-test write --dev /dev/mapper/p0 --count 400 --blocks 2048 --seed 7 --log /tmp/w1.log >/dev/null || fail "writer"
reader_stop
ferry-test check --writes /tmp/w1.log --records /tmp/r1.log --ids 0 || fail "check"
ok "400 dependent writes shipped exactly once, in group order, payloads intact"
# Lockdep tells the group's locks apart (those a primary has taken by
# now): each has a class of its own, by name.  One class shared by every
# lock the module makes would hide an order between two of them.
if [ -r /proc/lockdep ]; then
	for l in ferry_group.state ferry_group.readable; do
		grep -q " $l\$" /proc/lockdep || fail "no lockdep class named $l: $(grep -i ferry /proc/lockdep | head -5)"
	done
	ok "lockdep classes by name: ferry_group.state, ferry_group.readable"
fi

# fio with verification, then the shadow the reader built equals the device.
dd if=/dev/mapper/p0 of=/tmp/shadow bs=1M count=32 iflag=direct 2>/dev/null
reader_start g1 /tmp/r2.log --apply 0=/tmp/shadow
fio_verify --name=v --filename=/dev/mapper/p0 --rw=randwrite --bsrange=4k-256k --iodepth=8 --size=24M --offset=4M
write_pattern /dev/mapper/p0 1 /tmp/pat 2
reader_stop
dd if=/dev/mapper/p0 bs=1M count=32 iflag=direct 2>/dev/null | cmp - /tmp/shadow || fail "shadow differs from the device"
ok "fio verify + dd: the records rebuild the device exactly"

# Status: every completed record shipped and acknowledged, spool empty.
set -- $(dm status p0)
completed=${10} shipped=${11} acked=${12} used=${13}
[ "$completed" -gt 400 ] && [ "$shipped" = "$completed" ] && [ "$acked" = "$completed" ] && [ "$used" = 0 ] ||
	fail "status after drain: $(dm status p0)"
grep -q "reader|dev=0|.*first_dev_seq=$(( $(grep -c '^rec ' /tmp/r1.log) + 1 ))|" /tmp/r2.log.out ||
	fail "the second reader did not start after what the first acknowledged: $(cat /tmp/r2.log.out)"
ok "status: completed = shipped = acknowledged = $completed, spool empty"

# Reads are not records; a reload keeps the stream (sequence continues).
dd if=/dev/mapper/p0 of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null
[ "$(dm status p0 | awk '{print $10}')" = "$completed" ] || fail "reads made records"
dm suspend p0 && dm reload p0 --table "$(dm table p0)" && dm resume p0 || fail "reload"
[ "$(dm status p0 | awk '{print $10}')" = "$completed" ] || fail "reload lost the stream: $(dm status p0)"
dd if=/dev/zero of=/dev/mapper/p0 bs=4k count=1 oflag=direct 2>/dev/null
[ "$(dm status p0 | awk '{print $10}')" -gt "$completed" ] || fail "no record after reload"
ok "reads make no records; a reload keeps the sequence"
# A reload may not change what the stream's bitmap lives on or covers:
# another meta device, another length or another chunk size is refused
# with its message, and the loaded table stays.
T=$(dm table p0)
a=$(devno /dev/vda) m=$(devno /dev/vdc) o=$(devno /dev/vdd)
for bad in "0 $S ferry $a $o 2 group g1" "0 $((S / 2)) ferry $a $m 2 group g1" \
	"0 $S ferry $a $m 4 group g1 chunk_kb 128"; do
	r=$((${r:-0} + 1))
	kmark rl$r
	dm reload p0 --table "$bad" 2>/dev/null && fail "reload taken: $bad"
	klog_since rl$r | grep -q "A reload may not change a replicated device's meta device, length or chunk_kb" ||
		{ klog_since rl; fail "no message for the reload [$bad]"; }
done
[ "$(dm table p0)" = "$T" ] || fail "the table changed: $(dm table p0)"
ok "reloads to another meta device, length or chunk size refused with their message"
dm remove p0 || fail "remove"
[ -e /dev/ferry/g1 ] && fail "/dev/ferry/g1 left after the last device"
ok "removing the last device removes /dev/ferry/g1"
