// SPDX-License-Identifier: GPL-2.0

//! The device-mapper layer: the only code in dm-ferry that touches
//! `struct target_type`, `struct dm_target`, `struct dm_dev` and
//! `struct bio` through raw pointers.
//!
//! A target implements the safe [`Target`] trait; [`Registration`] builds
//! the C `target_type` whose callbacks are the `extern "C"` shims in
//! [`VTable`], each of which turns the pointers device-mapper hands it into
//! references and calls the trait.

use crate::bindings as b;
use crate::payload::{Payload, Segments};
use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use kernel::error::code::{EINVAL, ENOMEM};
use kernel::ffi::{c_char, c_int, c_uint, c_void};
use kernel::prelude::*;
use kernel::types::ForeignOwnable;

/// A constructor failure: the errno returned to device-mapper and the message
/// it logs for the administrator (`ti->error`).
pub(crate) struct CtrError {
    pub(crate) msg: &'static CStr,
    pub(crate) err: Error,
}

impl CtrError {
    /// An invalid table line: `-EINVAL` with `msg`.
    pub(crate) fn inval(msg: &'static CStr) -> Self {
        Self { msg, err: EINVAL }
    }
}

/// What `map` did with a bio.
pub(crate) enum MapResult<Io> {
    /// The bio now points at a lower device; device-mapper submits it.
    /// The object, if any, is handed back to [`Target::end_io`] when the
    /// bio completes.
    Remapped(Option<Io>),
    /// A `REQ_NOWAIT` bio that would have to wait: it fails with
    /// `BLK_STS_AGAIN` and the submitter retries without the flag.
    WouldBlock,
    /// The bio is refused: it fails with `BLK_STS_NOTSUPP` (`EOPNOTSUPP`),
    /// e.g. a host write to a secondary.
    Refuse,
    /// The bio (already remapped) is handed to [`Target::defer`], which
    /// submits it later from process context; the object goes to `end_io`
    /// as for `Remapped`.
    Defer(Option<Io>),
}

/// The kind of status device-mapper asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusType {
    /// `dmsetup status`: counters and state.
    Info,
    /// `dmsetup table`: the constructor's arguments.
    Table,
    /// The IMA measurement line.
    Ima,
}

/// A device-mapper target type implemented in safe Rust.
pub(crate) trait Target: Sized + Send + Sync {
    /// Name of the target in tables (`<start> <len> <name> <args...>`).
    const NAME: &'static CStr;
    /// Version reported by `dmsetup targets`.
    const VERSION: [u32; 3];
    /// What `map` attaches to a bio for `end_io` (a `KBox` or an `Arc`).
    type Io: ForeignOwnable + Send;

