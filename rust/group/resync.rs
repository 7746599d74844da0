// SPDX-License-Identifier: GPL-2.0

//! Resync: how a group that went `ahead` gets back to `replicating`, the
//! secondary a crash-consistent image of the primary's past throughout.
//! The rules are `ferry_core::resync`'s; the kernel does the I/O.
//!
//! * **Begin** (`START` while `ahead`, or with `FULL_RESYNC` after every
//!   chunk is marked dirty, [`Group::resync_start`]): the spool
//!   leaves `ahead` (`Spool::resync`), every member's dirty chunks become
//!   its `Resync`'s set, the host writes in flight count in its first
//!   epoch, and a checkpoint flagged `RESYNC_BEGIN` closes the open
//!   interval: every record numbered from then on is in the span.
//! * **Copy** (the resync work, [`Group::resync_step`]): one chunk at a
//!   time, while the spool is under half full (`app_first`): the chunk is
//!   taken (`next_read`), read from the data device once the host writes
//!   admitted before it completed (`may_issue`), and made a record flagged
//!   `RESYNC` (a write-zeroes record without payload when it is all zero),
//!   admitted through the write intent and numbered under the group's lock
//!   as a completed write is.  Host writes that touch the chunk meanwhile
//!   wait, not admitted (`HostWrite::Wait`), and are admitted again once
//!   the read is done ([`Group::let_in_resync`]).
//! * **End**: once every member's resync is done, a checkpoint flagged
//!   `RESYNC_END` closes the span; each member's covered chunks wait for
//!   the secondary to apply it.
//! * **Applied** (`APPLIED` at or past the span's end): the covered chunks
//!   are dirty no more (`WriteIntent::resynced`); the sweep clears them on
//!   the meta device a generation later.
//! * **Ahead again** (an overflow during the resync): the resync is
//!   dropped, its chunks stay dirty; the next `START` begins another,
//!   which the secondary merges with the span it holds open.

use super::{Group, Record, State};
use crate::dm::HeldList;
use crate::payload::Payload;
use crate::work::NoIo;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::command::start_flags;
use ferry_core::intent::Room;
use ferry_core::record::{Flags, RecordKind, MAX_WRITE_SECTORS};
use ferry_core::resync::{app_first, RateCap, ReadTicket, Resync, WriteTicket};
use ferry_core::spool::{self, Reserve};
use ferry_core::table::MAX_DEVICES;
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;
use kernel::sync::{Arc, UniqueArc};

/// A member's resync, on the heap (a list of them on the stack is a
/// pointer each).
type Boxed = KBox<Resync<KVVec<u64>>>;

/// Chunks one run of the resync work copies before it yields.
const BUDGET: usize = 64;

/// The group's resync, under the state lock.
pub(super) struct ResyncState {
    /// Counts the resyncs begun; a host write's ticket names its own.
    pub(super) gen: u64,
    /// The chunk taken and not yet read: the resync's generation, its
    /// device and ticket.
    reading: Option<(u64, u32, ReadTicket)>,
    /// The last interval of a span whose end is placed, until the
    /// secondary has applied it.
    pub(super) span_end: Option<u64>,
    /// Host writes held while a resync reads their chunk.
    pub(super) waiting: HeldList<Arc<Record>>,
    /// Chunks read and shipped, over every resync.
    pub(super) chunks_read: u64,
    /// Reads completed (or given up), over every resync: a write held for
    /// a read is let in again once this moved.
    pub(super) reads_done: u64,
    /// Spans whose end the secondary applied.
    pub(super) spans_applied: u64,
    /// The read rate cap (`resync_mbps`), made again when the cap changes.
    cap: RateCap,
}

impl ResyncState {
    pub(super) const fn new() -> Self {
        Self {
            gen: 0,
            reading: None,
            span_end: None,
            waiting: HeldList::new(),
            chunks_read: 0,
            reads_done: 0,
            spans_applied: 0,
            cap: RateCap::new(0, 0),
        }
    }
}

