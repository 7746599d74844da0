//! A device stream on the primary: its numbering, its queue of records
//! waiting for the helper and the secondary, the gate's view of it, and
//! the acknowledgement commands that shorten it (G1, G2, G3).
//!
//! A group numbers the records of all its devices in one order
//! ([`GroupOrder`]); each device keeps its records, numbered, in a
//! [`Stream`], a ring over slots the caller owns (a slice, a `Vec`, a
//! kernel vector of `Option<Arc<Record>>`).  Neither does any I/O nor
//! allocates; the records are the caller's (any pointer to a type that
//! tells its numbers, [`Sequenced`]).  The rules:
//!
//! 1. **Sequencing at completion.**  A record is numbered when its write
//!    completes ([`GroupOrder::sequence`]): `dev_seq` one above its
//!    stream's last, `group_seq` one above the group's last, a timestamp
//!    that never goes back (the clock plus the group's base, at least the
//!    last one given), and the open checkpoint interval (`epoch`).  So the
//!    group order is the completion order (G1), and no stream has a hole.
//!    A stream whose ring is full numbers nothing and gives the record
//!    back: every counter stays as it was.  A consistency point moves its
//!    stream's `cp_first` (the first `dev_seq` of the next point's set)
//!    past it.
//! 2. **The queue.**  A stream holds its records in `dev_seq` order,
//!    contiguous: the first `sent` were read by the helper
//!    ([`Stream::mark_sent`], which raises `shipped`), the others wait to
//!    be read.  A new reader ([`Stream::rewind`]) is offered every record
//!    still held, from the first.
//! 3. **The gate** ([`crate::gate`]).  A record of a `log` stream is
//!    *pending* while it is held, its `dev_seq` is above `log_acked`, and
//!    it holds data back ([`holds_data_back`]: markers do not).  The
//!    watermark ([`watermark`]) is the lowest pending `group_seq` of all
//!    log streams, minus one; unbounded when none is pending.  Markers
//!    passed over are remembered, so each record is looked at once.
//! 4. **Release order.**  The next record read ([`next_releasable`]) is,
//!    among each stream's first unread record that the gate releases
//!    ([`may_release`]), the one lowest in the group order.  A stream is
//!    thus read as a prefix: nothing passes a held record.
//! 5. **Acknowledgements.**  The helper writes `ACK_LOG`, `ACK` and
//!    `SPOOLED` ([`Ack`]); each is checked ([`AckState::check`]), and a
//!    `write(2)` of several commands is checked as a whole, each against
//!    the positions the earlier ones leave, before any of it acts
//!    ([`crate::batch`]):
//!    * `ACK_LOG` is a log stream's only ([`Refused::Invalid`]);
//!    * `SPOOLED` of a log stream may not reach above `log_acked`
//!      ([`Refused::Invalid`]): a log record leaves the queue only
//!      acknowledged, since the gate finds its pending records there;
//!    * no acknowledgement may reach above `shipped`, what the helper read
//!      ([`Refused::Range`], `-ERANGE`).
//!
//!    Then ([`Stream::acknowledge`]): `ACK_LOG` raises `log_acked` (the
//!    gate opens); `ACK` raises `acked` and `log_acked` and drops the
//!    records up to its `dev_seq` (the secondary holds them); `SPOOLED`
//!    drops them without acknowledging anything (the helper holds them on
//!    the primary's disk).  Numbers only rise: a stale acknowledgement
//!    drops nothing and lowers nothing.
//! 6. **Applied intervals.**  `APPLIED e` is refused unless `e` is below
//!    the open interval ([`GroupOrder::check_applied`]); it raises the
//!    applied interval.
//! 7. **Restart numbers.**  A device that left its group cleanly (every
//!    record acknowledged: [`Stream::leaving`]) has its stream's last
//!    acknowledged `dev_seq` and the group's numbers on its meta device
//!    ([`Left::of`] its superblock, `CLEAN`).  When it joins again, its
//!    stream continues from there ([`Left::start`]) and the group raises
//!    its counters to the numbers recorded
//!    ([`GroupOrder::continue_from`]), its timestamps to continue above
//!    the recorded one whatever the clock says: the secondary never sees a
//!    number twice.  A device that did not leave cleanly comes back with
//!    its numbers unknown ([`Left::Unclean`]: the caller tracks it in the
//!    bitmap until a resync).
//!
//! The kernel keeps every [`Stream`] and the [`GroupOrder`] under the
//! group's interrupt-safe lock; every method is short, allocation-free and
//! never sleeps.  The records a stream drops are handed to the caller,
//! which frees them after it has dropped the lock.

