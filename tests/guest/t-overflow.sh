# Spool overflow: `overflow bitmap` degrades to bitmap tracking (mode
# ahead) without blocking; `overflow block` holds writers until the reader
# frees room, and loses nothing.
ferry_load
meta_wipe /dev/vdc
S=65536
dm create o0 --table "0 $S ferry /dev/vda /dev/vdc 4 group go spool_mb 1" || fail "create"
dd if=/dev/urandom of=/dev/mapper/o0 bs=64k count=64 oflag=direct 2>/dev/null || fail "writes blocked or failed"
set -- $(dm status o0)
[ "$8" = ahead ] || fail "not ahead after overflow: $*"
[ "${15}" -gt 0 ] || fail "no dirty chunks: $*"
[ "${17}" -gt 0 ] || fail "no writes counted as not shipped: $*"
[ "${13}" -le 1024 ] || fail "spool above its cap: $*"
ok "overflow bitmap: ahead, ${15} dirty chunks, spool ${13}/${14} KiB"
dm remove o0

meta_wipe /dev/vdc
dm create o1 --table "0 $S ferry /dev/vda /dev/vdc 6 group gb spool_mb 1 overflow block" || fail "create block"
ferry-test write --dev /dev/mapper/o1 --count 600 --blocks 4096 --log /tmp/ow.log >/dev/null &
wp=$!
sleep 3
kill -0 $wp 2>/dev/null || fail "writer was not held by a full spool"
[ "$(status_field o1 5)" = replicating ] || fail "block mode went ahead"
reader_start gb /tmp/or.log
wait $wp || fail "writer"
reader_stop
ferry-test check --writes /tmp/ow.log --records /tmp/or.log --ids 0 || fail "check"
ok "overflow block: the writer waited for the reader; all 600 writes shipped in order"
dm remove o1

# A writer held for spool room is let go when the group goes ahead (here a
# STOP from the reader, as ferryd sends on a gap): its write goes to the
# bitmap.  Waking writers only when room is freed left it in D state for
# good, nothing being acknowledged any more.
meta_wipe /dev/vdc
dm create o4 --table "0 $S ferry /dev/vda /dev/vdc 6 group gs spool_mb 1 overflow block" || fail "create o4"
dd if=/dev/urandom of=/dev/mapper/o4 bs=64k count=32 oflag=direct 2>/dev/null &
wp=$!
sleep 2
kill -0 $wp 2>/dev/null || fail "the 2 MiB writer was not held by the 1 MiB spool"
out=$(ferry-test cmd --dev /dev/ferry/gs stop) || true
[ "$out" = "cmd|ok|8" ] || fail "stop: $out"
for i in $(seq 1 50); do kill -0 $wp 2>/dev/null || break; sleep 0.2; done
kill -0 $wp 2>/dev/null && fail "the writer held for room still sleeps 10 s after the group went ahead"
wait $wp || fail "the writer let go when the group went ahead failed"
set -- $(dm status o4)
[ "$8" = ahead ] && [ "${15}" -gt 0 ] || fail "not ahead with dirty chunks after the STOP: $(dm status o4)"
ok "overflow block: a writer held for room is let go when the group goes ahead (${15} dirty chunks)"
dm remove o4

# A writer that slept for spool room under `overflow block` must mark its
# chunk again when it is let in: while it slept, sweeps may clear the chunk
# its first look found marked, and its write must not land in a chunk the
# meta device does not mark (G3).  Device 0 writes X (4 KiB) to chunk 256;
# device 1 fills the 1 MiB spool to the last page; W (64 KiB) to chunk 256
# of device 0 waits for room, having found the chunk marked; X alone is
# acknowledged (4 KiB free: still no room for W), and two sweeps clear
# chunk 256 on disk (W's generation holds no record); then a reader
# acknowledges the rest (3 s late) and W goes in: right after it completes,
# its record not yet acknowledged, the bit must be set on disk.
meta_wipe /dev/vdc /dev/vdd
dm create o2 --table "0 $S ferry /dev/vda /dev/vdc 8 group gw spool_mb 1 overflow block checkpoint_ms 0" || fail "create o2"
dm create o3 --table "0 $S ferry /dev/vdb /dev/vdd 10 group gw spool_mb 1 overflow block checkpoint_ms 0 device_id 1" || fail "create o3"
bit256() { dd if=/dev/vdc bs=4k skip=256 count=1 iflag=direct 2>/dev/null | od -An -tu1 -j32 -N1 | tr -d ' '; }
dd if=/dev/urandom of=/dev/mapper/o2 bs=4k count=1 seek=4096 oflag=direct 2>/dev/null || fail "X"
[ $(( $(bit256) % 2 )) = 1 ] || fail "chunk 256 not marked on disk after X"
dd if=/dev/urandom of=/dev/mapper/o3 bs=64k count=15 oflag=direct 2>/dev/null || fail "fill the spool (64 KiB)"
dd if=/dev/urandom of=/dev/mapper/o3 bs=4k count=15 seek=4096 oflag=direct 2>/dev/null || fail "fill the spool (4 KiB)"
[ "$(status_field o2 10)" = 1024 ] || fail "spool not full: $(dm status o2)"
dd if=/dev/urandom of=/dev/mapper/o2 bs=64k count=1 seek=256 oflag=direct 2>/dev/null &
wp=$!
sleep 1
kill -0 $wp 2>/dev/null || fail "W was not held by the full spool"
out=$(ferry-test cmd --dev /dev/ferry/gw --read-first 200000 ack 0 1) || true
[ "$out" = "cmd|ok|24" ] || fail "ack of X: $out"
sleep 3.5
kill -0 $wp 2>/dev/null || fail "W went in before the spool had room"
[ $(( $(bit256) % 2 )) = 0 ] || fail "chunk 256 still marked on disk while W sleeps (no sweep cleared it: the case is not reached)"
reader_start gw /tmp/ow2.log --ack-delay-ms 3000
wait $wp || fail "W failed"
b=$(bit256)
reader_stop
[ $(( b % 2 )) = 1 ] || fail "W, let in after sleeping for room, landed in chunk 256 unmarked on disk (G3)"
ok "overflow block: a writer let in after sleeping marks its chunk again before its write lands"
dm remove o2 && dm remove o3 || fail "remove"
