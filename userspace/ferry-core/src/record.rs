//! Record format v1: one write (or marker) of one device of a consistency
//! group, as it travels from the primary's kernel through `ferryd`, over the
//! link and into the secondary's remote log.
//!
//! A record is `header (88 bytes) || payload (payload_len bytes) || tail
//! (24 bytes)`, every integer little-endian. Documentation/protocol.rst
//! describes it byte by byte; the offsets below are the authority.
//!
//! The head signature covers the header (which carries the payload's
//! CRC-32C); the tail signature covers the tail and the head signature. Both
//! are keyed by the group's [`GroupKey`], so a torn record (tail missing or
//! stale), a tail that belongs to another record, a record of another group
//! or a corrupted payload is rejected.

use core::fmt;

use crate::bytes::{get_u32, get_u64, set_u32, set_u64, Reader, Writer};
use crate::digest::{crc32c, Crc32c, Digest};

/// First four bytes of every record header.
pub const MAGIC: [u8; 4] = *b"FRRY";
/// First four bytes of every record tail.
pub const TAIL_MAGIC: [u8; 4] = *b"YRRF";
/// The record format version this crate writes and accepts.
pub const VERSION: u16 = 1;
/// Size of the fixed record header in bytes.
pub const HEADER_LEN: usize = 88;
/// Size of the fixed record tail in bytes.
pub const TAIL_LEN: usize = 24;
/// Sector size of `sector` and `nr_sectors`.
pub const SECTOR_SIZE: u32 = 512;
/// Largest write a single record carries (1 MiB): the target has
/// device-mapper split larger bios (`max_io_len`), and a secondary applies a
/// record in one `write(2)` of at most [`MAX_RECORD_LEN`] bytes.  One
/// number for the three, so that no record can be taken at one end and
/// refused at the other.
pub const MAX_WRITE_SECTORS: u32 = 2048;
/// Largest payload a record carries.
pub const MAX_PAYLOAD_LEN: u32 = MAX_WRITE_SECTORS * SECTOR_SIZE;
/// Largest record: header, the largest payload, tail.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_PAYLOAD_LEN as usize + TAIL_LEN;
/// Longest consistency-point label.
pub const LABEL_MAX: usize = 64;
/// Fixed part of a consistency-point payload (`cp_id`, `first_dev_seq`).
pub const CP_FIXED_LEN: usize = 16;

/// Header field offsets.
pub mod off {
    /// `magic`, 4 bytes.
    pub const MAGIC: usize = 0;
    /// `version`, u16.
    pub const VERSION: usize = 4;
    /// `kind`, u8.
    pub const KIND: usize = 6;
    /// `flags`, u8.
    pub const FLAGS: usize = 7;
    /// `group_id`, u64.
    pub const GROUP_ID: usize = 8;
    /// `device_id`, u32.
    pub const DEVICE_ID: usize = 16;
    /// `payload_len`, u32.
    pub const PAYLOAD_LEN: usize = 20;
    /// `dev_seq`, u64.
    pub const DEV_SEQ: usize = 24;
    /// `group_seq`, u64.
    pub const GROUP_SEQ: usize = 32;
    /// `timestamp_ns`, u64.
    pub const TIMESTAMP: usize = 40;
    /// `epoch`, u64.
    pub const EPOCH: usize = 48;
    /// `sector`, u64.
    pub const SECTOR: usize = 56;
    /// `nr_sectors`, u32.
    pub const NR_SECTORS: usize = 64;
    /// `payload_crc`, u32.
    pub const PAYLOAD_CRC: usize = 68;
    /// `reserved`, u32, zero.
    pub const RESERVED: usize = 72;
    /// `header_crc`, u32: CRC-32C of bytes `0..76`.
    pub const HEADER_CRC: usize = 76;
    /// `head_sig`, u64: XXH64 of bytes `0..80` seeded with the head key.
    pub const HEAD_SIG: usize = 80;
    /// Tail: `tail_magic`, 4 bytes.
    pub const TAIL_MAGIC: usize = 0;
    /// Tail: `payload_len`, u32 (copy of the header's).
    pub const TAIL_PAYLOAD_LEN: usize = 4;
    /// Tail: `group_seq`, u64 (copy of the header's).
    pub const TAIL_GROUP_SEQ: usize = 8;
    /// Tail: `tail_sig`, u64.
    pub const TAIL_SIG: usize = 16;
}

