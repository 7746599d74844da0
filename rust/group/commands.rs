// SPDX-License-Identifier: GPL-2.0

//! Commands `ferryd` writes to the character device of a primary
//! (`ferry_core::command`): acknowledgements, `APPLIED`, marker
//! insertion, `START`/`STOP`.  The whole buffer is checked before any of
//! it acts.  The way back of a write's path starts here.

use super::{eopnotsupp, refused, Group, State};
use crate::chardev;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::command::{Command, CommandError, Commands};
use ferry_core::record::RecordKind;
use ferry_core::stream::Ack;
use kernel::prelude::*;

impl Group {
    /// `write(2)`: commands.  The whole buffer is checked before any of it
    /// acts, so a rejected write changes nothing.
    pub(super) fn write_commands(&self, buf: &[u8]) -> Result {
        let r = self.write_inner(buf);
        if r.is_err() {
            self.rejected.fetch_add(1, Relaxed);
        }
        r
    }

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
        {
            let st = self.state.lock();
            for c in Commands::new(buf) {
                let c = c.map_err(|_: CommandError| EINVAL)?;
                Self::check(&st, &c)?;
            }
        }
        for c in Commands::new(buf).flatten() {
            self.apply(c)?;
        }
        Ok(())
    }

    fn check(st: &State, c: &Command) -> Result {
        if let Some((ack, device, dev_seq)) = Ack::of(c) {
            let s = st
                .streams
                .get(device as usize)
                .and_then(Option::as_ref)
                .ok_or(EINVAL)?;
            return s.q.check(ack, dev_seq).map_err(refused);
        }
        match *c {
            Command::Applied { epoch } => st.order.check_applied(epoch).map_err(refused),
            // Leaving `ahead` needs a resync, which this version does not have.
            Command::Start { .. } => st.spool.start().map_err(|_| eopnotsupp()),
            Command::ApplyBegin { .. } | Command::ApplyEnd { .. } => Err(eopnotsupp()),
            _ => Ok(()),
        }
    }

    fn apply(&self, c: Command) -> Result {
        if let Some((ack, device, dev_seq)) = Ack::of(&c) {
            return self.acknowledge(ack, device, dev_seq);
        }
        match c {
            Command::Applied { epoch } => {
                self.state.lock().order.applied(epoch).map_err(refused)?;
            }
            Command::InsertCheckpoint => {
                self.checkpoint()?;
            }
            Command::InsertConsistencyPoint { label } => {
                self.insert_markers(RecordKind::ConsistencyPoint, Some(label))?;
            }
            Command::Start { .. } => {}
            Command::Stop => {
                let mut st = self.state.lock();
                self.went_ahead(st.spool.stop(), "replication stopped");
            }
            Command::AckLog { .. } | Command::Ack { .. } | Command::Spooled { .. } => {}
            Command::ApplyBegin { .. } | Command::ApplyEnd { .. } => return Err(eopnotsupp()),
        }
        Ok(())
    }
}
