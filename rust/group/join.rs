// SPDX-License-Identifier: GPL-2.0

//! Membership: a device joins its group when its target is constructed
//! (its stream, its bitmap and superblock loaded, the numbers it left
//! with), and leaves when the target is destroyed (a last sweep, and a
//! superblock that says whether it left cleanly).

use super::meta_io::StreamMeta;
use super::spool::{class_of, Stream};
use super::{DataDev, Group};
use crate::dm::BdevRef;
use core::sync::atomic::Ordering::Relaxed;
use ferry_core::checkpoint::IntervalApply;
use ferry_core::intent::{storage_words, WriteIntent, WORDS_PER_PAGE};
use ferry_core::meta::{sb_flags, Numbers, Superblock};
use ferry_core::stream::{self, Left};
use ferry_core::table::Role;
use kernel::page::{Page, PAGE_SIZE};
use kernel::prelude::*;

/// A device joining its group.
pub(crate) struct Member {
    /// `device_id`.
    pub(crate) id: u32,
    /// The data device's number (a reload of the same device shares its
    /// stream).
    pub(crate) devt: u32,
    pub(crate) role: Role,
    /// Length of the target, sectors.
    pub(crate) sectors: u64,
    /// log2 of the chunk size in sectors.
    pub(crate) chunk_shift: u32,
    pub(crate) meta: BdevRef,
    /// The data device and the target's offset in it (the secondary
    /// writes there).
    pub(crate) data: BdevRef,
    pub(crate) data_offset: u64,
    /// The table says `mode secondary`.
    pub(crate) secondary: bool,
}

/// Why a device could not join a group.
pub(crate) enum JoinError {
    /// `spool_mb`, `overflow`, `checkpoint_ms` or `block_timeout` differ
    /// from the group's.
    Settings,
    /// Another data device has this `device_id` in the group.
    IdTaken,
    /// A reload changed the device's role.
    Role,
    /// Out of memory for the stream.
    NoMemory,
    /// The group could not be created (its character device, memory).
    Create(Error),
    /// The meta device could not be read or written.
    MetaIo,
    /// The meta device's superblock is another device's.
    MetaMismatch,
    /// The meta device's superblock checks but holds numbers out of range.
    MetaCorrupt,
    /// A reload of a loaded device changes its meta device, length or
    /// chunk size.
    Reload,
    /// `mode primary` for a secondary group, or the reverse.
    Site,
}

