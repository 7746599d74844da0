// SPDX-License-Identifier: GPL-2.0

//! The `ferry` target.
//!
//! In mode `passthrough` every bio is remapped to the data device, as
//! dm-linear does, and counted.  In mode `primary` the device is a member of
//! a consistency group (`group/`): every write, discard, write-zeroes and
//! flush also becomes a record of the group, spooled until the secondary
//! acknowledges it.  Reads are remapped in both modes.
//!
//! In mode `secondary` the device belongs to a group that refuses host
//! writes, holds host reads while `ferryd` applies an interval, and writes
//! the records `ferryd` hands it through the character device
//! (`group/secondary.rs`).  `promote` turns the group into a primary.
//!
//! The meta device of a primary holds its superblock and its write-intent
//! bitmap (`group/meta_io.rs`); a passthrough target only checks its size.
//!
//! In a write's path: the device-mapper layer (`dm/`) calls `map`, which
//! remaps the bio to the data device and hands its record to the group
//! (`group/admit.rs`); `end_io` reports its completion
//! (`group/sequence.rs`).

use crate::dm::{
    Bio, Ctr, CtrError, DmDev, HeldBio, IterateDevices, MapResult, Op, StatusType, StatusWriter,
    Target,
};
use crate::group::{
    self, Admitted, DeviceStatus, Given, Group, JoinError, Member, ReadGate, Record, Settings,
};
use crate::payload::Payload;
use core::ffi::CStr;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use ferry_core::record::RecordKind;
use ferry_core::table::{
    self, Mode, Opt, Overflow, Role, TableArgs, DEFAULT_BLOCK_TIMEOUT_S, DEFAULT_CHECKPOINT_MS,
    DEFAULT_SPOOL_MB, GROUP_NAME_MAX, MAX_RESYNC_MBPS,
};
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Largest bio the target accepts (1 MiB): a replicated write becomes one
/// record, whose payload the spool holds whole.  The cap applies in every
/// mode so that a device's limits do not change under its users when
/// replication is turned on.
const MAX_IO_SECTORS: u32 = ferry_core::record::MAX_WRITE_SECTORS;

/// Sectors the meta device needs for a target of `len` sectors in chunks of
/// `chunk_sectors` (`Documentation/ferry.rst`; layout in ferry-core's
/// `meta`).
pub(crate) fn meta_sectors_needed(len: u64, chunk_sectors: u64) -> u64 {
    ferry_core::meta::meta_sectors(len, chunk_sectors)
}

/// The table's options, owned, to reproduce the line.
struct Options {
    given: u16,
    data_offset: u64,
    mode: Mode,
    group: [u8; GROUP_NAME_MAX],
    group_len: usize,
    device_id: u32,
    role: Role,
    chunk_kb: u32,
    spool_mb: Option<u32>,
    overflow: Option<Overflow>,
    checkpoint_ms: Option<u32>,
    block_timeout: Option<u32>,
    resync_mbps: Option<u32>,
}

impl Options {
    fn new(t: &TableArgs<'_>) -> Self {
        let mut group = [0u8; GROUP_NAME_MAX];
        let g = t.group.unwrap_or_default();
        let n = g.len().min(GROUP_NAME_MAX);
        group[..n].copy_from_slice(&g[..n]);
        Self {
            given: t.given,
            data_offset: t.data_offset,
            mode: t.mode,
            group,
            group_len: n,
            device_id: t.device_id,
            role: t.role,
            chunk_kb: t.chunk_kb,
            spool_mb: t.spool_mb,
            overflow: t.overflow,
            checkpoint_ms: t.checkpoint_ms,
            block_timeout: t.block_timeout,
            resync_mbps: t.resync_mbps,
        }
    }

    /// Writes the options; `mode` is the device's mode now (a promoted
    /// secondary is a primary, and a reload with this line keeps it one),
    /// `resync_mbps` the group's cap now (the message changes it), shown
    /// when the line gave one or it is not the default.
    fn write(&self, mode: Mode, resync_mbps: Option<u32>, out: &mut StatusWriter<'_>) -> core::fmt::Result {
        let mut given = self.given;
        let mut cap = self.resync_mbps;
        if let Some(r) = resync_mbps.filter(|&r| r != 0 || cap.is_some()) {
            given |= Opt::ResyncMbps as u16;
            cap = Some(r);
        }
        let t = TableArgs {
            data_dev: c"",
            meta_dev: c"",
            data_offset: self.data_offset,
            data_offset_set: self.given & Opt::DataOffset as u16 != 0,
            mode,
            group: (self.group_len > 0).then_some(&self.group[..self.group_len]),
            device_id: self.device_id,
            role: self.role,
            chunk_kb: self.chunk_kb,
            spool_mb: self.spool_mb,
            overflow: self.overflow,
            checkpoint_ms: self.checkpoint_ms,
            block_timeout: self.block_timeout,
            resync_mbps: cap,
            given,
        };
        t.write_options(out)
    }
}

