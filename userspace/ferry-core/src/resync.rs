//! Resync: how a group that went `ahead` gets back to `replicating` with
//! the secondary a crash-consistent image of the primary's past at every
//! instant, the copy included.
//!
//! The kernel runs the primary's part ([`Resync`]) when `START` takes a
//! group out of `ahead` (`rust/group/resync.rs`); a secondary's `ferryd`
//! runs the secondary's ([`Span`]); the simulation runs both, the resync of
//! a restarted primary included, which the kernel does not run yet.
//! `Documentation/protocol.rst`, "Resync", says what is built.
//!
//! While `ahead`, writes are tracked in the dirty bitmap only; after a
//! primary crash, the meta device's marks are loaded as dirty
//! ([`crate::intent`], rule 6).  A resync copies exactly those chunks.
//!
//! # The primary ([`Resync`], one per device)
//!
//! 1. **The set.**  The chunks to copy are the device's dirty chunks when
//!    the resync begins ([`crate::intent::WriteIntent::dirty_words`]);
//!    `START` with `FULL_RESYNC` (the full copy: the initial sync of a
//!    primary that holds data) first marks every chunk dirty
//!    ([`crate::intent::WriteIntent::mark_all`]).  [`start_begins`] says
//!    when `START` begins a resync.  The set is copied into the caller's
//!    storage ([`Resync::new`]) and also kept as the *covered* set ([`Resync::covered`]).  Chunks that turn
//!    dirty during the resync are not in it: they stay dirty for the next.
//!    Nor is a chunk of the set dirtied again before the span is applied
//!    (a write while `ahead`, a record dropped): [`Resync::dirtied`], and
//!    [`uncover`] once the resync is over, take it out, so that the span's
//!    end never clears a chunk whose last content the span does not
//!    carry.
//! 2. **The span.**  The resync begins by closing the open interval with a
//!    checkpoint record flagged `RESYNC_BEGIN`; every record numbered from
//!    then on, the application's and the resync's, belongs to the span,
//!    which ends with the checkpoint record flagged `RESYNC_END` that
//!    closes the interval in which the copy finished ([`Resync::done`]).
//!    The secondary applies the whole span as one ([`Span`]): before it,
//!    its image is its last consistent point; after it, the primary's
//!    image at the span's end.  Nothing in between is ever visible.
//! 3. **A chunk read is a write.**  [`Resync::next_read`] takes the next
//!    chunk of the set (in device order, a cursor that wraps) and the
//!    caller reads it from the data device and makes it a record flagged
//!    `RESYNC` (a write of the chunk, or a write-zeroes record when it is
//!    all zero), admitted through the write intent and numbered at the
//!    read's completion like a host write.  At most [`MAX_READS`] reads
//!    are in flight.
//! 4. **No read overlaps a write.**  A chunk being read holds the host
//!    writes that touch it ([`HostWrite::Wait`]: the caller queues them
//!    and admits them again once [`Resync::read_done`] says so).  A read
//!    is issued only once every host write admitted before the chunk was
//!    taken has completed ([`Resync::may_issue`]): host writes count in
//!    *epochs*, and taking a chunk opens a new one.  The writes already in
//!    flight when the resync begins (admitted while `ahead`, before it
//!    knew of them) count in the first epoch ([`Resync::writes_before`],
//!    completed with [`WriteTicket::BEFORE`]).  So a read sees, for
//!    its chunk, exactly the writes numbered before it, and every write
//!    numbered after it lands after it on the secondary too.  (Without
//!    the rule, a read racing a write could carry the write's old data
//!    after its record, and the chunk would end stale.)
//! 5. **Not read twice.**  A recorded host write that covers whole chunks
//!    of the set that are not being read completes them: its record
//!    carries their content, and it is numbered before the span ends
//!    ([`Resync::host_write_done`]).
//! 6. **Done.**  The copy is done when no chunk is left and none is being
//!    read ([`Resync::done`]); a failed read puts its chunk back.
//! 7. **Bits clear once the span is applied**, never on acknowledgement:
//!    the covered chunks are cleared from the dirty bitmap
//!    ([`crate::intent::WriteIntent::resynced`]) when the secondary has
//!    applied the span's last interval (`APPLIED`).  A span the secondary
//!    staged but never applied (it was promoted meanwhile) must leave
//!    every chunk it covers marked, for the failback.
//! 8. **A crash of the primary mid-span** loses nothing: its covered chunks
//!    are still dirty on the meta device, the records the secondary holds
//!    stay staged, and the primary's next resync opens a span the
//!    secondary merges with the open one (`RESYNC_BEGIN` inside a span is
//!    not a new span: [`Span::begin`]).
//! 9. **Application writes first** ([`app_first`], [`RateCap`]): a read
//!    takes spool room only while the spool is less than half full, and
//!    at most `resync_mbps`.
//!
//! # The secondary ([`Span`])
//!
//! The intervals after one closed by `RESYNC_BEGIN`, up to the one closed
//! by `RESYNC_END`, are applied as one batch (under one apply mark): a
//! batch may end at an interval only if no span is open across it
//! ([`Span::batch_may_end`]).  Promoted while a span is open, the
//! secondary drops what it staged of it: its image is its last consistent
//! point.

