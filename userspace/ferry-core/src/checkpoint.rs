//! Checkpoint intervals: the rendezvous of markers across streams and the
//! atomic apply of an interval at the secondary (G4).
//!
//! The primary inserts a checkpoint record into every member stream at the
//! same point of the group order; the records before the markers of epoch
//! `E` (and after those of `E - 1`) form interval `E`. At the secondary an
//! interval is complete when every member stream has delivered its marker
//! ([`Rendezvous`]); a stream whose device leaves the group resigns and is no
//! longer waited for.
//!
//! An interval is applied under an update-in-progress mark
//! ([`IntervalApply`]): `idle -> in_progress(E)` is persisted ([`ApplyMark`])
//! before the first write of `E` is submitted, `in_progress(E) -> idle` after
//! the last one is durable. Host reads wait while an interval is in
//! progress. After a crash the mark says which interval to redo from the
//! remote log; redoing a whole interval in group order is idempotent.
//!
//! # The secondary's apply, as the kernel runs it
//!
//! The secondary-mode target keeps one [`IntervalApply`] per group and one
//! [`ReadHold`]; it does the I/O (marks on every member's meta device,
//! records on the data devices, flushes) and these types decide:
//!
//! 1. **The mark on a device.**  Each meta device holds the mark twice,
//!    copy A then copy B; the first copy that decodes is the device's mark,
//!    and a device with neither was never applied to: idle at interval 0
//!    ([`ApplyMark::first_valid`]).
//! 2. **The group's mark.**  The members' marks merge
//!    ([`ApplyMark::merge`], in any order): an interval in progress on any
//!    device is in progress for the group (the highest such interval,
//!    redone, after the lowest interval applied among the marks naming
//!    it); otherwise the highest interval applied.  A group whose mark is
//!    in progress holds host reads from the start
//!    ([`IntervalApply::recover`]).
//! 3. **`APPLY_BEGIN e`** ([`IntervalApply::begin_or_redo`]): idle, it
//!    opens the intervals after the last applied one up to `e`, applied as
//!    one (refused unless `e` is above the last applied interval), and the
//!    mark must be durable before any record of them is written.  The
//!    interval already in progress is begun again (a redo after a crash)
//!    and its mark written again: a member whose copies a crash left old
//!    or torn carries it too, so that every member names the interval in
//!    progress until it ends, whichever of them join first.  Another
//!    interval in progress is refused ([`CheckpointError::BadState`],
//!    `-EBUSY`).  The caller changes its state only once the mark is
//!    durable.
//! 4. **A record** ([`IntervalApply::admits`]) is applied only while
//!    intervals are open, and only if its epoch is one of them (after the
//!    last applied, at most the one begun).  Where it goes is checked
//!    before any arithmetic with its numbers ([`place`]): a write, discard
//!    or write-zeroes must lie inside the device; a flush or a marker
//!    places nothing.
//! 5. **`APPLY_END e`** ([`IntervalApply::finish`]): only the interval in
//!    progress; its records are durable (the caller flushes) before the
//!    idle mark, which records `e` as applied, is written.
//! 6. **Host reads** ([`ReadHold`]) go at once while no interval is being
//!    applied, and are held otherwise; an interval begins writing only once
//!    the reads already submitted have completed, and its end lets the
//!    held reads go.

use core::fmt;

use crate::bytes::{get_u32, set_u32, Reader, Writer};
use crate::digest::{crc32c, Digest};
use crate::select::Stamp;

/// Largest number of streams a group may have (one bit each).
pub const MAX_STREAMS: u32 = 64;

