//! Write intent on the primary (G3): which chunks the meta device must
//! mark, when a write may go to its chunks, and when a mark may be cleared.
//!
//! A device is divided in chunks of `1 << chunk_shift` sectors
//! ([`crate::bitmap`]); the meta device holds one bit per chunk
//! ([`crate::meta`]).  [`WriteIntent`] keeps, over words the caller owns,
//! seven bitmaps of the device's chunks, four summaries of them (rule 10)
//! and a few counters, and answers
//! every question the write path, the acknowledgements and the periodic
//! sweep ask of them.  It does no I/O: the caller writes the pages it
//! builds ([`WriteIntent::persist_page`], [`WriteIntent::sweep_page`]) and
//! reports when they are durable.  The rules:
//!
//! 1. **Chunks.**  A write of `nr` sectors at `sector` touches the chunks
//!    [`chunks_of`] names, a range of no sector counting as its first
//!    sector, clipped to the device; a range past the end (or whose end
//!    overflows) touches none ([`WriteIntent::chunks`]).
//! 2. **Intent before data.**  The *durable* bits are those the meta
//!    device holds.  A write whose chunks are all durable goes at once; a
//!    write with a chunk that is not must wait ([`Admission::defer`]), and
//!    all its chunks are added to the *wanted* bits, which the next
//!    [`WriteIntent::persist_page`] writes.  Only after that page is
//!    durable ([`WriteIntent::persisted`]) do they become durable and may
//!    the write go; they count as touched in the generation open then
//!    (rule 7), so that a bit made durable for a write that never went (a
//!    `REQ_NOWAIT` write refused, a sleeping writer that never came back)
//!    is cleared in its turn.
//! 3. **Touch generations.**  Every write that registers intent marks its
//!    chunks in the *open* one of two generations of touched chunks,
//!    whether it waits or not and whether it becomes a record or not.
//! 4. **Outstanding records.**  A write the spool takes ([`Room::Spool`])
//!    becomes a record that counts in the open generation ([`Gen`]) until
//!    it is acknowledged, dropped, or leaves the spool by `SPOOLED`
//!    ([`WriteIntent::finish`], [`WriteIntent::dropped`],
//!    [`WriteIntent::spooled`]).
//! 5. **Admission in passes.**  A writer that finds the spool full
//!    ([`Room::Wait`]) registers intent on its first pass and then sleeps;
//!    it registers intent again on the pass that takes its write (spooled
//!    or tracked in the bitmap), and its record counts in the generation
//!    open then.  Two sweeps may have cleared its chunks while it slept;
//!    its write must not land in a chunk the meta device no longer marks.
//!    A later pass that finds the spool full again registers nothing.
//! 6. **Dirty chunks.**  A write that reaches no record ([`Room::Bitmap`]:
//!    the group is `ahead`) and a record that will never reach the
//!    secondary ([`WriteIntent::dropped`]: a failed write, a record the
//!    spool could not keep) leave their chunks *dirty*.  So do the bits
//!    the meta device held when the device joined ([`WriteIntent::load`]).
//!    Dirty chunks are never cleared (only a resync may) and are counted
//!    ([`WriteIntent::dirty_count`]).
//! 7. **The sweep.**  Periodically ([`WriteIntent::sweep`]) the closed
//!    generation is looked at: while one of its records is outstanding,
//!    nothing happens.  Otherwise the durable bits of the chunks it
//!    touched are cleared, except chunks touched in the open generation
//!    and chunks dirty, wanted or held; then its touched chunks are
//!    forgotten and it becomes the open generation.  So a chunk is cleared
//!    no sooner than one full generation after its last write, and only
//!    once every record of that generation is acknowledged.  Bits are
//!    cleared in memory before the page goes to disk, so a write that
//!    comes meanwhile waits for its bit to be written again.  When the
//!    device leaves (`last`: nothing in flight), both generations close at
//!    once and every touched chunk may clear.
//! 8. **Held chunks.**  A record that leaves the spool by `SPOOLED` (the
//!    helper keeps it on the primary's disk) is not acknowledged: its
//!    count is given back, but its chunks are *held*, in the open one of
//!    two held generations, whose mark is the highest `dev_seq` spooled
//!    into it.  The sweep never clears held chunks.  When the
//!    acknowledgements reach the mark of the closed held generation
//!    ([`WriteIntent::ack`]), its chunks go back to the open touch
//!    generation (rule 7 clears them later) and it is free; when the
//!    closed one is free and the open one used, they swap.
//! 9. **What the meta device holds.**  A page written for intent
//!    ([`WriteIntent::persist_page`]) holds the durable and the wanted
//!    bits; a page written after a sweep ([`WriteIntent::sweep_page`])
//!    the durable bits.  The caller serialises page writes of a device,
//!    so that the disk always holds a superset of the durable bits in
//!    memory: after a crash, every chunk that may hold a write the
//!    secondary does not have is marked.
//! 10. **Summaries: work in the words touched, not the device.**  Each
//!     touch and held generation has a summary, one bit per word of its
//!     bitmap (level 1) and one bit per level-1 word (level 2), in the
//!     caller's storage after the planes ([`storage_words`]).  Invariant:
//!     every non-zero word of a touch or held bitmap is marked in its
//!     summary; whoever sets a bit there marks the word.  The sweep visits
//!     only the words the closing generation's summary marks (and, when
//!     `last`, the open one's), and releasing a held generation only the
//!     words its summary marks; both empty the summary as they go, and do
//!     exactly what a walk of every word would (a unit test runs random
//!     operations against that walk, kept as a test-only reference).  The
//!     dirty chunks are counted as they are set, so
//!     [`WriteIntent::dirty_count`] reads a counter.
//!
//! The kernel keeps one [`WriteIntent`] per device under the group's
//! interrupt-safe lock (every method is allocation-free and never sleeps)
//! and does the meta I/O in process context.  Time under the lock no longer
//! grows with the device: a sweep costs about `c * W` plus a scan of
//! `L2 = ceil(n / 4096)` summary words, where `W` is the number of words
//! (of 64 chunks) touched in the closing generation and `n` the words of
//! a bitmap; an acknowledgement that releases a held generation costs
//! about `c` per word it holds; a write, `c` per word of its range; the
//! page builders, one page (512 words).  Measured natively (not in a
//! guest; `sweep_cost`, an ignored test, on a loaded two-core x86-64
//! host), `c` is about 4 ns when the words are contiguous and 45 to 60 ns
//! when each is a cache miss.  For 1 TiB in 64 KiB chunks (16 Mi chunks,
//! 256 Ki words, `L2 = 64`): every chunk touched, about 1.05 ms a sweep;
//! 1,000 chunks in 1,000 words, about 45 to 60 us; nothing touched,
//! under 0.1 us.

