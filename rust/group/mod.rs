// SPDX-License-Identifier: GPL-2.0

//! A consistency group on the primary: one group-wide order over the writes
//! of all its devices, a bounded spool of the records not yet acknowledged
//! by the secondary, the log-before-data gate, checkpoint and
//! consistency-point markers, and the character device `ferryd` reads.
//!
//! A group may instead be a **secondary**: host writes are refused, and
//! `ferryd` applies whole checkpoint intervals through the character device
//! (`APPLY_BEGIN`, the interval's records, `APPLY_END`) under an
//! update-in-progress mark kept on every member's meta device; host reads
//! wait while an interval is applied.  `promote` turns it into a primary.
//! What each step may do is `ferry_core::checkpoint`'s (`IntervalApply`,
//! `ApplyMark`, `place`, `ReadHold`); the kernel does the I/O.
//!
//! # Sequencing at completion
//!
//! A record gets its `dev_seq`, `group_seq` and timestamp when its write
//! *completes*, under the group's lock.  The group order is therefore the
//! completion order itself: a write submitted after another completed is
//! always later in it (G1), a failed write never takes a number (no hole
//! in any stream), and a slow write does not hold back the records of
//! writes that completed before it.
//!
//! The numbering, the gate, the order records are read in, the
//! acknowledgement commands and the restart numbers are
//! `ferry_core::stream`'s: the group keeps a `GroupOrder` and each device a
//! `ferry_core::stream::Stream` over its ring of records.  What a record
//! charges to the spool, what a full spool does (`overflow bitmap` or
//! `block`), the mode (`ahead`), and the queue of writers held for room
//! and its bound are `ferry_core::spool`'s: the group keeps a `Spool` and
//! a `Queue` under `state`.  Nothing sleeps in `map`: a writer held for
//! room is a deferred bio, let in by the kick work (`admit.rs`).
//!
//! # Storage
//!
//! Each device of the group has a ring of its records in `dev_seq` order
//! (those read by `ferryd` wait for the secondary's acknowledgement, the
//! others wait to be read).  Every record charges at least one page to the
//! group's spool, whose cap bounds every ring, so rings are allocated once,
//! when a device joins, and never grow.  Spool memory returns when the
//! secondary acknowledges.
//!
//! # Locks
//!
//! `state` (a spinlock taken with interrupts off: completions run in
//! interrupt context) guards the rings and counters; `ctl` (a mutex,
//! process context) serialises membership changes, the reader and marker
//! insertion.  `ctl` is taken before `state`.
//!
//! # Files
//!
//! This file holds the [`Group`] and its glue (creation, shutdown, the
//! character device's [`FileOps`]); each concern has its own file, here in
//! the order a write travels: `record.rs` (what it becomes), `admit.rs`
//! (spool room and write intent, in `map`), `sequence.rs` (numbered at
//! completion), `spool.rs` (the rings and the state under `state`),
//! `gate.rs` (log before data), `markers.rs` (checkpoints, consistency
//! points), `reader.rs` (`read(2)` of records), `commands.rs` (what
//! `ferryd` writes back), `acks.rs` (records leave the spool), `intent.rs`
//! (bitmap pages persisted and swept), `meta_io.rs` (the meta device),
//! `tick.rs` (the work items); `resync.rs` (leaving `ahead`: the copy of
//! the dirty chunks, its own work item) and `resync_state.rs` (what the
//! write path asks of it); then `join.rs` (membership),
//! `secondary.rs` (the far end: apply), `status.rs` and `registry.rs`.

mod record;
mod admit;
mod sequence;
mod spool;
mod gate;
mod markers;
mod reader;
mod commands;
mod acks;
mod intent;
mod meta_io;
mod tick;
mod resync;
mod resync_state;
mod join;
mod secondary;
mod status;
mod registry;

pub(crate) use admit::Admitted;
pub(crate) use join::{JoinError, Member};
pub(crate) use record::{record_for, Record, RECORD_OVERHEAD};
pub(crate) use registry::{free_registry, install_registry, registry, Given, Registry};
pub(crate) use secondary::ReadGate;
pub(crate) use status::DeviceStatus;

