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
# A write of several commands applies all of them or none, and fails with
# the errno of its first refused command: a valid ACK then an out-of-range
# one leaves acked and the spool as they were.
[ "$(status_field c0 9)" = 0 ] || fail "acknowledged before the batch: $(dm status c0)"
used=$(status_field c0 10) rej=$(status_field c0 15)
err 34 "a valid ACK then an out-of-range ACK, in one write" ack 0 5 + ack 0 999999
err 22 "a valid ACK then a malformed command, in one write" ack 0 5 + raw 00
err 22 "a device not in the group, then an out-of-range ACK: the first one's errno" ack 7 1 + ack 0 999999
[ "$(status_field c0 9)" = 0 ] || fail "a refused write applied its valid ACK: acked $(status_field c0 9)"
[ "$(status_field c0 10)" = "$used" ] || fail "a refused write freed spool: $used -> $(status_field c0 10) KiB"
[ "$(status_field c0 15)" = $((rej + 3)) ] || fail "refused writes not counted once each: $rej -> $(status_field c0 15)"
ok "a refused write applies none of its commands (acked 0, spool $used KiB)"
out=$(ferry-test cmd --dev /dev/ferry/gc --read-first 200000 ack 0 5 || true)
[ "$out" = "cmd|ok|24" ] || fail "the valid ACK alone: $out"
[ "$(status_field c0 9)" = 5 ] || fail "the valid ACK alone not applied: acked $(status_field c0 9)"
[ "$(status_field c0 10)" -lt "$used" ] || fail "the valid ACK alone freed no spool: $used -> $(status_field c0 10) KiB"
ok "the valid ACK alone is applied (acked 5)"
# A command valid only before an earlier one of the same write takes
# effect: STOP then START (START is refused while ahead) fails as a
# whole, and the group is not left ahead by the STOP.
[ "$(status_field c0 5)" != ahead ] || fail "ahead before the STOP + START write"
err 95 "STOP then START in one write: START's errno" stop + start
[ "$(status_field c0 5)" != ahead ] || fail "a refused STOP + START write applied its STOP: the group is ahead"
ok "a refused STOP + START write left the group replicating"
out=$(ferry-test cmd --dev /dev/ferry/gc stop || true); [ "$out" = "cmd|ok|8" ] || fail "stop: $out"
[ "$(status_field c0 5)" = ahead ] || fail "stop did not make the group ahead"
# START alone while ahead begins a resync (nothing is dirty: its span ends
# at once); the group is resyncing until APPLIED reaches the span's end.
out=$(ferry-test cmd --dev /dev/ferry/gc start || true); [ "$out" = "cmd|ok|16" ] || fail "start while ahead: $out"
[ "$(status_field c0 5)" = resyncing ] || fail "start while ahead did not begin a resync: $(dm status c0)"
for i in $(seq 1 50); do
	e=$(( $(status_field c0 13) - 1 ))
	ferry-test cmd --dev /dev/ferry/gc --read-first 200000 applied $e >/dev/null 2>&1 || true
	[ "$(status_field c0 5)" = replicating ] && break
	sleep 0.1
done
[ "$(status_field c0 5)" = replicating ] || fail "APPLIED of the span's end did not end the resync: $(dm status c0)"
ok "START while ahead: resyncing, then replicating once APPLIED reaches the span's end"
# START with FULL_RESYNC while replicating: a full copy, every chunk of the
# device dirty and in the resync; STOP drops the resync, and the chunks
# stay dirty (a later START copies them).
chunks=$((S / 128))
[ "$(status_field c0 12)" = 0 ] || fail "dirty chunks before the full copy: $(dm status c0)"
out=$(ferry-test cmd --dev /dev/ferry/gc start-full || true); [ "$out" = "cmd|ok|16" ] || fail "full START while replicating: $out"
[ "$(status_field c0 5)" = resyncing ] || fail "a full START did not begin a resync: $(dm status c0)"
[ "$(status_field c0 17)" = $chunks ] && [ "$(status_field c0 12)" = $chunks ] ||
	fail "a full START: resync total $(status_field c0 17), dirty $(status_field c0 12), not the device's $chunks chunks"