use core::ops::DerefMut;

use crate::bitmap::{chunks_of, words_for, MAX_CHUNK_SHIFT};
use crate::meta::BITS_PER_PAGE;

/// Bitmaps of chunks a [`WriteIntent`] keeps, each `words_for(nbits)`
/// words of its storage.
pub const PLANES: usize = 7;

/// `u64` words in one bitmap page of the meta device.
pub const WORDS_PER_PAGE: usize = (BITS_PER_PAGE / 64) as usize;

const DIRTY: usize = 0;
const DURABLE: usize = 1;
const WANT: usize = 2;
const TOUCH: [usize; 2] = [3, 4];
const HELD: [usize; 2] = [5, 6];

/// Summaries a [`WriteIntent`] keeps after its planes: of the touch
/// generations and of the held generations, which name every word of
/// their plane that may be non-zero (the invariant of rule 10).
const SUMMARIES: usize = 4;
const S_TOUCH: [usize; 2] = [0, 1];
const S_HELD: [usize; 2] = [2, 3];

/// Words of one summary of a plane of `n` words: one bit per word (level
/// 1), then one bit per level-1 word (level 2); `(level 2, level 1)`.
fn summary_words(n: usize) -> (usize, usize) {
    let l1 = n.div_ceil(64);
    (l1.div_ceil(64), l1)
}

/// Words of storage a [`WriteIntent`] of `nbits` chunks needs: the
/// [`PLANES`] planes and the summaries of rule 10.
pub fn storage_words(nbits: u64) -> Option<usize> {
    let n = usize::try_from(words_for(nbits)).ok()?;
    let (l2, l1) = summary_words(n);
    n.checked_mul(PLANES)?
        .checked_add(l2.checked_add(l1)?.checked_mul(SUMMARIES)?)
}

