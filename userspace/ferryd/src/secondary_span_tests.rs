//! Tests of the secondary's resync spans (`span`, `apply`): intervals
//! carrying `RESYNC_BEGIN` and `RESYNC_END` markers taken through the
//! secondary as `serve` takes them, applied by the apply loop into a
//! "device" that is a plain file, read back.

use super::apply::apply_loop;
use super::tests::receiver;
use super::*;
use crate::files::tests::fresh_dir;
use ferry_core::command::Command;
use ferry_core::record::{Flags, RecordHeader, RecordKind};

pub(super) const BEGIN: u8 = Flags::RESYNC_BEGIN;
pub(super) const END: u8 = Flags::RESYNC_END;
/// The devices of the group, by stream index.
pub(super) const IDS: [u32; 2] = [1, 2];

/// A primary's records for `IDS`, numbered as the kernel numbers them.
#[derive(Default)]
pub(super) struct Feed {
    ds: [u64; 2],
    gs: u64,
    /// Each stream's marker of each interval: where it is in the stream's
    /// file.
    pub(super) markers: BTreeMap<(u64, usize), u64>,
}

impl Feed {
    /// Interval `epoch` into `s`: a write on each stream, then each
    /// stream's marker of it, flagged `flags`.
    pub(super) fn interval(&mut self, s: &Sec, epoch: u64, flags: u8) {
        for i in 0..2 {
            self.put(s, i, epoch, RecordKind::Write, 0);
        }
        for i in 0..2 {
            let off = self.put(s, i, epoch, RecordKind::Checkpoint, flags);
            self.markers.insert((epoch, i), off);
        }
        s.more.notify_one();
    }

    /// One record of stream `idx`, stored durably in `s`'s remote log and
    /// taken in as `serve` takes it; where it is.
    fn put(&mut self, s: &Sec, idx: usize, epoch: u64, kind: RecordKind, flags: u8) -> u64 {
        self.ds[idx] += 1;
        self.gs += 1;
        let mut h = RecordHeader::new(kind);
        h.group_id = s.gkey.group_id;
        h.device_id = IDS[idx];
        (h.dev_seq, h.group_seq, h.epoch) = (self.ds[idx], self.gs, epoch);
        h.timestamp_ns = self.gs * 1000;
        h.flags = Flags(flags);
        if kind == RecordKind::Write {
            (h.sector, h.nr_sectors) = (self.ds[idx] * 8, 8);
            h.payload_len = 8 * record::SECTOR_SIZE;
        }
        let payload = vec![epoch as u8; h.payload_len as usize];
        let mut b = vec![0u8; h.record_len()];
        record::encode_record(&h, &payload, &s.gkey, &FastDigest, &mut b).unwrap();
        let off = lock(&s.logs[idx]).append(&[&b]).unwrap()[0];
        let loc = Loc {
            off,
            len: b.len() as u32,
            flags,
        };
        lock(&s.state).hold(idx, &h, loc, None).unwrap();
        off
    }
}

/// The batches written to the device file at `path`: each one's interval
/// (its `APPLY_BEGIN` and `APPLY_END`), and the intervals of its records.
pub(super) fn batches(s: &Sec, path: &Path) -> Vec<(u64, Vec<u64>)> {
    let b = std::fs::read(path).unwrap();
    let mut out: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut open = None;
    let mut at = 0;
    while at < b.len() {
        if b[at..].starts_with(b"FCMD") {
            let (c, n) = Command::decode(&b[at..]).unwrap();
            match c {
                Command::ApplyBegin { epoch } => {
                    assert_eq!(open, None, "APPLY_BEGIN {epoch} inside a batch");
                    open = Some(epoch);
                    out.push((epoch, Vec::new()));
                }
                Command::ApplyEnd { epoch } => {
                    assert_eq!(open.take(), Some(epoch), "APPLY_END {epoch}");
                }
                c => panic!("{c:?}"),
            }
            at += n;
        } else {
            let r = record::decode_record(&b[at..], &s.gkey, &FastDigest).unwrap();
            assert!(open.is_some(), "a record outside a batch");
            let v = &mut out.last_mut().unwrap().1;
            if !v.contains(&r.header.epoch) {
                v.push(r.header.epoch);
            }
            at += r.len;
        }
    }
    assert_eq!(open, None, "a batch not ended");
    out
}

