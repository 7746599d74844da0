// SPDX-License-Identifier: GPL-2.0

//! A consistency group on the primary: one group-wide order over the writes
//! of all its devices, a bounded spool of the records not yet acknowledged
//! by the secondary, the log-before-data gate, checkpoint and
//! consistency-point markers, and the character device `ferryd` reads.
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
//! # Storage
//!
//! Each device of the group has a ring of its records in `dev_seq` order:
//! `[head, head + sent)` were read by `ferryd` and wait for the secondary's
//! acknowledgement, `[head + sent, head + len)` wait to be read.  Every
//! record charges at least one page to the group's spool, whose cap bounds
//! every ring, so rings are allocated once, when a device joins, and never
//! grow.  Spool memory returns when the secondary acknowledges.
//!
//! # Locks
//!
//! `state` (a spinlock taken with interrupts off: completions run in
//! interrupt context) guards the rings and counters; `ctl` (a mutex,
//! process context) serialises membership changes, the reader and marker
//! insertion.  `ctl` is taken before `state`.

use crate::chardev::MiscDev;
use crate::digest::KernelDigest;
use crate::payload::Payload;
use crate::sync::{IrqSpinLock, WaitQueue};
use crate::work::{DelayedWork, Worker};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use ferry_core::command::{Command, CommandError, Commands};
use ferry_core::gate::{may_release, DeviceClass, Watermark};
use ferry_core::record::{
    self, ConsistencyPayload, Flags, GroupKey, Label, RecordHeader, RecordKind, CP_FIXED_LEN,
    HEADER_LEN, LABEL_MAX, TAIL_LEN,
};
use ferry_core::table::{Overflow, Role, GROUP_NAME_MAX, MAX_DEVICES};
use kernel::alloc::flags;
use kernel::new_mutex;
use kernel::page::PAGE_SIZE;
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

    fn group_seq(&self) -> u64 {
        self.group_seq.load(Relaxed)
    }
}

/// The records of one device, in `dev_seq` order (see the module doc).
struct Ring {
    slots: KVVec<Option<Arc<Record>>>,
    head: usize,
    len: usize,
    sent: usize,
}

impl Ring {
    fn new(capacity: usize) -> Result<Self> {
        let mut slots = KVVec::with_capacity(capacity, GFP_KERNEL)?;
        for _ in 0..capacity {
            slots.push(None, GFP_KERNEL)?;
        }
        Ok(Self {
            slots,
            head: 0,
            len: 0,
            sent: 0,
        })
    }

    fn at(&self, i: usize) -> Option<&Arc<Record>> {
        if i >= self.len {
            return None;
        }
        self.slots.get(self.index(i)?)?.as_ref()
    }

    /// Slot of the `i`-th record from the head (no division: a zero
    /// capacity simply has no slot).
    fn index(&self, i: usize) -> Option<usize> {
        let cap = self.slots.len();
        let j = self.head.checked_add(i)?;
        Some(if j >= cap { j.checked_sub(cap)? } else { j }).filter(|&j| j < cap)
    }

    fn push(&mut self, r: Arc<Record>) -> core::result::Result<(), Arc<Record>> {
        if self.len >= self.slots.len() {
            return Err(r);
        }
        let Some(i) = self.index(self.len) else {
            return Err(r);
        };
        match self.slots.get_mut(i) {
            Some(slot) => {
                *slot = Some(r);
                self.len += 1;
                Ok(())
            }
            None => Err(r),
        }
    }

    fn pop(&mut self) -> Option<Arc<Record>> {
        if self.len == 0 {
            return None;
        }
        let r = self.slots.get_mut(self.head)?.take();
        self.head = self.index(1)?;
        self.len -= 1;
        self.sent = self.sent.saturating_sub(1);
        r
    }

    fn next_unsent(&self) -> Option<&Arc<Record>> {
        self.at(self.sent)
    }
}