use core::ops::{Deref, DerefMut};

use crate::gate::{holds_data_back, may_release, DeviceClass, Watermark};
use crate::meta::{sb_flags, Numbers, Superblock};
use crate::record::RecordKind;

/// What a [`Stream`] needs to know of a record it holds.
pub trait Sequenced {
    /// Its kind.
    fn kind(&self) -> RecordKind;
    /// Its place in its stream (set by [`GroupOrder::sequence`]).
    fn dev_seq(&self) -> u64;
    /// Its place in the group order.
    fn group_seq(&self) -> u64;
}

/// The numbers [`GroupOrder::sequence`] gives a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Numbered {
    /// Place in its stream.
    pub dev_seq: u64,
    /// Place in the group order.
    pub group_seq: u64,
    /// Timestamp, ns; never lower than the one before.
    pub timestamp_ns: u64,
    /// The checkpoint interval open when it was numbered.
    pub epoch: u64,
}

/// An acknowledgement command of the helper (rule 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// `ACK_LOG`: the secondary holds the log stream up to `dev_seq`.
    Log,
    /// `ACK`: the secondary holds the stream up to `dev_seq`.
    Durable,
    /// `SPOOLED`: the helper holds the stream up to `dev_seq` on the
    /// primary's disk.
    Spooled,
}

impl Ack {
    /// The acknowledgement a command carries: its kind, device and
    /// `dev_seq`.
    pub fn of(c: &crate::command::Command) -> Option<(Self, u32, u64)> {
        use crate::command::Command;
        match *c {
            Command::AckLog { device, dev_seq } => Some((Self::Log, device, dev_seq)),
            Command::Ack { device, dev_seq } => Some((Self::Durable, device, dev_seq)),
            Command::Spooled { device, dev_seq } => Some((Self::Spooled, device, dev_seq)),
            _ => None,
        }
    }
}

/// Why a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a command this stream takes (`-EINVAL`).
    Invalid,
    /// A number beyond what the kernel gave out (`-ERANGE`).
    Range,
}

impl core::fmt::Display for Refused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Invalid => "command not valid for this stream",
            Self::Range => "number beyond what was read",
        })
    }
}

/// A stream's acknowledgement positions (rule 5), plain values: what an
/// acknowledgement is checked against and what it changes.  A copy
/// ([`Stream::ack_state`]) lets a batch of commands be checked as each
/// earlier command of the batch leaves the stream ([`crate::batch`]);
/// [`Stream::acknowledge`] applies the same steps to the stream itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckState {
    class: DeviceClass,
    shipped: u64,
    acked: u64,
    log_acked: u64,
    /// Every record up to this `dev_seq` has left the queue.
    dropped: u64,
}

impl AckState {
    /// Checks an acknowledgement up to `dev_seq` (rule 5):
    /// * `ACK_LOG` is a log stream's only ([`Refused::Invalid`]);
    /// * `SPOOLED` of a log stream may not reach above `log_acked`
    ///   ([`Refused::Invalid`]);
    /// * nothing may reach above `shipped` ([`Refused::Range`]).
    pub fn check(&self, ack: Ack, dev_seq: u64) -> Result<(), Refused> {
        let log = self.class == DeviceClass::Log;
        if ack == Ack::Log && !log {
            return Err(Refused::Invalid);
        }
        if ack == Ack::Spooled && log && dev_seq > self.log_acked {
            return Err(Refused::Invalid);
        }
        if dev_seq > self.shipped {
            return Err(Refused::Range);
        }
        Ok(())
    }

