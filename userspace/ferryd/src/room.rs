//! Room on the secondary for a resync, asked before it begins.
//!
//! The secondary stages a resync span whole in its remote log (`log_dir`)
//! and applies it only once its end arrives: nothing of it can be released
//! before.  So, before the primary's `ferryd` writes `START`, it asks the
//! secondary over the link whether `log_dir` has room for the resync's
//! records ([`need`]), and writes it only on a yes (`Documentation/
//! protocol.rst`, "Room for a resync").
//!
//! * **The need** (the primary's figure): for each device, its chunks to
//!   copy (the dirty ones; every chunk for a full copy, `FULL_RESYNC`)
//!   times the bytes the kernel sends for a chunk: the chunk's bytes, and
//!   one record header and tail ([`RECORD_OVERHEAD`], 112 bytes) per piece
//!   of at most 1 MiB ([`PIECE`]) it reads the chunk in.  An upper bound of
//!   the copy itself: the last chunk of a device may be shorter, and an
//!   all-zero piece goes as a write-zeroes record without payload.  It does
//!   not count the application's writes during the copy, nor the
//!   checkpoint markers: those are what the secondary's reserve is for.
//! * **The decision** (the secondary's, [`decide`]): room when the need is
//!   at most what is free in `log_dir`: the bytes its file system has
//!   available (`statvfs`: `f_bavail * f_frsize`) less the reserve
//!   (`resync_reserve_mb`, 64 MiB by default).
//! * **The words** of a refusal name both numbers ([`NoRoom::words`]).

use ferry_core::record::{HEADER_LEN, MAX_PAYLOAD_LEN, TAIL_LEN};
use serde::{Deserialize, Serialize};

use crate::render::bytes;

/// Bytes a record takes beyond its payload: its header and tail.
pub const RECORD_OVERHEAD: u64 = (HEADER_LEN + TAIL_LEN) as u64;

/// The kernel reads a chunk in pieces of at most this many bytes, one
/// record each (the largest record's payload).
pub const PIECE: u64 = MAX_PAYLOAD_LEN as u64;

/// The secondary's reserve by default, MiB (`resync_reserve_mb`).
pub const DEFAULT_RESERVE_MB: u64 = 64;

/// The bytes a resync stages for one chunk of `chunk_bytes`: its payload
/// and a header and tail per piece.
pub fn per_chunk(chunk_bytes: u64) -> u64 {
    let pieces = chunk_bytes.div_ceil(PIECE).max(1);
    chunk_bytes.saturating_add(pieces.saturating_mul(RECORD_OVERHEAD))
}

/// The chunks of a device of `sectors` 512-byte sectors in chunks of
/// `chunk_bytes`: what a full copy reads.
pub fn chunks_of(sectors: u64, chunk_bytes: u64) -> u64 {
    if chunk_bytes == 0 {
        return 0;
    }
    sectors.saturating_mul(512).div_ceil(chunk_bytes)
}

/// The room a resync needs in the secondary's `log_dir`: over the
/// devices, given as (chunks to copy, chunk bytes), [`per_chunk`] times
/// the chunks.
pub fn need(devices: impl IntoIterator<Item = (u64, u64)>) -> u64 {
    devices.into_iter().fold(0u64, |n, (chunks, chunk_bytes)| {
        n.saturating_add(chunks.saturating_mul(per_chunk(chunk_bytes)))
    })
}

/// What is free for a resync out of `available` bytes, keeping `reserve`.
pub fn free(available: u64, reserve: u64) -> u64 {
    available.saturating_sub(reserve)
}

/// The secondary's decision: room for `need` bytes when `available`
/// bytes are available in `log_dir` and `reserve` are kept.
pub fn decide(need: u64, available: u64, reserve: u64) -> bool {
    need <= free(available, reserve)
}

/// A secondary's refusal of a resync for lack of room, with its figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoRoom {
    /// The bytes the resync needs (the primary's figure, asked).
    pub need: u64,
    /// The bytes available in the secondary's `log_dir`.
    pub available: u64,
    /// The bytes it keeps beyond a resync (`resync_reserve_mb`).
    pub reserve: u64,
    /// The secondary's `log_dir`.
    pub log_dir: String,
}

impl NoRoom {
    /// What is free for a resync.
    pub fn free(&self) -> u64 {
        free(self.available, self.reserve)
    }

    /// The refusal in words, as the primary says it: `then` says what
    /// happens next (the automatic resync asks again by itself;
    /// `ferryctl resync` is to be run again).
    pub fn words(&self, then: &str) -> String {
        format!(
            "resync refused by the secondary: it needs {} in its log_dir ({}), {} are free \
             ({} available, less its reserve of {}); free space there, or raise it, {then}",
            bytes(self.need),
            self.log_dir,
            bytes(self.free()),
            bytes(self.available),
            bytes(self.reserve)
        )
    }

