//! Tests of [`super`] (span.rs).

use super::*;

const BEGIN: u8 = Flags::RESYNC_BEGIN;
const END: u8 = Flags::RESYNC_END;

/// Takes interval `epoch` of two streams, one record each (`epoch` as
/// its item, 10 bytes), its markers at `100 * epoch` and `100 * epoch +
/// 1` and flagged `flags`.
fn take(s: &mut Spans<u64>, epoch: u64, flags: u8) -> Result<Step, ResyncError> {
    s.stage(epoch, 10);
    s.interval(epoch, flags, vec![Some(100 * epoch), Some(100 * epoch + 1)])
}

/// Takes intervals `from..=to` unflagged, each staged.
fn staged(s: &mut Spans<u64>, from: u64, to: u64) {
    for e in from..=to {
        assert_eq!(take(s, e, 0), Ok(Step::Staged), "interval {e}");
    }
}

#[test]
fn a_span_is_one_batch() {
    let mut s = Spans::default();
    // Outside a span, every interval may end a batch.
    assert_eq!(take(&mut s, 1, 0), Ok(Step::Batch { span_end: false }));
    assert_eq!(s.drain().items, [1]);
    // RESYNC_BEGIN closes 2: 2 may end a batch, 3.. are the span.
    assert_eq!(take(&mut s, 2, BEGIN), Ok(Step::Batch { span_end: false }));
    assert!(s.is_open());
    let d = s.drain();
    assert_eq!((d.items, d.intervals, d.bytes), (vec![2], 1, 10));
    s.applied(2);
    assert!(
        s.is_open(),
        "the span is not applied with the interval that opens it"
    );
    assert_eq!(s.hold(), Some((2, &[Some(200), Some(201)][..])));
    staged(&mut s, 3, 6);
    assert_eq!(
        s.staged(),
        Staged {
            intervals: 4,
            records: 4,
            bytes: 40
        }
    );
    assert_eq!(take(&mut s, 7, END), Ok(Step::Batch { span_end: true }));
    let d = s.drain();
    assert_eq!(
        (d.items, d.intervals, d.bytes),
        (vec![3, 4, 5, 6, 7], 5, 50)
    );
    assert_eq!(s.staged(), Staged::default());
    // Open until applied; closed, nothing held, counted.
    assert!(s.is_open() && s.hold().is_some());
    s.applied(7);
    assert!(!s.is_open());
    assert_eq!(s.hold(), None);
    assert_eq!(s.spans_applied(), 1);
    assert_eq!(take(&mut s, 8, 0), Ok(Step::Batch { span_end: false }));
}

/// A primary that restarted mid-resync opens a span inside the open one:
/// the same span, held where the first began.
#[test]
fn a_begin_inside_a_span_continues_it() {
    let mut s = Spans::default();
    assert_eq!(take(&mut s, 4, BEGIN), Ok(Step::Batch { span_end: false }));
    s.drain();
    s.applied(4);
    staged(&mut s, 5, 6);
    assert_eq!(take(&mut s, 7, BEGIN), Ok(Step::Staged));
    staged(&mut s, 8, 9);
    assert_eq!(s.hold().map(|(e, _)| e), Some(4));
    assert_eq!(take(&mut s, 10, END), Ok(Step::Batch { span_end: true }));
    assert_eq!(s.drain().items, [5, 6, 7, 8, 9, 10]);
    s.applied(10);
    assert!(!s.is_open());
    assert_eq!(s.spans_applied(), 1);
}

#[test]
fn an_end_without_a_span_is_refused() {
    let mut s = Spans::default();
    assert_eq!(take(&mut s, 3, END), Err(ResyncError::NoSpan));
    let mut s = Spans::default();
    take(&mut s, 3, BEGIN).unwrap();
    // The interval that opens the span cannot end it.
    assert_eq!(
        s.interval(3, END, vec![None, None]),
        Err(ResyncError::NoSpan)
    );
}

