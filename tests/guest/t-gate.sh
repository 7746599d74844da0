# Log before data: a log device and two data devices under interleaved
# dependent writes, with the reader delaying its log acknowledgements.  The
# reader fails if a data record arrives before every log record below it
# was acknowledged; log records must overtake the data records they block.
ferry_load
meta_wipe /dev/vdc
for i in 0 1 2; do
	dm create d$i --table "0 65536 linear /dev/vda $((i * 65536))" || fail "d$i"
	dm create m$i --table "0 8192 linear /dev/vdc $((i * 8192))" || fail "m$i"
done
dm create L --table "0 65536 ferry /dev/mapper/d0 /dev/mapper/m0 6 group gg device_id 0 role log" || fail "L"
dm create A --table "0 65536 ferry /dev/mapper/d1 /dev/mapper/m1 4 group gg device_id 1" || fail "A"
dm create B --table "0 65536 ferry /dev/mapper/d2 /dev/mapper/m2 6 group gg device_id 2 role data" || fail "B"
[ "$(status_field L 4)" = log ] && [ "$(status_field A 4)" = data ] || fail "roles: $(dm status)"
reader_start gg /tmp/g.log --log-ack-delay-ms 200
ferry-test write --dev /dev/mapper/L --dev /dev/mapper/A --dev /dev/mapper/B --count 300 --blocks 2048 --log /tmp/gw.log >/dev/null || fail "writer"
reader_stop
ferry-test check --writes /tmp/gw.log --records /tmp/g.log --ids 0,1,2 || fail "check"
# Overtaking: some log record was read before a data record of lower order.
awk '/^rec kind=Write/ {
	split($0, f, " "); for (i in f) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
	if (v["role"] == "log") { if (v["group_seq"] + 0 > maxlog) maxlog = v["group_seq"] + 0 }
	else if (v["group_seq"] + 0 < maxlog) over++
} END { exit over > 0 ? 0 : 1 }' /tmp/g.log || fail "no log record overtook a waiting data record"
ok "300 interleaved writes: data waited for log acknowledgements, log records led"
dm remove B; dm remove A; dm remove L
for i in 0 1 2; do dm remove d$i; dm remove m$i; done