/// What a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A write; the payload is the data.
    Write = 1,
    /// A discard of `nr_sectors` sectors; no payload.
    Discard = 2,
    /// A write of zeroes over `nr_sectors` sectors; no payload.
    WriteZeroes = 3,
    /// A cache flush (ordering barrier); no payload.
    Flush = 4,
    /// The end of checkpoint interval `epoch` in this stream; no payload.
    Checkpoint = 5,
    /// A consistency point closing the records since the previous one;
    /// the payload is a [`ConsistencyPayload`].
    ConsistencyPoint = 6,
}

impl RecordKind {
    /// Parses the on-wire kind byte.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Write,
            2 => Self::Discard,
            3 => Self::WriteZeroes,
            4 => Self::Flush,
            5 => Self::Checkpoint,
            6 => Self::ConsistencyPoint,
            _ => return None,
        })
    }

    /// Whether the record changes blocks of the device.
    pub const fn modifies_data(self) -> bool {
        matches!(self, Self::Write | Self::Discard | Self::WriteZeroes)
    }
}

/// Record flags (one byte).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// The write was issued with REQ_FUA.
    pub const FUA: u8 = 0x01;
    /// The write was issued with REQ_PREFLUSH.
    pub const PREFLUSH: u8 = 0x02;
    /// The device is a `log` device of the group (see the gate).
    pub const LOG: u8 = 0x04;
    /// The record was produced by a bitmap-driven resync, not by the
    /// application's write stream.
    pub const RESYNC: u8 = 0x08;
    /// On a checkpoint record only: the intervals after the one it closes
    /// begin a resync span ([`crate::resync`]), applied as one up to the
    /// interval closed by [`Flags::RESYNC_END`].
    pub const RESYNC_BEGIN: u8 = 0x10;
    /// On a checkpoint record only: the interval it closes ends the open
    /// resync span.
    pub const RESYNC_END: u8 = 0x20;
    /// On a checkpoint record flagged [`Flags::RESYNC_BEGIN`] only: the
    /// span is the initial full copy (`START` with `FULL_RESYNC` and
    /// `INITIAL`: every chunk of every device, to a secondary whose devices
    /// held their own content), so the secondary has no consistent point
    /// until it is applied.
    pub const RESYNC_INITIAL: u8 = 0x40;
    /// Every flag this version defines.
    pub const KNOWN: u8 = 0x7f;

    /// Whether every bit of `bit` is set.
    pub const fn has(self, bit: u8) -> bool {
        self.0 & bit == bit
    }
}

/// The decoded, validated fields of a record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    /// What the record describes.
    pub kind: RecordKind,
    /// Flags.
    pub flags: Flags,
    /// Consistency group.
    pub group_id: u64,
    /// Device (stream) within the group.
    pub device_id: u32,
    /// Bytes of payload that follow the header.
    pub payload_len: u32,
    /// Position in the device's stream, contiguous from 1.
    pub dev_seq: u64,
    /// Position in the group's order (the completion order), from 1.
    pub group_seq: u64,
    /// Primary clock at sequencing, non-decreasing in `group_seq`.
    pub timestamp_ns: u64,
    /// Checkpoint interval the record belongs to (for a checkpoint record:
    /// the interval it closes).
    pub epoch: u64,
    /// First sector (512 bytes) touched.
    pub sector: u64,
    /// Number of sectors touched.
    pub nr_sectors: u32,
}

impl RecordHeader {
    /// A header with every numeric field zero and the given kind; fill in
    /// the rest before encoding.
    pub const fn new(kind: RecordKind) -> Self {
        Self {
            kind,
            flags: Flags(0),
            group_id: 0,
            device_id: 0,
            payload_len: 0,
            dev_seq: 0,
            group_seq: 0,
            timestamp_ns: 0,
            epoch: 0,
            sector: 0,
            nr_sectors: 0,
        }
    }

    /// Total encoded size of a record with this header.
    pub const fn record_len(&self) -> usize {
        HEADER_LEN
            .saturating_add(self.payload_len as usize)
            .saturating_add(TAIL_LEN)
    }

