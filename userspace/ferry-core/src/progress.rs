//! Replication progress of one device stream.
//!
//! Two numbers tell where a stream stands: the highest `dev_seq` up to which
//! every record has completed locally (`contiguous`), and the highest
//! `dev_seq` the secondary has acknowledged durable (`acked`, cumulative).
//! Records in `acked + 1 ..= highest completed` are what a reconnect must
//! send again; a write is replicated once its `dev_seq <= acked`.
//!
//! Completions may arrive out of order; [`SeqWindow`] tracks them in a
//! fixed ring of bits over caller storage. The secondary uses the same window
//! to compute its cumulative acknowledgement from out-of-order arrivals.

use core::fmt;

/// Why a progress update was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressError {
    /// The sequence number is beyond the window: throttle.
    OutOfWindow,
    /// The window has no storage.
    NoStorage,
    /// An acknowledgement of records that have not completed (bad peer).
    AckBeyondCompleted,
}

impl fmt::Display for ProgressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfWindow => f.write_str("sequence beyond window"),
            Self::NoStorage => f.write_str("window without storage"),
            Self::AckBeyondCompleted => f.write_str("acknowledgement beyond completed records"),
        }
    }
}

/// What marking a sequence number did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Newly marked.
    New,
    /// Already marked, or at or below the contiguous point.
    Duplicate,
}

