//! The `ferry` table line:
//!
//! ```text
//! <start> <len> ferry <data_dev> <meta_dev> [<#opts> <opt>...]
//! ```
//!
//! Optional arguments (counted in `<#opts>`, each word counts):
//!
//! * `data_offset <sectors>`: first sector of the target on the data device
//!   (default 0).
//! * `mode primary|passthrough`: `primary` replicates (needs `group`);
//!   `passthrough` only remaps.  Default: `primary` when a group is given,
//!   `passthrough` otherwise.
//! * `group <name>`: the consistency group; one group-wide order over all
//!   its devices.
//! * `device_id <n>`: the device's number in its group (default 0).
//! * `role log|data`: `log` devices lead `data` devices (default `data`).
//! * `chunk_kb <n>`: dirty-chunk size of the bitmap (default 64).
//! * `spool_mb <n>`, `overflow bitmap|block`, `checkpoint_ms <n>`,
//!   `block_timeout <s>`, `resync_mbps <n>`: settings of the group; every
//!   device of a group gives the same value or none.  `resync_mbps` caps
//!   what a resync reads, in MiB/s (0, the default: no cap); the message
//!   `resync_mbps <n>` changes it while the group runs.
//!
//! Parsing is pure: it needs no device and no kernel.  The kernel module
//! checks the devices the line names and the group's consistency; every
//! rejection has its own message, which the module puts in `ti->error`.

use core::ffi::CStr;
use core::fmt;

/// Longest group name (it names the character device `/dev/ferry/<group>`).
pub const GROUP_NAME_MAX: usize = 32;
/// Devices per group: `device_id` is below this.
pub const MAX_DEVICES: u32 = 32;
/// Default spool cap of a group, MiB.
pub const DEFAULT_SPOOL_MB: u32 = 64;
/// Largest spool cap, MiB.
pub const MAX_SPOOL_MB: u32 = 16384;
/// Default dirty-chunk size, KiB.
pub const DEFAULT_CHUNK_KB: u32 = 64;
/// Smallest and largest dirty-chunk size, KiB (powers of two).
pub const CHUNK_KB_RANGE: (u32, u32) = (4, 65536);
/// Default checkpoint period, ms.
pub const DEFAULT_CHECKPOINT_MS: u32 = 1000;
/// Smallest and largest non-zero checkpoint period, ms.
pub const CHECKPOINT_MS_RANGE: (u32, u32) = (10, 3_600_000);
/// Default bound, seconds, on writers held for spool room under
/// `overflow block` with none let in (`crate::spool::Queue::expired`).
pub const DEFAULT_BLOCK_TIMEOUT_S: u32 = 30;
/// Smallest and largest `block_timeout`, seconds.
pub const BLOCK_TIMEOUT_S_RANGE: (u32, u32) = (1, 3600);
/// Largest `resync_mbps` (MiB/s; 0 is no cap).
pub const MAX_RESYNC_MBPS: u32 = 65536;

/// What the target does with writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Remap only, as dm-linear.
    Passthrough,
    /// Tag, spool and replicate every write.
    Primary,
    /// Refuse host writes; apply whole intervals received from a primary.
    Secondary,
}

impl Mode {
    /// The word of the table line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Passthrough => "passthrough",
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

/// The device's place in the log-before-data order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A data device: its writes wait for the log writes before them.
    Data,
    /// A log device (a database's WAL volume): its writes lead.
    Log,
}

impl Role {
    /// The word of the table line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Log => "log",
        }
    }
}

/// What a full spool does to writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Mark the chunk dirty and complete the write (mode `ahead`).
    Bitmap,
    /// Hold writers until the spool has room.
    Block,
}

impl Overflow {
    /// The word of the table line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bitmap => "bitmap",
            Self::Block => "block",
        }
    }
}

/// The optional arguments, as bits of [`TableArgs::given`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
#[allow(missing_docs)]
pub enum Opt {
    DataOffset = 1 << 0,
    Mode = 1 << 1,
    Group = 1 << 2,
    DeviceId = 1 << 3,
    Role = 1 << 4,
    ChunkKb = 1 << 5,
    SpoolMb = 1 << 6,
    Overflow = 1 << 7,
    CheckpointMs = 1 << 8,
    BlockTimeout = 1 << 9,
    ResyncMbps = 1 << 10,
}

