// SPDX-License-Identifier: GPL-2.0

//! The spool: each member's ring of records ([`Stream`]) and the state the
//! group's spinlock guards ([`State`]: rings, group order, the spool's
//! accounting and replication mode, held bios).  A sequenced record waits
//! here until the reader takes it and the secondary acknowledges it.  What
//! a record charges, what a full spool does and when the group is `ahead`
//! are `ferry_core::spool`'s ([`Spool`]); the group warns when it goes
//! ahead and wakes the writers waiting for room ([`Group::enter_ahead`]).

use super::{Group, Record};
use crate::dm::HeldList;
use ferry_core::checkpoint::ReadHold;
use ferry_core::gate::DeviceClass;
use ferry_core::intent::WriteIntent;
use ferry_core::spool::Spool;
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
    pub(super) held: HeldList,
    /// Secondary: whether host reads go or wait for the interval being
    /// applied, and how many are in flight (`ferry_core::checkpoint`).
    pub(super) reads: ReadHold,
    /// Secondary: host reads held until the interval is applied.
    pub(super) held_reads: HeldList,
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
    /// `Spool::go_ahead` and its kin): warns, giving `why`, and wakes the
    /// writers waiting for room, which go to the bitmap now
    /// (`Spool::has_room`).  Any context; the state lock may be held.
    pub(super) fn went_ahead(&self, entered: bool, why: &str) {
        if entered {
            self.space.wake_all();
            pr_warn!(
                "ferry: group {}: {}; tracking writes in the bitmap (mode ahead, resync needed)\n",
                core::str::from_utf8(self.name()).unwrap_or("?"),
                why
            );
        }
    }

    /// The group goes ahead (`Spool::go_ahead`) for `why`.
    pub(super) fn enter_ahead(&self, st: &mut State, why: &str) {
        self.went_ahead(st.spool.go_ahead(), why);
    }
}
