# A device that is open cannot be removed; the module cannot be unloaded
# while a ferry device exists.
ferry_load
D=$(sectors /dev/vda)
dm create f0 --table "0 $D ferry /dev/vda /dev/vdc" || fail "create"
exec 3</dev/mapper/f0
dm remove f0 2>/tmp/err && fail "removed while open"
grep -q "busy" /tmp/err || { cat /tmp/err; fail "remove while open: not EBUSY"; }
dm info f0 >/dev/null || fail "device gone after refused remove"
ok "remove while open refused: $(cat /tmp/err | head -1)"
exec 3<&-
rmmod dm_ferry 2>/dev/null && fail "module unloaded while a device exists"
ok "rmmod refused while a device exists"
dm remove f0 || fail "remove after close"
rmmod dm_ferry || fail "rmmod after remove"
ok "remove and rmmod after close"
