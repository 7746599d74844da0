// SPDX-License-Identifier: GPL-2.0

//! Admission, in `map`: a write-like bio of a member gets spool room for
//! its record (`ferry_core::spool`) and write intent for its chunks
//! (`ferry_core::intent`), or the group goes ahead and tracks it in the
//! bitmap only; writes whose intent must reach the meta device first are
//! held for the kick work (`intent.rs`).  Nothing here sleeps: under
//! `overflow block` a write the spool has no room for is held too, in the
//! group's FIFO queue (`ferry_core::spool::Queue`), and the kick work lets
//! it in when room frees, or sends it to the bitmap once the group goes
//! ahead ([`Group::let_in`]).  The first step of a write's path in the
//! group.

use super::resync::Check;
use super::{Group, Record, State};
use crate::dm::HeldBio;
use crate::payload::Payload;
use crate::work::NoIo;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::intent::Gen;
use ferry_core::record::RecordKind;
use ferry_core::spool::{self, Reserve};
use ferry_core::stream::Sequenced;
use kernel::alloc::flags;
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;
use kernel::sync::Arc;

struct Admit {
    reserve: Reserve,
    defer: bool,
    wgen: Gen,
}

/// What `map` does with a write-like bio once admitted.
pub(crate) enum Admitted {
    /// It goes now, with its record (`None`: tracked in the bitmap only).
    Go(Option<Arc<Record>>),
    /// It waits for its chunks' write intent ([`Group::hold`]).
    Intent(Option<Arc<Record>>),
    /// It waits for spool room (`overflow block`; [`Group::hold`] queues
    /// it): its record holds no payload and nothing reserved yet.
    Room(Arc<Record>),
    /// Its room is reserved, but its payload could not be copied without
    /// sleeping: [`Group::hold`] queues it for the kick work, which copies
    /// it (reclaiming memory if it must) and then submits it, or holds it
    /// for its write intent.
    Copy(Arc<Record>),
    /// It touches a chunk a resync is reading: nothing admitted;
    /// [`Group::hold`] keeps it until the read is done, and it goes
    /// through admission again (`resync.rs`).
    Resync(Arc<Record>),
}

/// A record's own allocation in `map` (a few hundred bytes): it may not
/// sleep, and may dip into the atomic reserves, so that a write whose
/// payload must wait for memory can still be held rather than sent to the
/// bitmap.  (Its payload, up to 1 MiB, never does: `GFP_NOWAIT`, then the
/// kick work.)
fn record_gfp() -> kernel::alloc::Flags {
    flags::GFP_ATOMIC | flags::__GFP_NOWARN
}

/// Milliseconds of the monotonic clock.
pub(super) fn now_ms() -> u64 {
    (kernel::time::Ktime::ktime_get().to_ns() / 1_000_000) as u64
}

impl Group {
    /// Admits a write of device `id` to `[sector, +nr)` (nr 0: no data
    /// range): spool room for a record of `charge` bytes (a new writer by
    /// `Queue::reserve`, behind any held one; the `head` of the queue by
    /// `Spool::reserve`), then write intent for what the spool did
    /// (`WriteIntent::admit`: `first` is the writer's first pass; a writer
    /// held for room registers intent again on the pass that takes its
    /// write).  Never sleeps; called with the state lock.
    fn admit(&self, st: &mut State, id: u32, at: (u64, u64), charge: usize, first: bool, head: bool) -> Admit {
        let State {
            streams,
            spool,
            queue,
            ..
        } = st;
        let Some(Some(s)) = streams.get_mut(id as usize) else {
            return Admit {
                reserve: Reserve::Ahead,
                defer: false,
                wgen: Gen::NONE,
            };
        };
        let reserve = if head {
            spool.reserve(charge)
        } else {
            queue.reserve(spool, charge)
        };
        if first {
            s.written += 1;
        }
        let a = s.intent.admit(at.0, at.1, first, reserve.room());
        self.went_ahead(reserve == Reserve::Overflow, "spool full");
        Admit {
            reserve,
            defer: a.defer,
            wgen: a.gen,
        }
    }

