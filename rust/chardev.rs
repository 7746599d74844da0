// SPDX-License-Identifier: GPL-2.0

//! The character device `/dev/ferry/<group>`: a misc device (mode 0600)
//! whose file operations (in `helpers.c`, so that `THIS_MODULE` pins the
//! module while a file is open) call the shims below.  Each shim turns the
//! C arguments into safe ones and calls the owner's [`FileOps`] method, as
//! later kernels' `miscdevice` abstraction does.  The owner (the group)
//! names itself once, with [`file_operations!`], which exports the C entry
//! points for it: this file knows nothing of groups.
//!
//! In a write's path: the reader (`ferryd`) takes records out here, and
//! gives its acknowledgements back.

use crate::bindings as b;
use crate::sync::WaitQueue;
use core::marker::PhantomPinned;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::ffi::{c_char, c_int, c_uint, c_void};
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};
use kernel::types::Opaque;
use kernel::uaccess::{UserSlice, UserSliceWriter};

/// Longest `name` of the misc device (`ferry-<group>`) with its NUL.
const NAME_LEN: usize = 48;

/// Largest `write(2)` of commands the device takes at once: many commands
/// back to back.
pub(crate) const WRITE_MAX: usize = 4096;

/// Largest `write(2)` at all: one record of the largest bio the target
/// accepts (1 MiB), which a secondary applies.
const WRITE_RECORD_MAX: usize = ferry_core::record::MAX_RECORD_LEN;

/// What the owner of a [`MiscDev`] does for the file operations of its
/// device.  An open file holds a reference to the owner.
pub(crate) trait FileOps: Send + Sync + Sized {
    /// A file is being opened; an error refuses the open.
    fn open(&self) -> Result;
    /// The file is closed (its last reference dropped).
    fn release(&self);
    /// `read(2)` of at most `len` bytes into `out`; `nonblock`: the file
    /// was opened with `O_NONBLOCK`.
    fn read(&self, out: &mut UserSliceWriter, len: usize, nonblock: bool) -> Result<usize>;
    /// `write(2)` of `buf` (all of it, or an error).
    fn write(&self, buf: &[u8]) -> Result;
    /// The wait queue `poll()` registers on.
    fn wait_queue(&self) -> &WaitQueue;
    /// What `poll()` reports after registering: whether a read would not
    /// block now (`POLLIN`; `POLLOUT` always).
    fn poll(&self) -> bool;
}

/// The misc device of an owner `T`.
#[pin_data]
pub(crate) struct MiscDev<T: FileOps> {
    #[pin]
    misc: Opaque<b::miscdevice>,
    name: [u8; NAME_LEN],
    nodename: [u8; NAME_LEN],
    /// The owner, as a reference leaked while registered.
    owner: core::sync::atomic::AtomicPtr<T>,
    registered: AtomicBool,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: the misc device is only touched through misc_register and
// misc_deregister (serialised by the misc core) and atomics.
unsafe impl<T: FileOps> Sync for MiscDev<T> {}
// SAFETY: as above.
unsafe impl<T: FileOps> Send for MiscDev<T> {}

fn c_name(prefix: &[u8], sep: u8, group: &[u8]) -> [u8; NAME_LEN] {
    let mut out = [0u8; NAME_LEN];
    let mut i = 0;
    for &c in Iterator::chain(Iterator::chain(prefix.iter(), core::iter::once(&sep)), group) {
        if i + 1 >= NAME_LEN {
            break;
        }
        out[i] = c;
        i += 1;
    }
    out
}

impl<T: FileOps> MiscDev<T> {
    /// An initialiser of the (unregistered) device of group `group`.
    pub(crate) fn new(group: &[u8]) -> impl PinInit<Self> {
        let name = c_name(b"ferry", b'-', group);
        let nodename = c_name(b"ferry", b'/', group);
        pin_init!(Self {
            misc: Opaque::new(b::miscdevice::default()),
            name,
            nodename,
            owner: core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()),
            registered: AtomicBool::new(false),
            _pin: PhantomPinned,
        })
    }

