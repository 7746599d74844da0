// SPDX-License-Identifier: GPL-2.0

//! Admission, in `map`: a write-like bio of a member gets spool room for
//! its record (`ferry_core::spool`) and write intent for its chunks
//! (`ferry_core::intent`), or the group goes ahead and tracks it in the
//! bitmap only, or (`overflow block`) the writer waits for room; writes whose
//! intent must reach the meta device first are held for the kick work
//! (`intent.rs`).  The first step of a write's path in the group.

use super::{Group, Record, State};
use crate::dm::HeldBio;
use crate::payload::Payload;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::intent::Gen;
use ferry_core::spool::{self, Reserve};
use kernel::alloc::flags;
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;
use kernel::sync::Arc;

struct Admit {
    reserve: Reserve,
    defer: bool,
    wgen: Gen,
}

impl Group {
    /// Admits a write of device `id` to `[sector, +nr)` (nr 0: no data
    /// range): spool room for a record of `charge` bytes
    /// (`Spool::reserve`), then write intent for what the spool did
    /// (`WriteIntent::admit`: `first` is the writer's first pass; a writer
    /// that slept for room registers intent again on the pass that takes
    /// its write).  Never sleeps.
    fn admit(&self, id: u32, sector: u64, nr: u64, charge: usize, first: bool) -> Admit {
        let mut st = self.state.lock();
        let State { streams, spool, .. } = &mut *st;
        let Some(Some(s)) = streams.get_mut(id as usize) else {
            return Admit {
                reserve: Reserve::Ahead,
                defer: false,
                wgen: Gen::NONE,
            };
        };
        let reserve = spool.reserve(charge);
        if first {
            s.written += 1;
        }
        let a = s.intent.admit(sector, nr, first, reserve.room());
        self.went_ahead(reserve == Reserve::Overflow, "spool full");
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
        rec.charge = spool::charge(payload_bytes, PAGE_SIZE);
        let mut first = true;
        let mut defer = false;
        loop {
            let a = self.admit(id, sector, nr, rec.charge, first);
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
                self.went_ahead(st.spool.lost(charge), "out of memory for the spool");
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

    /// Takes a write that waits for its write intent; the kick work
    /// submits it once the bits are on the meta device.  Any context.
    pub(crate) fn hold(&self, bio: HeldBio) {
        self.state.lock().held.push(bio);
        self.kick.schedule(0);
    }

    /// What a writer told `Reserve::Full` waits for (`Spool::has_room`),
    /// or the group's end.
    fn has_room(&self, charge: usize) -> bool {
        self.dead.load(Relaxed) || self.state.lock().spool.has_room(charge)
    }
}