/// Why a checkpoint operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointError {
    /// Stream index of 64 or more.
    BadStream,
    /// Epoch too far ahead of the oldest open interval.
    OutOfWindow,
    /// The rendezvous has no storage.
    NoStorage,
    /// Operation not allowed in the current apply state.
    BadState,
    /// Epoch not after the last applied one, or not the one in progress.
    BadEpoch,
    /// Encoded mark: truncated.
    Truncated,
    /// Encoded mark: bad magic, version, state or reserved field.
    Malformed,
    /// Encoded mark: checksum mismatch.
    Checksum,
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadStream => "stream index out of range",
            Self::OutOfWindow => "checkpoint epoch beyond window",
            Self::NoStorage => "rendezvous without storage",
            Self::BadState => "not allowed in this apply state",
            Self::BadEpoch => "unexpected checkpoint epoch",
            Self::Truncated => "apply mark truncated",
            Self::Malformed => "malformed apply mark",
            Self::Checksum => "apply mark checksum mismatch",
        })
    }
}

/// Markers received for one open interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntervalSlot {
    /// Streams whose marker arrived.
    pub received: u64,
    /// Latest stamp among those markers.
    pub max_stamp: Stamp,
}

/// Outcome of [`Rendezvous::marker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerStatus {
    /// Recorded; `complete` tells whether every member has now delivered.
    Recorded {
        /// Every member stream's marker has arrived.
        complete: bool,
    },
    /// Already recorded.
    Duplicate,
    /// The interval is already retired.
    Stale,
}

/// Rendezvous of checkpoint markers over a window of open intervals held in
/// caller storage (`[IntervalSlot; N]`).
#[derive(Clone, Debug)]
pub struct Rendezvous<S> {
    slots: S,
    base: u64,
    head: usize,
    members: u64,
}

fn bit(stream: u32) -> Result<u64, CheckpointError> {
    if stream >= MAX_STREAMS {
        Err(CheckpointError::BadStream)
    } else {
        Ok(1u64 << stream)
    }
}

impl<S: AsRef<[IntervalSlot]> + AsMut<[IntervalSlot]>> Rendezvous<S> {
    /// A rendezvous whose oldest open interval is `first_epoch`, with
    /// member streams `members` (bit `i` = stream `i`).
    pub fn new(mut slots: S, first_epoch: u64, members: u64) -> Self {
        slots
            .as_mut()
            .iter_mut()
            .for_each(|s| *s = IntervalSlot::default());
        Self {
            slots,
            base: first_epoch,
            head: 0,
            members,
        }
    }

    fn index(&self, epoch: u64) -> Result<usize, CheckpointError> {
        let cap = self.slots.as_ref().len();
        if cap == 0 {
            return Err(CheckpointError::NoStorage);
        }
        let off = epoch
            .checked_sub(self.base)
            .ok_or(CheckpointError::BadEpoch)?;
        if off >= cap as u64 {
            return Err(CheckpointError::OutOfWindow);
        }
        let off = usize::try_from(off).map_err(|_| CheckpointError::OutOfWindow)?;
        Ok((self.head + off) % cap)
    }

    /// Oldest open interval.
    pub fn oldest(&self) -> u64 {
        self.base
    }

    /// Member streams.
    pub fn members(&self) -> u64 {
        self.members
    }

    /// Records that `stream` delivered its marker for `epoch` with `stamp`.
    pub fn marker(
        &mut self,
        stream: u32,
        epoch: u64,
        stamp: Stamp,
    ) -> Result<MarkerStatus, CheckpointError> {
        let b = bit(stream)?;
        if epoch < self.base {
            return Ok(MarkerStatus::Stale);
        }
        let i = self.index(epoch)?;
        let members = self.members;
        let slot = self
            .slots
            .as_mut()
            .get_mut(i)
            .ok_or(CheckpointError::NoStorage)?;
        if slot.received & b != 0 {
            return Ok(MarkerStatus::Duplicate);
        }
        slot.received |= b;
        slot.max_stamp = slot.max_stamp.max(stamp);
        Ok(MarkerStatus::Recorded {
            complete: slot.received & members == members,
        })
    }

    /// Whether every member stream delivered its marker for `epoch`.
    pub fn is_complete(&self, epoch: u64) -> bool {
        if epoch < self.base {
            return true;
        }
        self.index(epoch)
            .ok()
            .and_then(|i| self.slots.as_ref().get(i))
            .is_some_and(|s| s.received & self.members == self.members)
    }

