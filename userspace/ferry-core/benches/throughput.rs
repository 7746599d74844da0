//! Benchmarks (not tests): `cargo bench -p ferry-core --features std`.
//!
//! * record encode + verify throughput, in GB/s of payload on one core;
//! * ordering gate operations per second;
//! * secondary selection operations per second;
//! * bitmap operations per second.
//!
//! Each figure is the median of several timed rounds of about 0.3 s.
//! `FERRY_BENCH_ROUNDS` changes the number of rounds (default 7).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ferry_core::bitmap::ChunkBitmap;
use ferry_core::gate::DeviceClass;
use ferry_core::record::{
    decode_record, encode_record, GroupKey, RecordHeader, RecordKind, HEADER_LEN, TAIL_LEN,
};
use ferry_core::select::{group_limit, next_in_group_order, Received, Stamp, StreamWindow};
use ferry_core::stream::{next_releasable, watermark, Ack, GroupOrder, Sequenced, Stream};
use ferry_core::{Digest, FastDigest, SoftDigest};

/// Runs `f` (which performs `unit` operations per call) for several rounds
/// and returns the median rate in operations per second.
fn rate(unit: f64, mut f: impl FnMut()) -> f64 {
    let rounds: usize = std::env::var("FERRY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    // Calibrate the number of calls per round.
    let mut calls = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        if t.elapsed() > Duration::from_millis(50) {
            break;
        }
        calls *= 2;
    }
    calls *= 6;
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            calls as f64 * unit / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rates[rates.len() / 2]
}

fn record_bench<D: Digest>(name: &str, d: &D, key: &GroupKey, payload_len: u32) {
    let mut h = RecordHeader::new(RecordKind::Write);
    h.group_id = key.group_id;
    h.device_id = 1;
    h.dev_seq = 1;
    h.group_seq = 1;
    h.sector = 2048;
    h.nr_sectors = payload_len / 512;
    h.payload_len = payload_len;
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 31 % 251) as u8).collect();
    let mut buf = vec![0u8; HEADER_LEN + payload_len as usize + TAIL_LEN];
    let enc = rate(payload_len as f64, || {
        h.dev_seq += 1;
        h.group_seq += 1;
        black_box(encode_record(&h, &payload, key, d, &mut buf).unwrap());
    });
    let dec = rate(payload_len as f64, || {
        black_box(decode_record(black_box(&buf), key, d).unwrap());
    });
    let both = rate(payload_len as f64, || {
        h.dev_seq += 1;
        h.group_seq += 1;
        encode_record(&h, &payload, key, d, &mut buf).unwrap();
        black_box(decode_record(black_box(&buf), key, d).unwrap());
    });
    println!(
        "record {name:<5} {:>8} B payload: encode {:>6.2} GB/s, verify {:>6.2} GB/s, encode+verify {:>6.2} GB/s",
        payload_len,
        enc / 1e9,
        dec / 1e9,
        both / 1e9
    );
}

