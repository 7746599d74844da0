// SPDX-License-Identifier: GPL-2.0

//! What `dmsetup status` reports of a member: a primary's mode, counters
//! and spool use; a secondary's apply state.

use super::Group;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::checkpoint::ApplyState;

/// What `dmsetup status` reports of a primary device.
pub(crate) struct DeviceStatus {
    /// `replicating`, `ahead`, or `resyncing` (a resync's copy runs, or
    /// its span waits to be applied at the secondary).
    pub(crate) mode: &'static str,
    /// Chunks of the device's resync left to copy, and in it.
    pub(crate) resync_left: u64,
    pub(crate) resync_total: u64,
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

impl Group {
    /// Status of device `id` and of the group, for `dmsetup status`.
    pub(crate) fn status(&self, id: u32) -> DeviceStatus {
        let mut st = self.state.lock();
        let (spool, epoch) = (st.spool, st.order.epoch());
        let mode = match spool.mode() {
            _ if st.resyncing() => "resyncing",
            m => m.name(),
        };
        let (resync_left, resync_total) = st.resync_progress(id);
        let s = st.stream(id);
        DeviceStatus {
            mode,
            resync_left,
            resync_total,
            written: s.as_ref().map_or(0, |s| s.written),
            completed: s.as_ref().map_or(0, |s| s.q.last_dev_seq()),
            shipped: s.as_ref().map_or(0, |s| s.q.shipped()),
            acked: s.as_ref().map_or(0, |s| s.q.acked()),
            dirty: s.map_or(0, |s| s.intent.dirty_count()),
            spool_used: spool.used(),
            spool_cap: spool.cap(),
            epoch,
            dropped: self.dropped.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
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
