//! The meta device of a primary: layout and superblock.
//!
//! ```text
//! sector 0..8      superblock slot 0 (4 KiB)
//! sector 8..16     superblock slot 1 (4 KiB)
//! sector 16..24    apply mark, copy A (secondary; 32 bytes, rest zero)
//! sector 24..32    apply mark, copy B
//! sector 32..2048  reserved
//! sector 2048..    write-intent bitmap: one bit per chunk, u64 words LE,
//!                  bit i of word w = chunk 64 w + i, padded to 4 KiB
//! ```
//!
//! The superblock is written alternately to the two slots with an
//! increasing generation; the valid slot with the highest generation is
//! current, so a torn write of one slot leaves the other.  A bitmap bit is
//! set on disk before any write reaches its chunk, and cleared only when
//! every write to the chunk has been acknowledged by the secondary: after
//! any crash, the set bits name every chunk that may differ from the
//! secondary (G3).

use core::fmt;

use crate::bytes::{get_u32, set_u32, Reader, Writer};
use crate::digest::crc32c;
use crate::Digest;

/// Size of a superblock slot.
pub const SLOT_LEN: usize = 4096;
/// First sector of slot `i`.
pub const fn slot_sector(i: u64) -> u64 {
    i * (SLOT_LEN as u64 / 512)
}
/// Sectors of the two copies of a secondary's apply mark
/// ([`crate::checkpoint::ApplyMark`]): written A then B, each durably, so a
/// torn write of one leaves the other; read A first (the newer one when
/// both are valid).
pub const APPLY_MARK_SECTORS: [u64; 2] = [16, 24];
/// First sector of the bitmap.
pub const BITMAP_SECTOR: u64 = 2048;
/// Bits per 4 KiB bitmap page.
pub const BITS_PER_PAGE: u64 = 4096 * 8;
/// Magic of a superblock.
pub const SB_MAGIC: [u8; 8] = *b"FRYMETA1";
/// Superblock format version.
pub const SB_VERSION: u32 = 1;
/// Encoded superblock length (the rest of the slot is zero).
pub const SB_LEN: usize = 120;

/// Superblock flags.
pub mod sb_flags {
    /// The secondary misses writes: a resync is needed before it is
    /// consistent again.
    pub const AHEAD: u32 = 0x1;
    /// The device left its group with every record acknowledged: the
    /// [`Numbers`](super::Numbers) are the ones to continue from.  Cleared
    /// when the device joins a group again, so that after a crash the
    /// numbers in use are known to be unknown.
    pub const CLEAN: u32 = 0x2;
    /// Every flag this version defines.
    pub const KNOWN: u32 = 0x3;
}

/// Sectors of bitmap a device of `len` sectors in chunks of
/// `chunk_sectors` needs (whole 4 KiB pages).
pub const fn bitmap_sectors(len: u64, chunk_sectors: u64) -> u64 {
    let chunks = len.div_ceil(chunk_sectors);
    chunks.div_ceil(BITS_PER_PAGE) * 8
}

/// Sectors the meta device needs.
pub const fn meta_sectors(len: u64, chunk_sectors: u64) -> u64 {
    BITMAP_SECTOR + bitmap_sectors(len, chunk_sectors)
}

/// The superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// [`sb_flags`].
    pub flags: u32,
    /// Identifies this meta device's history (random at format).
    pub uuid: [u8; 16],
    /// Incremented at every write; selects the current slot.
    pub generation: u64,
    /// The group the device belongs to.
    pub group_id: u64,
    /// The device's id in its group.
    pub device_id: u32,
    /// Chunk size of the bitmap, KiB.
    pub chunk_kb: u32,
    /// Length of the device (the target), sectors.
    pub len_sectors: u64,
    /// Highest `dev_seq` the secondary acknowledged.
    pub acked_dev_seq: u64,
    /// Where the device's stream and its group stood when the superblock
    /// was written (meaningful with [`sb_flags::CLEAN`]).
    pub numbers: Numbers,
}

