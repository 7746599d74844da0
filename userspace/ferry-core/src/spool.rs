//! The spool's accounting on the primary (G3, G6): how many bytes of
//! records a consistency group holds in memory, what a write does when
//! they reach the cap (`overflow bitmap` or `overflow block`), and the
//! group's replication mode (`replicating` or `ahead`).
//!
//! One [`Spool`] per group counts the bytes its records charge and decides;
//! it holds no record (each device's ring is a [`crate::stream::Stream`])
//! and does no I/O, allocation or waiting: the caller keeps the records,
//! the wait queue and the warning.  The rules:
//!
//! 1. **Charges.**  A record charges its payload rounded up to whole
//!    pages, and at least one page (a marker, a flush, a discard):
//!    [`charge`].  So a device's ring never holds more than
//!    [`Spool::slots`] records (the cap in pages, at least one), and the
//!    rings are sized once, when a device joins.
//! 2. **Reservation.**  A write reserves its record's charge before the
//!    record exists, a set of markers theirs before they are numbered
//!    ([`Spool::reserve`]):
//!    * the group is `ahead`: [`Reserve::Ahead`], nothing reserved (the
//!      write is tracked in the bitmap only, markers are refused);
//!    * the charge fits under the cap: [`Reserve::Done`], the bytes are
//!      used;
//!    * it does not, under `overflow block`: [`Reserve::Full`], nothing
//!      reserved (a writer waits, rule 5; a `REQ_NOWAIT` write and markers
//!      give up);
//!    * it does not, under `overflow bitmap`: [`Reserve::Overflow`], the
//!      group goes `ahead` now and nothing is reserved.
//!
//!    [`Reserve::room`] is what the write intent is told
//!    ([`crate::intent::Room`]).
//! 3. **Release.**  The charge of a record comes back when it leaves the
//!    spool ([`Spool::release`]): acknowledged (`ACK`), kept by the helper
//!    (`SPOOLED`), dropped (its write failed, or completed while `ahead`),
//!    given back (a `REQ_NOWAIT` write that may not wait for its write
//!    intent), or with its device.  Use never goes below zero.
//! 4. **Ahead.**  The group goes `ahead` ([`Spool::go_ahead`]) on an
//!    overflow under `overflow bitmap` (rule 2), on `STOP`
//!    ([`Spool::stop`]), when the spool cannot keep a record it reserved
//!    room for (out of memory: [`Spool::lost`], whatever the policy), and
//!    when a device joins whose numbers are unknown or whose meta device
//!    marks chunks (the caller).  While `ahead` no reservation succeeds, a
//!    write that completes becomes no record ([`Spool::replicating`] is
//!    false: its charge comes back and its chunks stay dirty), and `START`
//!    among other commands is refused ([`Spool::start`], [`NeedsResync`]).
//!    Only a resync leaves `ahead` ([`Spool::resync`]: the caller begins
//!    one, [`crate::resync`]).
//! 5. **Waiting.**  A writer told [`Reserve::Full`] waits until
//!    [`Spool::has_room`] for its charge: the group is `ahead`, or the
//!    charge fits.  Then it reserves again, and may be told `Full` again
//!    (another writer took the room first).  So a waiting writer must be
//!    woken whenever that may have become true: when a charge is released
//!    (rule 3), and when the group goes `ahead` (the methods of rule 4
//!    return `true` the first time, for the caller to warn and wake).
//!
//! 6. **The queue and its bound.**  Under `overflow block` the writers
//!    told [`Reserve::Full`] do not sleep where they were told: they are
//!    held in a FIFO queue ([`Queue`]) and let in, in order, when room
//!    frees; while any writer is held, a new writer queues behind it
//!    ([`Queue::reserve`]: `Full` without trying), so that a large write
//!    is not passed for ever by small ones.  The queue must not wait for
//!    ever on a reader that is gone: when writers are held and none was let
//!    in for the bound (the table's `block_timeout`), the group goes
//!    `ahead` ([`Queue::expired`]), and every held writer goes to the
//!    bitmap (rule 5).  Each writer let in restarts the bound for the next,
//!    so a slow reader throttles the writers and only one that frees
//!    nothing for the whole bound sends the group ahead.
//!
//! The kernel keeps the [`Spool`] in the group's state, under its
//! interrupt-safe lock; every method is a few comparisons.  A `write(2)`
//! of commands is checked against a copy, which its markers reserve on,
//! its acknowledgements release and its `STOP` stops by these same rules
//! ([`crate::batch::Batch`]).

