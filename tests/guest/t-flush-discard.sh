# Flush, FUA, discard and write-zeroes reach the data device as on
# dm-linear, and status counts them.
ferry_load
D=$(sectors /dev/vda)
dm create f0 --table "0 $D ferry /dev/vda /dev/vdc" || fail "create"
f0=$(status_field f0 4)
dd if=/dev/urandom of=/dev/mapper/f0 bs=64k count=4 conv=fsync 2>/dev/null || fail "dd fsync"
f1=$(status_field f0 4)
[ "$f1" -gt "$f0" ] || fail "fsync sent no flush (flushes $f0 -> $f1)"
ok "flush counted ($f0 -> $f1)"
# O_DIRECT|O_DSYNC writes go down as REQ_FUA writes.
fio_verify --name=fua --filename=/dev/mapper/f0 --rw=randwrite --bs=4k --iodepth=1 --sync=dsync --size=1M --offset=32M
ok "FUA (O_DSYNC) writes verified"

write_pattern /dev/mapper/f0 8 /tmp/p 4
if [ "$(cat /sys/block/dm-0/queue/write_zeroes_max_bytes)" -gt 0 ]; then
	/sbin/blkdiscard -z -o $((8 << 20)) -l $((4 << 20)) /dev/mapper/f0 || fail "write zeroes"
	[ "$(status_field f0 6)" -gt 0 ] || fail "write-zeroes not counted"
	ok "write-zeroes passed down ($(status_field f0 6))"
else
	/sbin/blkdiscard -z -o $((8 << 20)) -l $((4 << 20)) /dev/mapper/f0 || fail "zeroout"
	ok "write-zeroes unsupported below: emulated with writes"
fi
head -c $((4 << 20)) /dev/zero >/tmp/z
check_pattern /dev/mapper/f0 8 /tmp/z 4
check_pattern /dev/vda 8 /tmp/z 4
ok "zeroed range reads zero through the target and below"

if [ "$(cat /sys/block/dm-0/queue/discard_max_bytes)" -gt 0 ]; then
	/sbin/blkdiscard -o $((16 << 20)) -l $((4 << 20)) /dev/mapper/f0 || fail "discard"
	[ "$(status_field f0 5)" -gt 0 ] || fail "discard not counted"
	ok "discard passed down ($(status_field f0 5))"
else
	fail "data device supports discard but the target does not"
fi
dm remove f0 || fail "remove"