use crate::chardev::{self, FileOps, MiscDev};
use crate::digest::KernelDigest;
use crate::dm::{BdevRef, HeldList};
use crate::sync::{new_irq_spinlock, new_waitqueue, IrqSpinLock, WaitQueue};
use crate::work::{DelayedWork, WorkId};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use ferry_core::checkpoint::{IntervalApply, ReadHold};
use ferry_core::record::{group_id_of_name, GroupKey, RecordKind};
use ferry_core::spool::{Queue, Spool};
use ferry_core::stream::GroupOrder;
use ferry_core::table::{Overflow, Role, GROUP_NAME_MAX, MAX_DEVICES};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::uaccess::UserSliceWriter;
use meta_io::StreamMeta;
use spool::State;

/// The settings every device of a group shares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Spool cap, MiB.
    pub(crate) spool_mb: u32,
    /// What a full spool does.
    pub(crate) overflow: Overflow,
    /// Checkpoint period, ms (0: on demand only).
    pub(crate) checkpoint_ms: u32,
    /// Bound, seconds, on writers held for spool room with none let in
    /// (`ferry_core::spool::Queue::expired`).
    pub(crate) block_timeout_s: u32,
    /// The resync's read rate cap, MiB/s (0: none), as the table gave it;
    /// the message `resync_mbps` changes the group's live value
    /// ([`Group::set_resync_mbps`]).
    pub(crate) resync_mbps: u32,
}

impl Settings {
    fn spool_bytes(&self) -> usize {
        self.spool_mb as usize * 1024 * 1024
    }
}

/// A member's data device, for the secondary's apply path.
#[derive(Clone, Copy)]
struct DataDev {
    dev: BdevRef,
    offset: u64,
    sectors: u64,
}

/// Control state, process context only.
struct Ctl {
    /// Each member's data device.
    data: [Option<DataDev>; MAX_DEVICES as usize],
    /// Targets using each device id (a reload briefly has two).
    users: [u32; MAX_DEVICES as usize],
    /// The data device each device id stands for.
    devt: [u32; MAX_DEVICES as usize],
    reader_open: bool,
}

/// A consistency group.
#[pin_data]
pub(crate) struct Group {
    #[pin]
    work: DelayedWork<Group>,
    #[pin]
    kick: DelayedWork<Group>,
    #[pin]
    resync_work: DelayedWork<Group>,
    name: [u8; GROUP_NAME_MAX],
    name_len: usize,
    id: u64,
    key: GroupKey,
    settings: Settings,
    #[pin]
    state: IrqSpinLock<State>,
    #[pin]
    readable: WaitQueue,
    /// Members being suspended (between their `presuspend` and `resume`):
    /// no writer is held for room meanwhile (`admit.rs`).
    suspending: AtomicU32,
    #[pin]
    ctl: Mutex<Ctl>,
    #[pin]
    meta: Mutex<KVec<Option<StreamMeta>>>,
    #[pin]
    misc: MiscDev<Group>,
    /// When the last checkpoint marker went in (ms of the monotonic clock).
    last_checkpoint_ms: AtomicU64,
    /// The resync's read rate cap now, MiB/s (0: none).
    resync_mbps: AtomicU32,
    dead: AtomicBool,
    /// Records not shipped because the group was ahead or the write failed.
    dropped: AtomicU64,
    /// Commands rejected, by any cause.
    rejected: AtomicU64,
    members: AtomicUsize,
    /// The group is a secondary (until promoted).
    secondary: AtomicBool,
    /// Secondary: the apply state, mirrored by the marks on the meta
    /// devices.  Taken before `ctl`.
    #[pin]
    apply: Mutex<IntervalApply>,
    /// Secondary: woken when the last submitted host read completes.
    #[pin]
    quiet: WaitQueue,
    /// Attached to host reads of a secondary, to count them at completion.
    read_token: Arc<Record>,
    /// Attached to host writes of a primary that have no record (tracked
    /// in the bitmap only), to count them at completion (`resync.rs`).
    untracked_token: Arc<Record>,
    /// Secondary: records applied, per device.
    applied_records: [AtomicU64; MAX_DEVICES as usize],
}