    /// Applies an acknowledgement up to `dev_seq`, checked first (rule 5):
    /// `ACK_LOG` raises `log_acked`; `ACK` raises `acked` and `log_acked`;
    /// `ACK` and `SPOOLED` drop the records up to `dev_seq`.  Returns the
    /// `dev_seq`s of the records dropped (first, last), if any may be: an
    /// `ACK` or `SPOOLED` above what was dropped already.
    pub fn acknowledge(&mut self, ack: Ack, dev_seq: u64) -> Result<Option<(u64, u64)>, Refused> {
        self.check(ack, dev_seq)?;
        match ack {
            Ack::Log => {
                self.log_acked = self.log_acked.max(dev_seq);
                return Ok(None);
            }
            Ack::Durable => {
                self.acked = self.acked.max(dev_seq);
                self.log_acked = self.log_acked.max(dev_seq);
            }
            Ack::Spooled => {}
        }
        if dev_seq <= self.dropped {
            return Ok(None);
        }
        let first = self.dropped.saturating_add(1);
        self.dropped = dev_seq;
        Ok(Some((first, dev_seq)))
    }

    /// Highest `dev_seq` acknowledged durable.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Highest `dev_seq` acknowledged for the gate.
    pub fn log_acked(&self) -> u64 {
        self.log_acked
    }
}

/// The records of one device on the primary, in `dev_seq` order, and its
/// numbers.  See the module documentation for the rules.
#[derive(Clone, Debug)]
pub struct Stream<S> {
    class: DeviceClass,
    slots: S,
    head: usize,
    len: usize,
    /// Records at the front read by the helper.
    sent: usize,
    /// Last `dev_seq` given.
    last_dev_seq: u64,
    /// Highest `dev_seq` read by the helper.
    shipped: u64,
    /// Highest `dev_seq` the secondary holds durably (`ACK`).
    acked: u64,
    /// Highest `dev_seq` of a log stream acknowledged for the gate.
    log_acked: u64,
    /// Log stream: its records from `log_acked + 1` to before this one are
    /// markers, looked at already (rule 3).
    gate_from: u64,
    /// First `dev_seq` after the last consistency point.
    cp_first: u64,
}

impl<S, P> Stream<S>
where
    S: Deref<Target = [Option<P>]>,
    P: Deref,
    P::Target: Sequenced,
{
    /// The `i`-th slot from the head (no division: a zero capacity simply
    /// has no slot).
    fn index(&self, i: usize) -> Option<usize> {
        let cap = self.slots.len();
        let j = self.head.checked_add(i)?;
        Some(if j >= cap { j.checked_sub(cap)? } else { j }).filter(|&j| j < cap)
    }

    /// The `i`-th record held, from the oldest.
    pub fn at(&self, i: usize) -> Option<&P> {
        if i >= self.len {
            return None;
        }
        self.slots.get(self.index(i)?)?.as_ref()
    }

    /// The records held, oldest first.
    pub fn records<'a>(&'a self) -> impl Iterator<Item = &'a P> + 'a
    where
        P: 'a,
    {
        (0..self.len).filter_map(move |i| self.at(i))
    }

    /// The first record the helper has not read.
    pub fn next_unsent(&self) -> Option<&P> {
        self.at(self.sent)
    }

    /// The lowest `group_seq` of this log stream's pending records (rule
    /// 3), if any.
    fn lowest_pending_log(&mut self) -> Option<u64> {
        let front = self.at(0)?.dev_seq();
        let mut ds = self
            .gate_from
            .max(self.log_acked.saturating_add(1))
            .max(front);
        loop {
            let r = self.at(usize::try_from(ds - front).ok()?)?;
            if holds_data_back(r.kind()) {
                let g = r.group_seq();
                self.gate_from = ds;
                return Some(g);
            }
            ds += 1;
            self.gate_from = ds;
        }
    }

    /// Checks an acknowledgement of the stream up to `dev_seq` (rule 5).
    pub fn check(&self, ack: Ack, dev_seq: u64) -> Result<(), Refused> {
        self.ack_state().check(ack, dev_seq)
    }

    /// The stream's acknowledgement positions, a copy that a batch of
    /// commands is checked against ([`crate::batch`]).
    pub fn ack_state(&self) -> AckState {
        AckState {
            class: self.class,
            shipped: self.shipped,
            acked: self.acked,
            log_acked: self.log_acked,
            dropped: self
                .at(0)
                .map_or(self.last_dev_seq, |r| r.dev_seq().saturating_sub(1)),
        }
    }

    /// Why the stream is left by its device: its highest acknowledged
    /// `dev_seq`, and, when every record is acknowledged, the numbers a
    /// clean leave records (rule 7).
    pub fn leaving(&self, order: &GroupOrder) -> (u64, Option<Numbers>) {
        let clean = self.acked >= self.last_dev_seq;
        (self.acked, clean.then(|| order.numbers(self.cp_first)))
    }
}

