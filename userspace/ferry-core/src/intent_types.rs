//! The answers a [`WriteIntent`](super::WriteIntent) gives: its errors,
//! the generation a record counts in, what the spool had room for, a
//! write's admission and a sweep's outcome.

/// Why a [`WriteIntent`] could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntentError {
    /// The storage is smaller than [`storage_words`].
    StorageTooSmall,
    /// The chunk shift is above [`MAX_CHUNK_SHIFT`].
    BadChunkShift,
}

impl core::fmt::Display for IntentError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::StorageTooSmall => f.write_str("write-intent storage too small"),
            Self::BadChunkShift => f.write_str("bad write-intent chunk size"),
        }
    }
}

/// The touch generation a record counts in, or none (a record with no
/// chunk, a write the spool did not take).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gen(u8);

impl Gen {
    /// No generation.
    pub const NONE: Self = Self(2);

    pub(super) fn index(self) -> Option<usize> {
        (self.0 < 2).then_some(self.0 as usize)
    }

    pub(super) fn of(i: usize) -> Self {
        Self(u8::from(i != 0))
    }
}

/// What the spool did with a write on one admission pass (rule 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// The spool took it: the write becomes a record.
    Spool,
    /// The spool is full and the writer waits for room, then comes back.
    Wait,
    /// No record: the write is tracked in the bitmap only.
    Bitmap,
}

/// What one admission pass decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The write must wait until its chunks are durable (rule 2).
    pub defer: bool,
    /// The generation its record counts in ([`Gen::NONE`] unless
    /// [`Room::Spool`] and the write has sectors).
    pub gen: Gen,
}

/// What a sweep did (rule 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// A record of a closing generation is outstanding: nothing changed.
    Waiting,
    /// The generation closed; `cleared`: some durable bit was cleared
    /// (pages to write with [`WriteIntent::sweep_page`]).
    Swept {
        /// Some durable bit was cleared.
        cleared: bool,
    },
}

impl Sweep {
    /// Whether some durable bit was cleared.
    pub fn cleared(self) -> bool {
        matches!(self, Self::Swept { cleared: true })
    }
}
