# Every bad table line is refused, with its own message, and leaves nothing.
ferry_load
D=$(sectors /dev/vda)
dm create tiny --table "0 2048 linear /dev/vdd 0" || fail "tiny meta device"
n=0
bad() {  # bad <expected message> <table line>
	n=$((n + 1))
	kmark "bad$n"
	if dm create bad --table "$2" 2>/tmp/err; then
		dm remove bad
		fail "accepted: $2"
	fi
	klog_since "bad$n" | grep -qF "ferry: $1" || { klog_since "bad$n"; fail "no message '$1' for: $2"; }
	dm info bad >/dev/null 2>&1 && fail "device left behind by: $2"
	ok "refused ($1): $2"
}
bad "Missing arguments" "0 $D ferry"
bad "Missing meta device" "0 $D ferry /dev/vda"
bad "Invalid optional argument count" "0 $D ferry /dev/vda /dev/vdc x"
bad "Invalid optional argument count" "0 $D ferry /dev/vda /dev/vdc -1"
bad "Optional argument count exceeds the arguments given" "0 $D ferry /dev/vda /dev/vdc 3 data_offset 8"
bad "Too many arguments after the optional arguments" "0 $D ferry /dev/vda /dev/vdc 0 data_offset"
bad "Unknown optional argument" "0 $D ferry /dev/vda /dev/vdc 1 bogus"
bad "Optional argument data_offset needs a value" "0 $D ferry /dev/vda /dev/vdc 1 data_offset"
bad "Invalid data_offset" "0 $D ferry /dev/vda /dev/vdc 2 data_offset 12x"
bad "Invalid data_offset" "0 $D ferry /dev/vda /dev/vdc 2 data_offset 18446744073709551616"
bad "Optional argument given twice" "0 $D ferry /dev/vda /dev/vdc 4 data_offset 0 data_offset 0"
bad "Cannot open data device" "0 $D ferry /dev/nonexistent /dev/vdc"
bad "Cannot open meta device" "0 $D ferry /dev/vda /dev/nonexistent"
bad "Data and meta device are the same device" "0 $D ferry /dev/vda /dev/vda"
bad "Data and meta device are the same device" "0 $D ferry /dev/vda $(devno /dev/vda)"
bad "Data device smaller than the target length" "0 $((D + 8)) ferry /dev/vda /dev/vdc"
bad "data_offset + target length beyond the end of the data device" "0 $D ferry /dev/vda /dev/vdc 2 data_offset 8"
bad "data_offset + target length beyond the end of the data device" "0 8 ferry /dev/vda /dev/vdc 2 data_offset 18446744073709551615"
bad "Invalid resync_mbps" "0 $D ferry /dev/vda /dev/vdc 4 group g resync_mbps 65537"
bad "Meta device too small" "0 $D ferry /dev/vda /dev/mapper/tiny"
[ $n -ge 15 ] || fail "only $n bad lines"
dm remove tiny
ok "$n bad table lines refused"
