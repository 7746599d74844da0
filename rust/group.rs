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
//! `ferry_core::stream::Stream` over its ring of records.
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

use crate::chardev::{self, FileOps, MiscDev};
use crate::digest::KernelDigest;
use crate::dm::{BdevRef, HeldBio, HeldList};
use crate::payload::{with_mapped, Payload};
use crate::sync::{IrqSpinLock, WaitQueue};
use crate::work::{DelayedWork, WorkId, Worker};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use ferry_core::checkpoint::{
    place, ApplyMark, ApplyState, CheckpointError, IntervalApply, ReadHold, APPLY_MARK_LEN,
};
use ferry_core::command::{Command, CommandError, Commands};
use ferry_core::gate::DeviceClass;
use ferry_core::intent::{storage_words, Gen, Room, WriteIntent, WORDS_PER_PAGE};
use ferry_core::meta::{self, sb_flags, Numbers, Superblock};
use ferry_core::stream::{self, Ack, GroupOrder, Left, Numbered, Refused, Sequenced};
use ferry_core::record::{
    self, ConsistencyPayload, Flags, GroupKey, Label, RecordHeader, RecordKind, CP_FIXED_LEN,
    HEADER_LEN, LABEL_MAX, TAIL_LEN,
};
use ferry_core::table::{Overflow, Role, GROUP_NAME_MAX, MAX_DEVICES};
use kernel::alloc::flags;
use kernel::new_mutex;
use kernel::page::{Page, PAGE_SIZE};
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::uaccess::UserSliceWriter;

/// The settings every device of a group shares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Spool cap, MiB.
    pub(crate) spool_mb: u32,
    /// What a full spool does.
    pub(crate) overflow: Overflow,
    /// Checkpoint period, ms (0: on demand only).
    pub(crate) checkpoint_ms: u32,
}

impl Settings {
    fn spool_bytes(&self) -> usize {
        self.spool_mb as usize * 1024 * 1024
    }
}

/// A write, discard, flush or marker on its way to the secondary.
///
/// Built in `map` (or by a marker insertion), numbered at completion; the
/// numbers are atomics so that the record can be shared (`Arc`) between the
/// bio in flight and, later, the ring and the reader.
pub(crate) struct Record {
    kind: RecordKind,
    flags: Flags,
    device_id: u32,
    sector: u64,
    nr_sectors: u32,
    payload: Payload,
    /// A consistency point's payload, encoded.
    inline: [u8; CP_FIXED_LEN + LABEL_MAX],
    inline_len: usize,
    /// Spool bytes charged for this record.
    charge: usize,
    /// Write-intent generation whose count this record holds, or
    /// [`Gen::NONE`] (no chunk: flushes, markers).
    wgen: Gen,
    dev_seq: AtomicU64,
    group_seq: AtomicU64,
    timestamp_ns: AtomicU64,
    epoch: AtomicU64,
}

impl Record {
    fn new(kind: RecordKind, device_id: u32, role: Role) -> Self {
        let mut flags = Flags(0);
        if role == Role::Log {
            flags.0 |= Flags::LOG;
        }
        Self {
            kind,
            flags,
            device_id,
            sector: 0,
            nr_sectors: 0,
            payload: Payload::empty(),
            inline: [0; CP_FIXED_LEN + LABEL_MAX],
            inline_len: 0,
            charge: PAGE_SIZE,
            wgen: Gen::NONE,
            dev_seq: AtomicU64::new(0),
            group_seq: AtomicU64::new(0),
            timestamp_ns: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
        }
    }

    fn payload_len(&self) -> usize {
        if self.inline_len > 0 {
            self.inline_len
        } else {
            self.payload.len()
        }
    }

    fn header(&self, group_id: u64) -> RecordHeader {
        let mut h = RecordHeader::new(self.kind);
        h.flags = self.flags;
        h.group_id = group_id;
        h.device_id = self.device_id;
        h.payload_len = u32::try_from(self.payload_len()).unwrap_or(u32::MAX);
        h.dev_seq = self.dev_seq.load(Relaxed);
        h.group_seq = self.group_seq.load(Relaxed);
        h.timestamp_ns = self.timestamp_ns.load(Relaxed);
        h.epoch = self.epoch.load(Relaxed);
        h.sector = self.sector;
        h.nr_sectors = self.nr_sectors;
        h
    }

    /// Size of the framed record: header, payload, tail.
    fn framed_len(&self) -> usize {
        HEADER_LEN + self.payload_len() + TAIL_LEN
    }

    fn set_numbers(&self, n: &Numbered) {
        self.dev_seq.store(n.dev_seq, Relaxed);
        self.group_seq.store(n.group_seq, Relaxed);
        self.timestamp_ns.store(n.timestamp_ns, Relaxed);
        self.epoch.store(n.epoch, Relaxed);
    }
}

impl Sequenced for Record {
    fn kind(&self) -> RecordKind {
        self.kind
    }

    fn dev_seq(&self) -> u64 {
        self.dev_seq.load(Relaxed)
    }

    fn group_seq(&self) -> u64 {
        self.group_seq.load(Relaxed)
    }
}

/// One device of the group, as the spool sees it.
struct Stream {
    /// Its records and numbers (`ferry_core::stream`).
    q: stream::Stream<KVVec<Option<Arc<Record>>>>,
    /// Writes mapped (bios), for status.
    written: u64,
    /// Write intent: which chunks the meta device marks, and when they
    /// may be cleared (`ferry_core::intent`).
    intent: WriteIntent<KVVec<u64>>,
}

impl Stream {
    fn role(&self) -> Role {
        match self.q.class() {
            DeviceClass::Log => Role::Log,
            DeviceClass::Data => Role::Data,
        }
    }
}

/// The meta device of a stream, for process-context I/O under the group's
/// `meta` mutex (which serialises every write to a stream's bitmap, so a
/// page on disk is always a snapshot of the bits in memory).
struct StreamMeta {
    dev: BdevRef,
    /// The page every meta I/O of the stream goes through (no page-sized
    /// buffer on the kernel stack).
    page: Page,
    sb: Superblock,
    /// Bitmap pages to write (cleared bits) after a sweep.
    changed: KVVec<bool>,
    /// The wanted bits of the page being written.
    wsnap: KVec<u64>,
}

/// Reads 4 KiB at `sector` into `page` and runs `f` on them.
fn meta_read<R>(dev: &BdevRef, page: &Page, sector: u64, f: impl FnOnce(&[u8; PAGE_SIZE]) -> R) -> Result<R> {
    dev.page_io(sector, page, false)?;
    Ok(with_mapped(page.as_ptr().cast(), |b| f(b)))
}

/// Fills `page` with `f` and writes it durably at `sector`.
fn meta_write(dev: &BdevRef, page: &Page, sector: u64, f: impl FnOnce(&mut [u8; PAGE_SIZE])) -> Result {
    with_mapped(page.as_ptr().cast(), f);
    dev.page_io(sector, page, true)
}

impl StreamMeta {
    fn write_sb(&mut self) -> Result {
        self.sb.generation += 1;
        let sb = self.sb;
        let mut r = Ok(());
        meta_write(&self.dev, &self.page, meta::slot_sector(sb.slot()), |b| {
            b.fill(0);
            r = sb.encode(&KernelDigest, b).map_err(|_| EINVAL);
        })?;
        r
    }
}

/// Whether the group ships records or only tracks dirty chunks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RepMode {
    /// Every write becomes a record.
    Replicating,
    /// The spool overflowed (or replication was stopped): writes are
    /// tracked in the bitmap; leaving this mode needs a resync.
    Ahead,
}

