# First half of a crash point (tests/crash.sh): a primary under dependent
# writes and a reader acknowledging 300 ms late; every completed write and
# every acknowledgement is logged durably to /dev/vdc, the acknowledgement
# before it is sent.  Then "FERRY-ARMED", and the host kills the guest.
# Disks: vda data, vdb meta, vdc logs.
ferry_load
dm create cx --table "0 65536 ferry /dev/vda /dev/vdb 6 group gx checkpoint_ms 200 chunk_kb 64" || fail "create"
ferry-test read --group gx --log /tmp/r.log --quiet --ack-delay-ms 300 --ack-log /dev/vdc:33554432 \
	--idle-ms 100000000 --max-ms 100000000 >/tmp/r.out 2>&1 &
ferry-test write --dev /dev/mapper/cx --count 100000000 --blocks 8192 --sequential \
	--log /dev/null --log-dev /dev/vdc:0 >/tmp/w.out 2>&1 &
wp=$!
sleep 2
kill -0 $wp 2>/dev/null || { cat /tmp/w.out /tmp/r.out; fail "writer stopped"; }
echo FERRY-ARMED
wait $wp
fail "the writer ended before the power cut: $(cat /tmp/w.out)"
