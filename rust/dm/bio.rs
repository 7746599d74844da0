// SPDX-License-Identifier: GPL-2.0

//! Bios: the one `map` is handed ([`Bio`]: its operation, range, flags
//! and data segments, and its remapping to a lower device), and the bios a
//! target keeps to submit later ([`HeldBio`], [`HeldList`]).  The first
//! step of a write's path: `map` reads the bio, copies its data (through
//! [`Segments`]) and remaps it.

use super::DmDev;
use crate::bindings as b;
use crate::payload::Segments;
use core::marker::PhantomData;
use core::ptr::NonNull;

/// The operation of a bio.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    SecureErase,
    Other,
}

/// A bio handed to `map`.
///
/// # Invariants
///
/// `bio` is valid and owned by the target for the duration of `map`.
pub(crate) struct Bio<'a> {
    pub(super) bio: NonNull<b::bio>,
    pub(super) _p: PhantomData<&'a mut b::bio>,
}

impl Bio<'_> {
    fn raw(&self) -> &b::bio {
        // SAFETY: valid for the life of `self` by the type invariant.
        unsafe { self.bio.as_ref() }
    }

    /// The bio's operation.  An empty `REQ_PREFLUSH` write is a [`Op::Flush`].
    pub(crate) fn op(&self) -> Op {
        let opf = self.raw().bi_opf;
        let op = opf & ((1u32 << b::REQ_OP_BITS) - 1);
        match op {
            b::req_op_REQ_OP_READ => Op::Read,
            b::req_op_REQ_OP_WRITE => {
                if self.sectors() == 0 && opf & (1u32 << b::req_flag_bits___REQ_PREFLUSH) != 0 {
                    Op::Flush
                } else {
                    Op::Write
                }
            }
            b::req_op_REQ_OP_FLUSH => Op::Flush,
            b::req_op_REQ_OP_DISCARD => Op::Discard,
            b::req_op_REQ_OP_WRITE_ZEROES => Op::WriteZeroes,
            b::req_op_REQ_OP_SECURE_ERASE => Op::SecureErase,
            _ => Op::Other,
        }
    }

    /// First sector addressed, relative to the mapped device.
    pub(crate) fn sector(&self) -> u64 {
        self.raw().bi_iter.bi_sector
    }

    /// Length in sectors.
    pub(crate) fn sectors(&self) -> u32 {
        self.raw().bi_iter.bi_size >> 9
    }

    /// Length in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.raw().bi_iter.bi_size as usize
    }

    fn has_flag(&self, bit: u32) -> bool {
        self.raw().bi_opf & (1u32 << bit) != 0
    }

    /// Forced unit access: the write is durable when it completes.
    pub(crate) fn is_fua(&self) -> bool {
        self.has_flag(b::req_flag_bits___REQ_FUA)
    }

    /// The device cache is flushed before the bio's data is written.
    pub(crate) fn is_preflush(&self) -> bool {
        self.has_flag(b::req_flag_bits___REQ_PREFLUSH)
    }

    /// The submitter asked not to be blocked.
    pub(crate) fn is_nowait(&self) -> bool {
        self.has_flag(b::req_flag_bits___REQ_NOWAIT)
    }

    /// Calls `f(page, offset, len)` for each single-page segment of the
    /// bio's data, in order.  `page` is valid while the bio is.
    pub(crate) fn for_each_segment(&self, mut f: impl FnMut(*mut b::page, usize, usize)) {
        let mut iter = self.raw().bi_iter;
        let mut bv = b::bio_vec::default();
        // SAFETY: the bio is valid for the life of `self`; the helper only
        // reads its vector and advances our private copy of the iterator.
        while unsafe { b::ferry_bio_next_segment(self.bio.as_ptr(), &mut iter, &mut bv) } {
            f(bv.bv_page, bv.bv_offset as usize, bv.bv_len as usize);
        }
    }

    /// Redirects the bio to `sector` of `dev`.
    pub(crate) fn remap(&mut self, dev: &DmDev, sector: u64) {
        // SAFETY: the bio is ours during `map` (type invariant) and `bdev` is
        // an open block device.
        unsafe { b::ferry_bio_set_dev(self.bio.as_ptr(), dev.bdev()) };
        // SAFETY: as above; no other context reads the bio during `map`.
        unsafe { (*self.bio.as_ptr()).bi_iter.bi_sector = sector };
    }
}

