//! Tests of [`super`] (resync.rs): one per rule, the span, and a model
//! of rule 4 under random operations.
// Test sizes are small: their casts to usize cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use super::*;
use crate::intent::{storage_words, Room, WriteIntent};
use std::vec;
use std::vec::Vec;

/// Chunks of 8 sectors (4 KiB).
const SHIFT: u32 = 3;

fn set_of(chunks: &[u64], nbits: u64) -> Vec<u64> {
    let mut w = vec![0u64; words_for(nbits) as usize];
    for &c in chunks {
        w[(c / 64) as usize] |= 1 << (c % 64);
    }
    w
}

fn resync(chunks: &[u64], nbits: u64) -> Resync<Vec<u64>> {
    let words = vec![0u64; Resync::<Vec<u64>>::storage_words(nbits).unwrap()];
    Resync::new(words, &set_of(chunks, nbits), nbits, SHIFT).unwrap()
}

fn go(r: &mut Resync<Vec<u64>>, sector: u64, nr: u64) -> WriteTicket {
    match r.host_write(sector, nr) {
        HostWrite::Go(t) => t,
        HostWrite::Wait => panic!("write {sector}+{nr} held"),
    }
}

#[test]
fn rule1_the_set_is_the_dirty_chunks_and_is_covered() {
    let r = resync(&[0, 5, 69, 70], 70);
    // Chunk 70 is past the device (70 chunks: 0..69).
    assert_eq!(r.progress().total, 3);
    assert_eq!(r.covered(), &set_of(&[0, 5, 69], 70)[..]);
    assert!(!r.done());
    let empty = resync(&[], 70);
    assert!(empty.done());
    assert_eq!(
        Resync::new(vec![0u64; 1], &[], 70, SHIFT).unwrap_err(),
        ResyncError::StorageTooSmall
    );
    assert_eq!(
        Resync::new(vec![0u64; 4], &[], 70, 64).unwrap_err(),
        ResyncError::BadChunkShift
    );
}

#[test]
fn rule3_reads_in_device_order_at_most_max_reads() {
    let chunks: Vec<u64> = (0..20).map(|i| i * 3).collect();
    let mut r = resync(&chunks, 64);
    let mut got = Vec::new();
    while let Some(t) = r.next_read() {
        got.push(t);
    }
    assert_eq!(got.len(), MAX_READS);
    assert_eq!(
        got.iter().map(|t| t.chunk).collect::<Vec<_>>(),
        chunks[..MAX_READS].to_vec()
    );
    assert_eq!(r.progress().reading, MAX_READS as u64);
    for t in got {
        assert!(r.may_issue(t));
        r.read_done(t, true);
    }
    assert_eq!(r.progress().read, MAX_READS as u64);
    assert_eq!(r.progress().left(), 20 - MAX_READS as u64);
    let mut n = 0;
    while let Some(t) = r.next_read() {
        r.read_done(t, true);
        n += 1;
    }
    assert_eq!(n, 20 - MAX_READS);
    assert!(r.done());
    assert_eq!(r.progress().read, 20);
}

#[test]
fn rule3_the_cursor_wraps_to_chunks_left_behind() {
    let mut r = resync(&[2, 10, 40], 64);
    let a = r.next_read().unwrap();
    assert_eq!(a.chunk, 2);
    r.read_done(a, false); // failed: 2 is left again, behind the cursor
    let b = r.next_read().unwrap();
    assert_eq!(b.chunk, 10);
    r.read_done(b, true);
    let c = r.next_read().unwrap();
    assert_eq!(c.chunk, 40);
    r.read_done(c, true);
    let d = r.next_read().unwrap();
    assert_eq!(d.chunk, 2);
    r.read_done(d, true);
    assert!(r.next_read().is_none());
    assert!(r.done());
    assert_eq!(r.progress().read, 3);
}

#[test]
fn rule4_writes_to_a_chunk_being_read_wait() {
    let mut r = resync(&[4], 16);
    let t = r.next_read().unwrap();
    // Chunk 4 is sectors 32..40.
    assert_eq!(r.host_write(32, 8), HostWrite::Wait);
    assert_eq!(r.host_write(30, 4), HostWrite::Wait);
    assert_eq!(r.host_write(39, 1), HostWrite::Wait);
    assert!(matches!(r.host_write(40, 8), HostWrite::Go(_)));
    assert!(matches!(r.host_write(24, 8), HostWrite::Go(_)));
    // A flush (no range) never waits.
    assert!(matches!(r.host_write(32, 0), HostWrite::Go(_)));
    r.read_done(t, true);
    assert!(matches!(r.host_write(32, 8), HostWrite::Go(_)));
}

