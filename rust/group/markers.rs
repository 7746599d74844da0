// SPDX-License-Identifier: GPL-2.0

//! Markers: checkpoint records (closing an interval the secondary applies
//! atomically) and consistency points (a labelled point of every stream),
//! inserted into every member's stream with consecutive group sequence
//! numbers.  They travel with the writes, through the gate to the reader.

use super::{Group, Record};
use ferry_core::record::{ConsistencyPayload, Label, RecordKind};
use ferry_core::spool::Reserve;
use ferry_core::table::{Role, MAX_DEVICES};
use kernel::prelude::*;
use kernel::sync::Arc;

impl Group {
    /// Inserts a marker record (checkpoint or consistency point) into every
    /// stream of the group, with consecutive group sequence numbers.
    /// Process context.  Returns the number of streams marked; `ENOSPC` if
    /// the spool had no room, `ENODEV` if the group has no device.
    pub(super) fn insert_markers(&self, kind: RecordKind, label: Option<Label>) -> Result<usize> {
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
        let need = recs.iter().map(|r| r.charge).sum();
        let mut st = self.state.lock();
        // Markers never wait: ahead, or no room under either policy, is
        // ENOSPC (and `overflow bitmap` goes ahead).
        match st.spool.reserve(need) {
            Reserve::Done => {}
            r => {
                self.went_ahead(r == Reserve::Overflow, "spool full");
                return Err(ENOSPC);
            }
        }
        let mut n = 0;
        for r in recs.into_iter() {
            let charge = r.charge;
            // Cannot fail: the device is a member (membership changes need
            // `ctl`) and its ring has room (the spool had).  A consistency
            // point starts its stream's next set (`cp_first`).
            if st.sequence(r, now).is_ok() {
                n += 1;
            } else {
                st.spool.release(charge);
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
}
