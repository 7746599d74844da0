//! Tests of [`super`] (stream.rs): one per rule, and the properties.

use super::*;
use crate::gate::DeviceClass::{Data, Log};
use RecordKind::*;

#[derive(Debug)]
struct R {
    kind: RecordKind,
    n: Numbered,
}

impl Sequenced for R {
    fn kind(&self) -> RecordKind {
        self.kind
    }
    fn dev_seq(&self) -> u64 {
        self.n.dev_seq
    }
    fn group_seq(&self) -> u64 {
        self.n.group_seq
    }
}

type S = Stream<Vec<Option<Box<R>>>>;

fn stream(class: DeviceClass, cap: usize) -> S {
    Stream::new(
        vec![None; cap]
            .into_iter()
            .map(|_: Option<()>| None)
            .collect(),
        class,
        0,
        1,
    )
}

fn seq(g: &mut GroupOrder, s: &mut S, kind: RecordKind, now: u64) -> Numbered {
    let rec = Box::new(R {
        kind,
        n: Numbered::default(),
    });
    g.sequence(s, now, rec, |r, n| r.n = *n).expect("room")
}

fn ack(s: &mut S, a: Ack, ds: u64) -> Result<Vec<u64>, Refused> {
    let mut out = Vec::new();
    s.acknowledge(a, ds, |r| out.push(r.n.dev_seq))
        .map(|()| out)
}

fn read_all(s: &mut S) {
    while s.next_unsent().is_some() {
        s.mark_sent();
    }
}

