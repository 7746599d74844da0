# Second half of a crash point: after the power cut, the primary loads its
# meta device: every write that completed and was not acknowledged lies in
# a chunk the meta device marks (G3), and the device is ahead with those
# chunks dirty.
ferry_load
bits=$(dd if=/dev/vdb bs=4k skip=256 count=1 iflag=direct 2>/dev/null | od -An -v -tu1 | tr -s ' ' '\n' |
	awk 'NF { for (b = 1; b < 256; b *= 2) if (int($1 / b) % 2) n++ } END { print n + 0 }')
ferry-test crash-check --writes /dev/vdc:0 --acks /dev/vdc:33554432 --meta /dev/vdb --chunk-kb 64 || fail "G3"
dm create cx --table "0 65536 ferry /dev/vda /dev/vdb 6 group gx checkpoint_ms 200 chunk_kb 64" || fail "re-create"
set -- $(dm status cx)
[ "$8" = ahead ] && [ "${15}" = "$bits" ] || fail "after the crash: $* (the meta device marks $bits chunks)"
ok "$bits chunks marked on disk; device ahead with $bits dirty chunks"
dm remove cx
