// SPDX-License-Identifier: GPL-2.0

//! Synchronisation the 6.12 kernel crate lacks: a spinlock that may be
//! taken in interrupt context (bio completions run there), and a wait
//! queue that `poll()` can register on.  The only unsafe code here wraps
//! the C primitives; users see safe types.  Under the whole path: the
//! group's state lock is taken from `map` to the acknowledgement.
//!
//! Each lock and wait queue has its own lockdep class and name, as the
//! kernel crate's `new_spinlock!` gives: create them with
//! [`new_irq_spinlock!`] and [`new_waitqueue!`], which make a static
//! `LockClassKey` at the call site and pass it, with the name, to the C
//! initialiser.

use crate::bindings as b;
use core::cell::UnsafeCell;
use core::marker::PhantomPinned;
use core::ops::{Deref, DerefMut};
use kernel::ffi::c_void;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::LockClassKey;
use kernel::types::Opaque;

/// An initialiser of an [`IrqSpinLock`] holding `data`, named `name`, of a
/// lockdep class of its own (one per call site, as `new_spinlock!`).
macro_rules! new_irq_spinlock {
    ($data:expr, $name:literal $(,)?) => {
        $crate::sync::IrqSpinLock::new($data, ::kernel::c_str!($name), ::kernel::static_lock_class!())
    };
}
pub(crate) use new_irq_spinlock;

/// An initialiser of an empty [`WaitQueue`] named `name`, of a lockdep
/// class of its own.
macro_rules! new_waitqueue {
    ($name:literal $(,)?) => {
        $crate::sync::WaitQueue::new(::kernel::c_str!($name), ::kernel::static_lock_class!())
    };
}
pub(crate) use new_waitqueue;

/// The C pointer of a lockdep class.  `LockClassKey` is a transparent
/// wrapper of an `Opaque<lock_class_key>` (interior mutability, as
/// lockdep writes the key), so its address is the key's.
fn class_ptr(key: &'static LockClassKey) -> *mut b::lock_class_key {
    core::ptr::from_ref(key).cast_mut().cast()
}

/// A spinlock taken with interrupts disabled (`spin_lock_irqsave`), so that
/// process context and completion (hard or soft interrupt) context may
/// share data.  Critical sections must be short and must not sleep.
#[pin_data]
pub(crate) struct IrqSpinLock<T> {
    #[pin]
    lock: Opaque<b::spinlock_t>,
    data: UnsafeCell<T>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: the lock serialises every access to `data`, so sharing the lock
// between threads is sound when `T` may be sent between them.
unsafe impl<T: Send> Sync for IrqSpinLock<T> {}
// SAFETY: the C spinlock has no thread affinity.
unsafe impl<T: Send> Send for IrqSpinLock<T> {}

impl<T> IrqSpinLock<T> {
    /// An initialiser of a lock holding `data`, named `name`, of lockdep
    /// class `key` (use [`new_irq_spinlock!`]).
    pub(crate) fn new(data: T, name: &'static CStr, key: &'static LockClassKey) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` points to the lock's storage, valid for writes;
            // the helper initialises it in place and it is pinned; `name`
            // and `key` are static, as lockdep keeps them.
            lock <- Opaque::ffi_init(|slot| unsafe {
                b::ferry_spin_lock_init(slot, name.as_char_ptr(), class_ptr(key))
            }),
            data: UnsafeCell::new(data),
            _pin: PhantomPinned,
        })
    }

    /// Takes the lock, disabling local interrupts until the guard drops.
    pub(crate) fn lock(&self) -> IrqGuard<'_, T> {
        // SAFETY: the lock was initialised by `new` and is pinned.
        let flags = unsafe { b::ferry_spin_lock_irqsave(self.lock.get()) };
        IrqGuard { lock: self, flags }
    }
}

/// Access to the data of a locked [`IrqSpinLock`].
pub(crate) struct IrqGuard<'a, T> {
    lock: &'a IrqSpinLock<T>,
    flags: kernel::ffi::c_ulong,
}

impl<T> Deref for IrqGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no other reference to the
        // data exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for IrqGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and the guard is borrowed mutably.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for IrqGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard took the lock with these flags.
        unsafe { b::ferry_spin_unlock_irqrestore(self.lock.lock.get(), self.flags) };
    }
}

/// A wait queue (`wait_queue_head_t`).
#[pin_data]
pub(crate) struct WaitQueue {
    #[pin]
    wq: Opaque<b::wait_queue_head>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: wait queues are designed to be used from any thread.
unsafe impl Sync for WaitQueue {}
// SAFETY: as above.
unsafe impl Send for WaitQueue {}

impl WaitQueue {
    /// An initialiser of an empty wait queue named `name`, of lockdep
    /// class `key` (use [`new_waitqueue!`]).
    pub(crate) fn new(name: &'static CStr, key: &'static LockClassKey) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes and pinned; `name` and
            // `key` are static, as lockdep keeps them.
            wq <- Opaque::ffi_init(|slot| unsafe {
                b::ferry_init_waitqueue_head(slot, name.as_char_ptr(), class_ptr(key))
            }),
            _pin: PhantomPinned,
        })
    }

    /// Wakes every waiter.  Any context.
    pub(crate) fn wake_all(&self) {
        // SAFETY: the queue is initialised and pinned.
        unsafe { b::ferry_wake_up_all(self.wq.get()) };
    }

    /// Registers the queue with a `poll()` call.
    ///
    /// # Safety
    ///
    /// `file` and `pt` are the arguments of the current `poll` file
    /// operation, and the queue outlives the file's use of it (it lives as
    /// long as the object the file holds a reference to).
    pub(crate) unsafe fn poll_wait(&self, file: *mut b::file, pt: *mut b::poll_table_struct) {
        // SAFETY: the caller's contract.
        unsafe { b::ferry_poll_wait(file, self.wq.get(), pt) };
    }

    /// Sleeps until `cond()` holds; `Err(ERESTARTSYS)` if a signal came
    /// first.  `cond` is evaluated with the task state set: it must not
    /// sleep.  Process context only.
    pub(crate) fn wait_interruptible<F: Fn() -> bool>(&self, cond: &F) -> Result {
        // SAFETY: the queue is initialised; `trampoline::<F>` receives the
        // `cond` pointer given here, valid for the whole call.
        let r = unsafe {
            b::ferry_wait_event_interruptible(
                self.wq.get(),
                Some(trampoline::<F>),
                (cond as *const F).cast::<c_void>(),
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(Error::from_errno(r))
        }
    }

    /// Sleeps, not interruptibly, until `cond()` holds.  Process context.
    pub(crate) fn wait<F: Fn() -> bool>(&self, cond: &F) {
        // SAFETY: as in `wait_interruptible`.
        unsafe {
            b::ferry_wait_event(
                self.wq.get(),
                Some(trampoline::<F>),
                (cond as *const F).cast::<c_void>(),
            )
        };
    }
}

/// # Safety
///
/// `arg` points to a live `F`.
unsafe extern "C" fn trampoline<F: Fn() -> bool>(arg: *const c_void) -> bool {
    // SAFETY: the caller's contract.
    let f = unsafe { &*arg.cast::<F>() };
    f()
}