impl<S, P> Stream<S>
where
    S: DerefMut<Target = [Option<P>]>,
    P: Deref,
    P::Target: Sequenced,
{
    /// An empty stream of a device of `class` over `slots` (every one
    /// emptied), whose last `dev_seq` given, read and acknowledged is
    /// `from` and whose next consistency point starts at `cp_first`
    /// ([`Left::start`]).
    pub fn new(mut slots: S, class: DeviceClass, from: u64, cp_first: u64) -> Self {
        slots.iter_mut().for_each(|s| *s = None);
        Self {
            class,
            slots,
            head: 0,
            len: 0,
            sent: 0,
            last_dev_seq: from,
            shipped: from,
            acked: from,
            log_acked: from,
            gate_from: 0,
            cp_first,
        }
    }

    fn push(&mut self, r: P) -> Result<(), P> {
        if self.len >= self.slots.len() {
            return Err(r);
        }
        let Some(i) = self.index(self.len) else {
            return Err(r);
        };
        match self.slots.get_mut(i) {
            Some(slot) => {
                *slot = Some(r);
                self.len += 1;
                Ok(())
            }
            None => Err(r),
        }
    }

    fn pop(&mut self) -> Option<P> {
        if self.len == 0 {
            return None;
        }
        let r = self.slots.get_mut(self.head)?.take();
        self.head = self.index(1)?;
        self.len -= 1;
        self.sent = self.sent.saturating_sub(1);
        r
    }

    /// The helper read the first unread record (rule 2).
    pub fn mark_sent(&mut self) {
        let Some(ds) = self.next_unsent().map(|r| r.dev_seq()) else {
            return;
        };
        self.sent += 1;
        self.shipped = self.shipped.max(ds);
    }

    /// A new reader: every record held is unread again (rule 2).
    pub fn rewind(&mut self) {
        self.sent = 0;
    }

    /// Applies an acknowledgement of the stream up to `dev_seq` (rule 5),
    /// checked first; `dropped` gets each record it drops, oldest first.
    pub fn acknowledge(
        &mut self,
        ack: Ack,
        dev_seq: u64,
        mut dropped: impl FnMut(P),
    ) -> Result<(), Refused> {
        let mut a = self.ack_state();
        let drops = a.acknowledge(ack, dev_seq)?;
        (self.acked, self.log_acked) = (a.acked, a.log_acked);
        if drops.is_none() {
            return Ok(());
        }
        while self.at(0).is_some_and(|r| r.dev_seq() <= dev_seq) {
            let Some(r) = self.pop() else { break };
            dropped(r);
        }
        Ok(())
    }
}

