//! Randomised comparisons of ferry-core's structures against naive models.

use std::collections::BTreeSet;

use ferry_core::bitmap::{decode_bitmap, ChunkBitmap};
use ferry_core::gate::DeviceClass;
use ferry_core::record::RecordKind;
use ferry_core::select::{group_limit, next_in_group_order, Insert, Received, Stamp, StreamWindow};
use ferry_core::stream::{next_releasable, watermark, Ack, GroupOrder, Refused, Sequenced, Stream};
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

struct Rec {
    kind: RecordKind,
    dev_seq: u64,
    group_seq: u64,
}

impl Sequenced for Rec {
    fn kind(&self) -> RecordKind {
        self.kind
    }
    fn dev_seq(&self) -> u64 {
        self.dev_seq
    }
    fn group_seq(&self) -> u64 {
        self.group_seq
    }
}

/// The primary's streams under random numbering, reads, reader restarts
/// and acknowledgements (valid or not) against a naive model: what is
/// read is the completion order filtered by the gate, each stream a
/// prefix; no data record is read above a pending log record; every
/// refusal is the model's.
#[test]
fn streams_match_a_model() {
    use std::collections::VecDeque;
    const CLASSES: [DeviceClass; 3] = [DeviceClass::Log, DeviceClass::Data, DeviceClass::Log];
    const KINDS: [RecordKind; 4] = [
        RecordKind::Write,
        RecordKind::Flush,
        RecordKind::Checkpoint,
        RecordKind::ConsistencyPoint,
    ];
    let mut rng = Rng(3);
    for _ in 0..200 {
        let mut g = GroupOrder::new();
        let mut st: Vec<Stream<Vec<Option<Box<Rec>>>>> = CLASSES
            .iter()
            .map(|&c| Stream::new((0..16).map(|_| None).collect(), c, 0, 1))
            .collect();
        // Model: per stream (dev_seq, group_seq, kind) held, sent count,
        // shipped, acked, log_acked.
        let mut held: Vec<VecDeque<(u64, u64, RecordKind)>> = vec![VecDeque::new(); 3];
        let mut sent = [0usize; 3];
        let mut shipped = [0u64; 3];
        let mut acked = [0u64; 3];
        let mut log_acked = [0u64; 3];
        let mut last = [0u64; 3];
        let mut group = 0u64;
        for _ in 0..400 {
            let i = rng.below(3) as usize;
            match rng.below(6) {
                0 | 1 => {
                    let kind = KINDS[rng.below(4) as usize];
                    let rec = Box::new(Rec {
                        kind,
                        dev_seq: 0,
                        group_seq: 0,
                    });
                    let r = g.sequence(&mut st[i], 0, rec, |r, n| {
                        r.dev_seq = n.dev_seq;
                        r.group_seq = n.group_seq;
                    });
                    assert_eq!(r.is_ok(), held[i].len() < 16);
                    if r.is_ok() {
                        last[i] += 1;
                        group += 1;
                        held[i].push_back((last[i], group, kind));
                    }
                }
                2 => {
                    // The reader takes what the gate releases.
                    let pending = (0..3)
                        .filter(|&j| CLASSES[j] == DeviceClass::Log)
                        .flat_map(|j| held[j].iter().filter(move |r| r.0 > log_acked[j]))
                        .filter(|r| ferry_core::gate::holds_data_back(r.2))
                        .map(|r| r.1)
                        .min();
                    let w = watermark(st.iter_mut());
                    assert_eq!(w.get(), pending.map(|p| p - 1));
                    let want = (0..3)
                        .filter_map(|j| held[j].get(sent[j]).map(|r| (r.1, j)))
                        .filter(|&(gs, j)| {
                            CLASSES[j] == DeviceClass::Log || pending.is_none_or(|p| gs < p)
                        })
                        .min()
                        .map(|(_, j)| j);
                    let got = next_releasable(st.iter().map(Some), w);
                    assert_eq!(got, want);
                    if let Some(j) = got {
                        st[j].mark_sent();
                        shipped[j] = shipped[j].max(held[j][sent[j]].0);
                        sent[j] += 1;
                    }
                }
                3 => {
                    for (s, n) in st.iter_mut().zip(sent.iter_mut()) {
                        s.rewind();
                        *n = 0;
                    }
                }
                _ => {
                    let ack = [Ack::Log, Ack::Durable, Ack::Spooled][rng.below(3) as usize];
                    let ds = rng.below(last[i] + 2);
                    let log = CLASSES[i] == DeviceClass::Log;
                    let not_log_ack = ack == Ack::Log && !log;
                    let log_not_acked = ack == Ack::Spooled && log && ds > log_acked[i];
                    let model = if not_log_ack || log_not_acked {
                        Err(Refused::Invalid)
                    } else if ds > shipped[i] {
                        Err(Refused::Range)
                    } else {
                        Ok(())
                    };
                    let mut dropped = Vec::new();
                    let r = st[i].acknowledge(ack, ds, |r| dropped.push(r.dev_seq));
                    assert_eq!(r, model);
                    let mut want = Vec::new();
                    if r.is_ok() {
                        if ack != Ack::Spooled {
                            log_acked[i] = log_acked[i].max(ds);
                        }
                        if ack == Ack::Durable {
                            acked[i] = acked[i].max(ds);
                        }
                        if ack != Ack::Log {
                            while held[i].front().is_some_and(|r| r.0 <= ds) {
                                want.push(held[i].pop_front().unwrap().0);
                                sent[i] = sent[i].saturating_sub(1);
                            }
                        }
                    }
                    assert_eq!(dropped, want);
                }
            }
            for j in 0..3 {
                assert_eq!(st[j].len(), held[j].len());
                assert_eq!(
                    (st[j].shipped(), st[j].acked(), st[j].log_acked()),
                    (shipped[j], acked[j], log_acked[j])
                );
                assert_eq!(
                    st[j].next_unsent().map(|r| r.dev_seq),
                    held[j].get(sent[j]).map(|r| r.0)
                );
            }
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

/// The write-intent rules as a whole (`ferry_core::intent`): whatever
/// the order of admissions, sleeps, intent writes, sweeps,
/// acknowledgements, `SPOOLED` and failures, every write that reached its
/// chunks and is not acknowledged is marked on the meta device, as the
/// pages the type builds leave it.
#[test]
fn write_intent_keeps_every_unacknowledged_write_marked() {
    use ferry_core::intent::{storage_words, Gen, Room, WriteIntent, WORDS_PER_PAGE};

    #[derive(Clone, Copy, PartialEq)]
    enum St {
        Sleeping,
        Waiting,
        Landed,
    }
    #[derive(Clone, Copy)]
    struct W {
        sector: u64,
        nr: u64,
        gen: Gen,
        st: St,
        /// A record (acknowledged some day); otherwise dirty for ever.
        record: bool,
        ds: u64,
        spooled: bool,
    }

    let mut rng = Rng(7);
    for _ in 0..300 {
        let nbits = 1 + rng.below(100_000);
        let shift = rng.below(3) as u32;
        let sectors = nbits << shift;
        let mut wi =
            WriteIntent::new(vec![0; storage_words(nbits).unwrap()], nbits, shift).unwrap();
        let mut disk = vec![0u64; nbits.div_ceil(64) as usize];
        let mut ws: Vec<W> = Vec::new();
        let (mut next_ds, mut acked) = (0u64, 0u64);
        let mut page = vec![0u8; 4096];
        let mut snap = vec![0u64; WORDS_PER_PAGE];
        let write_page = |page: &[u8], p: usize, disk: &mut Vec<u64>| {
            for (i, b) in page.chunks_exact(8).enumerate() {
                if let Some(d) = disk.get_mut(p * WORDS_PER_PAGE + i) {
                    *d = u64::from_le_bytes(b.try_into().unwrap());
                }
            }
        };
        let room = |rng: &mut Rng| match rng.below(10) {
            0..=6 => Room::Spool,
            7..=8 => Room::Wait,
            _ => Room::Bitmap,
        };
        // Writes cluster on a few chunks so that generations overlap.
        let hot = rng.below(sectors);
        for _ in 0..400 {
            match rng.below(9) {
                0 | 1 => {
                    let sector = (hot + rng.below(64)).min(sectors - 1);
                    let nr = if rng.below(10) == 0 {
                        0
                    } else {
                        1 + rng.below(20)
                    };
                    let r = room(&mut rng);
                    let a = wi.admit(sector, nr, true, r);
                    let mut w = W {
                        sector,
                        nr,
                        gen: a.gen,
                        st: St::Landed,
                        record: r == Room::Spool,
                        ds: 0,
                        spooled: false,
                    };
                    if r == Room::Wait {
                        w.st = St::Sleeping;
                    } else if a.defer && rng.below(8) == 0 {
                        // REQ_NOWAIT: it would wait, so it is undone.
                        wi.finish(a.gen);
                        continue;
                    } else if a.defer {
                        w.st = St::Waiting;
                    }
                    ws.push(w);
                }
                2 => {
                    if let Some(w) = ws.iter_mut().find(|w| w.st == St::Sleeping) {
                        let r = room(&mut rng);
                        let a = wi.admit(w.sector, w.nr, false, r);
                        if r != Room::Wait {
                            w.gen = a.gen;
                            w.record = r == Room::Spool;
                            w.st = if a.defer { St::Waiting } else { St::Landed };
                        }
                    }
                }
                3 => {
                    for p in 0..wi.pages() {
                        if wi.wants_page(p) {
                            wi.persist_page(p, &mut page, &mut snap);
                            write_page(&page, p, &mut disk);
                            wi.persisted(p, &snap);
                        }
                    }
                    for w in ws.iter_mut().filter(|w| w.st == St::Waiting) {
                        w.st = St::Landed;
                    }
                }
                4 | 5 => {
                    let mut changed = vec![false; wi.pages()];
                    if wi
                        .sweep(false, |w| changed[w / WORDS_PER_PAGE] = true)
                        .cleared()
                    {
                        for (p, _) in changed.iter().enumerate().filter(|(_, &c)| c) {
                            wi.sweep_page(p, &mut page);
                            write_page(&page, p, &mut disk);
                        }
                    }
                }
                6 => {
                    // Completion numbers landed records; the secondary
                    // acknowledges a prefix.
                    for w in ws
                        .iter_mut()
                        .filter(|w| w.st == St::Landed && w.record && w.ds == 0)
                    {
                        next_ds += 1;
                        w.ds = next_ds;
                    }
                    acked = acked.max(rng.below(next_ds + 1));
                    wi.ack(acked);
                    ws.retain(|w| {
                        let done = w.record && w.ds != 0 && w.ds <= acked;
                        if done && !w.spooled {
                            wi.finish(w.gen);
                        }
                        !done
                    });
                }
                7 => {
                    let upto = rng.below(next_ds + 1);
                    for w in ws
                        .iter_mut()
                        .filter(|w| w.ds > acked && w.ds <= upto && !w.spooled)
                    {
                        w.spooled = true;
                        wi.spooled(w.gen, w.sector, w.nr, w.ds, acked);
                    }
                }
                _ => {
                    // A landed record fails or is lost: dirty for ever.
                    if let Some(w) = ws
                        .iter_mut()
                        .find(|w| w.st == St::Landed && w.record && !w.spooled && w.ds == 0)
                    {
                        wi.dropped(w.gen, w.sector, w.nr);
                        w.record = false;
                    }
                }
            }
            for w in ws.iter().filter(|w| w.st == St::Landed && w.nr > 0) {
                let (first, n) = wi.chunks(w.sector, w.nr).unwrap();
                for c in first..first + n {
                    assert!(
                        disk[(c / 64) as usize] & 1 << (c % 64) != 0,
                        "chunk {c} of a landed write is not marked"
                    );
                }
            }
        }
    }
}
