//! Commands `ferryd` writes to the character device `/dev/ferry/<group>`.
//!
//! Each command is `magic "FCMD" || version (u8) || opcode (u8) || body_len
//! (u16 LE) || body`; one `write(2)` may carry several commands back to back.
//! Bodies have a fixed size per opcode (the label of a consistency point is
//! the only variable part) and reserved fields must be zero. Anything else is
//! a [`CommandError`], which the kernel turns into `-EINVAL`.

use core::fmt;

use crate::bytes::{Reader, Writer};
use crate::record::{Label, RecordError};

/// First four bytes of every command.
pub const COMMAND_MAGIC: [u8; 4] = *b"FCMD";
/// Command format version.
pub const COMMAND_VERSION: u8 = 1;
/// Size of the command header.
pub const COMMAND_HEADER_LEN: usize = 8;
/// Largest encoded command.
pub const COMMAND_MAX_LEN: usize = COMMAND_HEADER_LEN + crate::record::LABEL_MAX;

/// Opcode values.
pub mod opcode {
    /// [`Command::AckLog`](super::Command::AckLog).
    pub const ACK_LOG: u8 = 1;
    /// [`Command::Ack`](super::Command::Ack).
    pub const ACK: u8 = 2;
    /// [`Command::Applied`](super::Command::Applied).
    pub const APPLIED: u8 = 3;
    /// [`Command::InsertCheckpoint`](super::Command::InsertCheckpoint).
    pub const INSERT_CHECKPOINT: u8 = 4;
    /// [`Command::InsertConsistencyPoint`](super::Command::InsertConsistencyPoint).
    pub const INSERT_CONSISTENCY_POINT: u8 = 5;
    /// [`Command::Start`](super::Command::Start).
    pub const START: u8 = 6;
    /// [`Command::Stop`](super::Command::Stop).
    pub const STOP: u8 = 7;
    /// [`Command::ApplyBegin`](super::Command::ApplyBegin).
    pub const APPLY_BEGIN: u8 = 8;
    /// [`Command::ApplyEnd`](super::Command::ApplyEnd).
    pub const APPLY_END: u8 = 9;
    /// [`Command::Spooled`](super::Command::Spooled).
    pub const SPOOLED: u8 = 10;
}

/// Flags of [`Command::Start`].
pub mod start_flags {
    /// Copy the whole device instead of only what the bitmap marks.
    pub const FULL_RESYNC: u32 = 0x1;
    /// With [`FULL_RESYNC`] only: the initial copy, to a secondary whose
    /// devices hold their own content, not the primary's; the span's first
    /// markers carry [`crate::record::Flags::RESYNC_INITIAL`], and the
    /// secondary has no consistent point until it is applied.
    pub const INITIAL: u32 = 0x2;
    /// Every flag this version defines.
    pub const KNOWN: u32 = 0x3;
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The secondary holds durably every record of `log` device `device`
    /// with `dev_seq <= dev_seq`: the ordering gate may advance.
    AckLog {
        /// Device id (a `log` device of the group).
        device: u32,
        /// Highest acknowledged `dev_seq`, cumulative.
        dev_seq: u64,
    },
    /// The secondary holds durably every record of `device` with
    /// `dev_seq <= dev_seq`: the spool may release them and the writes may
    /// be reported replicated.
    Ack {
        /// Device id.
        device: u32,
        /// Highest acknowledged `dev_seq`, cumulative.
        dev_seq: u64,
    },
    /// `ferryd` holds every record of `device` with `dev_seq <= dev_seq`
    /// durably on the primary's own disk: the kernel may drop them from
    /// its spool (they are not offered again).  They stay unacknowledged:
    /// their chunks stay marked on the meta device until [`Ack`](Self::Ack).
    Spooled {
        /// Device id.
        device: u32,
        /// Highest spooled `dev_seq`, cumulative.
        dev_seq: u64,
    },
    /// The secondary has applied every checkpoint interval up to `epoch`:
    /// bitmap bits whose writes all belong to such intervals may be cleared.
    Applied {
        /// Highest applied interval.
        epoch: u64,
    },
    /// Insert a checkpoint marker into every stream now.
    InsertCheckpoint,
    /// Insert a consistency-point record into every stream now.
    InsertConsistencyPoint {
        /// The operator's label.
        label: Label,
    },
    /// Start (or resume) replication.
    Start {
        /// [`start_flags`].
        flags: u32,
    },
    /// Stop replication; writes keep being tracked in the bitmap.
    Stop,
    /// Secondary: interval `epoch` is about to be applied.  The
    /// update-in-progress mark is made durable and host reads are held
    /// before the command returns; the records of the interval follow.
    ApplyBegin {
        /// The interval.
        epoch: u64,
    },
    /// Secondary: every record of interval `epoch` has been written.  The
    /// data devices are flushed, the mark is cleared durably and host reads
    /// resume.
    ApplyEnd {
        /// The interval.
        epoch: u64,
    },
}