impl Group {
    fn create(name: &[u8], settings: Settings, secondary: bool) -> Result<Arc<Self>> {
        let d = KernelDigest;
        let id = group_id_of_name(&d, name);
        let key = GroupKey::derive(&d, id, &[]).map_err(|_| EINVAL)?;
        let mut n = [0u8; GROUP_NAME_MAX];
        let len = name.len().min(GROUP_NAME_MAX);
        n[..len].copy_from_slice(&name[..len]);
        let mut streams = KVec::with_capacity(MAX_DEVICES as usize, GFP_KERNEL)?;
        let mut metas = KVec::with_capacity(MAX_DEVICES as usize, GFP_KERNEL)?;
        for _ in 0..MAX_DEVICES {
            streams.push(None, GFP_KERNEL)?;
            metas.push(None, GFP_KERNEL)?;
        }
        let read_token = Arc::new(Record::new(RecordKind::Flush, u32::MAX, Role::Data), GFP_KERNEL)?;
        let untracked_token = Arc::new(Record::new(RecordKind::Flush, u32::MAX, Role::Data), GFP_KERNEL)?;
        let g = Arc::pin_init(
            pin_init!(Self {
                work <- DelayedWork::new(WorkId::Tick),
                kick <- DelayedWork::new(WorkId::Kick),
                resync_work <- DelayedWork::new(WorkId::Resync),
                name: n,
                name_len: len,
                id,
                key,
                settings,
                state <- new_irq_spinlock!(State {
                    streams,
                    order: GroupOrder::new(),
                    spool: Spool::new(settings.spool_bytes(), settings.overflow),
                    held: HeldList::new(),
                    queue: Queue::new(),
                    waiting: HeldList::new(),
                    copying: HeldList::new(),
                    reads: ReadHold::new(false),
                    held_reads: HeldList::new(),
                    resync: resync::ResyncState::new(),
                }, "ferry_group.state"),
                readable <- new_waitqueue!("ferry_group.readable"),
                suspending: AtomicU32::new(0),
                ctl <- new_mutex!(Ctl {
                    data: [None; MAX_DEVICES as usize],
                    users: [0; MAX_DEVICES as usize],
                    devt: [0; MAX_DEVICES as usize],
                    reader_open: false,
                }),
                meta <- new_mutex!(metas),
                misc <- MiscDev::new(&n[..len]),
                last_checkpoint_ms: AtomicU64::new(0),
                resync_mbps: AtomicU32::new(settings.resync_mbps),
                dead: AtomicBool::new(false),
                dropped: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                members: AtomicUsize::new(0),
                secondary: AtomicBool::new(secondary),
                apply <- new_mutex!(IntervalApply::new(0)),
                quiet <- new_waitqueue!("ferry_group.quiet"),
                read_token,
                untracked_token,
                applied_records: [const { AtomicU64::new(0) }; MAX_DEVICES as usize],
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: the work item is a field of the group, which cancels it in
        // `shutdown` before the registry lets the group go.
        unsafe {
            g.work.set_owner(&g);
            g.kick.set_owner(&g);
            g.resync_work.set_owner(&g);
        }
        g.misc.register(g.clone())?;
        g.work.schedule(kernel::time::msecs_to_jiffies(g.tick_ms()));
        Ok(g)
    }

    /// Period of the tick work: the checkpoint period, at most a second
    /// (the tick also clears acknowledged chunks on the meta devices).
    fn tick_ms(&self) -> u32 {
        match self.settings.checkpoint_ms {
            0 => 1000,
            ms => ms.min(1000),
        }
    }

    /// The group's name.
    pub(crate) fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }

    /// The group's settings.
    pub(super) fn settings(&self) -> Settings {
        self.settings
    }

    /// Stops the group: no more markers, no more opens; readers see the end
    /// of the stream.  Process context.
    fn shutdown(&self) {
        // Under the state lock: the kick is scheduled under it, never
        // once the group is dead (`Group::kick_work`).
        {
            let _st = self.state.lock();
            self.dead.store(true, Relaxed);
        }
        self.work.cancel_sync();
        self.kick.cancel_sync();
        self.resync_work.cancel_sync();
        self.misc.deregister();
        self.readable.wake_all();
    }
}

fn ebadmsg() -> Error {
    Error::from_errno(-(kernel::bindings::EBADMSG as i32))
}

fn eopnotsupp() -> Error {
    Error::from_errno(-(kernel::bindings::EOPNOTSUPP as i32))
}

/// `/dev/ferry/<group>`: the reader takes records, and writes commands.
impl FileOps for Group {
    fn open(&self) -> Result {
        self.open_reader()
    }

    fn release(&self) {
        self.close_reader()
    }

    fn read(&self, out: &mut UserSliceWriter, len: usize, nonblock: bool) -> Result<usize> {
        self.read_records(out, len, nonblock)
    }

    fn write(&self, buf: &[u8]) -> Result {
        self.write_commands(buf)
    }

    fn wait_queue(&self) -> &WaitQueue {
        &self.readable
    }

    fn poll(&self) -> bool {
        self.readable()
    }
}

chardev::file_operations!(Group);