use crate::bitmap::{chunks_of, words_for};

/// Resync reads in flight, at most.
pub const MAX_READS: usize = 8;

/// Epochs of host writes told apart: one per read in flight, and the
/// open one.
const EPOCHS: usize = MAX_READS + 1;

/// Why a [`Resync`] or [`Span`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncError {
    /// The storage holds fewer than two bitmaps of the device's chunks.
    StorageTooSmall,
    /// A chunk shift the bitmap cannot take.
    BadChunkShift,
    /// `RESYNC_END` with no span open, or before the span's start.
    NoSpan,
}

/// Where epoch `e`'s count of host writes is kept.
fn epoch_at(e: u64) -> usize {
    usize::try_from(e % EPOCHS as u64).unwrap_or(0)
}

/// The word of chunk `c`'s bit.
fn word(c: u64) -> usize {
    usize::try_from(c / 64).unwrap_or(usize::MAX)
}

/// A chunk being read: which, and the epoch its read waits behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    chunk: u64,
    /// Host writes of epochs below this one must complete first.
    after: u64,
}

/// A read taken by [`Resync::next_read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTicket {
    slot: usize,
    /// The chunk to read.
    pub chunk: u64,
}

/// A host write let through by [`Resync::host_write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteTicket {
    epoch: u64,
}

impl WriteTicket {
    /// The ticket of a host write that was in flight when the resync
    /// began ([`Resync::writes_before`]).
    pub const BEFORE: Self = Self { epoch: 0 };
}

/// What a host write does during a resync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostWrite {
    /// It goes; report its completion with the ticket.
    Go(WriteTicket),
    /// It touches a chunk being read: hold it until a read completes.
    Wait,
}

/// How far a resync got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Chunks in the set.
    pub total: u64,
    /// Chunks read and made records.
    pub read: u64,
    /// Chunks whose content a host write's record carried (rule 5).
    pub by_write: u64,
    /// Reads in flight.
    pub reading: u64,
}

impl Progress {
    /// Chunks not copied yet, those being read included.
    pub fn left(&self) -> u64 {
        self.total.saturating_sub(self.read + self.by_write)
    }
}

/// One device's resync on the primary (rules 1 to 6): the chunks left,
/// the reads in flight, the epochs of the host writes.  Its storage is
/// the caller's: two bitmaps of the device's chunks (left, covered).
#[derive(Debug)]
pub struct Resync<S> {
    words: S,
    n: usize,
    nbits: u64,
    chunk_shift: u32,
    cursor: u64,
    reading: [Option<Slot>; MAX_READS],
    /// The open epoch of host writes.
    epoch: u64,
    /// Host writes in flight, by epoch: `(epoch, count)` at
    /// `epoch % EPOCHS`.
    writes: [(u64, u64); EPOCHS],
    progress: Progress,
}

impl<S: core::ops::DerefMut<Target = [u64]>> Resync<S> {
    /// Words of storage a resync of `nbits` chunks needs.
    pub fn storage_words(nbits: u64) -> Option<usize> {
        usize::try_from(words_for(nbits)).ok()?.checked_mul(2)
    }

    /// A resync of the chunks set in `set` (one bit per chunk, as
    /// [`crate::intent::WriteIntent::dirty_words`] gives them), over
    /// `words`.
    pub fn new(
        mut words: S,
        set: &[u64],
        nbits: u64,
        chunk_shift: u32,
    ) -> Result<Self, ResyncError> {
        if chunk_shift >= 64 {
            return Err(ResyncError::BadChunkShift);
        }
        let n = usize::try_from(words_for(nbits)).map_err(|_| ResyncError::StorageTooSmall)?;
        let need = Self::storage_words(nbits).ok_or(ResyncError::StorageTooSmall)?;
        words.get_mut(..need).ok_or(ResyncError::StorageTooSmall)?;
        let mut r = Self {
            words,
            n,
            nbits,
            chunk_shift,
            cursor: 0,
            reading: [None; MAX_READS],
            epoch: 0,
            writes: [(0, 0); EPOCHS],
            progress: Progress::default(),
        };
        r.restart(set);
        Ok(r)
    }