#[test]
fn rule4_a_read_waits_for_the_writes_admitted_before_it() {
    let mut r = resync(&[1, 2], 16);
    let w1 = go(&mut r, 8, 8); // chunk 1, in flight
    let w2 = go(&mut r, 100, 8); // elsewhere, in flight too
    let t = r.next_read().unwrap();
    assert_eq!(t.chunk, 1);
    assert!(!r.may_issue(t));
    // A write admitted after the chunk was taken does not hold the read.
    let w3 = go(&mut r, 64, 8);
    r.host_write_done(w1, 8, 8, true);
    assert!(!r.may_issue(t), "w2 was admitted before");
    r.host_write_done(w2, 100, 8, true);
    assert!(r.may_issue(t));
    // The next chunk's read waits for w3.
    let u = r.next_read().unwrap();
    assert!(!r.may_issue(u));
    r.host_write_done(w3, 64, 8, true);
    assert!(r.may_issue(u));
    r.read_done(t, true);
    r.read_done(u, true);
    assert!(r.done());
}

#[test]
fn rule4_writes_in_flight_before_the_resync_hold_its_reads() {
    let mut r = resync(&[1, 2], 16);
    r.writes_before(2);
    let w = go(&mut r, 100, 8); // admitted before any chunk was taken
    let t = r.next_read().unwrap();
    assert!(!r.may_issue(t));
    r.host_write_done(WriteTicket::BEFORE, 8, 8, false);
    r.host_write_done(w, 100, 8, true);
    assert!(!r.may_issue(t), "one write from before is still in flight");
    r.host_write_done(WriteTicket::BEFORE, 16, 8, false);
    assert!(r.may_issue(t));
    // A write from before that had no record copies nothing.
    r.read_done(t, true);
    assert_eq!(r.progress().by_write, 0);
}

#[test]
fn restart_is_new() {
    let mut r = resync(&[1, 2], 16);
    r.writes_before(3);
    let t = r.next_read().unwrap();
    r.read_done(t, true);
    let _ = go(&mut r, 100, 8);
    r.restart(&set_of(&[5], 16));
    let fresh = resync(&[5], 16);
    assert_eq!(r.progress(), fresh.progress());
    assert_eq!(r.covered(), fresh.covered());
    let t = r.next_read().unwrap();
    assert_eq!(t.chunk, 5);
    assert!(r.may_issue(t), "nothing of before the restart holds it");
}

#[test]
fn rule4_no_new_epoch_while_the_oldest_is_busy() {
    let chunks: Vec<u64> = (0..40).collect();
    let mut r = resync(&chunks, 64);
    // A write in epoch 0 that never completes.
    let w = go(&mut r, 60 << SHIFT, 1);
    let mut tickets = Vec::new();
    // Epochs 1..=8 can open; the 9th would reuse epoch 0's slot.
    for _ in 0..MAX_READS {
        let t = r.next_read().unwrap();
        r.read_done(t, true);
        tickets.push(t);
    }
    assert!(
        r.next_read().is_none(),
        "epoch 0 still has a write in flight"
    );
    r.host_write_done(w, 60 << SHIFT, 1, true);
    assert!(r.next_read().is_some());
}

#[test]
fn rule5_a_recorded_write_of_whole_chunks_copies_them() {
    let mut r = resync(&[1, 2, 3, 9], 16);
    // Sectors 8..28: chunk 1 and 2 whole, chunk 3 in part.
    let w = go(&mut r, 8, 20);
    r.host_write_done(w, 8, 20, true);
    let p = r.progress();
    assert_eq!((p.by_write, p.left()), (2, 2));
    // Not recorded (the group went ahead): nothing copied.
    let w = go(&mut r, 72, 8);
    r.host_write_done(w, 72, 8, false);
    assert_eq!(r.progress().by_write, 2);
    // A chunk being read is not taken by a write let through before it.
    let w = go(&mut r, 24, 8);
    let t = r.next_read().unwrap();
    assert_eq!(t.chunk, 3);
    r.host_write_done(w, 24, 8, true);
    assert_eq!(r.progress().by_write, 2);
    assert!(r.may_issue(t));
    r.read_done(t, true);
    let t = r.next_read().unwrap();
    assert_eq!(t.chunk, 9);
    r.read_done(t, true);
    assert!(r.done());
    assert_eq!((r.progress().read, r.progress().by_write), (2, 2));
    // Every chunk of the set stays covered, however it was copied.
    assert_eq!(r.covered(), &set_of(&[1, 2, 3, 9], 16)[..]);
}