    /// Checks the rules a header must satisfy whatever its origin.
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.dev_seq == 0 || self.group_seq == 0 {
            return Err(RecordError::ZeroSequence);
        }
        if self.flags.0 & !Flags::KNOWN != 0 {
            return Err(RecordError::UnknownFlags(self.flags.0));
        }
        let span = Flags::RESYNC_BEGIN | Flags::RESYNC_END | Flags::RESYNC_INITIAL;
        if self.flags.0 & span != 0 && self.kind != RecordKind::Checkpoint {
            return Err(RecordError::UnknownFlags(self.flags.0));
        }
        if self.flags.has(Flags::RESYNC_INITIAL) && !self.flags.has(Flags::RESYNC_BEGIN) {
            return Err(RecordError::UnknownFlags(self.flags.0));
        }
        match self.kind {
            RecordKind::Write | RecordKind::Discard | RecordKind::WriteZeroes => {
                if self.nr_sectors == 0 {
                    return Err(RecordError::LengthMismatch);
                }
                if self
                    .sector
                    .checked_add(u64::from(self.nr_sectors))
                    .is_none()
                {
                    return Err(RecordError::SectorOverflow);
                }
                let expect = if self.kind == RecordKind::Write {
                    if self.nr_sectors > MAX_WRITE_SECTORS {
                        return Err(RecordError::PayloadTooLarge);
                    }
                    self.nr_sectors * SECTOR_SIZE
                } else {
                    0
                };
                if self.payload_len != expect {
                    return Err(RecordError::LengthMismatch);
                }
            }
            RecordKind::Flush | RecordKind::Checkpoint => {
                if self.sector != 0 || self.nr_sectors != 0 || self.payload_len != 0 {
                    return Err(RecordError::LengthMismatch);
                }
            }
            RecordKind::ConsistencyPoint => {
                let len = self.payload_len as usize;
                if self.sector != 0
                    || self.nr_sectors != 0
                    || len <= CP_FIXED_LEN
                    || len > CP_FIXED_LEN + LABEL_MAX
                {
                    return Err(RecordError::LengthMismatch);
                }
            }
        }
        Ok(())
    }
}

/// Why a record was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The buffer ends before the record does.
    Truncated {
        /// Bytes the record needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The header does not start with [`MAGIC`].
    BadMagic,
    /// A version this code does not know.
    UnsupportedVersion(u16),
    /// A kind byte this version does not define.
    UnknownKind(u8),
    /// Flag bits this version does not define.
    UnknownFlags(u8),
    /// The reserved field is not zero.
    ReservedNotZero,
    /// `payload_len`, `nr_sectors` and `kind` disagree, or a payload of the
    /// wrong size was given.
    LengthMismatch,
    /// A write larger than [`MAX_WRITE_SECTORS`].
    PayloadTooLarge,
    /// `sector + nr_sectors` overflows.
    SectorOverflow,
    /// `dev_seq` or `group_seq` is zero.
    ZeroSequence,
    /// The header checksum does not match.
    HeaderChecksum,
    /// The payload checksum does not match.
    PayloadChecksum,
    /// The head signature does not match (wrong key or corrupted header).
    HeadSignature,
    /// The tail does not start with [`TAIL_MAGIC`].
    BadTail,
    /// The tail's copy of `payload_len`/`group_seq` disagrees with the header.
    TailMismatch,
    /// The tail signature does not match (torn or misplaced record).
    TailSignature,
    /// The record belongs to another group.
    WrongGroup,
    /// A consistency-point label is empty, too long or not printable.
    BadLabel,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { need, have } => {
                write!(f, "record truncated: need {need} bytes, have {have}")
            }
            Self::BadMagic => f.write_str("bad record magic"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported record version {v}"),
            Self::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            Self::UnknownFlags(v) => write!(f, "unknown record flags {v:#04x}"),
            Self::ReservedNotZero => f.write_str("reserved field not zero"),
            Self::LengthMismatch => f.write_str("record length mismatch"),
            Self::PayloadTooLarge => f.write_str("record payload too large"),
            Self::SectorOverflow => f.write_str("sector + length overflows"),
            Self::ZeroSequence => f.write_str("sequence number zero"),
            Self::HeaderChecksum => f.write_str("header checksum mismatch"),
            Self::PayloadChecksum => f.write_str("payload checksum mismatch"),
            Self::HeadSignature => f.write_str("head signature mismatch"),
            Self::BadTail => f.write_str("bad record tail magic"),
            Self::TailMismatch => f.write_str("record tail disagrees with header"),
            Self::TailSignature => f.write_str("tail signature mismatch"),
            Self::WrongGroup => f.write_str("record of another group"),
            Self::BadLabel => f.write_str("bad consistency-point label"),
            Self::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

#[path = "record_key.rs"]
mod key;
pub use key::{group_id_of_name, GroupKey, SECRET_MAX};

#[path = "record_label.rs"]
mod label;
pub use label::{ConsistencyPayload, Label};

/// A header as decoded from bytes, with its checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedHeader {
    /// The validated fields.
    pub header: RecordHeader,
    /// CRC-32C of the payload, as stated by the header.
    pub payload_crc: u32,
    /// The head signature.
    pub head_sig: u64,
}

/// A whole decoded and verified record borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The validated header fields.
    pub header: RecordHeader,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// The head signature (identifies the record's content).
    pub head_sig: u64,
    /// Bytes the record occupies in the buffer.
    pub len: usize,
}

