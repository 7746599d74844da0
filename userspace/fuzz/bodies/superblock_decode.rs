//! Superblock decoder (the meta device's slots, read by the kernel when a
//! device joins its group): arbitrary bytes are rejected or decode to a
//! superblock that re-encodes to the same bytes and whose counters can be
//! continued from without overflow.  The first byte selects raw bytes
//! (even) or bytes whose checksum the harness recomputes first (odd), so
//! that the field rules behind the checksum are reached.

use ferry_core::digest::crc32c;
use ferry_core::meta::{Superblock, NUMBER_MAX, SB_LEN};
use ferry_core::FastDigest;

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let d = &FastDigest;
    let mut buf = rest.to_vec();
    if mode & 1 == 1 && buf.len() >= SB_LEN {
        let c = crc32c(d, &buf[..SB_LEN - 4]);
        buf[SB_LEN - 4..SB_LEN].copy_from_slice(&c.to_le_bytes());
    }
    let decoded = Superblock::decode(d, &buf);
    if let Ok(sb) = decoded {
        let mut out = vec![0u8; SB_LEN];
        sb.encode(d, &mut out).unwrap();
        assert_eq!(&out[..], &buf[..SB_LEN]);
        for v in [
            sb.generation,
            sb.acked_dev_seq,
            sb.numbers.group_seq,
            sb.numbers.epoch,
            sb.numbers.timestamp_ns,
            sb.numbers.cp_id,
            sb.numbers.cp_first,
        ] {
            assert!(v <= NUMBER_MAX && v.checked_add(1).is_some());
        }
    }
    // Two slots: the choice is one of them, or none, or the refusal.
    let other = Superblock::decode(d, rest);
    match Superblock::choose(decoded, other) {
        Ok(Some(sb)) => assert!(decoded == Ok(sb) || other == Ok(sb)),
        Ok(None) => assert!(decoded.is_err() && other.is_err()),
        Err(e) => assert!(decoded == Err(e) || other == Err(e)),
    }
}