impl Opt {
    /// Every option, in the order the table line is reproduced.
    pub const ALL: [Opt; 11] = [
        Opt::DataOffset,
        Opt::Mode,
        Opt::Group,
        Opt::DeviceId,
        Opt::Role,
        Opt::ChunkKb,
        Opt::SpoolMb,
        Opt::Overflow,
        Opt::CheckpointMs,
        Opt::BlockTimeout,
        Opt::ResyncMbps,
    ];

    /// The option's keyword.
    pub const fn name(self) -> &'static str {
        match self {
            Self::DataOffset => "data_offset",
            Self::Mode => "mode",
            Self::Group => "group",
            Self::DeviceId => "device_id",
            Self::Role => "role",
            Self::ChunkKb => "chunk_kb",
            Self::SpoolMb => "spool_mb",
            Self::Overflow => "overflow",
            Self::CheckpointMs => "checkpoint_ms",
            Self::BlockTimeout => "block_timeout",
            Self::ResyncMbps => "resync_mbps",
        }
    }

    fn from_word(w: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name().as_bytes() == w)
    }

    const fn bit(self) -> u16 {
        self as u16
    }
}

/// The arguments of a table line, borrowed from the line.
#[derive(Debug, PartialEq, Eq)]
pub struct TableArgs<'a> {
    /// Data device: path or `major:minor`.
    pub data_dev: &'a CStr,
    /// Meta device: path or `major:minor`.
    pub meta_dev: &'a CStr,
    /// First sector of the target on the data device.
    pub data_offset: u64,
    /// Whether `data_offset` was given (so the table line reproduces it).
    pub data_offset_set: bool,
    /// What the target does with writes.
    pub mode: Mode,
    /// The consistency group (as its name's bytes), if any.
    pub group: Option<&'a [u8]>,
    /// The device's number in its group.
    pub device_id: u32,
    /// Log or data.
    pub role: Role,
    /// Dirty-chunk size, KiB.
    pub chunk_kb: u32,
    /// Group setting: spool cap, MiB (`None`: not given).
    pub spool_mb: Option<u32>,
    /// Group setting: spool overflow policy.
    pub overflow: Option<Overflow>,
    /// Group setting: checkpoint period, ms; 0: on demand only.
    pub checkpoint_ms: Option<u32>,
    /// Group setting: bound, seconds, on writers held for spool room with
    /// none let in (`overflow block`).
    pub block_timeout: Option<u32>,
    /// Group setting: the resync's read rate cap, MiB/s; 0: none.
    pub resync_mbps: Option<u32>,
    /// The options given, as [`Opt`] bits.
    pub given: u16,
}

impl TableArgs<'_> {
    /// Whether `opt` was on the line.
    pub const fn has(&self, opt: Opt) -> bool {
        self.given & opt.bit() != 0
    }

    /// Sectors per dirty chunk.
    pub const fn chunk_sectors(&self) -> u64 {
        self.chunk_kb as u64 * 2
    }

    /// Writes the optional part of the line, ` <#opts> <opt> <value>...`,
    /// with the options given, in [`Opt::ALL`] order; nothing when none
    /// was given.  Parsing the devices and this text gives back `self`.
    pub fn write_options<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        if self.given == 0 {
            return Ok(());
        }
        write!(out, " {}", 2 * self.given.count_ones())?;
        for opt in Opt::ALL.into_iter().filter(|o| self.has(*o)) {
            write!(out, " {} ", opt.name())?;
            match opt {
                Opt::DataOffset => write!(out, "{}", self.data_offset)?,
                Opt::Mode => out.write_str(self.mode.name())?,
                Opt::Group => {
                    for &c in self.group.unwrap_or_default() {
                        out.write_char(char::from(c))?;
                    }
                }
                Opt::DeviceId => write!(out, "{}", self.device_id)?,
                Opt::Role => out.write_str(self.role.name())?,
                Opt::ChunkKb => write!(out, "{}", self.chunk_kb)?,
                Opt::SpoolMb => write!(out, "{}", self.spool_mb.unwrap_or_default())?,
                Opt::Overflow => out.write_str(self.overflow.map_or("", Overflow::name))?,
                Opt::CheckpointMs => write!(out, "{}", self.checkpoint_ms.unwrap_or_default())?,
                Opt::BlockTimeout => write!(out, "{}", self.block_timeout.unwrap_or_default())?,
                Opt::ResyncMbps => write!(out, "{}", self.resync_mbps.unwrap_or_default())?,
            }
        }
        Ok(())
    }
}

