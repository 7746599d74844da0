# Secondary power cuts (tests/repl-sec-crash.sh), secondary side; one boot
# per run of this test, ferry.cut=1..K (the host cuts the power once this
# guest armed) and then ferry.cut=final.  The remote log lives on ext4 on
# /dev/vde; the devices and the meta devices persist across the cuts.  At
# every boot after the first, the devices come back with the mark found on
# the meta devices (an interval in progress when the power went is redone
# by ferryd from the remote log).  The final boot waits for the primary's
# drain, promotes and checks: every write present (prefix checker) and
# checksums equal to the primary's.  ferry.sec_resync=1: the primary's
# group goes ahead while this guest is down, and every boot but the first
# arms once the resync's span is open, so that
# the cut falls inside the span (the next boot recovers the span from the
# remote log and goes on staging it).
peer=10.99.0.1
mkdir -p /var/lib/ferry
if [ "${FERRY_CUT:-1}" = 1 ]; then
	/sbin/mke2fs -q -t ext4 -F /dev/vde || fail "mkfs"
	mount -t ext4 /dev/vde /var/lib/ferry || fail "mount"
	repl_devices secondary
else
	mount -t ext4 /dev/vde /var/lib/ferry || fail "mount after the cut"
	repl_devices secondary keep
	set -- $(dm status r0)
	ok "boot ${FERRY_CUT} (after a power cut): devices loaded $8, interval $9 applied, ${10} in progress"
	# No interval was being applied at the cut: the devices hold the last
	# one applied, which must be a prefix of the primary's writes (G1; a
	# cut inside a resync span finds the point from before the span).
	if [ "$8" = idle ]; then
		ferry-test prefix-check --dev /dev/mapper/r0 --dev /dev/mapper/r1 --blocks $REPL_BLOCKS --seed 7 --min 1 >/tmp/pc.out 2>&1 ||
			fail "boot ${FERRY_CUT}: the devices after the cut: $(cat /tmp/pc.out)"
		ok "boot ${FERRY_CUT}: the devices after the cut hold a prefix: $(cat /tmp/pc.out)"
	fi
fi
repl_config secondary /var/lib/ferry/gr
ferryd_start
grep -q "redo" /tmp/ferryd.log && ok "ferryd redoes the interval that was in progress"
if [ "$FERRY_CUT" != final ]; then
	# Armed once three more intervals are applied; the primary writes
	# until the last boot, so they come unless something is wrong: then
	# say what, at most 240 s (of guest uptime) later.
	epoch() { e=$(fstatus applied_epoch); echo "${e:-0}"; }
	if [ "${FERRY_SEC_RESYNC:-0}" = 1 ] && [ "$FERRY_CUT" != 1 ]; then
		end=$(( $(cut -d. -f1 /proc/uptime) + 300 ))
		until [ "$(fstatus resync_span_open)" = true ]; do
			[ "$(cut -d. -f1 /proc/uptime)" -lt $end ] || {
				ferryctl status gr || true; tail -20 /tmp/ferryd.log
				fail "boot ${FERRY_CUT}: no resync span open in 300 s"
			}
			sleep 0.2
		done
		ok "boot ${FERRY_CUT}: resync span open, $(fstatus resync_span_intervals) intervals staged, applied $(epoch); armed"
		echo FERRY-ARMED
		sleep 100000
		fail "still running"
	fi
	base=$(fstatus applied_epoch)
	[ -n "$base" ] || { tail -20 /tmp/ferryd.log; fail "no status from ferryd"; }
	end=$(( $(cut -d. -f1 /proc/uptime) + 240 ))
	while [ "$(epoch)" -lt $((base + 3)) ]; do
		[ "$(cut -d. -f1 /proc/uptime)" -lt $end ] || {
			ferryctl status gr || true; tail -20 /tmp/ferryd.log
			fail "boot ${FERRY_CUT}: applied $(epoch), not 3 intervals beyond $base in 240 s"
		}
		sleep 0.2
	done
	ok "boot ${FERRY_CUT}: intervals $base to $(epoch) applied; armed"
	echo FERRY-ARMED
	sleep 100000
	fail "still running"
fi
www_start repl-sec
# The cuts are over: the primary stops writing and drains.
touch $WWW/stop
fetch done /tmp/done 900 || fail "the primary never finished"
set -- $(cat /tmp/done); n=$1 p0=$2 p1=$3
repl_applied 240 || res "FAIL: not applied: $(fstatus lag_records | tr '\n' ' ')"
ferryctl status gr || true  # exits 2 when degraded
ferryctl promote gr >/tmp/promote.out 2>&1 || res "FAIL: promote: $(cat /tmp/promote.out)"
if ferry-test prefix-check --dev /dev/mapper/r0 --dev /dev/mapper/r1 --blocks $REPL_BLOCKS --seed 7 --min "$n" >/tmp/pc.out 2>&1; then
	set -- $(sums)
	if [ "$1 $2" = "$p0 $p1" ]; then
		res "PASS: $(cat /tmp/pc.out); checksums equal"
	else
		res "FAIL: checksums differ: secondary $1 $2, primary $p0 $p1"
	fi
else
	res "FAIL: $(cat /tmp/pc.out)"
fi
cat $WWW/result
await_peer_file "$peer" bye
grep -q '^PASS' $WWW/result || fail "$(cat $WWW/result)"
ok "replica verified after the power cuts"
umount /var/lib/ferry || true
