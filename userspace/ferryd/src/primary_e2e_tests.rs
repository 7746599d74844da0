//! Tests of the primary end to end over a fake kernel (its character
//! device, reader and commands) and a real secondary: the disk spool full,
//! killed and drained, a full remote log, a segment that cannot be read.

use super::tests::primary_fs;
use super::*;
use crate::files::tests::fresh_dir;
use ferry_core::record::RecordKind;

/// `len` bytes that do not compress, from `seed`.
fn noise(seed: u64, len: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The kernel's side of a primary group, as `ferryd` sees it through
/// the character device: per device a ring of records in group order,
/// those read not offered again until the device is opened again
/// (`open`), `ACK` and `SPOOLED` dropping them; a writer waits while
/// the ring holds more than its spool (`overflow block`).  (No gate:
/// log and data records are released alike.)
#[derive(Default)]
struct FakeKernel {
    st: Mutex<KernelState>,
    cv: std::sync::Condvar,
}

/// A device's records not dropped, (group_seq, dev_seq, record), and
/// how many of them were read since the device was opened.
type Ring = (VecDeque<(u64, u64, Vec<u8>)>, usize);

#[derive(Default)]
struct KernelState {
    rings: BTreeMap<u32, Ring>,
    spool_used: usize,
    /// Bumped by each open: a reader of an older one reads the end.
    opened: u64,
    group_seq: u64,
    /// Per device: the last record completed, the last acknowledged.
    completed: BTreeMap<u32, u64>,
    acked: BTreeMap<u32, u64>,
    /// The flags of each `START` written.
    starts: Vec<u32>,
}

impl FakeKernel {
    /// A write of `len` bytes to device `device` completes (once the
    /// spool holds at most `spool` bytes).
    fn write(&self, key: &GroupKey, device: u32, len: u32, spool: usize) {
        let mut st = lock(&self.st);
        while st.spool_used > spool {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.group_seq += 1;
        let gs = st.group_seq;
        let ds = st.completed.get(&device).map_or(1, |c| c + 1);
        st.completed.insert(device, ds);
        let mut h = record::RecordHeader::new(RecordKind::Write);
        h.group_id = key.group_id;
        h.device_id = device;
        h.dev_seq = ds;
        h.group_seq = gs;
        h.epoch = 1;
        h.timestamp_ns = kernel::mono_ns();
        h.payload_len = len;
        h.nr_sectors = len / 512;
        h.sector = ds * 2048;
        let mut rec = vec![0u8; h.record_len()];
        record::encode_record(&h, &noise(gs, len), key, &FastDigest, &mut rec).unwrap();
        st.spool_used += rec.len();
        st.rings
            .entry(device)
            .or_default()
            .0
            .push_back((gs, ds, rec));
        self.cv.notify_all();
    }

    /// `open(2)` of the character device: what was read and not
    /// dropped is offered again; an earlier opener reads the end.
    fn open(self: &Arc<Self>) -> (KernelReader, KernelCommands) {
        let mut st = lock(&self.st);
        st.opened += 1;
        for (_, sent) in st.rings.values_mut() {
            *sent = 0;
        }
        self.cv.notify_all();
        (
            KernelReader(self.clone(), st.opened),
            KernelCommands(self.clone()),
        )
    }

    /// Every record completed is acknowledged (what the guest tests
    /// call drained).
    fn drained(&self) -> bool {
        let st = lock(&self.st);
        st.completed
            .iter()
            .all(|(d, c)| st.acked.get(d).is_some_and(|a| a >= c))
    }
}

struct KernelReader(Arc<FakeKernel>, u64);

impl Read for KernelReader {
    /// Whole records, in group order, as many as fit; blocks for one.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = &self.0;
        let mut st = lock(&k.st);
        loop {
            if st.opened != self.1 {
                return Ok(0);
            }
            let mut n = 0;
            while let Some((_, d)) = st
                .rings
                .iter()
                .filter_map(|(d, (r, sent))| r.get(*sent).map(|x| (x.0, *d)))
                .min()
            {
                let Some((r, sent)) = st.rings.get_mut(&d) else {
                    break;
                };
                let rec = &r[*sent].2;
                if n + rec.len() > buf.len() {
                    break;
                }
                buf[n..n + rec.len()].copy_from_slice(rec);
                n += rec.len();
                *sent += 1;
            }
            if n > 0 {
                return Ok(n);
            }
            st = k.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct KernelCommands(Arc<FakeKernel>);

impl Write for KernelCommands {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = &self.0;
        let mut st = lock(&k.st);
        for c in ferry_core::command::Commands::new(buf) {
            let c = c.map_err(|e| std::io::Error::other(format!("{e:?}")))?;
            let (device, upto) = match c {
                Command::Ack { device, dev_seq } => {
                    let a = st.acked.entry(device).or_default();
                    *a = (*a).max(dev_seq);
                    (device, dev_seq)
                }
                Command::Spooled { device, dev_seq } => (device, dev_seq),
                Command::Start { flags } => {
                    st.starts.push(flags);
                    continue;
                }
                _ => continue,
            };
            let mut freed = 0;
            if let Some((r, sent)) = st.rings.get_mut(&device) {
                while r.front().is_some_and(|x| x.1 <= upto) {
                    freed += r.pop_front().map_or(0, |x| x.2.len());
                    *sent = sent.saturating_sub(1);
                }
            }
            st.spool_used -= freed;
        }
        k.cv.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A link to `to` that carries `rate` bytes a second towards it, its
/// queue shared by every connection and never full (`tc netem rate`
/// with a deep queue): what a connection sent before it closed still
/// goes first.  Returns the address to connect to.
async fn slow_link(to: std::net::SocketAddr, rate: u64) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // (The connection's way out, bytes; none: the end of it.)
    let (queue, mut out) = unbounded_channel::<(UnboundedSender<Vec<u8>>, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((conn, b)) = out.recv().await {
            tokio::time::sleep(Duration::from_secs_f64(b.len() as f64 / rate as f64)).await;
            let _ = conn.send(b);
        }
    });
    tokio::spawn(async move {
        while let Ok((from, _)) = l.accept().await {
            let Ok(up) = TcpStream::connect(to).await else {
                continue;
            };
            let (mut from_r, mut from_w) = from.into_split();
            let (mut up_r, mut up_w) = up.into_split();
            let (conn, mut rx) = unbounded_channel::<Vec<u8>>();
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut b = vec![0u8; 16 << 10];
                while let Ok(n @ 1..) = from_r.read(&mut b).await {
                    let _ = queue.send((conn.clone(), b[..n].to_vec()));
                }
                let _ = queue.send((conn, Vec::new()));
            });
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if b.is_empty() || up_w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                let _ = up_w.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut up_r, &mut from_w).await;
                let _ = from_w.shutdown().await;
            });
        }
    });
    addr
}