use crate::intent::Room;
use crate::table::Overflow;

/// Bytes a record of `payload_bytes` charges to the spool with pages of
/// `page` bytes: whole pages, at least one (rule 1).
pub fn charge(payload_bytes: usize, page: usize) -> usize {
    let page = page.max(1);
    payload_bytes.div_ceil(page).max(1).saturating_mul(page)
}

/// Whether the group ships records or only tracks dirty chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every write becomes a record.
    Replicating,
    /// The spool overflowed or replication was stopped: writes are tracked
    /// in the bitmap, and leaving needs a resync.
    Ahead,
}

impl Mode {
    /// The word `dmsetup status` and `ferryd` use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Replicating => "replicating",
            Self::Ahead => "ahead",
        }
    }
}

/// What a reservation decided (rule 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// The room is reserved: the write becomes a record.
    Done,
    /// No room, `overflow block`: nothing reserved; a writer may wait for
    /// [`Spool::has_room`] and try again.
    Full,
    /// No room, `overflow bitmap`: the group went `ahead` now (the caller
    /// warns); the write is tracked in the bitmap only.
    Overflow,
    /// The group is `ahead`: the write is tracked in the bitmap only.
    Ahead,
}

impl Reserve {
    /// What the write intent is told of this pass
    /// ([`crate::intent::WriteIntent::admit`]).
    pub const fn room(self) -> Room {
        match self {
            Self::Done => Room::Spool,
            Self::Full => Room::Wait,
            Self::Overflow | Self::Ahead => Room::Bitmap,
        }
    }
}

/// `START` while `ahead`: leaving `ahead` needs a resync (rule 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeedsResync;

impl core::fmt::Display for NeedsResync {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the group is ahead: leaving it needs a resync")
    }
}

/// The spool of a group: its cap, its policy, the bytes its records use
/// and the replication mode.  See the module documentation for the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spool {
    cap: usize,
    overflow: Overflow,
    used: usize,
    mode: Mode,
}

impl Spool {
    /// An empty spool of `cap` bytes, replicating, that does `overflow`
    /// when full.
    pub const fn new(cap: usize, overflow: Overflow) -> Self {
        Self {
            cap,
            overflow,
            used: 0,
            mode: Mode::Replicating,
        }
    }

    /// The cap, bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes the records use.
    pub fn used(&self) -> usize {
        self.used
    }

    /// What a full spool does.
    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// The replication mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether a write that completes now becomes a record (rule 4).
    pub fn replicating(&self) -> bool {
        self.mode == Mode::Replicating
    }

    /// Records a device's ring must hold with pages of `page` bytes: the
    /// cap in pages, at least one (rule 1).
    pub fn slots(&self, page: usize) -> usize {
        (self.cap / page.max(1)).max(1)
    }

    fn fits(&self, charge: usize) -> bool {
        self.used
            .checked_add(charge)
            .is_some_and(|total| total <= self.cap)
    }

    /// Reserves `charge` bytes for a record, or a set of markers (rule 2).
    pub fn reserve(&mut self, charge: usize) -> Reserve {
        if self.mode == Mode::Ahead {
            Reserve::Ahead
        } else if self.fits(charge) {
            self.used += charge;
            Reserve::Done
        } else if self.overflow == Overflow::Block {
            Reserve::Full
        } else {
            self.go_ahead();
            Reserve::Overflow
        }
    }

    /// `charge` bytes leave the spool (rule 3).
    pub fn release(&mut self, charge: usize) {
        self.used = self.used.saturating_sub(charge);
    }

    /// Whether a writer told [`Reserve::Full`] for `charge` may try again
    /// (rule 5).
    pub fn has_room(&self, charge: usize) -> bool {
        self.mode == Mode::Ahead || self.fits(charge)
    }

    /// The group goes `ahead` (rule 4).  Returns whether it just did: the
    /// caller warns, and wakes the writers waiting for room (rule 5).
    pub fn go_ahead(&mut self) -> bool {
        let now = self.mode != Mode::Ahead;
        self.mode = Mode::Ahead;
        now
    }

    /// A record the spool reserved `charge` for cannot be kept (no memory
    /// for it): its charge comes back and the group goes `ahead`, whatever
    /// the policy (rules 3 and 4).  Returns whether it just went ahead.
    pub fn lost(&mut self, charge: usize) -> bool {
        self.release(charge);
        self.go_ahead()
    }

