// SPDX-License-Identifier: GPL-2.0

//! The devices a target uses: [`DmDev`], an underlying device opened
//! with `dm_get_device` for the life of the target, and [`BdevRef`], a
//! handle for synchronous I/O from process context: the meta device's
//! pages (write intent, superblock, apply marks) and a secondary's apply
//! of records.  That I/O takes its bios from the module's own bio set
//! ([`init_bio_set`]), never from the kernel's `fs_bio_set`: a meta write
//! under memory pressure must not wait for bios that the file system
//! above, whose writeback may be waiting on that very write, holds.

use crate::bindings as b;
use crate::payload::Payload;
use core::ffi::CStr;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::error::code::{EINVAL, ENOMEM};
use kernel::ffi::{c_int, c_uint};
use kernel::prelude::*;

/// The module's bio set, set between [`init_bio_set`] and
/// [`exit_bio_set`].
static BIO_SET: AtomicPtr<b::bio_set> = AtomicPtr::new(core::ptr::null_mut());

/// Bios (and bio vectors) the module's set keeps in reserve: each
/// synchronous I/O holds one bio until it completes, so a few suffice for
/// progress; more are allocated while memory allows.
const BIO_POOL: c_uint = 16;

/// Creates the module's bio set.  Module init, before any target exists.
pub(crate) fn init_bio_set() -> Result {
    // SAFETY: no precondition; process context.
    let bs = unsafe { b::ferry_bioset_create(BIO_POOL) };
    if bs.is_null() {
        return Err(ENOMEM);
    }
    BIO_SET.store(bs, Ordering::Release);
    Ok(())
}

/// Destroys the module's bio set.  Module exit, once every target is gone
/// (no I/O uses it).
pub(crate) fn exit_bio_set() {
    let bs = BIO_SET.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !bs.is_null() {
        // SAFETY: `bs` came from `init_bio_set`, and no bio of it is in
        // flight (every synchronous I/O completed before its target went).
        unsafe { b::ferry_bioset_destroy(bs) };
    }
}

/// An underlying device opened with `dm_get_device`; released on drop.
///
/// # Invariants
///
/// `dev` came from `dm_get_device(ti, ...)` and has not been put; `ti` stays
/// valid for as long as this value lives.
pub(crate) struct DmDev {
    pub(super) ti: NonNull<b::dm_target>,
    pub(super) dev: NonNull<b::dm_dev>,
}

// SAFETY: a `dm_dev` is a reference-counted handle that device-mapper lets any
// context read (`bdev`, `name`); the only mutation, `dm_put_device`, happens
// once, in `drop`.
unsafe impl Send for DmDev {}
// SAFETY: shared access only reads immutable fields of the handle.
unsafe impl Sync for DmDev {}

impl DmDev {
    pub(super) fn bdev(&self) -> *mut b::block_device {
        // SAFETY: `dev` is valid by the type invariant; `bdev` is set when the
        // device is opened and constant afterwards.
        unsafe { (*self.dev.as_ptr()).bdev }
    }

    /// The `major:minor` name device-mapper uses in tables.
    pub(crate) fn name(&self) -> &CStr {
        // SAFETY: `dev` is valid; `name` is a NUL-terminated array filled by
        // `dm_get_device` and never changed afterwards.
        let name = unsafe { &(*self.dev.as_ptr()).name };
        // SAFETY: `name` is a NUL-terminated C string inside the handle that
        // lives as long as `self`.
        unsafe { CStr::from_ptr(name.as_ptr().cast()) }
    }

    /// Size of the device in 512-byte sectors.
    pub(crate) fn nr_sectors(&self) -> u64 {
        // SAFETY: `bdev` is a valid, open block device.
        unsafe { b::ferry_bdev_nr_sectors(self.bdev()) }
    }

    /// Logical block size of the device in bytes.
    pub(crate) fn logical_block_size(&self) -> u32 {
        // SAFETY: `bdev` is a valid, open block device.
        unsafe { b::ferry_bdev_logical_block_size(self.bdev()) }
    }

    /// The device number, equal for two handles on the same device.
    pub(crate) fn devt(&self) -> u32 {
        // SAFETY: `bdev` is a valid, open block device.
        unsafe { b::ferry_bdev_devt(self.bdev()) }
    }
}

impl Drop for DmDev {
    fn drop(&mut self) {
        // SAFETY: by the type invariant `dev` was obtained from
        // `dm_get_device` on `ti`, which is still valid, and is put only here.
        unsafe { b::dm_put_device(self.ti.as_ptr(), self.dev.as_ptr()) };
    }
}

impl DmDev {
    /// A handle for synchronous I/O, valid while this `DmDev` (or another
    /// on the same device) stays open.
    pub(crate) fn bdev_ref(&self) -> BdevRef {
        // INVARIANT: the caller keeps a `DmDev` open while using it.
        BdevRef(NonNull::new(self.bdev()).unwrap_or(NonNull::dangling()))
    }
}

/// A block device a target holds open, for synchronous I/O from process
/// context (the meta device).
///
/// # Invariants
///
/// Whoever holds a `BdevRef` guarantees that a `DmDev` on the device stays
/// open while it is used.
#[derive(Clone, Copy)]
pub(crate) struct BdevRef(NonNull<b::block_device>);

// SAFETY: a block device handle may be used from any thread.
unsafe impl Send for BdevRef {}
// SAFETY: as above.
unsafe impl Sync for BdevRef {}

