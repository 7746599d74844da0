// SPDX-License-Identifier: GPL-2.0

//! The `ferry` target.
//!
//! For now a pass-through: every bio is remapped to the data device, as
//! dm-linear does, and counted.  The meta device is validated and reserved
//! for the superblock, write-intent log and dirty-chunk bitmap of the
//! replication path; this version does not write to it.

use crate::dm::{
    Bio, Ctr, CtrError, DmDev, IterateDevices, MapResult, Op, StatusType, StatusWriter, Target,
};
use core::ffi::CStr;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use ferry_core::table;
use kernel::ffi::c_int;
use kernel::prelude::*;

/// Sectors at the start of the meta device reserved for the superblock slots
/// and the write-intent log (1 MiB).
const META_RESERVED_SECTORS: u64 = 2048;
/// Dirty-chunk granularity of the bitmap: 64 KiB.
const CHUNK_SECTORS: u64 = 128;
/// Largest bio the target accepts (1 MiB): a replicated write becomes one
/// record, whose payload the spool holds whole.  The cap applies from the
/// first version so that a device's limits do not change under its users
/// when replication is turned on.
const MAX_IO_SECTORS: u32 = 2048;

/// Sectors the meta device needs for a target of `len` sectors: the reserved
/// area plus one bit per chunk, rounded up to 4 KiB.
pub(crate) fn meta_sectors_needed(len: u64) -> u64 {
    let chunks = len.div_ceil(CHUNK_SECTORS);
    let bitmap_bytes = chunks.div_ceil(8).div_ceil(4096) * 4096;
    META_RESERVED_SECTORS + bitmap_bytes / 512
}

/// Bios seen by `map`, by kind; reported by `dmsetup status`.
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    write_zeroes: AtomicU64,
}

/// One `ferry` target: a segment of a mapped device.
pub(crate) struct Ferry {
    data: DmDev,
    meta: DmDev,
    /// First sector of the target in the mapped device (`ti->begin`).
    begin: u64,
    len: u64,
    data_offset: u64,
    /// Whether the table line named `data_offset` (reproduced by `table`).
    data_offset_set: bool,
    counters: Counters,
}

impl Ferry {
    fn check_devices(
        ctr: &Ctr<'_>,
        data: &DmDev,
        meta: &DmDev,
        data_offset: u64,
    ) -> Result<(), CtrError> {
        if data.devt() == meta.devt() {
            return Err(CtrError::inval(c"Data and meta device are the same device"));
        }
        let len = ctr.len();
        if len > data.nr_sectors() {
            return Err(CtrError::inval(
                c"Data device smaller than the target length",
            ));
        }
        let lbs_sectors = u64::from(data.logical_block_size() / 512).max(1);
        if data_offset % lbs_sectors != 0 {
            return Err(CtrError::inval(
                c"data_offset not aligned to the data device's logical block size",
            ));
        }
        match data_offset.checked_add(len) {
            Some(end) if end <= data.nr_sectors() => {}
            _ => {
                return Err(CtrError::inval(
                    c"data_offset + target length beyond the end of the data device",
                ))
            }
        }
        let need = meta_sectors_needed(len);
        if meta.nr_sectors() < need {
            pr_err!(
                "ferry: meta device {} has {} sectors; a target of {} sectors needs {}\n",
                meta.name().to_str().unwrap_or("?"),
                meta.nr_sectors(),
                len,
                need
            );
            return Err(CtrError::inval(
                c"Meta device too small (see the kernel log for the size needed)",
            ));
        }
        Ok(())
    }
}

impl Target for Ferry {
    const NAME: &'static CStr = c"ferry";
    const VERSION: [u32; 3] = [0, 1, 0];

    fn new(ctr: &mut Ctr<'_>, args: &[&CStr]) -> Result<Self, CtrError> {
        let t = table::parse(args).map_err(|e| CtrError::inval(e.message()))?;
        let data = ctr.get_device(t.data_dev).map_err(|err| CtrError {
            msg: c"Cannot open data device",
            err,
        })?;
        let meta = ctr.get_device(t.meta_dev).map_err(|err| CtrError {
            msg: c"Cannot open meta device",
            err,
        })?;
        Self::check_devices(ctr, &data, &meta, t.data_offset)?;

        ctr.set_num_flush_bios(1);
        ctr.set_num_discard_bios(1);
        ctr.set_num_write_zeroes_bios(1);
        ctr.set_num_secure_erase_bios(1);
        Ok(Self {
            data,
            meta,
            begin: ctr.begin(),
            len: ctr.len(),
            data_offset: t.data_offset,
            data_offset_set: t.data_offset_set,
            counters: Counters::default(),
        })
    }

    fn map(&self, bio: &mut Bio<'_>) -> MapResult {
        let c = &self.counters;
        let counter = match bio.op() {
            Op::Read => Some(&c.reads),
            Op::Write => Some(&c.writes),
            Op::Flush => Some(&c.flushes),
            Op::Discard | Op::SecureErase => Some(&c.discards),
            Op::WriteZeroes => Some(&c.write_zeroes),
            Op::Other => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Relaxed);
        }
        // Empty flushes carry no sector; device-mapper gives them the
        // target's first sector, so the same arithmetic holds for all bios.
        let sector = self.data_offset + bio.sector().wrapping_sub(self.begin);
        bio.remap(&self.data, sector);
        MapResult::Remapped
    }

    fn status(&self, ty: StatusType, out: &mut StatusWriter<'_>) {
        let c = &self.counters;
        // A full buffer truncates the line, as DMEMIT does; nothing to report.
        let _ = match ty {
            StatusType::Info => write!(
                out,
                "passthrough {} {} {} {} {}",
                c.reads.load(Relaxed),
                c.writes.load(Relaxed),
                c.flushes.load(Relaxed),
                c.discards.load(Relaxed),
                c.write_zeroes.load(Relaxed),
            ),
            StatusType::Table => {
                let r = write!(out, "{} {}", self.data.name().to_str().unwrap_or("?"), self.meta.name().to_str().unwrap_or("?"));
                if self.data_offset_set {
                    write!(out, " 2 data_offset {}", self.data_offset)
                } else {
                    r
                }
            }
            StatusType::Ima => write!(
                out,
                "target_name=ferry,target_version=0.1.0,data_device={},meta_device={},data_offset={};",
                self.data.name().to_str().unwrap_or("?"),
                self.meta.name().to_str().unwrap_or("?"),
                self.data_offset
            ),
        };
    }

    fn iterate_devices(&self, devices: &IterateDevices<'_>) -> c_int {
        devices.call(&self.data, self.data_offset, self.len)
    }

    fn io_hints(&self, limits: &mut crate::bindings::queue_limits) {
        limits.max_hw_sectors = limits.max_hw_sectors.min(MAX_IO_SECTORS);
    }
}