/// The counters a primary continues from when a device that left its
/// group cleanly joins again (so that a restarted primary never reuses a
/// number the secondary holds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Numbers {
    /// Last `group_seq` of the group.
    pub group_seq: u64,
    /// The group's open checkpoint interval.
    pub epoch: u64,
    /// Last record timestamp of the group, ns.
    pub timestamp_ns: u64,
    /// Last consistency point of the group.
    pub cp_id: u64,
    /// First `dev_seq` of this stream after its last consistency point.
    pub cp_first: u64,
}

/// Why a superblock slot is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaError {
    /// Not [`SB_MAGIC`] (e.g. a fresh device).
    BadMagic,
    /// A version this code does not know.
    UnsupportedVersion(u32),
    /// The checksum does not match.
    BadChecksum,
    /// Flags this version does not define.
    UnknownFlags(u32),
    /// The buffer is shorter than a superblock.
    Truncated,
    /// The checksum matches but a counter is beyond [`NUMBER_MAX`]: the
    /// device cannot continue from it (a `+ 1` would overflow), and a
    /// superblock that is not this code's is not overwritten either.
    OutOfRange(&'static str),
}

/// The largest value a counter of the superblock (generation, sequence
/// numbers, interval, timestamp) may hold: 2^62, which a device writing a
/// million records a second reaches after 146,000 years.
pub const NUMBER_MAX: u64 = 1 << 62;

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("no superblock"),
            Self::UnsupportedVersion(v) => write!(f, "superblock version {v} unsupported"),
            Self::BadChecksum => f.write_str("superblock checksum mismatch"),
            Self::UnknownFlags(x) => write!(f, "unknown superblock flags {x:#x}"),
            Self::Truncated => f.write_str("superblock truncated"),
            Self::OutOfRange(field) => write!(f, "superblock field {field} out of range"),
        }
    }
}

impl Superblock {
    /// The slot this superblock is written to.
    pub const fn slot(&self) -> u64 {
        self.generation % 2
    }

    /// Encodes into the first [`SB_LEN`] bytes of `out` (the caller zeroes
    /// the rest of the slot).
    pub fn encode<D: Digest + ?Sized>(&self, d: &D, out: &mut [u8]) -> Result<(), MetaError> {
        let buf = out.get_mut(..SB_LEN).ok_or(MetaError::Truncated)?;
        let mut w = Writer::new(buf);
        let ok = (|| {
            w.put(&SB_MAGIC)?;
            w.u32(SB_VERSION)?;
            w.u32(self.flags)?;
            w.put(&self.uuid)?;
            w.u64(self.generation)?;
            w.u64(self.group_id)?;
            w.u32(self.device_id)?;
            w.u32(self.chunk_kb)?;
            w.u64(self.len_sectors)?;
            w.u64(self.acked_dev_seq)?;
            w.u64(self.numbers.group_seq)?;
            w.u64(self.numbers.epoch)?;
            w.u64(self.numbers.timestamp_ns)?;
            w.u64(self.numbers.cp_id)?;
            w.u64(self.numbers.cp_first)?;
            w.u32(0)
        })();
        ok.ok_or(MetaError::Truncated)?;
        let n = SB_LEN - 4;
        let crc = crc32c(d, buf.get(..n).ok_or(MetaError::Truncated)?);
        set_u32(buf, n, crc);
        Ok(())
    }

