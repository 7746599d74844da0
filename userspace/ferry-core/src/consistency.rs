//! Application-consistent points (seed: consistency points with signed
//! records).
//!
//! A consistency-point record, inserted in every stream while the
//! application is quiesced, closes in its stream the set of records since
//! the previous point: `first_dev_seq ..` its own `dev_seq`. At the secondary
//! a stream validates the point once its contiguous run of verified records
//! reaches the point's record (every record of the set present, contiguous,
//! signatures checked on arrival) and the set starts right after the
//! previous point of that stream. The point is **held** once every member
//! stream has validated it; the last held point is what an operator may
//! promote to.

use core::fmt;

use crate::checkpoint::MAX_STREAMS;
use crate::record::{ConsistencyPayload, Label};

/// Why a consistency point was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsistencyError {
    /// Stream index out of range.
    BadStream,
    /// The point's set does not start right after the previous point of the
    /// stream (a record is missing or the point is forged).
    SetGap {
        /// Where the set should start.
        expected: u64,
        /// Where it claims to start.
        got: u64,
    },
    /// Too many points open at once. Nothing changed: deliver the record
    /// again later, once lagging streams have validated older points (the
    /// caller keeps the record, and what follows it in the stream, until
    /// then).
    Full,
    /// Same id with another label, or ids out of order.
    Conflict,
}

impl fmt::Display for ConsistencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadStream => f.write_str("stream index out of range"),
            Self::SetGap { expected, got } => {
                write!(f, "consistency set starts at {got}, expected {expected}")
            }
            Self::Full => f.write_str("too many open consistency points"),
            Self::Conflict => f.write_str("conflicting consistency point"),
        }
    }
}

/// A point held at the secondary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldPoint {
    /// Its id.
    pub cp_id: u64,
    /// Its label.
    pub label: Label,
}

/// A point validated by some member streams but not yet by all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenPoint {
    /// Its id.
    pub cp_id: u64,
    /// Its label.
    pub label: Label,
    /// Bit `i` set: stream `i` validated it.
    pub validated: u64,
}

type Open = OpenPoint;

/// Tracks consistency points for up to `STREAMS` streams with up to `OPEN`
/// points validated by some streams but not all.
#[derive(Clone, Debug)]
pub struct ConsistencyTracker<const STREAMS: usize, const OPEN: usize> {
    last_closed: [u64; STREAMS],
    open: [Option<Open>; OPEN],
    members: u64,
    held: Option<HeldPoint>,
}

impl<const STREAMS: usize, const OPEN: usize> ConsistencyTracker<STREAMS, OPEN> {
    /// A tracker whose streams' records up to `start[i]` are already
    /// accounted for (0 for new streams), with member streams `members`.
    pub fn new(start: [u64; STREAMS], members: u64) -> Self {
        Self {
            last_closed: start,
            open: [None; OPEN],
            members,
            held: None,
        }
    }

    /// Stream `stream` delivered, in order, the consistency-point record at
    /// `dev_seq` (its contiguous run now reaches it). Returns the point if
    /// this made it held.
    pub fn delivered(
        &mut self,
        stream: u32,
        dev_seq: u64,
        cp: &ConsistencyPayload,
    ) -> Result<Option<HeldPoint>, ConsistencyError> {
        if stream >= MAX_STREAMS {
            return Err(ConsistencyError::BadStream);
        }
        let s = stream as usize;
        let last = *self.last_closed.get(s).ok_or(ConsistencyError::BadStream)?;
        let expected = last.saturating_add(1);
        if cp.first_dev_seq != expected || dev_seq < cp.first_dev_seq {
            return Err(ConsistencyError::SetGap {
                expected,
                got: cp.first_dev_seq,
            });
        }
        if self.held.is_some_and(|h| h.cp_id >= cp.cp_id) {
            return Err(ConsistencyError::Conflict);
        }
        let b = 1u64 << stream;
        let slot = match self
            .open
            .iter()
            .position(|o| o.is_some_and(|o| o.cp_id == cp.cp_id))
        {
            Some(i) => i,
            None => {
                let i = self
                    .open
                    .iter()
                    .position(Option::is_none)
                    .ok_or(ConsistencyError::Full)?;
                if let Some(o) = self.open.get_mut(i) {
                    *o = Some(Open {
                        cp_id: cp.cp_id,
                        label: cp.label,
                        validated: 0,
                    });
                }
                i
            }
        };
        let entry = self
            .open
            .get_mut(slot)
            .and_then(Option::as_mut)
            .ok_or(ConsistencyError::Full)?;
        if entry.label != cp.label {
            return Err(ConsistencyError::Conflict);
        }
        entry.validated |= b;
        if let Some(l) = self.last_closed.get_mut(s) {
            *l = dev_seq;
        }
        if entry.validated & self.members == self.members {
            let p = HeldPoint {
                cp_id: entry.cp_id,
                label: entry.label,
            };
            // Older open points can no longer complete in order: drop them.
            for o in self.open.iter_mut() {
                if o.is_some_and(|o| o.cp_id <= p.cp_id) {
                    *o = None;
                }
            }
            self.held = Some(p);
            return Ok(Some(p));
        }
        Ok(None)
    }

    /// Restarts every stream at `start` after a resync: points still open
    /// are dropped (their sets were discarded), the last held point stays.
    pub fn restart(&mut self, start: [u64; STREAMS]) {
        self.last_closed = start;
        self.open = [None; OPEN];
    }

