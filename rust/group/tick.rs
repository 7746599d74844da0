// SPDX-License-Identifier: GPL-2.0

//! The group's work items: the periodic tick closes the checkpoint
//! interval when it is due, sends the group ahead when writers held for
//! spool room waited `block_timeout` with none let in, and sweeps
//! acknowledged chunks off the meta devices; the kick lets the writers
//! held for room in, copies the payloads `map` could not (`admit.rs`),
//! then persists write intent for held writes (`intent.rs`).

use super::Group;
use crate::work::{WorkId, Worker};
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::table::MAX_DEVICES;

impl Worker for Group {
    fn run(&self, id: WorkId) {
        match id {
            WorkId::Tick => self.tick(),
            WorkId::Resync => self.resync_step(),
            WorkId::Kick => {
                self.let_in_resync();
                self.let_in();
                self.copy_in();
                self.persist();
            }
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
        let now = super::admit::now_ms();
        let busy = {
            let mut st = self.state.lock();
            // Nobody lets the held writers in (no reader, or nothing
            // acknowledged): they go to the bitmap (`Queue::expired`).
            let bound = u64::from(self.settings.block_timeout_s) * 1000;
            if st.queue.expired(now, bound) {
                let why = "writers waited block_timeout for spool room with none let in (is ferryd reading?)";
                self.enter_ahead(&mut st, why);
            }
            st.order.since_checkpoint() > 0
        };
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
}
