//! Record decoder: arbitrary bytes must be rejected with a typed error or
//! decode to a record that re-encodes to the same bytes.
//!
//! The first input byte selects a mode. Mode 0 feeds the rest as it is. In
//! mode 1 the harness first rewrites the header checksum, head signature and
//! tail signature of the input so that the field rules, payload checksum and
//! tail checks behind them are explored too.

use ferry_core::digest::crc32c;
use ferry_core::record::{
    decode_header, decode_record, encode_record, off, GroupKey, HEADER_LEN, TAIL_LEN,
};
use ferry_core::{Digest, FastDigest};

fn key() -> GroupKey {
    GroupKey::derive(&FastDigest, 0x6665_7272_7900_0001, b"fuzz").unwrap()
}

fn reseal(buf: &mut [u8], k: &GroupKey) {
    if buf.len() < HEADER_LEN {
        return;
    }
    let crc = crc32c(&FastDigest, &buf[..off::HEADER_CRC]);
    buf[off::HEADER_CRC..off::HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    let sig = FastDigest.xxh64(k.head, &buf[..off::HEAD_SIG]);
    buf[off::HEAD_SIG..HEADER_LEN].copy_from_slice(&sig.to_le_bytes());
    let plen = u32::from_le_bytes(
        buf[off::PAYLOAD_LEN..off::PAYLOAD_LEN + 4]
            .try_into()
            .unwrap(),
    );
    let tail_at = HEADER_LEN + plen as usize;
    if buf.len() >= tail_at + TAIL_LEN {
        let mut m = [0u8; 24];
        m[..16].copy_from_slice(&buf[tail_at..tail_at + 16]);
        m[16..].copy_from_slice(&sig.to_le_bytes());
        let t = FastDigest.xxh64(k.tail, &m);
        buf[tail_at + 16..tail_at + 24].copy_from_slice(&t.to_le_bytes());
    }
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let k = key();
    let mut buf = rest.to_vec();
    if mode & 1 == 1 {
        reseal(&mut buf, &k);
    }
    let _ = decode_header(&buf, &k, &FastDigest);
    if let Ok(r) = decode_record(&buf, &k, &FastDigest) {
        let mut out = vec![0u8; r.len];
        let n = encode_record(&r.header, r.payload, &k, &FastDigest, &mut out).unwrap();
        assert_eq!(n, r.len);
        assert_eq!(&out[..], &buf[..r.len]);
        let _ = r.consistency();
    }
}
