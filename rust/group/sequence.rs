// SPDX-License-Identifier: GPL-2.0

//! Sequencing at completion: when a write completes, its record takes its
//! `dev_seq`, `group_seq` and timestamp under the group's lock
//! (`ferry_core::stream::GroupOrder::sequence`) and joins its device's
//! ring in the spool; a failed write takes no number and its chunks stay
//! marked.  Second step of a write's path, in interrupt context.

use super::{Group, Record, State};
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::record::RecordKind;
use kernel::sync::Arc;

impl State {
    /// Numbers `r` (now complete) and appends it to its device's ring
    /// (`GroupOrder::sequence`).
    pub(super) fn sequence(&mut self, r: Arc<Record>, now_ns: u64) -> core::result::Result<(), Arc<Record>> {
        let Some(Some(s)) = self.streams.get_mut(r.device_id as usize) else {
            return Err(r);
        };
        self.order
            .sequence(&mut s.q, now_ns, r, |r, n| r.set_numbers(n))
            .map(|_| ())
    }
}

impl Group {
    /// The write of `rec` completed (`ok`: successfully).  Interrupt
    /// context.
    pub(crate) fn complete(&self, rec: Arc<Record>, ok: bool) {
        let now = kernel::time::Ktime::ktime_get().to_ns() as u64;
        let mut st = self.state.lock();
        let (charge, wgen, ticket) = (rec.charge, rec.wgen, rec.ticket);
        let (id, sector, nr) = (rec.device_id, rec.sector, u64::from(rec.nr_sectors));
        // Its record carries the range's content (a resync need not copy
        // whole chunks it covers: `ferry_core::resync`, rule 5).
        let content = matches!(rec.record_kind(), RecordKind::Write | RecordKind::WriteZeroes);
        let failed = if !ok {
            // The data may have partly landed: the chunk is unknown to the
            // secondary from now on.
            true
        } else if !st.spool.replicating() {
            // Ahead: the write is tracked in the bitmap only.
            true
        } else {
            match st.sequence(rec, now) {
                Ok(()) => false,
                Err(_r) => true,
            }
        };
        if failed {
            st.spool.release(charge);
            if let Some(s) = st.stream(id) {
                s.intent.dropped(wgen, sector, nr);
            }
            st.resync_dirtied(id, sector, nr);
        }
        st.resync_write_done(id, ticket, (sector, nr), content && !failed);
        if failed && !st.queue.is_empty() {
            // Writers are held for room: the kick lets them in.
            self.kick_work(&st);
        }
        drop(st);
        if failed {
            self.dropped.fetch_add(1, Relaxed);
        } else {
            self.readable.wake_all();
        }
    }
}