    /// `STOP`: the group goes `ahead` (rule 4).  Returns whether it just
    /// did.
    pub fn stop(&mut self) -> bool {
        self.go_ahead()
    }

    /// A resync begins (rule 4): the group leaves `ahead`, and records are
    /// made again.  Returns whether it was `ahead`.
    pub fn resync(&mut self) -> bool {
        let was = self.mode == Mode::Ahead;
        self.mode = Mode::Replicating;
        was
    }

    /// Checks `START` (rule 4): accepted while replicating (it changes
    /// nothing), refused while `ahead`.
    pub fn start(&self) -> Result<(), NeedsResync> {
        match self.mode {
            Mode::Replicating => Ok(()),
            Mode::Ahead => Err(NeedsResync),
        }
    }
}

/// The writers held for room under `overflow block`, in FIFO order
/// (rule 6): how many, and since when none was let in.  The caller keeps
/// the writers themselves and the clock (milliseconds of a monotonic
/// clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queue {
    held: usize,
    since_ms: Option<u64>,
}

impl Queue {
    /// An empty queue.
    pub const fn new() -> Self {
        Self {
            held: 0,
            since_ms: None,
        }
    }

    /// Writers held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether no writer is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// A new writer's reservation (rule 6): behind held writers it waits
    /// its turn ([`Reserve::Full`], nothing reserved) while the group
    /// replicates; otherwise [`Spool::reserve`].  The writer at the head
    /// of the queue, when it is let in, reserves with [`Spool::reserve`].
    pub fn reserve(&self, spool: &mut Spool, charge: usize) -> Reserve {
        if self.held > 0 && spool.replicating() && spool.overflow() == Overflow::Block {
            Reserve::Full
        } else {
            spool.reserve(charge)
        }
    }

    /// A writer told [`Reserve::Full`] is held, at `now_ms`: it joins the
    /// tail; the bound runs from now if no writer was held.
    pub fn hold(&mut self, now_ms: u64) {
        self.held = self.held.saturating_add(1);
        if self.since_ms.is_none() {
            self.since_ms = Some(now_ms);
        }
    }

    /// The writer at the head leaves the queue at `now_ms` (let in, or to
    /// the bitmap): the bound restarts for the next one, or stops when
    /// none is left.
    pub fn let_in(&mut self, now_ms: u64) {
        self.held = self.held.saturating_sub(1);
        self.since_ms = (self.held > 0).then_some(now_ms);
    }