impl Group {
    /// Adds device `id` (data device `devt`) of `role`, covering `sectors`
    /// sectors in chunks of `1 << chunk_shift` sectors.  A second target
    /// for the same device (a table reload) shares its stream.
    pub(super) fn join(&self, m: &Member) -> core::result::Result<(), JoinError> {
        let Member {
            id,
            devt,
            role,
            sectors,
            chunk_shift,
            meta: meta_dev,
            data,
            data_offset,
            secondary,
        } = *m;
        let mut apply = self.apply.lock();
        let mut ctl = self.ctl.lock();
        if secondary != self.is_secondary() {
            return Err(JoinError::Site);
        }
        let i = id as usize;
        if ctl.users[i] > 0 {
            if ctl.devt[i] != devt {
                return Err(JoinError::IdTaken);
            }
            let st = self.state.lock();
            let Some(s) = st.streams.get(i).and_then(Option::as_ref) else {
                return Err(JoinError::Role);
            };
            if s.role() != role {
                return Err(JoinError::Role);
            }
            // The stream's bitmap and meta device stay those of the loaded
            // table: a reload may not change them.
            let same_chunks = s.intent.chunk_shift() == chunk_shift;
            drop(st);
            let same_len = ctl.data.get(i).copied().flatten().is_some_and(|d| d.sectors == sectors);
            let same_meta = self
                .meta
                .lock()
                .get(i)
                .and_then(Option::as_ref)
                .is_some_and(|sm| sm.dev.same(&meta_dev));
            if !(same_chunks && same_len && same_meta) {
                return Err(JoinError::Reload);
            }
            ctl.users[i] += 1;
            if let Some(slot) = ctl.data.get_mut(i) {
                *slot = Some(DataDev {
                    dev: data,
                    offset: data_offset,
                    sectors,
                });
            }
            return Ok(());
        }
        fn nm<E>(_: E) -> JoinError {
            JoinError::NoMemory
        }
        let cap = self.state.lock().spool.slots(PAGE_SIZE);
        let ring = KVVec::from_elem(None, cap, GFP_KERNEL).map_err(nm)?;
        let bits = sectors.div_ceil(1u64 << chunk_shift);
        let words = storage_words(bits).ok_or(JoinError::NoMemory)?;
        let words = KVVec::from_elem(0u64, words, GFP_KERNEL).map_err(nm)?;
        let mut intent = WriteIntent::new(words, bits, chunk_shift).map_err(nm)?;
        let pages = intent.pages();
        let changed = KVVec::from_elem(false, pages, GFP_KERNEL).map_err(nm)?;
        let mut sm = StreamMeta {
            dev: meta_dev,
            page: Page::alloc_page(GFP_KERNEL).map_err(|_| JoinError::NoMemory)?,
            sb: Superblock {
                flags: 0,
                uuid: [0; 16],
                generation: 0,
                group_id: self.id,
                device_id: id,
                chunk_kb: 1u32 << (chunk_shift - 1),
                len_sectors: sectors,
                acked_dev_seq: 0,
                numbers: Numbers::default(),
            },
            changed,
            wsnap: KVec::from_elem(0u64, WORDS_PER_PAGE, GFP_KERNEL).map_err(nm)?,
        };
        let (loaded, left) = self.load_meta(&mut sm, &mut intent, pages)?;
        if secondary {
            // An interval in progress on any member is in progress for the
            // group (it is redone); otherwise the highest applied.
            let mark = Self::read_mark(&sm).map_err(|_| JoinError::MetaIo)?;
            *apply = IntervalApply::recover(apply.mark().merge(mark)).0;
            if !apply.may_read() {
                self.state.lock().reads.hold();
            }
        }
        drop(apply);
        // Where the device's stream stands: a device that left its group
        // cleanly continues its numbers (and raises the group's to its
        // own), so that the secondary never sees a number twice.
        let (from, cp_first) = if secondary { (0, 1) } else { left.start() };
        {
            let mut st = self.state.lock();
            match left {
                Left::Clean(_, n) if !secondary => {
                    st.order.continue_from(&n, kernel::time::Ktime::ktime_get().to_ns() as u64);
                }
                Left::Unclean if !secondary => {
                    let msg = "the device did not leave its group cleanly (a crash?): the numbers its stream used are unknown";
                    self.enter_ahead(&mut st, msg);
                }
                _ => {}
            }
            if loaded > 0 {
                let msg = "the meta device names chunks the secondary may miss (unclean shutdown or overflow)";
                self.enter_ahead(&mut st, msg);
            }
        }
        let stream = Stream {
            q: stream::Stream::new(ring, class_of(role), from, cp_first),
            written: 0,
            intent,
            inflight: 0,
            resync: None,
            covered: KVVec::new(),
            unclean: !secondary && matches!(left, Left::Unclean),
        };
        if let Some(slot) = self.meta.lock().get_mut(i) {
            *slot = Some(sm);
        }
        {
            let mut st = self.state.lock();
            if let Some(slot) = st.streams.get_mut(i) {
                *slot = Some(stream);
            }
        }
        ctl.users[i] = 1;
        ctl.devt[i] = devt;
        if let Some(slot) = ctl.data.get_mut(i) {
            *slot = Some(DataDev {
                dev: data,
                offset: data_offset,
                sectors,
            });
        }
        self.applied_records[i].store(0, Relaxed);
        self.members.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Removes one user of device `id`; the last one frees its stream and
    /// the spool its records held.  Returns whether the group is now empty.
    pub(super) fn leave(&self, id: u32) -> bool {
        let mut ctl = self.ctl.lock();
        let i = id as usize;
        ctl.users[i] = ctl.users[i].saturating_sub(1);
        if ctl.users[i] > 0 {
            return false;
        }
        if let Some(slot) = ctl.data.get_mut(i) {
            *slot = None;
        }
        // Last chance to clear acknowledged chunks, then the superblock
        // says how the device was left.
        {
            let mut metas = self.meta.lock();
            self.sweep_stream(&mut metas, i, true);
            let secondary = self.is_secondary();
            let (ahead, acked, clean) = {
                let st = self.state.lock();
                let ahead = !st.spool.replicating();
                let (acked, numbers) = st
                    .streams
                    .get(i)
                    .and_then(Option::as_ref)
                    .map_or((0, None), |s| s.q.leaving(&st.order));
                (ahead, acked, numbers.filter(|_| !secondary && !ahead))
            };
            if let Some(Some(sm)) = metas.get_mut(i) {
                sm.sb.acked_dev_seq = sm.sb.acked_dev_seq.max(acked);
                if ahead {
                    sm.sb.flags |= sb_flags::AHEAD;
                }
                // Every record acknowledged: the next join continues from
                // these numbers.  (Otherwise the records not acknowledged
                // are lost with the spool, and the group comes back ahead.)
                if let Some(numbers) = clean {
                    sm.sb.flags |= sb_flags::CLEAN;
                    sm.sb.numbers = numbers;
                }
                if sm.write_sb().is_err() {
                    pr_err!("ferry: device {}: cannot write the superblock at release\n", id);
                }
            }
            if let Some(slot) = metas.get_mut(i) {
                *slot = None;
            }
        }
        let stream = {
            let mut st = self.state.lock();
            let s = st.streams.get_mut(i).and_then(Option::take);
            if let Some(s) = &s {
                let held: usize = s.q.records().map(|r| r.charge).sum();
                st.spool.release(held);
            }
            s
        };
        // Records (and their pages) are freed here, outside the spinlock.
        drop(stream);
        self.room_freed();
        self.readable.wake_all();
        self.members.fetch_sub(1, Relaxed) == 1
    }
}
