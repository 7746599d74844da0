//! Tests of [`super`] (generation.rs): each transition, each decision, the
//! encoding, the symmetry of every decision over every tuple of a small
//! alphabet, and a model of two sites explored exhaustively to a bounded
//! depth, whose decisions are checked against what the sites' data hold.

use super::*;
use crate::digest::SoftDigest;
use std::vec::Vec;

const JC: u64 = JUST_CREATED;

fn g(current: u64, bitmap: u64, hist: &[u64]) -> Generations {
    let mut history = [NONE; HISTORY];
    history[..hist.len()].copy_from_slice(hist);
    Generations {
        current,
        bitmap,
        history,
    }
}

fn sync(source: Side, chunks: Chunks) -> Decision {
    Decision::Sync { source, chunks }
}

/// `compare` both ways: the two decisions must be mirror images.
fn both(a: &Generations, b: &Generations) -> Decision {
    let d = compare(a, b);
    assert_eq!(compare(b, a), d.mirror(), "{a:?} vs {b:?}");
    d
}

// ---- transitions ----------------------------------------------------------

#[test]
fn format_promotion_and_write_alone_start_a_generation() {
    let mut a = Generations::new();
    assert_eq!(a, g(JC, NONE, &[]));
    a.check().unwrap();
    // The first new generation: the old current is the bitmap's.
    a.promote(10).unwrap();
    assert_eq!(a, g(10, JC, &[]));
    // With a bitmap generation set, the old current goes to the history.
    a.new_current(11).unwrap();
    assert_eq!(a, g(11, JC, &[10]));
    for id in [12, 13, 14, 15] {
        a.new_current(id).unwrap();
    }
    // The oldest falls off.
    assert_eq!(a, g(15, JC, &[14, 13, 12, 11]));
    a.check().unwrap();
    for bad in [NONE, JC, 15, 14, 11] {
        let before = a;
        assert_eq!(a.new_current(bad), Err(GenError::BadId));
        assert_eq!(a, before);
    }
}

#[test]
fn sync_start_makes_the_bitmap_count_from_the_target() {
    // Usual: the bitmap already counts from the target's current.
    let mut s = g(20, 10, &[5]);
    s.sync_start(10).unwrap();
    assert_eq!(s, g(20, 10, &[5]));
    // A resolved split brain: the split point goes to the history.
    s.sync_start(30).unwrap();
    assert_eq!(s, g(20, 30, &[10, 5]));
    // A full copy to a target found in the history: out of it.
    let mut s = g(20, NONE, &[10, 5]);
    s.sync_start(5).unwrap();
    assert_eq!(s, g(20, 5, &[10]));
    s.check().unwrap();
    // Same current (a resolution between sides of one generation).
    let mut s = g(20, NONE, &[]);
    s.sync_start(20).unwrap();
    assert_eq!(s, g(20, NONE, &[]));
    assert_eq!(s.sync_start(NONE), Err(GenError::BadId));
}

#[test]
fn sync_end_moves_the_bitmap_generation_into_the_history() {
    assert_eq!(g(20, 10, &[5]).synced(), g(20, NONE, &[10, 5]));
    assert_eq!(g(20, NONE, &[5]).synced(), g(20, NONE, &[5]));
    assert_eq!(
        g(20, 10, &[1, 2, 3, 4]).synced(),
        g(20, NONE, &[10, 1, 2, 3])
    );
}

#[test]
fn check_refuses_what_no_transition_builds() {
    assert!(g(20, 10, &[5, 6]).check().is_ok());
    for bad in [
        g(NONE, 10, &[]),
        g(20, 20, &[]),
        g(20, 10, &[10]),
        g(20, 10, &[20]),
        g(20, 10, &[5, 5]),
        g(20, 10, &[5, NONE, 6]),
    ] {
        assert!(matches!(bad.check(), Err(GenError::Invalid(_))), "{bad:?}");
    }
}

#[test]
fn peer_view_starts_a_generation_at_the_first_write_alone() {
    let mut v = PeerView::LOADED;
    assert!(v.write_needs_new_generation());
    v.diverged();
    assert!(!v.write_needs_new_generation());
    v.lost(); // a generation started since: nothing more
    assert_eq!(v, PeerView::Diverged);
    v.follows();
    assert!(!v.write_needs_new_generation());
    v.lost();
    assert!(v.write_needs_new_generation());
    assert!(!PeerView::PROMOTED.write_needs_new_generation());
}

// ---- decisions ------------------------------------------------------------

#[test]
fn same_generation_continues() {
    assert_eq!(
        both(&g(20, NONE, &[]), &g(20, 10, &[5])),
        Decision::Continue
    );
    // Two just-created devices are taken equal.
    assert_eq!(
        both(&Generations::new(), &Generations::new()),
        Decision::Continue
    );
}