/// Waits (up to 10 s) until `f` holds of `s`'s state.
pub(super) async fn until(s: &Sec, what: &str, f: impl Fn(&State) -> bool) {
    for _ in 0..400 {
        if f(&lock(&s.state)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let st = lock(&s.state);
    panic!(
        "{what}: applied {}, staged {:?}, apply_error {:?}",
        st.applied,
        st.spans.staged(),
        st.apply_error
    );
}

/// The secondary's files in `dir` now (`state.json` and the two streams'
/// logs): the closure writes them back, so that each restart of a test
/// begins from them (an apply releases what it applied from the logs).
pub(super) fn snapshot(dir: &Path) -> impl Fn() {
    let files: Vec<_> = ["state.json", "stream-1.log", "stream-2.log"]
        .iter()
        .map(|n| (dir.join(n), std::fs::read(dir.join(n)).unwrap()))
        .collect();
    move || {
        for (p, b) in &files {
            std::fs::write(p, b).unwrap();
        }
    }
}

/// The state as saved in `dir`.
pub(super) fn saved_in(dir: &Path) -> SavedState {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

/// A secondary started again on `dir`, the kernel's mark saying `applied`
/// and, in progress, `applying`; its device the file `dev` in `dir`.
pub(super) fn restarted(dir: &Path, applied: u64, applying: u64, dev: &str) -> Arc<Sec> {
    let like = receiver(&dir.join("unused"), &IDS);
    let fs: Arc<dyn FileSystem> = Arc::new(files::Os);
    let members = IDS.iter().fold(0u64, |m, i| m | 1 << i);
    let (state, logs) = restore(&*fs, dir, like.gkey, members, applied, applying).unwrap();
    Arc::new(Sec {
        cfg: like.cfg.clone(),
        key: like.key.clone(),
        gkey: like.gkey,
        fs,
        dir: dir.to_path_buf(),
        dev: Mutex::new(Some(File::create(dir.join(dev)).unwrap())),
        sizes: like.sizes,
        state: Mutex::new(state),
        logs,
        more: Notify::new(),
        rejected: Rejected::default(),
        listen: Arc::default(),
        room: Mutex::default(),
    })
}

/// Intervals 1 to 4 into a new secondary: `RESYNC_BEGIN` on 2 (and again
/// on 4: a primary that restarted mid-resync), applied up to 2, 3 and 4
/// staged.  The secondary, its apply loop, and the feed.
async fn span_open(name: &str) -> (Arc<Sec>, tokio::task::JoinHandle<Result<()>>, Feed) {
    let s = receiver(&fresh_dir(name), &IDS);
    let applier = tokio::spawn(apply_loop(s.clone()));
    let mut feed = Feed::default();
    for (e, f) in [(1, 0), (2, BEGIN), (3, 0), (4, BEGIN)] {
        feed.interval(&s, e, f);
    }
    until(&s, "3 and 4 staged", |st| {
        st.applied == 2 && st.spans.staged().intervals == 2
    })
    .await;
    (s, applier, feed)
}

/// The intervals after one whose markers carry `RESYNC_BEGIN`, up to the
/// one whose markers carry `RESYNC_END`, are applied as one batch: no
/// batch ends inside a span, and the interval that ends a span ends its
/// batch (the next span, begun at once, is a batch of its own).  Status
/// and metrics say what is staged meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_span_is_applied_as_one_batch() {
    let (s, applier, mut feed) = span_open("sec-span").await;
    // Nothing of the span is applied while its end has not come.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lock(&s.state).applied, 2);
    let st = s.status();
    assert!(st.resync_span_open);
    assert_eq!((st.resync_span_intervals, st.resync_span_records), (2, 8));
    let rec_len = (record::HEADER_LEN + 4096 + record::TAIL_LEN) as u64;
    let marker_len = (record::HEADER_LEN + record::TAIL_LEN) as u64;
    assert_eq!(st.resync_span_bytes, 4 * (rec_len + marker_len));
    for x in &st.streams {
        // Applied: up to the marker of 2; held: up to the marker of 4.
        assert_eq!((x.done, x.received, x.lag_records), (4, 8, 4), "{x:?}");
        assert_eq!(x.lag_bytes, 2 * (rec_len + marker_len), "{x:?}");
    }
    let m = st.prometheus();
    for line in [
        "ferry_resync_span_open{group=\"gr\"} 1\n",
        "ferry_resync_span_intervals{group=\"gr\"} 2\n",
        "ferry_resync_span_records{group=\"gr\"} 8\n",
        "ferry_resync_spans_applied_total{group=\"gr\"} 0\n",
    ] {
        assert!(m.contains(line), "{line}{m}");
    }
    // The end, the next span at once, and one more interval.
    for (e, f) in [(5, END), (6, BEGIN), (7, 0), (8, END), (9, 0)] {
        feed.interval(&s, e, f);
    }
    until(&s, "all applied", |st| st.applied == 9).await;
    let b = batches(&s, &s.dir.join("dev"));
    for (end, intervals) in &b {
        assert!(
            ![3, 4, 7].contains(end),
            "a batch ended inside a span: {b:?}"
        );
        assert_eq!(intervals.last(), Some(end), "{b:?}");
    }
    let with = |e: u64| b.iter().find(|(_, v)| v.contains(&e)).unwrap().clone();
    assert_eq!(with(3), (5, vec![3, 4, 5]), "{b:?}");
    // 6 (its marker opens the next span) may go alone or with it.
    assert!(
        [(8, vec![7, 8]), (8, vec![6, 7, 8])].contains(&with(7)),
        "{b:?}"
    );
    assert_eq!(with(9), (9, vec![9]), "{b:?}");
    let st = s.status();
    assert!(!st.resync_span_open);
    assert_eq!((st.resync_span_intervals, st.resync_span_bytes), (0, 0));
    assert_eq!(st.resync_spans_applied, 2);
    for x in &st.streams {
        assert_eq!((x.done, x.lag_records, x.lag_bytes), (18, 0, 0), "{x:?}");
    }
    s.stop();
    applier.await.unwrap().unwrap();
    std::fs::remove_dir_all(&s.dir).unwrap();
}

/// Across restarts the span is what the remote log says: the positions
/// saved while it is open stay at the markers that opened it; started
/// again there, the span goes on (3 to 5 in one batch); started with the
/// kernel past its end (a crash before `state.json` was saved), it is
/// closed; with the kernel's mark in progress at its end, the redo
/// applies it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_is_derived_from_the_remote_log_at_a_restart() {
    let (s, applier, mut feed) = span_open("sec-span-restart").await;
    s.stop();
    applier.await.unwrap().unwrap();
    let dir = s.dir.clone();
    let saved = saved_in(&dir);
    for (i, id) in IDS.iter().enumerate() {
        assert_eq!(
            saved.streams[id].log_start,
            feed.markers[&(2, i)],
            "device {id}: the position saved is not held at the marker that opened the span"
        );
        assert_eq!(saved.streams[id].next, 5);
    }
    // The span's end arrives, nothing applied: the kernel's mark stays 2.
    // (Each start below begins from these files: an apply releases what
    // it applied from the stream files.)
    feed.interval(&s, 5, END);
    let as_before = snapshot(&dir);
    // Started again at 2.
    let r = restarted(&dir, 2, 0, "dev-again");
    {
        let st = lock(&r.state);
        assert!(st.spans.is_open());
        let (after, held) = st.spans.hold().unwrap();
        assert_eq!(after, 2);
        assert_eq!(
            held,
            [Some(feed.markers[&(2, 0)]), Some(feed.markers[&(2, 1)])]
        );
    }
    let applier = tokio::spawn(apply_loop(r.clone()));
    until(&r, "the span applied", |st| st.applied == 5).await;
    assert_eq!(batches(&r, &dir.join("dev-again")), [(5, vec![3, 4, 5])]);
    assert_eq!(r.status().resync_spans_applied, 1);
    r.stop();
    applier.await.unwrap().unwrap();
    // The kernel applied the span, state.json was not saved after it.
    as_before();
    let r = restarted(&dir, 5, 0, "dev-past");
    assert!(!lock(&r.state).spans.is_open());
    assert!(lock(&r.state).spans.hold().is_none());
    assert!(lock(&r.state).saved_state().streams[&1].log_start > feed.markers[&(5, 0)]);
    // The kernel's mark has 5 in progress: the redo is the span, whole.
    as_before();
    let r = restarted(&dir, 2, 5, "dev-redo");
    assert!(lock(&r.state).spans.is_open());
    let applier = tokio::spawn(apply_loop(r.clone()));
    until(&r, "the redo", |st| st.applied == 5).await;
    assert_eq!(batches(&r, &dir.join("dev-redo")), [(5, vec![3, 4, 5])]);
    r.stop();
    applier.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A release (promote) while a span is open: the staged intervals are not
/// applied, the device is let go at the last interval applied, and the
/// answer and the status say what was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_inside_a_span_applies_none_of_it() {
    let (s, applier, _) = span_open("sec-span-release").await;
    let r = Control::release(&*s, false).await.unwrap();
    assert_eq!(r.applied_epoch, 2);
    let d = r.span_dropped.expect("span_dropped");
    assert_eq!((d.intervals, d.records), (2, 8));
    applier.await.unwrap().unwrap();
    assert!(lock(&s.dev).is_none());
    let b = batches(&s, &s.dir.join("dev"));
    assert!(b.iter().all(|(_, v)| v.iter().all(|&e| e <= 2)), "{b:?}");
    let st = s.status();
    assert_eq!(st.state, "released");
    assert!(st.resync_span_open);
    assert_eq!((st.applied_epoch, st.resync_span_intervals), (2, 2));
    std::fs::remove_dir_all(&s.dir).unwrap();
}

/// A `RESYNC_END` that ends no open span stops applying before anything
/// of its batch is applied; a release then says nothing was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_end_without_a_span_stops_applying() {
    let s = receiver(&fresh_dir("sec-span-stray"), &IDS);
    let applier = tokio::spawn(apply_loop(s.clone()));
    let mut feed = Feed::default();
    feed.interval(&s, 1, 0);
    until(&s, "1 applied", |st| st.applied == 1).await;
    feed.interval(&s, 2, 0);
    feed.interval(&s, 3, END);
    until(&s, "stopped", |st| st.apply_error.is_some()).await;
    // (2 may have been applied before 3 came.)
    let applied = lock(&s.state).applied;
    assert!(applied < 3);
    let why = s.status().apply_error.unwrap();
    assert!(
        why.contains("RESYNC_END") && why.contains(&format!("the devices hold interval {applied}")),
        "{why}"
    );
    let b = batches(&s, &s.dir.join("dev"));
    assert!(b.iter().all(|(e, _)| *e <= applied), "{b:?}");
    let r = Control::release(&*s, false).await.unwrap();
    assert_eq!((r.applied_epoch, r.span_dropped), (applied, None));
    applier.await.unwrap().unwrap();
    std::fs::remove_dir_all(&s.dir).unwrap();
}