    /// Builds a target from its table arguments.  Runs in process context
    /// and may sleep.
    fn new(ctr: &mut Ctr<'_>, args: &[&CStr]) -> Result<Self, CtrError>;

    /// Maps a bio.  Called concurrently on any CPU, possibly for bios marked
    /// `REQ_NOWAIT`: must not sleep.
    fn map(&self, bio: &mut Bio<'_>) -> MapResult<Self::Io>;

    /// A bio that `map` remapped with an object attached has completed,
    /// successfully or not.  Runs in the lower device's completion context
    /// (possibly a hard interrupt): must not sleep.
    fn end_io(&self, _io: Self::Io, _ok: bool) {}

    /// Takes a bio that `map` deferred: the target submits it (or fails
    /// it) later.  Same context as `map`.
    fn defer(&self, bio: HeldBio) {
        bio.fail();
    }

    /// `dmsetup message <dev> <sector> <args...>`.  Process context; may
    /// sleep.  A reply, if any, goes to `out`.
    fn message(&self, _args: &[&CStr], _out: &mut StatusWriter<'_>) -> Result {
        Err(EINVAL)
    }

    /// Writes the status line of kind `ty`.
    fn status(&self, ty: StatusType, out: &mut StatusWriter<'_>);

    /// Reports every underlying device (and the range of it this target uses)
    /// to `devices`, stopping at the first non-zero return.
    fn iterate_devices(&self, devices: &IterateDevices<'_>) -> c_int;

    /// Adjusts the queue limits stacked from the underlying devices.
    fn io_hints(&self, _limits: &mut b::queue_limits) {}
}

/// The target being constructed (`struct dm_target` during `ctr`).
///
/// # Invariants
///
/// `ti` is the valid `dm_target` device-mapper passed to `ctr`, exclusively
/// ours until `ctr` returns.
pub(crate) struct Ctr<'a> {
    ti: NonNull<b::dm_target>,
    _p: PhantomData<&'a mut b::dm_target>,
}

impl Ctr<'_> {
    fn ti(&self) -> &b::dm_target {
        // SAFETY: by the type invariant `ti` is valid for the life of `self`.
        unsafe { self.ti.as_ref() }
    }

    fn ti_mut(&mut self) -> &mut b::dm_target {
        // SAFETY: by the type invariant `ti` is valid and exclusively ours.
        unsafe { self.ti.as_mut() }
    }

    /// First sector of the target in the mapped device.
    pub(crate) fn begin(&self) -> u64 {
        self.ti().begin
    }

    /// Length of the target in sectors.
    pub(crate) fn len(&self) -> u64 {
        self.ti().len
    }

    /// Opens `path` (a device path or `major:minor`) with the table's mode.
    pub(crate) fn get_device(&mut self, path: &CStr) -> Result<DmDev, Error> {
        let ti = self.ti.as_ptr();
        let mut dev: *mut b::dm_dev = core::ptr::null_mut();
        // SAFETY: `ti` is valid (type invariant) and `ti->table` is the table
        // being loaded, which outlives the constructor.
        let mode = unsafe { b::dm_table_get_mode((*ti).table) };
        // SAFETY: `ti` is valid, `path` is NUL-terminated, `dev` is a valid
        // place for the result.
        let ret = unsafe { b::dm_get_device(ti, path.as_ptr().cast(), mode, &mut dev) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        let dev = NonNull::new(dev).ok_or(ENOMEM)?;
        // INVARIANT: `dev` was just obtained from `dm_get_device` on `ti`,
        // and the target owning the `DmDev` is dropped in `dtr` (or in `ctr`
        // on failure), before device-mapper frees `ti`.
        Ok(DmDev { ti: self.ti, dev })
    }

    /// Number of empty flush bios device-mapper sends to `map` per flush.
    pub(crate) fn set_num_flush_bios(&mut self, n: u32) {
        self.ti_mut().num_flush_bios = n;
    }

    /// Largest bio, in sectors, device-mapper sends to `map`: it splits
    /// larger ones (normal reads and writes; the queue limits set in
    /// `io_hints` are only hints to the layers above).
    pub(crate) fn set_max_io_len(&mut self, sectors: u32) {
        self.ti_mut().max_io_len = sectors;
    }

    /// Number of discard bios per discard (0: discards unsupported).
    pub(crate) fn set_num_discard_bios(&mut self, n: u32) {
        self.ti_mut().num_discard_bios = n;
    }

    /// Number of write-zeroes bios per write-zeroes (0: unsupported).
    pub(crate) fn set_num_write_zeroes_bios(&mut self, n: u32) {
        self.ti_mut().num_write_zeroes_bios = n;
    }

    /// Number of secure-erase bios per secure erase (0: unsupported).
    pub(crate) fn set_num_secure_erase_bios(&mut self, n: u32) {
        self.ti_mut().num_secure_erase_bios = n;
    }
}

/// An underlying device opened with `dm_get_device`; released on drop.
///
/// # Invariants
///
/// `dev` came from `dm_get_device(ti, ...)` and has not been put; `ti` stays
/// valid for as long as this value lives.
pub(crate) struct DmDev {
    ti: NonNull<b::dm_target>,
    dev: NonNull<b::dm_dev>,
}

// SAFETY: a `dm_dev` is a reference-counted handle that device-mapper lets any
// context read (`bdev`, `name`); the only mutation, `dm_put_device`, happens
// once, in `drop`.
unsafe impl Send for DmDev {}
// SAFETY: shared access only reads immutable fields of the handle.
unsafe impl Sync for DmDev {}

impl DmDev {
    fn bdev(&self) -> *mut b::block_device {
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
    bio: NonNull<b::bio>,
    _p: PhantomData<&'a mut b::bio>,
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
    bio: NonNull<b::bio>,
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

    /// Allocates a bio of `op` at `sector` with room for `nr_vecs`
    /// vectors, lets `add` fill them, submits it and waits.  Process
    /// context only.
    fn sync_io(&self, op: u32, sector: u64, nr_vecs: u16, add: impl FnOnce(*mut b::bio)) -> Result {
        // SAFETY: a constant defined in helpers.c.
        let gfp = unsafe { b::ferry_gfp_noio };
        // SAFETY: the device is open (type invariant); `fs_bio_set` is the
        // kernel's general bio set; GFP_NOIO may sleep (process context).
        let bio = unsafe {
            b::bio_alloc_bioset(
                self.0.as_ptr(),
                nr_vecs,
                op,
                gfp,
                core::ptr::addr_of_mut!(b::fs_bio_set),
            )
        };
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

impl DmDev {
    /// A handle for synchronous I/O, valid while this `DmDev` (or another
    /// on the same device) stays open.
    pub(crate) fn bdev_ref(&self) -> BdevRef {
        // INVARIANT: the caller keeps a `DmDev` open while using it.
        BdevRef(NonNull::new(self.bdev()).unwrap_or(NonNull::dangling()))
    }
}

/// Output buffer of a status request, with `DMEMIT` semantics: text beyond
/// the buffer is dropped and the buffer stays NUL-terminated.
///
/// # Invariants
///
/// `buf` points to `cap` writable bytes for the life of the writer, and
/// `cap > 0`.
pub(crate) struct StatusWriter<'a> {
    buf: NonNull<u8>,
    cap: usize,
    len: usize,
    _p: PhantomData<&'a mut [u8]>,
}

impl StatusWriter<'_> {
    /// A writer over device-mapper's result buffer, emptied; `None` for a
    /// null or empty buffer.
    ///
    /// # Safety
    ///
    /// `result` points to `maxlen` bytes writable for the life of the writer.
    unsafe fn from_raw(result: *mut c_char, maxlen: c_uint) -> Option<Self> {
        let buf = NonNull::new(result.cast::<u8>())?;
        if maxlen == 0 {
            return None;
        }
        // SAFETY: `maxlen > 0` bytes are writable at `result` (caller).
        unsafe { buf.as_ptr().write(0) };
        // INVARIANT: `buf` has `maxlen > 0` writable bytes (caller).
        Some(Self {
            buf,
            cap: maxlen as usize,
            len: 0,
            _p: PhantomData,
        })
    }
}

/// The `argc` arguments device-mapper passes to `ctr` and `message`.
///
/// # Safety
///
/// `argv` holds `argc` NUL-terminated strings that outlive `'a`.
unsafe fn collect_args<'a>(argc: c_uint, argv: *mut *mut c_char) -> Result<KVec<&'a CStr>> {
    let argc = argc as usize;
    let mut args = KVec::with_capacity(argc, GFP_KERNEL)?;
    for i in 0..argc {
        // SAFETY: `i < argc` pointers are valid, each a NUL-terminated
        // string living for `'a` (caller).
        let arg = unsafe { CStr::from_ptr((*argv.add(i)).cast()) };
        // Cannot fail: the capacity is reserved.
        args.push(arg, GFP_KERNEL)?;
    }
    Ok(args)
}

impl fmt::Write for StatusWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &byte in s.as_bytes() {
            if self.len + 1 >= self.cap {
                return Err(fmt::Error);
            }
            // SAFETY: `len + 1 < cap`, so `len` and `len + 1` are in bounds
            // of the buffer (type invariant).
            unsafe {
                self.buf.as_ptr().add(self.len).write(byte);
                self.buf.as_ptr().add(self.len + 1).write(0);
            }
            self.len += 1;
        }
        Ok(())
    }
}

/// The `iterate_devices` callout device-mapper passed in.
pub(crate) struct IterateDevices<'a> {
    ti: *mut b::dm_target,
    f: b::iterate_devices_callout_fn,
    data: *mut c_void,
    _p: PhantomData<&'a ()>,
}

impl IterateDevices<'_> {
    /// Reports `len` sectors of `dev` from `start` as used by this target.
    pub(crate) fn call(&self, dev: &DmDev, start: u64, len: u64) -> c_int {
        match self.f {
            // SAFETY: device-mapper's callout takes the target, a device of
            // it, a range and its own opaque `data`, all valid here.
            Some(f) => unsafe { f(self.ti, dev.dev.as_ptr(), start, len, self.data) },
            None => 0,
        }
    }
}

