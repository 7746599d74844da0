//! Tests of [`super::super`] (intent.rs), continued: rule 10 over random
//! operations against the full walk, and the sweep's cost.

use super::*;

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

/// `FULL_RESYNC`: every chunk dirty and, once persisted, marked on disk;
/// the sweep keeps them all until the span that copied them is applied.
#[test]
fn mark_all_dirties_and_marks_every_chunk() {
    // 200 chunks: 4 words.
    const WORDS: usize = 4;
    let mut w = wi();
    let mut disk = vec![0u64; WORDS];
    let g = write(&mut w, &mut disk, 7);
    w.dropped(g, s(9), 8);
    assert_eq!(w.dirty_count(), 1);
    assert_eq!(w.mark_all(), BITS - 1);
    assert_eq!(w.dirty_count(), BITS);
    assert!((0..BITS).all(|c| has(&w, DIRTY, c)));
    assert!(
        has(&w, WANT, 0) && !has(&w, WANT, 7),
        "chunk 7 was durable already"
    );
    // Past the last chunk nothing is set.
    assert_eq!(w.plane(DIRTY)[3] >> (BITS % 64), 0);
    assert_eq!(w.plane(WANT)[3] >> (BITS % 64), 0);
    persist(&mut w, &mut disk);
    assert!((0..BITS).all(|c| durable(&w, c)));
    assert!((0..BITS).all(|c| disk[(c / 64) as usize] & (1 << (c % 64)) != 0));
    w.finish(g);
    for _ in 0..3 {
        sweep(&mut w, &mut disk);
    }
    assert!((0..BITS).all(|c| durable(&w, c)), "a dirty chunk was swept");
    assert_eq!(w.mark_all(), 0);
    // The copy applied: clean again, and swept later.
    let all = vec![u64::MAX; WORDS];
    w.resynced(&all);
    assert_eq!(w.dirty_count(), 0);
    for _ in 0..3 {
        sweep(&mut w, &mut disk);
    }
    assert!((0..BITS).all(|c| !durable(&w, c)));
    assert!(disk.iter().all(|&d| d == 0));
}
