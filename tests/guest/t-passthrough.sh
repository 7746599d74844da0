# Data integrity through one ferry target: fio verify and dd patterns, the
# data lands 1:1 on the data device, status counts, table reproduces.
ferry_load
D=$(sectors /dev/vda)
dm create f0 --table "0 $D ferry /dev/vda /dev/vdc" || fail "create"

fio_verify --name=rand4k --filename=/dev/mapper/f0 --rw=randwrite --bs=4k --iodepth=16 --size=16M
ok "fio randwrite 4k verify"
fio_verify --name=seq1m --filename=/dev/mapper/f0 --rw=write --bs=1M --iodepth=4 --offset=64M --size=32M
ok "fio sequential 1M verify"
fio_verify --name=mixed --filename=/dev/mapper/f0 --rw=randrw --bsrange=512-256k --iodepth=8 --offset=160M --size=8M
ok "fio mixed sizes verify"

write_pattern /dev/mapper/f0 200 /tmp/p 8
check_pattern /dev/mapper/f0 200 /tmp/p 8
check_pattern /dev/vda 200 /tmp/p 8
ok "dd pattern through the target and on the data device"

want="0 $D ferry $(devno /dev/vda) $(devno /dev/vdc)"
[ "$(dm table f0)" = "$want" ] || fail "table '$(dm table f0)' != '$want'"
set -- $(dm status f0)
[ "$4" = passthrough ] || fail "status mode '$4'"
[ "$5" -gt 0 ] && [ "$6" -gt 0 ] || fail "status counts reads=$5 writes=$6"
ok "status: $(dm status f0)"
mhw=$(cat /sys/block/dm-0/queue/max_hw_sectors_kb)
[ "$mhw" -le 1024 ] || fail "max_hw_sectors_kb $mhw > 1024"
ok "bios capped at ${mhw} KiB"
dm remove f0 || fail "remove"