    /// `map` of a write-like bio of device `id`: builds its record, or
    /// marks its chunks dirty when the spool cannot take it, or (`overflow
    /// block`, no room) holds it for room.
    ///
    /// `fill` copies the bio's data into a payload without sleeping; when
    /// it finds no memory, the copy is left to the kick work
    /// ([`Admitted::Copy`]).  `nowait`: the bio may not wait.  `Err(EAGAIN)` for a `REQ_NOWAIT` bio that would have to
    /// wait, for write intent or for room.
    pub(crate) fn prepare(
        &self,
        mut rec: Record,
        payload_bytes: usize,
        nowait: bool,
        fill: impl FnOnce() -> core::result::Result<Payload, kernel::alloc::AllocError>,
    ) -> Result<Admitted> {
        let id = rec.device_id;
        let at = (rec.sector, u64::from(rec.nr_sectors));
        rec.charge = spool::charge(payload_bytes, PAGE_SIZE);
        let a = {
            let mut st = self.state.lock();
            match st.resync_check(id, at) {
                Check::None => {}
                Check::Go(t) => rec.ticket = Some(t),
                Check::Wait if nowait => return Err(EAGAIN),
                Check::Wait => {
                    rec.resync_wait = Some(st.resync.reads_done);
                    drop(st);
                    return match Arc::new(rec, record_gfp()) {
                        Ok(r) => Ok(Admitted::Resync(r)),
                        Err(_) => {
                            // It cannot be held: the group goes ahead (the
                            // resync stops) and the write to the bitmap.
                            let mut st = self.state.lock();
                            self.enter_ahead(&mut st, "out of memory to hold a write while a resync reads its chunk");
                            let a = self.admit(&mut st, id, at, 0, true, false);
                            if let Some(s) = st.stream(id) {
                                s.inflight += 1;
                            }
                            self.dropped.fetch_add(1, Relaxed);
                            Ok(if a.defer { Admitted::Intent(None) } else { Admitted::Go(None) })
                        }
                    };
                }
            }
            let a = self.admit(&mut st, id, at, rec.charge, true, false);
            // In flight from here until it completes (or is refused below).
            if let Some(s) = st.stream(id) {
                s.inflight += 1;
            }
            a
        };
        let defer = a.defer;
        if defer && nowait {
            // Nothing reserved yet unless the spool said Done: undo it.
            if a.reserve == Reserve::Done {
                self.unadmit(id, rec.charge, a.wgen);
            }
            self.state.lock().resync_refused(id, rec.ticket);
            return Err(EAGAIN);
        }
        match a.reserve {
            Reserve::Done => rec.wgen = a.wgen,
            Reserve::Ahead | Reserve::Overflow => {
                self.dropped.fetch_add(1, Relaxed);
                return Ok(if defer { Admitted::Intent(None) } else { Admitted::Go(None) });
            }
            Reserve::Full if nowait => {
                self.state.lock().resync_refused(id, rec.ticket);
                return Err(EAGAIN);
            }
            Reserve::Full => {
                // Held for room: nothing reserved until it is let in.
                rec.queued = core::mem::replace(&mut rec.charge, 0);
                return match Arc::new(rec, record_gfp()) {
                    Ok(r) => Ok(Admitted::Room(r)),
                    Err(_) => {
                        // It cannot be held: to the bitmap (a second pass).
                        let mut st = self.state.lock();
                        self.went_ahead(st.spool.lost(0), "out of memory to hold a writer for spool room");
                        self.prepare_lost(&mut st, id, at, defer)
                    }
                };
            }
        }
        if payload_bytes > 0 {
            match fill() {
                Ok(p) => rec.payload = p,
                // No memory without sleeping: the kick work copies it, where
                // it may reclaim; a `REQ_NOWAIT` bio may not wait for that.
                Err(_) if nowait => {
                    self.unadmit(id, rec.charge, rec.wgen);
                    self.state.lock().resync_refused(id, rec.ticket);
                    return Err(EAGAIN);
                }
                Err(_) => {
                    rec.copy = true;
                    rec.copy_since = now_ms();
                    let (charge, wgen) = (rec.charge, rec.wgen);
                    return match Arc::new(rec, record_gfp()) {
                        Ok(r) => Ok(Admitted::Copy(r)),
                        Err(_) => {
                            let mut st = self.state.lock();
                            self.went_ahead(st.spool.lost(charge), "out of memory to hold a write for its copy");
                            if let Some(s) = st.stream(id) {
                                s.intent.dropped(wgen, at.0, at.1);
                            }
                            drop(st);
                            self.dropped.fetch_add(1, Relaxed);
                            Ok(if defer { Admitted::Intent(None) } else { Admitted::Go(None) })
                        }
                    };
                }
            }
        }
        let (charge, wgen) = (rec.charge, rec.wgen);
        match Arc::new(rec, record_gfp()) {
            Ok(r) if defer => Ok(Admitted::Intent(Some(r))),
            Ok(r) => Ok(Admitted::Go(Some(r))),
            Err(_) => {
                let mut st = self.state.lock();
                self.went_ahead(st.spool.lost(charge), "out of memory for the spool");
                if let Some(s) = st.stream(id) {
                    s.intent.dropped(wgen, at.0, at.1);
                }
                drop(st);
                self.dropped.fetch_add(1, Relaxed);
                Ok(if defer { Admitted::Intent(None) } else { Admitted::Go(None) })
            }
        }
    }