/// What a host write does, as its device's resync says.
pub(super) enum Check {
    /// No resync runs on the device.
    None,
    /// It goes, counted in the resync's open epoch.
    Go((u64, WriteTicket)),
    /// It touches a chunk being read: held.
    Wait,
}

/// What the resync work does next.
enum Next {
    /// Read this chunk of this device.
    Read(u32, ReadTicket),
    /// Nothing now: again in this many ms.
    Later(u32),
    /// Every chunk copied: end the span.
    End,
    /// No resync runs.
    Idle,
}

impl Group {
    /// The token a host write without a record carries to its completion
    /// ([`Self::untracked_done`]), so that its device counts it in flight.
    pub(crate) fn untracked(&self) -> Arc<Record> {
        self.untracked_token.clone()
    }

    /// Whether `rec` is the token of [`Self::untracked`].
    pub(crate) fn is_untracked(&self, rec: &Arc<Record>) -> bool {
        Arc::ptr_eq(rec, &self.untracked_token)
    }

    /// A host write of device `id` without a record completed.  Any
    /// context.
    pub(crate) fn untracked_done(&self, id: u32) {
        self.state.lock().resync_write_done(id, None, (0, 0), false);
    }

    /// `START` while `ahead`: a resync begins.  Process context.
    /// `EOPNOTSUPP` if a member's numbers are unknown (it came back from
    /// an unclean shutdown: primary crash recovery is not in this version)
    /// or `flags` asks for a full copy (not in this version); `ENOSPC` if the spool has no room for the
    /// span's marker now.  While replicating, nothing.
    #[inline(never)]
    pub(super) fn resync_start(&self, flags: u32) -> Result {
        if flags & !start_flags::KNOWN != 0 {
            return Err(EINVAL);
        }
        let full = flags & start_flags::FULL_RESYNC != 0;
        let initial = flags & start_flags::INITIAL != 0;
        if initial && !full {
            return Err(EINVAL);
        }
        let ctl = self.ctl.lock();
        // Each member's resync and covered set, allocated here (the lock
        // below may not sleep), on the heap (the lists are long).
        let mut sizes: KVec<Option<(u64, u32, bool)>> = KVec::with_capacity(MAX_DEVICES as usize, GFP_KERNEL)?;
        {
            let st = self.state.lock();
            if !st.must_begin(full) {
                return Ok(());
            }
            for (i, s) in st.streams.iter().enumerate() {
                let Some(s) = s else {
                    // Within the capacity: never allocates.
                    let _ = sizes.push(None, GFP_ATOMIC);
                    continue;
                };
                if s.unclean {
                    pr_warn!(
                        "ferry: group {}: device {} came back from an unclean shutdown; its numbers are unknown and a resync cannot continue its stream (not in this version)\n",
                        core::str::from_utf8(self.name()).unwrap_or("?"),
                        i
                    );
                    return Err(super::eopnotsupp());
                }
                // A chunk's copy takes spool room while the spool is under
                // half full (`app_first`): it must fit there.
                let chunk = (PAGE_SIZE as u64) << s.intent.chunk_shift().saturating_sub(3);
                if chunk.saturating_mul(4) > st.spool.cap() as u64 {
                    pr_warn!(
                        "ferry: group {}: a resync needs a spool of at least four chunks ({} KiB)\n",
                        core::str::from_utf8(self.name()).unwrap_or("?"),
                        chunk * 4 / 1024
                    );
                    return Err(EINVAL);
                }
                let _ = sizes.push(Some((s.intent.nbits(), s.intent.chunk_shift(), s.covered.is_empty())), GFP_ATOMIC);
            }
        }
        let mut storage: KVec<Option<Boxed>> = KVec::with_capacity(sizes.len(), GFP_KERNEL)?;
        let mut covered: KVec<Option<KVVec<u64>>> = KVec::with_capacity(sizes.len(), GFP_KERNEL)?;
        for sz in sizes.iter() {
            let Some((nbits, shift, need_covered)) = *sz else {
                storage.push(None, GFP_KERNEL)?;
                covered.push(None, GFP_KERNEL)?;
                continue;
            };
            let words = Resync::<KVVec<u64>>::storage_words(nbits).ok_or(ENOMEM)?;
            // Begun (`restart`) under the lock, with the dirty chunks then.
            let r = Resync::new(KVVec::from_elem(0u64, words, GFP_KERNEL)?, &[], nbits, shift).map_err(|_| EINVAL)?;
            storage.push(Some(KBox::new(r, GFP_KERNEL)?), GFP_KERNEL)?;
            covered.push(
                if need_covered { Some(KVVec::from_elem(0u64, words / 2, GFP_KERNEL)?) } else { None },
                GFP_KERNEL,
            )?;
        }
        let mut set = self.build_markers(&ctl, RecordKind::Checkpoint)?;
        // The initial copy says so: the secondary, whose devices held their
        // own content, has no consistent point until its span is applied.
        let begin = if initial {
            Flags::RESYNC_BEGIN | Flags::RESYNC_INITIAL
        } else {
            Flags::RESYNC_BEGIN
        };
        set.flag_all(begin);
        let now = kernel::time::Ktime::ktime_get().to_ns() as u64;
        let mut gone: [Option<Boxed>; MAX_DEVICES as usize] = [const { None }; MAX_DEVICES as usize];
        let mut st = self.state.lock();
        if !st.must_begin(full) {
            drop(st);
            return Ok(());
        }
        // A resync the group's going ahead stopped, not yet dropped by the
        // work: replaced (its chunks are still dirty).
        for (g, s) in gone.iter_mut().zip(st.streams.iter_mut()) {
            if let Some(s) = s {
                *g = s.resync.take();
            }
        }
        let was_ahead = st.spool.resync();
        st.resync.gen += 1;
        st.resync.reading = None;
        // An earlier span not applied yet: its chunks are dirty still, in
        // this one's set.
        st.resync.span_end = None;
        let mut made = true;
        for (i, s) in st.streams.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            if let Some(c) = covered.get_mut(i).and_then(Option::take) {
                s.covered = c;
            }
            s.covered.iter_mut().for_each(|w| *w = 0);
            let Some(mut r) = storage.get_mut(i).and_then(Option::take) else {
                made = false;
                continue;
            };
            if full {
                // The marks the meta device lacks are written by the kick
                // work, queued below.
                s.intent.mark_all();
            }
            r.restart(s.intent.dirty_words());
            r.writes_before(s.inflight);
            s.resync = Some(r);
        }
        let placed = made && st.place_markers(set, None, now).is_ok();
        if !placed {
            // Back to ahead if it was, as before the command (a full
            // copy's chunks stay dirty: a later `START` copies them); the
            // resyncs made go, outside this lock.
            if was_ahead {
                st.spool.go_ahead();
            }
            let mut made: [Option<Boxed>; MAX_DEVICES as usize] = [const { None }; MAX_DEVICES as usize];
            for (m, s) in made.iter_mut().zip(st.streams.iter_mut()) {
                if let Some(s) = s {
                    *m = s.resync.take();
                }
            }
            drop(st);
            drop(gone);
            drop(made);
            return Err(ENOSPC);
        }
        if full {
            self.kick_work(&st);
        }
        drop(st);
        drop(gone);
        drop(ctl);
        pr_info!(
            "ferry: group {}: resync begins ({})\n",
            core::str::from_utf8(self.name()).unwrap_or("?"),
            if full {
                "a full copy"
            } else if was_ahead {
                "leaving ahead"
            } else {
                "the chunks dirty while replicating"
            }
        );
        self.readable.wake_all();
        self.resync_work_now();
        Ok(())
    }

    /// The resync's read rate cap now, MiB/s (0: none).
    pub(crate) fn resync_mbps(&self) -> u32 {
        self.resync_mbps.load(Relaxed)
    }

    /// Sets the resync's read rate cap (the message `resync_mbps`); the
    /// resync work takes it at its next read.
    pub(crate) fn set_resync_mbps(&self, mbps: u32) {
        self.resync_mbps.store(mbps, Relaxed);
        pr_info!(
            "ferry: group {}: resync rate cap {} MiB/s{}\n",
            core::str::from_utf8(self.name()).unwrap_or("?"),
            mbps,
            if mbps == 0 { " (none)" } else { "" }
        );
        self.resync_work_now();
    }

    /// Whether the rate cap lets a read of `bytes` go now; if not, the ms
    /// to wait.  Under the state lock.
    fn paced(&self, st: &mut State, bytes: u64) -> Option<u32> {
        let bps = u64::from(self.resync_mbps.load(Relaxed)) << 20;
        let now = kernel::time::Ktime::ktime_get().to_ns() as u64;
        if st.resync.cap.bytes_per_sec() != bps {
            st.resync.cap = RateCap::new(bps, now);
        }
        if st.resync.cap.take(now, bytes) {
            return None;
        }
        let ms = st.resync.cap.wait_ns(bytes) / 1_000_000;
        Some(u32::try_from(ms).unwrap_or(1000).clamp(1, 1000))
    }

    /// Schedules the resync work now.
    pub(super) fn resync_work_now(&self) {
        let st = self.state.lock();
        if !self.dead.load(Relaxed) {
            self.resync_work.schedule(0);
        }
        drop(st);
    }

    fn resync_later(&self, ms: u32) {
        let st = self.state.lock();
        if !self.dead.load(Relaxed) {
            self.resync_work.schedule(kernel::time::msecs_to_jiffies(ms));
        }
        drop(st);
    }

    /// The resync work: copies chunks, ends the span, or drops the resync
    /// of a group that went ahead again.  Process context.
    #[inline(never)]
    pub(super) fn resync_step(&self) {
        let _noio = NoIo::enter();
        for _ in 0..BUDGET {
            let mut gone: [Option<Boxed>; MAX_DEVICES as usize] = [const { None }; MAX_DEVICES as usize];
            let next = {
                let mut st = self.state.lock();
                self.next_step(&mut st, &mut gone)
            };
            // Bitmaps are freed here, outside the spinlock.
            drop(gone);
            match next {
                Next::Idle => return,
                // A chunk just taken: the next turn issues it.
                Next::Later(0) => continue,
                Next::Later(ms) => {
                    self.resync_later(ms);
                    return;
                }
                Next::End => {
                    if !self.end_span() {
                        self.resync_later(10);
                    }
                    return;
                }
                Next::Read(id, t) => self.copy_chunk(id, t),
            }
        }
        self.resync_work_now();
    }

    /// Under the state lock: what the resync work does next.  A group
    /// that went ahead drops its resyncs into `gone`.
    fn next_step(&self, st: &mut State, gone: &mut [Option<Boxed>]) -> Next {
        if !st.spool.replicating() {
            let mut had = false;
            for (g, s) in gone.iter_mut().zip(st.streams.iter_mut()) {
                if let Some(s) = s {
                    had |= s.resync.is_some();
                    *g = s.resync.take();
                    s.covered.iter_mut().for_each(|w| *w = 0);
                }
            }
            st.resync.reading = None;
            st.resync.span_end = None;
            if had {
                pr_warn!(
                    "ferry: group {}: the resync stops (the group went ahead again); its chunks stay dirty\n",
                    core::str::from_utf8(self.name()).unwrap_or("?")
                );
            }
            // Writers held for a read go to the bitmap now.
            self.kick_work(st);
            return Next::Idle;
        }
        if let Some((_, id, t)) = st.resync.reading {
            let ok = st
                .stream(id)
                .and_then(|s| Some((s.resync.as_ref()?.may_issue(t), s.intent.chunk_shift())));
            return match ok {
                // A read goes once the rate cap lets it (`resync_mbps`).
                Some((true, shift)) => match self.paced(st, 512u64 << shift) {
                    None => Next::Read(id, t),
                    Some(ms) => Next::Later(ms),
                },
                Some((false, _)) => Next::Later(1),
                None => {
                    st.resync.reading = None;
                    Next::Later(0)
                }
            };
        }
        let gen = st.resync.gen;
        let mut any = false;
        let mut all_done = true;
        let room = app_first(st.spool.used(), st.spool.cap());
        for (i, s) in st.streams.iter_mut().enumerate() {
            let Some(r) = s.as_mut().and_then(|s| s.resync.as_mut()) else { continue };
            any = true;
            if r.done() {
                continue;
            }
            all_done = false;
            if !room {
                continue;
            }
            if let Some(t) = r.next_read() {
                // Issued by the step that finds it taken: once the host
                // writes before it completed and the rate cap lets it.
                st.resync.reading = Some((gen, i as u32, t));
                return Next::Later(0);
            }
        }
        match (any, all_done) {
            (false, _) => Next::Idle,
            (true, true) => Next::End,
            // Reads wait for room or for host writes of an old epoch.
            (true, false) => Next::Later(10),
        }
    }

    /// Reads chunk `t` of device `id` and makes it records flagged
    /// `RESYNC` (one per 1 MiB, the largest record), numbered under the
    /// state lock; a failed read or no room leaves the chunk for another
    /// read.
    #[inline(never)]
    fn copy_chunk(&self, id: u32, t: ReadTicket) {
        let ctl = self.ctl.lock();
        let gen = self.state.lock().resync.gen;
        let Some(dd) = ctl.data.get(id as usize).copied().flatten() else {
            drop(ctl);
            self.read_failed(id, t);
            return;
        };
        let (shift, role) = {
            let mut st = self.state.lock();
            match st.stream(id) {
                Some(s) => (s.intent.chunk_shift(), s.role()),
                None => return,
            }
        };
        let first = t.chunk << shift;
        let end = first + (1u64 << shift).min(dd.sectors.saturating_sub(first));
        let read = self.read_chunk(&dd, id, role, first, end);
        drop(ctl);
        let recs = match read {
            Ok(r) => r,
            Err(e) => {
                pr_warn!("ferry: device {}: resync read of chunk {} failed ({:?}); it is read again\n", id, t.chunk, e);
                self.read_failed(id, t);
                return;
            }
        };
        let charge: usize = recs.iter().map(|r| r.charge).sum();
        let now = kernel::time::Ktime::ktime_get().to_ns() as u64;
        let mut st = self.state.lock();
        if !st.spool.replicating() || st.resync.reading != Some((gen, id, t)) {
            drop(st);
            drop(recs);
            self.resync_work_now();
            return;
        }
        st.resync.reading = None;
        let r = st.spool.reserve(charge);
        if r != Reserve::Done {
            self.went_ahead(r == Reserve::Overflow, "spool full");
            if let Some(rs) = st.stream(id).and_then(|s| s.resync.as_mut()) {
                rs.read_done(t, false);
            }
            st.resync.reads_done += 1;
            drop(st);
            drop(recs);
            self.kick_work_locked();
            self.resync_later(10);
            return;
        }
        let mut ok = true;
        for mut rec in recs {
            let (at, nr, charge) = (rec.sector, u64::from(rec.nr_sectors), rec.charge);
            let Some(s) = st.stream(id) else {
                st.spool.release(charge);
                ok = false;
                continue;
            };
            // The chunk is dirty, so marked: this never waits.
            rec.wgen = s.intent.admit(at, nr, true, Room::Spool).gen;
            let wgen = rec.wgen;
            if st.sequence(rec.into(), now).is_err() {
                st.spool.release(charge);
                if let Some(s) = st.stream(id) {
                    s.intent.dropped(wgen, at, nr);
                }
                ok = false;
            }
        }
        if let Some(rs) = st.stream(id).and_then(|s| s.resync.as_mut()) {
            rs.read_done(t, ok);
        }
        st.resync.reads_done += 1;
        if ok {
            st.resync.chunks_read += 1;
        }
        // The writes held for the read go through admission again.
        if !st.resync.waiting.is_empty() {
            self.kick_work(&st);
        }
        drop(st);
        self.readable.wake_all();
    }

    /// Reads sectors `first..end` of device `id` into records flagged
    /// `RESYNC` of at most 1 MiB each (write-zeroes records, without
    /// payload, for the all-zero ones).  Process context, under `ctl`.
    fn read_chunk(
        &self,
        dd: &super::DataDev,
        id: u32,
        role: ferry_core::table::Role,
        first: u64,
        end: u64,
    ) -> Result<KVec<UniqueArc<Record>>> {
        let mut recs = KVec::new();
        let mut at = first;
        while at < end {
            let nr = (end - at).min(u64::from(MAX_WRITE_SECTORS));
            let payload = Payload::for_read((nr as usize) << 9, GFP_KERNEL)?;
            dd.dev.read_payload(dd.offset + at, &payload)?;
            let zero = payload.is_zero();
            let kind = if zero { RecordKind::WriteZeroes } else { RecordKind::Write };
            let mut rec = super::record_for(kind, id, role, at, nr as u32, false, false);
            rec.flag(Flags::RESYNC);
            if !zero {
                rec.payload = payload;
            }
            rec.charge = spool::charge(rec.payload.len(), PAGE_SIZE);
            recs.push(UniqueArc::new(rec, GFP_KERNEL)?, GFP_KERNEL)?;
            at += nr;
        }
        Ok(recs)
    }

    fn read_failed(&self, id: u32, t: ReadTicket) {
        let mut st = self.state.lock();
        let gen = st.resync.gen;
        if st.resync.reading == Some((gen, id, t)) {
            st.resync.reading = None;
            if let Some(r) = st.stream(id).and_then(|s| s.resync.as_mut()) {
                r.read_done(t, false);
            }
            st.resync.reads_done += 1;
        }
        if !st.resync.waiting.is_empty() {
            self.kick_work(&st);
        }
        drop(st);
        self.resync_later(100);
    }

    fn kick_work_locked(&self) {
        let st = self.state.lock();
        self.kick_work(&st);
    }

    /// Every chunk copied: the checkpoint flagged `RESYNC_END` closes the
    /// span, and each member's covered chunks wait for it to be applied.
    /// Returns false if the marker found no room (tried again later).
    #[inline(never)]
    fn end_span(&self) -> bool {
        let ctl = self.ctl.lock();
        let Ok(mut set) = self.build_markers(&ctl, RecordKind::Checkpoint) else {
            return false;
        };
        set.flag_all(Flags::RESYNC_END);
        let now = kernel::time::Ktime::ktime_get().to_ns() as u64;
        let mut gone: [Option<Boxed>; MAX_DEVICES as usize] = [const { None }; MAX_DEVICES as usize];
        let mut st = self.state.lock();
        let done = st.spool.replicating()
            && st.resync.reading.is_none()
            && st.streams.iter().flatten().all(|s| s.resync.as_ref().is_none_or(|r| r.done()));
        if !done {
            drop(st);
            self.resync_work_now();
            return true;
        }
        if let Err(r) = st.place_markers(set, None, now) {
            // Full: tried again.  Overflow: the group went ahead, and the
            // next step drops the resync.
            self.went_ahead(r == Reserve::Overflow, "spool full");
            return false;
        }
        st.resync.span_end = Some(st.order.epoch().saturating_sub(1));
        for (g, s) in gone.iter_mut().zip(st.streams.iter_mut()) {
            let Some(s) = s else { continue };
            if let Some(r) = s.resync.take() {
                let n = s.covered.len().min(r.covered().len());
                s.covered[..n].copy_from_slice(&r.covered()[..n]);
                *g = Some(r);
            }
        }
        let epoch = st.resync.span_end.unwrap_or(0);
        drop(st);
        drop(ctl);
        drop(gone);
        pr_info!(
            "ferry: group {}: resync copied; its span ends with interval {}, applied at the secondary next\n",
            core::str::from_utf8(self.name()).unwrap_or("?"),
            epoch
        );
        self.readable.wake_all();
        true
    }
}
