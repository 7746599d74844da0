//! Choosing what the secondary may apply (seed: timestamps and sequence runs
//! over a network that reorders).
//!
//! Each device stream arrives out of order, with duplicates and gaps. A
//! [`StreamWindow`] holds the received records of one stream in a ring
//! indexed by `dev_seq - next` (O(1) insert and lookup). Per stream, the
//! longest contiguous run of `dev_seq` after the last applied record is
//! known, and so is the [`Stamp`] of the run's last record. The **limit** is
//! the earliest of those stamps over the member streams: every record of the
//! group at or below the limit has arrived, because each stream is complete
//! up to its run's end and stamps grow with `dev_seq` in a stream. The apply
//! set is the records at or below the limit, taken in group order
//! ([`next_in_group_order`]). Duplicates are ignored; gaps are waited for.
//!
//! A stamp is `(timestamp_ns, group_seq)` compared in that order, so two
//! records with the same clock value are still totally ordered.

use core::fmt;

use crate::record::RecordKind;

/// Position of a record in the group's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Primary clock at sequencing.
    pub timestamp_ns: u64,
    /// Group order (breaks ties between equal clock values).
    pub group_seq: u64,
}

impl Stamp {
    /// After every record.
    pub const MAX: Self = Self {
        timestamp_ns: u64::MAX,
        group_seq: u64::MAX,
    };
    /// Before every record.
    pub const ZERO: Self = Self {
        timestamp_ns: 0,
        group_seq: 0,
    };
}

/// What the secondary keeps of a received, verified record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received<T> {
    /// Its stamp.
    pub stamp: Stamp,
    /// Its checkpoint interval.
    pub epoch: u64,
    /// Its kind.
    pub kind: RecordKind,
    /// The caller's handle (where the record lies in the remote log).
    pub item: T,
}

/// Outcome of [`StreamWindow::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Stored; the run now ends at `run_end` (a `dev_seq`, or `next - 1`).
    Accepted {
        /// Last `dev_seq` of the contiguous run.
        run_end: u64,
    },
    /// Already held: ignored.
    Duplicate,
    /// Already applied: ignored.
    Stale,
}

/// Why a record was refused by the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowError {
    /// Too far ahead of the last applied record: drop it, it will be resent.
    OutOfWindow,
    /// Its stamp does not grow with `dev_seq` relative to its neighbours,
    /// or it differs from the record already held at that `dev_seq`.
    OrderViolation,
    /// The window has no storage.
    NoStorage,
}

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfWindow => f.write_str("record beyond receive window"),
            Self::OrderViolation => f.write_str("record stamp out of order"),
            Self::NoStorage => f.write_str("receive window without storage"),
        }
    }
}

/// Receive window of one stream over caller storage
/// (`[Option<Received<T>>; N]`, a slice, a vector).
#[derive(Clone, Debug)]
pub struct StreamWindow<T, S> {
    slots: S,
    head: usize,
    next: u64,
    run: u64,
    held: usize,
    applied_stamp: Stamp,
    resigned: bool,
    _t: core::marker::PhantomData<T>,
}

impl<T: Copy, S: AsRef<[Option<Received<T>>]> + AsMut<[Option<Received<T>>]>> StreamWindow<T, S> {
    /// A window whose next record to apply is `next` (`last applied + 1`)
    /// and whose last applied record had stamp `applied` (or
    /// [`Stamp::ZERO`] if unknown).
    pub fn new(mut slots: S, next: u64, applied: Stamp) -> Self {
        slots.as_mut().iter_mut().for_each(|s| *s = None);
        Self {
            slots,
            head: 0,
            next,
            run: 0,
            held: 0,
            applied_stamp: applied,
            resigned: false,
            _t: core::marker::PhantomData,
        }
    }

    /// Drops everything held and restarts at `next`.
    pub fn reset(&mut self, next: u64, applied: Stamp) {
        self.slots.as_mut().iter_mut().for_each(|s| *s = None);
        self.head = 0;
        self.next = next;
        self.run = 0;
        self.held = 0;
        self.applied_stamp = applied;
    }

    fn cap(&self) -> usize {
        self.slots.as_ref().len()
    }

    fn index(&self, dev_seq: u64) -> Option<usize> {
        let off = dev_seq.checked_sub(self.next)?;
        let cap = self.cap();
        if cap == 0 || off >= cap as u64 {
            return None;
        }
        Some((self.head + usize::try_from(off).ok()?) % cap)
    }

    /// The record held at `dev_seq`.
    pub fn get(&self, dev_seq: u64) -> Option<&Received<T>> {
        let i = self.index(dev_seq)?;
        self.slots.as_ref().get(i)?.as_ref()
    }

