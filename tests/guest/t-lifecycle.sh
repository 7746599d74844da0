# Create, load, reload and remove many times with I/O in between: nothing
# leaks (the suite's kmemleak check runs after the last test).
# FERRY_LIFECYCLE_ROUNDS (ferry.lifecycle_rounds; make test 10, make soak
# 100): the cycles, and half the creates of each device in the churn.
R=${FERRY_LIFECYCLE_ROUNDS:-10}
ferry_load
D=$(sectors /dev/vda)
for i in $(seq 1 "$R"); do
	dm create f$i --table "0 $D ferry /dev/vda /dev/vdc" || fail "create $i"
	dd if=/dev/mapper/f$i of=/dev/null bs=64k count=4 iflag=direct 2>/dev/null || fail "read $i"
	dd if=/dev/zero of=/dev/mapper/f$i bs=64k count=4 oflag=direct 2>/dev/null || fail "write $i"
	dm remove f$i || fail "remove $i"
done
ok "$R create/io/remove cycles"

# One group (its work running every 10 ms, which widens the window), two
# of its devices created and removed over and over at the same time: whenever one removal ends the group while the other device is
# being created, the new device makes a new group, whose character device
# must find the name free (an earlier version deregistered it only after
# unlocking the registry: "Cannot create the group's character device").
meta_wipe /dev/vdc /dev/vdd
churn() {  # churn <dev> <data> <meta> <id>
	n=0
	for i in $(seq 1 $((2 * R))); do
		dmsetup --noudevsync create "$1" --table "0 65536 ferry $2 $3 6 group gz checkpoint_ms 10 device_id $4" \
			2>>/tmp/churn-$1.err || n=$((n + 1))
		dmsetup --noudevsync remove "$1" 2>>/tmp/churn-$1.err || true
	done
	echo $n >/tmp/churn-$1.fail
}
rm -f /tmp/churn-*
churn z0 /dev/vda /dev/vdc 0 &
c0=$!
churn z1 /dev/vdb /dev/vdd 1 &
c1=$!
wait $c0 $c1
f0=$(cat /tmp/churn-z0.fail) f1=$(cat /tmp/churn-z1.fail)
[ "$f0 $f1" = "0 0" ] || { grep -v 'System V' /tmp/churn-z*.err | head; dmesg | grep 'ferry' | tail -5; fail "concurrent create/remove of one group: $f0 and $f1 of $((2 * R)) creates failed"; }
ok "two devices of one group created and removed $((2 * R)) times each, at the same time: every create succeeded"