    /// The oldest open interval and the latest stamp of its markers, if it
    /// is complete and that stamp is at or below `limit`: every record of
    /// the interval has then arrived and it may be applied (its records are
    /// those at or below the returned stamp).
    pub fn ready(&self, limit: Stamp) -> Option<(u64, Stamp)> {
        let slot = self.slots.as_ref().get(self.head)?;
        (slot.received & self.members == self.members && slot.max_stamp <= limit)
            .then_some((self.base, slot.max_stamp))
    }

    /// Closes the oldest interval once applied.
    pub fn retire(&mut self, epoch: u64) -> Result<(), CheckpointError> {
        if epoch != self.base {
            return Err(CheckpointError::BadEpoch);
        }
        let cap = self.slots.as_ref().len();
        let head = self.head;
        let slot = self
            .slots
            .as_mut()
            .get_mut(head)
            .ok_or(CheckpointError::NoStorage)?;
        *slot = IntervalSlot::default();
        self.head = (self.head + 1) % cap;
        self.base += 1;
        Ok(())
    }

    /// Restarts at `first_epoch` with nothing received (after a resync).
    pub fn reset(&mut self, first_epoch: u64) {
        self.slots
            .as_mut()
            .iter_mut()
            .for_each(|s| *s = IntervalSlot::default());
        self.base = first_epoch;
        self.head = 0;
    }

    /// `stream` leaves the group: it is no longer waited for.
    pub fn resign(&mut self, stream: u32) -> Result<(), CheckpointError> {
        self.members &= !bit(stream)?;
        Ok(())
    }

    /// `stream` joins the group from the next open interval on.
    pub fn join(&mut self, stream: u32) -> Result<(), CheckpointError> {
        self.members |= bit(stream)?;
        Ok(())
    }
}

/// State of the interval apply at the secondary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyState {
    /// No interval being applied; host reads allowed.
    Idle,
    /// Interval `epoch` is being applied; host reads wait.
    InProgress {
        /// The interval.
        epoch: u64,
    },
}

/// What the secondary persists about the apply (the update-in-progress
/// mark): written before an interval's first write and after its last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyMark {
    /// The state.
    pub state: ApplyState,
    /// Last interval applied completely.
    pub applied: u64,
}

/// First four bytes of an encoded [`ApplyMark`].
pub const APPLY_MARK_MAGIC: [u8; 4] = *b"FUIP";
/// Encoded size of an [`ApplyMark`].
pub const APPLY_MARK_LEN: usize = 32;

impl ApplyMark {
    /// Encodes into a 32-byte block: magic, version u16 (1), state u8 (0 idle,
    /// 1 in progress), reserved u8, epoch u64 (0 when idle), applied u64,
    /// reserved u32, CRC-32C of bytes 0..28.
    pub fn encode<D: Digest + ?Sized>(&self, digest: &D, out: &mut [u8; APPLY_MARK_LEN]) {
        let (state, epoch) = match self.state {
            ApplyState::Idle => (0u8, 0u64),
            ApplyState::InProgress { epoch } => (1, epoch),
        };
        let mut w = Writer::new(out);
        let _ = (|| {
            w.put(&APPLY_MARK_MAGIC)?;
            w.u16(1)?;
            w.u8(state)?;
            w.u8(0)?;
            w.u64(epoch)?;
            w.u64(self.applied)?;
            w.u32(0)
        })();
        let crc = crc32c(digest, &out[..28]);
        set_u32(out, 28, crc);
    }

    /// The mark of a device whose copies (A first) decode as `copies`
    /// (`None`: the copy does not check), read lazily: the first one that
    /// checks, or idle at interval 0 when none does (rule 1).
    pub fn first_valid<E>(
        copies: impl IntoIterator<Item = Result<Option<Self>, E>>,
    ) -> Result<Self, E> {
        for c in copies {
            if let Some(m) = c? {
                return Ok(m);
            }
        }
        Ok(IntervalApply::new(0).mark())
    }