impl<S> Stream<S> {
    /// The device's class.
    pub fn class(&self) -> DeviceClass {
        self.class
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Last `dev_seq` given.
    pub fn last_dev_seq(&self) -> u64 {
        self.last_dev_seq
    }

    /// Highest `dev_seq` read by the helper.
    pub fn shipped(&self) -> u64 {
        self.shipped
    }

    /// Highest `dev_seq` the secondary acknowledged durable.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Highest `dev_seq` acknowledged for the gate.
    pub fn log_acked(&self) -> u64 {
        self.log_acked
    }

    /// First `dev_seq` of the next consistency point's set.
    pub fn cp_first(&self) -> u64 {
        self.cp_first
    }
}

/// The gate's watermark over the streams of a group (rule 3): every log
/// record at or below it is acknowledged.
pub fn watermark<'a, S, P>(streams: impl IntoIterator<Item = &'a mut Stream<S>>) -> Watermark
where
    S: Deref<Target = [Option<P>]> + 'a,
    P: Deref,
    P::Target: Sequenced,
{
    let lowest = streams
        .into_iter()
        .filter(|s| s.class == DeviceClass::Log)
        .filter_map(Stream::lowest_pending_log)
        .min();
    Watermark::from_lowest_pending(lowest)
}

/// The position, among `streams` (`None`: no device there), of the stream
/// whose first unread record comes first in the group order among those
/// `w` releases (rule 4).
pub fn next_releasable<'a, S, P>(
    streams: impl IntoIterator<Item = Option<&'a Stream<S>>>,
    w: Watermark,
) -> Option<usize>
where
    S: Deref<Target = [Option<P>]> + 'a,
    P: Deref,
    P::Target: Sequenced,
{
    let mut best: Option<(u64, usize)> = None;
    for (i, s) in streams.into_iter().enumerate() {
        let Some(s) = s else { continue };
        let Some(r) = s.next_unsent() else { continue };
        let g = r.group_seq();
        if may_release(s.class, g, w) && best.is_none_or(|(bg, _)| g < bg) {
            best = Some((g, i));
        }
    }
    best.map(|(_, i)| i)
}

/// How a joining device left its group last time (its superblock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    /// A new meta device.
    New,
    /// Every record acknowledged: its stream's last `dev_seq` and the
    /// group's numbers then.
    Clean(u64, Numbers),
    /// Not cleanly (a crash): the numbers its stream used are unknown.
    Unclean,
}

impl Left {
    /// How the device with superblock `sb` (none: a new meta device) left
    /// its group.
    pub fn of(sb: Option<&Superblock>) -> Self {
        match sb {
            None => Self::New,
            Some(sb) if sb.flags & sb_flags::CLEAN != 0 => {
                Self::Clean(sb.acked_dev_seq, sb.numbers)
            }
            Some(_) => Self::Unclean,
        }
    }

    /// Where the device's stream starts: its last `dev_seq` and its
    /// `cp_first` ([`Stream::new`]).
    pub fn start(&self) -> (u64, u64) {
        match *self {
            Self::Clean(last, n) => (last, n.cp_first.max(1)),
            Self::New | Self::Unclean => (0, 1),
        }
    }
}

/// The group-wide numbers: the group order, the clock, the checkpoint
/// intervals and consistency points.  See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupOrder {
    last_group_seq: u64,
    last_ts: u64,
    /// Added to the clock: a group continued from its meta devices keeps
    /// its time increasing.
    ts_base: u64,
    /// The open checkpoint interval.
    epoch: u64,
    /// Records numbered since the last checkpoint marker.
    since_checkpoint: u64,
    /// Last consistency point inserted.
    cp_id: u64,
    /// Last interval the secondary reported applied.
    applied: u64,
}

impl Default for GroupOrder {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupOrder {
    /// A new group: nothing numbered, interval 1 open.
    pub const fn new() -> Self {
        Self {
            last_group_seq: 0,
            last_ts: 0,
            ts_base: 0,
            epoch: 1,
            since_checkpoint: 0,
            cp_id: 0,
            applied: 0,
        }
    }

