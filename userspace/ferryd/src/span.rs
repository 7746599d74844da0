//! The secondary's resync spans, as `ferryd` runs them: ferry-core's
//! [`Span`] (`ferry_core::resync`, "The secondary";
//! `Documentation/protocol.rst`, "Resync") around the intervals the apply
//! loop takes.
//!
//! * **Staged, then batched.**  The apply loop takes whole intervals from
//!   the streams' windows, oldest first.  Each one's records are *staged*
//!   here ([`Spans::stage`]), and the `RESYNC_BEGIN` and `RESYNC_END`
//!   flags of its checkpoint markers move the span ([`Spans::interval`]).
//!   When a batch may end with the interval ([`Span::batch_may_end`]),
//!   everything staged joins the batch ([`Spans::drain`]); inside a span
//!   it stays staged.  So the intervals after the one closed by
//!   `RESYNC_BEGIN`, up to the one closed by `RESYNC_END`, are applied as
//!   one batch, under one apply mark, and a batch never ends inside a
//!   span.  A `RESYNC_BEGIN` inside the open span (a primary that
//!   restarted mid-resync) continues it.
//! * **A span ends its batch.**  The interval that ends a span is the last
//!   of its batch; once the batch is applied, [`Spans::applied`] closes the
//!   span, before a later interval may open the next one.
//! * **Not applied when promoted.**  A release while a span is open lets
//!   the device go with what the span staged not applied: the image stays
//!   at the last interval applied, the primary's image before the resync
//!   began ([`Spans::staged`] says how much was dropped).
//! * **After a restart** the span is derived from the remote log
//!   ([`Spans::recover`]), not saved in `state.json`.  `state.json` is
//!   written after the kernel's `APPLY_END`, so a crash between the two
//!   leaves it one batch behind the kernel's mark: a span saved there
//!   could say open when the kernel applied its end (every later interval
//!   would then be staged for ever), or closed when the kernel applied the
//!   interval whose marker opened it (the span's intervals would be
//!   applied one by one).  The remote log cannot disagree with what was
//!   applied: at start, the flags of the markers of every interval up to
//!   the kernel's last applied one are replayed from the saved positions
//!   on.  For the marker that opened an open span to be there to read,
//!   the positions saved while a span is open stay at each stream's
//!   marker of the interval that opened it ([`Spans::hold`]): what the
//!   remote log releases is never the start of an open span.  (Staged
//!   records are not applied, so they are above the saved positions and
//!   come back into the windows at a restart, to be staged again.)
//! * **No consistent point before the initial copy.**  A span whose
//!   first markers carry `RESYNC_INITIAL` is the initial full copy: the
//!   primary's `ferryd` asks for it (`START` with `FULL_RESYNC` and
//!   `INITIAL`) when every stream's secondary held nothing of the group
//!   when it was welcomed, so the secondary's devices held their own
//!   content, not the primary's.  Taking that interval
//!   ([`begins_inconsistent`]) leaves the secondary *inconsistent* (DRBD's
//!   *Inconsistent*): whatever it applied before (intervals written since
//!   the group was made) landed on unrelated content, and nothing but the
//!   whole span makes its devices a point of the primary's past.  A full
//!   copy asked for otherwise (`ferryctl resync --full`) carries no such
//!   flag: the secondary keeps its last interval applied as the consistent
//!   point (a release drops the staged span).  The flag is saved in
//!   `state.json` (`inconsistent`, written only while set) and replayed at
//!   a restart with the spans: the intervals the kernel applied past the
//!   saved state (one batch at most) set it or clear it as the apply loop
//!   did ([`Spans::recover`]), so a crash after the kernel applied the
//!   span's end and before `state.json` was saved starts consistent.

use ferry_core::record::Flags;
use ferry_core::resync::{ResyncError, Span};
use tracing::warn;

/// The interval whose `RESYNC_BEGIN` opened the open span, and each
/// stream's marker of it: its offset in the stream's file (by stream
/// index; `None`: no marker of that stream taken).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Opened {
    epoch: u64,
    markers: Vec<Option<u64>>,
}

/// What taking an interval came to ([`Spans::interval`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Inside an open span: its records stay staged.
    Staged,
    /// A batch may end with it: what is staged joins the batch.
    /// `span_end`: it ends a span, and ends its batch.
    Batch { span_end: bool },
}

/// How much is staged: whole intervals of an open span taken and not
/// applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Staged {
    pub(crate) intervals: u64,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
}

/// What [`Spans::drain`] hands to a batch.
#[derive(Debug)]
pub(crate) struct Drained<T> {
    pub(crate) items: Vec<T>,
    pub(crate) intervals: u64,
    pub(crate) bytes: u64,
}

/// The rule of *inconsistent*: whether taking an interval whose markers
/// carry `flags` (the union of its streams') leaves the secondary with no
/// consistent point.  Only the first markers of the initial copy's span
/// (`RESYNC_BEGIN` with `RESYNC_INITIAL`) do: the secondary's devices held
/// their own content, and nothing but the whole span makes them a point of
/// the primary's past.
pub(crate) fn begins_inconsistent(flags: u8) -> bool {
    let f = Flags(flags);
    f.has(Flags::RESYNC_BEGIN) && f.has(Flags::RESYNC_INITIAL)
}

/// The secondary's spans and the records staged in them (`T`: what the
/// apply loop keeps of a record).
#[derive(Debug)]
pub(crate) struct Spans<T> {
    /// With the flags of every interval taken.
    span: Span,
    /// Where the open span began; `None` while none is open.
    opened: Option<Opened>,
    staged: Vec<T>,
    intervals: u64,
    bytes: u64,
    /// Spans this process applied whole.
    spans_applied: u64,
    /// The open span began (or went on) as the initial copy:
    /// `RESYNC_INITIAL`.
    initial: bool,
    /// No consistent point: the initial copy's span is not applied whole
    /// yet.
    inconsistent: bool,
}