#[test]
fn behind_the_peers_bitmap_generation_syncs_the_marked_chunks() {
    // Switchover: A demoted at 10, B promoted from 10.
    let a = g(10, NONE, &[]);
    let mut b = a;
    b.promote(20).unwrap();
    assert_eq!(both(&a, &b), sync(Side::Peer, Chunks::Marked));
    // Failback: A crashed at 10 (no generation started), B promoted.
    // The same: A's own marked chunks are in the union.
    // A flapping link: A wrote alone, B did nothing: B is behind.
    let mut a2 = a;
    a2.new_current(30).unwrap();
    assert_eq!(both(&a2, &a), sync(Side::Local, Chunks::Marked));
}

#[test]
fn behind_an_entry_of_the_peers_history_syncs_the_marked_chunks() {
    // B adopted 20 from A (bitmap 10), A did not hear of it, lost the
    // link and wrote alone: 20 went into A's history.
    let b = g(20, NONE, &[10]);
    let mut a = g(20, 10, &[]);
    a.new_current(30).unwrap();
    assert_eq!(a, g(30, 10, &[20]));
    assert_eq!(both(&b, &a), sync(Side::Peer, Chunks::Marked));
    assert_eq!(both(&a, &b), sync(Side::Local, Chunks::Marked));
    // Deeper in the history too.
    assert_eq!(
        both(&g(5, NONE, &[]), &g(20, 10, &[7, 5])),
        sync(Side::Peer, Chunks::Marked)
    );
}

#[test]
fn a_just_created_device_copies_everything_unless_taken_equal() {
    let fresh = Generations::new();
    // The other resynced since its creation: JUST_CREATED in its history.
    assert_eq!(
        both(&fresh, &g(30, NONE, &[JC])),
        sync(Side::Peer, Chunks::All)
    );
    assert_eq!(
        both(&fresh, &g(30, 20, &[JC])),
        sync(Side::Peer, Chunks::All)
    );
    // Not in the other's past at all.
    assert_eq!(
        both(&fresh, &g(30, 13, &[14])),
        sync(Side::Peer, Chunks::All)
    );
    // The other wrote alone since its creation and never resynced: the
    // two were taken equal at creation, as two new devices are.
    assert_eq!(
        both(&fresh, &g(30, JC, &[])),
        sync(Side::Peer, Chunks::Marked)
    );
    // Both moved on from their creation: split brain, marked chunks.
    assert_eq!(
        both(&g(20, JC, &[]), &g(30, JC, &[])),
        Decision::SplitBrain {
            chunks: Chunks::Marked
        }
    );
    // Related only through creations in histories: every chunk.
    assert_eq!(
        both(&g(20, 11, &[JC]), &g(30, 12, &[JC])),
        Decision::SplitBrain {
            chunks: Chunks::All
        }
    );
}

#[test]
fn both_moved_on_is_split_brain() {
    // Both moved on from 10: each bitmap counts from it.
    let (mut a, mut b) = (g(10, NONE, &[]), g(10, NONE, &[]));
    a.new_current(20).unwrap();
    b.promote(30).unwrap();
    let d = both(&a, &b);
    assert_eq!(
        d,
        Decision::SplitBrain {
            chunks: Chunks::Marked
        }
    );
    assert!(d.refused());
    // A common ancestor deeper in the pasts: the marks still name what
    // each side changed since (they clear only on the peer's word).
    assert_eq!(
        both(&g(20, 11, &[10]), &g(30, 12, &[10])),
        Decision::SplitBrain {
            chunks: Chunks::Marked
        }
    );
    assert_eq!(
        both(&g(20, 10, &[]), &g(30, 12, &[10])),
        Decision::SplitBrain {
            chunks: Chunks::Marked
        }
    );
    // Each current in the other's past: histories that contradict.
    assert_eq!(
        both(&g(20, 30, &[]), &g(30, 20, &[])),
        Decision::SplitBrain {
            chunks: Chunks::All
        }
    );
    assert_eq!(
        both(&g(20, NONE, &[30]), &g(30, 20, &[])),
        Decision::SplitBrain {
            chunks: Chunks::All
        }
    );
}

#[test]
fn nothing_in_common_is_unrelated_unless_just_created() {
    let d = both(&g(20, 11, &[12]), &g(30, 13, &[14]));
    assert_eq!(d, Decision::Unrelated);
    assert!(d.refused());
    // No current generation at all.
    assert_eq!(both(&g(NONE, 1, &[]), &g(30, 1, &[])), Decision::Unrelated);
    assert_eq!(
        both(&g(NONE, 0, &[]), &g(NONE, 0, &[])),
        Decision::Unrelated
    );
    assert!(!Decision::Continue.refused());
}

