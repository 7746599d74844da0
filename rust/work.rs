// SPDX-License-Identifier: GPL-2.0

//! Delayed work (`struct delayed_work`), which the 6.12 kernel crate does
//! not wrap, on the module's own workqueue: it writes the bitmap and
//! submits deferred writes, so it is `WQ_MEM_RECLAIM` (it must make
//! progress when memory is short and writeback waits on it).  The owner of a [`DelayedWork`] embeds
//! it, names itself with [`DelayedWork::set_owner`], and cancels it with
//! [`DelayedWork::cancel_sync`] before it goes away.  In a write's path:
//! the group's kick and tick run here (`group/tick.rs`).

use crate::bindings as b;
use core::marker::PhantomPinned;
use core::sync::atomic::{AtomicPtr, Ordering};

/// The module's workqueue, set between [`init`] and [`exit`].
static WQ: AtomicPtr<b::workqueue_struct> = AtomicPtr::new(core::ptr::null_mut());

/// Creates the module's workqueue.  Module init, before any work exists.
pub(crate) fn init() -> Result {
    // SAFETY: no precondition; returns a new workqueue or null.
    let wq = unsafe { b::ferry_alloc_workqueue() };
    if wq.is_null() {
        return Err(ENOMEM);
    }
    WQ.store(wq, Ordering::Release);
    Ok(())
}

/// Destroys the module's workqueue.  Module exit, after every work item
/// was cancelled (every group is gone).
pub(crate) fn exit() {
    let wq = WQ.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !wq.is_null() {
        // SAFETY: `wq` came from `init` and no work is queued on it.
        unsafe { b::destroy_workqueue(wq) };
    }
}
use kernel::prelude::*;
use kernel::types::Opaque;

/// A scope in which the current task's allocations do no I/O
/// (`memalloc_noio_save`): `GFP_KERNEL` acts as `GFP_NOIO`, so that work
/// that submits writes may sleep to reclaim memory but never waits on
/// writeback that could wait on it.  Process context.
///
/// # Invariants
///
/// Dropped on the task that entered it (not `Send`), in reverse order of
/// nested scopes (a guard).
pub(crate) struct NoIo {
    flags: kernel::ffi::c_uint,
    _task: core::marker::PhantomData<*const ()>,
}

impl NoIo {
    /// Enters the scope, until the guard drops.
    pub(crate) fn enter() -> Self {
        // SAFETY: no precondition; process context.
        let flags = unsafe { b::ferry_memalloc_noio_save() };
        Self {
            flags,
            _task: core::marker::PhantomData,
        }
    }
}

impl Drop for NoIo {
    fn drop(&mut self) {
        // SAFETY: restores what `enter` saved, on the same task and in
        // nesting order (type invariant).
        unsafe { b::ferry_memalloc_noio_restore(self.flags) };
    }
}

/// Which of its owner's work items ran.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkId {
    /// The periodic tick.
    Tick,
    /// On-demand work.
    Kick,
    /// A resync's copy (it reads chunks: its own work, so that the kick
    /// never waits on it).
    Resync,
}

/// What a [`DelayedWork`] runs, in process context.
pub(crate) trait Worker: Sync {
    /// The work function of item `id`.
    fn run(&self, id: WorkId);
}

/// A delayed work item whose function is `T::run` on its owner.
#[pin_data]
pub(crate) struct DelayedWork<T: Worker> {
    #[pin]
    dw: Opaque<b::delayed_work>,
    owner: AtomicPtr<T>,
    id: WorkId,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: the work item is only touched through the workqueue API, which
// is thread-safe; the owner pointer is atomic.
unsafe impl<T: Worker> Sync for DelayedWork<T> {}
// SAFETY: as above.
unsafe impl<T: Worker> Send for DelayedWork<T> {}

impl<T: Worker> DelayedWork<T> {
    /// An initialiser of an idle work item `id` with no owner yet.
    pub(crate) fn new(id: WorkId) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes and pinned.
            dw <- Opaque::ffi_init(|slot| unsafe { b::ferry_init_delayed_work(slot, Some(Self::run_raw)) }),
            owner: AtomicPtr::new(core::ptr::null_mut()),
            id,
            _pin: PhantomPinned,
        })
    }

    /// Names the owner the work function runs on.
    ///
    /// # Safety
    ///
    /// `owner` contains `self` (so it does not move) and calls
    /// [`Self::cancel_sync`] before it is dropped.
    pub(crate) unsafe fn set_owner(&self, owner: &T) {
        self.owner
            .store((owner as *const T).cast_mut(), Ordering::Release);
    }

    /// Runs the work function after `delay` jiffies, unless already queued.
    pub(crate) fn schedule(&self, delay: kernel::time::Jiffies) {
        let wq = WQ.load(Ordering::Acquire);
        if wq.is_null() {
            return;
        }
        // SAFETY: the work item is initialised and pinned; `wq` lives until
        // module exit, after every group (and work item) is gone.
        unsafe { b::ferry_queue_delayed_work(wq, self.dw.get(), delay) };
    }

    /// Cancels the work and waits for a running instance to finish.  The
    /// work function must not re-arm itself after its owner asked it to
    /// stop.  Process context.
    pub(crate) fn cancel_sync(&self) {
        // SAFETY: the work item is initialised and pinned.
        unsafe { b::cancel_delayed_work_sync(self.dw.get()) };
    }

    /// # Safety
    ///
    /// Called by the workqueue with the `work_struct` inside a
    /// `DelayedWork<T>` initialised by `new`.
    unsafe extern "C" fn run_raw(work: *mut b::work_struct) {
        // SAFETY: `work` is the `work` field of the `delayed_work` of a
        // `DelayedWork<T>` (caller).
        let dw = unsafe { b::ferry_to_delayed_work(work) };
        // SAFETY: `Opaque` is transparent, so `dw` is the address of field
        // `dw` of a live `DelayedWork<T>`.
        let this = unsafe { &*kernel::container_of!(dw, Self, dw) };
        let owner = this.owner.load(Ordering::Acquire);
        // SAFETY: a set owner contains `this` and cancels the work before
        // it is dropped (`set_owner`'s contract), so it is alive here.
        if let Some(owner) = unsafe { owner.as_ref() } {
            owner.run(this.id);
        }
    }
}