    /// A write that could not be held for room, the group now ahead: its
    /// pass to the bitmap.
    fn prepare_lost(&self, st: &mut State, id: u32, at: (u64, u64), defer: bool) -> Result<Admitted> {
        let a = self.admit(st, id, at, 0, false, false);
        self.dropped.fetch_add(1, Relaxed);
        Ok(if defer || a.defer { Admitted::Intent(None) } else { Admitted::Go(None) })
    }

    fn unadmit(&self, id: u32, charge: usize, wgen: Gen) {
        let mut st = self.state.lock();
        st.spool.release(charge);
        if let Some(s) = st.stream(id) {
            s.intent.finish(wgen);
        }
    }

    fn prepare_failed(&self, rec: &Record, why: &str) -> Option<Arc<Record>> {
        let mut st = self.state.lock();
        self.went_ahead(st.spool.lost(rec.charge), why);
        if let Some(s) = st.stream(rec.device_id) {
            s.intent.dropped(rec.wgen, rec.sector, u64::from(rec.nr_sectors));
        }
        drop(st);
        self.dropped.fetch_add(1, Relaxed);
        None
    }

    /// Takes a write `map` deferred: one held for room joins the queue
    /// (the kick lets it in when room frees, or at once if room came back
    /// meanwhile); one that waits for its write intent is held for the
    /// kick, which submits it once the bits are on the meta device.  While
    /// a member is being suspended no writer may wait for room
    /// (device-mapper waits for the held bios): the group goes ahead and
    /// they go to the bitmap.  Any context.
    pub(crate) fn hold(&self, bio: HeldBio<Arc<Record>>) {
        let (want, copy, wait) = bio.io().map_or((0, false, None), |r| (r.queued, r.copy, r.resync_wait));
        let now = now_ms();
        let mut st = self.state.lock();
        if let Some(seen) = wait {
            st.resync.waiting.push(bio);
            // The read it waits for may have completed meanwhile.
            if st.resync.reads_done == seen && st.spool.replicating() {
                return;
            }
        } else if copy {
            st.copying.push(bio);
        } else if want == 0 {
            st.held.push(bio);
        } else {
            st.queue.hold(now);
            st.waiting.push(bio);
            if self.suspending.load(Relaxed) > 0 {
                let why = "a device of the group is suspended while a writer waits for spool room";
                self.enter_ahead(&mut st, why);
            }
            if !st.spool.has_room(want) {
                return;
            }
        }
        self.kick_work(&st);
    }

