# Secondary power cuts (tests/repl-sec-crash.sh), primary side: dependent
# writes (seed 7) shipped by ferryd, kept going while the secondary guest
# loses power and comes back, until the secondary's last boot asks for the
# end (so that every cut finds intervals to apply, however long the
# secondary's boots take).  A small spool with "overflow block" holds the
# writer back while the secondary is down instead of going ahead (for up
# to an hour with nothing acknowledged: block_timeout 3600; a boot of the
# secondary guest takes far longer than the default 30 s).  Once
# everything is acknowledged, the count and the checksums go to the
# secondary, whose verdict this test reports.  ferry.sec_resync=1: a
# 2 MiB spool with "overflow bitmap" instead, no disk spool and automatic
# resync: the group goes ahead while the secondary is down and resyncs
# once it is back, and the cuts after the first fall inside that resync.
MAX=${FERRY_REPL_WRITES:-200000}
peer=10.99.0.2
www_start repl-sec
if [ "${FERRY_SEC_RESYNC:-0}" = 1 ]; then
	REPL_PRIMARY_OPTS="spool_mb 2 overflow bitmap"
else
	REPL_PRIMARY_OPTS="spool_mb 8 overflow block block_timeout 3600"
fi
repl_devices primary
repl_config primary
[ "${FERRY_SEC_RESYNC:-0}" = 1 ] && { echo 'spool_after_mb = 0'; echo 'resync = "auto"'; } >>/etc/ferry/gr.toml
ferryd_start
rm -f /tmp/stop-writing
ferry-test write --dev /dev/mapper/r0 --dev /dev/mapper/r1 --count "$MAX" --blocks $REPL_BLOCKS \
	--seed 7 --log /dev/null --stop-file /tmp/stop-writing >/tmp/w.out 2>&1 &
wp=$!
# The secondary's last boot serves "stop"; the cuts take minutes.
fetch stop /tmp/stop 2400 || { touch /tmp/stop-writing; fail "the secondary's last boot never came"; }
touch /tmp/stop-writing
wait $wp || { cat /tmp/w.out; fail "writer"; }
N=$(sed -n 's/^writer|writes=\([0-9]*\)$/\1/p' /tmp/w.out)
[ -n "$N" ] && [ "$N" -gt 0 ] || fail "writer: $(cat /tmp/w.out)"
ok "$N dependent writes while the secondary was cut"
repl_drained 1800 || { ferryctl status gr; fail "not drained: r0 $c0/$a0 r1 $c1/$a1"; }
# A resync's span is over once the secondary has applied it (APPLIED).
for t in $(seq 1 1200); do
	set -- $(dm status r0); m0=$8
	set -- $(dm status r1); m1=$8
	[ "$m0 $m1" = "replicating replicating" ] && break
	[ "${FERRY_SEC_RESYNC:-0}" = 1 ] || break
	sleep 0.5
done
[ "$m0 $m1" = "replicating replicating" ] || { dm status; tail -20 /tmp/ferryd.log; fail "the primary went $m0 $m1"; }
n0=$(grep -c 'connected.*device=0' /tmp/ferryd.log || true)
ok "drained, still replicating; stream 0 connected $n0 times"
if [ "${FERRY_SEC_RESYNC:-0}" = 1 ]; then
	nr=$(dmesg | grep -c 'resync begins' || true)
	[ "$nr" -ge 1 ] || fail "the group never resynced while the secondary was cut"
	ok "$nr resyncs began; $(dmesg | grep -c 'resync copied' || true) copied"
fi
publish done "$N $(sums)"
fetch result /tmp/result 900 || fail "no result from the secondary"
cat /tmp/result
grep -q '^PASS' /tmp/result || fail "secondary: $(cat /tmp/result)"
touch $WWW/bye
sleep 5  # time for the secondary to see it
ok "the secondary, cut ${FERRY_CUTS:-?} times, verified the replica"
sleep 2
