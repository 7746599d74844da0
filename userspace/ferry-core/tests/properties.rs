//! Randomised comparisons of ferry-core's structures against naive models.

use std::collections::{BTreeMap, BTreeSet};

use ferry_core::bitmap::{decode_bitmap, ChunkBitmap};
use ferry_core::gate::{LogPending, PendingLog, Watermark};
use ferry_core::progress::{Mark, SeqWindow};
use ferry_core::record::RecordKind;
use ferry_core::select::{group_limit, next_in_group_order, Insert, Received, Stamp, StreamWindow};
use ferry_core::FastDigest;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn bitmap_matches_a_vector_of_bools() {
    let mut rng = Rng(1);
    for _ in 0..300 {
        let nbits = 1 + rng.below(300);
        let mut words = vec![0u64; nbits.div_ceil(64) as usize];
        let mut bm = ChunkBitmap::new(&mut words, nbits).unwrap();
        let mut model = vec![false; nbits as usize];
        for _ in 0..50 {
            let start = rng.below(nbits + 2);
            let len = rng.below(80);
            let set = rng.below(2) == 0;
            let r = if set {
                bm.set_range(start, len)
            } else {
                bm.clear_range(start, len)
            };
            if start + len <= nbits {
                r.unwrap();
                for b in &mut model[start as usize..(start + len) as usize] {
                    *b = set;
                }
            } else {
                assert!(r.is_err());
            }
        }
        let count = model.iter().filter(|&&b| b).count() as u64;
        assert_eq!(bm.count(), count);
        for (i, &b) in model.iter().enumerate() {
            assert_eq!(bm.test(i as u64), b);
        }
        let mut from_runs = vec![false; nbits as usize];
        let mut prev_end = None;
        for (s, l) in bm.runs() {
            assert!(l > 0);
            assert!(
                prev_end.is_none_or(|e| s > e),
                "runs are maximal and ordered"
            );
            for b in &mut from_runs[s as usize..(s + l) as usize] {
                *b = true;
            }
            prev_end = Some(s + l);
        }
        assert_eq!(from_runs, model);
        let mut disk = vec![0u8; bm.encoded_len()];
        bm.encode(3, &FastDigest, &mut disk).unwrap();
        let mut back = vec![0u64; words_len(nbits)];
        decode_bitmap(&disk, &FastDigest, &mut back).unwrap();
        assert_eq!(back.as_slice(), bm.words());
    }
}

fn words_len(nbits: u64) -> usize {
    nbits.div_ceil(64) as usize
}

#[test]
fn seq_window_matches_a_set() {
    let mut rng = Rng(2);
    for _ in 0..200 {
        let mut w = SeqWindow::new([0u64; 2], 0);
        let mut done = BTreeSet::new();
        let mut contiguous = 0u64;
        for _ in 0..400 {
            let seq = contiguous + 1 + rng.below(140);
            let r = w.mark(seq);
            if seq - contiguous > 128 {
                assert!(r.is_err());
                continue;
            }
            assert_eq!(r.unwrap() == Mark::New, done.insert(seq));
            while done.contains(&(contiguous + 1)) {
                contiguous += 1;
            }
            assert_eq!(w.contiguous(), contiguous);
        }
    }
}

#[test]
fn gate_watermark_matches_a_model() {
    let mut rng = Rng(3);
    for _ in 0..200 {
        let mut ring = LogPending::new(vec![PendingLog::default(); 64]);
        let mut pending = BTreeMap::new();
        let (mut dev_seq, mut group_seq) = (0u64, 0u64);
        for _ in 0..300 {
            if rng.below(2) == 0 && pending.len() < 64 {
                dev_seq += 1;
                group_seq += 1 + rng.below(5);
                ring.push(PendingLog { dev_seq, group_seq }).unwrap();
                pending.insert(dev_seq, group_seq);
            } else {
                let upto = rng.below(dev_seq + 2);
                ring.ack(upto);
                pending.retain(|&d, _| d > upto);
            }
            let want = pending.values().min().map(|g| g - 1);
            assert_eq!(Watermark::of([&ring]).get(), want);
        }
    }
}

/// Records of three streams, shuffled and duplicated, must come out in group
/// order, and never beyond what every stream has delivered contiguously.
#[test]
fn selection_applies_exactly_the_complete_prefix() {
    let mut rng = Rng(4);
    for _ in 0..300 {
        let n = 60;
        // (stream, dev_seq, group_seq) in group order.
        let mut next_dev = [0u64; 3];
        let recs: Vec<(usize, u64, u64)> = (1..=n)
            .map(|g| {
                let s = rng.below(3) as usize;
                next_dev[s] += 1;
                (s, next_dev[s], g)
            })
            .collect();
        let mut arrivals: Vec<_> = recs.iter().chain(recs.iter().take(10)).copied().collect();
        for i in (1..arrivals.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            arrivals.swap(i, j);
        }
        type W = StreamWindow<(), Vec<Option<Received<()>>>>;
        let mut ws: Vec<W> = (0..3)
            .map(|_| StreamWindow::new(vec![None; 64], 1, Stamp::ZERO))
            .collect();
        let mut applied = Vec::new();
        let mut got = BTreeSet::new();
        for (k, &(s, d, g)) in arrivals.iter().enumerate() {
            let r = Received {
                stamp: Stamp {
                    timestamp_ns: g / 2,
                    group_seq: g,
                },
                epoch: 1,
                kind: RecordKind::Write,
                item: (),
            };
            let ins = ws[s].insert(d, r).unwrap();
            assert_eq!(matches!(ins, Insert::Accepted { .. }), got.insert(g));
            if k % 7 == 0 || k + 1 == arrivals.len() {
                if let Some(limit) = group_limit(&ws) {
                    while let Some(i) = next_in_group_order(&ws, limit) {
                        applied.push(ws[i].pop_front().unwrap().1.stamp.group_seq);
                    }
                }
                // What is applied is a prefix of the group order, and every
                // record of it has arrived.
                for (i, &g) in applied.iter().enumerate() {
                    assert_eq!(g, i as u64 + 1);
                }
            }
        }
        // Each stream's run ends at its last record; the limit is the
        // earliest of those, so records after it wait for their streams.
        let last_of_stream = |s: usize| recs.iter().filter(|r| r.0 == s).map(|r| r.2).max();
        let limit = (0..3)
            .map(|s| last_of_stream(s).unwrap_or(0))
            .min()
            .unwrap_or(0);
        assert_eq!(applied.len() as u64, limit);
    }
}