/// Why a command was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The buffer ends inside a command.
    Truncated,
    /// Not [`COMMAND_MAGIC`].
    BadMagic,
    /// A version this code does not know.
    UnsupportedVersion(u8),
    /// An opcode this version does not define.
    UnknownOpcode(u8),
    /// The body length does not fit the opcode.
    BadLength,
    /// A reserved field is not zero.
    ReservedNotZero,
    /// Unknown flag bits.
    UnknownFlags(u32),
    /// A bad consistency-point label.
    BadLabel,
    /// `dev_seq` or `epoch` is zero.
    ZeroSequence,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("command truncated"),
            Self::BadMagic => f.write_str("bad command magic"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported command version {v}"),
            Self::UnknownOpcode(o) => write!(f, "unknown command opcode {o}"),
            Self::BadLength => f.write_str("bad command length"),
            Self::ReservedNotZero => f.write_str("reserved command field not zero"),
            Self::UnknownFlags(v) => write!(f, "unknown command flags {v:#x}"),
            Self::BadLabel => f.write_str("bad consistency-point label"),
            Self::ZeroSequence => f.write_str("sequence number zero"),
            Self::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

impl From<RecordError> for CommandError {
    fn from(_: RecordError) -> Self {
        Self::BadLabel
    }
}

impl Command {
    fn opcode(&self) -> u8 {
        match self {
            Self::AckLog { .. } => opcode::ACK_LOG,
            Self::Ack { .. } => opcode::ACK,
            Self::Spooled { .. } => opcode::SPOOLED,
            Self::Applied { .. } => opcode::APPLIED,
            Self::InsertCheckpoint => opcode::INSERT_CHECKPOINT,
            Self::InsertConsistencyPoint { .. } => opcode::INSERT_CONSISTENCY_POINT,
            Self::Start { .. } => opcode::START,
            Self::Stop => opcode::STOP,
            Self::ApplyBegin { .. } => opcode::APPLY_BEGIN,
            Self::ApplyEnd { .. } => opcode::APPLY_END,
        }
    }

    /// Encodes into `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, CommandError> {
        let body_len: u16 = match self {
            Self::AckLog { .. } | Self::Ack { .. } | Self::Spooled { .. } => 16,
            Self::Applied { .. }
            | Self::Start { .. }
            | Self::ApplyBegin { .. }
            | Self::ApplyEnd { .. } => 8,
            Self::InsertCheckpoint | Self::Stop => 0,
            Self::InsertConsistencyPoint { label } => {
                u16::try_from(label.as_bytes().len()).map_err(|_| CommandError::BadLabel)?
            }
        };
        let mut w = Writer::new(out);
        let r = (|| {
            w.put(&COMMAND_MAGIC)?;
            w.u8(COMMAND_VERSION)?;
            w.u8(self.opcode())?;
            w.u16(body_len)?;
            match self {
                Self::AckLog { device, dev_seq }
                | Self::Ack { device, dev_seq }
                | Self::Spooled { device, dev_seq } => {
                    w.u32(*device)?;
                    w.u32(0)?;
                    w.u64(*dev_seq)
                }
                Self::Applied { epoch } | Self::ApplyBegin { epoch } | Self::ApplyEnd { epoch } => {
                    w.u64(*epoch)
                }
                Self::Start { flags } => {
                    w.u32(*flags)?;
                    w.u32(0)
                }
                Self::InsertConsistencyPoint { label } => w.put(label.as_bytes()),
                Self::InsertCheckpoint | Self::Stop => Some(()),
            }
        })();
        r.ok_or(CommandError::BufferTooSmall)?;
        Ok(w.pos())
    }

    /// Decodes the command at the start of `buf`; returns it and the number
    /// of bytes it occupies (the next command, if any, starts there).
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), CommandError> {
        let t = CommandError::Truncated;
        let mut r = Reader::new(buf);
        if r.bytes4().ok_or(t)? != COMMAND_MAGIC {
            return Err(CommandError::BadMagic);
        }
        let version = r.u8().ok_or(t)?;
        if version != COMMAND_VERSION {
            return Err(CommandError::UnsupportedVersion(version));
        }
        let op = r.u8().ok_or(t)?;
        let body_len = usize::from(r.u16().ok_or(t)?);
        let body = r.take(body_len).ok_or(t)?;
        let mut b = Reader::new(body);
        let fixed = |n: usize| {
            if body_len == n {
                Ok(())
            } else {
                Err(CommandError::BadLength)
            }
        };
        let cmd = match op {
            opcode::ACK_LOG | opcode::ACK | opcode::SPOOLED => {
                fixed(16)?;
                let device = b.u32().ok_or(t)?;
                if b.u32().ok_or(t)? != 0 {
                    return Err(CommandError::ReservedNotZero);
                }
                let dev_seq = b.u64().ok_or(t)?;
                if dev_seq == 0 {
                    return Err(CommandError::ZeroSequence);
                }
                match op {
                    opcode::ACK_LOG => Self::AckLog { device, dev_seq },
                    opcode::ACK => Self::Ack { device, dev_seq },
                    _ => Self::Spooled { device, dev_seq },
                }
            }
            opcode::APPLIED | opcode::APPLY_BEGIN | opcode::APPLY_END => {
                fixed(8)?;
                let epoch = b.u64().ok_or(t)?;
                if epoch == 0 {
                    return Err(CommandError::ZeroSequence);
                }
                match op {
                    opcode::APPLIED => Self::Applied { epoch },
                    opcode::APPLY_BEGIN => Self::ApplyBegin { epoch },
                    _ => Self::ApplyEnd { epoch },
                }
            }
            opcode::INSERT_CHECKPOINT => {
                fixed(0)?;
                Self::InsertCheckpoint
            }
            opcode::INSERT_CONSISTENCY_POINT => {
                if body_len == 0 || body_len > crate::record::LABEL_MAX {
                    return Err(CommandError::BadLength);
                }
                Self::InsertConsistencyPoint {
                    label: Label::new(body)?,
                }
            }
            opcode::START => {
                fixed(8)?;
                let flags = b.u32().ok_or(t)?;
                if flags & !start_flags::KNOWN != 0 {
                    return Err(CommandError::UnknownFlags(flags));
                }
                if b.u32().ok_or(t)? != 0 {
                    return Err(CommandError::ReservedNotZero);
                }
                Self::Start { flags }
            }
            opcode::STOP => {
                fixed(0)?;
                Self::Stop
            }
            other => return Err(CommandError::UnknownOpcode(other)),
        };
        Ok((cmd, COMMAND_HEADER_LEN + body_len))
    }
}