impl BdevRef {
    /// Whether both name the same block device.
    pub(crate) fn same(&self, other: &Self) -> bool {
        self.0 == other.0
    }

    /// Reads (`write` false) or writes 4096 bytes at `sector` to or from
    /// `page`, and waits.  A write is `REQ_SYNC | REQ_FUA` (durable when
    /// it returns).  Process context only, never from `map`.
    pub(crate) fn page_io(&self, sector: u64, page: &kernel::page::Page, write: bool) -> Result {
        let op = if write {
            // (Without FUA only in the deliberate-bug build `meta-fua`.)
            let fua = if ferry_core::bugs::META_NO_FUA {
                0
            } else {
                1u32 << b::req_flag_bits___REQ_FUA
            };
            b::req_op_REQ_OP_WRITE | (1u32 << b::req_flag_bits___REQ_SYNC) | fua
        } else {
            b::req_op_REQ_OP_READ
        };
        // SAFETY: the page outlives the synchronous I/O (the caller's
        // borrow), and one vector was reserved for it.
        self.sync_io(op, sector, 1, |bio| unsafe {
            b::__bio_add_page(bio, page.as_ptr().cast(), 4096, 0);
        })
    }

    /// Writes `payload` at `sector` and waits (`REQ_SYNC`, not durable
    /// until [`flush`](Self::flush)).  Process context only.
    pub(crate) fn write_payload(&self, sector: u64, payload: &Payload) -> Result {
        let n = Payload::pages_for(payload.len());
        if n == 0 {
            return Ok(());
        }
        // A payload is at most 1 MiB: 256 vectors, within BIO_MAX_VECS.
        let nr_vecs = u16::try_from(n).map_err(|_| EINVAL)?;
        let op = b::req_op_REQ_OP_WRITE | (1u32 << b::req_flag_bits___REQ_SYNC);
        self.sync_io(op, sector, nr_vecs, |bio| {
            payload.for_each_page(|page, len| {
                // SAFETY: `bio` has room for one vector per page; the pages
                // belong to `payload`, which outlives the synchronous I/O.
                unsafe { b::__bio_add_page(bio, page, len as c_uint, 0) };
            });
        })
    }

    /// Reads `payload.len()` bytes at `sector` into `payload`'s pages and
    /// waits.  Process context only.
    pub(crate) fn read_payload(&self, sector: u64, payload: &Payload) -> Result {
        let n = Payload::pages_for(payload.len());
        if n == 0 {
            return Ok(());
        }
        // At most 1 MiB (a resync chunk is smaller): within BIO_MAX_VECS.
        let nr_vecs = u16::try_from(n).map_err(|_| EINVAL)?;
        self.sync_io(b::req_op_REQ_OP_READ, sector, nr_vecs, |bio| {
            payload.for_each_page(|page, len| {
                // SAFETY: `bio` has room for one vector per page; the pages
                // belong to `payload`, which outlives the synchronous I/O,
                // and nothing else uses them meanwhile (the caller's).
                unsafe { b::__bio_add_page(bio, page, len as c_uint, 0) };
            });
        })
    }

    /// Allocates a bio of `op` at `sector` with room for `nr_vecs`
    /// vectors, lets `add` fill them, submits it and waits.  Process
    /// context only.
    fn sync_io(&self, op: u32, sector: u64, nr_vecs: u16, add: impl FnOnce(*mut b::bio)) -> Result {
        // SAFETY: a constant defined in helpers.c.
        let gfp = unsafe { b::ferry_gfp_noio };
        let bs = BIO_SET.load(Ordering::Acquire);
        if bs.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: the device is open (type invariant); `bs` is the module's
        // bio set, alive until module exit, after every target; GFP_NOIO
        // may sleep (process context) and then waits for the set's reserve.
        let bio = unsafe { b::bio_alloc_bioset(self.0.as_ptr(), nr_vecs, op, gfp, bs) };
        let Some(bio) = NonNull::new(bio) else {
            return Err(ENOMEM);
        };
        // SAFETY: `bio` is ours until submitted.
        unsafe { (*bio.as_ptr()).bi_iter.bi_sector = sector };
        add(bio.as_ptr());
        // SAFETY: `bio` is fully set up; we wait for it and then drop it.
        let r = unsafe { b::submit_bio_wait(bio.as_ptr()) };
        // SAFETY: our reference from `bio_alloc_bioset`.
        unsafe { b::bio_put(bio.as_ptr()) };
        errno(r)
    }

    /// Flushes the device's volatile cache and waits.
    pub(crate) fn flush(&self) -> Result {
        // SAFETY: the device is open (type invariant); process context.
        errno(unsafe { b::ferry_blkdev_flush(self.0.as_ptr()) })
    }

    /// Zeroes `nr` sectors at `sector` and waits.
    pub(crate) fn zeroout(&self, sector: u64, nr: u64) -> Result {
        // SAFETY: as in `flush`.
        errno(unsafe { b::ferry_blkdev_zeroout(self.0.as_ptr(), sector, nr) })
    }

    /// Discards `nr` sectors at `sector` (nothing when unsupported).
    pub(crate) fn discard(&self, sector: u64, nr: u64) -> Result {
        // SAFETY: as in `flush`.
        errno(unsafe { b::ferry_blkdev_discard(self.0.as_ptr(), sector, nr) })
    }
}

fn errno(r: c_int) -> Result {
    if r == 0 {
        Ok(())
    } else {
        Err(Error::from_errno(r))
    }
}
