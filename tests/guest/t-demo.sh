# The demo: a ferry device over /dev/vda with meta on /dev/vdb, fio through
# it, then its table and status.  Lines for the host start with "demo|".
say() { echo "demo|$*"; }
ferry_load
D=$(sectors /dev/vda)
say "\$ dmsetup create demo --table \"0 $D ferry /dev/vda /dev/vdb\""
dm create demo --table "0 $D ferry /dev/vda /dev/vdb" || fail "create"
say "\$ fio --rw=randrw --bs=4k --iodepth=16 --size=16M --verify=crc32c /dev/mapper/demo"
fio --thread --name=demo --filename=/dev/mapper/demo --direct=1 --ioengine=libaio --rw=randrw --bs=4k \
	--iodepth=16 --size=16M --verify=crc32c --verify_fatal=1 --do_verify=1 >/tmp/fio.out 2>&1 ||
	{ cat /tmp/fio.out; fail "fio"; }
grep -E '^\s+(read|write):|err=' /tmp/fio.out | while read -r l; do say "  $l"; done
say "\$ dmsetup table demo"
say "$(dm table demo)"
say "\$ dmsetup status demo    # mode reads writes flushes discards write-zeroes"
say "$(dm status demo)"
dm remove demo