/// The replication side of a `primary` target.
struct Primary {
    group: Arc<Group>,
    id: u32,
    role: Role,
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
    opts: Options,
    counters: Counters,
    primary: Option<Primary>,
    /// Between `presuspend` and `resume`: the group counts the device as
    /// suspending (`Group::suspend_begin`).
    suspending: AtomicBool,
}

impl Ferry {
    fn check_devices(
        ctr: &Ctr<'_>,
        data: &DmDev,
        meta: &DmDev,
        data_offset: u64,
        chunk_sectors: u64,
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
        let need = meta_sectors_needed(len, chunk_sectors);
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

    fn join(
        ctr: &Ctr<'_>,
        t: &TableArgs<'_>,
        data: &DmDev,
        meta: &DmDev,
    ) -> Result<Option<Primary>, CtrError> {
        let Some(name) = t.group else {
            return Ok(None);
        };
        let settings = Settings {
            spool_mb: t.spool_mb.unwrap_or(DEFAULT_SPOOL_MB),
            overflow: t.overflow.unwrap_or(Overflow::Bitmap),
            checkpoint_ms: t.checkpoint_ms.unwrap_or(DEFAULT_CHECKPOINT_MS),
            block_timeout_s: t.block_timeout.unwrap_or(DEFAULT_BLOCK_TIMEOUT_S),
            resync_mbps: t.resync_mbps.unwrap_or(0),
        };
        let given = Given {
            spool_mb: t.spool_mb.is_some(),
            overflow: t.overflow.is_some(),
            checkpoint_ms: t.checkpoint_ms.is_some(),
            block_timeout: t.block_timeout.is_some(),
            resync_mbps: t.resync_mbps.is_some(),
        };
        let chunk_shift = t.chunk_sectors().trailing_zeros();
        let group = group::registry()
            .join(
                name,
                settings,
                given,
                &Member {
                    id: t.device_id,
                    devt: data.devt(),
                    role: t.role,
                    sectors: ctr.len(),
                    chunk_shift,
                    meta: meta.bdev_ref(),
                    data: data.bdev_ref(),
                    data_offset: t.data_offset,
                    secondary: t.mode == Mode::Secondary,
                },
            )
            .map_err(|e| match e {
                JoinError::Settings => CtrError::inval(
                    c"spool_mb, overflow, checkpoint_ms, block_timeout or resync_mbps differ from the group's",
                ),
                JoinError::IdTaken => {
                    CtrError::inval(c"device_id already used by another device of the group")
                }
                JoinError::Role => CtrError::inval(c"role differs from the loaded device's"),
                JoinError::NoMemory => CtrError {
                    msg: c"Cannot allocate the device's spool ring",
                    err: ENOMEM,
                },
                JoinError::Create(err) => CtrError {
                    msg: c"Cannot create the group's character device",
                    err,
                },
                JoinError::MetaIo => CtrError {
                    msg: c"Cannot read or write the meta device",
                    err: EIO,
                },
                JoinError::Site => CtrError::inval(
                    c"mode differs from the group's (a secondary becomes a primary by promote)",
                ),
                JoinError::Reload => CtrError::inval(
                    c"A reload may not change a replicated device's meta device, length or chunk_kb",
                ),
                JoinError::MetaCorrupt => CtrError::inval(
                    c"Meta device's superblock holds numbers out of range (see the kernel log; wipe it to start anew)",
                ),
                JoinError::MetaMismatch => CtrError::inval(
                    c"Meta device belongs to another device (group, device_id, chunk_kb or length differ)",
                ),
            })?;
        Ok(Some(Primary {
            group,
            id: t.device_id,
            role: t.role,
        }))
    }

    /// The device's mode now.
    fn mode(&self) -> Mode {
        match &self.primary {
            Some(p) if self.opts.mode == Mode::Secondary && !p.group.is_secondary() => Mode::Primary,
            _ => self.opts.mode,
        }
    }

    fn record_kind(op: Op, bio: &Bio<'_>) -> Option<RecordKind> {
        match op {
            Op::Write if bio.sectors() > 0 => Some(RecordKind::Write),
            Op::Flush => Some(RecordKind::Flush),
            Op::Discard | Op::SecureErase => Some(RecordKind::Discard),
            Op::WriteZeroes => Some(RecordKind::WriteZeroes),
            _ => None,
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Some(p) = &self.primary {
            // A table replaced by a reload, or removed, is not resumed.
            if self.suspending.swap(false, Relaxed) {
                p.group.suspend_end();
            }
            group::registry().leave(&p.group, p.id);
        }
    }
}

impl Target for Ferry {
    const NAME: &'static CStr = c"ferry";
    const VERSION: [u32; 3] = [0, 3, 0];
    type Io = Arc<Record>;

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
        Self::check_devices(ctr, &data, &meta, t.data_offset, t.chunk_sectors())?;
        let primary = Self::join(ctr, &t, &data, &meta)?;

        // A replicated write is one record whose payload the spool holds
        // whole: device-mapper splits bios above 1 MiB for us.
        ctr.set_max_io_len(MAX_IO_SECTORS);
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
            opts: Options::new(&t),
            counters: Counters::default(),
            primary,
            suspending: AtomicBool::new(false),
        })
    }

    fn map(&self, bio: &mut Bio<'_>) -> MapResult<Arc<Record>> {
        let c = &self.counters;
        let op = bio.op();
        let counter = match op {
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
        // An empty flush carries no sector (device-mapper leaves the
        // original bio's, often 0, whatever the target's first sector is):
        // only bios with data are placed, as dm-linear does.  The others
        // keep offset 0 of the target.  Device-mapper hands a target only
        // bios inside it, so `rel < len` and `data_offset + rel` fits (the
        // constructor checked `data_offset + len`); the checked forms
        // keep a broken caller from overflowing.
        let rel = if bio.sectors() > 0 {
            match bio.sector().checked_sub(self.begin) {
                Some(rel) if rel < self.len => rel,
                _ => return MapResult::Refuse,
            }
        } else {
            0
        };
        let at = self.data_offset.saturating_add(rel);
        if let Some(p) = self.primary.as_ref().filter(|p| p.group.is_secondary()) {
            return match op {
                Op::Read => {
                    bio.remap(&self.data, at);
                    match p.group.secondary_read() {
                        ReadGate::Go(t) => MapResult::Remapped(Some(t)),
                        ReadGate::Hold(t) => MapResult::Defer(Some(t)),
                    }
                }
                Op::Flush => {
                    bio.remap(&self.data, at);
                    MapResult::Remapped(None)
                }
                _ => MapResult::Refuse,
            };
        }
        let mut rec = None;
        let mut defer = false;
        if let (Some(p), Some(kind)) = (&self.primary, Self::record_kind(op, bio)) {
            let r = group::record_for(
                kind,
                p.id,
                p.role,
                rel,
                bio.sectors(),
                bio.is_fua(),
                bio.is_preflush(),
            );
            let bytes = if kind == RecordKind::Write { bio.bytes() } else { 0 };
            let nowait = bio.is_nowait();
            let fill = || Payload::copy_from_bio(bio, kernel::alloc::flags::GFP_NOWAIT);
            // A write without a record carries the group's token to its
            // completion, which counts it out of the writes in flight.
            match p.group.prepare(r, bytes, nowait, fill) {
                Ok(Admitted::Go(r)) => rec = Some(r.unwrap_or_else(|| p.group.untracked())),
                Ok(Admitted::Intent(r)) => (rec, defer) = (Some(r.unwrap_or_else(|| p.group.untracked())), true),
                Ok(Admitted::Room(r) | Admitted::Copy(r) | Admitted::Resync(r)) => (rec, defer) = (Some(r), true),
                Err(_) => return MapResult::WouldBlock,
            }
        }
        bio.remap(&self.data, at);
        if defer {
            MapResult::Defer(rec)
        } else {
            MapResult::Remapped(rec)
        }
    }

    fn defer(&self, bio: HeldBio<Arc<Record>>) {
        match &self.primary {
            Some(p) if p.group.is_secondary() => p.group.hold_read(bio),
            Some(p) => p.group.hold(bio),
            None => bio.fail(),
        }
    }

    /// Writers held for spool room cannot wait through a suspend
    /// (device-mapper waits for them): `Group::suspend_begin`.
    fn presuspend(&self) {
        if let Some(p) = &self.primary {
            if !self.suspending.swap(true, Relaxed) {
                p.group.suspend_begin();
            }
        }
    }

    fn resume(&self) {
        if let Some(p) = &self.primary {
            if self.suspending.swap(false, Relaxed) {
                p.group.suspend_end();
            }
        }
    }

    fn end_io(&self, rec: Arc<Record>, ok: bool) {
        if let Some(p) = &self.primary {
            if p.group.is_read_token(&rec) {
                p.group.read_done();
            } else if p.group.is_untracked(&rec) {
                p.group.untracked_done(p.id);
            } else {
                p.group.complete(rec, ok);
            }
        }
    }

    fn message(&self, args: &[&CStr], _out: &mut StatusWriter<'_>) -> Result {
        let Some(p) = &self.primary else {
            pr_warn!("ferry: messages need mode primary or secondary\n");
            return Err(EINVAL);
        };
        if p.group.is_secondary() {
            return match args {
                [cmd] if cmd.to_bytes() == b"promote" => p.group.promote(),
                _ => {
                    pr_warn!("ferry: unknown message for a secondary (promote)\n");
                    Err(EINVAL)
                }
            };
        }
        match args {
            [cmd] if cmd.to_bytes() == b"checkpoint" => p.group.checkpoint().map(|_| ()),
            [cmd, label] if cmd.to_bytes() == b"cp" => {
                p.group.consistency_point(label.to_bytes()).map(|_| ())
            }
            [cmd, v] if cmd.to_bytes() == b"resync_mbps" => {
                match ferry_core::table::parse_u64(v.to_bytes()).and_then(|v| u32::try_from(v).ok()) {
                    Some(v) if v <= MAX_RESYNC_MBPS => {
                        p.group.set_resync_mbps(v);
                        Ok(())
                    }
                    _ => {
                        pr_warn!("ferry: resync_mbps: expected 0 (no cap) to {} MiB/s\n", MAX_RESYNC_MBPS);
                        Err(EINVAL)
                    }
                }
            }
            _ => {
                pr_warn!("ferry: unknown message (checkpoint | cp <label> | resync_mbps <MiB/s>)\n");
                Err(EINVAL)
            }
        }
    }

    fn status(&self, ty: StatusType, out: &mut StatusWriter<'_>) {
        let c = &self.counters;
        // A full buffer truncates the line, as DMEMIT does; nothing to report.
        let _ = match ty {
            StatusType::Info => match &self.primary {
                None => write!(
                    out,
                    "passthrough {} {} {} {} {}",
                    c.reads.load(Relaxed),
                    c.writes.load(Relaxed),
                    c.flushes.load(Relaxed),
                    c.discards.load(Relaxed),
                    c.write_zeroes.load(Relaxed),
                ),
                Some(p) if p.group.is_secondary() => {
                    let (applied, in_progress, records) = p.group.secondary_status(p.id);
                    write!(
                        out,
                        "secondary {} {} {} {} {} {} {} {}",
                        core::str::from_utf8(p.group.name()).unwrap_or("?"),
                        p.id,
                        p.role.name(),
                        if in_progress > 0 { "applying" } else { "idle" },
                        applied,
                        in_progress,
                        records,
                        p.group.status(p.id).rejected,
                    )
                }
                Some(p) => {
                    let s: DeviceStatus = p.group.status(p.id);
                    write!(
                        out,
                        "primary {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
                        core::str::from_utf8(p.group.name()).unwrap_or("?"),
                        p.id,
                        p.role.name(),
                        s.mode,
                        s.written,
                        s.completed,
                        s.shipped,
                        s.acked,
                        s.spool_used / 1024,
                        s.spool_cap / 1024,
                        s.dirty,
                        s.epoch,
                        s.dropped,
                        s.rejected,
                        s.resync_left,
                        s.resync_total,
                    )
                }
            },
            StatusType::Table => write!(
                out,
                "{} {}",
                self.data.name().to_str().unwrap_or("?"),
                self.meta.name().to_str().unwrap_or("?")
            )
            .and_then(|()| {
                let cap = self.primary.as_ref().filter(|p| !p.group.is_secondary()).map(|p| p.group.resync_mbps());
                self.opts.write(self.mode(), cap, out)
            }),
            StatusType::Ima => write!(
                out,
                "target_name=ferry,target_version=0.3.0,data_device={},meta_device={},data_offset={},mode={};",
                self.data.name().to_str().unwrap_or("?"),
                self.meta.name().to_str().unwrap_or("?"),
                self.data_offset,
                self.mode().name(),
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