out=$(ferry-test cmd --dev /dev/ferry/gc stop || true); [ "$out" = "cmd|ok|8" ] || fail "stop during the full copy: $out"
[ "$(status_field c0 5)" = ahead ] && [ "$(status_field c0 12)" = $chunks ] ||
	fail "STOP during the full copy: $(dm status c0) (want ahead, $chunks dirty)"
ok "START with FULL_RESYNC: resyncing all $chunks chunks; STOP leaves them dirty"
[ "$(status_field c0 15)" -ge 10 ] || fail "rejected commands not counted: $(dm status c0)"
dm remove c0
# The resync's rate cap (resync_mbps, MiB/s), set by message, on a group
# of its own whose spool (128 MiB) holds the whole copy below half (a
# chunk is read only while the spool is under half full): a bad value is
# refused; capped at 1 MiB/s the full copy reads at most a second's burst
# plus a MiB per second elapsed (16 chunks of 64 KiB each); uncapped, the
# same copy goes past that bound (so the bound is one the cap made).
meta_wipe /dev/vdc
dm create c1 --table "0 $S ferry /dev/vda /dev/vdc 6 group gcap checkpoint_ms 0 spool_mb 128" || fail "create c1"
dm message c1 0 resync_mbps 65537 2>/dev/null && fail "resync_mbps 65537 accepted"
dm message c1 0 resync_mbps 1x 2>/dev/null && fail "resync_mbps 1x accepted"
dm message c1 0 resync_mbps 1 || fail "resync_mbps 1"
dm table c1 | grep -q ' resync_mbps 1$' || fail "the table does not show the cap: $(dm table c1)"
cs() { cut -d' ' -f1 /proc/uptime | tr -d .; }  # centiseconds since boot
# Chunks copied: the records numbered since the START (field 7, completed:
# each chunk of 64 KiB is one), less the span's first marker.  (Not
# resync_total - resync_left: both are 0 once the copy is done.)
base=$(status_field c1 7)
copied_now() { echo $(( $(status_field c1 7) - base - 1 )); }
t0=$(cs)
out=$(ferry-test cmd --dev /dev/ferry/gcap start-full || true); [ "$out" = "cmd|ok|16" ] || fail "full START under the cap: $out"
sleep 4
copied=$(copied_now)
ms=$(( ($(cs) - t0) * 10 ))
bound=$(( (1000 + ms) * 16 / 1000 + 1 ))
[ "$copied" -ge 1 ] && [ "$copied" -le "$bound" ] ||
	fail "capped at 1 MiB/s: $copied chunks copied in $ms ms (want 1 to $bound)"
dm message c1 0 resync_mbps 0 || fail "resync_mbps 0"
dm table c1 | grep -q resync_mbps && fail "the table shows a cap after resync_mbps 0: $(dm table c1)"
end=$(( $(cs) + 6000 ))
while :; do
	fast=$(copied_now)
	[ "$fast" -gt $(( bound + 32 )) ] || [ "$(cs)" -gt $end ] && break
	sleep 0.2
done
[ "$fast" -gt $(( bound + 32 )) ] || fail "uncapped, the copy stays at $fast chunks in 60 s (capped bound $bound): $(dm status c1)"
out=$(ferry-test cmd --dev /dev/ferry/gcap stop || true); [ "$out" = "cmd|ok|8" ] || fail "stop after the capped copy: $out"
dm remove c1
ok "resync_mbps 1: $copied chunks in $ms ms (at most $bound); uncapped: $fast copied (and the span's end marker, once done) soon after"

# Redelivery: a reader that stops without acknowledging; the next one gets
# everything again from dev_seq 1 (its continuity check starts at 1).
meta_wipe /dev/vdc
dm create c0 --table "0 $S ferry /dev/vda /dev/vdc 4 group gc checkpoint_ms 0" || fail "create"
dd if=/dev/urandom of=/dev/mapper/c0 bs=4k count=50 oflag=direct 2>/dev/null
ferry-test read --group gc --log /tmp/c1.log --no-ack --max-records 10 >/dev/null || fail "first reader"
ferry-test read --group gc --log /tmp/c2.log --idle-ms 1000 >/tmp/c2.out || fail "second reader"
grep -q "reader|dev=0|.*records=50|.*first_dev_seq=1|" /tmp/c2.out || fail "redelivery: $(cat /tmp/c2.out)"
ok "a new reader gets every unacknowledged record again, from the first"

