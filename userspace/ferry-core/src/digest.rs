//! Checksums and signatures: the two primitive functions ferry builds on.
//!
//! Every checksum in ferry's formats is made of two functions, both available
//! in the kernel's `lib/` and in userspace:
//!
//! * **CRC-32C** (Castagnoli, reflected polynomial `0x82F63B78`).
//!   [`Digest::crc32c`] is the *raw* update: no inversion on entry or exit,
//!   exactly Linux's `crc32c(u32 crc, const void *p, unsigned int len)`. The
//!   standard CRC-32C of a message `m` is `!crc32c(!0, m)`; a message split in
//!   fragments `m = a || b` gives the same value as
//!   `!crc32c(crc32c(!0, a), b)`, which is how a payload spread over several
//!   pages is checksummed ([`Crc32c`]).
//! * **XXH64** with a 64-bit seed, the reference function of the xxHash
//!   project; Linux's `xxh64(const void *p, size_t len, u64 seed)`.
//!   ferry only applies it to short messages held in one contiguous buffer
//!   (a record header, a record tail, a key), so the one-shot form suffices.
//!
//! [`SoftDigest`] is a portable reference implementation with no dependency;
//! the `std` feature adds `FastDigest`, backed by
//! hardware-accelerated crates. Both are pinned to the vectors in
//! [`vectors`].

/// The two checksum primitives. The kernel implements this trait over
/// `crc32c()` and `xxh64()`; userspace uses [`SoftDigest`] or `FastDigest`.
pub trait Digest {
    /// Raw CRC-32C update of `crc` with `data` (no pre- or post-inversion).
    fn crc32c(&self, crc: u32, data: &[u8]) -> u32;
    /// XXH64 of `data` with `seed`.
    fn xxh64(&self, seed: u64, data: &[u8]) -> u64;
}

impl<D: Digest + ?Sized> Digest for &D {
    fn crc32c(&self, crc: u32, data: &[u8]) -> u32 {
        (**self).crc32c(crc, data)
    }
    fn xxh64(&self, seed: u64, data: &[u8]) -> u64 {
        (**self).xxh64(seed, data)
    }
}

/// Standard CRC-32C of one buffer: `!crc32c(!0, data)`.
pub fn crc32c<D: Digest + ?Sized>(digest: &D, data: &[u8]) -> u32 {
    !digest.crc32c(!0, data)
}

/// Standard CRC-32C computed over fragments fed in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crc32c {
    raw: u32,
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// A checksum over the empty message.
    pub const fn new() -> Self {
        Self { raw: !0 }
    }

    /// Feeds the next fragment.
    pub fn update<D: Digest + ?Sized>(&mut self, digest: &D, data: &[u8]) {
        self.raw = digest.crc32c(self.raw, data);
    }

    /// The standard CRC-32C of all fragments fed so far.
    pub const fn value(&self) -> u32 {
        !self.raw
    }
}

const CRC32C_POLY: u32 = 0x82F6_3B78;

#[allow(clippy::cast_possible_truncation)] // i < 256
const fn crc32c_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC32C_POLY
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

static CRC32C_TABLES: [[u32; 256]; 8] = crc32c_tables();

/// Portable reference implementation of [`Digest`] (slice-by-8 CRC-32C,
/// scalar XXH64). No dependency, no allocation, usable in the kernel as a
/// fallback and everywhere as the reference the others are checked against.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftDigest;

impl Digest for SoftDigest {
    fn crc32c(&self, crc: u32, data: &[u8]) -> u32 {
        soft_crc32c(crc, data)
    }
    fn xxh64(&self, seed: u64, data: &[u8]) -> u64 {
        soft_xxh64(seed, data)
    }
}

fn tab(s: usize, i: u32) -> u32 {
    // `i & 0xff` is always a valid index; `s` is a constant below 8.
    CRC32C_TABLES[s][(i & 0xff) as usize]
}

/// Raw CRC-32C update, slice-by-8.
pub fn soft_crc32c(mut crc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = tab(7, lo)
            ^ tab(6, lo >> 8)
            ^ tab(5, lo >> 16)
            ^ tab(4, lo >> 24)
            ^ tab(3, hi)
            ^ tab(2, hi >> 8)
            ^ tab(1, hi >> 16)
            ^ tab(0, hi >> 24);
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ tab(0, crc ^ u32::from(b));
    }
    crc
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn xxh_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn xxh_merge(acc: u64, val: u64) -> u64 {
    (acc ^ xxh_round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

fn le64(c: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    for (d, s) in a.iter_mut().zip(c) {
        *d = *s;
    }
    u64::from_le_bytes(a)
}

/// XXH64 of `data` with `seed`.
pub fn soft_xxh64(seed: u64, data: &[u8]) -> u64 {
    let len = data.len() as u64;
    let mut stripes = data.chunks_exact(32);
    let mut h = if data.len() >= 32 {
        let mut v1 = seed.wrapping_add(P1).wrapping_add(P2);
        let mut v2 = seed.wrapping_add(P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(P1);
        for s in &mut stripes {
            v1 = xxh_round(v1, le64(&s[0..8]));
            v2 = xxh_round(v2, le64(&s[8..16]));
            v3 = xxh_round(v3, le64(&s[16..24]));
            v4 = xxh_round(v4, le64(&s[24..32]));
        }
        let mut h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        xxh_merge(h, v4)
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len);
    let rest = stripes.remainder();
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        h ^= xxh_round(0, le64(w));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }
    let mut tail = words.remainder();
    if tail.len() >= 4 {
        let (w, r) = tail.split_at(4);
        h ^= (le64(w) & 0xffff_ffff).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        tail = r;
    }
    for &b in tail {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// Test vectors every [`Digest`] implementation must reproduce. The kernel
/// side checks its `crc32c()`/`xxh64()` binding against the same table.
pub mod vectors {
    /// `(message, raw crc32c(!0, message))`; the standard CRC is the inverse.
    pub const CRC32C: &[(&[u8], u32)] = &[
        (b"", 0xFFFF_FFFF),
        (b"123456789", !0xE306_9283),
        (b"a", !0xC1D0_4330),
        (b"The quick brown fox jumps over the lazy dog", !0x2262_0404),
    ];
    /// `(message, seed, xxh64)`.
    pub const XXH64: &[(&[u8], u64, u64)] = &[
        (b"", 0, 0xEF46_DB37_51D8_E999),
        (b"a", 0, 0xD24E_C4F1_A98C_6E5B),
        (b"abc", 0, 0x44BC_2CF5_AD77_0999),
        (b"123456789", 0, 0x8CB8_41DB_40E6_AE83),
        (
            b"The quick brown fox jumps over the lazy dog",
            0,
            0x0B24_2D36_1FDA_71BC,
        ),
    ];
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn soft_crc32c_vectors() {
        for (m, raw) in vectors::CRC32C {
            assert_eq!(SoftDigest.crc32c(!0, m), *raw, "{m:?}");
        }
        assert_eq!(crc32c(&SoftDigest, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn soft_xxh64_vectors() {
        for (m, seed, h) in vectors::XXH64 {
            assert_eq!(SoftDigest.xxh64(*seed, m), *h, "{m:?}");
        }
    }

    #[test]
    fn crc_streaming_equals_one_shot() {
        let data: [u8; 100] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        let whole = crc32c(&SoftDigest, &data);
        for cut in 0..data.len() {
            let mut c = Crc32c::new();
            c.update(&SoftDigest, &data[..cut]);
            c.update(&SoftDigest, &data[cut..]);
            assert_eq!(c.value(), whole);
        }
    }
}
