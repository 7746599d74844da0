# Mode secondary: host writes refused, reads served; an interval applied
# through the character device under the update-in-progress mark (on the
# meta device before the first write, cleared after the last); host reads
# held meanwhile; bad records refused with their errno; the mark survives a
# re-create and the interval is redone; promote.
ferry_load
meta_wipe /dev/vdc /dev/vdd
dd if=/dev/zero of=/dev/vda bs=1M count=4 oflag=direct 2>/dev/null
S="0 65536 ferry /dev/vda /dev/vdc 6 mode secondary group gs device_id 0"
dm create s0 --table "$S" || fail "create secondary"
set -- $(dm status s0)
[ "$4 $5 $6 $7 $8 $9 ${10} ${11}" = "secondary gs 0 data idle 0 0 0" ] || fail "status: $*"
ok "secondary created: $*"

if dd if=/dev/zero of=/dev/mapper/s0 bs=4k count=1 oflag=direct 2>/tmp/dd.err; then
	fail "a host write to a secondary succeeded"
fi
grep -q "not supported" /tmp/dd.err || fail "host write: $(cat /tmp/dd.err)"
why=$(grep -o "Operation not supported" /tmp/dd.err | head -1)
dd if=/dev/mapper/s0 of=/dev/null bs=4k count=4 iflag=direct 2>/dev/null || fail "read"
ok "host write refused ($why); reads served"

C="ferry-test cmd --dev /dev/ferry/gs --group gs"
[ "$($C state)" = "state|idle|0|applied=0|members=0x1|sizes=0:65536|len=296" ] || fail "state: $($C state)"
[ "$($C ack 0 1)" = "cmd|errno|95" ] || fail "ack on a secondary: $($C ack 0 1)"
[ "$($C record 1 0 1 5)" = "cmd|errno|34" ] || fail "record outside an interval"
ok "state read; primary commands and records outside an interval refused"

# Interval 1: the mark is on the meta device (both copies) before any
# write; a host read waits until the interval is complete.
[ "$($C apply-begin 1)" = "cmd|ok|16" ] || fail "apply-begin 1"
# (4 KiB reads: busybox dd does not read 512 bytes with O_DIRECT.)
mark() { dd if=/dev/vdc bs=4k skip=$(($1 / 8)) count=1 iflag=direct 2>/dev/null | od -An -tu1 -N8 | tr -s ' '; }
[ "$(mark 16)" = " 70 85 73 80 1 0 1 0" ] || fail "mark A: $(mark 16)"
[ "$(mark 24)" = " 70 85 73 80 1 0 1 0" ] || fail "mark B: $(mark 24)"
[ "$($C state)" = "state|applying|1|applied=0|members=0x1|sizes=0:65536|len=296" ] || fail "state: $($C state)"
set -- $(dm status s0)
[ "$8 $9 ${10}" = "applying 0 1" ] || fail "status while applying: $*"
dd if=/dev/mapper/s0 of=/tmp/held bs=4k skip=5 count=1 iflag=direct 2>/dev/null &
rd=$!
sleep 2
kill -0 $rd 2>/dev/null || fail "a host read completed while an interval was applied"
ok "interval 1 begun: mark in progress on disk, host read held"

[ "$($C record 1 0 1 5 corrupt)" = "cmd|errno|74" ] || fail "corrupt record: $($C record 1 0 1 5 corrupt)"
[ "$($C record 1 0 1 5 header-only)" = "cmd|errno|74" ] || fail "truncated record"
[ "$($C record 2 0 1 5)" = "cmd|errno|34" ] || fail "record of another interval"
[ "$($C record 1 7 1 5)" = "cmd|errno|22" ] || fail "record of a device not in the group"
[ "$($C record 1 0 1 70000)" = "cmd|errno|22" ] || fail "record beyond the device"
[ "$($C apply-end 2)" = "cmd|errno|34" ] || fail "apply-end of another interval"
ok "bad records refused: corrupt/truncated EBADMSG, wrong interval ERANGE, bad device/range EINVAL"
for b in 5 6 7; do
	[ "$($C record 1 0 $((b - 4)) $b)" = "cmd|ok|4208" ] || fail "record to block $b"
done
kill -0 $rd 2>/dev/null || fail "the host read went before the end of the interval"
[ "$($C apply-end 1)" = "cmd|ok|16" ] || fail "apply-end 1"
wait $rd || fail "held read failed"
[ "$(head -c 8 /tmp/held)" = FERRYBLK ] || fail "the held read saw the block before the interval"
[ "$(mark 16)" = " 70 85 73 80 1 0 0 0" ] || fail "mark A after the interval: $(mark 16)"
[ "$($C state)" = "state|idle|0|applied=1|members=0x1|sizes=0:65536|len=296" ] || fail "state: $($C state)"
set -- $(dm status s0)
[ "$8 $9 ${10} ${11}" = "idle 1 0 3" ] || fail "status after interval 1: $*"
for b in 5 6 7; do
	[ "$(dd if=/dev/vda bs=4k skip=$b count=1 iflag=direct 2>/dev/null | head -c 8)" = FERRYBLK ] ||
		fail "block $b not on the data device"
