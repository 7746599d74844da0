// SPDX-License-Identifier: GPL-2.0

//! The C side of a target type: [`Registration`] registers a
//! `target_type` whose callbacks are the `extern "C"` shims of `VTable`,
//! and the views those shims hand to the safe [`Target`]: the target
//! being constructed ([`Ctr`]), the status buffer ([`StatusWriter`]) and
//! the `iterate_devices` callout ([`IterateDevices`]).

use super::bio::io_slot;
use super::{Bio, CtrError, DmDev, HeldBio, MapResult, StatusType, Target};
use crate::bindings as b;
use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use kernel::error::code::{EINVAL, ENOMEM};
use kernel::ffi::{c_char, c_int, c_uint, c_void};
use kernel::prelude::*;
use kernel::types::ForeignOwnable;

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
        let slot = unsafe { io_slot(bio.bio) };
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
                // bio to the target, which `defer` hands it to; its slot
                // holds null or the `T::Io` just attached.
                target.defer(HeldBio {
                    bio: bio.bio,
                    _io: PhantomData,
                });
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
        let Some(bio) = NonNull::new(bio) else {
            return b::DM_ENDIO_DONE as c_int;
        };
        // SAFETY: the per-bio area of a bio `map` remapped holds the pointer
        // `map` (or the target, for a held bio) wrote: null or one from
        // `into_foreign`, read once here.
        let p = unsafe { io_slot(bio).read() };
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
    /// `ti` is a constructed target; process context (device-mapper's
    /// suspend, before it waits for the bios in flight).
    unsafe extern "C" fn presuspend(ti: *mut b::dm_target) {
        // SAFETY: as in `map`.
        let target = unsafe { &*(*ti).private.cast::<T>() };
        target.presuspend();
    }

    /// # Safety
    ///
    /// `ti` is a constructed target whose `presuspend` ran; the suspend
    /// failed.  Process context.
    unsafe extern "C" fn presuspend_undo(ti: *mut b::dm_target) {
        // SAFETY: as in `map`.
        let target = unsafe { &*(*ti).private.cast::<T>() };
        target.resume();
    }

    /// # Safety
    ///
    /// `ti` is a constructed target, being resumed.  Process context.
    unsafe extern "C" fn resume(ti: *mut b::dm_target) {
        // SAFETY: as in `map`.
        let target = unsafe { &*(*ti).private.cast::<T>() };
        target.resume();
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
            presuspend: Some(VTable::<T>::presuspend),
            presuspend_undo: Some(VTable::<T>::presuspend_undo),
            resume: Some(VTable::<T>::resume),
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
