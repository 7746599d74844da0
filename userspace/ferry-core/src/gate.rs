//! The log-before-data gate (G2).
//!
//! A group may mark devices as `log` (a database's write-ahead log). On the
//! primary, a `log` record is released to `ferryd` as soon as it exists; a
//! record of a `data` device with group order `g` is released only once the
//! secondary has acknowledged every `log` record with group order `<= g`.
//!
//! The rule is a single number, the [`Watermark`]: the lowest group order
//! among log records sequenced but not yet acknowledged, minus one; or
//! unbounded when no log record is pending, so data never stalls while the
//! log is idle. Which records are pending, and which record is read next,
//! is [`crate::stream`]'s (the records are in the device's queue there).
//!
//! A stream is released as a prefix, in `dev_seq` order: a flush record is
//! an ordering barrier, released
//! only after every earlier record of its stream and never passed by a later
//! one; on a `log` device it is a log record like any other and holds data
//! back until it is acknowledged.  Markers (checkpoints, consistency
//! points) are not ([`holds_data_back`]): they change no block, so a data
//! write after one needs nothing of them at the secondary, and waiting for
//! their acknowledgement would stall every data stream for a round trip
//! at each checkpoint.

use crate::record::RecordKind;

/// Whether a device is a `log` device of its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    /// Released at once; its acknowledgement moves the watermark.
    Log,
    /// Released only at or below the watermark.
    Data,
}

/// The highest group order a data record may have to be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watermark(u64);

impl Watermark {
    /// No log record pending: every data record may go.
    pub const UNBOUNDED: Self = Self(u64::MAX);

    /// The watermark given the lowest pending log group order, if any.
    pub const fn from_lowest_pending(lowest: Option<u64>) -> Self {
        match lowest {
            None => Self::UNBOUNDED,
            Some(g) => Self(g.saturating_sub(1)),
        }
    }

    /// Whether a data record of group order `group_seq` may be released.
    pub const fn admits(self, group_seq: u64) -> bool {
        group_seq <= self.0
    }

    /// The bound, `None` when unbounded.
    pub const fn get(self) -> Option<u64> {
        if self.0 == u64::MAX {
            None
        } else {
            Some(self.0)
        }
    }
}

/// Whether a log record of kind `kind` holds back the data records after
/// it until it is acknowledged: every kind but the markers.
pub const fn holds_data_back(kind: RecordKind) -> bool {
    !matches!(kind, RecordKind::Checkpoint | RecordKind::ConsistencyPoint)
}

/// Whether one record of a device of class `class` may be released now.
pub const fn may_release(class: DeviceClass, group_seq: u64, watermark: Watermark) -> bool {
    match class {
        DeviceClass::Log => true,
        // The deliberate-bug build (`bug-gate`) lets data through at once.
        DeviceClass::Data => crate::bugs::GATE || watermark.admits(group_seq),
    }
}

/// G2 observed where it must hold, at the secondary: fed every record in
/// the order it became durable there, it finds each log record that became
/// durable after a data record of a later group order.  (The converse
/// needs no look-ahead: a log record's durability is the moment to ask
/// whether any data record of a higher `group_seq` is already durable.)
///
/// Every data record counts (the gate holds back all of them, markers
/// included); a log record counts when it holds data back
/// ([`holds_data_back`]).  The secondary's `ferryd` runs one per group and
/// reports what it finds; a correct primary never gives it anything to
/// find.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurableOrder {
    data_high: u64,
    violations: u64,
    first: Option<(u64, u64)>,
}

impl DurableOrder {
    /// An observer that knows data records up to `data_high` durable (what
    /// a restarted secondary finds in its remote log).
    pub const fn new(data_high: u64) -> Self {
        Self {
            data_high,
            violations: 0,
            first: None,
        }
    }

    /// A record of a device of class `class` became durable.  Returns
    /// whether it breaks G2 (a log record below a durable data record).
    pub fn durable(&mut self, class: DeviceClass, kind: RecordKind, group_seq: u64) -> bool {
        match class {
            DeviceClass::Data => {
                self.data_high = self.data_high.max(group_seq);
                false
            }
            DeviceClass::Log if holds_data_back(kind) && group_seq < self.data_high => {
                self.violations += 1;
                self.first.get_or_insert((group_seq, self.data_high));
                true
            }
            DeviceClass::Log => false,
        }
    }

    /// Log records found durable after a later data record.
    pub const fn violations(&self) -> u64 {
        self.violations
    }

    /// The first of them: its `group_seq`, and the highest data
    /// `group_seq` durable before it.
    pub const fn first(&self) -> Option<(u64, u64)> {
        self.first
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn durable_order_finds_a_log_record_after_later_data() {
        let mut o = DurableOrder::new(0);
        // Log 1, data 2, log 3, data 4: in order.
        assert!(!o.durable(DeviceClass::Log, RecordKind::Write, 1));
        assert!(!o.durable(DeviceClass::Data, RecordKind::Write, 2));
        assert!(!o.durable(DeviceClass::Log, RecordKind::Write, 3));
        assert!(!o.durable(DeviceClass::Data, RecordKind::Checkpoint, 4));
        // A log record above every durable data record is fine, and so
        // is a log marker below one (markers hold nothing back).
        assert!(!o.durable(DeviceClass::Log, RecordKind::Write, 9));
        assert!(!o.durable(DeviceClass::Data, RecordKind::Write, 12));
        assert!(!o.durable(DeviceClass::Log, RecordKind::Checkpoint, 10));
        assert_eq!(o.violations(), 0);
        // Log 11 durable after data 12: G2 broken.
        assert!(o.durable(DeviceClass::Log, RecordKind::Flush, 11));
        assert!(o.durable(DeviceClass::Log, RecordKind::Write, 5));
        assert_eq!(o.violations(), 2);
        assert_eq!(o.first(), Some((11, 12)));
        // A restarted observer starts from what the remote log holds.
        let mut r = DurableOrder::new(12);
        assert!(r.durable(DeviceClass::Log, RecordKind::Write, 11));
    }

    #[test]
    fn markers_hold_nothing_back() {
        use RecordKind::*;
        for k in [Write, Discard, WriteZeroes, Flush] {
            assert!(holds_data_back(k), "{k:?}");
        }
        for k in [Checkpoint, ConsistencyPoint] {
            assert!(!holds_data_back(k), "{k:?}");
        }
    }

    #[test]
    fn watermark_rules() {
        assert_eq!(Watermark::from_lowest_pending(None), Watermark::UNBOUNDED);
        assert!(Watermark::UNBOUNDED.admits(u64::MAX));
        let w = Watermark::from_lowest_pending(Some(10));
        assert!(w.admits(9) && !w.admits(10));
        assert_eq!(w.get(), Some(9));
        assert!(may_release(DeviceClass::Log, 100, w));
        assert!(!may_release(DeviceClass::Data, 100, w));
    }
}