    /// Begins again, over the same storage, a resync of the chunks set in
    /// `set`: as [`Self::new`] would (so that a caller may allocate one
    /// where it may sleep and begin it where it may not).
    pub fn restart(&mut self, set: &[u64]) {
        let (n, nbits) = (self.n, self.nbits);
        let mut total = 0;
        if let Some(w) = self.words.get_mut(..2 * n) {
            let (left, covered) = w.split_at_mut(n);
            for (i, x) in left.iter_mut().enumerate() {
                let mut v = set.get(i).copied().unwrap_or(0);
                if i + 1 == n && nbits % 64 != 0 {
                    v &= (1u64 << (nbits % 64)) - 1;
                }
                *x = v;
                total += u64::from(v.count_ones());
            }
            covered.copy_from_slice(left);
        }
        self.cursor = 0;
        self.reading = [None; MAX_READS];
        self.epoch = 0;
        self.writes = [(0, 0); EPOCHS];
        self.progress = Progress {
            total,
            ..Progress::default()
        };
    }

    /// `n` host writes are in flight as the resync begins (rule 4): they
    /// count in the first epoch, so that no read is issued before they
    /// complete; each reports its completion with [`WriteTicket::BEFORE`].
    /// Called before any other method.
    pub fn writes_before(&mut self, n: u64) {
        self.writes[epoch_at(0)] = (0, n);
    }

    /// The chunks this resync covers (rule 7): one bit per chunk.
    pub fn covered(&self) -> &[u64] {
        self.words.get(self.n..2 * self.n).unwrap_or(&[])
    }

    /// How far it got.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Whether every chunk is copied and no read is in flight (rule 6):
    /// the span may end.
    pub fn done(&self) -> bool {
        self.progress.left() == 0 && self.reading.iter().all(Option::is_none)
    }