impl<T> Default for Spans<T> {
    fn default() -> Self {
        Self {
            span: Span::new(),
            opened: None,
            staged: Vec::new(),
            intervals: 0,
            bytes: 0,
            spans_applied: 0,
            initial: false,
            inconsistent: false,
        }
    }
}

impl<T> Spans<T> {
    /// The spans as the remote log tells them after a restart, the
    /// intervals up to `applied` applied: `markers` are the checkpoint
    /// markers read from the saved positions on, `(epoch, stream index,
    /// flags, offset in the stream's file)`, of `streams` streams.  Their
    /// flags are replayed in the order of the intervals, as the apply loop
    /// took them; those of intervals above `applied` are not (the apply
    /// loop takes them again).  `inconsistent`: as `state.json` saved it.
    pub(crate) fn recover(
        streams: usize,
        applied: u64,
        markers: impl IntoIterator<Item = (u64, usize, u8, u64)>,
        inconsistent: bool,
    ) -> Self {
        let mut by_epoch = std::collections::BTreeMap::new();
        for (epoch, i, flags, off) in markers {
            if epoch > applied || i >= streams {
                continue;
            }
            let (f, m) = by_epoch
                .entry(epoch)
                .or_insert_with(|| (0u8, vec![None; streams]));
            *f |= flags;
            m[i] = Some(off);
        }
        let mut s = Self {
            inconsistent,
            ..Self::default()
        };
        for (epoch, (flags, markers)) in by_epoch {
            match s.flags(epoch, flags, markers) {
                // Applied: a span that ended by then is closed.
                Ok(_) => s.applied(epoch),
                Err(e) => warn!(epoch, "resync span in the remote log: RESYNC_END: {e:?}"),
            }
        }
        s.spans_applied = 0;
        s
    }

    /// The flags of the markers of interval `epoch` (`markers`: each
    /// stream's, by index) move the span; whether it ended with `epoch`.
    fn flags(
        &mut self,
        epoch: u64,
        flags: u8,
        markers: Vec<Option<u64>>,
    ) -> Result<bool, ResyncError> {
        if Flags(flags).has(Flags::RESYNC_BEGIN) {
            let was_open = self.span.is_open();
            self.span.begin(epoch);
            if !was_open && self.span.is_open() {
                self.opened = Some(Opened { epoch, markers });
            }
            if self.span.is_open() && Flags(flags).has(Flags::RESYNC_INITIAL) {
                self.initial = true;
            }
            if begins_inconsistent(flags) {
                self.inconsistent = true;
            }
        }
        if Flags(flags).has(Flags::RESYNC_END) {
            self.span.end(epoch)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A record of the interval being taken, of `bytes` bytes.
    pub(crate) fn stage(&mut self, item: T, bytes: u64) {
        self.staged.push(item);
        self.bytes += bytes;
    }

    /// Interval `epoch` is taken whole (its records staged), its markers
    /// flagged `flags` (the union of its streams'), each stream's at
    /// `markers` (offsets, by stream index).  A `RESYNC_END` that ends no
    /// open span is an error: nothing of it may be applied as if it did.
    pub(crate) fn interval(
        &mut self,
        epoch: u64,
        flags: u8,
        markers: Vec<Option<u64>>,
    ) -> Result<Step, ResyncError> {
        self.intervals += 1;
        let span_end = self.flags(epoch, flags, markers)?;
        Ok(if self.span.batch_may_end(epoch) {
            Step::Batch { span_end }
        } else {
            Step::Staged
        })
    }

    /// Everything staged, for the batch that ends with the interval taken
    /// last.
    pub(crate) fn drain(&mut self) -> Drained<T> {
        let d = Drained {
            items: std::mem::take(&mut self.staged),
            intervals: self.intervals,
            bytes: self.bytes,
        };
        (self.intervals, self.bytes) = (0, 0);
        d
    }

    /// The batch that ends with interval `epoch` is applied: a span that
    /// ended by then is closed; one that began as the initial copy leaves the
    /// secondary consistent.
    pub(crate) fn applied(&mut self, epoch: u64) {
        let was_open = self.span.is_open();
        self.span.applied(epoch);
        if !self.span.is_open() {
            self.opened = None;
            if was_open {
                self.spans_applied += 1;
                if std::mem::take(&mut self.initial) {
                    self.inconsistent = false;
                }
            }
        }
    }

    /// Whether the secondary has no consistent point: the initial copy's
    /// span is not applied whole yet
    /// ([`begins_inconsistent`]).
    pub(crate) fn inconsistent(&self) -> bool {
        self.inconsistent
    }

    /// Whether a span is open (begun, not applied yet).
    pub(crate) fn is_open(&self) -> bool {
        self.span.is_open()
    }

    /// While a span is open: the interval that opened it, and each
    /// stream's marker of it (offset in the stream's file, by stream
    /// index), at or below which the saved positions stay.
    pub(crate) fn hold(&self) -> Option<(u64, &[Option<u64>])> {
        self.opened
            .as_ref()
            .filter(|_| self.span.is_open())
            .map(|o| (o.epoch, o.markers.as_slice()))
    }

    /// Whole intervals taken and not in a batch yet (inside the open
    /// span).
    pub(crate) fn staged(&self) -> Staged {
        Staged {
            intervals: self.intervals,
            records: self.staged.len() as u64,
            bytes: self.bytes,
        }
    }

    /// Spans this process applied whole.
    pub(crate) fn spans_applied(&self) -> u64 {
        self.spans_applied
    }
}

#[cfg(test)]
#[path = "span_tests.rs"]
mod tests;