impl Record<'_> {
    /// The consistency-point payload of a consistency-point record.
    pub fn consistency(&self) -> Option<ConsistencyPayload> {
        if self.header.kind == RecordKind::ConsistencyPoint {
            ConsistencyPayload::decode(self.payload).ok()
        } else {
            None
        }
    }
}

/// Encodes a header into `out`. `payload_crc` is the standard CRC-32C of the
/// payload (see [`Crc32c`]; `crc32c(&[])` = 0 for records without payload).
pub fn encode_header<D: Digest + ?Sized>(
    h: &RecordHeader,
    payload_crc: u32,
    key: &GroupKey,
    digest: &D,
    out: &mut [u8; HEADER_LEN],
) -> Result<(), RecordError> {
    h.validate()?;
    if h.group_id != key.group_id {
        return Err(RecordError::WrongGroup);
    }
    let mut w = Writer::new(out);
    let ok = (|| {
        w.put(&MAGIC)?;
        w.u16(VERSION)?;
        w.u8(h.kind as u8)?;
        w.u8(h.flags.0)?;
        w.u64(h.group_id)?;
        w.u32(h.device_id)?;
        w.u32(h.payload_len)?;
        w.u64(h.dev_seq)?;
        w.u64(h.group_seq)?;
        w.u64(h.timestamp_ns)?;
        w.u64(h.epoch)?;
        w.u64(h.sector)?;
        w.u32(h.nr_sectors)?;
        w.u32(payload_crc)?;
        w.u32(0)
    })();
    ok.ok_or(RecordError::BufferTooSmall)?;
    let crc = crc32c(digest, &out[..off::HEADER_CRC]);
    set_u32(out, off::HEADER_CRC, crc);
    let sig = digest.xxh64(key.head, &out[..off::HEAD_SIG]);
    set_u64(out, off::HEAD_SIG, sig);
    Ok(())
}

/// Encodes the tail of the record whose encoded header is `header`.
pub fn encode_tail<D: Digest + ?Sized>(
    header: &[u8; HEADER_LEN],
    key: &GroupKey,
    digest: &D,
    out: &mut [u8; TAIL_LEN],
) {
    out[..4].copy_from_slice(&TAIL_MAGIC);
    set_u32(
        out,
        off::TAIL_PAYLOAD_LEN,
        get_u32(header, off::PAYLOAD_LEN),
    );
    set_u64(out, off::TAIL_GROUP_SEQ, get_u64(header, off::GROUP_SEQ));
    let sig = tail_sig(digest, key, out, get_u64(header, off::HEAD_SIG));
    set_u64(out, off::TAIL_SIG, sig);
}

fn tail_sig<D: Digest + ?Sized>(digest: &D, key: &GroupKey, tail: &[u8], head_sig: u64) -> u64 {
    let mut m = [0u8; 24];
    if let (Some(d), Some(s)) = (m.get_mut(..16), tail.get(..16)) {
        d.copy_from_slice(s);
    }
    set_u64(&mut m, 16, head_sig);
    digest.xxh64(key.tail, &m)
}