/// The words of chunks `first..first + n` with the mask of their bits.
fn range_words(first: u64, n: u64) -> impl Iterator<Item = (usize, u64)> {
    let end = first.saturating_add(n);
    let (w0, w1) = (first / 64, end.div_ceil(64));
    (w0..w1).map(move |w| {
        let lo = first.max(w * 64) - w * 64;
        let hi = end.min(w * 64 + 64) - w * 64;
        let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
        let w = usize::try_from(w).unwrap_or(usize::MAX);
        (w, upper & !((1u64 << lo) - 1))
    })
}

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

    fn index(self) -> Option<usize> {
        (self.0 < 2).then_some(self.0 as usize)
    }

    fn of(i: usize) -> Self {
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

/// The write-intent state of one device, over caller storage (a slice, a
/// `Vec<u64>`, a kernel vector) of [`storage_words`] words.  See the
/// module documentation for the rules.
#[derive(Clone, Debug)]
pub struct WriteIntent<S> {
    words: S,
    /// Words per plane.
    n: usize,
    /// Words of level 2 and level 1 of one summary.
    l2: usize,
    l1: usize,
    /// Dirty chunks (rule 6), kept as bits are set.
    dirty: u64,
    nbits: u64,
    chunk_shift: u32,
    /// Records of each touch generation not yet given back.
    outstanding: [u64; 2],
    /// The open touch generation.
    cur: usize,
    /// Highest `dev_seq` spooled into each held generation (0: free).
    held_upto: [u64; 2],
    /// The open held generation.
    hopen: usize,
    /// Tests: sweep and release held chunks by walking every word, as
    /// before the summaries (the reference the summaries are checked to).
    #[cfg(test)]
    full_walk: bool,
}

impl<S: DerefMut<Target = [u64]>> WriteIntent<S> {
    /// An empty state (nothing durable, dirty, touched or held) for
    /// `nbits` chunks of `1 << chunk_shift` sectors over `words`.
    pub fn new(mut words: S, nbits: u64, chunk_shift: u32) -> Result<Self, IntentError> {
        if chunk_shift > MAX_CHUNK_SHIFT {
            return Err(IntentError::BadChunkShift);
        }
        let need = storage_words(nbits).ok_or(IntentError::StorageTooSmall)?;
        words
            .get_mut(..need)
            .ok_or(IntentError::StorageTooSmall)?
            .fill(0);
        let n = usize::try_from(words_for(nbits)).map_err(|_| IntentError::StorageTooSmall)?;
        let (l2, l1) = summary_words(n);
        Ok(Self {
            words,
            n,
            l2,
            l1,
            dirty: 0,
            nbits,
            chunk_shift,
            outstanding: [0; 2],
            cur: 0,
            held_upto: [0; 2],
            hopen: 0,
            #[cfg(test)]
            full_walk: false,
        })
    }

    /// Number of chunks.
    pub fn nbits(&self) -> u64 {
        self.nbits
    }

    /// log2 of the chunk size in sectors.
    pub fn chunk_shift(&self) -> u32 {
        self.chunk_shift
    }

    /// Bitmap pages of the meta device.
    pub fn pages(&self) -> usize {
        self.n.div_ceil(WORDS_PER_PAGE)
    }

    fn plane(&self, p: usize) -> &[u64] {
        let at = p * self.n;
        self.words.get(at..at + self.n).unwrap_or(&[])
    }

    /// Word `w` of plane `p` (0 past the end).
    fn word(&self, p: usize, w: usize) -> u64 {
        self.words.get(p * self.n + w).copied().unwrap_or(0)
    }

    fn word_mut(&mut self, p: usize, w: usize) -> Option<&mut u64> {
        self.words.get_mut(p * self.n + w)
    }

    /// Sets chunks `first..first + n` (within the device) of plane `p`,
    /// marking their words in its summary if it has one; returns the
    /// number of bits it set that were clear.
    fn set(&mut self, p: usize, first: u64, n: u64) -> u64 {
        let summary = match p {
            _ if p == TOUCH[0] => Some(S_TOUCH[0]),
            _ if p == TOUCH[1] => Some(S_TOUCH[1]),
            _ if p == HELD[0] => Some(S_HELD[0]),
            _ if p == HELD[1] => Some(S_HELD[1]),
            _ => None,
        };
        let mut new = 0;
        for (w, m) in range_words(first, n) {
            let Some(x) = self.word_mut(p, w) else { break };
            new += u64::from((m & !*x).count_ones());
            *x |= m;
            if let Some(s) = summary {
                self.mark(s, w);
            }
        }
        new
    }

    /// Start of summary `s` in the storage.
    fn summary_at(&self, s: usize) -> usize {
        PLANES * self.n + s * (self.l2 + self.l1)
    }

    /// Marks word `w` in summary `s` (rule 10).
    fn mark(&mut self, s: usize, w: usize) {
        let at = self.summary_at(s);
        let (j, l2) = (w / 64, self.l2);
        if let Some(x) = self.words.get_mut(at + l2 + j) {
            *x |= 1 << (w % 64);
        }
        if let Some(x) = self.words.get_mut(at + j / 64) {
            *x |= 1 << (j % 64);
        }
    }

    /// Empties summary `s`, calling `f` on each word it marked, in
    /// increasing order; `f` must not mark summary `s`.
    fn drain(&mut self, s: usize, mut f: impl FnMut(&mut Self, usize)) {
        let at = self.summary_at(s);
        for i in 0..self.l2 {
            let Some(x) = self.words.get_mut(at + i) else {
                break;
            };
            let mut top = core::mem::take(x);
            while top != 0 {
                let j = i * 64 + top.trailing_zeros() as usize;
                top &= top - 1;
                let Some(y) = self.words.get_mut(at + self.l2 + j) else {
                    break;
                };
                let mut low = core::mem::take(y);
                while low != 0 {
                    let w = j * 64 + low.trailing_zeros() as usize;
                    low &= low - 1;
                    f(self, w);
                }
            }
        }
    }

    /// The chunks `(first, count)` a range of `nr_sectors` at `sector`
    /// touches (rule 1).
    pub fn chunks(&self, sector: u64, nr_sectors: u64) -> Option<(u64, u64)> {
        let (first, n) = chunks_of(sector, nr_sectors.max(1), self.chunk_shift)?;
        let end = first.checked_add(n)?.min(self.nbits);
        (first < end).then(|| (first, end - first))
    }

    /// The meta device's bitmap page `page` as read when the device joins
    /// (little-endian words): its bits are durable and dirty (rule 6).
    /// Returns the number of chunks it marks.
    pub fn load(&mut self, page: usize, bytes: &[u8]) -> u64 {
        let w0 = page.saturating_mul(WORDS_PER_PAGE);
        let mut set = 0;
        for (i, b) in bytes.chunks_exact(8).take(WORDS_PER_PAGE).enumerate() {
            let mut le = [0u8; 8];
            le.copy_from_slice(b);
            let w = w0 + i;
            let Some(word) = self.tail_masked(w, u64::from_le_bytes(le)) else {
                break;
            };
            set += u64::from(word.count_ones());
            let old = self.word(DIRTY, w);
            self.dirty = self.dirty - u64::from(old.count_ones()) + u64::from(word.count_ones());
            for p in [DURABLE, DIRTY] {
                if let Some(x) = self.word_mut(p, w) {
                    *x = word;
                }
            }
        }
        set
    }

    /// `word` as word `w` of a plane (bits past the last chunk cleared),
    /// `None` past the last word.
    fn tail_masked(&self, w: usize, word: u64) -> Option<u64> {
        if w >= self.n {
            return None;
        }
        let first = (w as u64) * 64;
        let valid = self.nbits.saturating_sub(first).min(64);
        Some(if valid == 64 {
            word
        } else {
            word & ((1u64 << valid) - 1)
        })
    }

    /// Admits a write of `nr_sectors` at `sector` (0: no data range, e.g.
    /// a flush) on one pass (`first`: the writer's first) where the spool
    /// did `room` (rules 2 to 6).
    pub fn admit(&mut self, sector: u64, nr_sectors: u64, first: bool, room: Room) -> Admission {
        let mut defer = false;
        if nr_sectors > 0 && (first || room != Room::Wait) {
            defer = self.intend(sector, nr_sectors);
        }
        let mut gen = Gen::NONE;
        match room {
            Room::Spool if nr_sectors > 0 => {
                gen = Gen::of(self.cur);
                self.outstanding[self.cur] = self.outstanding[self.cur].saturating_add(1);
            }
            Room::Bitmap => self.mark_dirty(sector, nr_sectors),
            _ => {}
        }
        Admission { defer, gen }
    }

    /// Marks the chunks touched in the open generation; returns whether
    /// one is not durable (the write must wait), after adding them all to
    /// the wanted bits.
    fn intend(&mut self, sector: u64, nr_sectors: u64) -> bool {
        let Some((first, n)) = self.chunks(sector, nr_sectors) else {
            return false;
        };
        self.set(TOUCH[self.cur], first, n);
        let wait = range_words(first, n).any(|(w, m)| self.word(DURABLE, w) & m != m);
        if wait {
            self.set(WANT, first, n);
        }
        wait
    }

    fn mark_dirty(&mut self, sector: u64, nr_sectors: u64) {
        if let Some((first, n)) = self.chunks(sector, nr_sectors) {
            self.dirty += self.set(DIRTY, first, n);
        }
    }

    /// A record of generation `gen` is acknowledged, or its write will not
    /// happen after all (rule 4).
    pub fn finish(&mut self, gen: Gen) {
        if let Some(o) = gen.index().and_then(|g| self.outstanding.get_mut(g)) {
            *o = o.saturating_sub(1);
        }
    }

    /// A record of generation `gen` for `nr_sectors` at `sector` will not
    /// reach the secondary (its write failed, the spool could not keep it,
    /// the group went `ahead` before it was numbered): given back, its
    /// chunks dirty (rules 4 and 6).
    pub fn dropped(&mut self, gen: Gen, sector: u64, nr_sectors: u64) {
        self.finish(gen);
        self.mark_dirty(sector, nr_sectors);
    }

    /// Record `dev_seq` of generation `gen`, for `nr_sectors` at `sector`,
    /// left the spool by `SPOOLED`; the secondary acknowledged up to
    /// `acked` (rule 8).
    pub fn spooled(&mut self, gen: Gen, sector: u64, nr_sectors: u64, dev_seq: u64, acked: u64) {
        if gen.index().is_some() {
            if let Some((first, n)) = self.chunks(sector, nr_sectors) {
                self.set(HELD[self.hopen], first, n);
            }
            self.finish(gen);
        }
        let u = &mut self.held_upto[self.hopen];
        *u = (*u).max(dev_seq);
        self.rotate_held(acked);
    }

    /// The secondary acknowledged every record up to `acked` (rule 8).
    pub fn ack(&mut self, acked: u64) {
        self.rotate_held(acked);
    }

    fn rotate_held(&mut self, acked: u64) {
        // Twice: an acknowledgement may reach both generations.
        for _ in 0..2 {
            let closed = 1 - self.hopen;
            let upto = self.held_upto[closed];
            if upto != 0 && acked >= upto {
                self.release_held(closed);
                self.held_upto[closed] = 0;
            }
            let closed_free = self.held_upto[closed] == 0;
            let open_used = self.held_upto[self.hopen] != 0;
            if !(closed_free && open_used) {
                return;
            }
            self.hopen = closed;
        }
    }

    /// The sweep (rule 7); `last`: the device is leaving and has no write
    /// in flight, both generations close.  `cleared` is told each word
    /// whose durable bits it clears (their pages are to be written).
    pub fn sweep(&mut self, last: bool, mut cleared: impl FnMut(usize)) -> Sweep {
        let prev = 1 - self.cur;
        let busy = if last {
            self.outstanding.iter().any(|&o| o > 0)
        } else {
            self.outstanding[prev] > 0
        };
        if busy {
            return Sweep::Waiting;
        }
        let mut any = false;
        #[cfg(test)]
        if self.full_walk {
            any = self.sweep_full(last, &mut cleared);
            self.cur = prev;
            return Sweep::Swept { cleared: any };
        }
        // Only words the summaries name may be touched (rule 10): those of
        // the closing generation, and when leaving those of the open one.
        if last {
            self.drain(S_TOUCH[self.cur], |me, w| me.mark(S_TOUCH[prev], w));
        }
        self.drain(S_TOUCH[prev], |me, w| {
            if me.sweep_word(w, prev, last) {
                cleared(w);
                any = true;
            }
        });
        self.cur = prev;
        Sweep::Swept { cleared: any }
    }

    /// Sweeps word `w` (rule 7): clears the durable bits touched in
    /// generation `prev` (and the open one when `last`) that may go, and
    /// forgets those touches; returns whether a durable bit was cleared.
    fn sweep_word(&mut self, w: usize, prev: usize, last: bool) -> bool {
        let (tp, tc) = (self.word(TOUCH[prev], w), self.word(TOUCH[1 - prev], w));
        let mut clear = if last { tp | tc } else { tp & !tc };
        clear &= !self.word(DIRTY, w) & !self.word(WANT, w);
        clear &= !self.word(HELD[0], w) & !self.word(HELD[1], w);
        let mut any = false;
        if let Some(d) = self.word_mut(DURABLE, w) {
            clear &= *d;
            *d &= !clear;
            any = clear != 0;
        }
        if let Some(t) = self.word_mut(TOUCH[prev], w) {
            *t = 0;
        }
        if last {
            if let Some(t) = self.word_mut(TOUCH[1 - prev], w) {
                *t = 0;
            }
        }
        any
    }

    /// The chunks of held generation `closed` go back to the open touch
    /// generation (rule 8), word by word as its summary names them.
    fn release_held(&mut self, closed: usize) {
        #[cfg(test)]
        if self.full_walk {
            return self.release_held_full(closed);
        }
        let cur = self.cur;
        self.drain(S_HELD[closed], |me, w| {
            let h = me.word_mut(HELD[closed], w).map_or(0, core::mem::take);
            if h != 0 {
                if let Some(t) = me.word_mut(TOUCH[cur], w) {
                    *t |= h;
                }
                me.mark(S_TOUCH[cur], w);
            }
        });
    }

    /// Whether bitmap page `page` has wanted bits (rule 2): it is to be
    /// written with [`Self::persist_page`].
    pub fn wants_page(&self, page: usize) -> bool {
        self.page_words(WANT, page).iter().any(|&w| w != 0)
    }

    fn page_words(&self, p: usize, page: usize) -> &[u64] {
        let plane = self.plane(p);
        let w0 = page.saturating_mul(WORDS_PER_PAGE).min(plane.len());
        let end = w0.saturating_add(WORDS_PER_PAGE).min(plane.len());
        plane.get(w0..end).unwrap_or(&[])
    }

    /// Bitmap page `page` as written for intent: the durable and the
    /// wanted bits, little-endian, into `out` (words past the last chunk
    /// zero); the wanted words it holds into `snap` (rule 9).  Once the
    /// page is durable, [`Self::persisted`] with the same `snap`.
    pub fn persist_page(&self, page: usize, out: &mut [u8], snap: &mut [u64]) {
        let want = self.page_words(WANT, page);
        for (k, s) in snap.iter_mut().enumerate() {
            *s = want.get(k).copied().unwrap_or(0);
        }
        encode_page(self.page_words(DURABLE, page), Some(want), out);
    }

    /// The page built by [`Self::persist_page`] with `snap` is durable:
    /// the wanted bits it held are durable, and touched in the open
    /// generation (rules 2 and 7).
    pub fn persisted(&mut self, page: usize, snap: &[u64]) {
        let w0 = page.saturating_mul(WORDS_PER_PAGE);
        let touch = TOUCH[self.cur];
        for (k, &s) in snap.iter().enumerate() {
            let w = w0.saturating_add(k);
            if w >= self.n {
                break;
            }
            for (p, keep) in [(DURABLE, true), (touch, true), (WANT, false)] {
                if let Some(x) = self.word_mut(p, w) {
                    *x = if keep { *x | s } else { *x & !s };
                }
            }
            if s != 0 {
                self.mark(S_TOUCH[self.cur], w);
            }
        }
    }

    /// Bitmap page `page` as written after a sweep: the durable bits,
    /// little-endian, into `out` (rule 9).
    pub fn sweep_page(&self, page: usize, out: &mut [u8]) {
        encode_page(self.page_words(DURABLE, page), None, out);
    }

    /// Number of dirty chunks (rule 6), kept as they are set.
    pub fn dirty_count(&self) -> u64 {
        self.dirty
    }
}

/// `words` (or'ed with `or`'s) as little-endian bytes into `out`, zero
/// past them.
fn encode_page(words: &[u64], or: Option<&[u64]>, out: &mut [u8]) {
    for (i, b) in out.chunks_mut(8).enumerate() {
        let w =
            words.get(i).copied().unwrap_or(0) | or.and_then(|o| o.get(i).copied()).unwrap_or(0);
        let le = w.to_le_bytes();
        b.copy_from_slice(le.get(..b.len()).unwrap_or(&le));
    }
}

#[cfg(test)]
impl<S: DerefMut<Target = [u64]>> WriteIntent<S> {
    /// The seven planes, apart.
    fn planes(&mut self) -> Option<[&mut [u64]; PLANES]> {
        let n = self.n;
        let mut rest = self.words.get_mut(..n * PLANES)?;
        let mut out: [&mut [u64]; PLANES] = Default::default();
        for p in out.iter_mut() {
            let (a, b) = rest.split_at_mut(n);
            *p = a;
            rest = b;
        }
        Some(out)
    }

    /// The reference of rule 10: the sweep as it was, walking every word
    /// of the planes; returns whether a durable bit was cleared.
    fn sweep_full(&mut self, last: bool, mut cleared: impl FnMut(usize)) -> bool {
        let prev = 1 - self.cur;
        let mut any = false;
        if let Some([dirty, durable, want, t0, t1, h0, h1]) = self.planes() {
            let (tprev, tcur) = if prev == 0 { (t0, t1) } else { (t1, t0) };
            let words = durable
                .iter_mut()
                .zip(tprev.iter_mut().zip(tcur.iter_mut()))
                .zip(dirty.iter().zip(want.iter()).zip(h0.iter().zip(h1.iter())));
            for (w, ((d, (tp, tc)), ((dirty, want), (h0, h1)))) in words.enumerate() {
                let mut clear = *tp;
                if last {
                    clear |= *tc;
                } else {
                    clear &= !*tc;
                }
                clear &= !*dirty & !*want & !*h0 & !*h1 & *d;
                if clear != 0 {
                    *d &= !clear;
                    cleared(w);
                    any = true;
                }
                *tp = 0;
                if last {
                    *tc = 0;
                }
            }
        }
        any
    }

    /// The reference of rule 10 for releasing held chunks: every word.
    fn release_held_full(&mut self, closed: usize) {
        let cur = self.cur;
        if let Some([_, _, _, t0, t1, h0, h1]) = self.planes() {
            let t = if cur == 0 { t0 } else { t1 };
            let h = if closed == 0 { h0 } else { h1 };
            for (hw, tw) in h.iter_mut().zip(t.iter_mut()) {
                *tw |= *hw;
                *hw = 0;
            }
        }
    }

    /// Dirty chunks counted bit by bit.
    fn dirty_full(&self) -> u64 {
        self.plane(DIRTY)
            .iter()
            .map(|x| u64::from(x.count_ones()))
            .sum()
    }

    /// Whether the summaries name every non-zero touch and held word.
    fn summaries_cover(&self) -> bool {
        let planes = [TOUCH[0], TOUCH[1], HELD[0], HELD[1]];
        let sums = [S_TOUCH[0], S_TOUCH[1], S_HELD[0], S_HELD[1]];
        planes.iter().zip(sums).all(|(&p, s)| {
            let at = self.summary_at(s);
            (0..self.n).all(|w| {
                let j = w / 64;
                self.word(p, w) == 0
                    || (self.words[at + self.l2 + j] >> (w % 64) & 1 == 1
                        && self.words[at + j / 64] >> (j % 64) & 1 == 1)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 200 chunks of 8 sectors: 4 words a plane.
    const BITS: u64 = 200;
    const SHIFT: u32 = 3;

    fn wi() -> WriteIntent<Vec<u64>> {
        WriteIntent::new(vec![0; storage_words(BITS).unwrap()], BITS, SHIFT).unwrap()
    }

    /// Sector of chunk `c`.
    fn s(c: u64) -> u64 {
        c << SHIFT
    }

    fn has(w: &WriteIntent<Vec<u64>>, p: usize, c: u64) -> bool {
        w.plane(p)[(c / 64) as usize] & (1 << (c % 64)) != 0
    }

    fn durable(w: &WriteIntent<Vec<u64>>, c: u64) -> bool {
        has(w, DURABLE, c)
    }

    /// Writes every wanted page and reports it durable; returns the disk.
    fn persist(w: &mut WriteIntent<Vec<u64>>, disk: &mut [u64]) {
        let mut page = vec![0u8; 4096];
        let mut snap = vec![0u64; WORDS_PER_PAGE];
        for p in 0..w.pages() {
            if w.wants_page(p) {
                w.persist_page(p, &mut page, &mut snap);
                decode(&page, p, disk);
                w.persisted(p, &snap);
            }
        }
    }

    fn sweep(w: &mut WriteIntent<Vec<u64>>, disk: &mut [u64]) -> Sweep {
        let mut words = Vec::new();
        let r = w.sweep(false, |x| words.push(x));
        assert_eq!(r.cleared(), !words.is_empty());
        let mut page = vec![0u8; 4096];
        for p in 0..w.pages() {
            w.sweep_page(p, &mut page);
            decode(&page, p, disk);
        }
        r
    }

    fn decode(page: &[u8], p: usize, disk: &mut [u64]) {
        for (i, b) in page.chunks_exact(8).enumerate() {
            if let Some(d) = disk.get_mut(p * WORDS_PER_PAGE + i) {
                *d = u64::from_le_bytes(b.try_into().unwrap());
            }
        }
    }

    /// A write of one chunk the spool takes, landed: its generation.
    fn write(w: &mut WriteIntent<Vec<u64>>, disk: &mut [u64], c: u64) -> Gen {
        let a = w.admit(s(c), 8, true, Room::Spool);
        if a.defer {
            persist(w, disk);
        }
        a.gen
    }

    #[test]
    fn rule1_chunks_are_clipped() {
        let w = wi();
        assert_eq!(w.chunks(0, 8), Some((0, 1)));
        assert_eq!(w.chunks(7, 2), Some((0, 2)));
        // No sector: the chunk of its first sector.
        assert_eq!(w.chunks(s(5) + 3, 0), Some((5, 1)));
        // Clipped at the end; wholly past it, or overflowing: none.
        assert_eq!(w.chunks(s(199), 64), Some((199, 1)));
        assert_eq!(w.chunks(s(200), 8), None);
        assert_eq!(w.chunks(u64::MAX, 2), None);
        let mut w = wi();
        assert!(!w.admit(s(300), 8, true, Room::Spool).defer);
        assert!(!w.wants_page(0));
    }

    #[test]
    fn rule2_a_write_waits_for_its_chunks_to_be_durable() {
        let mut w = wi();
        let mut disk = vec![0u64; 4];
        // Chunks 3 and 4: neither durable, the write waits, both wanted.
        let a = w.admit(s(3), 16, true, Room::Spool);
        assert!(a.defer);
        assert!(w.wants_page(0));
        assert!(!durable(&w, 3) && !durable(&w, 4));
        persist(&mut w, &mut disk);
        assert_eq!(disk[0], 0b11000);
        assert!(durable(&w, 3) && durable(&w, 4) && !w.wants_page(0));
        // Durable now: the next write to them goes at once; one that also
        // touches chunk 5 waits, and wants all three.
        assert!(!w.admit(s(3), 16, true, Room::Spool).defer);
        assert!(w.admit(s(4), 16, true, Room::Spool).defer);
        let mut page = [0u8; 4096];
        let mut snap = [0u64; WORDS_PER_PAGE];
        w.persist_page(0, &mut page, &mut snap);
        assert_eq!(snap[0], 0b11_0000);
        // Only the bits the page held become durable: one wanted after the
        // page was built waits for the next page.
        assert!(w.admit(s(9), 1, true, Room::Spool).defer);
        w.persisted(0, &snap);
        assert!(durable(&w, 5) && !durable(&w, 9) && w.wants_page(0));
    }

    #[test]
    fn rule3_every_registered_write_touches_the_open_generation() {
        let mut w = wi();
        let mut disk = vec![0u64; 4];
        w.admit(s(1), 8, true, Room::Spool); // waits
        persist(&mut w, &mut disk);
        w.admit(s(1), 8, true, Room::Spool); // goes at once
        w.admit(s(2), 8, true, Room::Bitmap);
        w.admit(s(3), 8, true, Room::Wait);
        for c in 1..=3 {
            assert!(has(&w, TOUCH[0], c), "{c}");
        }
        assert!(!has(&w, TOUCH[0], 4) && !has(&w, TOUCH[1], 1));
        // A flush (no sector) registers nothing.
        w.admit(s(6), 0, true, Room::Spool);
        assert!(!has(&w, TOUCH[0], 6));
    }

    #[test]
    fn rule4_a_record_counts_until_given_back() {
        let mut w = wi();
        let mut disk = vec![0u64; 4];
        let g = write(&mut w, &mut disk, 7);
        assert_eq!(g, Gen::of(0));
        assert_eq!(w.outstanding, [1, 0]);
        // Only records with sectors that the spool took count.
        assert_eq!(w.admit(0, 0, true, Room::Spool).gen, Gen::NONE);
        assert_eq!(w.admit(s(8), 8, true, Room::Wait).gen, Gen::NONE);
        assert_eq!(w.admit(s(8), 8, true, Room::Bitmap).gen, Gen::NONE);
        assert_eq!(w.outstanding, [1, 0]);
        // The generation closes; its record keeps chunk 7 marked.
        assert_eq!(sweep(&mut w, &mut disk), Sweep::Swept { cleared: false });
        assert_eq!(sweep(&mut w, &mut disk), Sweep::Waiting);
        assert_eq!(sweep(&mut w, &mut disk), Sweep::Waiting);
        assert!(durable(&w, 7) && disk[0] & 1 << 7 != 0);
        w.finish(g);
        w.finish(g); // a stale one does not go below zero
        assert_eq!(w.outstanding, [0, 0]);
        assert_eq!(sweep(&mut w, &mut disk), Sweep::Swept { cleared: true });
        assert!(!durable(&w, 7) && disk[0] & 1 << 7 == 0);
        w.finish(Gen::NONE);
    }

    #[test]
    fn rule5_intent_again_on_the_pass_that_takes_the_write() {
        let mut w = wi();
        let mut disk = vec![0u64; 4];
        let g = write(&mut w, &mut disk, 2);
        w.finish(g);
        // Chunk 2 durable; a writer finds the spool full, registers intent
        // (it need not wait) and sleeps.
        let a = w.admit(s(2), 8, true, Room::Wait);
        assert_eq!(
            a,
            Admission {
                defer: false,
                gen: Gen::NONE
            }
        );
        // It wakes to a full spool again: nothing registered.
        sweep(&mut w, &mut disk);
        assert!(!w.admit(s(2), 8, false, Room::Wait).defer);
        assert!(!has(&w, TOUCH[1], 2));
        // Meanwhile two sweeps cleared its chunk.
        assert!(sweep(&mut w, &mut disk).cleared());
        assert!(!durable(&w, 2) && disk[0] == 0);
        // The pass that takes it registers intent again: it waits, and
        // counts in the generation open now.
        let a = w.admit(s(2), 8, false, Room::Spool);
        assert!(a.defer);
        assert_eq!(a.gen, Gen::of(w.cur));
        assert!(has(&w, TOUCH[w.cur], 2) && w.wants_page(0));
        // Likewise a pass that goes to the bitmap.
        assert!(w.admit(s(3), 8, false, Room::Bitmap).defer);
        assert!(has(&w, TOUCH[w.cur], 3));
    }

    #[test]
    fn rule6_dirty_chunks_stay_marked_and_are_counted() {
        let mut w = wi();
        let mut disk = vec![0u64; 4];
        // Ahead: bitmap only.  The write still waits for its intent.
        assert!(w.admit(s(10), 16, true, Room::Bitmap).defer);
        persist(&mut w, &mut disk);
        // A failed write, a record the spool could not keep.
        let g = write(&mut w, &mut disk, 20);
        w.dropped(g, s(20), 8);
        assert_eq!(w.outstanding, [0, 0]);
        assert_eq!(w.dirty_count(), 3);
        for _ in 0..4 {
            sweep(&mut w, &mut disk);
        }
        assert!(durable(&w, 10) && durable(&w, 11) && durable(&w, 20));
        assert_eq!(disk[0], 1 << 10 | 1 << 11 | 1 << 20);
        // Joining: what the meta device marks is durable and dirty; bits
        // past the last chunk are ignored.
        let mut w = wi();
        let mut page = [0u8; 4096];
        page[..8].copy_from_slice(&0b1010u64.to_le_bytes());
        page[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(w.load(0, &page), 2 + 8);
        assert_eq!(w.dirty_count(), 10);
        assert!(durable(&w, 1) && durable(&w, 3) && durable(&w, 199));
        assert!(!w.admit(s(1), 8, true, Room::Spool).defer);
        let mut disk = vec![0u64; 4];
        sweep(&mut w, &mut disk);
        sweep(&mut w, &mut disk);
        assert!(durable(&w, 1) && disk[0] == 0b1010);
    }

    #[test]
    fn rule7_the_sweep_clears_a_closed_untouched_generation() {
        let mut w = wi();
        let mut disk = vec![0u64; 4];
        for c in [1, 2, 3, 4, 70] {
            let g = write(&mut w, &mut disk, c);
            w.finish(g);
        }
        // Chunk 3 is wanted again (a write waits for it below), 4 held.
        // First sweep: generation 0 closes, nothing cleared yet.
        assert_eq!(sweep(&mut w, &mut disk), Sweep::Swept { cleared: false });
        assert_eq!(w.cur, 1);
        // Chunk 2 written again in the open generation: it stays.
        let g = write(&mut w, &mut disk, 2);
        w.finish(g);
        let g = write(&mut w, &mut disk, 4);
        w.spooled(g, s(4), 8, 1, 0);
        let mut snap = [0u64; WORDS_PER_PAGE];
        let mut page = [0u8; 4096];
        w.words[WANT * w.n] |= 1 << 3;
        let mut words = Vec::new();
        assert!(w.sweep(false, |x| words.push(x)).cleared());
        assert_eq!(words, [0, 1]);
        assert!(!durable(&w, 1) && !durable(&w, 70));
        assert!(durable(&w, 2) && durable(&w, 3) && durable(&w, 4));
        w.persist_page(0, &mut page, &mut snap);
        w.persisted(0, &snap);
        // Chunk 2 goes a generation later.
        assert!(sweep(&mut w, &mut disk).cleared());
        assert!(!durable(&w, 2) && durable(&w, 4) && durable(&w, 3));
        // Leaving: both generations close at once.
        let mut w = wi();
        let g = write(&mut w, &mut disk, 5);
        assert_eq!(w.sweep(true, |_| {}), Sweep::Waiting);
        assert_eq!(w.cur, 0);
        w.finish(g);
        assert!(w.sweep(true, |_| {}).cleared());
        assert!(!durable(&w, 5));
        assert!(w
            .plane(TOUCH[0])
            .iter()
            .chain(w.plane(TOUCH[1]))
            .all(|&x| x == 0));
    }

    #[test]
    fn rule7_a_chunk_made_durable_is_swept_even_if_its_write_never_went() {
        let mut w = wi();
        let mut disk = vec![0u64; 4];
        // A REQ_NOWAIT write would wait: refused, its record given back;
        // its chunk stays wanted.
        let a = w.admit(s(6), 8, true, Room::Spool);
        assert!(a.defer);
        w.finish(a.gen);
        // Its generation is swept before the next kick writes the bit ...
        sweep(&mut w, &mut disk);
        sweep(&mut w, &mut disk);
        persist(&mut w, &mut disk);
        assert!(durable(&w, 6) && disk[0] == 1 << 6);
        // ... which counts as touched now, and is cleared in its turn.
        sweep(&mut w, &mut disk);
        assert!(sweep(&mut w, &mut disk).cleared());
        assert_eq!(disk[0], 0);
    }

    #[test]
    fn rule8_spooled_chunks_are_held_until_acknowledged() {
        let mut w = wi();
        let mut disk = vec![0u64; 4];
        let a = write(&mut w, &mut disk, 1);
        let b = write(&mut w, &mut disk, 2);
        // Record 5 (chunk 1) spooled: its count given back, chunk held in
        // generation 0, which closes at once (waits for ACK 5).
        w.spooled(a, s(1), 8, 5, 0);
        assert_eq!(w.outstanding, [1, 0]);
        assert!(has(&w, HELD[0], 1));
        assert_eq!((w.held_upto, w.hopen), ([5, 0], 1));
        // A marker (no chunk) then record 8 (chunk 2) go to generation 1.
        w.spooled(Gen::NONE, 0, 0, 7, 0);
        w.spooled(b, s(2), 8, 8, 0);
        assert_eq!(w.outstanding, [0, 0]);
        assert_eq!((w.held_upto, w.hopen), ([5, 8], 1));
        for _ in 0..4 {
            sweep(&mut w, &mut disk);
        }
        assert!(durable(&w, 1) && durable(&w, 2) && disk[0] == 0b110);
        // ACK 7: generation 0 goes back to the sweep, generation 1 waits.
        w.ack(4);
        assert_eq!(w.held_upto, [5, 8]);
        w.ack(7);
        assert_eq!(w.held_upto, [0, 8]);
        assert!(!has(&w, HELD[0], 1) && has(&w, TOUCH[w.cur], 1));
        sweep(&mut w, &mut disk);
        assert!(sweep(&mut w, &mut disk).cleared());
        assert!(!durable(&w, 1) && durable(&w, 2) && disk[0] == 0b100);
        // Generation 0 opened; a record spooled now goes there, and the
        // ACK of 8 and 9 releases both.
        assert_eq!((w.held_upto, w.hopen), ([0, 8], 0));
        let c = write(&mut w, &mut disk, 3);
        w.spooled(c, s(3), 8, 9, 7);
        assert_eq!((w.held_upto, w.hopen), ([9, 8], 0));
        assert!(has(&w, HELD[0], 3));
        w.ack(9);
        assert_eq!((w.held_upto, w.hopen), ([0, 0], 1));
        let d = write(&mut w, &mut disk, 4);
        w.spooled(d, s(4), 8, 10, 9);
        assert_eq!((w.held_upto, w.hopen), ([0, 10], 0));
        w.ack(10);
        assert_eq!(w.held_upto, [0, 0]);
        // A record spooled that the acknowledgements already cover is
        // released at once.
        w.spooled(Gen::NONE, 0, 0, 11, 11);
        assert_eq!(w.held_upto, [0, 0]);
        sweep(&mut w, &mut disk);
        sweep(&mut w, &mut disk);
        assert_eq!(disk[0], 0);
    }

    #[test]
    fn rule9_pages_hold_durable_and_wanted_bits() {
        // 40,000 chunks: two pages, the second partly used.
        let bits = 40_000;
        let mut w = WriteIntent::new(vec![0; storage_words(bits).unwrap()], bits, 3).unwrap();
        assert_eq!(w.pages(), 2);
        assert!(w.admit(0, 8, true, Room::Spool).defer);
        let mut page = [0xffu8; 4096];
        let mut snap = [7u64; WORDS_PER_PAGE];
        w.persist_page(0, &mut page, &mut snap);
        w.persisted(0, &snap);
        // Chunk 32768 + 65: page 1, word 1, bit 1, wanted only.
        assert!(w.admit((32_768 + 65) << 3, 8, true, Room::Spool).defer);
        assert!(!w.wants_page(0) && w.wants_page(1));
        w.persist_page(1, &mut page, &mut snap);
        assert_eq!(
            &page[..16],
            &[0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
        assert!(page[16..].iter().all(|&b| b == 0));
        assert_eq!(&snap[..3], &[0, 2, 0]);
        // Not durable yet: the sweep's page does not hold it.
        w.sweep_page(1, &mut page);
        assert!(page.iter().all(|&b| b == 0));
        w.persisted(1, &snap);
        w.sweep_page(1, &mut page);
        assert_eq!(page[8], 2);
        w.sweep_page(0, &mut page);
        assert_eq!(page[0], 1);
        // A page past the end is empty.
        w.sweep_page(5, &mut page);
        assert!(page.iter().all(|&b| b == 0));
    }

    #[test]
    fn storage_and_shift_are_checked() {
        // Seven planes of 4 words, four summaries of 1 + 1.
        assert_eq!(storage_words(200), Some(36));
        // 1 TiB of 64 KiB chunks: 256 Ki words a plane, summaries of
        // 4 Ki + 64.
        assert_eq!(storage_words(1 << 24), Some(7 * 262_144 + 4 * 4_160));
        let e = WriteIntent::new(vec![0; 35], 200, 3).unwrap_err();
        assert_eq!(e, IntentError::StorageTooSmall);
        let e = WriteIntent::new(vec![0; 36], 200, MAX_CHUNK_SHIFT + 1).unwrap_err();
        assert_eq!(e, IntentError::BadChunkShift);
        // Storage is cleared; a larger one is fine.
        let w = WriteIntent::new(vec![!0; 40], 200, 3).unwrap();
        assert_eq!(w.dirty_count(), 0);
        assert!(!w.wants_page(0));
    }

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// Rule 10: random operations on two states, one swept and released
    /// through the summaries, one by walking every word, leave the same
    /// bits, report the same words cleared, and the dirty count and the
    /// summaries hold.
    #[test]
    #[allow(clippy::cast_possible_truncation)]
    fn rule10_summaries_sweep_as_the_full_walk() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..60 {
            let nbits = match case % 3 {
                0 => 1 + rng.below(300),
                1 => 1 + rng.below(60_000),
                _ => 262_144 + rng.below(200_000),
            };
            let shift = rng.below(3) as u32;
            let sectors = nbits << shift;
            let new = |full| {
                let mut w =
                    WriteIntent::new(vec![0; storage_words(nbits).unwrap()], nbits, shift).unwrap();
                w.full_walk = full;
                w
            };
            let (mut a, mut b) = (new(false), new(true));
            let mut gens: Vec<Gen> = Vec::new();
            let (mut ds, mut acked) = (0u64, 0u64);
            let mut page = vec![0u8; 4096];
            let mut snap = vec![0u64; WORDS_PER_PAGE];
            let hot = rng.below(sectors);
            for _ in 0..400 {
                let sector = if rng.below(2) == 0 {
                    (hot + rng.below(4096)).min(sectors - 1)
                } else {
                    rng.below(sectors)
                };
                let nr = match rng.below(10) {
                    0 => 0,
                    1 => rng.below(20_000),
                    _ => 1 + rng.below(64),
                };
                match rng.below(12) {
                    0..=3 => {
                        let room = [Room::Spool, Room::Wait, Room::Bitmap][rng.below(3) as usize];
                        let first = rng.below(4) != 0;
                        let x = a.admit(sector, nr, first, room);
                        assert_eq!(x, b.admit(sector, nr, first, room));
                        gens.push(x.gen);
                    }
                    4 => {
                        if let Some(g) = gens.pop() {
                            a.finish(g);
                            b.finish(g);
                        }
                    }
                    5 => {
                        if let Some(g) = gens.pop() {
                            a.dropped(g, sector, nr);
                            b.dropped(g, sector, nr);
                        }
                    }
                    6 => {
                        if let Some(g) = gens.pop() {
                            ds += 1 + rng.below(3);
                            a.spooled(g, sector, nr, ds, acked);
                            b.spooled(g, sector, nr, ds, acked);
                        }
                    }
                    7 => {
                        acked = acked.max(rng.below(ds + 1));
                        a.ack(acked);
                        b.ack(acked);
                    }
                    8 => {
                        for p in 0..a.pages() {
                            assert_eq!(a.wants_page(p), b.wants_page(p));
                            if a.wants_page(p) {
                                a.persist_page(p, &mut page, &mut snap);
                                a.persisted(p, &snap);
                                b.persisted(p, &snap);
                            }
                        }
                    }
                    9 if rng.below(20) == 0 => {
                        let p = rng.below(a.pages() as u64) as usize;
                        for x in page.iter_mut() {
                            *x = if rng.below(4) == 0 {
                                rng.below(256) as u8
                            } else {
                                0
                            };
                        }
                        assert_eq!(a.load(p, &page), b.load(p, &page));
                    }
                    _ => {
                        let last = rng.below(8) == 0;
                        let (mut ca, mut cb) = (Vec::new(), Vec::new());
                        let ra = a.sweep(last, |w| ca.push(w));
                        let rb = b.sweep(last, |w| cb.push(w));
                        assert_eq!((ra, &ca), (rb, &cb), "case {case}");
                    }
                }
                let planes = PLANES * a.n;
                assert!(a.words[..planes] == b.words[..planes], "case {case}");
                assert_eq!((a.cur, a.hopen, a.held_upto), (b.cur, b.hopen, b.held_upto));
                assert_eq!(a.dirty_count(), a.dirty_full());
                assert_eq!(b.dirty_count(), b.dirty_full());
                assert!(a.summaries_cover(), "case {case}");
            }
        }
    }

    /// The cost of a sweep per word it visits, natively: `cargo test
    /// --release -p ferry-core --lib sweep_cost -- --ignored --nocapture`.
    /// A device of 1 TiB in chunks of 64 KiB (16 Mi chunks, 256 Ki words
    /// a plane); every durable bit of the closing generation is cleared.
    #[test]
    #[ignore]
    #[allow(clippy::cast_precision_loss)]
    fn sweep_cost() {
        use std::time::Instant;
        let nbits = 1u64 << 24;
        let mut w = WriteIntent::new(vec![0; storage_words(nbits).unwrap()], nbits, 7).unwrap();
        let mut page = vec![0u8; 4096];
        let mut snap = vec![0u64; WORDS_PER_PAGE];
        let mut run = |w: &mut WriteIntent<Vec<u64>>, chunks: &[u64]| {
            // Touch, make durable (touched in the open generation), close
            // it, then time the sweep that clears it.
            for &c in chunks {
                w.admit(c << 7, 128, true, Room::Wait);
            }
            for p in 0..w.pages() {
                if w.wants_page(p) {
                    w.persist_page(p, &mut page, &mut snap);
                    w.persisted(p, &snap);
                }
            }
            w.sweep(false, |_| {});
            let mut n = 0usize;
            let t = Instant::now();
            let r = w.sweep(false, |_| n += 1);
            let e = t.elapsed();
            assert!(r.cleared() && n > 0);
            (e, n)
        };
        let all: Vec<u64> = (0..nbits).collect();
        let sparse: Vec<u64> = (0..1000u64).map(|i| i * (nbits / 1000)).collect();
        for (name, chunks) in [("every chunk", &all), ("1,000 chunks", &sparse)] {
            let mut best = f64::MAX;
            let mut words = 0;
            for _ in 0..9 {
                let (e, n) = run(&mut w, chunks);
                best = best.min(e.as_secs_f64());
                words = n;
            }
            println!(
                "{name}: {words} words in {:.1} us, {:.2} ns a word",
                best * 1e6,
                best * 1e9 / words as f64
            );
        }
        // Nothing touched: the summaries' second level only.
        let mut best = f64::MAX;
        for _ in 0..9 {
            let t = Instant::now();
            w.sweep(false, |_| {});
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("empty sweep: {:.2} us", best * 1e6);
    }
}