    /// Registers `/dev/ferry/<group>` for `owner`, which holds `self`.
    /// The registration keeps a reference to the owner until
    /// [`Self::deregister`].
    pub(crate) fn register(&self, owner: Arc<T>) -> Result {
        let m = self.misc.get();
        // SAFETY: `m` is ours and not registered (no one else reads it);
        // the names live in `self`, which is pinned inside the owner and
        // outlives the registration; the fops table is static.
        unsafe {
            (*m).minor = b::MISC_DYNAMIC_MINOR as c_int;
            (*m).name = self.name.as_ptr().cast::<c_char>();
            (*m).nodename = self.nodename.as_ptr().cast::<c_char>();
            (*m).mode = 0o600;
            (*m).fops = &b::ferry_chardev_fops;
        }
        self.owner
            .store(Arc::into_raw(owner).cast_mut(), Ordering::Release);
        // SAFETY: `m` is a filled-in miscdevice at a stable address.
        let r = unsafe { b::misc_register(m) };
        if r != 0 {
            self.drop_owner();
            return Err(Error::from_errno(r));
        }
        self.registered.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes the device node; files already open keep working on the
    /// owner they hold.  No `open` runs after this returns.  Process context.
    pub(crate) fn deregister(&self) {
        if self.registered.swap(false, Ordering::AcqRel) {
            // SAFETY: registered by `register` and not yet deregistered.
            unsafe { b::misc_deregister(self.misc.get()) };
            self.drop_owner();
        }
    }

    fn drop_owner(&self) {
        let p = self.owner.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: `p` came from `Arc::into_raw` in `register`.
            drop(unsafe { Arc::from_raw(p) });
        }
    }
}

/// The owner an open file holds (its `private_data`).
///
/// # Safety
///
/// `file` is an open file of a `MiscDev<T>`, opened by [`open`].
unsafe fn file_owner<'a, T: FileOps>(file: *mut b::file) -> ArcBorrow<'a, T> {
    // SAFETY: `open` stored `Arc::into_raw` in `private_data`; `release`
    // drops it, after every other file operation has returned.
    unsafe { ArcBorrow::from_raw((*file).private_data.cast::<T>()) }
}

/// `open` of a file of a `MiscDev<T>`.
///
/// # Safety
///
/// Called by the VFS through `ferry_chardev_fops`, after `misc_open` set
/// `private_data` to the misc device, which is a `MiscDev<T>`'s.
pub(crate) unsafe fn open<T: FileOps>(inode: *mut b::inode, file: *mut b::file) -> c_int {
    // SAFETY: `misc_open` stored the `miscdevice` in `private_data`; it is
    // field `misc` of a registered `MiscDev` (`Opaque` is transparent).
    let dev = unsafe {
        &*kernel::container_of!((*file).private_data.cast::<b::miscdevice>(), MiscDev<T>, misc)
    };
    let p = dev.owner.load(Ordering::Acquire);
    if p.is_null() {
        return ENODEV.to_errno();
    }
    // SAFETY: `misc_open` runs under the misc lock, so the device is still
    // registered and its reference to the owner (`p`) alive.
    let owner: Arc<T> = unsafe { ArcBorrow::from_raw(p) }.into();
    if let Err(e) = owner.open() {
        return e.to_errno();
    }
    // SAFETY: the file is being opened and is ours to set up.
    unsafe {
        (*file).private_data = Arc::into_raw(owner).cast_mut().cast::<c_void>();
        b::stream_open(inode, file);
    }
    0
}

/// `release` of a file of a `MiscDev<T>`.
///
/// # Safety
///
/// As for every file operation: `file` was opened by [`open`]`::<T>`.
pub(crate) unsafe fn release<T: FileOps>(_inode: *mut b::inode, file: *mut b::file) -> c_int {
    // SAFETY: the reference `open` leaked, returned once, at release.
    let owner = unsafe { Arc::from_raw((*file).private_data.cast::<T>()) };
    owner.release();
    0
}

/// `read` of a file of a `MiscDev<T>`.
///
/// # Safety
///
/// `file` was opened by [`open`]`::<T>`; `buf` is a user pointer.
pub(crate) unsafe fn read<T: FileOps>(
    file: *mut b::file,
    buf: *mut c_char,
    len: usize,
    _ppos: *mut b::loff_t,
) -> isize {
    // SAFETY: see `file_owner`.
    let owner = unsafe { file_owner::<T>(file) };
    // SAFETY: `file` is valid for the call.
    let nonblock = unsafe { (*file).f_flags } & b::O_NONBLOCK != 0;
    let mut out = UserSlice::new(buf as usize, len).writer();
    match owner.read(&mut out, len, nonblock) {
        Ok(n) => n as isize,
        Err(e) => e.to_errno() as isize,
    }
}