    /// The group's mark from this one and another member's (rule 2).
    pub fn merge(self, other: Self) -> Self {
        match (self.state, other.state) {
            (ApplyState::InProgress { epoch: a }, ApplyState::InProgress { epoch: b }) => {
                // On a tie the lower `applied` (which opens the more
                // intervals to redo), so that the group's mark does not
                // depend on the order the members are read in.
                if (b, self.applied) > (a, other.applied) {
                    other
                } else {
                    self
                }
            }
            (ApplyState::InProgress { .. }, ApplyState::Idle) => self,
            (ApplyState::Idle, ApplyState::InProgress { .. }) => other,
            (ApplyState::Idle, ApplyState::Idle) => {
                if other.applied > self.applied {
                    other
                } else {
                    self
                }
            }
        }
    }

    /// Decodes and checks an encoded mark.
    pub fn decode<D: Digest + ?Sized>(buf: &[u8], digest: &D) -> Result<Self, CheckpointError> {
        let t = CheckpointError::Truncated;
        let b = buf.get(..APPLY_MARK_LEN).ok_or(t)?;
        let mut r = Reader::new(b);
        if r.bytes4().ok_or(t)? != APPLY_MARK_MAGIC || r.u16().ok_or(t)? != 1 {
            return Err(CheckpointError::Malformed);
        }
        if crc32c(digest, b.get(..28).ok_or(t)?) != get_u32(b, 28) {
            return Err(CheckpointError::Checksum);
        }
        let state = r.u8().ok_or(t)?;
        let reserved = r.u8().ok_or(t)?;
        let epoch = r.u64().ok_or(t)?;
        let applied = r.u64().ok_or(t)?;
        let reserved2 = r.u32().ok_or(t)?;
        if reserved != 0 || reserved2 != 0 {
            return Err(CheckpointError::Malformed);
        }
        let state = match (state, epoch) {
            (0, 0) => ApplyState::Idle,
            (1, e) if e > applied => ApplyState::InProgress { epoch: e },
            _ => return Err(CheckpointError::Malformed),
        };
        Ok(Self { state, applied })
    }
}

/// The interval apply state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntervalApply {
    mark: ApplyMark,
}

impl IntervalApply {
    /// A secondary that has applied every interval up to `applied`.
    pub const fn new(applied: u64) -> Self {
        Self {
            mark: ApplyMark {
                state: ApplyState::Idle,
                applied,
            },
        }
    }

    /// Restores the state from the persisted mark after a restart; returns
    /// the interval to redo from the remote log, if one was in progress.
    /// The state stays `InProgress` (reads wait) until [`finish`](Self::finish).
    pub const fn recover(mark: ApplyMark) -> (Self, Option<u64>) {
        let redo = match mark.state {
            ApplyState::Idle => None,
            ApplyState::InProgress { epoch } => Some(epoch),
        };
        (Self { mark }, redo)
    }

    /// `idle -> in_progress(epoch)`. The returned mark must be durable
    /// before the first write of the interval is submitted.
    pub fn begin(&mut self, epoch: u64) -> Result<ApplyMark, CheckpointError> {
        if self.mark.state != ApplyState::Idle {
            return Err(CheckpointError::BadState);
        }
        if epoch <= self.mark.applied {
            return Err(CheckpointError::BadEpoch);
        }
        self.mark.state = ApplyState::InProgress { epoch };
        Ok(self.mark)
    }

    /// `APPLY_BEGIN epoch` (rule 3): the mark to make durable on every
    /// member before the first record, also when `epoch` is already in
    /// progress (a redo).  `BadState` while another interval is in
    /// progress, `BadEpoch` for an interval already applied.
    pub fn begin_or_redo(&mut self, epoch: u64) -> Result<ApplyMark, CheckpointError> {
        match self.mark.state {
            ApplyState::InProgress { epoch: e } if e == epoch => Ok(self.mark),
            ApplyState::InProgress { .. } => Err(CheckpointError::BadState),
            ApplyState::Idle => self.begin(epoch),
        }
    }

