# Module load and unload; the target registers and goes away cleanly.
ferry_cleanup
insmod /ferry/dm-ferry.ko || fail "insmod"
dm targets | grep -Eq '^ferry +v0\.3\.0' || fail "ferry not in 'dmsetup targets'"
ok "registered: $(dm targets | grep ferry)"
insmod /ferry/dm-ferry.ko 2>/dev/null && fail "second insmod succeeded"
rmmod dm_ferry || fail "rmmod"
dm targets | grep -q '^ferry ' && fail "ferry still registered after rmmod"
for i in 1 2 3; do insmod /ferry/dm-ferry.ko && rmmod dm_ferry || fail "load cycle $i"; done
ok "load/unload cycles"
