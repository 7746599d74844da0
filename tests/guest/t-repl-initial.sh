# Two guests: the initial full copy of a primary that already holds data.
# Each primary device (32 MiB; FERRY_INITIAL_MB, 256 in make soak) holds
# random data in its first quarter and zeros after; the secondary's
# devices hold other random data everywhere, so that only a copy of every
# chunk (the zeros as write-zeroes records) makes them equal.  Group gr is
# made on fresh meta devices, ferryd runs with `initial_sync = "full"` (the
# default) and `resync = "auto"`: once both streams are connected and the
# secondary holds nothing, ferryd must write START with FULL_RESYNC; the
# kernel says `resyncing` with every chunk of both devices in the resync,
# then `replicating` with no dirty chunk.  A verifying writer runs during
# the copy.  Meanwhile the secondary must say it has no consistent point
# (`inconsistent`: the span's first markers carry RESYNC_INITIAL) and
# refuse `ferryctl promote` without --force; after the span is applied it
# is consistent.  After the drain the promoted secondary's devices must
# equal the primary's (checksums of the whole devices).
peer=10.99.0.$((2 - FERRY_NODE))
www_start repl-initial
MB=${FERRY_INITIAL_MB:-32}
SECT=$(( MB * 2048 ))
CHUNKS=$(( 2 * SECT / 128 ))  # both devices, 64 KiB chunks

if [ "$FERRY_NODE" = 0 ]; then
	zero /dev/vda $MB
	zero /dev/vdb $MB
	for d in /dev/vda /dev/vdb; do
		dd if=/dev/urandom of=$d bs=1M count=$(( MB / 4 )) oflag=direct 2>/dev/null || fail "fill $d"
	done
	ferry_load
	meta_wipe /dev/vdc /dev/vdd
	REPL_SECTORS=$SECT repl_devices primary keep
	REPL_INITIAL_SYNC=full repl_config primary
	ferryd_start
	# A stream connects once it has a record: a checkpoint gives each one.
	dm message r0 0 checkpoint || fail 'checkpoint'
	t0=$(date +%s)
	seen=0 total=0
	for t in $(seq 1 600); do
		set -- $(dm status r0); m0=$8 n0=${20:-0}
		set -- $(dm status r1); m1=$8 n1=${20:-0}
		if [ "$m0" = resyncing ]; then
			[ $((n0 + n1)) -gt $total ] && total=$((n0 + n1))
			if [ $seen = 0 ]; then
				seen=1
				ok "resyncing $(( $(date +%s) - t0 )) s after the checkpoint: $((n0 + n1)) chunks"
				rm -f /tmp/w.stop
				ferry-test write --dev /dev/mapper/r0 --dev /dev/mapper/r1 --count 10000000 --blocks $(( MB * 64 )) \
					--seed 13 --log /dev/null --stop-file /tmp/w.stop >/tmp/w.out 2>&1 &
				wp=$!
				ferryctl status gr >/tmp/st.full 2>&1 || true
				publish copying 1
			fi
			[ $(( $(date +%s) - t0 )) -ge 20 ] && touch /tmp/w.stop
		elif [ $seen = 1 ] && [ "$m0 $m1" = "replicating replicating" ]; then
			break
		fi
		sleep 0.5
	done
	secs=$(( $(date +%s) - t0 ))
	[ $seen = 1 ] || { dm status; tail -30 /tmp/ferryd.log; fail "no resync began in $secs s"; }
	[ "$m0 $m1" = "replicating replicating" ] ||
		{ dm status; ferryctl status gr || true; tail -30 /tmp/ferryd.log; fail "not replicating $secs s after the start: r0 $m0, r1 $m1"; }
	touch /tmp/w.stop
	[ "$total" = $CHUNKS ] || fail "the full copy's resync held $total chunks, not the devices' $CHUNKS"
	grep -q 'resync (automatic, initial full copy.*START accepted' /tmp/ferryd.log || { tail -30 /tmp/ferryd.log; fail "ferryd logged no automatic full START"; }
	grep -q 'full copy' /tmp/st.full || { cat /tmp/st.full; fail "ferryctl status did not say a full copy runs"; }
	ok "full copy of $total chunks: replicating $secs s after the start"
	writer_drained_clean
	ok "$n writes during the copy drained, no dirty chunk left"
	primary_await_verdict "$(sums $MB)"
else
	for d in /dev/vda /dev/vdb; do
		dd if=/dev/urandom of=$d bs=1M count=$MB oflag=direct 2>/dev/null || fail "fill $d"
	done
	ferry_load
	meta_wipe /dev/vdc /dev/vdd
	REPL_SECTORS=$SECT repl_devices secondary keep
	# The remote log on a tmpfs with room for the whole copy (both
	# devices, and a record header a chunk) beyond the 64 MiB reserve: the
	# secondary refuses a resync it has no room for (/tmp's tmpfs, half of
	# the guest's memory, has not for 256 MiB devices).  Only the random
	# quarter takes memory: the zeros are write-zeroes records.
	mkdir -p /var/lib/ferry
	mount -t tmpfs -o size=$(( 2 * MB + 96 ))m,mode=0700 tmpfs /var/lib/ferry || fail "tmpfs"
	repl_config secondary /var/lib/ferry/gr
	ferryd_start
	# During the copy: no consistent point, and promote refused.
	fetch copying /tmp/copying 600 || fail "the primary never said it copies"
	for t in $(seq 1 240); do
		[ "$(fstatus inconsistent)" = true ] && break
		sleep 0.5
	done
	[ "$(fstatus inconsistent)" = true ] || res "FAIL: the secondary did not say it has no consistent point during the initial copy"
	if ferryctl promote gr >/tmp/p0.out 2>&1; then
		res "FAIL: promote during the initial copy was not refused: $(cat /tmp/p0.out)"
	elif ! grep -q -- '--force' /tmp/p0.out; then
		res "FAIL: promote refused without naming --force: $(cat /tmp/p0.out)"
	fi
	grep -q '^FAIL' "$WWW/result" 2>/dev/null ||
		ok "during the initial copy: no consistent point, promote refused: $(head -c 160 /tmp/p0.out)"
	fetch done /tmp/done 900 || fail "the primary never finished"
	set -- $(cat /tmp/done); p0=$1 p1=$2
	repl_applied 240 || res "FAIL: not applied: $(fstatus lag_records | tr '\n' ' ')"
	spans=$(fstatus resync_spans_applied)
	[ "${spans:-0}" -ge 1 ] 2>/dev/null || res "FAIL: no resync span applied at the secondary: [$spans]"
	[ "$(fstatus inconsistent)" = false ] || res "FAIL: still no consistent point after the copy: [$(fstatus inconsistent)]"
	secondary_verify_sums $MB "$p0" "$p1"
fi