#[test]
fn resolution_names_the_side_that_discards() {
    let (a, b) = (g(20, 10, &[]), g(30, 10, &[]));
    assert_eq!(
        resolve(&a, &b, Side::Local),
        sync(Side::Peer, Chunks::Marked)
    );
    assert_eq!(
        resolve(&b, &a, Side::Peer),
        sync(Side::Local, Chunks::Marked)
    );
    assert_eq!(
        resolve(&a, &b, Side::Peer),
        sync(Side::Local, Chunks::Marked)
    );
    // Related through the histories: marked; not at all: every chunk.
    let (c, d) = (g(20, 11, &[10]), g(30, 12, &[10]));
    assert_eq!(
        resolve(&c, &d, Side::Local),
        sync(Side::Peer, Chunks::Marked)
    );
    let (e, f) = (g(20, 11, &[]), g(30, 12, &[]));
    assert_eq!(resolve(&e, &f, Side::Peer), sync(Side::Local, Chunks::All));
    // Against the direction the comparison gives: still the marked chunks.
    let (x, y) = (g(10, NONE, &[]), g(20, 10, &[]));
    assert_eq!(
        resolve(&x, &y, Side::Peer),
        sync(Side::Local, Chunks::Marked)
    );
    assert_eq!(
        resolve(&g(NONE, 0, &[]), &y, Side::Peer),
        sync(Side::Local, Chunks::All)
    );
}

#[test]
fn an_interrupted_resync_is_taken_up_again_and_its_end_continues() {
    // Split brain resolved: B (30) discards, A (20) is the source.
    let (mut a, mut b) = (g(20, 10, &[]), g(30, 10, &[]));
    a.sync_start(b.current).unwrap();
    // Interrupted: the next connection resumes without a resolution.
    assert_eq!(both(&a, &b), sync(Side::Local, Chunks::Marked));
    // The end: B adopts, then A; a crash between the two continues.
    b = a.synced();
    assert_eq!(both(&a, &b), Decision::Continue);
    a = a.synced();
    assert_eq!(a, b);
    assert_eq!(a, g(20, NONE, &[30, 10]));
    // A later split is a split brain again, from 20.
    a.new_current(40).unwrap();
    b.promote(50).unwrap();
    assert_eq!(
        both(&a, &b),
        Decision::SplitBrain {
            chunks: Chunks::Marked
        }
    );
}

// ---- encoding -------------------------------------------------------------

fn encoded(x: &Generations) -> [u8; GEN_LEN] {
    let mut out = [0u8; GEN_LEN];
    x.encode(&SoftDigest, &mut out);
    out
}

/// `buf` with its checksum recomputed.
fn resealed(mut buf: [u8; GEN_LEN]) -> [u8; GEN_LEN] {
    let c = crc32c(&SoftDigest, &buf[..GEN_LEN - 4]);
    set_u32(&mut buf, GEN_LEN - 4, c);
    buf
}

#[test]
fn the_block_byte_by_byte() {
    let x = g(0x1122_3344_5566_7788, 0x0a, &[0x0b, 0x0c]);
    let b = encoded(&x);
    assert_eq!(&b[0..4], b"FGEN");
    assert_eq!(&b[4..8], &[1, 0, 0, 0]);
    assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&b[16..24], &10u64.to_le_bytes());
    assert_eq!(&b[24..32], &11u64.to_le_bytes());
    assert_eq!(&b[32..40], &12u64.to_le_bytes());
    assert_eq!(&b[40..60], &[0u8; 20]);
    assert_eq!(get_u32(&b, 60), crc32c(&SoftDigest, &b[..60]));
    assert_eq!(Generations::decode(&SoftDigest, &b), Ok(x));
    // The default block, as a vector for other implementations.
    let n = encoded(&Generations::new());
    assert_eq!(&n[8..16], &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(get_u32(&n, 60), crc32c(&SoftDigest, &n[..60]));
}