/// A `ferryd` reading `k` (opened now) into the disk spool under
/// `top`, shipping to `peer`; its disk spool recovered first.
fn start(top: &std::path::Path, k: &Arc<FakeKernel>, peer: &str) -> Arc<Shared> {
    start_on(top, k, peer, Arc::new(files::Os))
}

/// A [`start`] whose disk spool goes through `fs`.
fn start_on(
    top: &std::path::Path,
    k: &Arc<FakeKernel>,
    peer: &str,
    fs: Arc<dyn FileSystem>,
) -> Arc<Shared> {
    start_lines(top, k, peer, fs, Arc::default())
}

/// A [`start_on`] whose kernel's status lines are `lines`.
fn start_lines(
    top: &std::path::Path,
    k: &Arc<FakeKernel>,
    peer: &str,
    fs: Arc<dyn FileSystem>,
    lines: Arc<super::tests::Lines>,
) -> Arc<Shared> {
    let (r, w) = k.open();
    let (s, key) = primary_fs(top, lines, peer, 1 << 20, Box::new(w), fs);
    s.recover(spool::load(&*s.fs, &s.spool_dir, &key).unwrap());
    tokio::spawn(spool_retry_loop(s.clone()));
    let s2 = s.clone();
    std::thread::spawn(move || read_loop(s2, r, key));
    s
}

/// What `kill -9` does to a `ferryd`: its connections close, the
/// character device is closed (what it read and did not get
/// acknowledged is offered to the next one), the disk spool stays.
fn kill(s: &Shared) {
    for h in lock(&s.links).drain(..) {
        h.abort();
    }
}