# SPOOLED: records the helper holds on the primary's disk leave the spool
# and are not offered again, but stay unacknowledged: their chunks stay
# marked on the meta device (a re-create finds them) until the ACK.
dm remove c0
meta_wipe /dev/vdc /dev/vdd
dm create c0 --table "0 $S ferry /dev/vda /dev/vdc 4 group gc checkpoint_ms 0" || fail "create"
dm create c1 --table "0 $S ferry /dev/vdb /dev/vdd 6 group gc device_id 1 role log" || fail "create log"
ferry-test write --dev /dev/mapper/c0 --count 30 --blocks 4096 --seed 3 --log /tmp/c5.w >/dev/null || fail "write"
dd if=/dev/urandom of=/dev/mapper/c1 bs=4k count=2 oflag=direct 2>/dev/null
err 22 "spooled of a log device beyond its acknowledgement" spooled 1 1
err 34 "spooled beyond what was read" spooled 0 999999
used=$(status_field c0 10)
# (O_DSYNC writes: a flush record follows each write.)
total=$(status_field c0 7)
out=$(ferry-test cmd --dev /dev/ferry/gc --read-first 200000 spooled 0 20) || true
[ "$out" = "cmd|ok|24" ] || fail "spooled 0 20: $out"
[ "$(status_field c0 10)" -lt "$used" ] || fail "spool not released by SPOOLED: $used -> $(status_field c0 10) KiB"
[ "$(status_field c0 9)" = 0 ] || fail "SPOOLED counted as acknowledged: $(dm status c0)"
ferry-test read --group gc --log /tmp/c5.log --no-ack --idle-ms 1000 >/tmp/c5.out || fail "reader after SPOOLED"
grep -q "reader|dev=0|.*records=$((total - 20))|.*first_dev_seq=21|" /tmp/c5.out || fail "after SPOOLED (of $total): $(cat /tmp/c5.out)"
ok "SPOOLED 0 20: the spool shrinks ($used -> $(status_field c0 10) KiB), nothing acknowledged, a new reader starts at 21"
out=$(ferry-test cmd --dev /dev/ferry/gc --read-first 200000 spooled 0 $total) || true
[ "$out" = "cmd|ok|24" ] || fail "spooled 0 $total: $out"
sleep 3  # write-intent sweeps
dm remove c0; dm remove c1
dm create c0 --table "0 $S ferry /dev/vda /dev/vdc 4 group gc checkpoint_ms 0" || fail "re-create"
[ "$(status_field c0 5)" = ahead ] && [ "$(status_field c0 12)" -gt 0 ] ||
	fail "spooled, unacknowledged writes not marked on the meta device: $(dm status c0)"
ok "spooled and unacknowledged: still marked on the meta device ($(status_field c0 12) chunks after re-create)"
dm remove c0
meta_wipe /dev/vdc
dm create c0 --table "0 $S ferry /dev/vda /dev/vdc 4 group gc checkpoint_ms 0" || fail "create"
ferry-test write --dev /dev/mapper/c0 --count 30 --blocks 4096 --seed 3 --log /tmp/c5.w >/dev/null || fail "write"
total=$(status_field c0 7)
out=$(ferry-test cmd --dev /dev/ferry/gc --read-first 200000 spooled 0 $total) || true
[ "$out" = "cmd|ok|24" ] || fail "spooled 0 $total: $out"
out=$(ferry-test cmd --dev /dev/ferry/gc ack 0 $total) || true
[ "$out" = "cmd|ok|24" ] || fail "ack 0 $total after SPOOLED: $out"
sleep 3
dm remove c0
dm create c0 --table "0 $S ferry /dev/vda /dev/vdc 4 group gc checkpoint_ms 0" || fail "re-create"
[ "$(status_field c0 5) $(status_field c0 12)" = "replicating 0" ] ||
	fail "spooled and acknowledged writes still marked: $(dm status c0)"
ok "spooled, then acknowledged: the meta device is clean again"

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
