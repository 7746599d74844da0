# Replication crash points, secondary side (tests/repl-crash.sh): for each
# point, fresh secondary devices and ferryd; the host boots a primary that
# writes until its power is cut; once the primary's streams have gone
# silent and the last complete interval is applied, promote and check G1
# (and with it G2: the log device is device 0) with the prefix checker.
points=${FERRY_POINTS:-1}
pass=0
for pt in $(seq 1 "$points"); do
	killall ferryd 2>/dev/null || true
	sleep 0.3
	dm remove_all >/dev/null 2>&1 || true
	rm -rf /tmp/ferry-log /tmp/ferryd.log
	repl_devices secondary
	repl_config secondary
	ferryd_start
	echo "REPL-READY $pt"
	up=0
	for t in $(seq 1 300); do
		fstatus connected | grep -q true && { up=1; break; }
		sleep 0.5
	done
	[ $up = 1 ] || fail "point $pt: the primary never connected"
	# Power cut: the streams go silent and are dropped.
	for t in $(seq 1 240); do
		fstatus connected | grep -q true || break
		sleep 0.5
	done
	fstatus connected | grep -q true && fail "point $pt: streams still connected after 120 s"
	# Let the last complete interval be applied.
	last=x
	for t in $(seq 1 60); do
		now="$(fstatus applied_epoch) $(fstatus applying_epoch)"
		[ "$now" = "$last" ] && [ "${now#* }" = 0 ] && break
		last=$now
		sleep 1
	done
	lag=$(fstatus lag_records | tr '\n' ' ')
	ferryctl promote gr >/tmp/promote.out 2>&1 || { cat /tmp/promote.out /tmp/ferryd.log; fail "point $pt: promote"; }
	if ferry-test prefix-check --dev /dev/mapper/r0 --dev /dev/mapper/r1 --blocks $REPL_BLOCKS \
		--seed $((1000 + pt)) --min 1 >/tmp/pc.out 2>&1; then
		echo "REPL-POINT $pt PASS $(cat /tmp/pc.out) applied_epoch=${last% *} not_applied=$lag"
		pass=$((pass + 1))
	else
		echo "REPL-POINT $pt FAIL $(cat /tmp/pc.out)"
		tail -20 /tmp/ferryd.log
		fail "point $pt: the promoted secondary is not a prefix"
	fi
done
ok "$pass of $points crash points: the promoted secondary held a prefix of the completion order"