    /// Room came back in the spool: the kick lets the held writers in.
    /// Any context; takes the state lock.
    pub(super) fn room_freed(&self) {
        let st = self.state.lock();
        if !st.queue.is_empty() {
            self.kick_work(&st);
        }
    }

    /// The kick work's first step: lets the writers held for room in, in
    /// order, while the spool has room for the one at the head (every one,
    /// to the bitmap, once the group is ahead).  A writer let in is
    /// admitted again (its write intent registered on this pass), its
    /// payload copied, and it goes, or waits for its write intent with the
    /// others (`held`, written by [`Self::persist`] next).  Process context.
    pub(super) fn let_in(&self) {
        // The payload copy may sleep to reclaim memory, never on I/O.
        let _noio = NoIo::enter();
        loop {
            let mut st = self.state.lock();
            let Some(mut bio) = st.waiting.pop() else {
                return;
            };
            let Some((id, at, want)) = bio.io().map(|r| (r.device_id, (r.sector, u64::from(r.nr_sectors)), r.queued)) else {
                // Only writers with a record are queued: nothing to admit.
                st.queue.let_in(now_ms());
                drop(st);
                bio.submit();
                continue;
            };
            let a = self.admit(&mut st, id, at, want, false, true);
            if a.reserve == Reserve::Full {
                st.waiting.push_front(bio);
                return;
            }
            st.queue.let_in(now_ms());
            drop(st);
            let rec = bio.take_io().and_then(Arc::into_unique_or_drop);
            let rec = match (a.reserve, rec) {
                (Reserve::Done, Some(mut r)) => {
                    let m = Pin::get_mut(r.as_mut());
                    m.charge = m.queued;
                    m.queued = 0;
                    m.wgen = a.wgen;
                    let ok = m.kind() != RecordKind::Write || {
                        match Payload::copy_from_bio(&bio, GFP_KERNEL) {
                            Ok(p) => {
                                m.payload = p;
                                true
                            }
                            Err(_) => false,
                        }
                    };
                    if !ok {
                        // No memory even here: the copy is retried
                        // (`copy_in`), its room kept.
                        m.copy = true;
                        m.copy_since = now_ms();
                        bio.attach(Some(Arc::from(r)));
                        let mut st = self.state.lock();
                        st.copying.push(bio);
                        self.kick_work(&st);
                        continue;
                    }
                    Some(Arc::from(r))
                }
                (Reserve::Done, None) => {
                    // Cannot happen (the bio owns its record): give the
                    // room back, the chunks dirty.
                    let mut st = self.state.lock();
                    self.went_ahead(st.spool.lost(want), "a held write lost its record");
                    if let Some(s) = st.stream(id) {
                        s.intent.dropped(a.wgen, at.0, at.1);
                    }
                    self.dropped.fetch_add(1, Relaxed);
                    None
                }
                _ => {
                    self.dropped.fetch_add(1, Relaxed);
                    None
                }
            };
            bio.attach(rec.or_else(|| Some(self.untracked())));
            if a.defer {
                self.state.lock().held.push(bio);
            } else {
                bio.submit();
            }
        }
    }