/// Random host writes and reads against a model of the rules: no read
/// is issued while a write admitted before its chunk was taken is in
/// flight and touches it, no write goes while it touches a chunk being
/// read, and every chunk is copied exactly once.
#[test]
fn rule4_random_operations_never_race_a_read_with_a_write() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..200 {
        let nbits = 1 + rnd(200);
        let set: Vec<u64> = (0..nbits).filter(|_| rnd(3) == 0).collect();
        let mut r = resync(&set, nbits);
        // The writes in flight, and the reads taken with the writes in
        // flight when each was taken.
        let mut writes: Vec<(WriteTicket, u64, u64, u64)> = Vec::new();
        let mut reads: Vec<(ReadTicket, Vec<u64>)> = Vec::new();
        let mut id = 0u64;
        let mut copied = vec![0u32; nbits as usize];
        for _ in 0..2000 {
            match rnd(5) {
                0 | 1 => {
                    let sector = rnd(nbits << SHIFT);
                    let nr = 1 + rnd(24);
                    match r.host_write(sector, nr) {
                        HostWrite::Go(t) => {
                            for (rt, _) in &reads {
                                let c = rt.chunk;
                                let (lo, hi) = (c << SHIFT, (c + 1) << SHIFT);
                                assert!(
                                    sector + nr <= lo || sector >= hi,
                                    "a write touching chunk {c} went"
                                );
                            }
                            id += 1;
                            writes.push((t, sector, nr, id));
                        }
                        HostWrite::Wait => {}
                    }
                }
                2 if !writes.is_empty() => {
                    let (t, sector, nr, _) = writes.swap_remove(rnd(writes.len() as u64) as usize);
                    r.host_write_done(t, sector, nr, true);
                }
                3 => {
                    if let Some(t) = r.next_read() {
                        // The writes in flight now were admitted before.
                        let before: Vec<u64> = writes.iter().map(|w| w.3).collect();
                        reads.push((t, before));
                    }
                }
                _ if !reads.is_empty() => {
                    let i = rnd(reads.len() as u64) as usize;
                    let (t, ref before) = reads[i];
                    if r.may_issue(t) {
                        // Every write admitted before the chunk was taken
                        // has completed.
                        for &b in before {
                            assert!(
                                !writes.iter().any(|w| w.3 == b),
                                "read of chunk {} issued with an earlier write in flight",
                                t.chunk
                            );
                        }
                        copied[t.chunk as usize] += 1;
                        r.read_done(t, true);
                        reads.swap_remove(i);
                    }
                }
                _ => {}
            }
        }
        // Drain: complete the writes, then the reads, then read the rest.
        for (t, s, n, _) in writes.drain(..) {
            r.host_write_done(t, s, n, true);
        }
        for (t, _) in reads.drain(..) {
            assert!(r.may_issue(t));
            copied[t.chunk as usize] += 1;
            r.read_done(t, true);
        }
        while let Some(t) = r.next_read() {
            assert!(r.may_issue(t));
            copied[t.chunk as usize] += 1;
            r.read_done(t, true);
        }
        assert!(r.done());
        let p = r.progress();
        assert_eq!(p.read + p.by_write, set.len() as u64);
        assert!(copied.iter().all(|&n| n <= 1), "a chunk read twice");
        assert_eq!(copied.iter().map(|&n| u64::from(n)).sum::<u64>(), p.read);
        for (c, &n) in copied.iter().enumerate() {
            if n == 1 {
                assert!(
                    set.contains(&(c as u64)),
                    "chunk {c} read but not in the set"
                );
            }
        }
    }
}

#[test]
fn rule9_reads_take_room_only_below_half_the_spool() {
    assert!(app_first(0, 100));
    assert!(app_first(49, 100));
    assert!(!app_first(50, 100));
    assert!(!app_first(0, 1));
}

#[test]
fn rule9_the_rate_cap() {
    let mut c = RateCap::new(1000, 0);
    assert!(c.take(0, 600));
    assert!(!c.take(0, 600));
    // 200 short at 1000 per second: 0.2 s.
    assert_eq!(c.wait_ns(600), 200_000_000);
    assert_eq!(c.wait_ns(400), 0);
    // A read larger than a second's worth waits for a full bucket.
    assert_eq!(c.wait_ns(5000), 600_000_000);
    // Half a second later, 500 more.
    assert!(!c.take(500_000_000, 1001));
    assert!(c.take(500_000_000, 900));
    assert!(!c.take(500_000_000, 1));
    // Never more than a second's worth banked.
    assert!(c.take(10_000_000_000, 1000));
    assert!(!c.take(10_000_000_000, 1));
    // A read larger than a second's worth goes once the bucket is full.
    assert!(c.take(11_000_000_000, 5000));
    // No cap.
    let mut none = RateCap::new(0, 0);
    assert!(none.take(0, u64::MAX));
    assert_eq!(none.wait_ns(u64::MAX), 0);
    assert_eq!(none.bytes_per_sec(), 0);
}