done
ok "interval 1 applied: 3 writes on the data device, mark idle, held read saw the whole interval"

# A crash in the middle of interval 2: the mark is found again and the
# interval is redone.
[ "$($C apply-begin 2)" = "cmd|ok|16" ] || fail "apply-begin 2"
[ "$($C record 2 0 4 8)" = "cmd|ok|4208" ] || fail "record in interval 2"
dm remove s0
dm create s0 --table "$S" || fail "re-create"
set -- $(dm status s0)
[ "$8 $9 ${10}" = "applying 1 2" ] || fail "status after re-create: $*"
[ "$($C apply-begin 3)" = "cmd|errno|16" ] || fail "another interval while 2 is in progress"
[ "$($C apply-begin 2)" = "cmd|ok|16" ] || fail "redo of interval 2"
[ "$($C record 2 0 4 8)" = "cmd|ok|4208" ] || fail "redo record"
[ "$($C apply-end 2)" = "cmd|ok|16" ] || fail "apply-end 2"
[ "$($C apply-begin 2)" = "cmd|errno|34" ] || fail "interval 2 again after it was applied"
ok "interval in progress found after re-create, redone; an applied interval is refused"

# Every member's meta device carries the mark.
S1="0 65536 ferry /dev/vdb /dev/vdd 6 mode secondary group gs device_id 1"
dm create s1 --table "$S1" || fail "create second member"
[ "$($C state)" = "state|idle|0|applied=2|members=0x3|sizes=0:65536,1:65536|len=296" ] || fail "state with 2 members: $($C state)"
[ "$($C apply-begin 3)" = "cmd|ok|16" ] || fail "apply-begin 3"
[ "$(dd if=/dev/vdd bs=4k skip=2 count=1 iflag=direct 2>/dev/null | od -An -tu1 -N8 | tr -s ' ')" = " 70 85 73 80 1 0 1 0" ] ||
	fail "second member's meta device has no mark"
[ "$($C apply-end 3)" = "cmd|ok|16" ] || fail "apply-end 3"
ok "two members: the mark on both meta devices"

# Several intervals under one mark: APPLY_BEGIN 5 after 3 opens 4 and 5.
[ "$($C apply-begin 5)" = "cmd|ok|16" ] || fail "apply-begin 5 after 3"
[ "$($C state)" = "state|applying|5|applied=3|members=0x3|sizes=0:65536,1:65536|len=296" ] || fail "state: $($C state)"
[ "$($C record 4 0 5 9)" = "cmd|ok|4208" ] || fail "record of interval 4 under 5"
[ "$($C record 5 1 1 9)" = "cmd|ok|4208" ] || fail "record of interval 5"
[ "$($C record 6 0 6 10)" = "cmd|errno|34" ] || fail "record of interval 6 under 5"
[ "$($C record 3 0 6 10)" = "cmd|errno|34" ] || fail "record of applied interval 3"
[ "$($C apply-end 4)" = "cmd|errno|34" ] || fail "apply-end 4 while 5 is in progress"
[ "$($C apply-end 5)" = "cmd|ok|16" ] || fail "apply-end 5"
[ "$($C state)" = "state|idle|0|applied=5|members=0x3|sizes=0:65536,1:65536|len=296" ] || fail "state: $($C state)"
for d in vda vdb; do
	[ "$(dd if=/dev/$d bs=4k skip=9 count=1 iflag=direct 2>/dev/null | head -c 8)" = FERRYBLK ] ||
		fail "block 9 not on $d"
done
ok "intervals 4 and 5 applied under one mark; records outside 4..5 refused"

P="0 65536 ferry /dev/vdb /dev/vdd 6 mode primary group gs device_id 2"
if dm create p0 --table "$P" 2>/tmp/dm.out; then fail "a primary joined a secondary group"; fi
dmesg | grep -q "mode differs from the group's" || fail "no message for the mode mismatch"
ok "a primary table for a secondary group is refused"

# Promote: refused while ferryd holds the device; then a primary.
exec 3</dev/ferry/gs
if dm message s0 0 promote 2>/dev/null; then fail "promote with the device open"; fi
exec 3<&-
dm message s0 0 promote || fail "promote"
set -- $(dm status s0)
[ "$4 $5" = "primary gs" ] || fail "status after promote: $*"
dm table s0 | grep -q "mode primary" || fail "table after promote: $(dm table s0)"
dd if=/dev/urandom of=/dev/mapper/s0 bs=4k count=1 seek=20 oflag=direct 2>/dev/null || fail "write after promote"
set -- $(dm status s0)
[ "${9}" -ge 1 ] || fail "the write after promote was not numbered: $*"
ok "promoted: a primary ($*), writes numbered"
dm remove s1
dm remove s0
