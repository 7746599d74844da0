// SPDX-License-Identifier: GPL-2.0

//! Acknowledgements (`ACK_LOG`, `ACK`, `SPOOLED`): the secondary has a
//! device's records up to a number; they leave the spool, their room is
//! freed, and their write intent is given back or kept until durable
//! (`ferry_core::stream::Stream::acknowledge`, `ferry_core::intent`).
//! The end of a write's path on the primary, but for its chunk's bit.

use super::{Record, State};
use ferry_core::stream::{Ack, Sequenced};
use kernel::alloc::flags;
use kernel::prelude::*;
use kernel::sync::Arc;

impl State {
    /// `ACK_LOG`, `ACK` or `SPOOLED` of device `device` up to `dev_seq`
    /// (`ferry_core::stream::Stream::acknowledge`), checked already
    /// (`ferry_core::batch`): the records it drops give their write
    /// intent back (`ACK`) or hold their chunks until acknowledged
    /// (`SPOOLED`), and their spool room is released (`Spool::release`,
    /// as the check released it on its copy).  The records go to
    /// `freed`, for the caller to free once it has dropped the lock.
    pub(super) fn acknowledge(&mut self, ack: Ack, device: u32, dev_seq: u64, freed: &mut KVec<Arc<Record>>) {
        let mut released = 0usize;
        if let Some(s) = self.stream(device) {
            let (q, intent) = (&mut s.q, &mut s.intent);
            let acked = q.acked();
            // Checked with the state the earlier commands of the write
            // left: cannot be refused.
            let _ = q.acknowledge(ack, dev_seq, |r| {
                released += r.charge;
                match ack {
                    Ack::Durable => intent.finish(r.wgen),
                    Ack::Spooled => {
                        let nr = u64::from(r.nr_sectors);
                        intent.spooled(r.wgen, r.sector, nr, r.dev_seq(), acked);
                    }
                    Ack::Log => {}
                }
                // If the list cannot grow, dropped here (kfree is fine).
                let _ = freed.push(r, flags::GFP_ATOMIC | flags::__GFP_NOWARN);
            });
            if ack == Ack::Durable {
                intent.ack(q.acked());
            }
        }
        self.spool.release(released);
    }

    /// Spool bytes the records of `device` from `dev_seq` `first` to
    /// `last` hold (what an acknowledgement dropping them frees).
    pub(super) fn held_charge(&self, device: u32, first: u64, last: u64) -> usize {
        let Some(Some(s)) = self.streams.get(device as usize) else {
            return 0;
        };
        s.q.records()
            .take_while(|r| r.dev_seq() <= last)
            .filter(|r| r.dev_seq() >= first)
            .map(|r| r.charge)
            .sum()
    }
}
