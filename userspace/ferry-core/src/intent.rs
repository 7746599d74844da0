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

#[path = "intent_types.rs"]
mod types;
pub use types::{Admission, Gen, IntentError, Room, Sweep};

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

    /// The dirty chunks (rule 6), one bit per chunk: what a resync copies
    /// ([`crate::resync`]).
    pub fn dirty_words(&self) -> &[u64] {
        self.plane(DIRTY)
    }

    /// `FULL_RESYNC` (a full copy, [`crate::resync`]): every chunk becomes
    /// dirty (rule 6), and every chunk the meta device does not mark yet is
    /// wanted (rule 2), so that once the next [`Self::persist_page`] is
    /// durable a crash leaves marked every chunk whose copy the secondary
    /// has not applied.  Returns the chunks that were not dirty.
    pub fn mark_all(&mut self) -> u64 {
        let new = self.set(DIRTY, 0, self.nbits);
        self.dirty += new;
        for (w, m) in range_words(0, self.nbits) {
            let d = self.word(DURABLE, w);
            if let Some(x) = self.word_mut(WANT, w) {
                *x |= m & !d;
            }
        }
        new
    }

    /// The chunks set in `covered` reached the secondary in a resync span
    /// it applied ([`crate::resync`], rule 7): they are dirty no more, and
    /// are touched in the open generation, so that the sweep clears their
    /// marks a generation later, as after a write whose record was
    /// acknowledged.
    pub fn resynced(&mut self, covered: &[u64]) {
        for (w, &m) in covered.iter().enumerate().take(self.n) {
            if m == 0 {
                continue;
            }
            let was = self.word(DIRTY, w);
            if let Some(x) = self.word_mut(DIRTY, w) {
                *x &= !m;
            }
            self.dirty -= u64::from((was & m).count_ones());
            let t = TOUCH[self.cur];
            if let Some(x) = self.word_mut(t, w) {
                *x |= m;
            }
            self.mark(S_TOUCH[self.cur], w);
        }
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
#[path = "intent_tests.rs"]
mod tests;