/// The C callbacks for target type `T`.
struct VTable<T: Target>(PhantomData<T>);

impl<T: Target> VTable<T> {
    /// # Safety
    ///
    /// Called by device-mapper with a valid `ti` and `argc` valid C strings in
    /// `argv`, in process context.
    unsafe extern "C" fn ctr(ti: *mut b::dm_target, argc: c_uint, argv: *mut *mut c_char) -> c_int {
        // INVARIANT: device-mapper gives us `ti` exclusively during ctr.
        let Some(ti_nn) = NonNull::new(ti) else {
            return EINVAL.to_errno();
        };
        let mut ctr = Ctr {
            ti: ti_nn,
            _p: PhantomData,
        };
        let fail = |ctr: &mut Ctr<'_>, e: CtrError| {
            ctr.ti_mut().error = e.msg.as_ptr().cast::<c_char>().cast_mut();
            e.err.to_errno()
        };

        // SAFETY: device-mapper passes `argc` strings in `argv` that outlive
        // the constructor.
        let Ok(args) = (unsafe { collect_args(argc, argv) }) else {
            return fail(
                &mut ctr,
                CtrError {
                    msg: c"Cannot allocate argument list",
                    err: ENOMEM,
                },
            );
        };

        // One pointer per bio: the object `map` attaches for `end_io`.
        ctr.ti_mut().per_io_data_size = core::mem::size_of::<*const c_void>() as c_uint;
        let target = match T::new(&mut ctr, &args) {
            Ok(t) => t,
            Err(e) => return fail(&mut ctr, e),
        };
        let target = match KBox::new(target, GFP_KERNEL) {
            Ok(t) => t,
            Err(_) => {
                return fail(
                    &mut ctr,
                    CtrError {
                        msg: c"Cannot allocate target context",
                        err: ENOMEM,
                    },
                )
            }
        };
        ctr.ti_mut().private = KBox::into_raw(target).cast();
        0
    }

    /// # Safety
    ///
    /// `ti` is a target whose `ctr` succeeded; called once, when no `map` or
    /// other callback can run any more.
    unsafe extern "C" fn dtr(ti: *mut b::dm_target) {
        // SAFETY: `ti` is valid (caller) and `private` holds the box that
        // `ctr` leaked; device-mapper calls `dtr` once.
        let target = unsafe { KBox::from_raw((*ti).private.cast::<T>()) };
        drop(target);
    }

    /// # Safety
    ///
    /// `ti` is a constructed target and `bio` a bio device-mapper owns and
    /// passes to us for the duration of the call.
    unsafe extern "C" fn map(ti: *mut b::dm_target, bio: *mut b::bio) -> c_int {
        // SAFETY: `private` is the target set by `ctr`, valid until `dtr`,
        // which device-mapper never runs concurrently with `map`.
        let target = unsafe { &*(*ti).private.cast::<T>() };
        let Some(bio) = NonNull::new(bio) else {
            return b::DM_MAPIO_KILL as c_int;
        };
        // INVARIANT: device-mapper hands the bio to `map` for its duration.
        let mut bio = Bio {
            bio,
            _p: PhantomData,
        };
        // SAFETY: `ctr` set `per_io_data_size` to one pointer, so the
        // per-bio area holds a `*const c_void`; it is ours while the bio is.
        let slot = unsafe {
            b::dm_per_bio_data(bio.bio.as_ptr(), core::mem::size_of::<*const c_void>())
                .cast::<*const c_void>()
        };
        // Null until `map` attaches an object: every path that completes the
        // bio (remapped or not) reaches `end_io`, which reads the slot.
        // SAFETY: `slot` is the bio's per-bio area (above).
        unsafe { slot.write(core::ptr::null()) };
        match target.map(&mut bio) {
            MapResult::Remapped(io) => {
                let p = io.map_or(core::ptr::null(), T::Io::into_foreign);
                // SAFETY: `slot` is the bio's per-bio area (above).
                unsafe { slot.write(p) };
                b::DM_MAPIO_REMAPPED as c_int
            }
            MapResult::Defer(io) => {
                let p = io.map_or(core::ptr::null(), T::Io::into_foreign);
                // SAFETY: `slot` is the bio's per-bio area (above).
                unsafe { slot.write(p) };
                // INVARIANT: returning DM_MAPIO_SUBMITTED below gives the
                // bio to the target, which `defer` hands it to.
                target.defer(HeldBio { bio: bio.bio });
                b::DM_MAPIO_SUBMITTED as c_int
            }
            MapResult::Refuse => {
                // SAFETY: the bio is ours; the helper completes it with
                // BLK_STS_NOTSUPP and we report it as submitted.
                unsafe { b::ferry_bio_refuse(bio.bio.as_ptr()) };
                b::DM_MAPIO_SUBMITTED as c_int
            }
            MapResult::WouldBlock => {
                // SAFETY: the bio is ours; `bio_wouldblock_error` completes
                // it with BLK_STS_AGAIN and we report it as submitted.
                unsafe { b::ferry_bio_wouldblock_error(bio.bio.as_ptr()) };
                b::DM_MAPIO_SUBMITTED as c_int
            }
        }
    }

    /// # Safety
    ///
    /// `ti` is a constructed target and `bio` a bio that `map` remapped,
    /// now completing; `error` points to its status.
    unsafe extern "C" fn end_io(ti: *mut b::dm_target, bio: *mut b::bio, error: *mut b::blk_status_t) -> c_int {
        // SAFETY: as in `map`.
        let target = unsafe { &*(*ti).private.cast::<T>() };
        // SAFETY: the per-bio area of a bio `map` remapped holds the pointer
        // `map` wrote (null or a leaked box), read once here.
        let p = unsafe {
            b::dm_per_bio_data(bio, core::mem::size_of::<*const c_void>())
                .cast::<*const c_void>()
                .read()
        };
        if !p.is_null() {
            // SAFETY: `p` came from `into_foreign` in `map`; ownership
            // returns here exactly once.
            let io = unsafe { T::Io::from_foreign(p) };
            // SAFETY: `error` is valid for reads (device-mapper's contract).
            let ok = unsafe { *error } == 0;
            target.end_io(io, ok);
        }
        b::DM_ENDIO_DONE as c_int
    }

    /// # Safety
    ///
    /// `ti` is a constructed target; `argv` holds `argc` C strings and
    /// `result` `maxlen` writable bytes.  Process context.
    unsafe extern "C" fn message(
        ti: *mut b::dm_target,
        argc: c_uint,
        argv: *mut *mut c_char,
        result: *mut c_char,
        maxlen: c_uint,
    ) -> c_int {
        // SAFETY: as in `map`.
        let target = unsafe { &*(*ti).private.cast::<T>() };
        // SAFETY: `result` has `maxlen` writable bytes (caller).
        let Some(mut out) = (unsafe { StatusWriter::from_raw(result, maxlen) }) else {
            return EINVAL.to_errno();
        };
        // SAFETY: `argv` holds `argc` strings that outlive the call.
        let Ok(args) = (unsafe { collect_args(argc, argv) }) else {
            return ENOMEM.to_errno();
        };
        match target.message(&args, &mut out) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// `ti` is a constructed target; `result` points to `maxlen` bytes.
    unsafe extern "C" fn status(
        ti: *mut b::dm_target,
        ty: b::status_type_t,
        _flags: c_uint,
        result: *mut c_char,
        maxlen: c_uint,
    ) {
        // SAFETY: as in `map`.
        let target = unsafe { &*(*ti).private.cast::<T>() };
        // SAFETY: `result` has `maxlen` writable bytes (caller).
        let Some(mut out) = (unsafe { StatusWriter::from_raw(result, maxlen) }) else {
            return;
        };
        let ty = match ty {
            b::status_type_t_STATUSTYPE_INFO => StatusType::Info,
            b::status_type_t_STATUSTYPE_TABLE => StatusType::Table,
            b::status_type_t_STATUSTYPE_IMA => StatusType::Ima,
            _ => return,
        };
        target.status(ty, &mut out);
    }

    /// # Safety
    ///
    /// `ti` is a constructed target; `f` and `data` are device-mapper's.
    unsafe extern "C" fn iterate_devices(
        ti: *mut b::dm_target,
        f: b::iterate_devices_callout_fn,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: as in `map`.
        let target = unsafe { &*(*ti).private.cast::<T>() };
        target.iterate_devices(&IterateDevices {
            ti,
            f,
            data,
            _p: PhantomData,
        })
    }

    /// # Safety
    ///
    /// `ti` is a constructed target; `limits` is valid and ours for the call.
    unsafe extern "C" fn io_hints(ti: *mut b::dm_target, limits: *mut b::queue_limits) {
        // SAFETY: as in `map`.
        let target = unsafe { &*(*ti).private.cast::<T>() };
        // SAFETY: device-mapper passes a valid, exclusive `limits`.
        if let Some(limits) = unsafe { limits.as_mut() } {
            target.io_hints(limits);
        }
    }
}

