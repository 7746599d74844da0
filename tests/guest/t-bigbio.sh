# Bios above the target's 1 MiB (O_DIRECT writes of 4 and 16 MiB, and
# mkfs.ext4 with its discards) on a 256 MiB primary with a reader attached:
# device-mapper splits them at the target's max_io_len, so each becomes
# records of at most 1 MiB; every record reaches the reader and is
# acknowledged, the spool drains and the group stays replicating.
ferry_load
meta_wipe /dev/vdc
S=$(sectors /dev/vda)
dm create b0 --table "0 $S ferry /dev/vda /dev/vdc 6 group gb spool_mb 128 checkpoint_ms 100" || fail "create"
reader_start gb /tmp/b.log
head -c 16777216 /dev/urandom >/tmp/big
dd if=/tmp/big of=/dev/mapper/b0 bs=4M count=4 oflag=direct 2>/dev/null || fail "4 MiB writes"
dd if=/tmp/big of=/dev/mapper/b0 bs=16M count=1 seek=2 oflag=direct 2>/dev/null || fail "a 16 MiB write"
check_pattern /dev/vda 0 /tmp/big 16
check_pattern /dev/vda 32 /tmp/big 16
ok "4 MiB and 16 MiB O_DIRECT writes land"
/sbin/mke2fs -q -t ext4 -F /dev/mapper/b0 || fail "mkfs.ext4"
ok "mkfs.ext4 on the 256 MiB primary"
reader_stop
grep -q '^reader|dev=0|' "$rlog.out" || fail "reader: $(cat "$rlog.out")"
set -- $(dm status b0)
[ "$8" = replicating ] || fail "the group went $8: $*"
[ "${10}" = "${12}" ] && [ "${13}" = 0 ] || fail "records left: completed ${10}, acknowledged ${12}, spool ${13} KiB"
ok "every record delivered and acknowledged: ${10} records, $(sed -n 's/.*|records=\([0-9]*\)|.*/\1/p' "$rlog.out") read"
dm remove b0 || fail "remove"