    /// Stream `stream` leaves the group.
    pub fn resign(&mut self, stream: u32) {
        if stream < MAX_STREAMS {
            self.members &= !(1u64 << stream);
        }
    }

    /// The last point held at the secondary.
    pub fn last_held(&self) -> Option<HeldPoint> {
        self.held
    }

    /// Per stream, the `dev_seq` of the last point it validated (or where
    /// it started).
    pub fn last_closed(&self) -> &[u64; STREAMS] {
        &self.last_closed
    }

    /// The points validated by some streams but not all, oldest first.
    pub fn open_points(&self) -> impl Iterator<Item = OpenPoint> + '_ {
        let mut v: [Option<OpenPoint>; OPEN] = self.open;
        v.sort_unstable_by_key(|o| o.map_or(u64::MAX, |o| o.cp_id));
        v.into_iter().flatten()
    }

    /// A tracker in the state that [`last_closed`](Self::last_closed),
    /// [`open_points`](Self::open_points) and
    /// [`last_held`](Self::last_held) described (saved across a restart).
    /// `Full` when `open` has more than `OPEN` points; `Conflict` when an
    /// open point is not newer than the held one or an id repeats.
    pub fn restore(
        last_closed: [u64; STREAMS],
        members: u64,
        open: impl IntoIterator<Item = OpenPoint>,
        held: Option<HeldPoint>,
    ) -> Result<Self, ConsistencyError> {
        let mut t = Self::new(last_closed, members);
        t.held = held;
        for (n, p) in open.into_iter().enumerate() {
            if held.is_some_and(|h| h.cp_id >= p.cp_id)
                || t.open.iter().flatten().any(|o| o.cp_id == p.cp_id)
            {
                return Err(ConsistencyError::Conflict);
            }
            *t.open.get_mut(n).ok_or(ConsistencyError::Full)? = Some(p);
        }
        Ok(t)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn cp(id: u64, first: u64) -> ConsistencyPayload {
        ConsistencyPayload {
            cp_id: id,
            first_dev_seq: first,
            label: Label::new(b"snap").unwrap(),
        }
    }

    #[test]
    fn held_when_all_streams_validate() {
        let mut t = ConsistencyTracker::<2, 4>::new([0, 0], 0b11);
        assert_eq!(t.delivered(0, 5, &cp(1, 1)), Ok(None));
        assert_eq!(t.last_held(), None);
        let h = t.delivered(1, 3, &cp(1, 1)).unwrap().unwrap();
        assert_eq!(h.cp_id, 1);
        assert_eq!(
            t.delivered(0, 9, &cp(2, 7)),
            Err(ConsistencyError::SetGap {
                expected: 6,
                got: 7
            })
        );
        assert_eq!(t.delivered(0, 9, &cp(2, 6)), Ok(None));
        t.resign(1);
        assert_eq!(t.delivered(0, 12, &cp(3, 10)).unwrap().unwrap().cp_id, 3);
        assert_eq!(t.last_held().unwrap().cp_id, 3);
        assert_eq!(
            t.delivered(2, 1, &cp(4, 1)),
            Err(ConsistencyError::BadStream)
        );
    }

    #[test]
    fn restore_continues_where_the_saved_tracker_was() {
        let mut t = ConsistencyTracker::<3, 4>::new([0, 0, 0], 0b111);
        assert_eq!(t.delivered(0, 4, &cp(1, 1)), Ok(None));
        assert_eq!(t.delivered(1, 2, &cp(1, 1)), Ok(None));
        assert_eq!(t.delivered(0, 8, &cp(2, 5)), Ok(None));
        let open: [Option<OpenPoint>; 4] = {
            let mut a = [None; 4];
            for (i, p) in t.open_points().enumerate() {
                a[i] = Some(p);
            }
            a
        };
        assert_eq!(open[0].map(|p| (p.cp_id, p.validated)), Some((1, 0b011)));
        assert_eq!(open[1].map(|p| (p.cp_id, p.validated)), Some((2, 0b001)));
        let mut r = ConsistencyTracker::<3, 4>::restore(
            *t.last_closed(),
            0b111,
            open.into_iter().flatten(),
            t.last_held(),
        )
        .unwrap();
        assert_eq!(r.last_closed(), &[8, 2, 0]);
        assert_eq!(r.delivered(2, 3, &cp(1, 1)).unwrap().unwrap().cp_id, 1);
        assert_eq!(r.delivered(1, 6, &cp(2, 3)), Ok(None));
        assert_eq!(r.delivered(2, 5, &cp(2, 4)).unwrap().unwrap().cp_id, 2);
        // Too many or inconsistent points are refused.
        let p = |id| OpenPoint {
            cp_id: id,
            label: Label::new(b"x").unwrap(),
            validated: 1,
        };
        assert_eq!(
            ConsistencyTracker::<1, 2>::restore([0], 1, [p(1), p(2), p(3)], None).err(),
            Some(ConsistencyError::Full)
        );
        assert_eq!(
            ConsistencyTracker::<1, 2>::restore([0], 1, [p(1), p(1)], None).err(),
            Some(ConsistencyError::Conflict)
        );
        let held = Some(HeldPoint {
            cp_id: 5,
            label: Label::new(b"x").unwrap(),
        });
        assert_eq!(
            ConsistencyTracker::<1, 2>::restore([0], 1, [p(5)], held).err(),
            Some(ConsistencyError::Conflict)
        );
    }
}