#[test]
fn every_damaged_block_is_refused() {
    let d = SoftDigest;
    let b = encoded(&g(20, 10, &[5, 6, 7, 8]));
    for bit in 0..GEN_LEN * 8 {
        let mut x = b;
        x[bit / 8] ^= 1 << (bit % 8);
        assert!(Generations::decode(&d, &x).is_err(), "bit {bit}");
    }
    assert_eq!(
        Generations::decode(&d, &b[..GEN_LEN - 1]),
        Err(GenError::Truncated)
    );
    assert_eq!(
        Generations::decode(&d, &[0u8; GEN_LEN]),
        Err(GenError::BadMagic)
    );
    let mut v2 = b;
    v2[4] = 2;
    assert_eq!(
        Generations::decode(&d, &v2),
        Err(GenError::UnsupportedVersion(2))
    );
    // Behind a good checksum: reserved fields, rules of `check`.
    for (at, why) in [(6, "reserved field set"), (56, "reserved field set")] {
        let mut x = b;
        x[at] = 1;
        assert_eq!(
            Generations::decode(&d, &resealed(x)),
            Err(GenError::Invalid(why))
        );
    }
    let bad = encoded(&g(20, 10, &[5, NONE, 6]));
    assert_eq!(
        Generations::decode(&d, &bad),
        Err(GenError::Invalid("gap in the history"))
    );
}

#[test]
fn arbitrary_bytes_decode_to_what_reencodes_to_them() {
    // A xorshift stream: random blocks, raw and resealed, with the magic
    // and version set half the time so that the checks behind them run.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut decoded = 0;
    for i in 0..20_000u32 {
        let mut b = [0u8; GEN_LEN];
        for c in b.chunks_mut(8) {
            // Small values, so that ids repeat and zeros occur.
            let v = next();
            let v = if i % 3 == 0 { v % 4 } else { v };
            c.copy_from_slice(&v.to_le_bytes());
        }
        if i % 2 == 0 {
            b[..8].copy_from_slice(&[b'F', b'G', b'E', b'N', 1, 0, 0, 0]);
            b[56..60].fill(0);
            b = resealed(b);
        }
        if let Ok(x) = Generations::decode(&SoftDigest, &b) {
            decoded += 1;
            assert_eq!(encoded(&x), b);
            x.check().unwrap();
        }
    }
    assert!(decoded > 100, "{decoded}");
}

#[test]
fn copy_a_first_and_invalid_refuses() {
    let d = SoftDigest;
    let (new, old) = (g(20, 10, &[]), g(10, NONE, &[]));
    let (a, b) = (encoded(&new), encoded(&old));
    let dec = |x: &[u8]| Generations::decode(&d, x);
    assert_eq!(Generations::choose(dec(&a), dec(&b)), Ok(Some(new)));
    let mut torn = a;
    torn[9] ^= 1;
    assert_eq!(Generations::choose(dec(&torn), dec(&b)), Ok(Some(old)));
    assert_eq!(
        Generations::choose(dec(&[0; GEN_LEN]), dec(&[0; GEN_LEN])),
        Ok(None)
    );
    let invalid = encoded(&g(NONE, 10, &[]));
    assert!(matches!(
        Generations::choose(dec(&a), dec(&invalid)),
        Err(GenError::Invalid(_))
    ));
}

// ---- symmetry over every small tuple --------------------------------------

/// Every tuple over ids 0..=3 (1 is [`JUST_CREATED`]) with a packed
/// history, valid or not: 1,936 of them.
fn small_tuples() -> Vec<Generations> {
    let mut hists: Vec<Vec<u64>> = vec![Vec::new()];
    let mut last = hists.clone();
    for _ in 0..HISTORY {
        last = last
            .iter()
            .flat_map(|h| {
                (1..=3).map(move |x| {
                    let mut h = h.clone();
                    h.push(x);
                    h
                })
            })
            .collect();
        hists.extend(last.iter().cloned());
    }
    let mut out = Vec::new();
    for current in 0..=3 {
        for bitmap in 0..=3 {
            for h in &hists {
                out.push(g(current, bitmap, h));
            }
        }
    }
    out
}

#[test]
fn every_decision_is_the_mirror_of_the_peers() {
    let all = small_tuples();
    assert_eq!(all.len(), 4 * 4 * 121);
    let mut seen = [0u64; 7];
    for a in &all {
        for b in &all {
            let d = compare(a, b);
            assert_eq!(compare(b, a), d.mirror(), "{a:?} vs {b:?}");
            for side in [Side::Local, Side::Peer] {
                let r = resolve(a, b, side);
                assert_eq!(resolve(b, a, side.mirror()), r.mirror());
                assert!(matches!(r, Decision::Sync { source, .. } if source == side.mirror()));
            }
            seen[match d {
                Decision::Continue => 0,
                Decision::Sync {
                    chunks: Chunks::Marked,
                    ..
                } => 1,
                Decision::Sync { .. } => 2,
                Decision::SplitBrain {
                    chunks: Chunks::Marked,
                } => 3,
                Decision::SplitBrain { .. } => 4,
                Decision::Unrelated if a.current == NONE || b.current == NONE => 5,
                Decision::Unrelated => 6,
            }] += 1;
        }
    }
    // Every kind of decision occurs in the enumeration.
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
}

#[path = "generation_model.rs"]
mod model;