    /// Numbers `rec` (rule 1) in `stream`, at clock `now_ns`: `number`
    /// writes the numbers into it, then it joins the stream.  A full
    /// stream gives it back, unnumbered, and nothing changes.
    pub fn sequence<S, P>(
        &mut self,
        stream: &mut Stream<S>,
        now_ns: u64,
        mut rec: P,
        number: impl FnOnce(&mut P, &Numbered),
    ) -> Result<Numbered, P>
    where
        S: DerefMut<Target = [Option<P>]>,
        P: Deref,
        P::Target: Sequenced,
    {
        if stream.len >= stream.slots.len() {
            return Err(rec);
        }
        let n = Numbered {
            dev_seq: stream.last_dev_seq.saturating_add(1),
            group_seq: self.last_group_seq.saturating_add(1),
            timestamp_ns: now_ns.saturating_add(self.ts_base).max(self.last_ts),
            epoch: self.epoch,
        };
        number(&mut rec, &n);
        let point = rec.kind() == RecordKind::ConsistencyPoint;
        stream.push(rec)?;
        stream.last_dev_seq = n.dev_seq;
        if point {
            stream.cp_first = n.dev_seq.saturating_add(1);
        }
        self.last_group_seq = n.group_seq;
        self.last_ts = n.timestamp_ns;
        self.since_checkpoint += 1;
        Ok(n)
    }

    /// The open checkpoint interval.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records numbered since the last checkpoint marker.
    pub fn since_checkpoint(&self) -> u64 {
        self.since_checkpoint
    }

    /// Last `group_seq` given.
    pub fn last_group_seq(&self) -> u64 {
        self.last_group_seq
    }

    /// The id the next consistency point takes.
    pub fn next_cp_id(&self) -> u64 {
        self.cp_id + 1
    }

    /// Every stream got its checkpoint marker: the next interval opens.
    pub fn checkpoint_inserted(&mut self) {
        self.epoch += 1;
        self.since_checkpoint = 0;
    }

    /// Every stream got consistency point `cp_id`.
    pub fn consistency_point_inserted(&mut self, cp_id: u64) {
        self.cp_id = cp_id;
    }

    /// The group's numbers, and `cp_first` of a stream, as a device that
    /// leaves cleanly records them on its meta device (rule 7).
    pub fn numbers(&self, cp_first: u64) -> Numbers {
        Numbers {
            group_seq: self.last_group_seq,
            epoch: self.epoch,
            timestamp_ns: self.last_ts,
            cp_id: self.cp_id,
            cp_first,
        }
    }

    /// Raises the group's counters to those a joining device recorded
    /// (`now_ns`: the clock now, which the timestamps are to continue
    /// above) (rule 7).
    pub fn continue_from(&mut self, n: &Numbers, now_ns: u64) {
        self.last_group_seq = self.last_group_seq.max(n.group_seq);
        self.epoch = self.epoch.max(n.epoch);
        self.cp_id = self.cp_id.max(n.cp_id);
        self.ts_base = self.ts_base.max(n.timestamp_ns.saturating_sub(now_ns));
        self.last_ts = self.last_ts.max(n.timestamp_ns);
    }

    /// Checks `APPLIED epoch` (rule 6): only a closed interval may be
    /// applied.
    pub fn check_applied(&self, epoch: u64) -> Result<(), Refused> {
        if epoch >= self.epoch {
            return Err(Refused::Range);
        }
        Ok(())
    }

    /// `APPLIED epoch`, checked (rule 6).
    pub fn applied(&mut self, epoch: u64) -> Result<(), Refused> {
        self.check_applied(epoch)?;
        self.applied = self.applied.max(epoch);
        Ok(())
    }

    /// Last interval the secondary reported applied.
    pub fn applied_epoch(&self) -> u64 {
        self.applied
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
