// SPDX-License-Identifier: GPL-2.0

//! The spool: each member's ring of records ([`Stream`]) and the state the
//! group's spinlock guards ([`State`]: rings, group order, the spool's
//! accounting and replication mode, held bios).  A sequenced record waits
//! here until the reader takes it and the secondary acknowledges it.  What
//! a record charges, what a full spool does, the queue of writers held for
//! room and when the group is `ahead` are `ferry_core::spool`'s
//! ([`Spool`], [`Queue`]); the group warns when it goes ahead and lets the
//! held writers go to the bitmap ([`Group::enter_ahead`]).

use super::{Group, Record};
use core::sync::atomic::Ordering::Relaxed;
use crate::dm::HeldList;
use ferry_core::checkpoint::ReadHold;
use ferry_core::gate::DeviceClass;
use ferry_core::intent::WriteIntent;
use ferry_core::resync::Resync;
use ferry_core::spool::{Queue, Spool};
use ferry_core::stream::{self, GroupOrder};
use ferry_core::table::Role;
use kernel::prelude::*;
use kernel::sync::Arc;

/// One device of the group, as the spool sees it.
pub(super) struct Stream {
    /// Its records and numbers (`ferry_core::stream`).
    pub(super) q: stream::Stream<KVVec<Option<Arc<Record>>>>,
    /// Writes mapped (bios), for status.
    pub(super) written: u64,
    /// Write intent: which chunks the meta device marks, and when they
    /// may be cleared (`ferry_core::intent`).
    pub(super) intent: WriteIntent<KVVec<u64>>,
    /// Host writes admitted and not completed (a resync's reads wait for
    /// those in flight when it begins: `resync.rs`).
    pub(super) inflight: u64,
    /// The device's resync, while its copy runs (`ferry_core::resync`);
    /// boxed, so that the work's lists of them stay small on the stack.
    pub(super) resync: Option<KBox<Resync<KVVec<u64>>>>,
    /// The chunks the last span covered, until the secondary applied it
    /// (empty until a first resync).
    pub(super) covered: KVVec<u64>,
    /// It came back from an unclean shutdown: its numbers are unknown.
    pub(super) unclean: bool,
}

impl Stream {
    pub(super) fn role(&self) -> Role {
        match self.q.class() {
            DeviceClass::Log => Role::Log,
            DeviceClass::Data => Role::Data,
        }
    }
}

pub(super) struct State {
    pub(super) streams: KVec<Option<Stream>>,
    /// The group order, the clock, the intervals and consistency points.
    pub(super) order: GroupOrder,
    /// Bytes the records charge, the cap, the mode
    /// (`ferry_core::spool`).
    pub(super) spool: Spool,
    /// Writes waiting for their chunks' bits to reach the meta device.
    pub(super) held: HeldList<Arc<Record>>,
    /// The writers held for spool room (`overflow block`), in order, and
    /// the rule they wait by (`ferry_core::spool::Queue`).
    pub(super) queue: Queue,
    pub(super) waiting: HeldList<Arc<Record>>,
    /// Writes whose payload `map` could not copy without sleeping, for
    /// the kick work to copy (`Group::copy_in`).
    pub(super) copying: HeldList<Arc<Record>>,
    /// Secondary: whether host reads go or wait for the interval being
    /// applied, and how many are in flight (`ferry_core::checkpoint`).
    pub(super) reads: ReadHold,
    /// Secondary: host reads held until the interval is applied.
    pub(super) held_reads: HeldList<Arc<Record>>,
    /// The resync (`resync.rs`).
    pub(super) resync: super::resync::ResyncState,
}

impl State {
    pub(super) fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.get_mut(id as usize)?.as_mut()
    }
}

pub(super) fn class_of(role: Role) -> DeviceClass {
    match role {
        Role::Log => DeviceClass::Log,
        Role::Data => DeviceClass::Data,
    }
}

impl Group {
    /// The spool says the group just went ahead (`entered`, from
    /// `Spool::go_ahead` and its kin, under the state lock): warns, giving
    /// `why`, and kicks the work that lets the writers held for room go,
    /// to the bitmap now (`Spool::has_room`).  Any context.
    pub(super) fn went_ahead(&self, entered: bool, why: &str) {
        if entered {
            if !self.dead.load(Relaxed) {
                self.kick.schedule(0);
            }
            pr_warn!(
                "ferry: group {}: {}; tracking writes in the bitmap (mode ahead, resync needed)\n",
                core::str::from_utf8(self.name()).unwrap_or("?"),
                why
            );
        }
    }

    /// Schedules the kick work now, unless the group has ended.  Under the
    /// state lock (`st`), which `shutdown` takes to end the group, so that
    /// no kick is queued after it cancelled the work.
    pub(super) fn kick_work(&self, _st: &State) {
        if !self.dead.load(Relaxed) {
            self.kick.schedule(0);
        }
    }

    /// The group goes ahead (`Spool::go_ahead`) for `why`.
    pub(super) fn enter_ahead(&self, st: &mut State, why: &str) {
        self.went_ahead(st.spool.go_ahead(), why);
    }
}
