// SPDX-License-Identifier: GPL-2.0

//! Bios: the one `map` is handed ([`Bio`]: its operation, range, flags
//! and data segments, and its remapping to a lower device), and the bios a
//! target keeps to submit later ([`HeldBio`], [`HeldList`]), each with the
//! object `map` attached in its per-bio slot.  The first
//! step of a write's path: `map` reads the bio, copies its data (through
//! [`Segments`]) and remaps it.

use super::DmDev;
use crate::bindings as b;
use crate::payload::Segments;
use core::marker::PhantomData;
use core::ptr::NonNull;
use kernel::ffi::c_void;
use kernel::types::ForeignOwnable;

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
    pub(crate) fn for_each_segment(&self, f: impl FnMut(*mut b::page, usize, usize)) {
        // SAFETY: the bio is valid and ours for the life of `self` (type
        // invariant).
        unsafe { for_each_segment_of(self.bio, f) }
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

/// The per-bio slot device-mapper keeps for the target: one pointer, the
/// object `map` attached for `end_io` (`vtable.rs` sizes it).
///
/// # Safety
///
/// `bio` is a bio device-mapper handed to a target whose `ctr` set
/// `per_io_data_size` to one pointer.
pub(super) unsafe fn io_slot(bio: NonNull<b::bio>) -> *mut *const c_void {
    // SAFETY: the caller's contract: the per-bio area is one pointer.
    unsafe { b::dm_per_bio_data(bio.as_ptr(), core::mem::size_of::<*const c_void>()).cast() }
}

/// Calls `f(page, offset, len)` for each single-page segment of `bio`'s
/// data.
///
/// # Safety
///
/// `bio` is valid for the call and its vector is not changed meanwhile.
unsafe fn for_each_segment_of(bio: NonNull<b::bio>, mut f: impl FnMut(*mut b::page, usize, usize)) {
    // SAFETY: valid (caller); our copy of the iterator only.
    let mut iter = unsafe { bio.as_ref() }.bi_iter;
    let mut bv = b::bio_vec::default();
    // SAFETY: the bio is valid (caller); the helper only reads its vector
    // and advances our private copy of the iterator.
    while unsafe { b::ferry_bio_next_segment(bio.as_ptr(), &mut iter, &mut bv) } {
        f(bv.bv_page, bv.bv_offset as usize, bv.bv_len as usize);
    }
}

/// A bio `map` deferred: owned by the target until it submits or fails it,
/// with the object of type `I` `map` attached in its per-bio slot (what
/// `end_io` receives).
///
/// # Invariants
///
/// `bio` is a remapped bio device-mapper gave to the target
/// (`DM_MAPIO_SUBMITTED`); nothing else touches it until `submit`/`fail`.
/// Its per-bio slot ([`io_slot`]) holds null or a pointer from
/// `I::into_foreign` that the bio owns.
pub(crate) struct HeldBio<I: ForeignOwnable> {
    pub(super) bio: NonNull<b::bio>,
    pub(super) _io: PhantomData<I>,
}

// SAFETY: the bio is exclusively ours (type invariant), bios may be
// submitted from any thread, and the attached object is `Send`.
unsafe impl<I: ForeignOwnable + Send> Send for HeldBio<I> {}

impl<I: ForeignOwnable> HeldBio<I> {
    fn slot(&self) -> *mut *const c_void {
        // SAFETY: a deferred bio of a target, whose per-bio area is the
        // one pointer (type invariant).
        unsafe { io_slot(self.bio) }
    }

    /// The attached object, borrowed.
    pub(crate) fn io(&self) -> Option<I::Borrowed<'_>> {
        // SAFETY: the slot is the bio's and the bio is ours.
        let p = unsafe { self.slot().read() };
        // SAFETY: a non-null slot holds a pointer from `I::into_foreign`
        // (type invariant), which stays there while `self` is borrowed.
        (!p.is_null()).then(|| unsafe { I::borrow(p) })
    }

    /// Takes the attached object back (the slot is left empty): the
    /// target changes or replaces it, and gives it back with
    /// [`Self::attach`] before the bio goes.
    pub(crate) fn take_io(&mut self) -> Option<I> {
        let slot = self.slot();
        // SAFETY: the slot is the bio's and the bio is ours.
        let p = unsafe { slot.read() };
        if p.is_null() {
            return None;
        }
        // SAFETY: as above; emptied before the object leaves.
        unsafe { slot.write(core::ptr::null()) };
        // SAFETY: `p` came from `I::into_foreign` (type invariant) and the
        // slot no longer holds it: ownership comes back once.
        Some(unsafe { I::from_foreign(p) })
    }

    /// Attaches `io` (or nothing) for `end_io`, dropping what was there.
    pub(crate) fn attach(&mut self, io: Option<I>) {
        drop(self.take_io());
        let p = io.map_or(core::ptr::null(), I::into_foreign);
        // SAFETY: the slot is the bio's and the bio is ours.
        // INVARIANT: null or a pointer from `into_foreign`, owned by the bio.
        unsafe { self.slot().write(p) };
    }

    /// Submits the bio to the device it was remapped to.  Its completion
    /// reaches `end_io` with the object attached.
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

/// A held write's data, for the payload copy (the worker copies it when
/// the write is let in).
impl<I: ForeignOwnable> Segments for HeldBio<I> {
    fn bytes(&self) -> usize {
        // SAFETY: the bio is ours (type invariant).
        unsafe { self.bio.as_ref() }.bi_iter.bi_size as usize
    }

    fn for_each_segment(&self, f: impl FnMut(*mut b::page, usize, usize)) {
        // SAFETY: the bio is ours and unchanged while held (type invariant).
        unsafe { for_each_segment_of(self.bio, f) }
    }
}

/// A FIFO of held bios, linked through `bi_next` as `struct bio_list` is.
pub(crate) struct HeldList<I: ForeignOwnable> {
    head: Option<NonNull<b::bio>>,
    tail: Option<NonNull<b::bio>>,
    _io: PhantomData<I>,
}

// SAFETY: the list owns its bios (see `HeldBio`).
unsafe impl<I: ForeignOwnable + Send> Send for HeldList<I> {}

impl<I: ForeignOwnable> HeldList<I> {
    /// An empty list.
    pub(crate) const fn new() -> Self {
        Self {
            head: None,
            tail: None,
            _io: PhantomData,
        }
    }

    /// Appends `b`.
    pub(crate) fn push(&mut self, b: HeldBio<I>) {
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

    /// Puts `b` back first (it was popped and must keep its turn).
    pub(crate) fn push_front(&mut self, b: HeldBio<I>) {
        let bio = b.bio;
        let next = self.head.map_or(core::ptr::null_mut(), NonNull::as_ptr);
        // SAFETY: the bio is ours; `bi_next` is free while we hold it.
        unsafe { (*bio.as_ptr()).bi_next = next };
        if self.tail.is_none() {
            self.tail = Some(bio);
        }
        self.head = Some(bio);
    }

    /// Removes and returns the first bio.
    pub(crate) fn pop(&mut self) -> Option<HeldBio<I>> {
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
        Some(HeldBio {
            bio: h,
            _io: PhantomData,
        })
    }

    /// Whether the list holds no bio.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Moves every bio out, leaving the list empty.
    pub(crate) fn take(&mut self) -> Self {
        core::mem::replace(self, Self::new())
    }
}

impl<I: ForeignOwnable> Drop for HeldList<I> {
    fn drop(&mut self) {
        // A dropped list must not lose bios: fail what is left.
        while let Some(b) = self.pop() {
            b.fail();
        }
    }
}
