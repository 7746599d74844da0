//! Tests of [`super`] (record.rs): encoding, decoding, every check, the
//! test vectors.
#![allow(clippy::cast_possible_truncation)]

use super::*;
use crate::digest::SoftDigest;

fn key() -> GroupKey {
    GroupKey::derive(&SoftDigest, 7, b"secret").unwrap()
}

fn write_header() -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Write,
        flags: Flags(Flags::FUA),
        group_id: 7,
        device_id: 2,
        payload_len: 1024,
        dev_seq: 5,
        group_seq: 11,
        timestamp_ns: 123_456_789,
        epoch: 3,
        sector: 4096,
        nr_sectors: 2,
    }
}

fn encoded() -> ([u8; 1024 + HEADER_LEN + TAIL_LEN], RecordHeader) {
    let h = write_header();
    let payload: [u8; 1024] = core::array::from_fn(|i| i as u8);
    let mut buf = [0u8; 1024 + HEADER_LEN + TAIL_LEN];
    let n = encode_record(&h, &payload, &key(), &SoftDigest, &mut buf).unwrap();
    assert_eq!(n, buf.len());
    (buf, h)
}

#[test]
fn pinned_vector() {
    let k = GroupKey::derive(&SoftDigest, 1, vector::SECRET).unwrap();
    assert_eq!((k.head, k.tail), (vector::HEAD_KEY, vector::TAIL_KEY));
    let payload = [vector::PAYLOAD_BYTE; 512];
    assert_eq!(crc32c(&SoftDigest, &payload), vector::PAYLOAD_CRC);
    let mut head = [0u8; HEADER_LEN];
    encode_header(
        &vector::header(),
        vector::PAYLOAD_CRC,
        &k,
        &SoftDigest,
        &mut head,
    )
    .unwrap();
    assert_eq!(head, vector::HEADER);
    let mut tail = [0u8; TAIL_LEN];
    encode_tail(&head, &k, &SoftDigest, &mut tail);
    assert_eq!(tail, vector::TAIL);
    let dh = decode_header(&vector::HEADER, &k, &SoftDigest).unwrap();
    assert_eq!(dh.header, vector::header());
    verify_payload(&dh, &SoftDigest, [&payload[..100], &payload[100..]]).unwrap();
    verify_tail(&dh, &vector::TAIL, &k, &SoftDigest).unwrap();
}

#[test]
fn roundtrip() {
    let (buf, h) = encoded();
    let r = decode_record(&buf, &key(), &SoftDigest).unwrap();
    assert_eq!(r.header, h);
    assert_eq!(r.payload.len(), 1024);
    assert_eq!(r.payload[5], 5);
    assert_eq!(r.len, buf.len());
}

#[test]
fn every_truncation_is_rejected() {
    let (buf, _) = encoded();
    for n in 0..buf.len() {
        assert!(
            matches!(
                decode_record(&buf[..n], &key(), &SoftDigest),
                Err(RecordError::Truncated { .. })
            ),
            "{n}"
        );
    }
}

#[test]
fn every_bit_flip_is_rejected() {
    let (buf, _) = encoded();
    for i in 0..buf.len() {
        for bit in 0..8 {
            let mut b = buf;
            b[i] ^= 1 << bit;
            assert!(decode_record(&b, &key(), &SoftDigest).is_err(), "{i}/{bit}");
        }
    }
}

#[test]
fn typed_errors() {
    let (buf, _) = encoded();
    let mut b = buf;
    b[0] = b'X';
    assert_eq!(
        decode_record(&b, &key(), &SoftDigest),
        Err(RecordError::BadMagic)
    );
    let mut b = buf;
    b[4] = 2;
    assert_eq!(
        decode_record(&b, &key(), &SoftDigest),
        Err(RecordError::UnsupportedVersion(2))
    );
    let mut b = buf;
    b[200] ^= 1;
    assert_eq!(
        decode_record(&b, &key(), &SoftDigest),
        Err(RecordError::PayloadChecksum)
    );
    let mut b = buf;
    let n = b.len();
    b[n - 1] ^= 1;
    assert_eq!(
        decode_record(&b, &key(), &SoftDigest),
        Err(RecordError::TailSignature)
    );
    let other = GroupKey::derive(&SoftDigest, 7, b"other").unwrap();
    assert_eq!(
        decode_record(&buf, &other, &SoftDigest),
        Err(RecordError::HeadSignature)
    );
    let other_group = GroupKey::derive(&SoftDigest, 8, b"secret").unwrap();
    assert_eq!(
        decode_record(&buf, &other_group, &SoftDigest),
        Err(RecordError::WrongGroup)
    );
}

/// Re-encode a header with a fresh checksum so the field check is hit.
fn with_field(buf: &[u8], at: usize, v: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&buf[..HEADER_LEN]);
    h[at..at + v.len()].copy_from_slice(v);
    let crc = crc32c(&SoftDigest, &h[..off::HEADER_CRC]);
    set_u32(&mut h, off::HEADER_CRC, crc);
    h
}

