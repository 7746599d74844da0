//! ferry-core: the record format, checksums and ordering rules of ferry,
//! shared by the kernel module and the userspace daemon.
//!
//! The crate is `no_std`, has no mandatory dependency and its algorithms
//! allocate nothing: storage (rings, windows, bitmap words) is owned by the
//! caller and lent as slices or fixed arrays. Checksums come through the
//! [`Digest`] trait, which the kernel implements over its `crc32c()` and
//! `xxh64()`, and userspace over hardware-accelerated crates (feature
//! `std`, `FastDigest`).
//!
//! One module per concern, in the order data flows:
//!
//! * [`record`] — record format v1 (encode, decode, verify).
//! * [`digest`] — CRC-32C and XXH64, reference implementation and vectors.
//! * [`stream`] — a device stream on the primary: numbering, queue,
//!   release order, acknowledgements, restart numbers (G1, G2, G3).
//! * [`spool`] — the spool's accounting on the primary: cap, overflow,
//!   `ahead`, what a blocked writer waits for (G3, G6).
//! * [`gate`] — the log-before-data gate on the primary (G2).
//! * [`select`] — receive windows and the apply limit at the secondary (G1).
//! * [`checkpoint`] — interval rendezvous and atomic interval apply (G4).
//! * [`consistency`] — application-consistent points.
//! * [`intent`] — write intent on the primary: marks, sweep (G3).
//! * [`bitmap`] — chunk bitmap and its on-disk encoding (G3).
//! * [`meta`] — the meta device of a primary: layout, superblock.
//! * [`generation`] — data generations: at a connection, which site is
//!   ahead, what a resync copies, split brain refused (rules and format;
//!   not stored by the kernel yet).
//! * [`command`] — commands written to the character device.
//! * [`batch`] — a `write(2)` of commands: all of them or none.
//! * [`table`] — the device-mapper table line of the `ferry` target.
//!
//! # In the kernel
//!
//! The module compiles `src/lib.rs` as crate `ferry_core` with no feature
//! (`no_std`, `core` only, no allocation, no floating point) and provides:
//!
//! * a [`Digest`] over `crc32c()` (raw, no inversion) and `xxh64()`; it can
//!   check the binding at load time against [`digest::vectors`] and
//!   [`record::vector`];
//! * per write, at completion: a [`record::RecordHeader`], the payload CRC
//!   over the bio's pages ([`digest::Crc32c`]), then
//!   [`record::encode_header`] into an 88-byte buffer and
//!   [`record::encode_tail`] into a 24-byte one;
//! * per group a [`stream::GroupOrder`] and per device a
//!   [`stream::Stream`] over its own ring of records: numbering at
//!   completion, the gate's watermark ([`stream::watermark`]), the next
//!   record to read ([`stream::next_releasable`]), the acknowledgement
//!   commands and the restart numbers;
//! * per group a [`spool::Spool`]: the bytes each record charges, the
//!   reservation of a write or of markers and what a full spool does
//!   (`overflow bitmap` or `block`), the mode (`ahead`, `START`, `STOP`)
//!   and what a writer waiting for room waits for;
//! * per device a [`intent::WriteIntent`] over its own words (admission,
//!   acknowledgements, `SPOOLED`, the sweep), and the bitmap pages it
//!   builds, written to the meta device;
//! * [`command::Commands`] over each `write(2)` to the character device
//!   (any [`command::CommandError`] is `-EINVAL`), checked as a whole by
//!   [`batch::Batch`] before any of it acts;
//! * in secondary mode, [`checkpoint::IntervalApply`] and its
//!   [`checkpoint::ApplyMark`] (read from two copies, merged over the
//!   members), [`checkpoint::place`] for each record applied, and a
//!   [`checkpoint::ReadHold`] for the host reads.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::cast_possible_truncation)]

mod bytes;

pub mod batch;
pub mod bitmap;
pub mod checkpoint;
pub mod command;
pub mod consistency;
/// Deliberate-bug switches, to show that the tests catch what they guard:
/// each is `false` unless its feature (`bug-*`) is on, which only a
/// deliberate-bug build turns on (`make module FERRY_BUG=<name>`, `cargo
/// test --features bug-<name>`).  See `Documentation/testing.rst`.
pub mod bugs {
    /// `bug-gate`: the gate releases data records at once (G2).
    pub const GATE: bool = cfg!(feature = "bug-gate");
    /// `bug-meta-fua`: the kernel writes meta pages without `REQ_FUA`, so
    /// a write-intent bit is not durable before the write it covers (G3).
    pub const META_NO_FUA: bool = cfg!(feature = "bug-meta-fua");
    /// `bug-apply-flush`: `APPLY_END` clears the mark without flushing the
    /// data devices first (G4).
    pub const APPLY_NO_FLUSH: bool = cfg!(feature = "bug-apply-flush");
}

pub mod digest;
pub mod gate;
pub mod generation;
pub mod intent;
pub mod meta;
pub mod record;
pub mod resync;
pub mod select;
pub mod spool;
pub mod stream;
pub mod table;

#[cfg(feature = "std")]
mod fast;

pub use digest::{Digest, SoftDigest};
#[cfg(feature = "std")]
pub use fast::FastDigest;
