// SPDX-License-Identifier: GPL-2.0

//! Markers: checkpoint records (closing an interval the secondary applies
//! atomically) and consistency points (a labelled point of every stream),
//! inserted into every member's stream with consecutive group sequence
//! numbers.  They travel with the writes, through the gate to the reader.

use super::{Ctl, Group, Record, State};
use ferry_core::record::{ConsistencyPayload, Label, RecordKind};
use ferry_core::spool::Reserve;
use ferry_core::table::{Role, MAX_DEVICES};
use kernel::prelude::*;
use kernel::sync::{Arc, UniqueArc};

/// The records of one marker, one for each member, built before the
/// group's spinlock is taken ([`Group::build_markers`]) and numbered under
/// it ([`State::place_markers`]).
pub(super) struct MarkerSet {
    kind: RecordKind,
    pub(super) recs: KVec<UniqueArc<Record>>,
}

impl MarkerSet {
    /// Spool bytes the marker takes.
    pub(super) fn charge(&self) -> usize {
        self.recs.iter().map(|r| r.charge).sum()
    }
}

impl Group {
    /// Builds the records of a marker of `kind` for every member.  Process
    /// context, under `ctl` (which keeps the members what they are until
    /// the records are placed).  No member: an empty set.
    pub(super) fn build_markers(&self, _ctl: &Ctl, kind: RecordKind) -> Result<MarkerSet> {
        let mut members = [None::<Role>; MAX_DEVICES as usize];
        {
            let st = self.state.lock();
            for (m, s) in members.iter_mut().zip(st.streams.iter()) {
                *m = s.as_ref().map(|s| s.role());
            }
        }
        let mut recs = KVec::with_capacity(MAX_DEVICES as usize, GFP_KERNEL)?;
        for (id, m) in members.iter().enumerate() {
            let Some(role) = *m else { continue };
            recs.push(UniqueArc::new(Record::new(kind, id as u32, role), GFP_KERNEL)?, GFP_KERNEL)?;
        }
        Ok(MarkerSet { kind, recs })
    }

    /// Inserts a marker record (checkpoint or consistency point) into every
    /// stream of the group, with consecutive group sequence numbers.
    /// Process context.  Returns the number of streams marked; `ENOSPC` if
    /// the spool had no room, `ENODEV` if the group has no device.
    pub(super) fn insert_markers(&self, kind: RecordKind, label: Option<Label>) -> Result<usize> {
        let ctl = self.ctl.lock();
        let set = self.build_markers(&ctl, kind)?;
        if set.recs.is_empty() {
            return Err(ENODEV);
        }
        let now = kernel::time::Ktime::ktime_get().to_ns() as u64;
        let mut st = self.state.lock();
        // Markers never wait: ahead, or no room under either policy, is
        // ENOSPC (and `overflow bitmap` goes ahead).
        let n = match st.place_markers(set, label, now) {
            Ok(n) => n,
            Err(r) => {
                self.went_ahead(r == Reserve::Overflow, "spool full");
                return Err(ENOSPC);
            }
        };
        drop(st);
        drop(ctl);
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

impl State {
    /// Reserves the spool room of `set` (`Spool::reserve`), then numbers
    /// its records into their streams, with consecutive group sequence
    /// numbers, and closes the interval (checkpoint) or counts the point
    /// (consistency point, labelled `label`).  The caller holds `ctl`
    /// since the set was built.  Returns the number of streams marked, or
    /// what the spool said if not `Done` (nothing placed; `Overflow`: the
    /// group went ahead, for the caller to warn and wake).  Once the
    /// room is reserved nothing here can fail.
    pub(super) fn place_markers(
        &mut self,
        set: MarkerSet,
        label: Option<Label>,
        now: u64,
    ) -> Result<usize, Reserve> {
        match self.spool.reserve(set.charge()) {
            Reserve::Done => {}
            r => return Err(r),
        }
        let cp_id = self.order.next_cp_id();
        let mut n = 0;
        for mut r in set.recs.into_iter() {
            if let (RecordKind::ConsistencyPoint, Some(label)) = (set.kind, label) {
                let cp = ConsistencyPayload {
                    cp_id,
                    // The stream's set starts here; an earlier point of
                    // the same write moved it.
                    first_dev_seq: self.stream(r.device_id).map_or(1, |s| s.q.cp_first()),
                    label,
                };
                // The buffer holds the longest label: cannot fail.
                let rec = &mut *r;
                rec.inline_len = cp.encode(&mut rec.inline).unwrap_or(0);
            }
            let r: Arc<Record> = r.into();
            let charge = r.charge;
            // Cannot fail: the device is a member (membership changes need
            // `ctl`) and its ring has room (the spool had).  A consistency
            // point starts its stream's next set (`cp_first`).
            if self.sequence(r, now).is_ok() {
                n += 1;
            } else {
                self.spool.release(charge);
            }
        }
        match set.kind {
            RecordKind::Checkpoint => self.order.checkpoint_inserted(),
            RecordKind::ConsistencyPoint => self.order.consistency_point_inserted(cp_id),
            _ => {}
        }
        Ok(n)
    }
}

impl MarkerSet {
    /// Flags every record of the set (a checkpoint's `RESYNC_BEGIN` or
    /// `RESYNC_END`).
    pub(super) fn flag_all(&mut self, bit: u8) {
        for r in self.recs.iter_mut() {
            r.flag(bit);
        }
    }
}