/// The payload copy reads a write bio through this.
impl Segments for Bio<'_> {
    fn bytes(&self) -> usize {
        Bio::bytes(self)
    }

    fn for_each_segment(&self, f: impl FnMut(*mut b::page, usize, usize)) {
        Bio::for_each_segment(self, f)
    }
}

/// A bio `map` deferred: owned by the target until it submits or fails it.
///
/// # Invariants
///
/// `bio` is a remapped bio device-mapper gave to the target
/// (`DM_MAPIO_SUBMITTED`); nothing else touches it until `submit`/`fail`.
pub(crate) struct HeldBio {
    pub(super) bio: NonNull<b::bio>,
}

// SAFETY: the bio is exclusively ours (type invariant) and bios may be
// submitted from any thread.
unsafe impl Send for HeldBio {}

impl HeldBio {
    /// Submits the bio to the device it was remapped to.  Its completion
    /// reaches `end_io` with the object `map` attached.
    pub(crate) fn submit(self) {
        // SAFETY: the bio is ours (type invariant) and remapped; dm takes it.
        unsafe { b::dm_submit_bio_remap(self.bio.as_ptr(), core::ptr::null_mut()) };
    }

    /// Completes the bio with an I/O error (its `end_io` runs).
    pub(crate) fn fail(self) {
        // SAFETY: the bio is ours (type invariant); this completes it.
        unsafe { b::ferry_bio_io_error(self.bio.as_ptr()) };
    }
}

/// A FIFO of held bios, linked through `bi_next` as `struct bio_list` is.
pub(crate) struct HeldList {
    head: Option<NonNull<b::bio>>,
    tail: Option<NonNull<b::bio>>,
}

// SAFETY: the list owns its bios (see `HeldBio`).
unsafe impl Send for HeldList {}

impl HeldList {
    /// An empty list.
    pub(crate) const fn new() -> Self {
        Self {
            head: None,
            tail: None,
        }
    }

    /// Appends `b`.
    pub(crate) fn push(&mut self, b: HeldBio) {
        let bio = b.bio;
        // SAFETY: the bio is ours; `bi_next` is free while we hold it.
        unsafe { (*bio.as_ptr()).bi_next = core::ptr::null_mut() };
        match self.tail {
            // SAFETY: `t` is a bio of this list, ours.
            Some(t) => unsafe { (*t.as_ptr()).bi_next = bio.as_ptr() },
            None => self.head = Some(bio),
        }
        self.tail = Some(bio);
    }

    /// Removes and returns the first bio.
    pub(crate) fn pop(&mut self) -> Option<HeldBio> {
        let h = self.head?;
        // SAFETY: `h` is a bio of this list, ours.
        let next = unsafe { (*h.as_ptr()).bi_next };
        // SAFETY: as above; the link is cleared before the bio leaves us.
        unsafe { (*h.as_ptr()).bi_next = core::ptr::null_mut() };
        self.head = NonNull::new(next);
        if self.head.is_none() {
            self.tail = None;
        }
        // INVARIANT: the bio was held; it leaves the list to one owner.
        Some(HeldBio { bio: h })
    }

    /// Moves every bio out, leaving the list empty.
    pub(crate) fn take(&mut self) -> Self {
        core::mem::replace(self, Self::new())
    }
}

impl Drop for HeldList {
    fn drop(&mut self) {
        // A dropped list must not lose bios: fail what is left.
        while let Some(b) = self.pop() {
            b.fail();
        }
    }
}