/// A registered target type; unregistered on drop.
///
/// # Invariants
///
/// `tt` is registered with device-mapper and, being boxed, never moves while
/// registered.
pub(crate) struct Registration<T: Target> {
    tt: KBox<UnsafeCell<b::target_type>>,
    _p: PhantomData<T>,
}

// SAFETY: after registration only device-mapper touches the `target_type`,
// under its own lock; we only pass its address to `dm_unregister_target`.
unsafe impl<T: Target> Send for Registration<T> {}
// SAFETY: as above; `&Registration` gives no access to the `target_type`.
unsafe impl<T: Target> Sync for Registration<T> {}

impl<T: Target> Registration<T> {
    /// Registers target type `T` with device-mapper, owned by `module`.
    pub(crate) fn new(module: &'static ThisModule) -> Result<Self> {
        let tt = b::target_type {
            name: T::NAME.as_ptr().cast(),
            module: module.as_ptr().cast(),
            version: T::VERSION,
            features: u64::from(b::DM_TARGET_NOWAIT),
            ctr: Some(VTable::<T>::ctr),
            dtr: Some(VTable::<T>::dtr),
            map: Some(VTable::<T>::map),
            end_io: Some(VTable::<T>::end_io),
            message: Some(VTable::<T>::message),
            status: Some(VTable::<T>::status),
            iterate_devices: Some(VTable::<T>::iterate_devices),
            io_hints: Some(VTable::<T>::io_hints),
            ..Default::default()
        };
        let tt = KBox::new(UnsafeCell::new(tt), GFP_KERNEL)?;
        // SAFETY: `tt` is a fully initialised `target_type` in a heap
        // allocation that does not move and outlives the registration (it is
        // unregistered in `drop` before being freed).
        let ret = unsafe { b::dm_register_target(tt.get()) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        Ok(Self {
            tt,
            _p: PhantomData,
        })
    }
}

impl<T: Target> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered by `new` (type invariant); device-mapper holds a
        // module reference for every live target of this type, so none exist
        // when the module is unloading.
        unsafe { b::dm_unregister_target(self.tt.get()) };
    }
}