    /// Decodes and checks a slot.
    pub fn decode<D: Digest + ?Sized>(d: &D, buf: &[u8]) -> Result<Self, MetaError> {
        let buf = buf.get(..SB_LEN).ok_or(MetaError::Truncated)?;
        let mut r = Reader::new(buf);
        let magic = r.take(8).ok_or(MetaError::Truncated)?;
        if magic != SB_MAGIC {
            return Err(MetaError::BadMagic);
        }
        let version = r.u32().ok_or(MetaError::Truncated)?;
        if version != SB_VERSION {
            return Err(MetaError::UnsupportedVersion(version));
        }
        let n = SB_LEN - 4;
        if crc32c(d, buf.get(..n).ok_or(MetaError::Truncated)?) != get_u32(buf, n) {
            return Err(MetaError::BadChecksum);
        }
        let flags = r.u32().ok_or(MetaError::Truncated)?;
        if flags & !sb_flags::KNOWN != 0 {
            return Err(MetaError::UnknownFlags(flags));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(r.take(16).ok_or(MetaError::Truncated)?);
        let sb = Self {
            flags,
            uuid,
            generation: r.u64().ok_or(MetaError::Truncated)?,
            group_id: r.u64().ok_or(MetaError::Truncated)?,
            device_id: r.u32().ok_or(MetaError::Truncated)?,
            chunk_kb: r.u32().ok_or(MetaError::Truncated)?,
            len_sectors: r.u64().ok_or(MetaError::Truncated)?,
            acked_dev_seq: r.u64().ok_or(MetaError::Truncated)?,
            numbers: Numbers {
                group_seq: r.u64().ok_or(MetaError::Truncated)?,
                epoch: r.u64().ok_or(MetaError::Truncated)?,
                timestamp_ns: r.u64().ok_or(MetaError::Truncated)?,
                cp_id: r.u64().ok_or(MetaError::Truncated)?,
                cp_first: r.u64().ok_or(MetaError::Truncated)?,
            },
        };
        // The reserved word before the checksum: written 0, and a value
        // this version cannot take otherwise (refused, not formatted over).
        if r.u32().ok_or(MetaError::Truncated)? != 0 {
            return Err(MetaError::OutOfRange("reserved"));
        }
        let n = &sb.numbers;
        for (name, v) in [
            ("generation", sb.generation),
            ("acked_dev_seq", sb.acked_dev_seq),
            ("group_seq", n.group_seq),
            ("epoch", n.epoch),
            ("timestamp_ns", n.timestamp_ns),
            ("cp_id", n.cp_id),
            ("cp_first", n.cp_first),
        ] {
            if v > NUMBER_MAX {
                return Err(MetaError::OutOfRange(name));
            }
        }
        Ok(sb)
    }

    /// The current superblock of two decoded slots: the valid one with the
    /// highest generation, or none when neither is valid (a new device).
    /// A slot whose checksum holds but whose numbers are out of range is
    /// an error whatever the other slot holds: the device is refused, not
    /// formatted over.
    pub fn choose(
        slot0: Result<Self, MetaError>,
        slot1: Result<Self, MetaError>,
    ) -> Result<Option<Self>, MetaError> {
        match (slot0, slot1) {
            (Err(e @ MetaError::OutOfRange(_)), _) | (_, Err(e @ MetaError::OutOfRange(_))) => {
                Err(e)
            }
            (Ok(a), Ok(b)) => Ok(Some(if b.generation > a.generation { b } else { a })),
            (a, b) => Ok(a.ok().or(b.ok())),
        }
    }

    /// The current superblock of two slots: the valid one with the highest
    /// generation, if any.
    pub fn current<D: Digest + ?Sized>(d: &D, slot0: &[u8], slot1: &[u8]) -> Option<Self> {
        Self::choose(Self::decode(d, slot0), Self::decode(d, slot1))
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SoftDigest;

    fn sb(generation: u64) -> Superblock {
        Superblock {
            flags: sb_flags::AHEAD | sb_flags::CLEAN,
            uuid: [7; 16],
            generation,
            group_id: 0x1234,
            device_id: 3,
            chunk_kb: 64,
            len_sectors: 65536,
            acked_dev_seq: 99,
            numbers: Numbers {
                group_seq: 1000,
                epoch: 17,
                timestamp_ns: 5_000_000_000,
                cp_id: 4,
                cp_first: 90,
            },
        }
    }

    #[test]
    fn round_trip_and_rejects() {
        let d = SoftDigest;
        let mut buf = [0u8; SLOT_LEN];
        sb(5).encode(&d, &mut buf).unwrap();
        assert_eq!(Superblock::decode(&d, &buf), Ok(sb(5)));
        assert_eq!(
            Superblock::decode(&d, &[0u8; SLOT_LEN]),
            Err(MetaError::BadMagic)
        );
        let mut torn = buf;
        torn[40] ^= 1;
        assert_eq!(Superblock::decode(&d, &torn), Err(MetaError::BadChecksum));
        let mut v2 = buf;
        v2[8] = 2;
        assert_eq!(
            Superblock::decode(&d, &v2),
            Err(MetaError::UnsupportedVersion(2))
        );
        assert_eq!(
            Superblock::decode(&d, &buf[..10]),
            Err(MetaError::Truncated)
        );
    }

    #[test]
    fn a_reserved_word_set_is_refused() {
        // Found by the superblock_decode fuzz target: a superblock with the
        // reserved word set decoded, and did not re-encode to its bytes.
        let d = SoftDigest;
        let mut buf = [0u8; SLOT_LEN];
        sb(5).encode(&d, &mut buf).unwrap();
        buf[SB_LEN - 8] = 0xca;
        let c = crc32c(&d, &buf[..SB_LEN - 4]);
        set_u32(&mut buf, SB_LEN - 4, c);
        assert_eq!(
            Superblock::decode(&d, &buf),
            Err(MetaError::OutOfRange("reserved"))
        );
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        let d = SoftDigest;
        let mut good = [0u8; SLOT_LEN];
        sb(4).encode(&d, &mut good).unwrap();
        let mut s = sb(5);
        s.acked_dev_seq = u64::MAX;
        let mut bad = [0u8; SLOT_LEN];
        s.encode(&d, &mut bad).unwrap();
        assert_eq!(
            Superblock::decode(&d, &bad),
            Err(MetaError::OutOfRange("acked_dev_seq"))
        );
        // Whatever the other slot holds, the device is refused.
        assert_eq!(
            Superblock::choose(Superblock::decode(&d, &good), Superblock::decode(&d, &bad)),
            Err(MetaError::OutOfRange("acked_dev_seq"))
        );
        assert_eq!(Superblock::current(&d, &good, &bad), None);
        for field in 0..7 {
            let mut s = sb(5);
            let n = &mut s.numbers;
            *[
                &mut s.generation,
                &mut s.acked_dev_seq,
                &mut n.group_seq,
                &mut n.epoch,
                &mut n.timestamp_ns,
                &mut n.cp_id,
                &mut n.cp_first,
            ][field] = NUMBER_MAX + 1;
            s.encode(&d, &mut bad).unwrap();
            assert!(matches!(
                Superblock::decode(&d, &bad),
                Err(MetaError::OutOfRange(_))
            ));
            // The bound itself is valid.
            let mut s = sb(5);
            s.numbers.group_seq = NUMBER_MAX;
            s.encode(&d, &mut bad).unwrap();
            assert!(Superblock::decode(&d, &bad).is_ok());
        }
    }

    #[test]
    fn newest_valid_slot_wins() {
        let d = SoftDigest;
        let (mut a, mut b) = ([0u8; SLOT_LEN], [0u8; SLOT_LEN]);
        sb(4).encode(&d, &mut a).unwrap();
        sb(5).encode(&d, &mut b).unwrap();
        assert_eq!(
            Superblock::current(&d, &a, &b).map(|s| s.generation),
            Some(5)
        );
        b[20] ^= 0xff; // torn newer slot: the older one stands
        assert_eq!(
            Superblock::current(&d, &a, &b).map(|s| s.generation),
            Some(4)
        );
        assert_eq!(Superblock::current(&d, &[0; 8], &[0; 8]), None);
        assert_eq!(sb(4).slot(), 0);
        assert_eq!(sb(5).slot(), 1);
    }

    #[test]
    fn sizes() {
        // 32 MiB in 64 KiB chunks: 512 bits, one page.
        assert_eq!(bitmap_sectors(65536, 128), 8);
        assert_eq!(meta_sectors(65536, 128), 2056);
        // 1 TiB in 64 KiB chunks: 16 Mi bits, 512 pages.
        assert_eq!(bitmap_sectors(1 << 31, 128), 4096);
    }
}