struct State {
    streams: KVec<Option<Stream>>,
    /// The group order, the clock, the intervals and consistency points.
    order: GroupOrder,
    spool_used: usize,
    mode: RepMode,
    /// Writes waiting for their chunks' bits to reach the meta device.
    held: HeldList,
    /// Secondary: whether host reads go or wait for the interval being
    /// applied, and how many are in flight (`ferry_core::checkpoint`).
    reads: ReadHold,
    /// Secondary: host reads held until the interval is applied.
    held_reads: HeldList,
}

impl State {
    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.get_mut(id as usize)?.as_mut()
    }

    /// Numbers `r` (now complete) and appends it to its device's ring
    /// (`GroupOrder::sequence`).
    fn sequence(&mut self, r: Arc<Record>, now_ns: u64) -> core::result::Result<(), Arc<Record>> {
        let Some(Some(s)) = self.streams.get_mut(r.device_id as usize) else {
            return Err(r);
        };
        self.order
            .sequence(&mut s.q, now_ns, r, |r, n| r.set_numbers(n))
            .map(|_| ())
    }

    /// The device whose next unread record comes first in the group order
    /// among those the gate releases.
    fn next_releasable(&mut self) -> Option<usize> {
        let w = stream::watermark(self.streams.iter_mut().flatten().map(|s| &mut s.q));
        stream::next_releasable(self.streams.iter().map(|s| s.as_ref().map(|s| &s.q)), w)
    }
}