    /// Stores a verified record received for `dev_seq`.
    pub fn insert(&mut self, dev_seq: u64, rec: Received<T>) -> Result<Insert, WindowError> {
        if dev_seq < self.next {
            return Ok(Insert::Stale);
        }
        if self.cap() == 0 {
            return Err(WindowError::NoStorage);
        }
        let i = self.index(dev_seq).ok_or(WindowError::OutOfWindow)?;
        if let Some(held) = self.get(dev_seq) {
            return if held.stamp == rec.stamp {
                Ok(Insert::Duplicate)
            } else {
                Err(WindowError::OrderViolation)
            };
        }
        let before = if dev_seq == self.next {
            Some(self.applied_stamp)
        } else {
            self.get(dev_seq - 1).map(|r| r.stamp)
        };
        if before.is_some_and(|s| s >= rec.stamp) {
            return Err(WindowError::OrderViolation);
        }
        if dev_seq
            .checked_add(1)
            .and_then(|n| self.get(n))
            .is_some_and(|r| r.stamp <= rec.stamp)
        {
            return Err(WindowError::OrderViolation);
        }
        let slot = self
            .slots
            .as_mut()
            .get_mut(i)
            .ok_or(WindowError::OutOfWindow)?;
        *slot = Some(rec);
        self.held += 1;
        while self.get(self.next.saturating_add(self.run)).is_some() {
            self.run += 1;
        }
        Ok(Insert::Accepted {
            run_end: self.run_end(),
        })
    }

    /// Next `dev_seq` to apply.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Last `dev_seq` of the contiguous run (`next - 1` when empty).
    pub fn run_end(&self) -> u64 {
        self.next.saturating_add(self.run).saturating_sub(1)
    }

    /// Length of the contiguous run.
    pub fn run_len(&self) -> u64 {
        self.run
    }

    /// Records held (in the run or beyond a gap).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Stamp of the run's last record, or of the last applied record when
    /// the run is empty.
    pub fn run_end_stamp(&self) -> Stamp {
        if self.run == 0 {
            self.applied_stamp
        } else {
            self.get(self.run_end())
                .map_or(self.applied_stamp, |r| r.stamp)
        }
    }

    /// The next record to apply, if it has arrived.
    pub fn front(&self) -> Option<&Received<T>> {
        if self.run == 0 {
            None
        } else {
            self.get(self.next)
        }
    }

    /// Removes the front record once it is applied.
    pub fn pop_front(&mut self) -> Option<(u64, Received<T>)> {
        if self.run == 0 {
            return None;
        }
        let head = self.head;
        let rec = self.slots.as_mut().get_mut(head)?.take()?;
        let seq = self.next;
        self.head = (self.head + 1) % self.cap();
        self.next += 1;
        self.run -= 1;
        self.held -= 1;
        self.applied_stamp = rec.stamp;
        Some((seq, rec))
    }

    /// Takes the stream out of the limit (its device left the group).
    pub fn resign(&mut self) {
        self.resigned = true;
    }

    /// Whether the stream has resigned.
    pub fn is_resigned(&self) -> bool {
        self.resigned
    }
}

/// The limit: the earliest run-end stamp over the member streams (`None`
/// when no stream is a member).
pub fn limit<I: IntoIterator<Item = Stamp>>(run_end_stamps: I) -> Option<Stamp> {
    run_end_stamps.into_iter().min()
}

/// The limit of a group of windows, skipping resigned streams.
pub fn group_limit<T, S>(windows: &[StreamWindow<T, S>]) -> Option<Stamp>
where
    T: Copy,
    S: AsRef<[Option<Received<T>>]> + AsMut<[Option<Received<T>>]>,
{
    interval_limit(windows, |_| false)
}

/// The limit for applying the oldest open checkpoint interval: as
/// [`group_limit`], except that a stream whose contiguous run already holds
/// its marker of that interval (`marker_in_run(i)`) counts as complete
/// ([`Stamp::MAX`]).  Every record of the interval in that stream precedes
/// its marker, and every later record of the stream belongs to a later
/// interval, whose stamps lie above all of this interval's markers (the
/// primary inserts one interval's markers in every stream together).
/// Without this, a group that goes idle after a checkpoint would never
/// apply its last interval: the stream whose marker has the lowest stamp
/// would hold the limit below the other markers until it receives a later
/// record.
pub fn interval_limit<T, S>(
    windows: &[StreamWindow<T, S>],
    marker_in_run: impl Fn(usize) -> bool,
) -> Option<Stamp>
where
    T: Copy,
    S: AsRef<[Option<Received<T>>]> + AsMut<[Option<Received<T>>]>,
{
    limit(
        windows
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.is_resigned())
            .map(|(i, w)| {
                if marker_in_run(i) {
                    Stamp::MAX
                } else {
                    w.run_end_stamp()
                }
            }),
    )
}