/// `write` of a file of a `MiscDev<T>`.
///
/// # Safety
///
/// `file` was opened by [`open`]`::<T>`; `buf` is a user pointer.
pub(crate) unsafe fn write<T: FileOps>(
    file: *mut b::file,
    buf: *const c_char,
    len: usize,
    _ppos: *mut b::loff_t,
) -> isize {
    // SAFETY: see `file_owner`.
    let owner = unsafe { file_owner::<T>(file) };
    if len > WRITE_RECORD_MAX {
        return EINVAL.to_errno() as isize;
    }
    // A record may be 1 MiB: virtually contiguous memory.
    let mut cmds = match KVVec::from_elem(0u8, len, GFP_KERNEL) {
        Ok(v) => v,
        Err(_) => return ENOMEM.to_errno() as isize,
    };
    if let Err(e) = UserSlice::new(buf as usize, len).reader().read_slice(&mut cmds) {
        return e.to_errno() as isize;
    }
    match owner.write(&cmds) {
        Ok(()) => len as isize,
        Err(e) => e.to_errno() as isize,
    }
}

/// `poll` of a file of a `MiscDev<T>`.
///
/// # Safety
///
/// `file` was opened by [`open`]`::<T>`; `pt` is the VFS's.
pub(crate) unsafe fn poll<T: FileOps>(file: *mut b::file, pt: *mut b::poll_table_struct) -> c_uint {
    // SAFETY: see `file_owner`.
    let owner = unsafe { file_owner::<T>(file) };
    // SAFETY: `file` and `pt` are this poll call's; the wait queue lives in
    // the owner, which the open file keeps alive.
    unsafe { owner.wait_queue().poll_wait(file, pt) };
    // SAFETY: constants defined in helpers.c, never written.
    let (pollin, pollout) = unsafe { (b::ferry_pollin, b::ferry_pollout) };
    if owner.poll() {
        pollin | pollout
    } else {
        pollout
    }
}

/// Exports the C entry points `helpers.c`'s `ferry_chardev_fops` calls
/// (`ferry_chardev_open`, `_release`, `_read`, `_write`, `_poll`) for the
/// files of a `MiscDev<$owner>`.  Used once in the module, by the owner.
macro_rules! file_operations {
    ($owner:ty) => {
        /// # Safety
        ///
        /// As [`chardev::open`](crate::chardev::open).
        #[no_mangle]
        unsafe extern "C" fn ferry_chardev_open(
            inode: *mut $crate::bindings::inode,
            file: *mut $crate::bindings::file,
        ) -> ::kernel::ffi::c_int {
            // SAFETY: the VFS calls with `open`'s contract, for a file of a
            // `MiscDev<$owner>` (the only misc devices using these fops).
            unsafe { $crate::chardev::open::<$owner>(inode, file) }
        }

        /// # Safety
        ///
        /// As [`chardev::release`](crate::chardev::release).
        #[no_mangle]
        unsafe extern "C" fn ferry_chardev_release(
            inode: *mut $crate::bindings::inode,
            file: *mut $crate::bindings::file,
        ) -> ::kernel::ffi::c_int {
            // SAFETY: as in `ferry_chardev_open`.
            unsafe { $crate::chardev::release::<$owner>(inode, file) }
        }

        /// # Safety
        ///
        /// As [`chardev::read`](crate::chardev::read).
        #[no_mangle]
        unsafe extern "C" fn ferry_chardev_read(
            file: *mut $crate::bindings::file,
            buf: *mut ::kernel::ffi::c_char,
            len: usize,
            ppos: *mut $crate::bindings::loff_t,
        ) -> isize {
            // SAFETY: as in `ferry_chardev_open`.
            unsafe { $crate::chardev::read::<$owner>(file, buf, len, ppos) }
        }

        /// # Safety
        ///
        /// As [`chardev::write`](crate::chardev::write).
        #[no_mangle]
        unsafe extern "C" fn ferry_chardev_write(
            file: *mut $crate::bindings::file,
            buf: *const ::kernel::ffi::c_char,
            len: usize,
            ppos: *mut $crate::bindings::loff_t,
        ) -> isize {
            // SAFETY: as in `ferry_chardev_open`.
            unsafe { $crate::chardev::write::<$owner>(file, buf, len, ppos) }
        }

        /// # Safety
        ///
        /// As [`chardev::poll`](crate::chardev::poll).
        #[no_mangle]
        unsafe extern "C" fn ferry_chardev_poll(
            file: *mut $crate::bindings::file,
            pt: *mut $crate::bindings::poll_table_struct,
        ) -> ::kernel::ffi::c_uint {
            // SAFETY: as in `ferry_chardev_open`.
            unsafe { $crate::chardev::poll::<$owner>(file, pt) }
        }
    };
}
pub(crate) use file_operations;