    /// Whether writers are held and none was let in for `bound_ms` at
    /// `now_ms`: the group must go `ahead` (rule 6).  A clock that went
    /// back counts as no time passed.
    pub fn expired(&self, now_ms: u64, bound_ms: u64) -> bool {
        match self.since_ms {
            Some(since) if self.held > 0 => now_ms.saturating_sub(since) >= bound_ms,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn spool(pages: usize, overflow: Overflow) -> Spool {
        Spool::new(pages * PAGE, overflow)
    }

    #[test]
    fn rule1_records_charge_whole_pages_at_least_one() {
        assert_eq!(charge(0, PAGE), PAGE);
        assert_eq!(charge(1, PAGE), PAGE);
        assert_eq!(charge(PAGE, PAGE), PAGE);
        assert_eq!(charge(PAGE + 1, PAGE), 2 * PAGE);
        assert_eq!(charge(1 << 20, PAGE), 1 << 20);
        // Saturates rather than wraps.
        assert_eq!(charge(usize::MAX, PAGE), usize::MAX);
        assert_eq!(charge(usize::MAX, 1), usize::MAX);
        assert_eq!(charge(3, 0), 3);
    }

    #[test]
    fn rule1_a_ring_holds_the_cap_in_pages() {
        assert_eq!(spool(256, Overflow::Bitmap).slots(PAGE), 256);
        assert_eq!(Spool::new(PAGE + 1, Overflow::Bitmap).slots(PAGE), 1);
        assert_eq!(Spool::new(0, Overflow::Bitmap).slots(PAGE), 1);
        assert_eq!(Spool::new(10, Overflow::Bitmap).slots(0), 10);
    }

    #[test]
    fn rule2_a_charge_that_fits_is_reserved() {
        let mut s = spool(3, Overflow::Bitmap);
        assert_eq!(s.reserve(2 * PAGE), Reserve::Done);
        assert_eq!(s.used(), 2 * PAGE);
        // Up to the cap exactly.
        assert_eq!(s.reserve(PAGE), Reserve::Done);
        assert_eq!(s.used(), 3 * PAGE);
        assert_eq!(s.mode(), Mode::Replicating);
        assert_eq!(Reserve::Done.room(), Room::Spool);
    }

    #[test]
    fn rule2_overflow_block_reserves_nothing_and_stays_replicating() {
        let mut s = spool(2, Overflow::Block);
        assert_eq!(s.reserve(PAGE), Reserve::Done);
        assert_eq!(s.reserve(2 * PAGE), Reserve::Full);
        assert_eq!(s.used(), PAGE);
        assert_eq!(s.mode(), Mode::Replicating);
        // A smaller record still fits.
        assert_eq!(s.reserve(PAGE), Reserve::Done);
        assert_eq!(s.reserve(usize::MAX), Reserve::Full);
        assert_eq!(Reserve::Full.room(), Room::Wait);
    }

    #[test]
    fn rule2_overflow_bitmap_goes_ahead_and_reserves_nothing() {
        let mut s = spool(2, Overflow::Bitmap);
        assert_eq!(s.reserve(PAGE), Reserve::Done);
        assert_eq!(s.reserve(2 * PAGE), Reserve::Overflow);
        assert_eq!(s.used(), PAGE);
        assert_eq!(s.mode(), Mode::Ahead);
        assert_eq!(Reserve::Overflow.room(), Room::Bitmap);
        // A charge past the end of the address space overflows too.
        let mut s = spool(2, Overflow::Bitmap);
        assert_eq!(s.reserve(PAGE), Reserve::Done);
        assert_eq!(s.reserve(usize::MAX), Reserve::Overflow);
    }

    #[test]
    fn rule2_ahead_reserves_nothing_even_with_room() {
        for overflow in [Overflow::Bitmap, Overflow::Block] {
            let mut s = spool(4, overflow);
            assert!(s.stop());
            assert_eq!(s.reserve(PAGE), Reserve::Ahead);
            assert_eq!(s.used(), 0);
            assert_eq!(Reserve::Ahead.room(), Room::Bitmap);
        }
    }

    #[test]
    fn rule3_release_gives_room_back_never_below_zero() {
        let mut s = spool(2, Overflow::Block);
        assert_eq!(s.reserve(2 * PAGE), Reserve::Done);
        assert_eq!(s.reserve(PAGE), Reserve::Full);
        s.release(PAGE);
        assert_eq!(s.used(), PAGE);
        assert_eq!(s.reserve(PAGE), Reserve::Done);
        s.release(5 * PAGE);
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn rule4_ahead_stays_and_refuses_start() {
        let mut s = spool(2, Overflow::Bitmap);
        assert!(s.replicating());
        assert_eq!(s.start(), Ok(()));
        assert!(s.go_ahead());
        assert!(!s.go_ahead());
        assert!(!s.stop());
        assert!(!s.replicating());
        assert_eq!(s.mode(), Mode::Ahead);
        assert_eq!(s.start(), Err(NeedsResync));
        assert!(NeedsResync.to_string().contains("resync"));
        // Room coming back does not leave ahead; a resync does.
        s.release(PAGE);
        assert_eq!(s.reserve(PAGE), Reserve::Ahead);
        assert_eq!(s.mode().name(), "ahead");
        assert_eq!(Mode::Replicating.name(), "replicating");
        assert!(s.resync());
        assert!(s.replicating());
        assert_eq!(s.reserve(PAGE), Reserve::Done);
        assert!(!s.resync());
    }

    #[test]
    fn rule4_stop_goes_ahead_under_either_policy() {
        for overflow in [Overflow::Bitmap, Overflow::Block] {
            let mut s = spool(2, overflow);
            assert_eq!(s.reserve(PAGE), Reserve::Done);
            assert!(s.stop());
            assert_eq!(s.mode(), Mode::Ahead);
            // The records already spooled still drain.
            assert_eq!(s.used(), PAGE);
            assert!(!s.replicating());
        }
    }

    #[test]
    fn rule4_a_record_lost_gives_room_back_and_goes_ahead_even_under_block() {
        let mut s = spool(2, Overflow::Block);
        assert_eq!(s.reserve(2 * PAGE), Reserve::Done);
        assert!(s.lost(2 * PAGE));
        assert_eq!(s.used(), 0);
        assert_eq!(s.mode(), Mode::Ahead);
        assert_eq!(s.reserve(PAGE), Reserve::Ahead);
        assert!(!s.lost(0));
    }

    #[test]
    fn rule5_a_waiting_writer_may_go_once_room_or_ahead() {
        let mut s = spool(2, Overflow::Block);
        assert_eq!(s.reserve(2 * PAGE), Reserve::Done);
        assert_eq!(s.reserve(PAGE), Reserve::Full);
        assert!(!s.has_room(PAGE));
        s.release(PAGE);
        assert!(s.has_room(PAGE));
        assert!(!s.has_room(2 * PAGE));
        assert!(!s.has_room(usize::MAX));
        // Another writer takes the room first: Full again.
        assert_eq!(s.reserve(PAGE), Reserve::Done);
        assert!(!s.has_room(PAGE));
        assert_eq!(s.reserve(PAGE), Reserve::Full);
        // Going ahead lets every waiter go (to the bitmap), and says so
        // once, for the caller to wake them.
        assert!(s.stop());
        assert!(s.has_room(usize::MAX));
        assert_eq!(s.reserve(PAGE), Reserve::Ahead);
    }
    #[test]
    fn rule6_new_writers_queue_behind_held_ones() {
        let mut s = spool(2, Overflow::Block);
        let mut q = Queue::new();
        assert!(q.is_empty());
        // No one held: a plain reservation.
        assert_eq!(q.reserve(&mut s, PAGE), Reserve::Done);
        assert_eq!(q.reserve(&mut s, 2 * PAGE), Reserve::Full);
        q.hold(100);
        assert_eq!(q.len(), 1);
        // Room for a small write, but one is held: it waits its turn,
        // and nothing is reserved.
        assert!(s.has_room(PAGE));
        assert_eq!(q.reserve(&mut s, PAGE), Reserve::Full);
        assert_eq!(s.used(), PAGE);
        // The head reserves on the spool itself.
        s.release(PAGE);
        assert_eq!(s.reserve(2 * PAGE), Reserve::Done);
        q.let_in(150);
        assert!(q.is_empty());
        s.release(2 * PAGE);
        assert_eq!(q.reserve(&mut s, PAGE), Reserve::Done);
    }

    #[test]
    fn rule6_ahead_lets_new_writers_pass_to_the_bitmap() {
        let mut s = spool(1, Overflow::Block);
        let mut q = Queue::new();
        assert_eq!(q.reserve(&mut s, PAGE), Reserve::Done);
        assert_eq!(q.reserve(&mut s, PAGE), Reserve::Full);
        q.hold(0);
        assert!(s.stop());
        assert_eq!(q.reserve(&mut s, PAGE), Reserve::Ahead);
        // Under `overflow bitmap` no writer is ever held; were one
        // counted, a new writer still reserves (and overflows).
        let mut b = spool(1, Overflow::Bitmap);
        assert_eq!(q.reserve(&mut b, PAGE), Reserve::Done);
        assert_eq!(q.reserve(&mut b, PAGE), Reserve::Overflow);
    }

    #[test]
    fn rule6_the_bound_runs_from_the_first_hold_and_restarts_on_each_let_in() {
        let mut q = Queue::new();
        // Nothing held: never expired.
        assert!(!q.expired(u64::MAX, 0));
        q.hold(1_000);
        q.hold(2_000);
        assert_eq!(q.len(), 2);
        assert!(!q.expired(1_000, 30_000));
        assert!(!q.expired(30_999, 30_000));
        assert!(q.expired(31_000, 30_000));
        // A writer let in restarts the bound for the next.
        q.let_in(20_000);
        assert_eq!(q.len(), 1);
        assert!(!q.expired(31_000, 30_000));
        assert!(!q.expired(49_999, 30_000));
        assert!(q.expired(50_000, 30_000));
        // The last one let in: nothing held, no bound.
        q.let_in(21_000);
        assert!(q.is_empty());
        assert!(!q.expired(u64::MAX, 0));
        // More let in than held: stays empty.
        q.let_in(22_000);
        assert!(q.is_empty());
        // A later hold starts a new bound.
        q.hold(90_000);
        assert!(!q.expired(90_001, 3_000));
        assert!(q.expired(93_000, 3_000));
        // A clock that went back is no time passed.
        assert!(!q.expired(80_000, 1));
    }
}