    fn left_bit(&self, c: u64) -> bool {
        let (w, b) = (word(c), c % 64);
        self.words.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    fn clear_left(&mut self, c: u64) {
        let (w, b) = (word(c), c % 64);
        if let Some(x) = self.words.get_mut(w) {
            *x &= !(1 << b);
        }
    }

    fn set_left(&mut self, c: u64) {
        let (w, b) = (word(c), c % 64);
        if let Some(x) = self.words.get_mut(w) {
            *x |= 1 << b;
        }
    }

    /// The chunks of `nr` sectors at `sector`, clipped to the device.
    fn range(&self, sector: u64, nr: u64) -> Option<(u64, u64)> {
        let (first, n) = chunks_of(sector, nr, self.chunk_shift)?;
        if n == 0 || first >= self.nbits {
            return None;
        }
        Some((first, n.min(self.nbits - first)))
    }

    /// A host write of `nr` sectors at `sector` (rule 4): it waits if it
    /// touches a chunk being read, else it counts in the open epoch.
    pub fn host_write(&mut self, sector: u64, nr: u64) -> HostWrite {
        if let Some((first, n)) = self.range(sector, nr) {
            let hit = self
                .reading
                .iter()
                .flatten()
                .any(|s| (first..first + n).contains(&s.chunk));
            if hit {
                return HostWrite::Wait;
            }
        }
        let e = self.epoch;
        let at = &mut self.writes[epoch_at(e)];
        debug_assert!(at.1 == 0 || at.0 == e);
        *at = (e, at.1 + 1);
        HostWrite::Go(WriteTicket { epoch: e })
    }

    /// A host write let through with `t` completed, for `nr` sectors at
    /// `sector`; `recorded`: its record was numbered (the group did not go
    /// `ahead`).  Whole chunks of the set it covers that are not being
    /// read are copied by it (rule 5).
    pub fn host_write_done(&mut self, t: WriteTicket, sector: u64, nr: u64, recorded: bool) {
        let at = &mut self.writes[epoch_at(t.epoch)];
        if at.0 == t.epoch {
            at.1 = at.1.saturating_sub(1);
        }
        if !recorded {
            return;
        }
        let Some((first, n)) = self.range(sector, nr) else {
            return;
        };
        let size = 1u64 << self.chunk_shift;
        let end = sector.saturating_add(nr);
        for c in first..first + n {
            let (lo, hi) = (c << self.chunk_shift, (c << self.chunk_shift) + size);
            if lo >= sector && hi <= end && self.left_bit(c) {
                self.clear_left(c);
                self.progress.by_write += 1;
            }
        }
    }

    /// `nr` sectors at `sector` were dirtied again (rule 1): their chunks
    /// leave the covered set (they are still copied if left, but stay
    /// dirty after the span).
    pub fn dirtied(&mut self, sector: u64, nr: u64) {
        if let Some((first, n)) = self.range(sector, nr) {
            let n0 = self.n;
            if let Some(covered) = self.words.get_mut(n0..2 * n0) {
                uncover(covered, first, n);
            }
        }
    }

    /// The next chunk to read (rule 3), if a read may be taken: a slot is
    /// free, the oldest epoch's writes are done (so that a new epoch can
    /// open), and a chunk is left.  Host writes admitted from now on are in
    /// a new epoch; the read is issued once [`Self::may_issue`].
    pub fn next_read(&mut self) -> Option<ReadTicket> {
        let slot = self.reading.iter().position(Option::is_none)?;
        let next = self.epoch + 1;
        let reuse = self.writes[epoch_at(next)];
        if reuse.1 != 0 {
            return None;
        }
        let chunk = self.next_left()?;
        self.clear_left(chunk);
        self.cursor = chunk + 1;
        self.epoch = next;
        self.writes[epoch_at(next)] = (next, 0);
        self.reading[slot] = Some(Slot { chunk, after: next });
        self.progress.reading += 1;
        Some(ReadTicket { slot, chunk })
    }

    /// The first chunk left at or after the cursor, wrapping once.
    fn next_left(&self) -> Option<u64> {
        let from = self.cursor.min(self.nbits);
        let scan = |lo: u64, hi: u64| {
            let mut c = lo;
            while c < hi {
                let (w, b) = (word(c), c % 64);
                let x = self.words.get(w).copied().unwrap_or(0) >> b;
                if x != 0 {
                    let f = c + u64::from(x.trailing_zeros());
                    return (f < hi).then_some(f);
                }
                c = (c | 63) + 1;
            }
            None
        };
        scan(from, self.nbits).or_else(|| scan(0, from))
    }

    /// Whether the read of `t` may be issued: every host write admitted
    /// before its chunk was taken has completed (rule 4).
    pub fn may_issue(&self, t: ReadTicket) -> bool {
        let Some(Some(s)) = self.reading.get(t.slot) else {
            return false;
        };
        self.writes.iter().all(|&(e, n)| n == 0 || e >= s.after)
    }

    /// The read of `t` completed; `ok`: its record was made (else its
    /// chunk is left for another read).  The host writes held for it may
    /// be admitted again.
    pub fn read_done(&mut self, t: ReadTicket, ok: bool) {
        let Some(s) = self.reading.get_mut(t.slot).and_then(Option::take) else {
            return;
        };
        self.progress.reading -= 1;
        if ok {
            self.progress.read += 1;
        } else {
            self.set_left(s.chunk);
        }
    }
}

/// Rule 1: chunks `first..first + n` were dirtied again: out of a covered
/// set (one bit per chunk) that waits for its span to be applied.
pub fn uncover(covered: &mut [u64], first: u64, n: u64) {
    for c in first..first.saturating_add(n) {
        match covered.get_mut(word(c)) {
            Some(x) => *x &= !(1 << (c % 64)),
            None => return,
        }
    }
}

/// Rule 9: a resync read may take spool room only while the spool holds
/// less than half its cap, so that the application's writes find room
/// first.
pub fn app_first(used: usize, cap: usize) -> bool {
    used < cap / 2
}

/// Rule 1: whether `START` begins a resync: while the group is `ahead`,
/// always; with `FULL_RESYNC` (`full`), always (a running resync is
/// replaced); otherwise only when no resync runs (`resyncing`: one copies
/// or its span waits to be applied) and some device has `dirty` chunks (a
/// full copy whose marker found no room).  Otherwise `START` changes
/// nothing.
pub fn start_begins(ahead: bool, full: bool, resyncing: bool, dirty: bool) -> bool {
    ahead || full || (!resyncing && dirty)
}

/// A rate cap (rule 9): at most `bytes_per_sec`, with a burst of one
/// second's worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateCap {
    bytes_per_sec: u64,
    tokens: u64,
    last_ns: u64,
}