/// The guest test `repl-spool` in one process: a log device and a
/// data device, the link slower than the writer, the kernel's spool
/// 4 MiB with `overflow block`, the disk spool from 1 MiB; 16 MiB
/// written, `ferryd` killed while its disk spool holds most of them
/// and its link is busy, started again.  Every record reaches the real
/// secondary's receive path and is acknowledged to the kernel, and
/// the disk spool empties, within a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_a_full_disk_spool_then_drained() {
    const LIMIT: Duration = Duration::from_secs(30);
    let top = fresh_dir("pri-killed");
    std::fs::create_dir_all(&top).unwrap();
    let sec = crate::secondary::tests::receiver(&top.join("secondary"), &[0, 1]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = l.local_addr().unwrap();
    tokio::spawn(crate::secondary::tests::accept_on(sec.clone(), l));
    let peer = slow_link(to, 4 << 20).await.to_string();
    let k = Arc::new(FakeKernel::default());
    let first = start(&top.join("primary"), &k, &peer);
    let key = GroupKey::derive(
        &FastDigest,
        record::group_id_of_name(&FastDigest, b"gr"),
        &[],
    )
    .unwrap();
    let k2 = k.clone();
    let writer = tokio::task::spawn_blocking(move || {
        for _ in 0..16 {
            k2.write(&key, 0, 4096, 4 << 20);
        }
        for _ in 0..16 {
            k2.write(&key, 1, 1 << 20, 4 << 20);
            // A checkpoint marker's worth on each device.
            k2.write(&key, 0, 512, usize::MAX);
            k2.write(&key, 1, 512, usize::MAX);
        }
    });
    tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the writer waited for the link")
        .unwrap();
    let spooled = first.disk_bytes.load(Relaxed);
    assert!(spooled > 4 << 20, "the disk spool holds {spooled} bytes");
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(&first);
    let s = start(&top.join("primary"), &k, &peer);
    assert!(s.status().disk_spool_records > 0);
    let t0 = Instant::now();
    while !(k.drained() && s.disk_bytes.load(Relaxed) == 0) {
        if t0.elapsed() > LIMIT {
            let st = s.status();
            let streams: Vec<_> = st
                .streams
                .iter()
                .map(|x| (x.device, x.connected, x.received, x.done))
                .collect();
            let (completed, acked) = {
                let st = lock(&k.st);
                (st.completed.clone(), st.acked.clone())
            };
            s.stop().await;
            panic!(
                "not drained in {LIMIT:?}: kernel completed {completed:?}, acknowledged \
                 {acked:?}; ferryd (device, connected, read, acknowledged) {streams:?}, \
                 disk spool {} records; the secondary's runs end at {:?}",
                st.disk_spool_records,
                crate::secondary::tests::run_ends(&sec),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = std::fs::read_dir(&s.spool_dir).unwrap().count();
    assert_eq!(left, 0, "segments left in the disk spool");
    let completed: Vec<_> = lock(&k.st).completed.clone().into_iter().collect();
    assert_eq!(crate::secondary::tests::run_ends(&sec), completed);
    s.stop().await;
}

fn gr_key() -> GroupKey {
    GroupKey::derive(
        &FastDigest,
        record::group_id_of_name(&FastDigest, b"gr"),
        &[],
    )
    .unwrap()
}

/// Waits (at most `limit`) until every record the kernel completed is
/// acknowledged and the disk spool is empty; panics saying where
/// things stand otherwise.
async fn drained(k: &FakeKernel, s: &Arc<Shared>, sec: &crate::secondary::Sec, limit: Duration) {
    let t0 = Instant::now();
    while !(k.drained() && s.disk_bytes.load(Relaxed) == 0) {
        if t0.elapsed() > limit {
            let st = s.status();
            let completed = lock(&k.st).completed.clone();
            s.stop().await;
            panic!(
                "not drained in {limit:?}: kernel completed {completed:?}; ferryd {:?}; \
                 the secondary's runs end at {:?}",
                st.streams
                    .iter()
                    .map(|x| (x.device, x.connected, x.received, x.done))
                    .collect::<Vec<_>>(),
                crate::secondary::tests::run_ends(sec),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed: Vec<_> = lock(&k.st).completed.clone().into_iter().collect();
    assert_eq!(crate::secondary::tests::run_ends(sec), completed);
}

/// The secondary's `log_dir` is full: its appends fail with `ENOSPC`
/// and are rolled back, nothing is acknowledged, the primary keeps its
/// records (in memory and its disk spool: the kernel's spool does not
/// overflow) and tries again; the secondary's status says why, and
/// its streams are not stopped.  Once there is room, replication goes
/// on by itself, and every record arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_remote_log_pauses_replication_until_there_is_room() {
    let top = fresh_dir("pri-full-log");
    std::fs::create_dir_all(&top).unwrap();
    let sfs = crate::files::tests::Faulty::default();
    let sec = crate::secondary::tests::receiver_on(
        &top.join("secondary"),
        &[0, 1],
        Arc::new(sfs.clone()),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = l.local_addr().unwrap().to_string();
    tokio::spawn(crate::secondary::tests::accept_on(sec.clone(), l));
    sfs.inject(
        crate::files::Op::Write,
        "stream-",
        crate::files::Fault::Torn(1000, libc::ENOSPC),
        None,
    );
    let k = Arc::new(FakeKernel::default());
    let s = start(&top.join("primary"), &k, &peer);
    let key = gr_key();
    let k2 = k.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..8 {
            k2.write(&key, 0, 4096, 64 << 20);
            k2.write(&key, 1, 256 << 10, 64 << 20);
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = sec.status();
    let why = st.log_full.clone().expect("log_full");
    assert!(why.contains("No space left"), "{why}");
    assert!(st.streams.iter().all(|x| x.log_stopped.is_none()), "{st:?}");
    assert!(st
        .prometheus()
        .contains("\nferry_remote_log_full{group=\"gr\"} 1\n"));
    assert!(sfs.hits(crate::files::Op::Write) >= 2, "tried again");
    assert!(
        lock(&k.st).acked.values().all(|&a| a == 0),
        "acknowledged while full"
    );
    assert_eq!(s.status().spool_records, 16);
    for f in ["stream-0.log", "stream-1.log"] {
        let len = std::fs::metadata(top.join("secondary").join(f))
            .unwrap()
            .len();
        assert_eq!(len, 0, "{f}: rolled back");
    }
    // Room again.
    sfs.clear();
    drained(&k, &s, &sec, Duration::from_secs(20)).await;
    assert!(sec.status().log_full.is_none());
    s.stop().await;
    std::fs::remove_dir_all(&top).unwrap();
}

/// The primary's `spool_dir` is full: no segment is written (nothing
/// is left of a failed one), the records stay in memory and in the
/// kernel's spool (the writer waits for it, `overflow block`), the
/// status and its gauge say why, and spooling goes on by itself once
/// there is room; every record arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_spool_keeps_records_in_the_kernel() {
    let top = fresh_dir("pri-full-spool");
    std::fs::create_dir_all(&top).unwrap();
    let sec = crate::secondary::tests::receiver(&top.join("secondary"), &[0, 1]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = l.local_addr().unwrap();
    tokio::spawn(crate::secondary::tests::accept_on(sec.clone(), l));
    let peer = slow_link(to, 2 << 20).await.to_string();
    let pfs = crate::files::tests::Faulty::default();
    pfs.inject(
        crate::files::Op::Write,
        "spool",
        crate::files::Fault::Torn(4096, libc::ENOSPC),
        None,
    );
    let k = Arc::new(FakeKernel::default());
    let s = start_on(&top.join("primary"), &k, &peer, Arc::new(pfs.clone()));
    let key = gr_key();
    let k2 = k.clone();
    let writer = tokio::task::spawn_blocking(move || {
        for _ in 0..16 {
            k2.write(&key, 1, 1 << 20, 4 << 20);
            k2.write(&key, 0, 4096, usize::MAX);
        }
    });
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(!writer.is_finished(), "the writer did not wait");
    let st = s.status();
    let why = st.spool_full.clone().expect("spool_full");
    assert!(why.contains("No space left"), "{why}");
    assert_eq!((st.disk_spool_bytes, st.disk_spool_records), (0, 0));
    assert!(st
        .prometheus()
        .contains("\nferry_disk_spool_full{group=\"gr\"} 1\n"));
    assert_eq!(
        std::fs::read_dir(&s.spool_dir).unwrap().count(),
        0,
        "a segment was left"
    );
    assert!(
        lock(&k.st).spool_used <= (5 << 20) + (256 << 10),
        "the kernel's spool overflowed"
    );
    assert!(pfs.hits(crate::files::Op::Write) >= 2, "tried again");
    // Room again: spooling goes on, the writer no longer waits for
    // the link.
    pfs.clear();
    tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the writer still waits")
        .unwrap();
    drained(&k, &s, &sec, Duration::from_secs(30)).await;
    let st = s.status();
    assert!(
        st.spool_full.is_none() && st.spool_error.is_none(),
        "{st:?}"
    );
    s.stop().await;
    std::fs::remove_dir_all(&top).unwrap();
}

/// A segment that cannot be read back (EIO) ends the connection and
/// shows as `spool_error`; its records are read again by the next
/// connection, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_read_is_read_again() {
    let top = fresh_dir("pri-spool-read");
    std::fs::create_dir_all(&top).unwrap();
    let sec = crate::secondary::tests::receiver(&top.join("secondary"), &[1]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = l.local_addr().unwrap();
    tokio::spawn(crate::secondary::tests::accept_on(sec.clone(), l));
    let peer = slow_link(to, 4 << 20).await.to_string();
    let pfs = crate::files::tests::Faulty::default();
    // The first three reads of a segment fail.
    pfs.inject(
        crate::files::Op::Read,
        "spool",
        crate::files::Fault::Errno(libc::EIO),
        Some(3),
    );
    let k = Arc::new(FakeKernel::default());
    let s = start_on(&top.join("primary"), &k, &peer, Arc::new(pfs.clone()));
    let key = gr_key();
    let k2 = k.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..8 {
            k2.write(&key, 1, 1 << 20, usize::MAX);
        }
    })
    .await
    .unwrap();
    let (t0, mut seen) = (Instant::now(), None);
    while pfs.hits(crate::files::Op::Read) < 3 || seen.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "segments not read");
        seen = seen.or(s.status().spool_error);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = seen.unwrap();
    assert!(why.starts_with("read:"), "{why}");
    drained(&k, &s, &sec, Duration::from_secs(30)).await;
    assert!(s.status().spool_error.is_none());
    s.stop().await;
    std::fs::remove_dir_all(&top).unwrap();
}

/// Room for a resync over the real link: the primary's question goes on
/// a stream's connection to the real secondary's receive path, which
/// answers from its `log_dir`'s space less its reserve (64 MiB).  The
/// secondary holds nothing: the initial full copy of two 32 MiB devices
/// is due.  No room: no `START` reaches the kernel, the group stays
/// ahead, both sides count the refusal and say its figures; room: the
/// full `START`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_waits_for_room_on_the_secondary() {
    const MIB: u64 = 1 << 20;
    let top = fresh_dir("pri-room-link");
    std::fs::create_dir_all(&top).unwrap();
    let sfs = crate::files::tests::Faulty::default();
    sfs.set_available(Some(8 * MIB));
    let sec = crate::secondary::tests::receiver_on(
        &top.join("secondary"),
        &[0, 1],
        Arc::new(sfs.clone()),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = l.local_addr().unwrap().to_string();
    tokio::spawn(crate::secondary::tests::accept_on(sec.clone(), l));
    let lines = Arc::new(super::tests::Lines::default());
    *lock(&lines.0) = Some(
        "p0: 0 65536 ferry primary gr 0 log ahead 1 1 1 1 0 1024 3 1 0 0 0 0\n\
         p1: 0 65536 ferry primary gr 1 data ahead 1 1 1 1 0 1024 512 1 0 0 0 0\n"
            .into(),
    );
    let k = Arc::new(FakeKernel::default());
    let s = start_lines(&top.join("primary"), &k, &peer, Arc::new(files::Os), lines);
    // A record on each device: its stream connects.
    let key = gr_key();
    let k2 = k.clone();
    tokio::task::spawn_blocking(move || {
        k2.write(&key, 0, 4096, usize::MAX);
        k2.write(&key, 1, 4096, usize::MAX);
    })
    .await
    .unwrap();
    drained(&k, &s, &sec, Duration::from_secs(20)).await;
    // Every chunk of both devices, and a record header and tail each.
    let need = 1024 * ((64 << 10) + 112);
    let t0 = Instant::now();
    s.resync_tick(t0).await;
    assert!(lock(&k.st).starts.is_empty(), "START written with no room");
    let st = sec.status();
    assert_eq!(st.resync_room_refusals, 1);
    let r = st.resync_room.clone().expect("the refusal's figures");
    assert_eq!((r.need, r.available, r.reserve), (need, 8 * MIB, 64 * MIB));
    assert_eq!(r.log_dir, top.join("secondary").display().to_string());
    assert!(st
        .prometheus()
        .contains("\nferry_resync_room_refusals_total{group=\"gr\"} 1\n"));
    let st = s.status();
    assert_eq!((st.state.as_str(), st.resync_room_refusals), ("ahead", 1));
    assert_eq!(st.resync_room, Some(r));
    let n = st.resync_note.unwrap_or_default();
    assert!(
        n.starts_with("resync refused by the secondary: it needs 64.1 MiB in its log_dir (")
            && n.contains("0 B are free (8.0 MiB available, less its reserve of 64.0 MiB)"),
        "{n}"
    );
    // Room: the next question gets a yes, and START goes to the kernel.
    sfs.set_available(Some(256 * MIB));
    s.resync_tick(t0 + super::resync::RETRY).await;
    let full =
        ferry_core::command::start_flags::FULL_RESYNC | ferry_core::command::start_flags::INITIAL;
    assert_eq!(lock(&k.st).starts, [full]);
    assert_eq!(sec.status().resync_room_refusals, 1);
    let st = s.status();
    assert_eq!((st.resync_room_refusals, st.resync_room), (1, None));
    s.stop().await;
    std::fs::remove_dir_all(&top).unwrap();
}
