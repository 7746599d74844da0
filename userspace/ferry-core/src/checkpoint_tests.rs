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

#[test]
fn rendezvous_a_marker_tells_when_it_completes_its_interval() {
    let mut r = Rendezvous::new([IntervalSlot::default(); 4], 1, 0b011);
    assert_eq!(r.members(), 0b011);
    assert_eq!(
        r.marker(1, 1, st(5)),
        Ok(MarkerStatus::Recorded { complete: false })
    );
    assert!(!r.is_complete(1));
    assert_eq!(
        r.marker(0, 1, st(4)),
        Ok(MarkerStatus::Recorded { complete: true })
    );
    assert!(r.is_complete(1));
    assert_eq!(
        r.ready(st(5)),
        Some((1, st(5))),
        "the latest marker's stamp"
    );
    // An interval ahead of the oldest is complete only with its markers.
    assert!(!r.is_complete(2) && !r.is_complete(3));
    r.marker(0, 3, st(30)).unwrap();
    assert!(!r.is_complete(3));
    r.retire(1).unwrap();
    // A retired interval was complete; one beyond the window is not.
    assert!(r.is_complete(1));
    assert!(!r.is_complete(2) && !r.is_complete(9));
}

#[test]
fn rendezvous_a_stream_that_joins_is_waited_for() {
    let mut r = Rendezvous::new([IntervalSlot::default(); 4], 1, 0b001);
    r.join(2).unwrap();
    assert_eq!(r.members(), 0b101);
    assert_eq!(r.join(64), Err(CheckpointError::BadStream));
    assert_eq!(
        r.marker(0, 1, st(1)),
        Ok(MarkerStatus::Recorded { complete: false })
    );
    assert_eq!(
        r.marker(2, 1, st(2)),
        Ok(MarkerStatus::Recorded { complete: true })
    );
    r.resign(0).unwrap();
    assert_eq!(r.members(), 0b100);
    assert_eq!(r.resign(64), Err(CheckpointError::BadStream));
}

#[test]
fn rule2_the_groups_mark_does_not_depend_on_the_order_members_are_read() {
    let marks = [
        idle(0),
        idle(4),
        idle(7),
        busy(5, 4),
        busy(6, 4),
        busy(6, 5),
        busy(8, 7),
    ];
    for a in marks {
        for b in marks {
            assert_eq!(a.merge(b), b.merge(a), "{a:?} {b:?}");
        }
    }
    // The same interval in progress after different applied ones: redo
    // from the lowest.
    assert_eq!(busy(6, 5).merge(busy(6, 4)), busy(6, 4));
}

/// Sets the checksum of an encoded mark after its bytes were changed.
fn reseal(b: &mut [u8; APPLY_MARK_LEN]) {
    let crc = crc32c(&SoftDigest, &b[..28]);
    set_u32(b, 28, crc);
}

#[test]
fn a_mark_with_a_reserved_field_set_or_an_impossible_state_is_malformed() {
    let mut good = [0u8; APPLY_MARK_LEN];
    busy(5, 4).encode(&SoftDigest, &mut good);
    assert_eq!(ApplyMark::decode(&good, &SoftDigest), Ok(busy(5, 4)));
    // Each reserved field alone, with a checksum that matches.
    for i in [7, 24, 27] {
        let mut b = good;
        b[i] = 1;
        reseal(&mut b);
        assert_eq!(
            ApplyMark::decode(&b, &SoftDigest),
            Err(CheckpointError::Malformed),
            "byte {i}"
        );
    }
    // In progress at or below the interval it says is applied; idle
    // with an interval.
    for m in [busy(5, 5), busy(4, 5), busy(0, 0)] {
        let mut b = [0u8; APPLY_MARK_LEN];
        m.encode(&SoftDigest, &mut b);
        assert_eq!(
            ApplyMark::decode(&b, &SoftDigest),
            Err(CheckpointError::Malformed),
            "{m:?}"
        );
    }
    let mut b = [0u8; APPLY_MARK_LEN];
    idle(4).encode(&SoftDigest, &mut b);
    b[8] = 3;
    reseal(&mut b);
    assert_eq!(
        ApplyMark::decode(&b, &SoftDigest),
        Err(CheckpointError::Malformed)
    );
    assert_eq!(
        ApplyMark::decode(&b[..APPLY_MARK_LEN - 1], &SoftDigest),
        Err(CheckpointError::Truncated)
    );
}

#[test]
fn errors_say_what_went_wrong_each_in_its_own_words() {
    use CheckpointError::*;
    let all = [
        BadStream,
        OutOfWindow,
        NoStorage,
        BadState,
        BadEpoch,
        Truncated,
        Malformed,
        Checksum,
    ];
    let words: Vec<String> = all.iter().map(ToString::to_string).collect();
    for (i, w) in words.iter().enumerate() {
        assert!(!w.is_empty(), "{:?}", all[i]);
        assert!(!words[..i].contains(w), "{w}");
    }
    assert_eq!(OutOfDevice.to_string(), "record outside its device");
}
