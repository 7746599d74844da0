//! Chunk bitmap: one bit per chunk of a device, set while the chunk may
//! differ between primary and secondary (spool overflow, link down, primary
//! crash, promotion). Resync copies exactly the set chunks; failback copies
//! the union of both sides' bitmaps.
//!
//! The bitmap works over caller-owned `&mut [u64]` words (bit `i` is bit
//! `i % 64` of word `i / 64`) and never allocates. Its on-disk encoding is
//! a 32-byte header followed by the words, little-endian (see
//! Documentation/protocol.rst).

use core::fmt;

use crate::bytes::{get_u32, set_u32, Reader, Writer};
use crate::digest::{crc32c, Crc32c, Digest};

/// Why a bitmap operation or decode failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapError {
    /// The word storage is too small for the number of bits.
    StorageTooSmall,
    /// A bit or range beyond the end of the bitmap.
    OutOfRange,
    /// Two bitmaps of different sizes.
    SizeMismatch,
    /// Encoded: truncated buffer.
    Truncated,
    /// Encoded: bad magic.
    BadMagic,
    /// Encoded: unknown version.
    UnsupportedVersion(u16),
    /// Encoded: a reserved field is not zero, or bits past the end are set.
    ReservedNotZero,
    /// Encoded: header checksum mismatch.
    HeaderChecksum,
    /// Encoded: word checksum mismatch.
    WordsChecksum,
    /// Encoded: chunk shift out of range.
    BadChunkShift,
}

impl fmt::Display for BitmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StorageTooSmall => f.write_str("bitmap storage too small"),
            Self::OutOfRange => f.write_str("bitmap range out of bounds"),
            Self::SizeMismatch => f.write_str("bitmap sizes differ"),
            Self::Truncated => f.write_str("bitmap truncated"),
            Self::BadMagic => f.write_str("bad bitmap magic"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported bitmap version {v}"),
            Self::ReservedNotZero => f.write_str("bitmap reserved bits not zero"),
            Self::HeaderChecksum => f.write_str("bitmap header checksum mismatch"),
            Self::WordsChecksum => f.write_str("bitmap checksum mismatch"),
            Self::BadChunkShift => f.write_str("bad bitmap chunk size"),
        }
    }
}

/// Number of `u64` words needed for `nbits` bits.
pub const fn words_for(nbits: u64) -> u64 {
    nbits.div_ceil(64)
}

fn words_usize(nbits: u64) -> usize {
    usize::try_from(words_for(nbits)).unwrap_or(usize::MAX)
}

/// Chunks touched by `nr_sectors` sectors from `sector`, with chunks of
/// `1 << chunk_shift` sectors: `(first_chunk, count)`. `None` on overflow or
/// a shift of 64 or more.
pub fn chunks_of(sector: u64, nr_sectors: u64, chunk_shift: u32) -> Option<(u64, u64)> {
    if nr_sectors == 0 {
        return Some((sector.checked_shr(chunk_shift)?, 0));
    }
    let last = sector.checked_add(nr_sectors - 1)?;
    let first = sector.checked_shr(chunk_shift)?;
    let last = last.checked_shr(chunk_shift)?;
    Some((first, last - first + 1))
}

/// A bitmap of `nbits` chunks over caller storage.
#[derive(Debug)]
pub struct ChunkBitmap<'a> {
    words: &'a mut [u64],
    nbits: u64,
}