/// Encodes a whole record (`header || payload || tail`) into `out` and
/// returns its length. `payload.len()` must equal `h.payload_len`.
pub fn encode_record<D: Digest + ?Sized>(
    h: &RecordHeader,
    payload: &[u8],
    key: &GroupKey,
    digest: &D,
    out: &mut [u8],
) -> Result<usize, RecordError> {
    if payload.len() != h.payload_len as usize {
        return Err(RecordError::LengthMismatch);
    }
    let total = h.record_len();
    let out = out.get_mut(..total).ok_or(RecordError::BufferTooSmall)?;
    let (head, rest) = out.split_at_mut(HEADER_LEN);
    let (body, tail) = rest.split_at_mut(payload.len());
    let head: &mut [u8; HEADER_LEN] = head.try_into().map_err(|_| RecordError::BufferTooSmall)?;
    let tail: &mut [u8; TAIL_LEN] = tail.try_into().map_err(|_| RecordError::BufferTooSmall)?;
    encode_header(h, crc32c(digest, payload), key, digest, head)?;
    body.copy_from_slice(payload);
    encode_tail(head, key, digest, tail);
    Ok(total)
}

/// Decodes and verifies a record header (magic, version, checksum, fields,
/// group, head signature). The payload and tail are checked by
/// [`verify_payload`] and [`verify_tail`], or all at once by
/// [`decode_record`].
pub fn decode_header<D: Digest + ?Sized>(
    buf: &[u8],
    key: &GroupKey,
    digest: &D,
) -> Result<DecodedHeader, RecordError> {
    let bytes = buf.get(..HEADER_LEN).ok_or(RecordError::Truncated {
        need: HEADER_LEN,
        have: buf.len(),
    })?;
    let t = RecordError::Truncated {
        need: HEADER_LEN,
        have: buf.len(),
    };
    let mut r = Reader::new(bytes);
    if r.bytes4().ok_or(t)? != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let version = r.u16().ok_or(t)?;
    if version != VERSION {
        return Err(RecordError::UnsupportedVersion(version));
    }
    let stored_crc = get_u32(bytes, off::HEADER_CRC);
    let crc_covered = bytes.get(..off::HEADER_CRC).ok_or(t)?;
    if crc32c(digest, crc_covered) != stored_crc {
        return Err(RecordError::HeaderChecksum);
    }
    let kind_byte = r.u8().ok_or(t)?;
    let kind = RecordKind::from_u8(kind_byte).ok_or(RecordError::UnknownKind(kind_byte))?;
    let flags = Flags(r.u8().ok_or(t)?);
    let h = RecordHeader {
        kind,
        flags,
        group_id: r.u64().ok_or(t)?,
        device_id: r.u32().ok_or(t)?,
        payload_len: r.u32().ok_or(t)?,
        dev_seq: r.u64().ok_or(t)?,
        group_seq: r.u64().ok_or(t)?,
        timestamp_ns: r.u64().ok_or(t)?,
        epoch: r.u64().ok_or(t)?,
        sector: r.u64().ok_or(t)?,
        nr_sectors: r.u32().ok_or(t)?,
    };
    let payload_crc = r.u32().ok_or(t)?;
    if r.u32().ok_or(t)? != 0 {
        return Err(RecordError::ReservedNotZero);
    }
    h.validate()?;
    if h.group_id != key.group_id {
        return Err(RecordError::WrongGroup);
    }
    let head_sig = get_u64(bytes, off::HEAD_SIG);
    let sig_covered = bytes.get(..off::HEAD_SIG).ok_or(t)?;
    if digest.xxh64(key.head, sig_covered) != head_sig {
        return Err(RecordError::HeadSignature);
    }
    Ok(DecodedHeader {
        header: h,
        payload_crc,
        head_sig,
    })
}

/// Checks a payload given as fragments in order against the header.
pub fn verify_payload<'f, D, I>(
    dh: &DecodedHeader,
    digest: &D,
    fragments: I,
) -> Result<(), RecordError>
where
    D: Digest + ?Sized,
    I: IntoIterator<Item = &'f [u8]>,
{
    let mut crc = Crc32c::new();
    let mut len: u64 = 0;
    for f in fragments {
        len = len.saturating_add(f.len() as u64);
        if len > u64::from(dh.header.payload_len) {
            return Err(RecordError::LengthMismatch);
        }
        crc.update(digest, f);
    }
    if len != u64::from(dh.header.payload_len) {
        return Err(RecordError::LengthMismatch);
    }
    if crc.value() != dh.payload_crc {
        return Err(RecordError::PayloadChecksum);
    }
    Ok(())
}

