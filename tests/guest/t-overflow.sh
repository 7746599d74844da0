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

# `overflow block` and a suspend: nothing sleeps in `map`, a writer held
# for spool room is a bio the target holds, and device-mapper's suspend
# waits for every such bio.  So the suspend lets the held writes go to the
# data device, marked in the bitmap (the group goes ahead), and finishes;
# after the resume the rest of the writes follow them to the bitmap.  The
# module that slept in `map` hung the suspend for good.  The reader holds
# the character device open and never reads.  checkpoint_ms 0: no marker
# takes room, so exactly 16 of the 64 KiB writes fit the 1 MiB spool and
# the 16 others (chunks 16 to 31) are dirty.
rd=
trap '[ -z "$rd" ] || kill $rd 2>/dev/null || true' EXIT
meta_wipe /dev/vdc
dm create o5 --table "0 $S ferry /dev/vda /dev/vdc 8 group gp spool_mb 1 overflow block checkpoint_ms 0" || fail "create o5"
sleep 600 </dev/ferry/gp &
rd=$!
head -c 2097152 /dev/urandom >/tmp/o5.pat
dd if=/tmp/o5.pat of=/dev/mapper/o5 bs=64k oflag=direct 2>/dev/null &
wp=$!
sleep 2
kill -0 $wp 2>/dev/null || fail "suspend case: the 2 MiB writer was not held by the 1 MiB spool"
[ "$(status_field o5 5)" = replicating ] || fail "suspend case: the group went ahead before the suspend: $(dm status o5)"
t0=$(date +%s)
timeout 10 dmsetup --noudevsync suspend o5 2>/dev/null ||
	fail "suspend case: dmsetup suspend with a writer held for spool room did not finish within 10 s"
t1=$(date +%s)
[ "$(status_field o5 5)" = ahead ] || fail "suspend case: the group is not ahead after the suspend: $(dm status o5)"
dm resume o5 || fail "suspend case: resume"
for i in $(seq 1 50); do kill -0 $wp 2>/dev/null || break; sleep 0.2; done
kill -0 $wp 2>/dev/null && fail "suspend case: the writer still waits 10 s after the resume"
wait $wp || fail "suspend case: the writer failed (a held write must not fail)"
dd if=/dev/vda bs=64k count=32 iflag=direct 2>/dev/null | cmp -s - /tmp/o5.pat ||
	fail "suspend case: the data device does not hold the 2 MiB written"
set -- $(dm status o5)
[ "$8" = ahead ] || fail "suspend case: state $8, not ahead: $*"
[ "${15}" = 16 ] || fail "suspend case: ${15} dirty chunks, not 16 (the writes not spooled): $*"
[ "${17}" = 16 ] || fail "suspend case: ${17} writes not shipped, not 16: $*"
[ "${10}" = 16 ] || fail "suspend case: ${10} records numbered, not 16: $*"
ok "overflow block: suspend with a writer held for room finished in $((t1 - t0)) s; the writes on the data device, the group ahead with 16 dirty chunks"
kill $rd 2>/dev/null; wait $rd 2>/dev/null || true; rd=
dm remove o5 || fail "remove o5"

# `overflow block` with nobody reading: a writer held for spool room with
# none let in for block_timeout (3 s here) is let go to the bitmap, the
# group going ahead, within the bound and a tick (at most a second); it
# is in D state while held, and not after.  A dead ferryd left writers
# in D state for ever.  The reader, again, holds the device open and
# never reads.
meta_wipe /dev/vdc
kmark bt
dm create o6 --table "0 $S ferry /dev/vda /dev/vdc 10 group gt spool_mb 1 overflow block checkpoint_ms 0 block_timeout 3" || fail "create o6"
dm table o6 | grep -q ' block_timeout 3$' || fail "bound case: the table line does not reproduce block_timeout: $(dm table o6)"
sleep 600 </dev/ferry/gt &
rd=$!
head -c 2097152 /dev/urandom >/tmp/o6.pat
t0=$(date +%s)
dd if=/tmp/o6.pat of=/dev/mapper/o6 bs=64k oflag=direct 2>/dev/null &
wp=$!
sleep 1
kill -0 $wp 2>/dev/null || fail "bound case: the 2 MiB writer was not held by the 1 MiB spool"
st=$(awk '{ print $3 }' /proc/$wp/stat 2>/dev/null) || true
[ "$st" = D ] || fail "bound case: the held writer is in state '$st', not D (the case is not reached)"
[ "$(status_field o6 5)" = replicating ] || fail "bound case: ahead before the bound: $(dm status o6)"
# Bound + 5 s from the writer's start.
while [ $(( $(date +%s) - t0 )) -lt 8 ] && kill -0 $wp 2>/dev/null; do sleep 0.1; done
t1=$(date +%s)
st=$(awk '{ print $3 }' /proc/$wp/stat 2>/dev/null) || true
[ "$st" = D ] && fail "bound case: the writer is still in D state $((t1 - t0)) s after it started (block_timeout 3)"
kill -0 $wp 2>/dev/null && fail "bound case: the writer has not finished $((t1 - t0)) s after it started (block_timeout 3); state '$st'"
wait $wp || fail "bound case: the writer failed (a held write must not fail)"
dd if=/dev/vda bs=64k count=32 iflag=direct 2>/dev/null | cmp -s - /tmp/o6.pat ||
	fail "bound case: the data device does not hold the 2 MiB written"
set -- $(dm status o6)
[ "$8" = ahead ] || fail "bound case: state $8, not ahead: $*"
[ "${15}" = 16 ] || fail "bound case: ${15} dirty chunks, not 16: $*"
[ "${17}" = 16 ] || fail "bound case: ${17} writes not shipped, not 16: $*"
klog_since bt | grep -q 'writers waited block_timeout for spool room' ||
	fail "bound case: no kernel warning names block_timeout"
ok "overflow block: with nobody reading, the held writer went to the bitmap after block_timeout 3 (done in $((t1 - t0)) s, not in D state); ahead, 16 dirty chunks"
kill $rd 2>/dev/null; wait $rd 2>/dev/null || true; rd=
dm remove o6 || fail "remove o6"