fn header_bench(key: &GroupKey) {
    let mut h = RecordHeader::new(RecordKind::Checkpoint);
    h.group_id = key.group_id;
    h.dev_seq = 1;
    h.group_seq = 1;
    let mut buf = [0u8; HEADER_LEN + TAIL_LEN];
    let r = rate(1.0, || {
        h.dev_seq += 1;
        h.group_seq += 1;
        encode_record(&h, &[], key, &FastDigest, &mut buf).unwrap();
        black_box(decode_record(black_box(&buf), key, &FastDigest).unwrap());
    });
    println!(
        "record fast  header only: encode+verify {:>6.2} M records/s ({:.0} ns each)",
        r / 1e6,
        1e9 / r
    );
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

fn gate_bench() {
    // A log and a data stream, as the kernel runs them: number a log and a
    // data record, read what the gate releases, acknowledge the log record.
    let slots = || (0..1024).map(|_| None).collect::<Vec<Option<Box<Rec>>>>();
    let mut st = [
        Stream::new(slots(), DeviceClass::Log, 0, 1),
        Stream::new(slots(), DeviceClass::Data, 0, 1),
    ];
    let mut g = GroupOrder::new();
    let mut now = 0;
    let r = rate(4.0, || {
        now += 1;
        for s in st.iter_mut() {
            let rec = Box::new(Rec {
                kind: RecordKind::Write,
                dev_seq: 0,
                group_seq: 0,
            });
            let _ = g.sequence(s, now, rec, |r, n| {
                r.dev_seq = n.dev_seq;
                r.group_seq = n.group_seq;
            });
        }
        loop {
            let w = watermark(st.iter_mut());
            let Some(i) = next_releasable(st.iter().map(Some), w) else {
                break;
            };
            st[i].mark_sent();
        }
        let [log, data] = &mut st;
        let _ = log.acknowledge(Ack::Durable, log.shipped(), drop);
        black_box(data.next_unsent().is_some());
        let _ = data.acknowledge(Ack::Durable, data.shipped(), drop);
    });
    println!(
        "gate: {:>7.1} M ops/s (number a log and a data record, watermark, read, acknowledge)",
        r / 1e6
    );
}

fn select_bench() {
    // Three streams receiving records slightly out of order, then applying
    // everything at or below the limit in group order.
    type W = StreamWindow<u32, Vec<Option<Received<u32>>>>;
    let mut ws: Vec<W> = (0..3)
        .map(|_| StreamWindow::new(vec![None; 256], 1, Stamp::ZERO))
        .collect();
    let mut next_dev = [1u64; 3];
    let mut g = 0u64;
    const BATCH: u64 = 48;
    let r = rate(BATCH as f64, || {
        // 48 records over 3 streams, inserted pairwise swapped.
        let mut recs = Vec::with_capacity(BATCH as usize);
        for i in 0..BATCH {
            g += 1;
            let s = (i % 3) as usize;
            let d = next_dev[s];
            next_dev[s] += 1;
            recs.push((s, d, g));
        }
        for pair in recs.chunks(6) {
            for &(s, d, g) in pair.iter().rev() {
                let rec = Received {
                    stamp: Stamp {
                        timestamp_ns: g * 10,
                        group_seq: g,
                    },
                    epoch: 1,
                    kind: RecordKind::Write,
                    item: g as u32,
                };
                ws[s].insert(d, rec).unwrap();
            }
        }
        let limit = group_limit(&ws).unwrap();
        while let Some(i) = next_in_group_order(&ws, limit) {
            black_box(ws[i].pop_front());
        }
    });
    println!(
        "select: {:>7.1} M records/s (insert out of order, limit, apply in group order; 3 streams)",
        r / 1e6
    );
}

fn bitmap_bench() {
    let mut words = vec![0u64; 1 << 14];
    let nbits = (words.len() * 64) as u64;
    let mut bm = ChunkBitmap::new(&mut words, nbits).unwrap();
    let mut x = 12345u64;
    let r = rate(1.0, || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let start = (x >> 20) % (nbits - 64);
        bm.set_range(start, 1 + (x & 31)).unwrap();
        black_box(bm.test(start));
    });
    println!("bitmap: {:>7.1} M set_range/s", r / 1e6);
    let runs = rate(1.0, || {
        black_box(bm.runs().count());
    });
    println!(
        "bitmap: {:>7.1} full scans/s of {} chunks ({} dirty)",
        runs,
        nbits,
        bm.count()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let key = GroupKey::derive(&FastDigest, 42, b"bench").unwrap();
    for len in [4096, 65536, 1 << 20] {
        record_bench("fast", &FastDigest, &key, len);
    }
    record_bench("soft", &SoftDigest, &key, 65536);
    header_bench(&key);
    gate_bench();
    select_bench();
    bitmap_bench();
}
