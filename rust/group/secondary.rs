// SPDX-License-Identifier: GPL-2.0

//! The secondary: host writes are refused, host reads wait while an
//! interval is applied, and `ferryd` applies whole checkpoint intervals
//! through the character device (`APPLY_BEGIN`, the records, `APPLY_END`)
//! under an apply mark on every member's meta device; `promote` makes the
//! group a primary.  The far end of a write's path.  What each step may do
//! is `ferry_core::checkpoint`'s; the kernel does the I/O.

use super::meta_io::{meta_read, meta_write, StreamMeta};
use super::{ebadmsg, eopnotsupp, Group, Record};
use crate::chardev;
use crate::digest::KernelDigest;
use crate::dm::HeldBio;
use crate::payload::Payload;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::checkpoint::{place, ApplyMark, ApplyState, CheckpointError, APPLY_MARK_LEN};
use ferry_core::command::{Command, CommandError, Commands};
use ferry_core::meta;
use ferry_core::record::{self, RecordKind};
use ferry_core::table::MAX_DEVICES;
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::uaccess::UserSliceWriter;

/// What a host read of a secondary does.
pub(crate) enum ReadGate {
    /// Go to the data device now, carrying the token.
    Go(Arc<Record>),
    /// Wait (deferred) until the interval being applied is complete.
    Hold(Arc<Record>),
}

/// Size of what `read(2)` returns on a secondary's character device: the
/// apply mark, the members as a bit mask (u64 LE), then each device id's
/// length in sectors (u64 LE, 0 for no member), so that `ferryd` can check
/// an interval's records before it begins to apply them.
const SECONDARY_STATE_LEN: usize = APPLY_MARK_LEN + 8 + 8 * MAX_DEVICES as usize;

/// The secondary side of a group.
impl Group {
    /// Whether the group is a secondary.
    pub(crate) fn is_secondary(&self) -> bool {
        self.secondary.load(Relaxed)
    }

    /// Whether `rec` is the token `map` attaches to a secondary's reads.
    pub(crate) fn is_read_token(&self, rec: &Arc<Record>) -> bool {
        Arc::ptr_eq(rec, &self.read_token)
    }

    /// `map` of a host read: it goes now, or waits for the interval being
    /// applied.  Never sleeps.
    pub(crate) fn secondary_read(&self) -> ReadGate {
        if self.state.lock().reads.read() {
            ReadGate::Go(self.read_token.clone())
        } else {
            ReadGate::Hold(self.read_token.clone())
        }
    }

    /// Takes a read `map` held; submits it at once if the interval ended
    /// meanwhile.
    pub(crate) fn hold_read(&self, bio: HeldBio<Arc<Record>>) {
        let mut st = self.state.lock();
        if st.reads.read() {
            drop(st);
            bio.submit();
        } else {
            st.held_reads.push(bio);
        }
    }

    /// A host read completed.
    pub(crate) fn read_done(&self) {
        let quiet = self.state.lock().reads.done();
        if quiet {
            self.quiet.wake_all();
        }
    }

    /// Reads the apply mark of a member's meta device
    /// (`ApplyMark::first_valid`: copy A, else copy B, else idle at 0).
    pub(super) fn read_mark(sm: &StreamMeta) -> Result<ApplyMark> {
        let d = KernelDigest;
        ApplyMark::first_valid(meta::APPLY_MARK_SECTORS.iter().map(|&sector| {
            meta_read(&sm.dev, &sm.page, sector, |b| ApplyMark::decode(b, &d).ok())
        }))
    }

    /// Writes `mark` durably to every member's meta device, copy A then
    /// copy B on each.
    fn write_marks(&self, mark: ApplyMark) -> Result {
        let d = KernelDigest;
        let mut enc = [0u8; APPLY_MARK_LEN];
        mark.encode(&d, &mut enc);
        let metas = self.meta.lock();
        for sm in metas.iter().flatten() {
            for sector in meta::APPLY_MARK_SECTORS {
                meta_write(&sm.dev, &sm.page, sector, |b| {
                    b.fill(0);
                    b[..APPLY_MARK_LEN].copy_from_slice(&enc);
                })?;
            }
        }
        Ok(())
    }