/// Checks a record tail against its decoded header.
pub fn verify_tail<D: Digest + ?Sized>(
    dh: &DecodedHeader,
    tail: &[u8],
    key: &GroupKey,
    digest: &D,
) -> Result<(), RecordError> {
    let t = RecordError::Truncated {
        need: TAIL_LEN,
        have: tail.len(),
    };
    let tail = tail.get(..TAIL_LEN).ok_or(t)?;
    let mut r = Reader::new(tail);
    if r.bytes4().ok_or(t)? != TAIL_MAGIC {
        return Err(RecordError::BadTail);
    }
    if r.u32().ok_or(t)? != dh.header.payload_len || r.u64().ok_or(t)? != dh.header.group_seq {
        return Err(RecordError::TailMismatch);
    }
    if tail_sig(digest, key, tail, dh.head_sig) != get_u64(tail, off::TAIL_SIG) {
        return Err(RecordError::TailSignature);
    }
    Ok(())
}

/// Decodes and fully verifies the record at the start of `buf`.
pub fn decode_record<'a, D: Digest + ?Sized>(
    buf: &'a [u8],
    key: &GroupKey,
    digest: &D,
) -> Result<Record<'a>, RecordError> {
    let dh = decode_header(buf, key, digest)?;
    let total = dh.header.record_len();
    if buf.len() < total {
        return Err(RecordError::Truncated {
            need: total,
            have: buf.len(),
        });
    }
    let payload = buf
        .get(HEADER_LEN..total - TAIL_LEN)
        .ok_or(RecordError::LengthMismatch)?;
    verify_payload(&dh, digest, [payload])?;
    let tail = buf
        .get(total - TAIL_LEN..total)
        .ok_or(RecordError::LengthMismatch)?;
    verify_tail(&dh, tail, key, digest)?;
    if dh.header.kind == RecordKind::ConsistencyPoint {
        ConsistencyPayload::decode(payload)?;
    }
    Ok(Record {
        header: dh.header,
        payload,
        head_sig: dh.head_sig,
        len: total,
    })
}

/// A complete record with known bytes, to check a [`Digest`] binding (the
/// kernel's) end to end: group 1, secret `"ferry"`, a 512-byte write of
/// `0xAB` bytes from `log` device 2 with `dev_seq` 3, `group_seq` 4,
/// timestamp 5, epoch 6, sector 7.
pub mod vector {
    use super::{Flags, RecordHeader, RecordKind, HEADER_LEN, TAIL_LEN};

    /// Group secret.
    pub const SECRET: &[u8] = b"ferry";
    /// Every payload byte.
    pub const PAYLOAD_BYTE: u8 = 0xAB;
    /// Head key derived from group 1 and [`SECRET`].
    pub const HEAD_KEY: u64 = 0xef19_6f54_049e_ee41;
    /// Tail key derived from group 1 and [`SECRET`].
    pub const TAIL_KEY: u64 = 0x9dc9_9842_acae_43ea;
    /// Standard CRC-32C of the payload.
    pub const PAYLOAD_CRC: u32 = 0xb2fd_e42f;

    /// The header fields.
    pub const fn header() -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Write,
            flags: Flags(Flags::LOG),
            group_id: 1,
            device_id: 2,
            payload_len: 512,
            dev_seq: 3,
            group_seq: 4,
            timestamp_ns: 5,
            epoch: 6,
            sector: 7,
            nr_sectors: 1,
        }
    }

    /// The encoded header.
    pub const HEADER: [u8; HEADER_LEN] = [
        0x46, 0x52, 0x52, 0x59, 0x01, 0x00, 0x01, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x2f, 0xe4, 0xfd, 0xb2, 0x00, 0x00, 0x00,
        0x00, 0x9a, 0xe4, 0xd6, 0x08, 0x99, 0x9e, 0xa0, 0x6e, 0x1b, 0x06, 0x3c, 0x24,
    ];

    /// The encoded tail.
    pub const TAIL: [u8; TAIL_LEN] = [
        0x59, 0x52, 0x52, 0x46, 0x00, 0x02, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x49, 0xa5, 0xab, 0x90, 0x1f, 0x5d, 0xf4, 0xf5,
    ];
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