#[test]
fn rule1_numbers_follow_completion_in_stream_and_group() {
    let mut g = GroupOrder::new();
    let (mut a, mut b) = (stream(Data, 8), stream(Log, 8));
    assert!(a.is_empty() && b.is_empty());
    assert_eq!(
        seq(&mut g, &mut a, Write, 100),
        Numbered {
            dev_seq: 1,
            group_seq: 1,
            timestamp_ns: 100,
            epoch: 1
        }
    );
    let n = seq(&mut g, &mut b, Write, 50);
    // The clock went back: the timestamp does not.
    assert_eq!((n.dev_seq, n.group_seq, n.timestamp_ns), (1, 2, 100));
    assert!(!a.is_empty() && !b.is_empty());
    assert_eq!(g.since_checkpoint(), 2);
    g.checkpoint_inserted();
    assert_eq!(g.since_checkpoint(), 0);
    let n = seq(&mut g, &mut a, Write, 300);
    assert_eq!(
        (n.dev_seq, n.group_seq, n.timestamp_ns, n.epoch),
        (2, 3, 300, 2)
    );
    assert_eq!(
        (a.last_dev_seq(), b.last_dev_seq(), g.last_group_seq()),
        (2, 1, 3)
    );
    assert_eq!(g.since_checkpoint(), 1);
    assert_eq!(a.records().map(|r| r.n.dev_seq).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn rule1_a_full_stream_numbers_nothing() {
    let mut g = GroupOrder::new();
    let mut s = stream(Data, 1);
    seq(&mut g, &mut s, Write, 10);
    let before = (g, s.last_dev_seq(), s.len());
    let r = Box::new(R {
        kind: Write,
        n: Numbered::default(),
    });
    let back = g.sequence(&mut s, 20, r, |r, n| r.n = *n).unwrap_err();
    assert_eq!(back.n, Numbered::default());
    assert_eq!((g, s.last_dev_seq(), s.len()), before);
    // A stream with no slot at all.
    let mut z = stream(Data, 0);
    let r = Box::new(R {
        kind: Write,
        n: Numbered::default(),
    });
    assert!(g.sequence(&mut z, 20, r, |r, n| r.n = *n).is_err());
}

#[test]
fn rule1_a_consistency_point_starts_the_next_set() {
    let mut g = GroupOrder::new();
    let mut s = stream(Data, 8);
    seq(&mut g, &mut s, Write, 1);
    assert_eq!(s.cp_first(), 1);
    seq(&mut g, &mut s, Checkpoint, 1);
    assert_eq!(s.cp_first(), 1);
    seq(&mut g, &mut s, ConsistencyPoint, 1);
    assert_eq!(s.cp_first(), 4);
    assert_eq!(g.next_cp_id(), 1);
    g.consistency_point_inserted(1);
    assert_eq!(g.next_cp_id(), 2);
}

#[test]
fn rule2_reading_raises_shipped_and_a_new_reader_starts_over() {
    let mut g = GroupOrder::new();
    let mut s = stream(Data, 4);
    for _ in 0..3 {
        seq(&mut g, &mut s, Write, 1);
    }
    s.mark_sent();
    assert_eq!(s.shipped(), 1);
    assert_eq!(s.next_unsent().unwrap().n.dev_seq, 2);
    s.mark_sent();
    s.rewind();
    assert_eq!(s.next_unsent().unwrap().n.dev_seq, 1);
    s.mark_sent();
    assert_eq!(s.shipped(), 2, "shipped never goes back");
    read_all(&mut s);
    assert_eq!(s.shipped(), 3);
    s.mark_sent();
    assert_eq!(s.shipped(), 3);
    // Wrap around the ring.
    assert_eq!(ack(&mut s, Ack::Durable, 3), Ok(vec![1, 2, 3]));
    for _ in 0..3 {
        seq(&mut g, &mut s, Write, 1);
    }
    assert_eq!(
        s.records().map(|r| r.n.dev_seq).collect::<Vec<_>>(),
        [4, 5, 6]
    );
}

#[test]
fn rule3_watermark_is_the_lowest_pending_log_record() {
    let mut g = GroupOrder::new();
    let (mut log, mut data) = (stream(Log, 8), stream(Data, 8));
    let w = |l: &mut S, d: &mut S| watermark([l, d]).get();
    assert_eq!(w(&mut log, &mut data), None);
    seq(&mut g, &mut data, Write, 1); // g1
    assert_eq!(w(&mut log, &mut data), None, "data records are not pending");
    seq(&mut g, &mut log, Checkpoint, 1); // g2, log 1
    seq(&mut g, &mut log, ConsistencyPoint, 1); // g3, log 2
    assert_eq!(w(&mut log, &mut data), None, "markers hold nothing back");
    seq(&mut g, &mut log, Flush, 1); // g4, log 3
    seq(&mut g, &mut log, Write, 1); // g5, log 4
    assert_eq!(w(&mut log, &mut data), Some(3));
    read_all(&mut log);
    ack(&mut log, Ack::Log, 3).unwrap();
    assert_eq!(w(&mut log, &mut data), Some(4), "acknowledged for the gate");
    ack(&mut log, Ack::Log, 4).unwrap();
    assert_eq!(w(&mut log, &mut data), None);
    seq(&mut g, &mut log, Write, 1); // g6, log 5
    assert_eq!(w(&mut log, &mut data), Some(5));
    // Several log streams: the lowest of them.
    let mut log2 = stream(Log, 8);
    seq(&mut g, &mut log2, Write, 1); // g7
    assert_eq!(watermark([&mut log2]).get(), Some(6));
    assert_eq!(watermark([&mut log2, &mut log]).get(), Some(5));
    // A log record dropped by ACK is no longer pending.
    ack(&mut log, Ack::Durable, 4).unwrap();
    assert_eq!(watermark([&mut log]).get(), Some(5));
    read_all(&mut log);
    ack(&mut log, Ack::Durable, 5).unwrap();
    assert_eq!(watermark([&mut log]).get(), None);
}

#[test]
fn rule4_release_in_group_order_through_the_gate() {
    let mut g = GroupOrder::new();
    let mut st = [stream(Log, 8), stream(Data, 8), stream(Data, 8)];
    seq(&mut g, &mut st[1], Write, 1); // g1
    seq(&mut g, &mut st[0], Write, 1); // g2, pending log
    seq(&mut g, &mut st[2], Write, 1); // g3
    seq(&mut g, &mut st[1], Write, 1); // g4
    let next = |st: &mut [S; 3]| {
        let w = watermark(st.iter_mut());
        let i = next_releasable(st.iter().map(Some), w)?;
        st[i].mark_sent();
        Some(i)
    };
    assert_eq!(next(&mut st), Some(1), "g1 is below the pending log record");
    assert_eq!(next(&mut st), Some(0), "log records go at once");
    assert_eq!(next(&mut st), None, "g3 and g4 wait for log record 1");
    ack(&mut st[0], Ack::Log, 1).unwrap();
    assert_eq!(next(&mut st), Some(2));
    assert_eq!(next(&mut st), Some(1));
    assert_eq!(next(&mut st), None);
    // An absent device is skipped, positions are kept.
    seq(&mut g, &mut st[2], Write, 1);
    let w = watermark(st.iter_mut());
    assert_eq!(next_releasable([None, None, Some(&st[2])], w), Some(2));
    // A data stream is read as a prefix: its held record blocks the next.
    seq(&mut g, &mut st[0], Write, 1); // pending log below
    seq(&mut g, &mut st[1], Write, 1);
    let w = watermark(st.iter_mut());
    assert_eq!(next_releasable(st.iter().map(Some), w), Some(2));
    st[2].mark_sent();
    assert_eq!(next(&mut st), Some(0));
    assert_eq!(next(&mut st), None);
}

#[test]
fn rule5_acknowledgements_are_checked() {
    let mut g = GroupOrder::new();
    let (mut log, mut data) = (stream(Log, 8), stream(Data, 8));
    for _ in 0..3 {
        seq(&mut g, &mut log, Write, 1);
        seq(&mut g, &mut data, Write, 1);
    }
    log.mark_sent();
    log.mark_sent();
    data.mark_sent();
    assert_eq!(data.check(Ack::Log, 1), Err(Refused::Invalid));
    assert_eq!(log.check(Ack::Log, 2), Ok(()));
    assert_eq!(log.check(Ack::Log, 3), Err(Refused::Range));
    assert_eq!(log.check(Ack::Durable, 3), Err(Refused::Range));
    assert_eq!(data.check(Ack::Durable, 1), Ok(()));
    assert_eq!(data.check(Ack::Durable, 2), Err(Refused::Range));
    assert_eq!(data.check(Ack::Spooled, 1), Ok(()));
    assert_eq!(data.check(Ack::Spooled, 2), Err(Refused::Range));
    // A log record leaves only acknowledged.
    assert_eq!(log.check(Ack::Spooled, 1), Err(Refused::Invalid));
    ack(&mut log, Ack::Log, 1).unwrap();
    assert_eq!(log.check(Ack::Spooled, 1), Ok(()));
    assert_eq!(log.check(Ack::Spooled, 2), Err(Refused::Invalid));
    // A refused acknowledgement changes nothing.
    assert_eq!(ack(&mut data, Ack::Durable, 2), Err(Refused::Range));
    assert_eq!((data.acked(), data.len()), (0, 3));
    assert_eq!(ack(&mut log, Ack::Spooled, 2), Err(Refused::Invalid));
    assert_eq!(log.len(), 3);
    assert_eq!(Ack::of(&crate::command::Command::Stop), None);
    let c = crate::command::Command::Spooled {
        device: 3,
        dev_seq: 9,
    };
    assert_eq!(Ack::of(&c), Some((Ack::Spooled, 3, 9)));
}

#[test]
fn rule5_a_copy_of_the_positions_moves_as_the_stream_would() {
    let mut g = GroupOrder::new();
    let mut log = stream(Log, 8);
    for _ in 0..4 {
        seq(&mut g, &mut log, Write, 1);
    }
    read_all(&mut log);
    let mut a = log.ack_state();
    assert_eq!((a.log_acked(), a.acked()), (0, 0));
    assert_eq!(a.acknowledge(Ack::Log, 2), Ok(None));
    assert_eq!((a.log_acked(), a.acked()), (2, 0));
    assert_eq!(a.acknowledge(Ack::Durable, 3), Ok(Some((1, 3))));
    assert_eq!((a.log_acked(), a.acked()), (3, 3));
    // The stream itself, the same steps: the same positions.
    ack(&mut log, Ack::Log, 2).unwrap();
    ack(&mut log, Ack::Durable, 3).unwrap();
    assert_eq!(log.ack_state(), a);
}

#[test]
fn refusals_say_what_went_wrong_each_in_its_own_words() {
    let (a, b) = (Refused::Invalid.to_string(), Refused::Range.to_string());
    assert!(!a.is_empty() && !b.is_empty() && a != b);
}

#[test]
fn rule5_what_each_acknowledgement_does() {
    let mut g = GroupOrder::new();
    let mut log = stream(Log, 8);
    for _ in 0..4 {
        seq(&mut g, &mut log, Write, 1);
    }
    read_all(&mut log);
    assert_eq!(ack(&mut log, Ack::Log, 2), Ok(vec![]));
    assert_eq!((log.log_acked(), log.acked(), log.len()), (2, 0, 4));
    assert_eq!(ack(&mut log, Ack::Durable, 1), Ok(vec![1]));
    assert_eq!(
        (log.log_acked(), log.acked()),
        (2, 1),
        "log_acked never goes back"
    );
    assert_eq!(ack(&mut log, Ack::Spooled, 2), Ok(vec![2]));
    assert_eq!(log.acked(), 1, "SPOOLED acknowledges nothing");
    assert_eq!(ack(&mut log, Ack::Durable, 3), Ok(vec![3]));
    assert_eq!((log.log_acked(), log.acked()), (3, 3));
    // Stale: nothing dropped, nothing lowered.
    assert_eq!(ack(&mut log, Ack::Durable, 2), Ok(vec![]));
    assert_eq!(ack(&mut log, Ack::Log, 1), Ok(vec![]));
    assert_eq!((log.log_acked(), log.acked(), log.len()), (3, 3, 1));
    assert_eq!(log.next_unsent().map(|r| r.n.dev_seq), None);
    seq(&mut g, &mut log, Write, 1);
    assert_eq!(
        log.next_unsent().map(|r| r.n.dev_seq),
        Some(5),
        "sent follows the drops"
    );
}

#[test]
fn rule6_only_a_closed_interval_is_applied() {
    let mut g = GroupOrder::new();
    assert_eq!(g.applied(1), Err(Refused::Range));
    g.checkpoint_inserted();
    g.checkpoint_inserted();
    assert_eq!(g.check_applied(3), Err(Refused::Range));
    assert_eq!(g.applied(2), Ok(()));
    assert_eq!(g.applied(1), Ok(()));
    assert_eq!(g.applied_epoch(), 2);
}

#[test]
fn rule7_a_clean_leave_is_continued() {
    let mut g = GroupOrder::new();
    let mut s = stream(Data, 8);
    for _ in 0..2 {
        seq(&mut g, &mut s, Write, 1000);
    }
    seq(&mut g, &mut s, ConsistencyPoint, 1000);
    g.consistency_point_inserted(1);
    g.checkpoint_inserted();
    read_all(&mut s);
    ack(&mut s, Ack::Durable, 2).unwrap();
    assert_eq!(s.leaving(&g), (2, None), "a record not acknowledged");
    ack(&mut s, Ack::Durable, 3).unwrap();
    let (acked, numbers) = s.leaving(&g);
    let n = numbers.expect("clean");
    assert_eq!(acked, 3);
    assert_eq!(
        n,
        Numbers {
            group_seq: 3,
            epoch: 2,
            timestamp_ns: 1000,
            cp_id: 1,
            cp_first: 4
        }
    );
    // The superblock says how it left.
    let mut sb = Superblock {
        flags: sb_flags::CLEAN,
        uuid: [0; 16],
        generation: 1,
        group_id: 1,
        device_id: 0,
        chunk_kb: 64,
        len_sectors: 8,
        acked_dev_seq: acked,
        numbers: n,
    };
    assert_eq!(Left::of(None), Left::New);
    assert_eq!(Left::of(Some(&sb)), Left::Clean(3, n));
    assert_eq!(Left::of(Some(&sb)).start(), (3, 4));
    sb.flags = sb_flags::AHEAD;
    assert_eq!(Left::of(Some(&sb)), Left::Unclean);
    assert_eq!(Left::Unclean.start(), (0, 1));
    assert_eq!(Left::New.start(), (0, 1));
    let old = Numbers { cp_first: 0, ..n };
    assert_eq!(Left::Clean(3, old).start(), (3, 1));
    // Joining again after a reboot: the clock restarted near 0.
    let mut g2 = GroupOrder::new();
    g2.continue_from(&n, 10);
    let mut s2 = Stream::new(
        vec![None; 8]
            .into_iter()
            .map(|_: Option<()>| None)
            .collect(),
        Data,
        3,
        4,
    );
    let m = seq(&mut g2, &mut s2, Write, 20);
    assert_eq!((m.dev_seq, m.group_seq, m.epoch), (4, 4, 2));
    assert_eq!(
        m.timestamp_ns, 1010,
        "the clock continues above the recorded time"
    );
    assert_eq!(g2.next_cp_id(), 2);
    // Continuing never lowers the group's numbers.
    let mut g3 = g2;
    g3.continue_from(&Numbers::default(), 0);
    assert_eq!(g3, g2);
}