/// Index of the stream whose front record comes next in group order among
/// those at or below `limit` (`None`: nothing more may be applied).
pub fn next_in_group_order<T, S>(windows: &[StreamWindow<T, S>], limit: Stamp) -> Option<usize>
where
    T: Copy,
    S: AsRef<[Option<Received<T>>]> + AsMut<[Option<Received<T>>]>,
{
    windows
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.front().map(|r| (r.stamp, i)))
        .filter(|&(s, _)| s <= limit)
        .min()
        .map(|(_, i)| i)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    type W = StreamWindow<u32, [Option<Received<u32>>; 8]>;

    fn rec(ts: u64, g: u64) -> Received<u32> {
        Received {
            stamp: Stamp {
                timestamp_ns: ts,
                group_seq: g,
            },
            epoch: 1,
            kind: RecordKind::Write,
            item: g as u32,
        }
    }

    #[test]
    fn runs_duplicates_gaps() {
        let mut w: W = StreamWindow::new([None; 8], 1, Stamp::ZERO);
        assert_eq!(w.insert(2, rec(20, 2)), Ok(Insert::Accepted { run_end: 0 }));
        assert_eq!(w.insert(2, rec(20, 2)), Ok(Insert::Duplicate));
        assert_eq!(w.run_end_stamp(), Stamp::ZERO);
        assert_eq!(w.insert(1, rec(10, 1)), Ok(Insert::Accepted { run_end: 2 }));
        assert_eq!(w.run_end_stamp(), rec(20, 2).stamp);
        assert_eq!(w.insert(9, rec(90, 9)), Err(WindowError::OutOfWindow));
        assert_eq!(w.insert(3, rec(15, 3)), Err(WindowError::OrderViolation));
        assert_eq!(w.pop_front().map(|(s, _)| s), Some(1));
        assert_eq!(w.insert(1, rec(10, 1)), Ok(Insert::Stale));
        assert_eq!(w.insert(9, rec(90, 9)), Ok(Insert::Accepted { run_end: 2 }));
        assert_eq!(w.held(), 2);
    }

    #[test]
    fn the_run_grows_over_filled_gaps_and_shrinks_as_records_are_applied() {
        let mut w: W = StreamWindow::new([None; 8], 5, Stamp::ZERO);
        assert_eq!((w.next(), w.run_len(), w.run_end()), (5, 0, 4));
        // 7 beyond a gap: held, not in the run.
        w.insert(7, rec(70, 7)).unwrap();
        assert_eq!((w.run_len(), w.held()), (0, 1));
        w.insert(5, rec(50, 5)).unwrap();
        assert_eq!((w.run_len(), w.run_end()), (1, 5));
        w.insert(6, rec(60, 6)).unwrap();
        assert_eq!((w.run_len(), w.run_end(), w.held()), (3, 7, 3));
        assert_eq!(w.pop_front().map(|(s, _)| s), Some(5));
        assert_eq!((w.next(), w.run_len(), w.run_end()), (6, 2, 7));
        w.reset(20, rec(190, 19).stamp);
        assert_eq!((w.next(), w.run_len(), w.held()), (20, 0, 0));
        assert_eq!(w.run_end_stamp(), rec(190, 19).stamp);
    }

    #[test]
    fn window_errors_say_what_went_wrong_each_in_its_own_words() {
        use WindowError::*;
        let words = [OutOfWindow, OrderViolation, NoStorage].map(|e| e.to_string());
        for (i, w) in words.iter().enumerate() {
            assert!(!w.is_empty() && !words[..i].contains(w), "{w}");
        }
    }

    #[test]
    fn limit_is_earliest_run_end_and_order_is_group_order() {
        let mut ws: [W; 2] = [
            StreamWindow::new([None; 8], 1, Stamp::ZERO),
            StreamWindow::new([None; 8], 1, Stamp::ZERO),
        ];
        // Stream 0: group seqs 1, 3, 6; stream 1: 2, 4, 5 (5 missing).
        ws[0].insert(1, rec(1, 1)).unwrap();
        ws[0].insert(2, rec(3, 3)).unwrap();
        ws[0].insert(3, rec(6, 6)).unwrap();
        ws[1].insert(1, rec(2, 2)).unwrap();
        ws[1].insert(2, rec(4, 4)).unwrap();
        let l = group_limit(&ws).unwrap();
        assert_eq!(l.group_seq, 4);
        let mut order = [0u64; 4];
        for o in order.iter_mut() {
            let i = next_in_group_order(&ws, l).unwrap();
            *o = ws[i].pop_front().unwrap().1.stamp.group_seq;
        }
        assert_eq!(order, [1, 2, 3, 4]);
        assert_eq!(next_in_group_order(&ws, l), None);
        ws[1].resign();
        assert_eq!(group_limit(&ws).unwrap().group_seq, 6);
    }
}
