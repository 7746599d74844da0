# A replication crash point, primary side (tests/repl-crash.sh): group gr
# under dependent writes (seed 1000 + point) across its log and data
# devices, shipped by ferryd; then "FERRY-ARMED", and the host kills this
# guest.
repl_devices primary
repl_config primary
ferryd_start
ferry-test write --dev /dev/mapper/r0 --dev /dev/mapper/r1 --count 100000000 --blocks $REPL_BLOCKS \
	--seed $((1000 + ${FERRY_POINT:-0})) --log /dev/null >/tmp/w.out 2>&1 &
wp=$!
sleep 2
kill -0 $wp 2>/dev/null || { cat /tmp/w.out; fail "writer stopped"; }
echo FERRY-ARMED
wait $wp
fail "the writer ended before the power cut: $(cat /tmp/w.out)"
