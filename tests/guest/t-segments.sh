# Several segments in one table, ferry segments at non-zero logical offsets
# and at an offset on their data device (data_offset).
ferry_load
S1=131072 S2=65536 S3=131072
tbl="0 $S1 ferry /dev/vda /dev/vdc
$S1 $S2 linear /dev/vdb 0
$((S1 + S2)) $S3 ferry /dev/vdb /dev/vdd 2 data_offset $S2"
echo "$tbl" | dm create seg || fail "create three segments"
[ "$(sectors /dev/mapper/seg)" = $((S1 + S2 + S3)) ] || fail "size"
want="0 $S1 ferry $(devno /dev/vda) $(devno /dev/vdc)
$S1 $S2 linear $(devno /dev/vdb) 0
$((S1 + S2)) $S3 ferry $(devno /dev/vdb) $(devno /dev/vdd) 2 data_offset $S2"
[ "$(dm table seg)" = "$want" ] || { dm table seg; fail "table does not reproduce"; }
ok "table reproduces"

fio_verify --name=span --filename=/dev/mapper/seg --rw=randwrite --bs=4k --iodepth=16 --size=128M --io_size=12M
fio_verify --name=seq --filename=/dev/mapper/seg --rw=write --bs=1M --iodepth=4 --offset=48M --size=64M
ok "fio verify across segment boundaries"

# Where each segment's data lands (MiB offsets: S1 = 64M, S2 = 32M).
write_pattern /dev/mapper/seg 10 /tmp/a 4     # segment 1
write_pattern /dev/mapper/seg 70 /tmp/b 4     # segment 2 (linear)
write_pattern /dev/mapper/seg 100 /tmp/c 4    # segment 3, 4M into it
check_pattern /dev/vda 10 /tmp/a 4
check_pattern /dev/vdb 6 /tmp/b 4
check_pattern /dev/vdb 36 /tmp/c 4
ok "each segment maps to its device and offset"

# A write crossing from segment 1 into segment 2 is split: its first half
# lands at the end of the first ferry segment, its second half on vdb.
write_pattern /dev/mapper/seg 62 /tmp/x 4
check_pattern /dev/mapper/seg 62 /tmp/x 4
head -c 2097152 /tmp/x >/tmp/x1
tail -c 2097152 /tmp/x >/tmp/x2
check_pattern /dev/vda 62 /tmp/x1 2
check_pattern /dev/vdb 0 /tmp/x2 2
ok "boundary-crossing write"
dm remove seg || fail "remove"

# An empty flush carries no sector: device-mapper hands it to a segment
# that begins past sector 0 with the original bio's sector (0).  A ferry
# segment at begin 2048 with data_offset 4096 (>= its begin) must place it
# without arithmetic on that sector, in every mode; I/O through both
# segments still lands where it belongs.
head -c 2097152 /dev/urandom >/tmp/f2
for mode in passthrough primary secondary; do
	meta_wipe /dev/vdc
	case $mode in
	passthrough) o="2 data_offset 4096" ;;
	primary) o="6 data_offset 4096 group gs device_id 0" ;;
	secondary) o="8 data_offset 4096 mode secondary group gs device_id 0" ;;
	esac
	printf '0 2048 linear /dev/vdb 0\n2048 2048 ferry /dev/vda /dev/vdc %s\n' "$o" | dm create fl ||
		fail "$mode: create the two-segment table"
	dd if=/dev/null of=/dev/mapper/fl conv=fsync,notrunc 2>/dev/null || fail "$mode: fsync (empty flush)"
	if [ $mode = secondary ]; then
		# Host writes are refused; reads of both segments are served.
		dd if=/tmp/f2 of=/dev/vdb bs=1M count=1 oflag=direct conv=notrunc 2>/dev/null
		dd if=/tmp/f2 of=/dev/vda bs=1M skip=1 seek=2 count=1 oflag=direct conv=notrunc 2>/dev/null
		check_pattern /dev/mapper/fl 0 /tmp/f2 2
	else
		dd if=/tmp/f2 of=/dev/mapper/fl bs=1M oflag=direct conv=fsync,notrunc 2>/dev/null || fail "$mode: write both segments"
		check_pattern /dev/mapper/fl 0 /tmp/f2 2
		head -c 1048576 /tmp/f2 >/tmp/f2a; tail -c 1048576 /tmp/f2 >/tmp/f2b
		check_pattern /dev/vdb 0 /tmp/f2a 1
		check_pattern /dev/vda 2 /tmp/f2b 1
	fi
	dd if=/dev/null of=/dev/mapper/fl conv=fsync,notrunc 2>/dev/null || fail "$mode: fsync after I/O"
	dm remove fl || fail "$mode: remove"
	ok "$mode: empty flushes and I/O through a segment at begin 2048 with data_offset 4096"
done