impl RateCap {
    /// A cap of `bytes_per_sec` (0: none), full at `now_ns`.
    pub const fn new(bytes_per_sec: u64, now_ns: u64) -> Self {
        Self {
            bytes_per_sec,
            tokens: bytes_per_sec,
            last_ns: now_ns,
        }
    }

    /// Whether `bytes` more may go at `now_ns`; if so they are taken.
    pub fn take(&mut self, now_ns: u64, bytes: u64) -> bool {
        if self.bytes_per_sec == 0 {
            return true;
        }
        let dt = now_ns.saturating_sub(self.last_ns);
        // No 128-bit division (the kernel has none): a second or more
        // refills the bucket; less, in thousandths.
        let add = if dt >= 1_000_000_000 {
            self.bytes_per_sec
        } else {
            (dt / 1000)
                .checked_mul(self.bytes_per_sec / 1000)
                .map_or(self.bytes_per_sec, |x| x / 1000)
        };
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(self.bytes_per_sec);
            self.last_ns = now_ns;
        }
        // A read larger than a second's worth goes when the bucket is full.
        let need = bytes.min(self.bytes_per_sec);
        if self.tokens < need {
            return false;
        }
        self.tokens -= need;
        true
    }

    /// After [`take`](Self::take) refused `bytes`: the nanoseconds until
    /// the bucket holds them (0 without a cap).
    pub fn wait_ns(&self, bytes: u64) -> u64 {
        if self.bytes_per_sec == 0 {
            return 0;
        }
        let short = bytes.min(self.bytes_per_sec).saturating_sub(self.tokens);
        // At most 2^36 bytes short (the largest cap): no overflow.
        short.saturating_mul(1_000_000) / self.bytes_per_sec * 1000
    }

    /// The cap, bytes per second (0: none).
    pub const fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }
}

/// The secondary's resync spans: which intervals must be applied as one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Intervals after this one are in the open span.
    after: Option<u64>,
    /// The open span's last interval, once its `RESYNC_END` is seen.
    end: Option<u64>,
    /// A span that begins after the open one ended (before it was
    /// applied): its start.
    next_after: Option<u64>,
}

impl Span {
    /// No span.
    pub const fn new() -> Self {
        Self {
            after: None,
            end: None,
            next_after: None,
        }
    }

    /// Whether a span is open (begun and not yet applied).
    pub fn is_open(&self) -> bool {
        self.after.is_some()
    }

    /// The checkpoint closing interval `epoch` carries `RESYNC_BEGIN`: the
    /// intervals after it are in a span.  Inside an open span that has not
    /// ended (a primary that restarted mid-resync), it is the same span.
    pub fn begin(&mut self, epoch: u64) {
        match (self.after, self.end) {
            (None, _) => self.after = Some(epoch),
            (Some(a), None) => self.after = Some(a.min(epoch)),
            (Some(_), Some(e)) if epoch >= e && self.next_after.is_none() => {
                self.next_after = Some(epoch)
            }
            (Some(_), Some(_)) => {}
        }
    }

    /// The checkpoint closing interval `epoch` carries `RESYNC_END`.
    pub fn end(&mut self, epoch: u64) -> Result<(), ResyncError> {
        match self.after {
            Some(a) if epoch > a && self.end.is_none() => {
                self.end = Some(epoch);
                Ok(())
            }
            Some(_) if self.end == Some(epoch) => Ok(()),
            _ => Err(ResyncError::NoSpan),
        }
    }

    /// Whether a batch of whole intervals may end with interval `epoch`:
    /// not strictly inside a span, nor at or after the start of one whose
    /// end is not known.
    pub fn batch_may_end(&self, epoch: u64) -> bool {
        let inside = |after: Option<u64>, end: Option<u64>| match after {
            Some(a) if epoch > a => end.is_none_or(|e| epoch < e),
            _ => false,
        };
        !inside(self.after, self.end) && !inside(self.next_after, None)
    }

    /// Every interval up to `epoch` is applied: a span that ended by then
    /// is closed (and a span begun after it becomes the open one).
    pub fn applied(&mut self, epoch: u64) {
        if self.end.is_some_and(|e| epoch >= e) {
            self.after = self.next_after.take();
            self.end = None;
        }
    }
}

#[cfg(test)]
#[path = "resync_tests.rs"]
mod tests;
