// SPDX-License-Identifier: GPL-2.0

//! The reader (`ferryd`) of `/dev/ferry/<group>`: one at a time; `read(2)`
//! takes whole framed records (header, payload, tail, signed with the
//! group's key) in group order through the gate.  A write leaves the
//! kernel here; it stays spooled until acknowledged (`acks.rs`).

use super::{Group, Record};
use crate::digest::KernelDigest;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::record::{self, HEADER_LEN, TAIL_LEN};
use kernel::prelude::*;
use kernel::uaccess::UserSliceWriter;

impl Group {
    /// A reader opens the device: one at a time.  Records read before and
    /// not acknowledged are offered again, from the first unacknowledged.
    pub(super) fn open_reader(&self) -> Result {
        let mut ctl = self.ctl.lock();
        if self.dead.load(Relaxed) {
            return Err(ENODEV);
        }
        if ctl.reader_open {
            return Err(EBUSY);
        }
        ctl.reader_open = true;
        let mut st = self.state.lock();
        for s in st.streams.iter_mut().flatten() {
            s.q.rewind();
        }
        Ok(())
    }

    /// The reader closed the device.
    pub(super) fn close_reader(&self) {
        self.ctl.lock().reader_open = false;
    }

    /// Whether a record can be read now (or the group is gone: end of
    /// stream).
    pub(super) fn readable(&self) -> bool {
        self.dead.load(Relaxed) || self.is_secondary() || self.state.lock().next_releasable().is_some()
    }

    /// `read(2)`: whole framed records, in group order through the gate,
    /// as many as fit in `len` bytes.  Blocks for the first one unless
    /// `nonblock`.  A buffer too small for the next record: `EINVAL`.
    pub(super) fn read_records(&self, out: &mut UserSliceWriter, len: usize, nonblock: bool) -> Result<usize> {
        if self.is_secondary() {
            return self.secondary_state(out, len);
        }
        loop {
            let ctl = self.ctl.lock();
            let done = self.read_locked(out, len)?;
            if done > 0 || self.dead.load(Relaxed) {
                return Ok(done);
            }
            if nonblock {
                return Err(EAGAIN);
            }
            // Sleep without the control lock, so that acknowledgements
            // (which open the gate) and markers can come in.
            drop(ctl);
            self.readable.wait_interruptible(&|| self.readable())?;
        }
    }

    /// Copies out the records that are releasable now; the caller holds
    /// `ctl`, so only this reader advances the rings' `sent`.
    fn read_locked(&self, out: &mut UserSliceWriter, len: usize) -> Result<usize> {
        let mut done = 0usize;
        loop {
            let next = {
                let mut st = self.state.lock();
                st.next_releasable()
                    .and_then(|i| st.streams.get(i)?.as_ref()?.q.next_unsent().cloned())
            };
            let Some(rec) = next else {
                return Ok(done);
            };
            let framed = rec.framed_len();
            if framed > len - done {
                return if done > 0 { Ok(done) } else { Err(EINVAL) };
            }
            if let Err(e) = self.copy_record(&rec, out) {
                return if done > 0 { Ok(done) } else { Err(e) };
            }
            done += framed;
            let mut st = self.state.lock();
            if let Some(s) = st.stream(rec.device_id) {
                // Acknowledgements only drop records already sent, so `rec`
                // is still the next unsent record of its ring.
                s.q.mark_sent();
            }
        }
    }

    fn copy_record(&self, rec: &Record, out: &mut UserSliceWriter) -> Result {
        let d = KernelDigest;
        let mut crc = ferry_core::digest::Crc32c::new();
        if rec.inline_len > 0 {
            crc.update(&d, &rec.inline[..rec.inline_len]);
        } else {
            rec.payload.for_each_chunk(|c| crc.update(&d, c));
        }
        let h = rec.header(self.id);
        let mut head = [0u8; HEADER_LEN];
        record::encode_header(&h, crc.value(), &self.key, &d, &mut head).map_err(|_| EINVAL)?;
        let mut tail = [0u8; TAIL_LEN];
        record::encode_tail(&head, &self.key, &d, &mut tail);
        out.write_slice(&head)?;
        if rec.inline_len > 0 {
            out.write_slice(&rec.inline[..rec.inline_len])?;
        } else {
            rec.payload.copy_to_user(out)?;
        }
        out.write_slice(&tail)
    }
}