    /// The kick work's first step: host writes held while a resync read
    /// their chunk go through admission again, as `map` would have
    /// admitted them (held again if another read holds them).  Process
    /// context.
    #[inline(never)]
    pub(super) fn let_in_resync(&self) {
        let _noio = NoIo::enter();
        let mut held = self.state.lock().resync.waiting.take();
        while let Some(mut bio) = held.pop() {
            let Some(old) = bio.take_io() else {
                bio.submit();
                continue;
            };
            let rec = old.renewed();
            drop(old);
            let bytes = if rec.record_kind() == RecordKind::Write {
                crate::payload::Segments::bytes(&bio)
            } else {
                0
            };
            match self.prepare(rec, bytes, false, || Payload::copy_from_bio(&bio, GFP_KERNEL)) {
                Ok(Admitted::Go(r)) => {
                    bio.attach(r.or_else(|| Some(self.untracked())));
                    bio.submit();
                }
                Ok(Admitted::Intent(r)) => {
                    bio.attach(r.or_else(|| Some(self.untracked())));
                    self.hold(bio);
                }
                Ok(Admitted::Room(r) | Admitted::Copy(r) | Admitted::Resync(r)) => {
                    bio.attach(Some(r));
                    self.hold(bio);
                }
                Err(_) => bio.fail(),
            }
        }
    }
}

impl Group {
    /// A member is being suspended or removed (its `presuspend`):
    /// device-mapper waits for its bios, held ones included, so until it
    /// resumes no writer may wait for room.  Those held go to the bitmap,
    /// the group going ahead as under `overflow bitmap`, and so does a
    /// writer the spool has no room for meanwhile ([`Self::hold`]).
    /// Process context.
    pub(crate) fn suspend_begin(&self) {
        // Counted before the lock is taken: a writer queued after this
        // lock section sees the count under its own ([`Self::hold`]).
        self.suspending.fetch_add(1, Relaxed);
        let mut st = self.state.lock();
        if !st.queue.is_empty() {
            let why = "a device of the group is suspended while writers wait for spool room";
            self.enter_ahead(&mut st, why);
        }
    }

    /// The member suspended by [`Self::suspend_begin`] resumes (or goes).
    pub(crate) fn suspend_end(&self) {
        self.suspending.fetch_sub(1, Relaxed);
    }

    /// The kick work's second step: copies the payloads `map` could not
    /// copy without sleeping (`Admitted::Copy`), reclaiming memory if it
    /// must but never waiting on I/O; each write then waits with the
    /// others for its write intent ([`Self::persist`] submits them next).
    /// Still no memory: the copy is tried again a few milliseconds later
    /// (the secondary's acknowledgements and writeback free memory), the
    /// writer held meanwhile, until `block_timeout` has passed since its
    /// first try, or a member is being suspended: then its room goes back,
    /// its chunks dirty, the group ahead.  Process context.
    pub(super) fn copy_in(&self) {
        let _noio = NoIo::enter();
        loop {
            let Some(mut bio) = self.state.lock().copying.pop() else {
                return;
            };
            let charge = bio.io().map_or(0, |r| r.charge);
            let rec = match bio.take_io().and_then(Arc::into_unique_or_drop) {
                Some(mut r) => {
                    let m = Pin::get_mut(r.as_mut());
                    match Payload::copy_from_bio(&bio, GFP_KERNEL) {
                        Ok(p) => {
                            m.copy = false;
                            m.payload = p;
                            Some(Arc::from(r))
                        }
                        Err(_) => {
                            let bound = u64::from(self.settings.block_timeout_s) * 1000;
                            let late = now_ms().saturating_sub(m.copy_since) >= bound;
                            if !late && self.suspending.load(Relaxed) == 0 {
                                bio.attach(Some(Arc::from(r)));
                                let mut st = self.state.lock();
                                st.copying.push_front(bio);
                                if !self.dead.load(Relaxed) {
                                    // About 10 ms.
                                    self.kick.schedule(kernel::time::msecs_to_jiffies(10));
                                }
                                return;
                            }
                            m.copy = false;
                            self.prepare_failed(m, "no memory for the spool within block_timeout")
                        }
                    }
                }
                None => {
                    // Cannot happen (the bio owns its record): its room
                    // back, the group ahead.
                    let mut st = self.state.lock();
                    self.went_ahead(st.spool.lost(charge), "a held write lost its record");
                    self.dropped.fetch_add(1, Relaxed);
                    None
                }
            };
            bio.attach(rec.or_else(|| Some(self.untracked())));
            self.state.lock().held.push(bio);
        }
    }
}