/// Why a table line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum TableError {
    NoArguments,
    MissingMetaDevice,
    BadOptionCount,
    OptionCountTooLarge,
    TooManyArguments,
    UnknownOption,
    MissingOptionValue(Opt),
    BadDataOffset,
    DuplicateOption,
    BadMode,
    BadGroup,
    BadDeviceId,
    BadRole,
    BadChunkKb,
    BadSpoolMb,
    BadOverflow,
    BadCheckpointMs,
    BadBlockTimeout,
    BadResyncMbps,
    PrimaryNeedsGroup,
    PassthroughWithGroupOptions,
}

impl TableError {
    /// The message for `ti->error` (and the administrator's kernel log).
    pub fn message(self) -> &'static CStr {
        match self {
            Self::NoArguments => c"Missing arguments: <data_dev> <meta_dev> [<#opts> <opt>...]",
            Self::MissingMetaDevice => c"Missing meta device",
            Self::BadOptionCount => c"Invalid optional argument count",
            Self::OptionCountTooLarge => c"Optional argument count exceeds the arguments given",
            Self::TooManyArguments => c"Too many arguments after the optional arguments",
            Self::UnknownOption => c"Unknown optional argument",
            Self::MissingOptionValue(o) => match o {
                Opt::DataOffset => c"Optional argument data_offset needs a value",
                Opt::Mode => c"Optional argument mode needs a value",
                Opt::Group => c"Optional argument group needs a value",
                Opt::DeviceId => c"Optional argument device_id needs a value",
                Opt::Role => c"Optional argument role needs a value",
                Opt::ChunkKb => c"Optional argument chunk_kb needs a value",
                Opt::SpoolMb => c"Optional argument spool_mb needs a value",
                Opt::Overflow => c"Optional argument overflow needs a value",
                Opt::CheckpointMs => c"Optional argument checkpoint_ms needs a value",
                Opt::BlockTimeout => c"Optional argument block_timeout needs a value",
                Opt::ResyncMbps => c"Optional argument resync_mbps needs a value",
            },
            Self::BadDataOffset => c"Invalid data_offset: expected a decimal number of sectors",
            Self::DuplicateOption => c"Optional argument given twice",
            Self::BadMode => c"Invalid mode: expected primary, secondary or passthrough",
            Self::BadGroup => {
                c"Invalid group: 1 to 32 characters of [A-Za-z0-9_.-], starting with a letter or digit"
            }
            Self::BadDeviceId => c"Invalid device_id: expected 0 to 31",
            Self::BadRole => c"Invalid role: expected log or data",
            Self::BadChunkKb => c"Invalid chunk_kb: expected a power of two from 4 to 65536",
            Self::BadSpoolMb => c"Invalid spool_mb: expected 1 to 16384",
            Self::BadOverflow => c"Invalid overflow: expected bitmap or block",
            Self::BadCheckpointMs => {
                c"Invalid checkpoint_ms: expected 0 (on demand only) or 10 to 3600000"
            }
            Self::BadBlockTimeout => c"Invalid block_timeout: expected 1 to 3600 seconds",
            Self::BadResyncMbps => c"Invalid resync_mbps: expected 0 (no cap) to 65536 MiB/s",
            Self::PrimaryNeedsGroup => c"mode primary or secondary needs a group",
            Self::PassthroughWithGroupOptions => {
                c"mode passthrough takes no group, device_id, role, spool_mb, overflow, checkpoint_ms, block_timeout or resync_mbps"
            }
        }
    }
}

/// Parses a strictly decimal `u64`: digits only, no sign, no spaces, no
/// prefix, no overflow.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

fn parse_u32_in(s: &[u8], lo: u32, hi: u32) -> Option<u32> {
    let v = u32::try_from(parse_u64(s)?).ok()?;
    (lo..=hi).contains(&v).then_some(v)
}

