//! Tests of [`super`] (checkpoint.rs): one per rule, and the properties.

#![allow(clippy::cast_possible_truncation)]
use super::*;
use crate::digest::SoftDigest;

fn st(g: u64) -> Stamp {
    Stamp {
        timestamp_ns: g,
        group_seq: g,
    }
}

#[test]
fn rendezvous_and_resign() {
    let mut r = Rendezvous::new([IntervalSlot::default(); 4], 1, 0b111);
    assert_eq!(
        r.marker(0, 1, st(10)),
        Ok(MarkerStatus::Recorded { complete: false })
    );
    assert_eq!(r.marker(0, 1, st(10)), Ok(MarkerStatus::Duplicate));
    r.marker(1, 1, st(11)).unwrap();
    r.marker(1, 2, st(21)).unwrap();
    assert_eq!(r.ready(st(100)), None);
    assert_eq!(r.marker(5, 9, st(1)), Err(CheckpointError::OutOfWindow));
    assert_eq!(r.marker(64, 1, st(1)), Err(CheckpointError::BadStream));
    r.resign(2).unwrap();
    assert!(r.is_complete(1));
    assert_eq!(r.ready(st(10)), None);
    assert_eq!(r.ready(st(11)), Some((1, st(11))));
    r.retire(1).unwrap();
    assert_eq!(r.marker(0, 1, st(10)), Ok(MarkerStatus::Stale));
    assert_eq!(r.oldest(), 2);
    assert!(!r.is_complete(2));
}

#[test]
fn apply_state_machine_and_mark() {
    let mut a = IntervalApply::new(4);
    assert!(a.may_read());
    assert_eq!(a.begin(4), Err(CheckpointError::BadEpoch));
    let m = a.begin(5).unwrap();
    assert!(!a.may_read());
    assert_eq!(a.begin(6), Err(CheckpointError::BadState));
    let mut buf = [0u8; APPLY_MARK_LEN];
    m.encode(&SoftDigest, &mut buf);
    let back = ApplyMark::decode(&buf, &SoftDigest).unwrap();
    assert_eq!(back, m);
    let (mut r, redo) = IntervalApply::recover(back);
    assert_eq!(redo, Some(5));
    assert!(!r.may_read());
    assert_eq!(r.finish(4), Err(CheckpointError::BadState));
    let done = r.finish(5).unwrap();
    assert_eq!(done.applied, 5);
    assert!(r.may_read());
    for i in 0..APPLY_MARK_LEN {
        let mut b = buf;
        b[i] ^= 4;
        assert!(ApplyMark::decode(&b, &SoftDigest).is_err());
    }
}

fn idle(applied: u64) -> ApplyMark {
    IntervalApply::new(applied).mark()
}

fn busy(epoch: u64, applied: u64) -> ApplyMark {
    ApplyMark {
        state: ApplyState::InProgress { epoch },
        applied,
    }
}

#[test]
fn rule1_copy_a_then_copy_b_then_never_applied() {
    let ok = |m| Ok::<_, ()>(Some(m));
    let bad = Ok::<Option<ApplyMark>, ()>(None);
    assert_eq!(
        ApplyMark::first_valid([ok(idle(3)), ok(idle(5))]),
        Ok(idle(3))
    );
    assert_eq!(ApplyMark::first_valid([bad, ok(idle(5))]), Ok(idle(5)));
    assert_eq!(ApplyMark::first_valid([bad, bad]), Ok(idle(0)));
    // Lazily: a valid copy A reads no copy B.
    assert_eq!(ApplyMark::first_valid([ok(idle(3)), Err(())]), Ok(idle(3)));
    assert_eq!(ApplyMark::first_valid([bad, Err(())]), Err(()));
}

#[test]
fn rule2_an_interval_in_progress_anywhere_is_the_groups() {
    assert_eq!(idle(4).merge(idle(7)), idle(7));
    assert_eq!(idle(7).merge(idle(4)), idle(7));
    assert_eq!(idle(9).merge(busy(5, 4)), busy(5, 4));
    assert_eq!(busy(5, 4).merge(idle(9)), busy(5, 4));
    assert_eq!(busy(5, 4).merge(busy(6, 4)), busy(6, 4));
    assert_eq!(busy(6, 4).merge(busy(5, 4)), busy(6, 4));
    let (a, redo) = IntervalApply::recover(idle(0).merge(busy(5, 4)));
    assert_eq!(redo, Some(5));
    assert!(!a.may_read());
}

#[test]
fn rule3_begin_redo_or_busy() {
    let mut a = IntervalApply::new(4);
    assert_eq!(a.begin_or_redo(4), Err(CheckpointError::BadEpoch));
    assert_eq!(a.begin_or_redo(3), Err(CheckpointError::BadEpoch));
    assert_eq!(a, IntervalApply::new(4), "a refused begin changes nothing");
    assert_eq!(a.begin_or_redo(7), Ok(busy(7, 4)));
    assert_eq!(
        a.begin_or_redo(7),
        Ok(busy(7, 4)),
        "a redo writes its mark again"
    );
    assert_eq!(a.begin_or_redo(8), Err(CheckpointError::BadState));
    assert_eq!(a.begin_or_redo(6), Err(CheckpointError::BadState));
    assert_eq!(a.mark(), busy(7, 4));
}

#[test]
fn rule4_records_of_the_open_intervals_only() {
    let mut a = IntervalApply::new(4);
    assert!(!a.admits(5), "idle: nothing is open");
    a.begin(7).unwrap();
    assert!(!a.admits(4) && a.admits(5) && a.admits(7) && !a.admits(8));
    a.finish(7).unwrap();
    assert!(!a.admits(7));
}

#[test]
fn rule4_a_record_is_placed_inside_its_device() {
    use crate::record::RecordKind::*;
    for k in [Write, Discard, WriteZeroes] {
        assert_eq!(place(k, 0, 8, 8, 100), Ok(Some(100)));
        assert_eq!(place(k, 7, 1, 8, 100), Ok(Some(107)));
        assert_eq!(place(k, 7, 2, 8, 100), Err(OutOfDevice));
        assert_eq!(place(k, 8, 0, 8, 100), Ok(Some(108)));
        assert_eq!(place(k, u64::MAX, 1, u64::MAX, 0), Err(OutOfDevice));
        assert_eq!(place(k, 1, 1, 8, u64::MAX), Err(OutOfDevice));
    }
    for k in [Flush, Checkpoint, ConsistencyPoint] {
        assert_eq!(place(k, u64::MAX, u32::MAX, 8, u64::MAX), Ok(None));
    }
}

#[test]
fn rule5_end_only_the_interval_in_progress() {
    let mut a = IntervalApply::new(4);
    assert_eq!(a.finish(5), Err(CheckpointError::BadState));
    a.begin(6).unwrap();
    assert_eq!(a.finish(5), Err(CheckpointError::BadState));
    assert_eq!(a.finish(6), Ok(idle(6)));
    assert_eq!(a.applied(), 6);
}

#[test]
fn rule6_reads_are_held_while_an_interval_is_applied() {
    let mut r = ReadHold::new(false);
    assert!(r.read() && r.read());
    r.hold();
    assert!(!r.read(), "held");
    assert!(!r.quiet(), "two reads in flight");
    assert!(!r.done());
    assert!(r.done());
    assert!(r.quiet());
    r.end();
    assert!(!r.holding());
    r.release();
    assert!(!r.quiet());
    assert!(r.done());
    assert!(r.read());
    let mut h = ReadHold::new(true);
    assert!(h.holding() && !h.read() && h.quiet());
    assert!(h.done(), "never below zero");
}