/// Iterates over the commands of one `write(2)` buffer; stops at the first
/// error (the kernel rejects the whole write then).
#[derive(Clone, Debug)]
pub struct Commands<'a> {
    rest: &'a [u8],
}

impl<'a> Commands<'a> {
    /// Commands in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }
}

impl Iterator for Commands<'_> {
    type Item = Result<Command, CommandError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match Command::decode(self.rest) {
            Ok((c, n)) => {
                self.rest = self.rest.get(n..).unwrap_or(&[]);
                Some(Ok(c))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn all() -> [Command; 10] {
        [
            Command::AckLog {
                device: 1,
                dev_seq: 10,
            },
            Command::Ack {
                device: 2,
                dev_seq: u64::MAX,
            },
            Command::Applied { epoch: 3 },
            Command::InsertCheckpoint,
            Command::InsertConsistencyPoint {
                label: Label::new(b"before-upgrade").unwrap(),
            },
            Command::Start {
                flags: start_flags::FULL_RESYNC,
            },
            Command::Stop,
            Command::ApplyBegin { epoch: 4 },
            Command::ApplyEnd { epoch: 4 },
            Command::Spooled {
                device: 3,
                dev_seq: 77,
            },
        ]
    }

    #[test]
    fn roundtrip_and_stream() {
        let mut buf = [0u8; 512];
        let mut n = 0;
        for c in all() {
            let k = c.encode(&mut buf[n..]).unwrap();
            assert_eq!(Command::decode(&buf[n..n + k]), Ok((c, k)));
            for cut in 0..k {
                assert!(Command::decode(&buf[n..n + cut]).is_err());
            }
            n += k;
        }
        let got: [Command; 10] = {
            let mut it = Commands::new(&buf[..n]).map(Result::unwrap);
            core::array::from_fn(|_| it.next().unwrap())
        };
        assert_eq!(got, all());
    }

    #[test]
    fn malformed() {
        let mut buf = [0u8; 64];
        let n = Command::Start { flags: 0 }.encode(&mut buf).unwrap();
        let mut b = buf;
        b[0] = 0;
        assert_eq!(Command::decode(&b[..n]), Err(CommandError::BadMagic));
        let mut b = buf;
        b[4] = 9;
        assert_eq!(
            Command::decode(&b[..n]),
            Err(CommandError::UnsupportedVersion(9))
        );
        let mut b = buf;
        b[5] = 99;
        assert_eq!(
            Command::decode(&b[..n]),
            Err(CommandError::UnknownOpcode(99))
        );
        let mut b = buf;
        b[8] = 0x80;
        assert_eq!(
            Command::decode(&b[..n]),
            Err(CommandError::UnknownFlags(0x80))
        );
        let mut b = buf;
        b[12] = 1;
        assert_eq!(Command::decode(&b[..n]), Err(CommandError::ReservedNotZero));
        let mut b = buf;
        b[6] = 9;
        assert_eq!(Command::decode(&b[..17]), Err(CommandError::BadLength));
        let n = Command::Ack {
            device: 0,
            dev_seq: 1,
        }
        .encode(&mut buf)
        .unwrap();
        buf[16..24].fill(0);
        assert_eq!(Command::decode(&buf[..n]), Err(CommandError::ZeroSequence));
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&COMMAND_MAGIC);
        b[4] = 1;
        b[5] = opcode::INSERT_CONSISTENCY_POINT;
        b[6] = 3;
        b[8..11].copy_from_slice(b"a\0b");
        assert_eq!(Command::decode(&b[..11]), Err(CommandError::BadLabel));
    }
}