/// Whether `name` is a valid group name: it becomes a path component under
/// `/dev/ferry/` and a word of status lines.
pub fn valid_group_name(name: &[u8]) -> bool {
    matches!(name.first(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= GROUP_NAME_MAX
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Parses the arguments after the target name.
pub fn parse<'a>(args: &[&'a CStr]) -> Result<TableArgs<'a>, TableError> {
    let (data_dev, meta_dev) = match args {
        [] => return Err(TableError::NoArguments),
        [_] => return Err(TableError::MissingMetaDevice),
        [d, m, ..] => (*d, *m),
    };
    let mut t = TableArgs {
        data_dev,
        meta_dev,
        data_offset: 0,
        data_offset_set: false,
        mode: Mode::Passthrough,
        group: None,
        device_id: 0,
        role: Role::Data,
        chunk_kb: DEFAULT_CHUNK_KB,
        spool_mb: None,
        overflow: None,
        checkpoint_ms: None,
        block_timeout: None,
        resync_mbps: None,
        given: 0,
    };
    let rest = &args[2..];
    let Some((count, opts)) = rest.split_first() else {
        return Ok(t);
    };
    let count = parse_u64(count.to_bytes()).ok_or(TableError::BadOptionCount)?;
    let count = usize::try_from(count).map_err(|_| TableError::OptionCountTooLarge)?;
    if count > opts.len() {
        return Err(TableError::OptionCountTooLarge);
    }
    if count < opts.len() {
        return Err(TableError::TooManyArguments);
    }
    let mut it = opts.iter();
    let mut mode = None;
    while let Some(word) = it.next() {
        let opt = Opt::from_word(word.to_bytes()).ok_or(TableError::UnknownOption)?;
        if t.given & opt.bit() != 0 {
            return Err(TableError::DuplicateOption);
        }
        t.given |= opt.bit();
        let v = it
            .next()
            .ok_or(TableError::MissingOptionValue(opt))?
            .to_bytes();
        match opt {
            Opt::DataOffset => {
                t.data_offset = parse_u64(v).ok_or(TableError::BadDataOffset)?;
                t.data_offset_set = true;
            }
            Opt::Mode => {
                mode = Some(match v {
                    b"primary" => Mode::Primary,
                    b"secondary" => Mode::Secondary,
                    b"passthrough" => Mode::Passthrough,
                    _ => return Err(TableError::BadMode),
                })
            }
            Opt::Group => {
                if !valid_group_name(v) {
                    return Err(TableError::BadGroup);
                }
                t.group = Some(v);
            }
            Opt::DeviceId => {
                t.device_id = parse_u32_in(v, 0, MAX_DEVICES - 1).ok_or(TableError::BadDeviceId)?
            }
            Opt::Role => {
                t.role = match v {
                    b"log" => Role::Log,
                    b"data" => Role::Data,
                    _ => return Err(TableError::BadRole),
                }
            }
            Opt::ChunkKb => {
                let (lo, hi) = CHUNK_KB_RANGE;
                t.chunk_kb = parse_u32_in(v, lo, hi)
                    .filter(|c| c.is_power_of_two())
                    .ok_or(TableError::BadChunkKb)?
            }
            Opt::SpoolMb => {
                t.spool_mb = Some(parse_u32_in(v, 1, MAX_SPOOL_MB).ok_or(TableError::BadSpoolMb)?)
            }
            Opt::Overflow => {
                t.overflow = Some(match v {
                    b"bitmap" => Overflow::Bitmap,
                    b"block" => Overflow::Block,
                    _ => return Err(TableError::BadOverflow),
                })
            }
            Opt::CheckpointMs => {
                let (lo, hi) = CHECKPOINT_MS_RANGE;
                let ms = parse_u64(v)
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|&m| m == 0 || (lo..=hi).contains(&m))
                    .ok_or(TableError::BadCheckpointMs)?;
                t.checkpoint_ms = Some(ms);
            }
            Opt::BlockTimeout => {
                let (lo, hi) = BLOCK_TIMEOUT_S_RANGE;
                let s = parse_u32_in(v, lo, hi).ok_or(TableError::BadBlockTimeout)?;
                t.block_timeout = Some(s);
            }
            Opt::ResyncMbps => {
                let r = parse_u32_in(v, 0, MAX_RESYNC_MBPS).ok_or(TableError::BadResyncMbps)?;
                t.resync_mbps = Some(r);
            }
        }
    }
    let group_opts = Opt::Group.bit()
        | Opt::DeviceId.bit()
        | Opt::Role.bit()
        | Opt::SpoolMb.bit()
        | Opt::Overflow.bit()
        | Opt::CheckpointMs.bit()
        | Opt::BlockTimeout.bit()
        | Opt::ResyncMbps.bit();
    t.mode = match (mode, t.group) {
        (Some(Mode::Primary | Mode::Secondary), None) => return Err(TableError::PrimaryNeedsGroup),
        (Some(Mode::Passthrough), _) if t.given & group_opts != 0 => {
            return Err(TableError::PassthroughWithGroupOptions)
        }
        (Some(m), _) => m,
        (None, Some(_)) => Mode::Primary,
        (None, None) if t.given & group_opts != 0 => return Err(TableError::PrimaryNeedsGroup),
        (None, None) => Mode::Passthrough,
    };
    Ok(t)
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