    /// Whether a record of interval `epoch` may be applied now (rule 4).
    pub fn admits(&self, epoch: u64) -> bool {
        match self.mark.state {
            ApplyState::InProgress { epoch: e } => epoch > self.mark.applied && epoch <= e,
            ApplyState::Idle => false,
        }
    }

    /// `in_progress(epoch) -> idle`, once every write of the interval is
    /// durable. The returned mark must then be persisted; host reads may
    /// resume after that.
    pub fn finish(&mut self, epoch: u64) -> Result<ApplyMark, CheckpointError> {
        if self.mark.state != (ApplyState::InProgress { epoch }) {
            return Err(CheckpointError::BadState);
        }
        self.mark = ApplyMark {
            state: ApplyState::Idle,
            applied: epoch,
        };
        Ok(self.mark)
    }

    /// Current state.
    pub const fn state(&self) -> ApplyState {
        self.mark.state
    }

    /// Last interval applied completely.
    pub const fn applied(&self) -> u64 {
        self.mark.applied
    }

    /// The mark as it stands.
    pub const fn mark(&self) -> ApplyMark {
        self.mark
    }

    /// Whether a host read may proceed now (no interval in progress).
    pub fn may_read(&self) -> bool {
        self.mark.state == ApplyState::Idle
    }
}

/// Why a record cannot be placed on its device (rule 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfDevice;

impl fmt::Display for OutOfDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("record outside its device")
    }
}

/// Where a record of `kind` for `nr_sectors` at `sector` is written on a
/// device of `len_sectors` that starts at `offset` sectors of its data
/// device: `Some(sector)` there, `None` for a record that places nothing
/// (a flush, a marker).  Every number is checked before it is added
/// (rule 4).
pub fn place(
    kind: crate::record::RecordKind,
    sector: u64,
    nr_sectors: u32,
    len_sectors: u64,
    offset: u64,
) -> Result<Option<u64>, OutOfDevice> {
    use crate::record::RecordKind;
    match kind {
        RecordKind::Write | RecordKind::Discard | RecordKind::WriteZeroes => sector
            .checked_add(u64::from(nr_sectors))
            .filter(|&end| end <= len_sectors)
            .and_then(|_| offset.checked_add(sector))
            .map(Some)
            .ok_or(OutOfDevice),
        RecordKind::Flush | RecordKind::Checkpoint | RecordKind::ConsistencyPoint => Ok(None),
    }
}

/// Host reads of a secondary (rule 6): whether they go, and when an
/// interval may start writing.  The caller keeps the reads it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadHold {
    applying: bool,
    submitted: u64,
}

impl ReadHold {
    /// Reads go (no interval in progress) or are held from the start.
    pub const fn new(applying: bool) -> Self {
        Self {
            applying,
            submitted: 0,
        }
    }

    /// A host read arrives: `true` if it goes now (it is counted until
    /// [`ReadHold::done`]), `false` if it is held.
    pub fn read(&mut self) -> bool {
        if self.applying {
            return false;
        }
        self.submitted += 1;
        true
    }

    /// A held read is let go (counted until [`ReadHold::done`]).
    pub fn release(&mut self) {
        self.submitted += 1;
    }

    /// A submitted read completed: `true` when none is left.
    pub fn done(&mut self) -> bool {
        self.submitted = self.submitted.saturating_sub(1);
        self.submitted == 0
    }

    /// An interval begins: reads are held from now on.
    pub fn hold(&mut self) {
        self.applying = true;
    }

    /// Whether the interval may write: no read it did not hold is still
    /// in flight.
    pub fn quiet(&self) -> bool {
        self.submitted == 0
    }

    /// The interval ended: reads go again (the caller lets the held ones
    /// go, each with [`ReadHold::release`]).
    pub fn end(&mut self) {
        self.applying = false;
    }

    /// Whether reads are held.
    pub fn holding(&self) -> bool {
        self.applying
    }
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
