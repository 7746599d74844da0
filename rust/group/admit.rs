// SPDX-License-Identifier: GPL-2.0

//! Admission, in `map`: a write-like bio of a member gets spool room for
//! its record and write intent for its chunks (`ferry_core::intent`), or
//! the group goes ahead and tracks it in the bitmap only; writes whose
//! intent must reach the meta device first are held for the kick work
//! (`intent.rs`).  The first step of a write's path in the group.

use super::{Group, Record, RepMode};
use crate::dm::HeldBio;
use crate::payload::Payload;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::intent::{Gen, Room};
use ferry_core::table::Overflow;
use kernel::alloc::flags;
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;
use kernel::sync::Arc;

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

impl Group {
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
}