    /// `APPLY_BEGIN epoch`: the mark goes to every meta device, host reads
    /// are held, and the reads already submitted are waited for.  The
    /// intervals after the last applied one up to `epoch` are then applied
    /// as one (several whole intervals under one mark are as atomic as one,
    /// and pay the mark and flushes once).  Beginning what is already in
    /// progress (a redo after a crash) is allowed, and writes the mark
    /// again (`IntervalApply::begin_or_redo`).
    fn apply_begin(&self, epoch: u64) -> Result {
        let mut apply = self.apply.lock();
        // The state changes once the mark is durable.
        let mut next = *apply;
        let mark = next.begin_or_redo(epoch).map_err(|e| match e {
            CheckpointError::BadState => EBUSY,
            _ => ERANGE,
        })?;
        self.write_marks(mark)?;
        *apply = next;
        self.state.lock().reads.hold();
        self.quiet.wait(&|| self.state.lock().reads.quiet());
        Ok(())
    }

    /// `APPLY_END epoch`: the data devices are flushed, the mark is cleared
    /// on every meta device, and the held reads go.
    fn apply_end(&self, epoch: u64) -> Result {
        let mut apply = self.apply.lock();
        // The state changes once the idle mark is durable.
        let mut next = *apply;
        let mark = next.finish(epoch).map_err(|_| ERANGE)?;
        let devs = self.ctl.lock().data;
        // (Not in the deliberate-bug build `apply-flush`.)
        if !ferry_core::bugs::APPLY_NO_FLUSH {
            for dd in devs.iter().flatten() {
                dd.dev.flush()?;
            }
        }
        self.write_marks(mark)?;
        *apply = next;
        let mut held = {
            let mut st = self.state.lock();
            st.reads.end();
            st.held_reads.take()
        };
        while let Some(bio) = held.pop() {
            self.state.lock().reads.release();
            bio.submit();
        }
        Ok(())
    }

