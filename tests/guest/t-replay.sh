# Power cuts that drop what was not flushed (G3, G4), checked from the
# whole write stream: one dm-log-writes device over vdb, split by two
# linear devices into a ferry target's data device (32 MiB) and its meta
# device (8 MiB), so that every write of both reaches the log on vda in one
# order with its flush and FUA flags.  `ferry-test replay-check` then asks
# at every point of the log whether a power cut that kept any subset of
# the writes not yet flushed could break the guarantee: for a primary under
# random and dependent writes with a reader acknowledging (so bits clear
# and are set again), every data write's chunks are marked durably before
# it (G3); for a secondary applying intervals, the mark is durable before
# each write of its interval and cleared only once they all are (G4).
# FERRY_REPLAY_MB (make soak): MiB of fio writes, half 4 KiB, half 64 KiB
# (default 12); FERRY_REPLAY_LOG: the log device (default vda).
ferry_load
D=65536 M=16384
LOG=${FERRY_REPLAY_LOG:-/dev/vda}
HALF=$(( ${FERRY_REPLAY_MB:-12} / 2 ))
stack() {  # a fresh log, then the two devices over it
	dd if=/dev/zero of=$LOG bs=1M count=1 oflag=direct 2>/dev/null
	dm create lw --table "0 $((D + M)) log-writes /dev/vdb $LOG" || fail "create log-writes"
	dm create lwd --table "0 $D linear /dev/mapper/lw 0" || fail "create the data device"
	dm create lwm --table "0 $M linear /dev/mapper/lw $D" || fail "create the meta device"
	dd if=/dev/zero of=/dev/mapper/lwm bs=1M count=8 oflag=direct conv=fsync 2>/dev/null || fail "wipe meta"
	dd if=/dev/zero of=/dev/mapper/lwd bs=1M count=4 oflag=direct conv=fsync 2>/dev/null || fail "wipe data"
	# (Writes without FUA reach the log at the next flush: the wipes are
	# flushed before the mark that starts the check.)
	dm message lw 0 mark start || fail "mark"
}
unstack() {  # every write logged (a flush), then the log closed
	dd if=/dev/null of=/dev/mapper/lwd conv=fsync,notrunc 2>/dev/null || fail "flush"
	dm message lw 0 mark end || fail "mark end"
	dm remove lwd && dm remove lwm && dm remove lw || fail "remove the stack"
}
check() {  # check <primary|secondary>
	o=; [ "$1" = secondary ] && o=--secondary
	ferry-test replay-check --log $LOG --data-start 0 --data-sectors $D --meta-start $D \
		--meta-sectors $M --from-mark start $o >/tmp/replay.out 2>&1 || { cat /tmp/replay.out; fail "$1: replay check"; }
	ok "$1: $(cat /tmp/replay.out)"
}

stack
dm create p0 --table "0 $D ferry /dev/mapper/lwd /dev/mapper/lwm 4 group gl checkpoint_ms 50" || fail "create primary"
reader_start gl /tmp/rl.log
fio_verify --name=g3 --filename=/dev/mapper/p0 --rw=randwrite --bs=4k --iodepth=8 --size=32M --io_size=${HALF}M
ferry-test write --dev /dev/mapper/p0 --count 300 --blocks 8192 --seed 11 --log /dev/null >/dev/null || fail "dependent writes"
fio_verify --name=g3b --filename=/dev/mapper/p0 --rw=randwrite --bs=64k --iodepth=4 --size=32M --io_size=${HALF}M
reader_stop
[ "$(status_field p0 5)" = replicating ] || fail "the primary went $(status_field p0 5)"
dm remove p0 || fail "remove primary"
unstack
check primary

stack
dm create s0 --table "0 $D ferry /dev/mapper/lwd /dev/mapper/lwm 6 mode secondary group gs device_id 0" || fail "create secondary"
C="ferry-test cmd --dev /dev/ferry/gs --group gs"
for e in $(seq 1 10); do
	[ "$($C apply-begin $e)" = "cmd|ok|16" ] || fail "apply-begin $e"
	for k in 1 2 3 4 5 6; do
		r=$($C record $e 0 $((e * 10 + k)) $(( (e * 977 + k * 131) % 8192 )))
		case "$r" in "cmd|ok|"*) ;; *) fail "record $e/$k: $r" ;; esac
	done
	[ "$($C apply-end $e)" = "cmd|ok|16" ] || fail "apply-end $e"
done
dm remove s0 || fail "remove secondary"
unstack
check secondary