#[test]
fn field_rules() {
    let (buf, _) = encoded();
    let k = key();
    let d = SoftDigest;
    assert_eq!(
        decode_header(&with_field(&buf, off::KIND, &[9]), &k, &d),
        Err(RecordError::UnknownKind(9))
    );
    assert_eq!(
        decode_header(&with_field(&buf, off::FLAGS, &[0x80]), &k, &d),
        Err(RecordError::UnknownFlags(0x80))
    );
    assert_eq!(
        decode_header(&with_field(&buf, off::RESERVED, &[1]), &k, &d),
        Err(RecordError::ReservedNotZero)
    );
    assert_eq!(
        decode_header(
            &with_field(&buf, off::PAYLOAD_LEN, &513u32.to_le_bytes()),
            &k,
            &d
        ),
        Err(RecordError::LengthMismatch)
    );
    assert_eq!(
        decode_header(
            &with_field(&buf, off::SECTOR, &u64::MAX.to_le_bytes()),
            &k,
            &d
        ),
        Err(RecordError::SectorOverflow)
    );
    assert_eq!(
        decode_header(&with_field(&buf, off::DEV_SEQ, &0u64.to_le_bytes()), &k, &d),
        Err(RecordError::ZeroSequence)
    );
    let mut b = buf;
    b[off::HEADER_CRC] ^= 1;
    assert_eq!(decode_header(&b, &k, &d), Err(RecordError::HeaderChecksum));
    // A correct checksum over a changed field still fails the signature.
    let b = with_field(&buf, off::TIMESTAMP, &[1]);
    assert_eq!(decode_header(&b, &k, &d), Err(RecordError::HeadSignature));
}

#[test]
fn tail_from_another_record_is_rejected() {
    let (a, _) = encoded();
    let mut h = write_header();
    h.dev_seq += 1;
    let payload = [0u8; 1024];
    let mut b = [0u8; 1024 + HEADER_LEN + TAIL_LEN];
    encode_record(&h, &payload, &key(), &SoftDigest, &mut b).unwrap();
    let mut mixed = a;
    let n = mixed.len();
    mixed[n - TAIL_LEN..].copy_from_slice(&b[n - TAIL_LEN..]);
    assert_eq!(
        decode_record(&mixed, &key(), &SoftDigest),
        Err(RecordError::TailSignature)
    );
}

#[test]
fn markers_and_consistency_points() {
    let k = key();
    let mut h = RecordHeader::new(RecordKind::Checkpoint);
    h.group_id = 7;
    h.dev_seq = 1;
    h.group_seq = 1;
    h.epoch = 4;
    let mut buf = [0u8; 256];
    let n = encode_record(&h, &[], &k, &SoftDigest, &mut buf).unwrap();
    assert_eq!(n, HEADER_LEN + TAIL_LEN);
    assert_eq!(decode_record(&buf[..n], &k, &SoftDigest).unwrap().header, h);

    let cp = ConsistencyPayload {
        cp_id: 9,
        first_dev_seq: 1,
        label: Label::new(b"nightly-backup").unwrap(),
    };
    let mut p = [0u8; CP_FIXED_LEN + LABEL_MAX];
    let plen = cp.encode(&mut p).unwrap();
    let mut h = RecordHeader::new(RecordKind::ConsistencyPoint);
    h.group_id = 7;
    h.dev_seq = 2;
    h.group_seq = 2;
    h.payload_len = cp.len();
    let n = encode_record(&h, &p[..plen], &k, &SoftDigest, &mut buf).unwrap();
    let r = decode_record(&buf[..n], &k, &SoftDigest).unwrap();
    assert_eq!(r.consistency(), Some(cp));
    assert_eq!(Label::new(b""), Err(RecordError::BadLabel));
    assert_eq!(Label::new(b"a b"), Err(RecordError::BadLabel));
    assert_eq!(Label::new(&[b'x'; 65]), Err(RecordError::BadLabel));
}

#[test]
fn streaming_payload_verification() {
    let (buf, _) = encoded();
    let dh = decode_header(&buf, &key(), &SoftDigest).unwrap();
    let p = &buf[HEADER_LEN..HEADER_LEN + 1024];
    verify_payload(&dh, &SoftDigest, [&p[..100], &p[100..512], &p[512..]]).unwrap();
    assert_eq!(
        verify_payload(&dh, &SoftDigest, [&p[..100]]),
        Err(RecordError::LengthMismatch)
    );
    verify_tail(&dh, &buf[HEADER_LEN + 1024..], &key(), &SoftDigest).unwrap();
}

/// The span flags belong to checkpoint records, and `RESYNC_INITIAL` only
/// beside `RESYNC_BEGIN`.
#[test]
fn span_flags_only_on_checkpoints_and_full_only_with_begin() {
    let mut cp = RecordHeader::new(RecordKind::Checkpoint);
    (cp.dev_seq, cp.group_seq, cp.epoch) = (3, 7, 2);
    for f in [
        Flags::RESYNC_BEGIN,
        Flags::RESYNC_END,
        Flags::RESYNC_BEGIN | Flags::RESYNC_INITIAL,
    ] {
        cp.flags = Flags(f);
        assert_eq!(cp.validate(), Ok(()), "{f:#x}");
    }
    for f in [
        Flags::RESYNC_INITIAL,
        Flags::RESYNC_END | Flags::RESYNC_INITIAL,
    ] {
        cp.flags = Flags(f);
        assert_eq!(cp.validate(), Err(RecordError::UnknownFlags(f)), "{f:#x}");
    }
    let mut w = write_header();
    w.flags = Flags(Flags::RESYNC_BEGIN | Flags::RESYNC_INITIAL);
    assert_eq!(w.validate(), Err(RecordError::UnknownFlags(0x50)));
}