    /// One record of the intervals in progress, written (or done) on its
    /// device before the call returns.  Checked whole first: magic,
    /// checksums and signatures (`EBADMSG`), one record exactly, a member
    /// device and a range inside it (`EINVAL`), an epoch after the last
    /// applied one and at most the one in progress (`ERANGE`).
    fn apply_record(&self, buf: &[u8]) -> Result {
        let d = KernelDigest;
        let rec = record::decode_record(buf, &self.key, &d).map_err(|_| ebadmsg())?;
        let h = rec.header;
        if rec.len != buf.len() {
            return Err(EINVAL);
        }
        let apply = self.apply.lock();
        // `APPLY_BEGIN e` opens the intervals after the last applied one up
        // to `e`, applied as one.
        if !apply.admits(h.epoch) {
            return Err(ERANGE);
        }
        let dd = self
            .ctl
            .lock()
            .data
            .get(h.device_id as usize)
            .copied()
            .flatten()
            .ok_or(EINVAL)?;
        let nr = u64::from(h.nr_sectors);
        // The record's numbers are checked before any arithmetic with them;
        // flush and marker records place nothing (`checkpoint::place`).
        let at = place(h.kind, h.sector, h.nr_sectors, dd.sectors, dd.offset)
            .map_err(|_| EINVAL)?
            .unwrap_or(0);
        match h.kind {
            RecordKind::Write => {
                let p = Payload::from_slice(rec.payload).map_err(|_| ENOMEM)?;
                dd.dev.write_payload(at, &p)?;
            }
            RecordKind::Discard => dd.dev.discard(at, nr)?,
            RecordKind::WriteZeroes => dd.dev.zeroout(at, nr)?,
            RecordKind::Flush => dd.dev.flush()?,
            RecordKind::Checkpoint | RecordKind::ConsistencyPoint => {}
        }
        drop(apply);
        if let Some(c) = self.applied_records.get(h.device_id as usize) {
            c.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// `read(2)` of a secondary: its state ([`SECONDARY_STATE_LEN`] bytes).
    pub(super) fn secondary_state(&self, out: &mut UserSliceWriter, len: usize) -> Result<usize> {
        if len < SECONDARY_STATE_LEN {
            return Err(EINVAL);
        }
        let mark = self.apply.lock().mark();
        let mut b = [0u8; SECONDARY_STATE_LEN];
        let members = {
            let ctl = self.ctl.lock();
            for (i, dd) in ctl.data.iter().enumerate() {
                if let Some(dd) = dd {
                    let at = APPLY_MARK_LEN + 8 + 8 * i;
                    b[at..at + 8].copy_from_slice(&dd.sectors.to_le_bytes());
                }
            }
            ctl.users
                .iter()
                .enumerate()
                .filter(|(_, u)| **u > 0)
                .fold(0u64, |m, (i, _)| m | 1 << i)
        };
        let mut enc = [0u8; APPLY_MARK_LEN];
        mark.encode(&KernelDigest, &mut enc);
        b[..APPLY_MARK_LEN].copy_from_slice(&enc);
        b[APPLY_MARK_LEN..APPLY_MARK_LEN + 8].copy_from_slice(&members.to_le_bytes());
        out.write_slice(&b)?;
        Ok(SECONDARY_STATE_LEN)
    }

    /// `write(2)` of a secondary: one record, or commands.
    pub(super) fn secondary_write(&self, buf: &[u8]) -> Result {
        if buf.starts_with(&record::MAGIC) {
            return self.apply_record(buf);
        }
        if buf.len() > chardev::WRITE_MAX {
            return Err(EINVAL);
        }
        // One command a write: `APPLY_BEGIN` and `APPLY_END` write the
        // meta devices and may fail half-way through a batch, so a
        // secondary takes no batch (all of it or none would not hold).
        let mut cmds = Commands::new(buf);
        let c = cmds.next().ok_or(EINVAL)?.map_err(|_: CommandError| EINVAL)?;
        if cmds.next().is_some() {
            return Err(EINVAL);
        }
        match c {
            Command::ApplyBegin { epoch } => self.apply_begin(epoch),
            Command::ApplyEnd { epoch } => self.apply_end(epoch),
            _ => Err(eopnotsupp()),
        }
    }

    /// `dmsetup message <dev> 0 promote`: the secondary becomes a primary
    /// that numbers and spools its own writes and tracks them in its
    /// bitmap.  Refused (`EBUSY`) while an interval is in progress or
    /// `ferryd` holds the character device.
    pub(crate) fn promote(&self) -> Result {
        let apply = self.apply.lock();
        if !self.is_secondary() {
            return Err(EINVAL);
        }
        if let ApplyState::InProgress { epoch } = apply.state() {
            pr_warn!(
                "ferry: group {}: interval {} is being applied: let ferryd finish it before promote\n",
                core::str::from_utf8(self.name()).unwrap_or("?"),
                epoch
            );
            return Err(EBUSY);
        }
        let ctl = self.ctl.lock();
        if ctl.reader_open {
            pr_warn!(
                "ferry: group {}: /dev/ferry/{} is open: stop ferryd before promote\n",
                core::str::from_utf8(self.name()).unwrap_or("?"),
                core::str::from_utf8(self.name()).unwrap_or("?"),
            );
            return Err(EBUSY);
        }
        self.secondary.store(false, Relaxed);
        drop(ctl);
        pr_info!(
            "ferry: group {}: promoted to primary at interval {}\n",
            core::str::from_utf8(self.name()).unwrap_or("?"),
            apply.applied()
        );
        Ok(())
    }
}