/// The span derived from the markers the remote log holds is the one the
/// apply loop had, whatever interval the kernel applied last.
#[test]
fn recovered_from_the_markers_applied() {
    // Interval 1 plain, BEGIN on 2, 3..6 inside, END on 6 (merged BEGIN
    // on 4), 7 plain, BEGIN on 8.
    let flags = |e: u64| match e {
        2 | 4 | 8 => BEGIN,
        6 => END,
        _ => 0,
    };
    let markers = |upto: u64| -> Vec<(u64, usize, u8, u64)> {
        (1..=12)
            .flat_map(|e| (0..2).map(move |i| (e, i, flags(e), 100 * e + i as u64)))
            .filter(|m| m.0 <= upto)
            .collect()
    };
    for applied in [0, 1, 2, 6, 7, 8] {
        // Live: batches end where they may, the span's end ends one.
        let mut live = Spans::default();
        for e in 1..=applied {
            if let Step::Batch { .. } = take(&mut live, e, flags(e)).unwrap() {
                live.drain();
                live.applied(e);
            }
        }
        // Markers above `applied` are left to the apply loop.
        let back = Spans::<u64>::recover(2, applied, markers(12), false);
        assert_eq!(back.is_open(), live.is_open(), "applied {applied}");
        assert_eq!(back.hold(), live.hold(), "applied {applied}");
        assert_eq!(back.spans_applied(), 0);
    }
    let open = Spans::<u64>::recover(2, 2, markers(2), false);
    assert_eq!(open.hold(), Some((2, &[Some(200), Some(201)][..])));
    // A restart inside the span (after a redo of its opening interval):
    // what follows is staged again until its end.
    let mut again = Spans::recover(2, 2, markers(2), false);
    staged(&mut again, 3, 5);
    assert_eq!(take(&mut again, 6, END), Ok(Step::Batch { span_end: true }));
    // A marker of a stream the group no longer has is not looked at; a
    // RESYNC_END with no span is logged and passed over.
    let odd = Spans::<u64>::recover(1, 9, [(3, 5, BEGIN, 0), (4, 0, END, 0)], false);
    assert!(!odd.is_open());
}

const INITIAL: u8 = Flags::RESYNC_INITIAL;

#[test]
fn the_rule_of_inconsistent() {
    assert!(begins_inconsistent(BEGIN | INITIAL));
    // Not the initial copy (a full copy asked for later carries no
    // RESYNC_INITIAL), or not its first markers.
    for f in [0, BEGIN, END, BEGIN | END, INITIAL] {
        assert!(!begins_inconsistent(f), "{f:#x}");
    }
}

/// Takes interval `epoch` and, when a batch may end with it, applies the
/// batch.
fn take_apply(s: &mut Spans<u64>, epoch: u64, flags: u8) {
    if let Step::Batch { .. } = take(s, epoch, flags).unwrap() {
        s.drain();
        s.applied(epoch);
    }
}

#[test]
fn inconsistent_from_the_initial_copy_until_its_span_is_applied() {
    // The initial copy's span begins with the first interval taken.
    let mut s = Spans::default();
    take_apply(&mut s, 1, BEGIN | INITIAL);
    assert!(s.is_open() && s.inconsistent());
    // A BEGIN inside (the primary restarted mid-copy) goes on with it.
    for (e, f) in [(2, 0), (3, BEGIN), (4, 0)] {
        take_apply(&mut s, e, f);
        assert!(s.inconsistent(), "interval {e}");
    }
    assert_eq!(take(&mut s, 5, END), Ok(Step::Batch { span_end: true }));
    s.drain();
    assert!(s.inconsistent(), "consistent only once the span is applied");
    s.applied(5);
    assert!(!s.is_open() && !s.inconsistent());
    // A later full copy (no RESYNC_INITIAL) keeps the consistent point.
    take_apply(&mut s, 6, BEGIN);
    assert!(s.is_open() && !s.inconsistent());

    // Intervals applied before the initial copy's span (written since the
    // group was made) landed on unrelated content: inconsistent all the
    // same.
    let mut s = Spans::default();
    take_apply(&mut s, 1, 0);
    take_apply(&mut s, 2, BEGIN | INITIAL);
    assert!(s.is_open() && s.inconsistent());
}

#[test]
fn inconsistent_recovered_from_the_saved_flag_and_the_markers() {
    let flags = |e: u64| match e {
        1 => BEGIN | INITIAL,
        4 => END,
        _ => 0,
    };
    let markers = |from: u64| -> Vec<(u64, usize, u8, u64)> {
        (from..=6)
            .flat_map(|e| (0..2).map(move |i| (e, i, flags(e), 100 * e + i as u64)))
            .collect()
    };
    // Saved after the span's first interval: held at its markers.
    let mid = Spans::<u64>::recover(2, 1, markers(1), true);
    assert!(mid.is_open() && mid.inconsistent());
    // The kernel applied the span's end, state.json was not saved.
    let past = Spans::<u64>::recover(2, 4, markers(1), true);
    assert!(!past.is_open() && !past.inconsistent());
    // The kernel applied the span's first interval, state.json was not
    // saved after it.
    let first = Spans::<u64>::recover(2, 1, markers(1), false);
    assert!(first.is_open() && first.inconsistent());
    // After a restart past the span, a new full copy keeps the point.
    let mut later = Spans::<u64>::recover(2, 6, markers(5), false);
    take_apply(&mut later, 7, BEGIN);
    assert!(later.is_open() && !later.inconsistent());
}
