# Suspend, resume and reload (new table, other meta device) under I/O.
ferry_load
D=$(sectors /dev/vda)
dm create f0 --table "0 $D ferry /dev/vda /dev/vdc" || fail "create"
# Verifying random writes all through the cycles, and not much longer: fio
# runs again and again (each run writes 2 MiB at random in 12 MiB, then
# reads it back and checks it) until the cycles are done.
rm -f /tmp/cycles.done /tmp/fio.runs
(
	n=0
	while [ $n = 0 ] || [ ! -f /tmp/cycles.done ]; do
		fio --thread --name=bg$n --filename=/dev/mapper/f0 --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
			--iodepth=16 --size=12M --io_size=2M --randseed=$n --verify=crc32c --verify_fatal=1 --do_verify=1 \
			>/tmp/fio.bg 2>&1 || exit 1
		n=$((n + 1))
		echo $n >/tmp/fio.runs
	done
) &
fiopid=$!
for i in 1 2 3 4 5 6; do
	sleep 1
	dm suspend f0 || fail "suspend $i"
	dm resume f0 || fail "resume $i"
	meta=/dev/vdc; [ $((i % 2)) = 1 ] && meta=/dev/vdd
	dm reload f0 --table "0 $D ferry /dev/vda $meta" || fail "reload $i"
	dm suspend f0 || fail "suspend after reload $i"
	dm resume f0 || fail "resume after reload $i"
	[ "$(dm table f0 | awk '{print $5}')" = "$(devno $meta)" ] || fail "reload $i not live"
done
touch /tmp/cycles.done
wait $fiopid || { cat /tmp/fio.bg; fail "fio verify under suspend/resume/reload"; }
ok "6 suspend/resume/reload cycles under verifying fio ($(cat /tmp/fio.runs) runs of 2 MiB)"
dm suspend f0 && dm remove f0 || fail "remove while suspended"
ok "remove while suspended"
