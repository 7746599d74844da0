# Secondary power cuts (tests/repl-sec-crash.sh), primary side: dependent
# writes (seed 7) shipped by ferryd while the secondary guest loses power
# and comes back; once everything is acknowledged, the checksums go to the
# secondary, whose verdict this test reports.
N=${FERRY_REPL_WRITES:-1500}
peer=10.99.0.2
mkdir -p /tmp/www
httpd -p 7000 -h /tmp/www || fail "httpd"
fetch() { for t in $(seq 1 "$3"); do timeout 20 wget -q -O "$2" "http://$peer:7000/$1" 2>/dev/null && return 0; sleep 1; done; return 1; }
sums() { for d in /dev/vda /dev/vdb; do dd if=$d bs=1M count=8 iflag=direct 2>/dev/null | md5sum | cut -c1-32; done | tr '\n' ' '; }
repl_devices primary
repl_config primary
ferryd_start
ferry-test write --dev /dev/mapper/r0 --dev /dev/mapper/r1 --count "$N" --blocks $REPL_BLOCKS \
	--seed 7 --log /dev/null >/tmp/w.out 2>&1 || { cat /tmp/w.out; fail "writer"; }
ok "$N dependent writes"
stable=0
for t in $(seq 1 1800); do
	set -- $(dm status r0); c0=${10} a0=${12}
	set -- $(dm status r1); c1=${10} a1=${12}
	if [ "$c0" = "$a0" ] && [ "$c1" = "$a1" ]; then
		stable=$((stable + 1)); [ $stable -ge 3 ] && break
	else
		stable=0
	fi
	sleep 0.5
done
[ $stable -ge 3 ] || { ferryctl status gr; fail "not drained: r0 $c0/$a0 r1 $c1/$a1"; }
set -- $(dm status r0)
[ "$8" = replicating ] || fail "the primary went $8"
n0=$(grep -c 'connected.*device=0' /tmp/ferryd.log || true)
ok "drained, still replicating; stream 0 connected $n0 times"
echo "$N $(sums)" >/tmp/www/done
fetch result /tmp/result 900 || fail "no result from the secondary"
cat /tmp/result
grep -q '^PASS' /tmp/result || fail "secondary: $(cat /tmp/result)"
touch /tmp/www/bye
sleep 5  # time for the secondary to see it
ok "the secondary, cut ${FERRY_CUTS:-?} times, verified the replica"
sleep 2
killall httpd 2>/dev/null || true