/// Out-of-order completion tracker: the highest contiguous sequence number
/// and a ring of bits for the ones completed above it.
#[derive(Clone, Debug)]
pub struct SeqWindow<S> {
    bits: S,
    contiguous: u64,
    highest: u64,
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> SeqWindow<S> {
    /// A window whose contiguous point is `contiguous` (0 for a new stream),
    /// with `64 * words` sequence numbers of room above it.
    pub fn new(mut bits: S, contiguous: u64) -> Self {
        bits.as_mut().iter_mut().for_each(|w| *w = 0);
        Self {
            bits,
            contiguous,
            highest: contiguous,
        }
    }

    fn cap(&self) -> u64 {
        self.bits.as_ref().len() as u64 * 64
    }

    fn bit(&mut self, seq: u64) -> Option<(&mut u64, u64)> {
        let cap = self.cap();
        if cap == 0 {
            return None;
        }
        let p = seq % cap;
        let w = self.bits.as_mut().get_mut((p / 64) as usize)?;
        Some((w, 1u64 << (p % 64)))
    }

    /// Marks `seq` complete and advances the contiguous point.
    pub fn mark(&mut self, seq: u64) -> Result<Mark, ProgressError> {
        if seq <= self.contiguous {
            return Ok(Mark::Duplicate);
        }
        if seq - self.contiguous > self.cap() {
            return Err(if self.cap() == 0 {
                ProgressError::NoStorage
            } else {
                ProgressError::OutOfWindow
            });
        }
        let (w, m) = self.bit(seq).ok_or(ProgressError::NoStorage)?;
        if *w & m != 0 {
            return Ok(Mark::Duplicate);
        }
        *w |= m;
        self.highest = self.highest.max(seq);
        loop {
            let next = self.contiguous + 1;
            match self.bit(next) {
                Some((w, m)) if *w & m != 0 => {
                    *w &= !m;
                    self.contiguous = next;
                }
                _ => break,
            }
        }
        Ok(Mark::New)
    }

    /// Whether `seq` is complete.
    pub fn is_marked(&self, seq: u64) -> bool {
        if seq <= self.contiguous {
            return true;
        }
        let cap = self.cap();
        if cap == 0 || seq - self.contiguous > cap {
            return false;
        }
        let p = seq % cap;
        self.bits
            .as_ref()
            .get((p / 64) as usize)
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    /// Highest sequence number with every one below it complete.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// Highest sequence number marked.
    pub fn highest(&self) -> u64 {
        self.highest
    }
}

/// An inclusive range of sequence numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    /// First sequence number.
    pub first: u64,
    /// Last sequence number (inclusive).
    pub last: u64,
}

impl SeqRange {
    /// Whether `seq` lies in the range.
    pub fn contains(&self, seq: u64) -> bool {
        self.first <= seq && seq <= self.last
    }
}

/// Progress of one device stream on the primary.
#[derive(Clone, Debug)]
pub struct Progress<S> {
    done: SeqWindow<S>,
    acked: u64,
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> Progress<S> {
    /// Progress of a stream whose records up to `start` are complete and
    /// acknowledged (0 for a new stream).
    pub fn new(bits: S, start: u64) -> Self {
        Self {
            done: SeqWindow::new(bits, start),
            acked: start,
        }
    }

    /// Record `dev_seq` completed locally (it may now be shipped).
    pub fn complete(&mut self, dev_seq: u64) -> Result<Mark, ProgressError> {
        self.done.mark(dev_seq)
    }

    /// The secondary acknowledged every record up to `dev_seq`. Returns the
    /// number of records newly acknowledged (0 for a stale acknowledgement).
    pub fn ack(&mut self, dev_seq: u64) -> Result<u64, ProgressError> {
        if dev_seq <= self.acked {
            return Ok(0);
        }
        if dev_seq > self.done.contiguous() {
            return Err(ProgressError::AckBeyondCompleted);
        }
        let n = dev_seq - self.acked;
        self.acked = dev_seq;
        Ok(n)
    }

    /// Highest `dev_seq` with every record up to it complete.
    pub fn contiguous(&self) -> u64 {
        self.done.contiguous()
    }

    /// Highest `dev_seq` completed.
    pub fn highest(&self) -> u64 {
        self.done.highest()
    }

    /// Highest `dev_seq` acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// What a reconnect must send again: every completed record in this
    /// range (records of the range still in flight are sent as they
    /// complete). `None` when the secondary has everything.
    pub fn resubmit(&self) -> Option<SeqRange> {
        (self.done.highest() > self.acked).then(|| SeqRange {
            first: self.acked + 1,
            last: self.done.highest(),
        })
    }

    /// Whether the write with `dev_seq` may be reported replicated.
    pub fn is_replicated(&self, dev_seq: u64) -> bool {
        dev_seq != 0 && dev_seq <= self.acked
    }

    /// Records completed but not acknowledged.
    pub fn lag(&self) -> u64 {
        self.done.contiguous().saturating_sub(self.acked)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn window_out_of_order() {
        let mut w = SeqWindow::new([0u64; 1], 0);
        assert_eq!(w.mark(3), Ok(Mark::New));
        assert_eq!(w.mark(3), Ok(Mark::Duplicate));
        assert_eq!(w.mark(2), Ok(Mark::New));
        assert_eq!(w.contiguous(), 0);
        assert_eq!(w.mark(1), Ok(Mark::New));
        assert_eq!(w.contiguous(), 3);
        assert_eq!(w.mark(68), Err(ProgressError::OutOfWindow));
        assert_eq!(w.mark(67), Ok(Mark::New));
        assert!(w.is_marked(67) && !w.is_marked(66) && w.is_marked(2));
        let mut empty = SeqWindow::new([0u64; 0], 0);
        assert_eq!(empty.mark(1), Err(ProgressError::NoStorage));
    }

    #[test]
    fn progress_resubmit_and_report() {
        let mut p = Progress::new([0u64; 2], 0);
        for s in [1, 2, 4, 5] {
            p.complete(s).unwrap();
        }
        assert_eq!(p.contiguous(), 2);
        assert_eq!(p.ack(3), Err(ProgressError::AckBeyondCompleted));
        assert_eq!(p.ack(1), Ok(1));
        assert_eq!(p.resubmit(), Some(SeqRange { first: 2, last: 5 }));
        assert!(p.is_replicated(1) && !p.is_replicated(2));
        p.complete(3).unwrap();
        assert_eq!(p.ack(5), Ok(4));
        assert_eq!(p.ack(4), Ok(0));
        assert_eq!(p.resubmit(), None);
        assert_eq!(p.lag(), 0);
    }
}