/// One device of the group, as the spool sees it.
struct Stream {
    role: Role,
    ring: Ring,
    /// Last `dev_seq` assigned.
    last_dev_seq: u64,
    /// Highest `dev_seq` read by `ferryd`.
    shipped: u64,
    /// Highest `dev_seq` the secondary holds durably (`Ack`).
    acked: u64,
    /// Highest `dev_seq` of a log device acknowledged for the gate.
    log_acked: u64,
    /// First `dev_seq` after the last consistency point.
    cp_first: u64,
    /// Writes mapped (bios), for status.
    written: u64,
    /// Dirty-chunk bits (writes not in the spool: overflow, failures).
    dirty: KVVec<u64>,
    dirty_bits: u64,
    chunk_shift: u32,
}

impl Stream {
    /// The lowest `group_seq` of this log device not yet acknowledged for
    /// the gate, if any.
    fn lowest_pending_log(&self) -> Option<u64> {
        // The ring holds `dev_seq`s `front, front + 1, ...`: the first one
        // above `log_acked` is at a known index.
        let front = self.ring.at(0)?.dev_seq.load(Relaxed);
        let idx = if self.log_acked >= front {
            usize::try_from(self.log_acked - front + 1).ok()?
        } else {
            0
        };
        self.ring.at(idx).map(|r| r.group_seq())
    }

    fn mark_dirty(&mut self, sector: u64, nr_sectors: u64) {
        let Some((first, n)) =
            ferry_core::bitmap::chunks_of(sector, nr_sectors.max(1), self.chunk_shift)
        else {
            return;
        };
        if let Ok(mut bm) = ferry_core::bitmap::ChunkBitmap::new(&mut self.dirty, self.dirty_bits) {
            let end = (first + n).min(self.dirty_bits);
            if first < end {
                let _ = bm.set_range(first, end - first);
            }
        }
    }

    fn dirty_count(&mut self) -> u64 {
        ferry_core::bitmap::ChunkBitmap::new(&mut self.dirty, self.dirty_bits)
            .map(|bm| bm.count())
            .unwrap_or(0)
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
    last_group_seq: u64,
    last_ts: u64,
    /// The open checkpoint interval.
    epoch: u64,
    /// Records sequenced since the last checkpoint marker.
    since_checkpoint: u64,
    spool_used: usize,
    mode: RepMode,
    /// Last applied interval the secondary reported.
    applied_epoch: u64,
    cp_id: u64,
}

impl State {
    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.get_mut(id as usize)?.as_mut()
    }

    /// Numbers `r` (now complete) and appends it to its device's ring.
    fn sequence(&mut self, r: Arc<Record>, now_ns: u64) -> core::result::Result<(), Arc<Record>> {
        let ts = now_ns.max(self.last_ts);
        let group_seq = self.last_group_seq + 1;
        let epoch = self.epoch;
        let Some(s) = self.stream(r.device_id) else {
            return Err(r);
        };
        let dev_seq = s.last_dev_seq + 1;
        r.dev_seq.store(dev_seq, Relaxed);
        r.group_seq.store(group_seq, Relaxed);
        r.timestamp_ns.store(ts, Relaxed);
        r.epoch.store(epoch, Relaxed);
        s.ring.push(r)?;
        s.last_dev_seq = dev_seq;
        self.last_group_seq = group_seq;
        self.last_ts = ts;
        self.since_checkpoint += 1;
        Ok(())
    }

    /// The gate's watermark: every log record at or below it is
    /// acknowledged.
    fn watermark(&self) -> Watermark {
        let lowest = self
            .streams
            .iter()
            .flatten()
            .filter(|s| s.role == Role::Log)
            .filter_map(Stream::lowest_pending_log)
            .min();
        Watermark::from_lowest_pending(lowest)
    }

