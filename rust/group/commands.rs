// SPDX-License-Identifier: GPL-2.0

//! Commands `ferryd` writes to the character device of a primary
//! (`ferry_core::command`): acknowledgements, `APPLIED`, marker
//! insertion, `START`/`STOP`.  A write applies all of its commands or
//! none (`ferry_core::batch`).  The way back of a write's path starts
//! here.

use super::markers::MarkerSet;
use super::{Group, Record, State};
use crate::chardev;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::batch::{self, Batch};
use ferry_core::command::{Command, Commands};
use ferry_core::record::RecordKind;
use ferry_core::spool::Reserve;
use ferry_core::stream::{Ack, AckState};
use ferry_core::table::MAX_DEVICES;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Records a write of acknowledgements has room to free after the lock
/// without growing its list (one page of pointers).
const FREED_RESERVE: usize = 512;

impl Group {
    /// `write(2)`: commands, all of them or none.
    pub(super) fn write_commands(&self, buf: &[u8]) -> Result {
        let r = self.write_inner(buf);
        if r.is_err() {
            self.rejected.fetch_add(1, Relaxed);
        }
        r
    }

    /// The whole buffer is checked in order, each command against the state
    /// the earlier ones leave (`ferry_core::batch::Batch::check`), then
    /// applied, under one hold of the group's lock: a refused write changes
    /// nothing and fails with the errno of its first refused command.
    /// What may fail or sleep is done before: the marker records are built
    /// (under `ctl`, which keeps the members until they are placed); the
    /// records acknowledged are freed after.
    fn write_inner(&self, buf: &[u8]) -> Result {
        if buf.is_empty() {
            return Err(EINVAL);
        }
        if self.is_secondary() {
            return self.secondary_write(buf);
        }
        if buf.len() > chardev::WRITE_MAX {
            return Err(EINVAL);
        }
        // `START` alone begins a resync when there is one to begin
        // (`resync.rs`: while ahead, a full copy, dirty chunks); among
        // other commands one that would is refused by the check below.
        let mut cmds = Commands::new(buf);
        if let (Some(Ok(Command::Start { flags })), None) = (cmds.next(), cmds.next()) {
            return self.resync_start(flags);
        }
        let markers = batch::markers(buf);
        let ctl = if markers > 0 { Some(self.ctl.lock()) } else { None };
        let mut sets = KVec::with_capacity(markers, GFP_KERNEL)?;
        if let Some(ctl) = &ctl {
            for c in Commands::new(buf).map_while(core::result::Result::ok) {
                let kind = match c {
                    Command::InsertCheckpoint => RecordKind::Checkpoint,
                    Command::InsertConsistencyPoint { .. } => RecordKind::ConsistencyPoint,
                    _ => continue,
                };
                sets.push(self.build_markers(ctl, kind)?, GFP_KERNEL)?;
            }
        }
        let mut acks: KVec<Option<AckState>> = KVec::with_capacity(MAX_DEVICES as usize, GFP_KERNEL)?;
        for _ in 0..MAX_DEVICES {
            acks.push(None, GFP_KERNEL)?;
        }
        let marker_charge = sets.first().map_or(0, MarkerSet::charge);
        let mut sets = sets.into_iter();
        // Room for the records a write of acknowledgements commonly frees,
        // taken here, not grown under the lock (it still grows, or frees
        // in place, past that).
        let mut freed: KVec<Arc<Record>> = KVec::with_capacity(FREED_RESERVE, GFP_KERNEL)?;
        let now = kernel::time::Ktime::ktime_get().to_ns() as u64;
        let mut st = self.state.lock();
        for (a, s) in acks.iter_mut().zip(st.streams.iter()) {
            *a = s.as_ref().map(|s| s.q.ack_state());
        }
        let mut b = Batch {
            streams: &mut acks,
            order: st.order,
            // A copy: the check reserves and releases on it by the spool's
            // own rules.
            spool: st.spool,
            // Every set has a record for each member.
            marker_charge,
        };
        let checked = b.check(buf, |d, first, last| st.held_charge(d, first, last));
        let mut wake = Wake::default();
        if checked.is_ok() {
            for c in Commands::new(buf).flatten() {
                self.apply(&mut st, c, &mut sets, now, &mut freed, &mut wake);
            }
        }
        drop(st);
        drop(sets);
        drop(ctl);
        drop(freed);
        if wake.space {
            self.room_freed();
        }
        if wake.readable {
            self.readable.wake_all();
        }
        checked
            .map(|_| ())
            .map_err(|rej| Error::from_errno(-rej.why.errno()))
    }

    /// Applies command `c`, checked with the state the earlier commands of
    /// its write left (`ferry_core::batch`): nothing here can fail.  A
    /// marker takes the next of `sets`, built for the markers of the write
    /// in their order.
    fn apply(
        &self,
        st: &mut State,
        c: Command,
        sets: &mut impl Iterator<Item = MarkerSet>,
        now: u64,
        freed: &mut KVec<Arc<Record>>,
        wake: &mut Wake,
    ) {
        if let Some((ack, device, dev_seq)) = Ack::of(&c) {
            st.acknowledge(ack, device, dev_seq, freed);
            wake.space |= ack != Ack::Log;
            wake.readable = true;
            return;
        }
        match c {
            Command::Applied { epoch } => {
                let _ = st.order.applied(epoch);
                st.resync_applied(epoch);
            }
            Command::InsertCheckpoint | Command::InsertConsistencyPoint { .. } => {
                let label = match c {
                    Command::InsertConsistencyPoint { label } => Some(label),
                    _ => None,
                };
                if let Some(set) = sets.next() {
                    // The check reserved its charge on a copy of the
                    // spool the earlier commands left as they left this
                    // one: `Done`.
                    if let Err(r) = st.place_markers(set, label, now) {
                        self.went_ahead(r == Reserve::Overflow, "spool full");
                    }
                    wake.readable = true;
                }
            }
            // Lets the writers held for room go: to the bitmap.
            Command::Stop => self.went_ahead(st.spool.stop(), "replication stopped"),
            // `START` while ahead among other commands, and the
            // secondary's commands, are refused by the check.
            Command::Start { .. } | Command::ApplyBegin { .. } | Command::ApplyEnd { .. } => {}
            Command::AckLog { .. } | Command::Ack { .. } | Command::Spooled { .. } => {}
        }
    }
}

/// Who to wake once the lock is dropped.
#[derive(Default)]
struct Wake {
    /// Spool room freed (writers may be held for it).
    space: bool,
    /// The reader.
    readable: bool,
}
