// SPDX-License-Identifier: GPL-2.0

//! The meta device of a member: its superblock (`ferry_core::meta`, two
//! slots), its write-intent bitmap pages, and (on a secondary) its apply
//! marks, read and written a page at a time from process context.  A
//! joining device's superblock and bitmap are loaded (or formatted) here.

use super::join::JoinError;
use super::Group;
use crate::digest::KernelDigest;
use crate::dm::BdevRef;
use crate::payload::with_mapped;
use ferry_core::intent::WriteIntent;
use ferry_core::meta::{self, sb_flags, Superblock};
use ferry_core::stream::Left;
use kernel::page::{Page, PAGE_SIZE};
use kernel::prelude::*;

/// The meta device of a stream, for process-context I/O under the group's
/// `meta` mutex (which serialises every write to a stream's bitmap, so a
/// page on disk is always a snapshot of the bits in memory).
pub(super) struct StreamMeta {
    pub(super) dev: BdevRef,
    /// The page every meta I/O of the stream goes through (no page-sized
    /// buffer on the kernel stack).
    pub(super) page: Page,
    pub(super) sb: Superblock,
    /// Bitmap pages to write (cleared bits) after a sweep.
    pub(super) changed: KVVec<bool>,
    /// The wanted bits of the page being written.
    pub(super) wsnap: KVec<u64>,
}

/// Reads 4 KiB at `sector` into `page` and runs `f` on them.
pub(super) fn meta_read<R>(dev: &BdevRef, page: &Page, sector: u64, f: impl FnOnce(&[u8; PAGE_SIZE]) -> R) -> Result<R> {
    dev.page_io(sector, page, false)?;
    Ok(with_mapped(page, |b| f(b)))
}

/// Fills `page` with `f` and writes it durably at `sector`.
pub(super) fn meta_write(dev: &BdevRef, page: &Page, sector: u64, f: impl FnOnce(&mut [u8; PAGE_SIZE])) -> Result {
    with_mapped(page, f);
    dev.page_io(sector, page, true)
}

impl StreamMeta {
    pub(super) fn write_sb(&mut self) -> Result {
        self.sb.generation += 1;
        let sb = self.sb;
        let mut r = Ok(());
        meta_write(&self.dev, &self.page, meta::slot_sector(sb.slot()), |b| {
            b.fill(0);
            r = sb.encode(&KernelDigest, b).map_err(|_| EINVAL);
        })?;
        r
    }
}

impl Group {
    /// Reads the superblock and the bitmap of a joining device into
    /// `intent`, or formats a meta device that has no valid superblock.
    /// Returns the number of chunks the bitmap names and how the device
    /// left its group last time.
    pub(super) fn load_meta(
        &self,
        sm: &mut StreamMeta,
        intent: &mut WriteIntent<KVVec<u64>>,
        pages: usize,
    ) -> core::result::Result<(u64, Left), JoinError> {
        let io = |_| JoinError::MetaIo;
        let d = KernelDigest;
        let slot = |k| meta_read(&sm.dev, &sm.page, meta::slot_sector(k), |b| Superblock::decode(&d, b));
        let (a, b) = (slot(0).map_err(io)?, slot(1).map_err(io)?);
        let current = Superblock::choose(a, b).map_err(|e| {
            pr_err!(
                "ferry: group {}: device {}: meta device refused: {}\n",
                core::str::from_utf8(self.name()).unwrap_or("?"),
                sm.sb.device_id,
                e
            );
            JoinError::MetaCorrupt
        })?;
        let mut set = 0u64;
        let left = match current {
            None => {
                // A new meta device: empty bitmap (the secondary is taken
                // to start equal), a fresh identity.
                // SAFETY: `uuid` is 16 writable bytes.
                unsafe {
                    crate::bindings::ferry_get_random_bytes(sm.sb.uuid.as_mut_ptr().cast(), 16)
                };
                for p in 0..pages as u64 {
                    meta_write(&sm.dev, &sm.page, meta::BITMAP_SECTOR + 8 * p, |b| b.fill(0))
                        .map_err(io)?;
                }
                pr_info!(
                    "ferry: group {}: device {}: formatted its meta device\n",
                    core::str::from_utf8(self.name()).unwrap_or("?"),
                    sm.sb.device_id
                );
                Left::New
            }
            Some(found) => {
                let want = sm.sb;
                if (found.group_id, found.device_id, found.chunk_kb, found.len_sectors)
                    != (want.group_id, want.device_id, want.chunk_kb, want.len_sectors)
                {
                    return Err(JoinError::MetaMismatch);
                }
                sm.sb = found;
                for p in 0..pages {
                    set += meta_read(&sm.dev, &sm.page, meta::BITMAP_SECTOR + 8 * p as u64, |b| {
                        intent.load(p, b)
                    })
                    .map_err(io)?;
                }
                Left::of(Some(&found))
            }
        };
        // In use from now on: only a clean leave sets CLEAN again.
        sm.sb.flags &= !(sb_flags::AHEAD | sb_flags::CLEAN);
        if set > 0 {
            sm.sb.flags |= sb_flags::AHEAD;
        }
        sm.write_sb().map_err(io)?;
        Ok((set, left))
    }
}