    /// The figures alone, as the secondary says them: `needed ..., ...
    /// free (... available less the reserve ...) in ...`.
    pub fn figures(&self) -> String {
        format!(
            "needed {}, {} free ({} available less the reserve of {}) in {}",
            bytes(self.need),
            bytes(self.free()),
            bytes(self.available),
            bytes(self.reserve),
            self.log_dir
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_need_of_a_chunk() {
        // 64 KiB chunks: one record each.
        assert_eq!(RECORD_OVERHEAD, 112);
        assert_eq!(per_chunk(64 << 10), (64 << 10) + 112);
        // 1 MiB: one record; 1 MiB and a sector more: two.
        assert_eq!(per_chunk(MIB), MIB + 112);
        assert_eq!(per_chunk(MIB + 512), MIB + 512 + 2 * 112);
        // 64 MiB chunks (chunk_kb 65536): 64 records.
        assert_eq!(per_chunk(64 * MIB), 64 * MIB + 64 * 112);
        // 4 KiB (the smallest chunk_kb).
        assert_eq!(per_chunk(4096), 4096 + 112);
    }

    #[test]
    fn the_need_of_a_resync() {
        // Device 0: 3 dirty chunks of 4 KiB; device 1: 512 of 64 KiB.
        let n = need([(3, 4096), (512, 64 << 10)]);
        assert_eq!(n, 3 * (4096 + 112) + 512 * ((64 << 10) + 112));
        assert_eq!(n, 32 * MIB + 12_288 + 515 * 112);
        assert_eq!(need([]), 0);
        assert_eq!(need([(0, 64 << 10)]), 0);
        // Never wraps.
        assert_eq!(need([(u64::MAX, 64 << 10), (1, 4096)]), u64::MAX);
    }

    #[test]
    fn a_full_copy_reads_every_chunk() {
        // 32 MiB in 64 KiB chunks.
        assert_eq!(chunks_of(65536, 64 << 10), 512);
        // A device whose length is not a multiple of the chunk: its last
        // chunk counts whole.
        assert_eq!(chunks_of(65536 + 8, 64 << 10), 513);
        assert_eq!(chunks_of(1, 64 << 10), 1);
        assert_eq!(chunks_of(0, 64 << 10), 0);
        assert_eq!(chunks_of(8, 0), 0);
        // Two devices of 32 MiB, full: 64 MiB and a record a chunk.
        let full = need([
            (chunks_of(65536, 64 << 10), 64 << 10),
            (chunks_of(65536, 64 << 10), 64 << 10),
        ]);
        assert_eq!(full, 64 * MIB + 1024 * 112);
    }

    #[test]
    fn room_is_what_is_available_less_the_reserve() {
        let reserve = DEFAULT_RESERVE_MB * MIB;
        // Room: the need fits in what is left beyond the reserve.
        assert!(decide(32 * MIB, 128 * MIB, reserve));
        assert!(decide(64 * MIB, 128 * MIB, reserve));
        // No room: one byte more.
        assert!(!decide(64 * MIB + 1, 128 * MIB, reserve));
        // The reserve alone is not there: nothing is free.
        assert!(!decide(1, 8 * MIB, reserve));
        assert_eq!(free(8 * MIB, reserve), 0);
        // Without a reserve, all that is available.
        assert!(decide(8 * MIB, 8 * MIB, 0));
        assert!(!decide(8 * MIB + 1, 8 * MIB, 0));
        // Nothing to copy needs nothing.
        assert!(decide(0, 0, 0));
        assert!(decide(0, 10, 5));
    }

    #[test]
    fn a_refusal_in_words() {
        let r = NoRoom {
            need: 32 * MIB + 57_344,
            available: 7 * MIB + MIB / 2,
            reserve: 4 * MIB,
            log_dir: "/var/lib/ferry/gr".into(),
        };
        assert_eq!(r.free(), 3 * MIB + MIB / 2);
        assert_eq!(
            r.words("and the resync starts by itself"),
            "resync refused by the secondary: it needs 32.1 MiB in its log_dir \
             (/var/lib/ferry/gr), 3.5 MiB are free (7.5 MiB available, less its reserve of \
             4.0 MiB); free space there, or raise it, and the resync starts by itself"
        );
        assert_eq!(
            r.figures(),
            "needed 32.1 MiB, 3.5 MiB free (7.5 MiB available less the reserve of 4.0 MiB) \
             in /var/lib/ferry/gr"
        );
    }
}
