# Checkpoint markers at the configured rate in every stream, on demand by
# message, and consistency points with their label.
ferry_load
meta_wipe /dev/vdc
for i in 0 1; do
	dm create d$i --table "0 65536 linear /dev/vda $((i * 65536))" || fail "d$i"
	dm create m$i --table "0 8192 linear /dev/vdc $((i * 8192))" || fail "m$i"
done
dm create k0 --table "0 65536 ferry /dev/mapper/d0 /dev/mapper/m0 6 group gk checkpoint_ms 100 role log" || fail "k0"
dm create k1 --table "0 65536 ferry /dev/mapper/d1 /dev/mapper/m1 4 group gk device_id 1" || fail "k1"
dm create bad --table "0 65536 ferry /dev/mapper/d1 /dev/mapper/m1 6 group gk device_id 2 checkpoint_ms 200" &&
	fail "accepted a device with another checkpoint_ms"
reader_start gk /tmp/k.log
t0=$(date +%s)
fio --name=k --filename=/dev/mapper/k1 --rw=randwrite --bs=4k --size=16M --time_based --runtime=3 \
	--direct=1 --ioengine=psync --thinktime=2000 >/dev/null 2>&1 || fail "fio"
dm message k0 0 checkpoint || fail "message checkpoint"
dm message k1 0 cp before-upgrade || fail "message cp"
dm message k0 0 cp "two words" 2>/dev/null && fail "accepted a message with two labels"
dm message k0 0 bogus 2>/dev/null && fail "accepted an unknown message"
reader_stop
n0=$(grep -c 'kind=Checkpoint dev=0' /tmp/k.log || true) n1=$(grep -c 'kind=Checkpoint dev=1' /tmp/k.log || true)
[ "$n0" -ge 10 ] && [ "$n0" = "$n1" ] || fail "checkpoints per stream: $n0 and $n1 (want >= 10, equal)"
ok "$n0 checkpoint markers in each stream over about 3 s at checkpoint_ms 100"
# Epochs: markers close 1, 2, 3... and each record carries the open epoch.
awk '/^rec / { split($0, f, " "); for (i in f) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
	d = v["dev"]; e = v["epoch"] + 0
	if (e < last[d]) { print "epoch went back: " $0; bad = 1 }
	if (v["kind"] == "Checkpoint") { if (e != closed[d] + 1) { print "marker skipped an epoch: " $0; bad = 1 }; closed[d] = e }
	else if (e != closed[d] + 1) { print "record outside its interval: " $0; bad = 1 }
	last[d] = e } END { exit bad }' /tmp/k.log || fail "epochs"
ok "every record belongs to the interval its stream's next marker closes"
grep -q 'kind=ConsistencyPoint dev=0 .*label=before-upgrade' /tmp/k.log &&
	grep -q 'kind=ConsistencyPoint dev=1 .*label=before-upgrade' /tmp/k.log || fail "consistency point"
ok "a consistency point in every stream with its label"
dm remove k1; dm remove k0
for i in 0 1; do dm remove d$i; dm remove m$i; done
