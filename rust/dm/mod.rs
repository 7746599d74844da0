// SPDX-License-Identifier: GPL-2.0

//! The device-mapper layer: the only code in dm-ferry that touches
//! `struct target_type`, `struct dm_target`, `struct dm_dev` and
//! `struct bio` through raw pointers.
//!
//! A target implements the safe [`Target`] trait (this file);
//! [`Registration`] builds the C `target_type` whose callbacks are the
//! `extern "C"` shims in `vtable.rs`, each of which turns the pointers
//! device-mapper hands it into references and calls the trait.  A write
//! enters ferry there, as a [`Bio`] (`bio.rs`) handed to `map`; the
//! devices a target opens, and the synchronous I/O on them (meta device,
//! a secondary's apply), are `dev.rs`'s.

mod bio;
mod dev;
mod vtable;

pub(crate) use bio::{Bio, HeldBio, HeldList, Op};
pub(crate) use dev::{exit_bio_set, init_bio_set, BdevRef, DmDev};
pub(crate) use vtable::{Ctr, IterateDevices, Registration, StatusWriter};

use crate::bindings as b;
use core::ffi::CStr;
use kernel::error::code::EINVAL;
use kernel::ffi::c_int;
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
    fn defer(&self, bio: HeldBio<Self::Io>) {
        bio.fail();
    }

    /// The device is being suspended (or removed): device-mapper calls
    /// this before it waits for the bios in flight, deferred ones
    /// included, so the target lets go of those it holds.  Process
    /// context; may sleep.
    fn presuspend(&self) {}

    /// The device resumes, or a suspend that called
    /// [`Self::presuspend`] failed.  Process context.
    fn resume(&self) {}

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
