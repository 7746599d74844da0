//! Tests of [`super`] (intent.rs): one per rule, and the properties.

use super::*;

/// Test-only views of the state: the planes apart, the reference walk of
/// the sweep, the summaries' invariant (rule 10).
impl<S: DerefMut<Target = [u64]>> WriteIntent<S> {
    /// The seven planes, apart.
    pub(super) fn planes(&mut self) -> Option<[&mut [u64]; PLANES]> {
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
    pub(super) fn sweep_full(&mut self, last: bool, mut cleared: impl FnMut(usize)) -> bool {
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
    pub(super) fn release_held_full(&mut self, closed: usize) {
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
    pub(super) fn dirty_full(&self) -> u64 {
        self.plane(DIRTY)
            .iter()
            .map(|x| u64::from(x.count_ones()))
            .sum()
    }

    /// Whether the summaries name every non-zero touch and held word.
    pub(super) fn summaries_cover(&self) -> bool {
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

#[test]
fn geometry_and_errors_are_reported() {
    let w = wi();
    assert_eq!((w.nbits(), w.chunk_shift()), (BITS, SHIFT));
    let w = WriteIntent::new(vec![0; storage_words(5).unwrap()], 5, 0).unwrap();
    assert_eq!((w.nbits(), w.chunk_shift()), (5, 0));
    let (a, b) = (
        IntentError::StorageTooSmall.to_string(),
        IntentError::BadChunkShift.to_string(),
    );
    assert!(!a.is_empty() && !b.is_empty() && a != b);
}

#[test]
fn rule8_a_record_of_no_generation_holds_no_chunk() {
    let mut w = wi();
    let mut disk = vec![0u64; 4];
    let g = write(&mut w, &mut disk, 1);
    w.finish(g);
    // A flush (no chunk, no generation) at chunk 1's sector leaves the
    // spool by SPOOLED: chunk 1 is not held, and is swept in its turn.
    w.spooled(Gen::NONE, s(1), 0, 5, 0);
    assert!(!has(&w, HELD[0], 1) && !has(&w, HELD[1], 1));
    assert_eq!(w.outstanding, [0, 0]);
    sweep(&mut w, &mut disk);
    assert!(sweep(&mut w, &mut disk).cleared());
    assert!(!durable(&w, 1) && disk[0] == 0);
}

/// The words of summary `s`, both levels.
fn summary(w: &WriteIntent<Vec<u64>>, s: usize) -> &[u64] {
    let at = w.summary_at(s);
    &w.words[at..at + w.l2 + w.l1]
}

#[test]
fn rule10_a_summary_names_only_words_of_its_own_generation() {
    // Writes that touch, want and dirty chunks in three words, none
    // spooled: a release of held chunks has no word to visit.
    let mut w = wi();
    let mut disk = vec![0u64; 4];
    assert!(w.admit(s(1), 8, true, Room::Bitmap).defer);
    assert!(w.admit(s(70), 8, true, Room::Spool).defer);
    w.dropped(Gen::of(w.cur), s(130), 8);
    persist(&mut w, &mut disk);
    assert!(summary(&w, S_TOUCH[w.cur]).iter().any(|&x| x != 0));
    for s in S_HELD {
        assert!(summary(&w, s).iter().all(|&x| x == 0), "held summary {s}");
    }
    assert!(summary(&w, S_TOUCH[1 - w.cur]).iter().all(|&x| x == 0));
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

#[path = "intent_props.rs"]
mod props;