fn mask_range(lo: u64, hi: u64) -> u64 {
    // Bits lo..hi of one word, 0 <= lo < hi <= 64.
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

impl<'a> ChunkBitmap<'a> {
    /// A bitmap of `nbits` bits over `words` (which must hold them). The
    /// words keep their content; bits past `nbits` are cleared.
    pub fn new(words: &'a mut [u64], nbits: u64) -> Result<Self, BitmapError> {
        if (words.len() as u64) < words_for(nbits) {
            return Err(BitmapError::StorageTooSmall);
        }
        let mut b = Self { words, nbits };
        b.clear_tail();
        Ok(b)
    }

    fn clear_tail(&mut self) {
        let used = words_usize(self.nbits);
        let rem = self.nbits % 64;
        if rem != 0 {
            if let Some(w) = self.words.get_mut(used - 1) {
                *w &= (1u64 << rem) - 1;
            }
        }
        for w in self.words.iter_mut().skip(used) {
            *w = 0;
        }
    }

    /// Number of chunks.
    pub fn nbits(&self) -> u64 {
        self.nbits
    }

    /// The words in use.
    pub fn words(&self) -> &[u64] {
        let n = words_usize(self.nbits);
        self.words.get(..n).unwrap_or(&[])
    }

    /// Whether chunk `bit` is set (false past the end).
    pub fn test(&self, bit: u64) -> bool {
        bit < self.nbits
            && self
                .words
                .get((bit / 64) as usize)
                .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    fn check(&self, start: u64, len: u64) -> Result<u64, BitmapError> {
        let end = start.checked_add(len).ok_or(BitmapError::OutOfRange)?;
        if end > self.nbits {
            return Err(BitmapError::OutOfRange);
        }
        Ok(end)
    }

    fn apply(&mut self, start: u64, len: u64, set: bool) -> Result<(), BitmapError> {
        let end = self.check(start, len)?;
        let mut i = start;
        while i < end {
            let w = i / 64;
            let lo = i % 64;
            let hi = core::cmp::min(64, lo + (end - i));
            let m = mask_range(lo, hi);
            if let Some(word) = self.words.get_mut(w as usize) {
                if set {
                    *word |= m;
                } else {
                    *word &= !m;
                }
            }
            i += hi - lo;
        }
        Ok(())
    }

    /// Sets chunks `start..start + len`.
    pub fn set_range(&mut self, start: u64, len: u64) -> Result<(), BitmapError> {
        self.apply(start, len, true)
    }

    /// Clears chunks `start..start + len`.
    pub fn clear_range(&mut self, start: u64, len: u64) -> Result<(), BitmapError> {
        self.apply(start, len, false)
    }

    /// Whether any chunk of `start..start + len` is set.
    pub fn any_in_range(&self, start: u64, len: u64) -> Result<bool, BitmapError> {
        let end = self.check(start, len)?;
        Ok(self.next_set(start).is_some_and(|b| b < end))
    }

    /// Whether any chunk of `start..start + len` is clear.
    pub fn any_clear_in_range(&self, start: u64, len: u64) -> Result<bool, BitmapError> {
        let end = self.check(start, len)?;
        Ok(self.next_clear(start) < end)
    }

    /// Clears every chunk.
    pub fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    /// Number of set chunks.
    pub fn count(&self) -> u64 {
        self.words().iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// First set chunk at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        self.next_matching(from, false)
    }

    /// First clear chunk at or after `from` (`nbits` if none).
    pub fn next_clear(&self, from: u64) -> u64 {
        self.next_matching(from, true).unwrap_or(self.nbits)
    }

    fn next_matching(&self, from: u64, clear: bool) -> Option<u64> {
        let mut i = from;
        while i < self.nbits {
            let w = *self.words.get((i / 64) as usize)?;
            let w = if clear { !w } else { w } >> (i % 64);
            if w != 0 {
                let b = i + u64::from(w.trailing_zeros());
                return (b < self.nbits).then_some(b);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// Dirty runs `(first_chunk, count)` in increasing order.
    pub fn runs(&self) -> Runs<'_, 'a> {
        Runs { bm: self, pos: 0 }
    }

    /// Sets every chunk set in `other` (same size): failback resyncs the
    /// union of both sides' bitmaps.
    pub fn union_with(&mut self, other: &ChunkBitmap<'_>) -> Result<(), BitmapError> {
        if other.nbits != self.nbits {
            return Err(BitmapError::SizeMismatch);
        }
        for (a, b) in self.words.iter_mut().zip(other.words()) {
            *a |= *b;
        }
        Ok(())
    }

    /// Encoded size of this bitmap.
    pub fn encoded_len(&self) -> usize {
        BITMAP_HEADER_LEN + self.words().len() * 8
    }

    /// Encodes header and words into `out`; returns the bytes written.
    pub fn encode<D: Digest + ?Sized>(
        &self,
        chunk_shift: u32,
        digest: &D,
        out: &mut [u8],
    ) -> Result<usize, BitmapError> {
        let total = self.encoded_len();
        let out = out.get_mut(..total).ok_or(BitmapError::Truncated)?;
        let (head, body) = out.split_at_mut(BITMAP_HEADER_LEN);
        let mut crc = Crc32c::new();
        for (w, dst) in self.words().iter().zip(body.chunks_exact_mut(8)) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        crc.update(digest, body);
        let h = BitmapHeader {
            nbits: self.nbits,
            chunk_shift,
            words_crc: crc.value(),
        };
        h.encode(digest, head)?;
        Ok(total)
    }
}

/// Iterator over the dirty runs of a [`ChunkBitmap`].
#[derive(Debug)]
pub struct Runs<'b, 'a> {
    bm: &'b ChunkBitmap<'a>,
    pos: u64,
}

impl Iterator for Runs<'_, '_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let start = self.bm.next_set(self.pos)?;
        let end = self.bm.next_clear(start);
        self.pos = end;
        Some((start, end - start))
    }
}

/// First four bytes of an encoded bitmap.
pub const BITMAP_MAGIC: [u8; 4] = *b"FBMP";
/// Bitmap encoding version.
pub const BITMAP_VERSION: u16 = 1;
/// Size of the encoded bitmap header.
pub const BITMAP_HEADER_LEN: usize = 32;
/// Largest accepted chunk shift (chunks of at most 2^40 sectors).
pub const MAX_CHUNK_SHIFT: u32 = 40;

/// The header of an encoded bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapHeader {
    /// Number of chunks.
    pub nbits: u64,
    /// log2 of the chunk size in sectors.
    pub chunk_shift: u32,
    /// CRC-32C of the encoded words.
    pub words_crc: u32,
}

impl BitmapHeader {
    /// Encodes the 32-byte header into `out`.
    pub fn encode<D: Digest + ?Sized>(
        &self,
        digest: &D,
        out: &mut [u8],
    ) -> Result<(), BitmapError> {
        if self.chunk_shift > MAX_CHUNK_SHIFT {
            return Err(BitmapError::BadChunkShift);
        }
        let out = out
            .get_mut(..BITMAP_HEADER_LEN)
            .ok_or(BitmapError::Truncated)?;
        let mut w = Writer::new(out);
        (|| {
            w.put(&BITMAP_MAGIC)?;
            w.u16(BITMAP_VERSION)?;
            w.u16(0)?;
            w.u64(self.nbits)?;
            w.u32(self.chunk_shift)?;
            w.u32(self.words_crc)?;
            w.u32(0)
        })()
        .ok_or(BitmapError::Truncated)?;
        let crc = crc32c(digest, out.get(..28).ok_or(BitmapError::Truncated)?);
        set_u32(out, 28, crc);
        Ok(())
    }

    /// Decodes and checks a header.
    pub fn decode<D: Digest + ?Sized>(buf: &[u8], digest: &D) -> Result<Self, BitmapError> {
        let t = BitmapError::Truncated;
        let head = buf.get(..BITMAP_HEADER_LEN).ok_or(t)?;
        let mut r = Reader::new(head);
        if r.bytes4().ok_or(t)? != BITMAP_MAGIC {
            return Err(BitmapError::BadMagic);
        }
        let v = r.u16().ok_or(t)?;
        if v != BITMAP_VERSION {
            return Err(BitmapError::UnsupportedVersion(v));
        }
        if crc32c(digest, head.get(..28).ok_or(t)?) != get_u32(head, 28) {
            return Err(BitmapError::HeaderChecksum);
        }
        if r.u16().ok_or(t)? != 0 {
            return Err(BitmapError::ReservedNotZero);
        }
        let nbits = r.u64().ok_or(t)?;
        let chunk_shift = r.u32().ok_or(t)?;
        let words_crc = r.u32().ok_or(t)?;
        if r.u32().ok_or(t)? != 0 {
            return Err(BitmapError::ReservedNotZero);
        }
        if chunk_shift > MAX_CHUNK_SHIFT {
            return Err(BitmapError::BadChunkShift);
        }
        Ok(Self {
            nbits,
            chunk_shift,
            words_crc,
        })
    }
}

/// Decodes an encoded bitmap into `words`; returns its header. Every check
/// (length, checksums, bits past the end) is done before `words` is written.
pub fn decode_bitmap<D: Digest + ?Sized>(
    buf: &[u8],
    digest: &D,
    words: &mut [u64],
) -> Result<BitmapHeader, BitmapError> {
    let h = BitmapHeader::decode(buf, digest)?;
    let n = words_for(h.nbits);
    if (words.len() as u64) < n {
        return Err(BitmapError::StorageTooSmall);
    }
    let n = usize::try_from(n).map_err(|_| BitmapError::StorageTooSmall)?;
    let body_len = n.checked_mul(8).ok_or(BitmapError::Truncated)?;
    let end = BITMAP_HEADER_LEN
        .checked_add(body_len)
        .ok_or(BitmapError::Truncated)?;
    let body = buf
        .get(BITMAP_HEADER_LEN..end)
        .ok_or(BitmapError::Truncated)?;
    if crc32c(digest, body) != h.words_crc {
        return Err(BitmapError::WordsChecksum);
    }
    let rem = h.nbits % 64;
    if rem != 0 {
        let last = body.get(body_len - 8..).ok_or(BitmapError::Truncated)?;
        let mut r = Reader::new(last);
        if r.u64().ok_or(BitmapError::Truncated)? >> rem != 0 {
            return Err(BitmapError::ReservedNotZero);
        }
    }
    for (w, src) in words.iter_mut().zip(body.chunks_exact(8)) {
        let mut r = Reader::new(src);
        *w = r.u64().unwrap_or(0);
    }
    for w in words.iter_mut().skip(n) {
        *w = 0;
    }
    Ok(h)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::digest::SoftDigest;

    #[test]
    fn ranges_runs_count() {
        let mut s = [0u64; 4];
        let mut b = ChunkBitmap::new(&mut s, 200).unwrap();
        b.set_range(3, 5).unwrap();
        b.set_range(60, 70).unwrap();
        b.set_range(199, 1).unwrap();
        assert!(b.set_range(199, 2).is_err());
        assert!(b.set_range(u64::MAX, 2).is_err());
        assert_eq!(b.count(), 76);
        let mut runs = [(0, 0); 3];
        for (d, r) in runs.iter_mut().zip(b.runs()) {
            *d = r;
        }
        assert_eq!(runs, [(3, 5), (60, 70), (199, 1)]);
        assert_eq!(b.runs().count(), 3);
        b.clear_range(64, 10).unwrap();
        assert!(!b.test(64) && b.test(63) && b.test(74));
        assert!(b.any_in_range(0, 4).unwrap());
        assert!(!b.any_in_range(8, 52).unwrap());
        assert!(!b.any_clear_in_range(3, 5).unwrap());
        assert!(b.any_clear_in_range(3, 6).unwrap());
        assert!(b.any_clear_in_range(63, 2).unwrap());
        assert!(b.any_clear_in_range(0, 201).is_err());
        assert!(!b.test(1000));
    }

    #[test]
    fn union_and_encoding() {
        let mut s1 = [0u64; 2];
        let mut s2 = [0u64; 2];
        let mut a = ChunkBitmap::new(&mut s1, 100).unwrap();
        let mut b = ChunkBitmap::new(&mut s2, 100).unwrap();
        a.set_range(0, 10).unwrap();
        b.set_range(5, 90).unwrap();
        a.union_with(&b).unwrap();
        assert_eq!(a.count(), 95);
        let mut buf = [0u8; 64];
        let n = a.encode(3, &SoftDigest, &mut buf).unwrap();
        assert_eq!(n, 48);
        let mut out = [0u64; 2];
        let h = decode_bitmap(&buf[..n], &SoftDigest, &mut out).unwrap();
        assert_eq!(h.nbits, 100);
        assert_eq!(h.chunk_shift, 3);
        assert_eq!(&out, a.words());
        for i in 0..n {
            let mut c = buf;
            c[i] ^= 0x10;
            assert!(
                decode_bitmap(&c[..n], &SoftDigest, &mut out).is_err(),
                "{i}"
            );
        }
        for cut in 0..n {
            assert!(decode_bitmap(&buf[..cut], &SoftDigest, &mut out).is_err());
        }
    }

    #[test]
    fn chunk_math() {
        assert_eq!(chunks_of(0, 8, 3), Some((0, 1)));
        assert_eq!(chunks_of(7, 2, 3), Some((0, 2)));
        assert_eq!(chunks_of(u64::MAX, 2, 3), None);
        assert_eq!(chunks_of(5, 1, 64), None);
    }
}
