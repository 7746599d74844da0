# The character device: one reader at a time, every bad command rejected
# with its errno and nothing lost, redelivery after a reopen, the end of
# the stream when the group goes, no unload while it is open.
ferry_load
meta_wipe /dev/vdc
S=65536
dm create c0 --table "0 $S ferry /dev/vda /dev/vdc 4 group gc checkpoint_ms 0" || fail "create"
dd if=/dev/urandom of=/dev/mapper/c0 bs=4k count=20 oflag=direct 2>/dev/null
# Nothing read yet: any acknowledgement is of a sequence never issued.
out=$(ferry-test cmd --dev /dev/ferry/gc ack 0 1 || true); [ "$out" = "cmd|errno|34" ] || fail "ack of unread seq: $out"
err() {  # err <errno> <description> <ferry-test cmd words...>
	want=$1 what=$2; shift 2
	out=$(ferry-test cmd --dev /dev/ferry/gc --read-first 200000 "$@" || true)
	[ "$out" = "cmd|errno|$want" ] || fail "$what: got $out, want errno $want"
	ok "$what: errno $want"
}
err 22 "empty-magic garbage" raw 00
err 22 "bad magic" raw 58434d4401020c000100000000000000000000000000
err 22 "unknown opcode" raw 46434d4401630000
err 22 "unsupported version" raw 46434d4409010c00000000000500000000000000
err 22 "truncated command" raw 46434d4401010c0000000000
err 22 "ack-log of a data device" ack-log 0 1
err 22 "ack of a device not in the group" ack 7 1
err 34 "ack beyond what was read" ack 0 999999
err 34 "applied epoch not yet closed" applied 999
out=$(ferry-test cmd --dev /dev/ferry/gc stop || true); [ "$out" = "cmd|ok|8" ] || fail "stop: $out"
err 95 "start while ahead (resync is not in this version)" start
[ "$(status_field c0 5)" = ahead ] || fail "stop did not make the group ahead"
[ "$(status_field c0 15)" -ge 10 ] || fail "rejected commands not counted: $(dm status c0)"
dm remove c0

# Redelivery: a reader that stops without acknowledging; the next one gets
# everything again from dev_seq 1 (its continuity check starts at 1).
meta_wipe /dev/vdc
dm create c0 --table "0 $S ferry /dev/vda /dev/vdc 4 group gc checkpoint_ms 0" || fail "create"
dd if=/dev/urandom of=/dev/mapper/c0 bs=4k count=50 oflag=direct 2>/dev/null
ferry-test read --group gc --log /tmp/c1.log --no-ack --max-records 10 >/dev/null || fail "first reader"
ferry-test read --group gc --log /tmp/c2.log --idle-ms 1000 >/tmp/c2.out || fail "second reader"
grep -q "reader|dev=0|.*records=50|.*first_dev_seq=1|" /tmp/c2.out || fail "redelivery: $(cat /tmp/c2.out)"
ok "a new reader gets every unacknowledged record again, from the first"

# One reader at a time.
ferry-test read --group gc --log /tmp/c3.log --idle-ms 60000 >/dev/null &
rp=$!
sleep 1
out=$(ferry-test cmd --dev /dev/ferry/gc checkpoint 2>&1 || true); echo "$out" | grep -qi "busy" || fail "second open: $out"
ok "a second open gets EBUSY"
# The group goes: the reader sees the end of the stream and exits.
dm remove c0 || fail "remove with a reader attached"
wait $rp || fail "reader after remove"
grep -q '^eof$' /tmp/c3.log || fail "reader saw no end of stream"
ok "removing the group ends the reader's stream"

# A file left open pins the module, not the group.
meta_wipe /dev/vdc
dm create c0 --table "0 $S ferry /dev/vda /dev/vdc 2 group gc" || fail "create"
exec 3</dev/ferry/gc
dm remove c0 || fail "remove with the device open"
rmmod dm_ferry 2>/dev/null && fail "module unloaded while /dev/ferry/gc is open"
exec 3<&-
rmmod dm_ferry || fail "unload after close"
ok "no unload while the character device is open; clean unload after"