#[test]
fn span_batches_never_end_inside_a_span() {
    let mut s = Span::new();
    assert!(!s.is_open());
    assert!(s.batch_may_end(3));
    assert_eq!(s.end(5), Err(ResyncError::NoSpan));
    // RESYNC_BEGIN on the checkpoint closing 4: 5.. are in the span.
    s.begin(4);
    assert!(s.is_open());
    assert!(s.batch_may_end(4));
    for e in 5..20 {
        assert!(!s.batch_may_end(e), "{e}: the end is not known");
    }
    // A primary restarted mid-span: the same span.
    s.begin(7);
    assert!(!s.batch_may_end(6));
    assert_eq!(s.end(4), Err(ResyncError::NoSpan));
    s.end(9).unwrap();
    s.end(9).unwrap();
    assert_eq!(s.end(10), Err(ResyncError::NoSpan));
    for e in 5..9 {
        assert!(!s.batch_may_end(e));
    }
    assert!(s.batch_may_end(9));
    assert!(s.batch_may_end(12));
    // A span beginning after 11, before 9 is applied.
    s.begin(11);
    assert!(s.batch_may_end(11));
    assert!(!s.batch_may_end(12));
    s.applied(8);
    assert!(s.is_open());
    assert!(!s.batch_may_end(8));
    s.applied(9);
    assert!(s.is_open(), "the next span is open");
    assert!(!s.batch_may_end(12));
    s.end(13).unwrap();
    assert!(s.batch_may_end(13));
    s.applied(13);
    assert!(!s.is_open());
    assert!(s.batch_may_end(14));
}

#[test]
fn rule7_resynced_chunks_are_dirty_no_more() {
    let nbits = 130;
    let mut wi = WriteIntent::new(vec![0u64; storage_words(nbits).unwrap()], nbits, SHIFT).unwrap();
    // Writes while ahead: chunks 1, 2 and 100 dirty.
    for c in [1u64, 2, 100] {
        wi.admit(c << SHIFT, 8, true, Room::Bitmap);
    }
    assert_eq!(wi.dirty_count(), 3);
    let dirty: Vec<u64> = wi.dirty_words().to_vec();
    assert_eq!(dirty, set_of(&[1, 2, 100], nbits));
    let mut r = resync(&[], nbits);
    r = Resync::new(core::mem::take(&mut r.words), &dirty, nbits, SHIFT).unwrap();
    while let Some(t) = r.next_read() {
        r.read_done(t, true);
    }
    assert!(r.done());
    // A chunk that turned dirty during the resync is not covered; nor is
    // one of the set dirtied again (a write while ahead).
    wi.admit(7 << SHIFT, 8, true, Room::Bitmap);
    wi.admit(2 << SHIFT, 8, true, Room::Bitmap);
    r.dirtied(2 << SHIFT, 8);
    let mut covered = r.covered().to_vec();
    assert_eq!(covered, set_of(&[1, 100], nbits));
    // Once the resync is over, the caller's copy is uncovered the same way.
    wi.admit(100 << SHIFT, 8, true, Room::Bitmap);
    uncover(&mut covered, 100, 1);
    wi.resynced(&covered);
    assert_eq!(wi.dirty_count(), 3);
    assert_eq!(wi.dirty_words().to_vec(), set_of(&[2, 7, 100], nbits));
    uncover(&mut covered, 10_000, 5); // past the end: nothing
}

/// Rule 1: `START` begins a resync while `ahead` or with `FULL_RESYNC`;
/// otherwise only when none runs and a device has dirty chunks.
#[test]
fn rule1_when_start_begins_a_resync() {
    // (ahead, full, resyncing, dirty)
    assert!(start_begins(true, false, false, false), "ahead: always");
    assert!(start_begins(true, false, false, true));
    assert!(
        start_begins(false, true, false, false),
        "a full copy of a clean group"
    );
    assert!(
        start_begins(false, true, true, true),
        "a full copy replaces a running resync"
    );
    assert!(
        start_begins(false, false, false, true),
        "replicating with dirty chunks, none running"
    );
    assert!(
        !start_begins(false, false, false, false),
        "replicating, nothing dirty: nothing to do"
    );
    assert!(
        !start_begins(false, false, true, true),
        "a running resync is not restarted"
    );
    assert!(!start_begins(false, false, true, false));
}
