# Create, load, reload and remove many times with I/O in between: nothing
# leaks (the suite's kmemleak check runs after the last test).
ferry_load
D=$(sectors /dev/vda)
for i in $(seq 1 20); do
	dm create f$i --table "0 $D ferry /dev/vda /dev/vdc" || fail "create $i"
	dd if=/dev/mapper/f$i of=/dev/null bs=64k count=4 iflag=direct 2>/dev/null || fail "read $i"
	dd if=/dev/zero of=/dev/mapper/f$i bs=64k count=4 oflag=direct 2>/dev/null || fail "write $i"
	dm remove f$i || fail "remove $i"
done
ok "20 create/io/remove cycles"
