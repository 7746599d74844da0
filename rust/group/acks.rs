// SPDX-License-Identifier: GPL-2.0

//! Acknowledgements (`ACK_LOG`, `ACK`, `SPOOLED`): the secondary has a
//! device's records up to a number; they leave the spool, their room is
//! freed, and their write intent is given back or kept until durable
//! (`ferry_core::stream::Stream::acknowledge`, `ferry_core::intent`).
//! The end of a write's path on the primary, but for its chunk's bit.

use super::{refused, Group, Record};
use ferry_core::stream::{Ack, Sequenced};
use kernel::alloc::flags;
use kernel::prelude::*;
use kernel::sync::Arc;

impl Group {
    /// `ACK_LOG`, `ACK` or `SPOOLED` of device `device` up to `dev_seq`
    /// (`ferry_core::stream::Stream::acknowledge`): the records it drops
    /// give their write intent back (`ACK`) or hold their chunks until
    /// acknowledged (`SPOOLED`), and their spool room is freed.
    pub(super) fn acknowledge(&self, ack: Ack, device: u32, dev_seq: u64) -> Result {
        let mut freed: KVec<Arc<Record>> = KVec::new();
        let r = {
            let mut st = self.state.lock();
            let mut released = 0usize;
            // (A device that left since the check: nothing to do.)
            let r = match st.stream(device) {
                None => Ok(()),
                Some(s) => {
                    let (q, intent) = (&mut s.q, &mut s.intent);
                    let acked = q.acked();
                    let r = q.acknowledge(ack, dev_seq, |r| {
                        released += r.charge;
                        match ack {
                            Ack::Durable => intent.finish(r.wgen),
                            Ack::Spooled => {
                                let nr = u64::from(r.nr_sectors);
                                intent.spooled(r.wgen, r.sector, nr, r.dev_seq(), acked);
                            }
                            Ack::Log => {}
                        }
                        // Freed after the lock is dropped; if the list cannot
                        // grow, dropped here (kfree is fine).
                        let _ = freed.push(r, flags::GFP_ATOMIC | flags::__GFP_NOWARN);
                    });
                    if ack == Ack::Durable {
                        intent.ack(q.acked());
                    }
                    r.map_err(refused)
                }
            };
            st.spool.release(released);
            r
        };
        drop(freed);
        if ack != Ack::Log {
            self.space.wake_all();
        }
        self.readable.wake_all();
        r
    }
}
