//! Userspace [`Digest`] backed by hardware-accelerated crates (feature `std`).

use crate::digest::Digest;

/// CRC-32C through the `crc32c` crate (SSE4.2 / ARMv8 CRC when present),
/// XXH64 through `xxhash-rust`. Produces exactly the values of
/// [`SoftDigest`](crate::SoftDigest).
#[derive(Clone, Copy, Debug, Default)]
pub struct FastDigest;

impl Digest for FastDigest {
    fn crc32c(&self, crc: u32, data: &[u8]) -> u32 {
        // `crc32c_append` continues a finalised (inverted) value.
        !crc32c::crc32c_append(!crc, data)
    }
    fn xxh64(&self, seed: u64, data: &[u8]) -> u64 {
        xxhash_rust::xxh64::xxh64(data, seed)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::digest::{vectors, SoftDigest};

    #[test]
    fn fast_matches_vectors_and_soft() {
        for (m, raw) in vectors::CRC32C {
            assert_eq!(FastDigest.crc32c(!0, m), *raw);
        }
        for (m, seed, h) in vectors::XXH64 {
            assert_eq!(FastDigest.xxh64(*seed, m), *h);
        }
        let mut buf = [0u8; 300];
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..buf.len() {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let m = &buf[..len];
            for seed in [0u64, 1, x] {
                assert_eq!(FastDigest.xxh64(seed, m), SoftDigest.xxh64(seed, m));
            }
            for crc in [0u32, !0, x as u32] {
                assert_eq!(FastDigest.crc32c(crc, m), SoftDigest.crc32c(crc, m));
            }
        }
    }
}