    /// The device whose next unread record comes first in the group order
    /// among those the gate releases.
    fn next_releasable(&self) -> Option<usize> {
        let w = self.watermark();
        let mut best: Option<(u64, usize)> = None;
        for (i, s) in self.streams.iter().enumerate() {
            let Some(s) = s else { continue };
            let Some(r) = s.ring.next_unsent() else {
                continue;
            };
            let class = match s.role {
                Role::Log => DeviceClass::Log,
                Role::Data => DeviceClass::Data,
            };
            let g = r.group_seq();
            if may_release(class, g, w) && best.map_or(true, |(bg, _)| g < bg) {
                best = Some((g, i));
            }
        }
        best.map(|(_, i)| i)
    }
}

/// Control state, process context only.
struct Ctl {
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
    misc: MiscDev,
    dead: AtomicBool,
    /// Records not shipped because the group was ahead or the write failed.
    dropped: AtomicU64,
    /// Commands rejected, by any cause.
    rejected: AtomicU64,
    members: AtomicUsize,
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
}

impl Group {
    fn create(name: &[u8], settings: Settings) -> Result<Arc<Self>> {
        let d = KernelDigest;
        let id = record::group_id_of_name(&d, name);
        let key = GroupKey::derive(&d, id, &[]).map_err(|_| EINVAL)?;
        let mut n = [0u8; GROUP_NAME_MAX];
        let len = name.len().min(GROUP_NAME_MAX);
        n[..len].copy_from_slice(&name[..len]);
        let mut streams = KVec::with_capacity(MAX_DEVICES as usize, GFP_KERNEL)?;
        for _ in 0..MAX_DEVICES {
            streams.push(None, GFP_KERNEL)?;
        }
        let g = Arc::pin_init(
            pin_init!(Self {
                work <- DelayedWork::new(),
                name: n,
                name_len: len,
                id,
                key,
                settings,
                state <- IrqSpinLock::new(State {
                    streams,
                    last_group_seq: 0,
                    last_ts: 0,
                    epoch: 1,
                    since_checkpoint: 0,
                    spool_used: 0,
                    mode: RepMode::Replicating,
                    applied_epoch: 0,
                    cp_id: 0,
                }),
                readable <- WaitQueue::new(),
                space <- WaitQueue::new(),
                ctl <- new_mutex!(Ctl {
                    users: [0; MAX_DEVICES as usize],
                    devt: [0; MAX_DEVICES as usize],
                    reader_open: false,
                }),
                misc <- MiscDev::new(&n[..len]),
                dead: AtomicBool::new(false),
                dropped: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                members: AtomicUsize::new(0),
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: the work item is a field of the group, which cancels it in
        // `shutdown` before the registry lets the group go.
        unsafe { g.work.set_owner(&g) };
        g.misc.register(g.clone())?;
        if settings.checkpoint_ms > 0 {
            g.work
                .schedule(kernel::time::msecs_to_jiffies(settings.checkpoint_ms));
        }
        Ok(g)
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
    pub(crate) fn join(
        &self,
        id: u32,
        devt: u32,
        role: Role,
        sectors: u64,
        chunk_shift: u32,
    ) -> core::result::Result<(), JoinError> {
        let mut ctl = self.ctl.lock();
        let i = id as usize;
        if ctl.users[i] > 0 {
            if ctl.devt[i] != devt {
                return Err(JoinError::IdTaken);
            }
            let st = self.state.lock();
            if st.streams.get(i).and_then(Option::as_ref).map(|s| s.role) != Some(role) {
                return Err(JoinError::Role);
            }
            drop(st);
            ctl.users[i] += 1;
            return Ok(());
        }
        let cap = (self.settings.spool_bytes() / PAGE_SIZE).max(1);
        let ring = Ring::new(cap).map_err(|_| JoinError::NoMemory)?;
        let bits = sectors.div_ceil(1u64 << chunk_shift);
        let words = usize::try_from(ferry_core::bitmap::words_for(bits)).map_err(|_| JoinError::NoMemory)?;
        let mut dirty = KVVec::with_capacity(words, GFP_KERNEL).map_err(|_| JoinError::NoMemory)?;
        for _ in 0..words {
            dirty.push(0u64, GFP_KERNEL).map_err(|_| JoinError::NoMemory)?;
        }
        let stream = Stream {
            role,
            ring,
            last_dev_seq: 0,
            shipped: 0,
            acked: 0,
            log_acked: 0,
            cp_first: 1,
            written: 0,
            dirty,
            dirty_bits: bits,
            chunk_shift,
        };
        {
            let mut st = self.state.lock();
            if let Some(slot) = st.streams.get_mut(i) {
                *slot = Some(stream);
            }
        }
        ctl.users[i] = 1;
        ctl.devt[i] = devt;
        self.members.fetch_add(1, Relaxed);
        Ok(())
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
        let stream = {
            let mut st = self.state.lock();
            let s = st.streams.get_mut(i).and_then(Option::take);
            if let Some(s) = &s {
                let held: usize = (0..s.ring.len)
                    .filter_map(|k| s.ring.at(k))
                    .map(|r| r.charge)
                    .sum();
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

    /// Reserves spool room for a record of `charge` bytes.  Never sleeps.
    /// `false`: the group is (now) ahead and the write goes to the bitmap.
    fn try_reserve(&self, id: u32, charge: usize, block: bool, first: bool) -> Reserve {
        let mut st = self.state.lock();
        if first {
            if let Some(s) = st.stream(id) {
                s.written += 1;
            }
        }
        if st.mode == RepMode::Ahead {
            return Reserve::Ahead;
        }
        if st.spool_used + charge <= self.settings.spool_bytes() {
            st.spool_used += charge;
            return Reserve::Done;
        }
        if block {
            return Reserve::Full;
        }
        self.enter_ahead(&mut st, "spool full");
        Reserve::Ahead
    }

    fn mark_dirty(&self, id: u32, sector: u64, nr_sectors: u64) {
        let mut st = self.state.lock();
        if let Some(s) = st.stream(id) {
            s.mark_dirty(sector, nr_sectors);
        }
    }

    /// `map` of a write-like bio of device `id`: builds its record, or
    /// marks its chunks dirty when the spool cannot take it.
    ///
    /// `fill` copies the bio's data into a payload.  `nowait`: the bio may
    /// not sleep.  Returns the record to attach to the bio, `Ok(None)` when
    /// the write is tracked in the bitmap, `Err(EAGAIN)` for a `REQ_NOWAIT`
    /// bio that would have to wait for room.
    pub(crate) fn prepare(
        &self,
        mut rec: Record,
        payload_bytes: usize,
        nowait: bool,
        fill: impl FnOnce() -> core::result::Result<Payload, kernel::alloc::AllocError>,
    ) -> Result<Option<Arc<Record>>> {
        let id = rec.device_id;
        let (sector, nr) = (rec.sector, u64::from(rec.nr_sectors));
        rec.charge = PAGE_SIZE * Payload::pages_for(payload_bytes).max(1);
        let block = self.settings.overflow == Overflow::Block;
        let mut first = true;
        loop {
            let r = self.try_reserve(id, rec.charge, block, first);
            first = false;
            match r {
                Reserve::Done => break,
                Reserve::Ahead => {
                    self.mark_dirty(id, sector, nr);
                    self.dropped.fetch_add(1, Relaxed);
                    return Ok(None);
                }
                Reserve::Full if nowait => return Err(EAGAIN),
                Reserve::Full => self.space.wait(&|| self.has_room(rec.charge)),
            }
        }
        if payload_bytes > 0 {
            match fill() {
                Ok(p) => rec.payload = p,
                Err(_) => return self.prepare_failed(rec.charge, id, sector, nr, "out of memory for the spool"),
            }
        }
        let charge = rec.charge;
        match Arc::new(rec, flags::GFP_NOWAIT | flags::__GFP_NOWARN) {
            Ok(r) => Ok(Some(r)),
            Err(_) => self.prepare_failed(charge, id, sector, nr, "out of memory for the spool"),
        }
    }

    fn prepare_failed(
        &self,
        charge: usize,
        id: u32,
        sector: u64,
        nr: u64,
        why: &str,
    ) -> Result<Option<Arc<Record>>> {
        let mut st = self.state.lock();
        st.spool_used = st.spool_used.saturating_sub(charge);
        self.enter_ahead(&mut st, why);
        if let Some(s) = st.stream(id) {
            s.mark_dirty(sector, nr);
        }
        drop(st);
        self.dropped.fetch_add(1, Relaxed);
        Ok(None)
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
        let charge = rec.charge;
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
                s.mark_dirty(sector, nr);
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
        let mut members = [None::<(u32, Role, u64)>; MAX_DEVICES as usize];
        let cp_id = {
            let st = self.state.lock();
            for (m, s) in members.iter_mut().zip(st.streams.iter()) {
                *m = s.as_ref().map(|s| (0, s.role, s.cp_first));
            }
            st.cp_id + 1
        };
        // Build the records outside the spinlock.
        let mut recs: KVec<Arc<Record>> = KVec::with_capacity(MAX_DEVICES as usize, GFP_KERNEL)?;
        for (id, m) in members.iter().enumerate() {
            let Some((_, role, first)) = *m else { continue };
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
            let (id, charge) = (r.device_id, r.charge);
            st.spool_used += charge;
            // Cannot fail: the device is a member (membership changes need
            // `ctl`) and its ring has room (the spool had).
            if st.sequence(r, now).is_ok() {
                n += 1;
                if kind == RecordKind::ConsistencyPoint {
                    if let Some(s) = st.stream(id) {
                        s.cp_first = s.last_dev_seq + 1;
                    }
                }
            } else {
                st.spool_used = st.spool_used.saturating_sub(charge);
            }
        }
        match kind {
            RecordKind::Checkpoint => {
                st.epoch += 1;
                st.since_checkpoint = 0;
            }
            RecordKind::ConsistencyPoint => st.cp_id = cp_id,
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
    pub(crate) fn open(&self) -> Result {
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
            s.ring.sent = 0;
        }
        Ok(())
    }

    /// The reader closed the device.
    pub(crate) fn release(&self) {
        self.ctl.lock().reader_open = false;
    }

    /// The wait queue `poll()` registers on.
    pub(crate) fn readable_wq(&self) -> &WaitQueue {
        &self.readable
    }

    /// Whether a record can be read now (or the group is gone: end of
    /// stream).
    pub(crate) fn readable(&self) -> bool {
        self.dead.load(Relaxed) || self.state.lock().next_releasable().is_some()
    }

    /// `read(2)`: whole framed records, in group order through the gate,
    /// as many as fit in `len` bytes.  Blocks for the first one unless
    /// `nonblock`.  A buffer too small for the next record: `EINVAL`.
    pub(crate) fn read(&self, out: &mut UserSliceWriter, len: usize, nonblock: bool) -> Result<usize> {
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
                let st = self.state.lock();
                st.next_releasable()
                    .and_then(|i| st.streams.get(i)?.as_ref()?.ring.next_unsent().cloned())
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
                s.ring.sent += 1;
                s.shipped = s.shipped.max(rec.dev_seq.load(Relaxed));
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
    pub(crate) fn write(&self, buf: &[u8]) -> Result {
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
        match *c {
            Command::AckLog { device, dev_seq } | Command::Ack { device, dev_seq } => {
                let s = st
                    .streams
                    .get(device as usize)
                    .and_then(Option::as_ref)
                    .ok_or(EINVAL)?;
                if matches!(c, Command::AckLog { .. }) && s.role != Role::Log {
                    return Err(EINVAL);
                }
                if dev_seq > s.shipped {
                    return Err(ERANGE);
                }
                Ok(())
            }
            Command::Applied { epoch } if epoch >= st.epoch => Err(ERANGE),
            // Leaving `ahead` needs a resync, which this version does not have.
            Command::Start { .. } if st.mode == RepMode::Ahead => Err(eopnotsupp()),
            _ => Ok(()),
        }
    }

    fn apply(&self, c: Command) -> Result {
        match c {
            Command::AckLog { device, dev_seq } => {
                let mut st = self.state.lock();
                if let Some(s) = st.stream(device) {
                    s.log_acked = s.log_acked.max(dev_seq);
                }
                drop(st);
                self.readable.wake_all();
            }
            Command::Ack { device, dev_seq } => {
                let mut freed: KVec<Arc<Record>> = KVec::new();
                {
                    let mut st = self.state.lock();
                    let mut released = 0usize;
                    if let Some(s) = st.stream(device) {
                        s.acked = s.acked.max(dev_seq);
                        s.log_acked = s.log_acked.max(dev_seq);
                        while s
                            .ring
                            .at(0)
                            .is_some_and(|r| r.dev_seq.load(Relaxed) <= dev_seq)
                        {
                            let Some(r) = s.ring.pop() else { break };
                            released += r.charge;
                            // Freed after the lock is dropped; if the list
                            // cannot grow, drop it here (kfree is fine).
                            let _ = freed.push(r, flags::GFP_ATOMIC | flags::__GFP_NOWARN);
                        }
                    }
                    st.spool_used = st.spool_used.saturating_sub(released);
                }
                drop(freed);
                self.space.wake_all();
                self.readable.wake_all();
            }
            Command::Applied { epoch } => {
                let mut st = self.state.lock();
                st.applied_epoch = st.applied_epoch.max(epoch);
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
        }
        Ok(())
    }

    /// Status of device `id` and of the group, for `dmsetup status`.
    pub(crate) fn status(&self, id: u32) -> DeviceStatus {
        let mut st = self.state.lock();
        let (mode, epoch, used) = (st.mode, st.epoch, st.spool_used);
        let s = st.stream(id);
        DeviceStatus {
            mode,
            written: s.as_ref().map_or(0, |s| s.written),
            completed: s.as_ref().map_or(0, |s| s.last_dev_seq),
            shipped: s.as_ref().map_or(0, |s| s.shipped),
            acked: s.as_ref().map_or(0, |s| s.acked),
            dirty: s.map_or(0, |s| s.dirty_count()),
            spool_used: used,
            spool_cap: self.settings.spool_bytes(),
            epoch,
            dropped: self.dropped.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
    }
}

fn eopnotsupp() -> Error {
    Error::from_errno(-(kernel::bindings::EOPNOTSUPP as i32))
}

enum Reserve {
    Done,
    Full,
    Ahead,
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

impl Worker for Group {
    /// The checkpoint timer: closes the interval when it holds records.
    fn run(&self) {
        if self.dead.load(Relaxed) {
            return;
        }
        let busy = self.state.lock().since_checkpoint > 0;
        if busy {
            // A full spool skips this marker; the interval then spans two
            // periods.
            let _ = self.checkpoint();
        }
        if !self.dead.load(Relaxed) {
            self.work
                .schedule(kernel::time::msecs_to_jiffies(self.settings.checkpoint_ms));
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn join(
        &self,
        name: &[u8],
        settings: Settings,
        given: Given,
        id: u32,
        devt: u32,
        role: Role,
        sectors: u64,
        chunk_shift: u32,
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
            None => (Group::create(name, settings).map_err(JoinError::Create)?, true),
        };
        if let Err(e) = g.join(id, devt, role, sectors, chunk_shift) {
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
                g.leave(id);
                g.shutdown();
                return Err(JoinError::NoMemory);
            }
        }
        Ok(g)
    }

    /// Removes one user of device `id` of `group`; the group ends with its
    /// last device.
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
        drop(groups);
        group.shutdown();
    }
}

/// Bytes of kernel memory a spooled record costs besides its payload
/// pages, for the documentation's and the benchmark's accounting.
pub(crate) const RECORD_OVERHEAD: usize = core::mem::size_of::<Record>();
