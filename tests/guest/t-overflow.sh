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