fn class_of(role: Role) -> DeviceClass {
    match role {
        Role::Log => DeviceClass::Log,
        Role::Data => DeviceClass::Data,
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
    name: [u8; GROUP_NAME_MAX],
    name_len: usize,
    id: u64,
    key: GroupKey,
    settings: Settings,
    #[pin]
    state: IrqSpinLock<State>,
    #[pin]
    readable: WaitQueue,
    #[pin]
    space: WaitQueue,
    #[pin]
    ctl: Mutex<Ctl>,
    #[pin]
    meta: Mutex<KVec<Option<StreamMeta>>>,
    #[pin]
    misc: MiscDev<Group>,
    /// When the last checkpoint marker went in (ms of the monotonic clock).
    last_checkpoint_ms: AtomicU64,
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
    /// Secondary: records applied, per device.
    applied_records: [AtomicU64; MAX_DEVICES as usize],
}

/// A device joining its group.
pub(crate) struct Member {
    /// `device_id`.
    pub(crate) id: u32,
    /// The data device's number (a reload of the same device shares its
    /// stream).
    pub(crate) devt: u32,
    pub(crate) role: Role,
    /// Length of the target, sectors.
    pub(crate) sectors: u64,
    /// log2 of the chunk size in sectors.
    pub(crate) chunk_shift: u32,
    pub(crate) meta: BdevRef,
    /// The data device and the target's offset in it (the secondary
    /// writes there).
    pub(crate) data: BdevRef,
    pub(crate) data_offset: u64,
    /// The table says `mode secondary`.
    pub(crate) secondary: bool,
}

/// Why a device could not join a group.
pub(crate) enum JoinError {
    /// `spool_mb`, `overflow` or `checkpoint_ms` differ from the group's.
    Settings,
    /// Another data device has this `device_id` in the group.
    IdTaken,
    /// A reload changed the device's role.
    Role,
    /// Out of memory for the stream.
    NoMemory,
    /// The group could not be created (its character device, memory).
    Create(Error),
    /// The meta device could not be read or written.
    MetaIo,
    /// The meta device's superblock is another device's.
    MetaMismatch,
    /// The meta device's superblock checks but holds numbers out of range.
    MetaCorrupt,
    /// A reload of a loaded device changes its meta device, length or
    /// chunk size.
    Reload,
    /// `mode primary` for a secondary group, or the reverse.
    Site,
}

impl Group {
    fn create(name: &[u8], settings: Settings, secondary: bool) -> Result<Arc<Self>> {
        let d = KernelDigest;
        let id = record::group_id_of_name(&d, name);
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
        let g = Arc::pin_init(
            pin_init!(Self {
                work <- DelayedWork::new(WorkId::Tick),
                kick <- DelayedWork::new(WorkId::Kick),
                name: n,
                name_len: len,
                id,
                key,
                settings,
                state <- IrqSpinLock::new(State {
                    streams,
                    order: GroupOrder::new(),
                    spool_used: 0,
                    mode: RepMode::Replicating,
                    held: HeldList::new(),
                    reads: ReadHold::new(false),
                    held_reads: HeldList::new(),
                }),
                readable <- WaitQueue::new(),
                space <- WaitQueue::new(),
                ctl <- new_mutex!(Ctl {
                    data: [None; MAX_DEVICES as usize],
                    users: [0; MAX_DEVICES as usize],
                    devt: [0; MAX_DEVICES as usize],
                    reader_open: false,
                }),
                meta <- new_mutex!(metas),
                misc <- MiscDev::new(&n[..len]),
                last_checkpoint_ms: AtomicU64::new(0),
                dead: AtomicBool::new(false),
                dropped: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                members: AtomicUsize::new(0),
                secondary: AtomicBool::new(secondary),
                apply <- new_mutex!(IntervalApply::new(0)),
                quiet <- WaitQueue::new(),
                read_token,
                applied_records: [const { AtomicU64::new(0) }; MAX_DEVICES as usize],
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: the work item is a field of the group, which cancels it in
        // `shutdown` before the registry lets the group go.
        unsafe {
            g.work.set_owner(&g);
            g.kick.set_owner(&g);
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
    pub(crate) fn settings(&self) -> Settings {
        self.settings
    }

    /// Adds device `id` (data device `devt`) of `role`, covering `sectors`
    /// sectors in chunks of `1 << chunk_shift` sectors.  A second target
    /// for the same device (a table reload) shares its stream.
    pub(crate) fn join(&self, m: &Member) -> core::result::Result<(), JoinError> {
        let Member {
            id,
            devt,
            role,
            sectors,
            chunk_shift,
            meta: meta_dev,
            data,
            data_offset,
            secondary,
        } = *m;
        let mut apply = self.apply.lock();
        let mut ctl = self.ctl.lock();
        if secondary != self.is_secondary() {
            return Err(JoinError::Site);
        }
        let i = id as usize;
        if ctl.users[i] > 0 {
            if ctl.devt[i] != devt {
                return Err(JoinError::IdTaken);
            }
            let st = self.state.lock();
            let Some(s) = st.streams.get(i).and_then(Option::as_ref) else {
                return Err(JoinError::Role);
            };
            if s.role() != role {
                return Err(JoinError::Role);
            }
            // The stream's bitmap and meta device stay those of the loaded
            // table: a reload may not change them.
            let same_chunks = s.intent.chunk_shift() == chunk_shift;
            drop(st);
            let same_len = ctl.data.get(i).copied().flatten().is_some_and(|d| d.sectors == sectors);
            let same_meta = self
                .meta
                .lock()
                .get(i)
                .and_then(Option::as_ref)
                .is_some_and(|sm| sm.dev.same(&meta_dev));
            if !(same_chunks && same_len && same_meta) {
                return Err(JoinError::Reload);
            }
            ctl.users[i] += 1;
            if let Some(slot) = ctl.data.get_mut(i) {
                *slot = Some(DataDev {
                    dev: data,
                    offset: data_offset,
                    sectors,
                });
            }
            return Ok(());
        }
        fn nm<E>(_: E) -> JoinError {
            JoinError::NoMemory
        }
        let cap = (self.settings.spool_bytes() / PAGE_SIZE).max(1);
        let ring = KVVec::from_elem(None, cap, GFP_KERNEL).map_err(nm)?;
        let bits = sectors.div_ceil(1u64 << chunk_shift);
        let words = storage_words(bits).ok_or(JoinError::NoMemory)?;
        let words = KVVec::from_elem(0u64, words, GFP_KERNEL).map_err(nm)?;
        let mut intent = WriteIntent::new(words, bits, chunk_shift).map_err(nm)?;
        let pages = intent.pages();
        let changed = KVVec::from_elem(false, pages, GFP_KERNEL).map_err(nm)?;
        let mut sm = StreamMeta {
            dev: meta_dev,
            page: Page::alloc_page(GFP_KERNEL).map_err(|_| JoinError::NoMemory)?,
            sb: Superblock {
                flags: 0,
                uuid: [0; 16],
                generation: 0,
                group_id: self.id,
                device_id: id,
                chunk_kb: 1u32 << (chunk_shift - 1),
                len_sectors: sectors,
                acked_dev_seq: 0,
                numbers: Numbers::default(),
            },
            changed,
            wsnap: KVec::from_elem(0u64, WORDS_PER_PAGE, GFP_KERNEL).map_err(nm)?,
        };
        let (loaded, left) = self.load_meta(&mut sm, &mut intent, pages)?;
        if secondary {
            // An interval in progress on any member is in progress for the
            // group (it is redone); otherwise the highest applied.
            let mark = Self::read_mark(&sm).map_err(|_| JoinError::MetaIo)?;
            *apply = IntervalApply::recover(apply.mark().merge(mark)).0;
            if !apply.may_read() {
                self.state.lock().reads.hold();
            }
        }
        drop(apply);
        // Where the device's stream stands: a device that left its group
        // cleanly continues its numbers (and raises the group's to its
        // own), so that the secondary never sees a number twice.
        let (from, cp_first) = if secondary { (0, 1) } else { left.start() };
        {
            let mut st = self.state.lock();
            match left {
                Left::Clean(_, n) if !secondary => {
                    st.order.continue_from(&n, kernel::time::Ktime::ktime_get().to_ns() as u64);
                }
                Left::Unclean if !secondary => {
                    let msg = "the device did not leave its group cleanly (a crash?): the numbers its stream used are unknown";
                    self.enter_ahead(&mut st, msg);
                }
                _ => {}
            }
            if loaded > 0 {
                let msg = "the meta device names chunks the secondary may miss (unclean shutdown or overflow)";
                self.enter_ahead(&mut st, msg);
            }
        }
        let stream = Stream {
            q: stream::Stream::new(ring, class_of(role), from, cp_first),
            written: 0,
            intent,
        };
        if let Some(slot) = self.meta.lock().get_mut(i) {
            *slot = Some(sm);
        }
        {
            let mut st = self.state.lock();
            if let Some(slot) = st.streams.get_mut(i) {
                *slot = Some(stream);
            }
        }
        ctl.users[i] = 1;
        ctl.devt[i] = devt;
        if let Some(slot) = ctl.data.get_mut(i) {
            *slot = Some(DataDev {
                dev: data,
                offset: data_offset,
                sectors,
            });
        }
        self.applied_records[i].store(0, Relaxed);
        self.members.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Reads the superblock and the bitmap of a joining device into
    /// `intent`, or formats a meta device that has no valid superblock.
    /// Returns the number of chunks the bitmap names and how the device
    /// left its group last time.
    fn load_meta(
        &self,
        sm: &mut StreamMeta,
        intent: &mut WriteIntent<KVVec<u64>>,
        pages: usize,
    ) -> core::result::Result<(u64, Left), JoinError> {
        let io = |_| JoinError::MetaIo;
        let d = KernelDigest;
        let slot = |k| meta_read(&sm.dev, &sm.page, meta::slot_sector(k), |b| Superblock::decode(&d, b));
        let (a, b) = (slot(0).map_err(io)?, slot(1).map_err(io)?);
        let current = Superblock::choose(a, b).map_err(|e| {
            pr_err!(
                "ferry: group {}: device {}: meta device refused: {}\n",
                core::str::from_utf8(self.name()).unwrap_or("?"),
                sm.sb.device_id,
                e
            );
            JoinError::MetaCorrupt
        })?;
        let mut set = 0u64;
        let left = match current {
            None => {
                // A new meta device: empty bitmap (the secondary is taken
                // to start equal), a fresh identity.
                // SAFETY: `uuid` is 16 writable bytes.
                unsafe {
                    crate::bindings::ferry_get_random_bytes(sm.sb.uuid.as_mut_ptr().cast(), 16)
                };
                for p in 0..pages as u64 {
                    meta_write(&sm.dev, &sm.page, meta::BITMAP_SECTOR + 8 * p, |b| b.fill(0))
                        .map_err(io)?;
                }
                pr_info!(
                    "ferry: group {}: device {}: formatted its meta device\n",
                    core::str::from_utf8(self.name()).unwrap_or("?"),
                    sm.sb.device_id
                );
                Left::New
            }
            Some(found) => {
                let want = sm.sb;
                if (found.group_id, found.device_id, found.chunk_kb, found.len_sectors)
                    != (want.group_id, want.device_id, want.chunk_kb, want.len_sectors)
                {
                    return Err(JoinError::MetaMismatch);
                }
                sm.sb = found;
                for p in 0..pages {
                    set += meta_read(&sm.dev, &sm.page, meta::BITMAP_SECTOR + 8 * p as u64, |b| {
                        intent.load(p, b)
                    })
                    .map_err(io)?;
                }
                Left::of(Some(&found))
            }
        };
        // In use from now on: only a clean leave sets CLEAN again.
        sm.sb.flags &= !(sb_flags::AHEAD | sb_flags::CLEAN);
        if set > 0 {
            sm.sb.flags |= sb_flags::AHEAD;
        }
        sm.write_sb().map_err(io)?;
        Ok((set, left))
    }

    /// Removes one user of device `id`; the last one frees its stream and
    /// the spool its records held.  Returns whether the group is now empty.
    pub(crate) fn leave(&self, id: u32) -> bool {
        let mut ctl = self.ctl.lock();
        let i = id as usize;
        ctl.users[i] = ctl.users[i].saturating_sub(1);
        if ctl.users[i] > 0 {
            return false;
        }
        if let Some(slot) = ctl.data.get_mut(i) {
            *slot = None;
        }
        // Last chance to clear acknowledged chunks, then the superblock
        // says how the device was left.
        {
            let mut metas = self.meta.lock();
            self.sweep_stream(&mut metas, i, true);
            let secondary = self.is_secondary();
            let (ahead, acked, clean) = {
                let st = self.state.lock();
                let ahead = st.mode == RepMode::Ahead;
                let (acked, numbers) = st
                    .streams
                    .get(i)
                    .and_then(Option::as_ref)
                    .map_or((0, None), |s| s.q.leaving(&st.order));
                (ahead, acked, numbers.filter(|_| !secondary && !ahead))
            };
            if let Some(Some(sm)) = metas.get_mut(i) {
                sm.sb.acked_dev_seq = sm.sb.acked_dev_seq.max(acked);
                if ahead {
                    sm.sb.flags |= sb_flags::AHEAD;
                }
                // Every record acknowledged: the next join continues from
                // these numbers.  (Otherwise the records not acknowledged
                // are lost with the spool, and the group comes back ahead.)
                if let Some(numbers) = clean {
                    sm.sb.flags |= sb_flags::CLEAN;
                    sm.sb.numbers = numbers;
                }
                if sm.write_sb().is_err() {
                    pr_err!("ferry: device {}: cannot write the superblock at release\n", id);
                }
            }
            if let Some(slot) = metas.get_mut(i) {
                *slot = None;
            }
        }
        let stream = {
            let mut st = self.state.lock();
            let s = st.streams.get_mut(i).and_then(Option::take);
            if let Some(s) = &s {
                let held: usize = s.q.records().map(|r| r.charge).sum();
                st.spool_used = st.spool_used.saturating_sub(held);
            }
            s
        };
        // Records (and their pages) are freed here, outside the spinlock.
        drop(stream);
        self.space.wake_all();
        self.readable.wake_all();
        self.members.fetch_sub(1, Relaxed) == 1
    }

    /// Stops the group: no more markers, no more opens; readers see the end
    /// of the stream.  Process context.
    fn shutdown(&self) {
        self.dead.store(true, Relaxed);
        self.work.cancel_sync();
        self.kick.cancel_sync();
        self.misc.deregister();
        self.readable.wake_all();
        self.space.wake_all();
    }

    fn enter_ahead(&self, st: &mut State, why: &str) {
        if st.mode != RepMode::Ahead {
            st.mode = RepMode::Ahead;
            pr_warn!(
                "ferry: group {}: {}; tracking writes in the bitmap (mode ahead, resync needed)\n",
                core::str::from_utf8(self.name()).unwrap_or("?"),
                why
            );
        }
    }

    /// Admits a write of device `id` to `[sector, +nr)` (nr 0: no data
    /// range): spool room for a record of `charge` bytes, then write
    /// intent for what the spool did (`WriteIntent::admit`: `first` is
    /// the writer's first pass; a writer that slept for room registers
    /// intent again on the pass that takes its write).  Never sleeps.
    fn admit(&self, id: u32, sector: u64, nr: u64, charge: usize, block: bool, first: bool) -> Admit {
        let mut st = self.state.lock();
        let reserve = if st.mode == RepMode::Ahead {
            Reserve::Ahead
        } else if st.spool_used + charge <= self.settings.spool_bytes() {
            Reserve::Done
        } else if block {
            Reserve::Full
        } else {
            Reserve::Overflow
        };
        let Some(s) = st.stream(id) else {
            return Admit {
                reserve: Reserve::Ahead,
                defer: false,
                wgen: Gen::NONE,
            };
        };
        if first {
            s.written += 1;
        }
        let room = match reserve {
            Reserve::Done => Room::Spool,
            Reserve::Full => Room::Wait,
            Reserve::Ahead | Reserve::Overflow => Room::Bitmap,
        };
        let a = s.intent.admit(sector, nr, first, room);
        match reserve {
            Reserve::Done => st.spool_used += charge,
            Reserve::Overflow => self.enter_ahead(&mut st, "spool full"),
            _ => {}
        }
        Admit {
            reserve,
            defer: a.defer,
            wgen: a.gen,
        }
    }

    /// `map` of a write-like bio of device `id`: builds its record, or
    /// marks its chunks dirty when the spool cannot take it.
    ///
    /// `fill` copies the bio's data into a payload.  `nowait`: the bio may
    /// not sleep.  Returns the record to attach to the bio (`None` when the
    /// write is tracked in the bitmap only) and whether the bio must wait
    /// for its chunks' write intent to reach the meta device
    /// ([`Self::hold`]); `Err(EAGAIN)` for a `REQ_NOWAIT` bio that would
    /// have to wait.
    pub(crate) fn prepare(
        &self,
        mut rec: Record,
        payload_bytes: usize,
        nowait: bool,
        fill: impl FnOnce() -> core::result::Result<Payload, kernel::alloc::AllocError>,
    ) -> Result<(Option<Arc<Record>>, bool)> {
        let id = rec.device_id;
        let (sector, nr) = (rec.sector, u64::from(rec.nr_sectors));
        rec.charge = PAGE_SIZE * Payload::pages_for(payload_bytes).max(1);
        let block = self.settings.overflow == Overflow::Block;
        let mut first = true;
        let mut defer = false;
        loop {
            let a = self.admit(id, sector, nr, rec.charge, block, first);
            if first && a.defer && nowait {
                // Nothing reserved yet unless the spool said Done: undo it.
                if a.reserve == Reserve::Done {
                    self.unadmit(id, rec.charge, a.wgen);
                }
                return Err(EAGAIN);
            }
            defer |= a.defer;
            first = false;
            match a.reserve {
                Reserve::Done => {
                    rec.wgen = a.wgen;
                    break;
                }
                Reserve::Ahead | Reserve::Overflow => {
                    self.dropped.fetch_add(1, Relaxed);
                    return Ok((None, defer));
                }
                Reserve::Full if nowait => return Err(EAGAIN),
                Reserve::Full => self.space.wait(&|| self.has_room(rec.charge)),
            }
        }
        if payload_bytes > 0 {
            match fill() {
                Ok(p) => rec.payload = p,
                Err(_) => return Ok((self.prepare_failed(&rec, "out of memory for the spool"), defer)),
            }
        }
        let (charge, wgen) = (rec.charge, rec.wgen);
        match Arc::new(rec, flags::GFP_NOWAIT | flags::__GFP_NOWARN) {
            Ok(r) => Ok((Some(r), defer)),
            Err(_) => {
                let mut st = self.state.lock();
                st.spool_used = st.spool_used.saturating_sub(charge);
                self.enter_ahead(&mut st, "out of memory for the spool");
                if let Some(s) = st.stream(id) {
                    s.intent.dropped(wgen, sector, nr);
                }
                drop(st);
                self.dropped.fetch_add(1, Relaxed);
                Ok((None, defer))
            }
        }
    }

    fn unadmit(&self, id: u32, charge: usize, wgen: Gen) {
        let mut st = self.state.lock();
        st.spool_used = st.spool_used.saturating_sub(charge);
        if let Some(s) = st.stream(id) {
            s.intent.finish(wgen);
        }
    }

    fn prepare_failed(&self, rec: &Record, why: &str) -> Option<Arc<Record>> {
        let mut st = self.state.lock();
        st.spool_used = st.spool_used.saturating_sub(rec.charge);
        self.enter_ahead(&mut st, why);
        if let Some(s) = st.stream(rec.device_id) {
            s.intent.dropped(rec.wgen, rec.sector, u64::from(rec.nr_sectors));
        }
        drop(st);
        self.dropped.fetch_add(1, Relaxed);
        None
    }

    /// Takes a write that waits for its write intent; the kick work
    /// submits it once the bits are on the meta device.  Any context.
    pub(crate) fn hold(&self, bio: HeldBio) {
        self.state.lock().held.push(bio);
        self.kick.schedule(0);
    }

    fn has_room(&self, charge: usize) -> bool {
        let st = self.state.lock();
        self.dead.load(Relaxed)
            || st.mode == RepMode::Ahead
            || st.spool_used + charge <= self.settings.spool_bytes()
    }

    /// The write of `rec` completed (`ok`: successfully).  Interrupt
    /// context.
    pub(crate) fn complete(&self, rec: Arc<Record>, ok: bool) {
        let now = kernel::time::Ktime::ktime_get().to_ns() as u64;
        let mut st = self.state.lock();
        let (charge, wgen) = (rec.charge, rec.wgen);
        let (id, sector, nr) = (rec.device_id, rec.sector, u64::from(rec.nr_sectors));
        let failed = if !ok {
            // The data may have partly landed: the chunk is unknown to the
            // secondary from now on.
            true
        } else if st.mode == RepMode::Ahead {
            true
        } else {
            match st.sequence(rec, now) {
                Ok(()) => false,
                Err(_r) => true,
            }
        };
        if failed {
            st.spool_used = st.spool_used.saturating_sub(charge);
            if let Some(s) = st.stream(id) {
                s.intent.dropped(wgen, sector, nr);
            }
        }
        drop(st);
        if failed {
            self.dropped.fetch_add(1, Relaxed);
            self.space.wake_all();
        } else {
            self.readable.wake_all();
        }
    }

    /// Inserts a marker record (checkpoint or consistency point) into every
    /// stream of the group, with consecutive group sequence numbers.
    /// Process context.  Returns the number of streams marked; `ENOSPC` if
    /// the spool had no room, `ENODEV` if the group has no device.
    fn insert_markers(&self, kind: RecordKind, label: Option<Label>) -> Result<usize> {
        let _ctl = self.ctl.lock();
        // Members and their consistency-point state; only marker insertion
        // (serialised by `ctl`) changes `cp_first` and `cp_id`.
        let mut members = [None::<(Role, u64)>; MAX_DEVICES as usize];
        let cp_id = {
            let st = self.state.lock();
            for (m, s) in members.iter_mut().zip(st.streams.iter()) {
                *m = s.as_ref().map(|s| (s.role(), s.q.cp_first()));
            }
            st.order.next_cp_id()
        };
        // Build the records outside the spinlock.
        let mut recs: KVec<Arc<Record>> = KVec::with_capacity(MAX_DEVICES as usize, GFP_KERNEL)?;
        for (id, m) in members.iter().enumerate() {
            let Some((role, first)) = *m else { continue };
            let mut r = Record::new(kind, id as u32, role);
            if let (RecordKind::ConsistencyPoint, Some(label)) = (kind, label) {
                let cp = ConsistencyPayload {
                    cp_id,
                    first_dev_seq: first,
                    label,
                };
                r.inline_len = cp.encode(&mut r.inline).map_err(|_| EINVAL)?;
            }
            recs.push(Arc::new(r, GFP_KERNEL)?, GFP_KERNEL)?;
        }
        if recs.is_empty() {
            return Err(ENODEV);
        }
        let now = kernel::time::Ktime::ktime_get().to_ns() as u64;
        let mut st = self.state.lock();
        if st.mode == RepMode::Ahead {
            return Err(ENOSPC);
        }
        let need = recs.len() * PAGE_SIZE;
        if st.spool_used + need > self.settings.spool_bytes() {
            if self.settings.overflow == Overflow::Bitmap {
                self.enter_ahead(&mut st, "spool full");
            }
            return Err(ENOSPC);
        }
        let mut n = 0;
        for r in recs.into_iter() {
            let charge = r.charge;
            st.spool_used += charge;
            // Cannot fail: the device is a member (membership changes need
            // `ctl`) and its ring has room (the spool had).  A consistency
            // point starts its stream's next set (`cp_first`).
            if st.sequence(r, now).is_ok() {
                n += 1;
            } else {
                st.spool_used = st.spool_used.saturating_sub(charge);
            }
        }
        match kind {
            RecordKind::Checkpoint => st.order.checkpoint_inserted(),
            RecordKind::ConsistencyPoint => st.order.consistency_point_inserted(cp_id),
            _ => {}
        }
        drop(st);
        self.readable.wake_all();
        Ok(n)
    }

    /// Closes the open checkpoint interval in every stream.
    pub(crate) fn checkpoint(&self) -> Result<usize> {
        self.insert_markers(RecordKind::Checkpoint, None)
    }

    /// Inserts a consistency point labelled `label` in every stream.
    pub(crate) fn consistency_point(&self, label: &[u8]) -> Result<usize> {
        let label = Label::new(label).map_err(|_| EINVAL)?;
        self.insert_markers(RecordKind::ConsistencyPoint, Some(label))
    }

    // ---- the character device ------------------------------------------

    /// A reader opens the device: one at a time.  Records read before and
    /// not acknowledged are offered again, from the first unacknowledged.
    fn open_reader(&self) -> Result {
        let mut ctl = self.ctl.lock();
        if self.dead.load(Relaxed) {
            return Err(ENODEV);
        }
        if ctl.reader_open {
            return Err(EBUSY);
        }
        ctl.reader_open = true;
        let mut st = self.state.lock();
        for s in st.streams.iter_mut().flatten() {
            s.q.rewind();
        }
        Ok(())
    }

    /// The reader closed the device.
    fn close_reader(&self) {
        self.ctl.lock().reader_open = false;
    }

    /// Whether a record can be read now (or the group is gone: end of
    /// stream).
    fn readable(&self) -> bool {
        self.dead.load(Relaxed) || self.is_secondary() || self.state.lock().next_releasable().is_some()
    }

    /// `read(2)`: whole framed records, in group order through the gate,
    /// as many as fit in `len` bytes.  Blocks for the first one unless
    /// `nonblock`.  A buffer too small for the next record: `EINVAL`.
    fn read_records(&self, out: &mut UserSliceWriter, len: usize, nonblock: bool) -> Result<usize> {
        if self.is_secondary() {
            return self.secondary_state(out, len);
        }
        loop {
            let ctl = self.ctl.lock();
            let done = self.read_locked(out, len)?;
            if done > 0 || self.dead.load(Relaxed) {
                return Ok(done);
            }
            if nonblock {
                return Err(EAGAIN);
            }
            // Sleep without the control lock, so that acknowledgements
            // (which open the gate) and markers can come in.
            drop(ctl);
            self.readable.wait_interruptible(&|| self.readable())?;
        }
    }

    /// Copies out the records that are releasable now; the caller holds
    /// `ctl`, so only this reader advances the rings' `sent`.
    fn read_locked(&self, out: &mut UserSliceWriter, len: usize) -> Result<usize> {
        let mut done = 0usize;
        loop {
            let next = {
                let mut st = self.state.lock();
                st.next_releasable()
                    .and_then(|i| st.streams.get(i)?.as_ref()?.q.next_unsent().cloned())
            };
            let Some(rec) = next else {
                return Ok(done);
            };
            let framed = rec.framed_len();
            if framed > len - done {
                return if done > 0 { Ok(done) } else { Err(EINVAL) };
            }
            if let Err(e) = self.copy_record(&rec, out) {
                return if done > 0 { Ok(done) } else { Err(e) };
            }
            done += framed;
            let mut st = self.state.lock();
            if let Some(s) = st.stream(rec.device_id) {
                // Acknowledgements only drop records already sent, so `rec`
                // is still the next unsent record of its ring.
                s.q.mark_sent();
            }
        }
    }

    fn copy_record(&self, rec: &Record, out: &mut UserSliceWriter) -> Result {
        let d = KernelDigest;
        let mut crc = ferry_core::digest::Crc32c::new();
        if rec.inline_len > 0 {
            crc.update(&d, &rec.inline[..rec.inline_len]);
        } else {
            rec.payload.for_each_chunk(|c| crc.update(&d, c));
        }
        let h = rec.header(self.id);
        let mut head = [0u8; HEADER_LEN];
        record::encode_header(&h, crc.value(), &self.key, &d, &mut head).map_err(|_| EINVAL)?;
        let mut tail = [0u8; TAIL_LEN];
        record::encode_tail(&head, &self.key, &d, &mut tail);
        out.write_slice(&head)?;
        if rec.inline_len > 0 {
            out.write_slice(&rec.inline[..rec.inline_len])?;
        } else {
            rec.payload.copy_to_user(out)?;
        }
        out.write_slice(&tail)
    }

    /// `write(2)`: commands.  The whole buffer is checked before any of it
    /// acts, so a rejected write changes nothing.
    fn write_commands(&self, buf: &[u8]) -> Result {
        let r = self.write_inner(buf);
        if r.is_err() {
            self.rejected.fetch_add(1, Relaxed);
        }
        r
    }

    fn write_inner(&self, buf: &[u8]) -> Result {
        if buf.is_empty() {
            return Err(EINVAL);
        }
        if self.is_secondary() {
            return self.secondary_write(buf);
        }
        if buf.len() > chardev::WRITE_MAX {
            return Err(EINVAL);
        }
        {
            let st = self.state.lock();
            for c in Commands::new(buf) {
                let c = c.map_err(|_: CommandError| EINVAL)?;
                Self::check(&st, &c)?;
            }
        }
        for c in Commands::new(buf).flatten() {
            self.apply(c)?;
        }
        Ok(())
    }

    fn check(st: &State, c: &Command) -> Result {
        if let Some((ack, device, dev_seq)) = Ack::of(c) {
            let s = st
                .streams
                .get(device as usize)
                .and_then(Option::as_ref)
                .ok_or(EINVAL)?;
            return s.q.check(ack, dev_seq).map_err(refused);
        }
        match *c {
            Command::Applied { epoch } => st.order.check_applied(epoch).map_err(refused),
            // Leaving `ahead` needs a resync, which this version does not have.
            Command::Start { .. } if st.mode == RepMode::Ahead => Err(eopnotsupp()),
            Command::ApplyBegin { .. } | Command::ApplyEnd { .. } => Err(eopnotsupp()),
            _ => Ok(()),
        }
    }

    fn apply(&self, c: Command) -> Result {
        if let Some((ack, device, dev_seq)) = Ack::of(&c) {
            return self.acknowledge(ack, device, dev_seq);
        }
        match c {
            Command::Applied { epoch } => {
                self.state.lock().order.applied(epoch).map_err(refused)?;
            }
            Command::InsertCheckpoint => {
                self.checkpoint()?;
            }
            Command::InsertConsistencyPoint { label } => {
                self.insert_markers(RecordKind::ConsistencyPoint, Some(label))?;
            }
            Command::Start { .. } => {}
            Command::Stop => {
                let mut st = self.state.lock();
                self.enter_ahead(&mut st, "replication stopped");
            }
            Command::AckLog { .. } | Command::Ack { .. } | Command::Spooled { .. } => {}
            Command::ApplyBegin { .. } | Command::ApplyEnd { .. } => return Err(eopnotsupp()),
        }
        Ok(())
    }

    /// `ACK_LOG`, `ACK` or `SPOOLED` of device `device` up to `dev_seq`
    /// (`ferry_core::stream::Stream::acknowledge`): the records it drops
    /// give their write intent back (`ACK`) or hold their chunks until
    /// acknowledged (`SPOOLED`), and their spool room is freed.
    fn acknowledge(&self, ack: Ack, device: u32, dev_seq: u64) -> Result {
        let mut freed: KVec<Arc<Record>> = KVec::new();
        let r = {
            let mut st = self.state.lock();
            let mut released = 0usize;
            // (A device that left since the check: nothing to do.)
            let r = match st.stream(device) {
                None => Ok(()),
                Some(s) => {
                    let (q, intent) = (&mut s.q, &mut s.intent);
                    let acked = q.acked();
                    let r = q.acknowledge(ack, dev_seq, |r| {
                        released += r.charge;
                        match ack {
                            Ack::Durable => intent.finish(r.wgen),
                            Ack::Spooled => {
                                let nr = u64::from(r.nr_sectors);
                                intent.spooled(r.wgen, r.sector, nr, r.dev_seq(), acked);
                            }
                            Ack::Log => {}
                        }
                        // Freed after the lock is dropped; if the list cannot
                        // grow, dropped here (kfree is fine).
                        let _ = freed.push(r, flags::GFP_ATOMIC | flags::__GFP_NOWARN);
                    });
                    if ack == Ack::Durable {
                        intent.ack(q.acked());
                    }
                    r.map_err(refused)
                }
            };
            st.spool_used = st.spool_used.saturating_sub(released);
            r
        };
        drop(freed);
        if ack != Ack::Log {
            self.space.wake_all();
        }
        self.readable.wake_all();
        r
    }

    /// Status of device `id` and of the group, for `dmsetup status`.
    pub(crate) fn status(&self, id: u32) -> DeviceStatus {
        let mut st = self.state.lock();
        let (mode, epoch, used) = (st.mode, st.order.epoch(), st.spool_used);
        let s = st.stream(id);
        DeviceStatus {
            mode,
            written: s.as_ref().map_or(0, |s| s.written),
            completed: s.as_ref().map_or(0, |s| s.q.last_dev_seq()),
            shipped: s.as_ref().map_or(0, |s| s.q.shipped()),
            acked: s.as_ref().map_or(0, |s| s.q.acked()),
            dirty: s.map_or(0, |s| s.intent.dirty_count()),
            spool_used: used,
            spool_cap: self.settings.spool_bytes(),
            epoch,
            dropped: self.dropped.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
    }
}

/// What a host read of a secondary does.
pub(crate) enum ReadGate {
    /// Go to the data device now, carrying the token.
    Go(Arc<Record>),
    /// Wait (deferred) until the interval being applied is complete.
    Hold(Arc<Record>),
}

/// Size of what `read(2)` returns on a secondary's character device: the
/// apply mark, then the members as a bit mask (u64 LE).
pub(crate) const SECONDARY_STATE_LEN: usize = APPLY_MARK_LEN + 8;

/// The secondary side of a group.
impl Group {
    /// Whether the group is a secondary.
    pub(crate) fn is_secondary(&self) -> bool {
        self.secondary.load(Relaxed)
    }

    /// Whether `rec` is the token `map` attaches to a secondary's reads.
    pub(crate) fn is_read_token(&self, rec: &Arc<Record>) -> bool {
        Arc::ptr_eq(rec, &self.read_token)
    }

    /// `map` of a host read: it goes now, or waits for the interval being
    /// applied.  Never sleeps.
    pub(crate) fn secondary_read(&self) -> ReadGate {
        if self.state.lock().reads.read() {
            ReadGate::Go(self.read_token.clone())
        } else {
            ReadGate::Hold(self.read_token.clone())
        }
    }

    /// Takes a read `map` held; submits it at once if the interval ended
    /// meanwhile.
    pub(crate) fn hold_read(&self, bio: HeldBio) {
        let mut st = self.state.lock();
        if st.reads.read() {
            drop(st);
            bio.submit();
        } else {
            st.held_reads.push(bio);
        }
    }

    /// A host read completed.
    pub(crate) fn read_done(&self) {
        let quiet = self.state.lock().reads.done();
        if quiet {
            self.quiet.wake_all();
        }
    }

    /// Reads the apply mark of a member's meta device
    /// (`ApplyMark::first_valid`: copy A, else copy B, else idle at 0).
    fn read_mark(sm: &StreamMeta) -> Result<ApplyMark> {
        let d = KernelDigest;
        ApplyMark::first_valid(meta::APPLY_MARK_SECTORS.iter().map(|&sector| {
            meta_read(&sm.dev, &sm.page, sector, |b| ApplyMark::decode(b, &d).ok())
        }))
    }

    /// Writes `mark` durably to every member's meta device, copy A then
    /// copy B on each.
    fn write_marks(&self, mark: ApplyMark) -> Result {
        let d = KernelDigest;
        let mut enc = [0u8; APPLY_MARK_LEN];
        mark.encode(&d, &mut enc);
        let metas = self.meta.lock();
        for sm in metas.iter().flatten() {
            for sector in meta::APPLY_MARK_SECTORS {
                meta_write(&sm.dev, &sm.page, sector, |b| {
                    b.fill(0);
                    b[..APPLY_MARK_LEN].copy_from_slice(&enc);
                })?;
            }
        }
        Ok(())
    }

    /// `APPLY_BEGIN epoch`: the mark goes to every meta device, host reads
    /// are held, and the reads already submitted are waited for.  The
    /// intervals after the last applied one up to `epoch` are then applied
    /// as one (several whole intervals under one mark are as atomic as one,
    /// and pay the mark and flushes once).  Beginning what is already in
    /// progress (a redo after a crash) is allowed, and writes the mark
    /// again (`IntervalApply::begin_or_redo`).
    fn apply_begin(&self, epoch: u64) -> Result {
        let mut apply = self.apply.lock();
        // The state changes once the mark is durable.
        let mut next = *apply;
        let mark = next.begin_or_redo(epoch).map_err(|e| match e {
            CheckpointError::BadState => EBUSY,
            _ => ERANGE,
        })?;
        self.write_marks(mark)?;
        *apply = next;
        self.state.lock().reads.hold();
        self.quiet.wait(&|| self.state.lock().reads.quiet());
        Ok(())
    }

    /// `APPLY_END epoch`: the data devices are flushed, the mark is cleared
    /// on every meta device, and the held reads go.
    fn apply_end(&self, epoch: u64) -> Result {
        let mut apply = self.apply.lock();
        // The state changes once the idle mark is durable.
        let mut next = *apply;
        let mark = next.finish(epoch).map_err(|_| ERANGE)?;
        let devs = self.ctl.lock().data;
        // (Not in the deliberate-bug build `apply-flush`.)
        if !ferry_core::bugs::APPLY_NO_FLUSH {
            for dd in devs.iter().flatten() {
                dd.dev.flush()?;
            }
        }
        self.write_marks(mark)?;
        *apply = next;
        let mut held = {
            let mut st = self.state.lock();
            st.reads.end();
            st.held_reads.take()
        };
        while let Some(bio) = held.pop() {
            self.state.lock().reads.release();
            bio.submit();
        }
        Ok(())
    }

    /// One record of the intervals in progress, written (or done) on its
    /// device before the call returns.  Checked whole first: magic,
    /// checksums and signatures (`EBADMSG`), one record exactly, a member
    /// device and a range inside it (`EINVAL`), an epoch after the last
    /// applied one and at most the one in progress (`ERANGE`).
    fn apply_record(&self, buf: &[u8]) -> Result {
        let d = KernelDigest;
        let rec = record::decode_record(buf, &self.key, &d).map_err(|_| ebadmsg())?;
        let h = rec.header;
        if rec.len != buf.len() {
            return Err(EINVAL);
        }
        let apply = self.apply.lock();
        // `APPLY_BEGIN e` opens the intervals after the last applied one up
        // to `e`, applied as one.
        if !apply.admits(h.epoch) {
            return Err(ERANGE);
        }
        let dd = self
            .ctl
            .lock()
            .data
            .get(h.device_id as usize)
            .copied()
            .flatten()
            .ok_or(EINVAL)?;
        let nr = u64::from(h.nr_sectors);
        // The record's numbers are checked before any arithmetic with them;
        // flush and marker records place nothing (`checkpoint::place`).
        let at = place(h.kind, h.sector, h.nr_sectors, dd.sectors, dd.offset)
            .map_err(|_| EINVAL)?
            .unwrap_or(0);
        match h.kind {
            RecordKind::Write => {
                let p = Payload::from_slice(rec.payload).map_err(|_| ENOMEM)?;
                dd.dev.write_payload(at, &p)?;
            }
            RecordKind::Discard => dd.dev.discard(at, nr)?,
            RecordKind::WriteZeroes => dd.dev.zeroout(at, nr)?,
            RecordKind::Flush => dd.dev.flush()?,
            RecordKind::Checkpoint | RecordKind::ConsistencyPoint => {}
        }
        drop(apply);
        if let Some(c) = self.applied_records.get(h.device_id as usize) {
            c.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// `read(2)` of a secondary: its state ([`SECONDARY_STATE_LEN`] bytes).
    fn secondary_state(&self, out: &mut UserSliceWriter, len: usize) -> Result<usize> {
        if len < SECONDARY_STATE_LEN {
            return Err(EINVAL);
        }
        let mark = self.apply.lock().mark();
        let members = {
            let ctl = self.ctl.lock();
            ctl.users
                .iter()
                .enumerate()
                .filter(|(_, u)| **u > 0)
                .fold(0u64, |m, (i, _)| m | 1 << i)
        };
        let mut b = [0u8; SECONDARY_STATE_LEN];
        let mut enc = [0u8; APPLY_MARK_LEN];
        mark.encode(&KernelDigest, &mut enc);
        b[..APPLY_MARK_LEN].copy_from_slice(&enc);
        b[APPLY_MARK_LEN..].copy_from_slice(&members.to_le_bytes());
        out.write_slice(&b)?;
        Ok(SECONDARY_STATE_LEN)
    }

    /// `write(2)` of a secondary: one record, or commands.
    fn secondary_write(&self, buf: &[u8]) -> Result {
        if buf.starts_with(&record::MAGIC) {
            return self.apply_record(buf);
        }
        if buf.len() > chardev::WRITE_MAX {
            return Err(EINVAL);
        }
        for c in Commands::new(buf) {
            match c.map_err(|_: CommandError| EINVAL)? {
                Command::ApplyBegin { .. } | Command::ApplyEnd { .. } => {}
                _ => return Err(eopnotsupp()),
            }
        }
        for c in Commands::new(buf).flatten() {
            match c {
                Command::ApplyBegin { epoch } => self.apply_begin(epoch)?,
                Command::ApplyEnd { epoch } => self.apply_end(epoch)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// `dmsetup message <dev> 0 promote`: the secondary becomes a primary
    /// that numbers and spools its own writes and tracks them in its
    /// bitmap.  Refused (`EBUSY`) while an interval is in progress or
    /// `ferryd` holds the character device.
    pub(crate) fn promote(&self) -> Result {
        let apply = self.apply.lock();
        if !self.is_secondary() {
            return Err(EINVAL);
        }
        if let ApplyState::InProgress { epoch } = apply.state() {
            pr_warn!(
                "ferry: group {}: interval {} is being applied: let ferryd finish it before promote\n",
                core::str::from_utf8(self.name()).unwrap_or("?"),
                epoch
            );
            return Err(EBUSY);
        }
        let ctl = self.ctl.lock();
        if ctl.reader_open {
            pr_warn!(
                "ferry: group {}: /dev/ferry/{} is open: stop ferryd before promote\n",
                core::str::from_utf8(self.name()).unwrap_or("?"),
                core::str::from_utf8(self.name()).unwrap_or("?"),
            );
            return Err(EBUSY);
        }
        self.secondary.store(false, Relaxed);
        drop(ctl);
        pr_info!(
            "ferry: group {}: promoted to primary at interval {}\n",
            core::str::from_utf8(self.name()).unwrap_or("?"),
            apply.applied()
        );
        Ok(())
    }

    /// Status of a secondary device: (applying, applied interval, interval
    /// in progress or 0, records applied to the device, reads held).
    pub(crate) fn secondary_status(&self, id: u32) -> (u64, u64, u64) {
        let mark = self.apply.lock().mark();
        let in_progress = match mark.state {
            ApplyState::InProgress { epoch } => epoch,
            ApplyState::Idle => 0,
        };
        let n = self
            .applied_records
            .get(id as usize)
            .map_or(0, |c| c.load(Relaxed));
        (mark.applied, in_progress, n)
    }
}

fn ebadmsg() -> Error {
    Error::from_errno(-(kernel::bindings::EBADMSG as i32))
}

fn refused(r: Refused) -> Error {
    match r {
        Refused::Invalid => EINVAL,
        Refused::Range => ERANGE,
    }
}

fn eopnotsupp() -> Error {
    Error::from_errno(-(kernel::bindings::EOPNOTSUPP as i32))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reserve {
    /// Room reserved.
    Done,
    /// No room; the writer may wait (`overflow block`).
    Full,
    /// No room: the group went ahead now.
    Overflow,
    /// The group is ahead: bitmap only.
    Ahead,
}

struct Admit {
    reserve: Reserve,
    defer: bool,
    wgen: Gen,
}

/// What `dmsetup status` reports of a primary device.
pub(crate) struct DeviceStatus {
    pub(crate) mode: RepMode,
    pub(crate) written: u64,
    pub(crate) completed: u64,
    pub(crate) shipped: u64,
    pub(crate) acked: u64,
    pub(crate) dirty: u64,
    pub(crate) spool_used: usize,
    pub(crate) spool_cap: usize,
    pub(crate) epoch: u64,
    pub(crate) dropped: u64,
    pub(crate) rejected: u64,
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

impl Worker for Group {
    fn run(&self, id: WorkId) {
        match id {
            WorkId::Tick => self.tick(),
            WorkId::Kick => self.persist(),
        }
    }
}

impl Group {
    /// The periodic work: closes the checkpoint interval when it is due
    /// and holds records, and clears acknowledged chunks on disk.
    fn tick(&self) {
        if self.dead.load(Relaxed) {
            return;
        }
        let ms = self.settings.checkpoint_ms;
        let now = (kernel::time::Ktime::ktime_get().to_ns() / 1_000_000) as u64;
        let busy = self.state.lock().order.since_checkpoint() > 0;
        if ms > 0 && busy && now >= self.last_checkpoint_ms.load(Relaxed) + u64::from(ms) {
            // A full spool skips this marker; the interval then spans two
            // periods.
            let _ = self.checkpoint();
            self.last_checkpoint_ms.store(now, Relaxed);
        }
        {
            let mut metas = self.meta.lock();
            for i in 0..MAX_DEVICES as usize {
                self.sweep_stream(&mut metas, i, false);
            }
        }
        if !self.dead.load(Relaxed) {
            self.work
                .schedule(kernel::time::msecs_to_jiffies(self.tick_ms()));
        }
    }

    /// The write-intent sweep of device `i` (`WriteIntent::sweep`: the
    /// chunks whose writes are all acknowledged are cleared in memory),
    /// then the bitmap pages it changed are written.  `last`: the device
    /// is leaving (no write in flight), so both generations may close.
    /// Called with `meta` held.
    fn sweep_stream(&self, metas: &mut KVec<Option<StreamMeta>>, i: usize, last: bool) {
        let Some(Some(sm)) = metas.get_mut(i) else {
            return;
        };
        let cleared = {
            let mut st = self.state.lock();
            let Some(Some(s)) = st.streams.get_mut(i) else {
                return;
            };
            let changed = &mut sm.changed;
            s.intent
                .sweep(last, |w| {
                    if let Some(c) = changed.get_mut(w / WORDS_PER_PAGE) {
                        *c = true;
                    }
                })
                .cleared()
        };
        if !cleared {
            return;
        }
        for p in 0..sm.changed.len() {
            let Some(c) = sm.changed.get_mut(p) else { break };
            if !core::mem::replace(c, false) {
                continue;
            }
            let r = meta_write(&sm.dev, &sm.page, meta::BITMAP_SECTOR + 8 * p as u64, |b| {
                let st = self.state.lock();
                if let Some(Some(s)) = st.streams.get(i) {
                    s.intent.sweep_page(p, b);
                }
            });
            // A failed clear only leaves bits set: more to resync, never less.
            if r.is_err() {
                pr_err!("ferry: device {}: cannot clear bitmap page {}\n", i, p);
            }
        }
    }

    /// The kick work: writes the wanted bits to the meta devices, then
    /// submits the writes that waited for them.  A write whose bits could
    /// not be written fails with an I/O error.
    fn persist(&self) {
        let mut metas = self.meta.lock();
        // Take the waiting writes first: their bits were wanted before they
        // were queued, so the bits written below cover all of them.
        let mut held = self.state.lock().held.take();
        let mut ok = true;
        for (i, sm) in metas.iter_mut().enumerate() {
            let Some(sm) = sm else { continue };
            let pages = {
                let st = self.state.lock();
                st.streams.get(i).and_then(Option::as_ref).map_or(0, |s| s.intent.pages())
            };
            for p in 0..pages {
                let wanted = {
                    let st = self.state.lock();
                    st.streams.get(i).and_then(Option::as_ref).is_some_and(|s| s.intent.wants_page(p))
                };
                if !wanted {
                    continue;
                }
                let wsnap = &mut sm.wsnap;
                let r = meta_write(&sm.dev, &sm.page, meta::BITMAP_SECTOR + 8 * p as u64, |b| {
                    let st = self.state.lock();
                    if let Some(Some(s)) = st.streams.get(i) {
                        s.intent.persist_page(p, b, wsnap);
                    }
                });
                if r.is_err() {
                    pr_err!(
                        "ferry: device {}: cannot write bitmap page {}; failing the writes that wait for it\n",
                        i,
                        p
                    );
                    ok = false;
                    continue;
                }
                let mut st = self.state.lock();
                if let Some(Some(s)) = st.streams.get_mut(i) {
                    s.intent.persisted(p, &sm.wsnap);
                }
            }
        }
        drop(metas);
        while let Some(b) = held.pop() {
            if ok {
                b.submit();
            } else {
                b.fail();
            }
        }
    }
}

/// Builds a record for a write-like bio of a device.
pub(crate) fn record_for(
    kind: RecordKind,
    device_id: u32,
    role: Role,
    sector: u64,
    nr_sectors: u32,
    fua: bool,
    preflush: bool,
) -> Record {
    let mut r = Record::new(kind, device_id, role);
    if kind != RecordKind::Flush {
        r.sector = sector;
        r.nr_sectors = nr_sectors;
    }
    if fua {
        r.flags.0 |= Flags::FUA;
    }
    if preflush {
        r.flags.0 |= Flags::PREFLUSH;
    }
    r
}

/// The groups of the module.  Its mutex serialises constructors and
/// destructors, so that a group is never left by its last device while
/// another joins it.
pub(crate) struct Registry {
    groups: Pin<KBox<Mutex<KVec<Option<Arc<Group>>>>>>,
}

/// Which group settings a table line gave.
pub(crate) struct Given {
    pub(crate) spool_mb: bool,
    pub(crate) overflow: bool,
    pub(crate) checkpoint_ms: bool,
}

impl Registry {
    /// An empty registry.
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            groups: KBox::pin_init(new_mutex!(KVec::new()), GFP_KERNEL)?,
        })
    }

    /// Joins device `id` to the group named `name`, created with `settings`
    /// if it does not exist; the `given` settings must match an existing
    /// group's.
    pub(crate) fn join(
        &self,
        name: &[u8],
        settings: Settings,
        given: Given,
        m: &Member,
    ) -> core::result::Result<Arc<Group>, JoinError> {
        let mut groups = self.groups.lock();
        let found = groups.iter().flatten().find(|g| g.name() == name).cloned();
        let (g, created) = match found {
            Some(g) => {
                let s = g.settings();
                if (given.spool_mb && s.spool_mb != settings.spool_mb)
                    || (given.overflow && s.overflow != settings.overflow)
                    || (given.checkpoint_ms && s.checkpoint_ms != settings.checkpoint_ms)
                {
                    return Err(JoinError::Settings);
                }
                (g, false)
            }
            None => (
                Group::create(name, settings, m.secondary).map_err(JoinError::Create)?,
                true,
            ),
        };
        if let Err(e) = g.join(m) {
            if created {
                g.shutdown();
            }
            return Err(e);
        }
        if created {
            let slot = groups.iter().position(Option::is_none);
            let stored = match slot {
                Some(i) => groups.get_mut(i).map(|s| *s = Some(g.clone())).is_some(),
                None => groups.push(Some(g.clone()), GFP_KERNEL).is_ok(),
            };
            if !stored {
                g.leave(m.id);
                g.shutdown();
                return Err(JoinError::NoMemory);
            }
        }
        Ok(g)
    }

    /// Removes one user of device `id` of `group`; the group ends with its
    /// last device.  It is shut down (its character device deregistered)
    /// before the registry is unlocked: a device of the same group created
    /// meanwhile makes a new group whose character device would otherwise
    /// find the old one's name still taken.  (The order registry, then
    /// `misc_mtx` is the one `join` takes when it registers; nothing that
    /// holds `misc_mtx` takes the registry.)
    pub(crate) fn leave(&self, group: &Arc<Group>, id: u32) {
        let mut groups = self.groups.lock();
        if !group.leave(id) {
            return;
        }
        for slot in groups.iter_mut() {
            if slot.as_ref().is_some_and(|g| Arc::ptr_eq(g, group)) {
                *slot = None;
            }
        }
        group.shutdown();
        drop(groups);
    }
}

/// Bytes of kernel memory a spooled record costs besides its payload
/// pages, for the documentation's and the benchmark's accounting.
pub(crate) const RECORD_OVERHEAD: usize = core::mem::size_of::<Record>();
