//! Tests of [`super`] (primary.rs).

use super::*;
use crate::files::tests::fresh_dir;
use ferry_core::record::RecordKind;
use resync::RETRY as RESYNC_RETRY;
use std::fs::File;

/// Status lines a test sets.
#[derive(Default)]
pub(super) struct Lines(pub(super) Mutex<Option<String>>);

impl DmStatus for Arc<Lines> {
    fn lines(&self) -> Result<String> {
        lock(&self.0).clone().context("no dmsetup here")
    }
}

/// A primary whose kernel is `lines`, its "character device" a file
/// of `recs`, its peer nowhere.
fn primary(name: &str, lines: Arc<Lines>) -> (Arc<Shared>, GroupKey) {
    primary_of(name, lines, "127.0.0.1:9", 0)
}

/// A primary as [`primary`] whose peer is `peer`.
fn primary_of(
    name: &str,
    lines: Arc<Lines>,
    peer: &str,
    spool_after: u64,
) -> (Arc<Shared>, GroupKey) {
    let top = fresh_dir(&format!("pri-{name}"));
    std::fs::create_dir_all(&top).unwrap();
    let ctl = Box::new(File::create(top.join("ctl")).unwrap());
    primary_in(&top, lines, peer, spool_after, ctl)
}

/// A primary with its files in `top`, its commands to `ctl`.
pub(super) fn primary_in(
    top: &std::path::Path,
    lines: Arc<Lines>,
    peer: &str,
    spool_after: u64,
    ctl: Box<dyn Write + Send>,
) -> (Arc<Shared>, GroupKey) {
    primary_fs(top, lines, peer, spool_after, ctl, Arc::new(files::Os))
}

/// A [`primary_in`] whose disk spool goes through `fs`.
fn primary_fs(
    top: &std::path::Path,
    lines: Arc<Lines>,
    peer: &str,
    spool_after: u64,
    ctl: Box<dyn Write + Send>,
    fs: Arc<dyn FileSystem>,
) -> (Arc<Shared>, GroupKey) {
    let cfg: Config = toml::from_str(&format!(
        "group = \"gr\"\nrole = \"primary\"\nkey_file = \"/k\"\npeer = \"{peer}\"\n"
    ))
    .unwrap();
    let d = &FastDigest;
    let gid = record::group_id_of_name(d, cfg.group.as_bytes());
    let gkey = GroupKey::derive(d, gid, &[]).unwrap();
    let s = Arc::new(Shared {
        cfg,
        key: vec![0; 16],
        ctl: Mutex::new(ctl),
        devs: Mutex::new(BTreeMap::new()),
        applied: AtomicU64::new(0),
        tls: link::client_config().unwrap(),
        rt: tokio::runtime::Handle::current(),
        fs,
        spool_dir: top.join("spool"),
        spool_after,
        spool_max: 1 << 30,
        disk_bytes: AtomicU64::new(0),
        spool_trouble: Mutex::default(),
        stop: tokio::sync::watch::Sender::new(false),
        links: Mutex::new(Vec::new()),
        reading: Mutex::new(()),
        kernel: Box::new(lines),
        kernel_unread: AtomicBool::new(false),
        stamp_ahead: AtomicU64::new(0),
        resync: Mutex::default(),
    });
    (s, gkey)
}

/// Device `device`'s write records `dev_seqs`, stamped `stamp_ns`.
fn records(s: &Shared, key: &GroupKey, device: u32, dev_seqs: &[u64], stamp_ns: u64) -> Vec<u8> {
    let gid = record::group_id_of_name(&FastDigest, s.cfg.group.as_bytes());
    let mut out = Vec::new();
    for &ds in dev_seqs {
        let mut h = record::RecordHeader::new(RecordKind::Write);
        h.group_id = gid;
        h.device_id = device;
        h.dev_seq = ds;
        h.group_seq = ds;
        h.epoch = 1;
        h.timestamp_ns = stamp_ns;
        h.payload_len = 4096;
        h.nr_sectors = 8;
        h.sector = ds * 8;
        let mut b = vec![0u8; h.record_len()];
        record::encode_record(&h, &[7; 4096], key, &FastDigest, &mut b).unwrap();
        out.extend_from_slice(&b);
    }
    out
}

/// Reads `bytes` as the kernel's records (the reader ends at their
/// end: "no device any more").
async fn read(s: &Arc<Shared>, key: &GroupKey, bytes: Vec<u8>, name: &str) {
    let path = s.spool_dir.with_file_name(format!("records-{name}"));
    std::fs::write(&path, bytes).unwrap();
    let f = File::open(&path).unwrap();
    let (s2, key) = (s.clone(), *key);
    let r = tokio::task::spawn_blocking(move || read_loop(s2, f, key))
        .await
        .unwrap();
    assert!(format!("{:#}", r.unwrap_err()).contains("end of stream"));
}

/// The lag of a record not acknowledged counts from the kernel's
/// timestamp of its write, not from when ferryd read it.
#[tokio::test]
async fn lag_counts_from_the_writes_timestamp() {
    let (s, key) = primary("lag", Arc::default());
    let written = kernel::mono_ns() - 5_000_000_000;
    let recs = records(&s, &key, 0, &[1, 2], written);
    read(&s, &key, recs, "lag").await;
    let st = s.status();
    assert_eq!(st.streams.len(), 1);
    let lag = st.streams[0].lag_seconds;
    assert!((5.0..6.0).contains(&lag), "lag {lag}");
    assert_eq!(st.streams[0].lag_records, 2);
    s.stop().await;
}

/// Stamps ahead of the monotonic clock (a group continued after a
/// restart of the host keeps its time increasing): the lag counts on
/// the kernel's own time line, not as the stamp's distance to the
/// clock.
#[tokio::test]
async fn lag_on_the_kernels_time_line() {
    let (s, key) = primary("base", Arc::default());
    let base = 1_000_000_000_000;
    let early = kernel::mono_ns() + base - 3_000_000_000;
    let recs = records(&s, &key, 0, &[1], early);
    // A record read right after it was written, later.
    let mut recs2 = records(&s, &key, 1, &[1], kernel::mono_ns() + base);
    let mut all = recs;
    all.append(&mut recs2);
    read(&s, &key, all, "base").await;
    let st = s.status();
    let lag = st.streams[0].lag_seconds;
    assert!((3.0..4.0).contains(&lag), "lag {lag}");
    s.stop().await;
}

/// The state is the kernel's `ahead` when it is; every device the
/// kernel names is in the status, and the metrics, before its first
/// record.
#[tokio::test]
async fn state_and_devices_from_the_kernel() {
    let lines = Arc::new(Lines::default());
    let (s, _) = primary("state", lines.clone());
    // No dmsetup (not root, say): no device known, not connected.
    let st = s.status();
    assert_eq!(st.state, "connecting");
    assert!(st.streams.is_empty());
    *lock(&lines.0) = Some(
        "p1: 0 8 ferry primary gr 1 data replicating 0 0 0 0 0 1024 0 1 0 0\n\
         p0: 0 8 ferry primary gr 0 log replicating 0 0 0 0 0 1024 0 1 0 0\n"
            .into(),
    );
    let st = s.status();
    assert_eq!(st.state, "connecting");
    let devs: Vec<_> = st.streams.iter().map(|x| x.device).collect();
    assert_eq!(devs, [0, 1]);
    // Connected, and the kernel went ahead (its spool overflowed).
    s.devs.lock().unwrap().insert(
        1,
        Arc::new(Dev {
            id: 1,
            q: Mutex::new(DevQ {
                connected: true,
                ..DevQ::default()
            }),
            more: Notify::new(),
            beat: Arc::new(Beat::new("link")),
        }),
    );
    assert_eq!(s.status().state, "replicating");
    *lock(&lines.0) = Some(
        "p1: 0 8 ferry primary gr 1 data ahead 5 5 5 2 0 1024 3 1 0 0\n\
         p0: 0 8 ferry primary gr 0 log ahead 0 0 0 0 0 1024 0 1 0 0\n"
            .into(),
    );
    let st = s.status();
    assert_eq!(st.state, "ahead");
    let m = st.prometheus();
    assert!(
        m.contains("\nferry_state{group=\"gr\",state=\"ahead\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("\nferry_state{group=\"gr\",state=\"replicating\"} 0\n"),
        "{m}"
    );
    assert!(
        m.contains("\nferry_connected{group=\"gr\",device=\"0\"} 0\n"),
        "{m}"
    );
    assert!(
        m.contains("\nferry_connected{group=\"gr\",device=\"1\"} 1\n"),
        "{m}"
    );
}

/// The commands written to a character device that refuses each write
/// with `errno` while it is set.
#[derive(Clone, Default)]
pub(super) struct Chardev(pub(super) Arc<Mutex<(Vec<u8>, Option<i32>)>>);

impl Write for Chardev {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut g = lock(&self.0);
        if let Some(e) = g.1 {
            return Err(std::io::Error::from_raw_os_error(e));
        }
        g.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Chardev {
    /// The `START`s written (and taken) so far.
    pub(super) fn starts(&self) -> usize {
        self.starts_with(0)
    }

    /// The `START`s with `flags` written (and taken) so far.
    pub(super) fn starts_with(&self, flags: u32) -> usize {
        let g = lock(&self.0);
        let mut b = [0u8; 16];
        let n = Command::Start { flags }.encode(&mut b).unwrap();
        g.0.windows(n).filter(|w| *w == &b[..n]).count()
    }
}

pub(super) fn connect(s: &Shared, id: u32, up: bool) {
    let mut devs = lock(&s.devs);
    let d = devs.entry(id).or_insert_with(|| {
        Arc::new(Dev {
            id,
            q: Mutex::new(DevQ::default()),
            more: Notify::new(),
            beat: Arc::new(Beat::new("link")),
        })
    });
    lock(&d.q).connected = up;
}

/// The automatic resync: `START` once the kernel is ahead and every
/// stream connected; a refusal tried again after the backoff (but
/// `EOPNOTSUPP`); nothing after records were lost; the state and its
/// note in the status; `ferryctl resync`'s `START` in manual mode.
#[tokio::test]
async fn automatic_resync_once_every_stream_is_connected() {
    let lines = Arc::new(Lines::default());
    let top = fresh_dir("pri-resync");
    std::fs::create_dir_all(&top).unwrap();
    let dev = Chardev::default();
    let (s, _) = primary_in(&top, lines.clone(), "127.0.0.1:9", 0, Box::new(dev.clone()));
    let ahead = "p0: 0 8 ferry primary gr 0 log ahead 5 5 5 5 0 1024 3 1 0 0 0 0\n\
                 p1: 0 8 ferry primary gr 1 data ahead 5 5 5 5 0 1024 9 1 0 0 0 0\n";
    *lock(&lines.0) = Some(ahead.into());
    let t0 = Instant::now();
    // Only device 0 connected: waits, and says so.
    connect(&s, 0, true);
    s.resync_tick(t0);
    assert_eq!(dev.starts(), 0);
    let st = s.status();
    assert_eq!((st.state.as_str(), st.dirty_chunks), ("ahead", 12));
    assert_eq!(st.resync_mode, "auto");
    assert_eq!(
        st.resync_note.as_deref(),
        Some("automatic resync: waiting for every stream to connect")
    );
    // Both: START, once.
    connect(&s, 1, true);
    s.resync_tick(t0);
    assert_eq!(dev.starts(), 1);
    s.resync_tick(t0 + Duration::from_secs(1));
    assert_eq!(dev.starts(), 1, "the kernel's lines not read again yet");
    // Taken: the kernel resyncs.
    *lock(&lines.0) = Some(
        "p0: 0 8 ferry primary gr 0 log resyncing 5 5 5 5 0 1024 3 1 0 0 1 3\n\
         p1: 0 8 ferry primary gr 1 data resyncing 5 5 5 5 0 1024 9 1 0 0 6 9\n"
            .into(),
    );
    s.resync_tick(t0 + Duration::from_secs(6));
    assert_eq!(dev.starts(), 1);
    let st = s.status();
    assert_eq!(st.state, "resyncing");
    assert_eq!((st.resync_chunks_left, st.resync_chunks_total), (7, 12));
    // No tables here: chunks only.
    assert_eq!((st.resync_bytes_left, st.resync_bytes_total), (None, None));
    assert_eq!(st.resync_note, None);
    let m = st.prometheus();
    assert!(
        m.contains("\nferry_resync_chunks_left{group=\"gr\"} 7\n"),
        "{m}"
    );
    assert!(
        m.contains("\nferry_resync_chunks{group=\"gr\"} 12\n"),
        "{m}"
    );
    assert!(
        m.contains("\nferry_state{group=\"gr\",state=\"resyncing\"} 1\n"),
        "{m}"
    );
    // Ahead again, and the kernel refuses for room: tried again after
    // the backoff, not before.
    *lock(&lines.0) = Some(ahead.into());
    lock(&dev.0).1 = Some(libc::ENOSPC);
    s.resync_tick(t0 + Duration::from_secs(7));
    assert_eq!(dev.starts(), 1);
    let st = s.status();
    assert!(st.resync_note.unwrap().contains("START refused (no room"));
    lock(&dev.0).1 = None;
    s.resync_tick(t0 + Duration::from_secs(9));
    assert_eq!(dev.starts(), 1, "within the backoff");
    s.resync_tick(t0 + Duration::from_secs(7) + RESYNC_RETRY);
    assert_eq!(dev.starts(), 2);
    // EOPNOTSUPP: never again on its own.
    lock(&dev.0).1 = Some(libc::EOPNOTSUPP);
    let later = t0 + Duration::from_secs(20);
    s.resync_tick(later);
    lock(&dev.0).1 = None;
    for k in 3..10 {
        s.resync_tick(later + RESYNC_RETRY * k);
    }
    assert_eq!(dev.starts(), 2);
    assert!(s.status().resync_note.unwrap().contains("unclean shutdown"));
    // ferryctl resync says the same.
    lock(&dev.0).1 = Some(libc::EOPNOTSUPP);
    let e = s.resync_now(false).unwrap_err();
    assert!(e.contains("the kernel refused START: a member"), "{e}");
    lock(&dev.0).1 = None;
    // Replicating again: forgotten.
    *lock(&lines.0) = Some(
        "p0: 0 8 ferry primary gr 0 log replicating 5 5 5 5 0 1024 0 1 0 0 0 0\n\
         p1: 0 8 ferry primary gr 1 data replicating 5 5 5 5 0 1024 0 1 0 0 0 0\n"
            .into(),
    );
    s.resync_tick(later);
    assert_eq!(s.status().state, "replicating");
    // Records lost from the disk spool: no resync, automatic or asked.
    *lock(&lines.0) = Some(ahead.into());
    lock(&lock(&s.devs)[&1].q).lost = true;
    s.resync_tick(later + RESYNC_RETRY * 20);
    assert_eq!(dev.starts(), 2);
    let st = s.status();
    assert!(st
        .resync_note
        .unwrap()
        .contains("records were lost from the disk spool"));
    assert!(s
        .resync_now(false)
        .unwrap_err()
        .contains("not in the dirty bitmap"));
    assert_eq!(dev.starts(), 2);
    lock(&lock(&s.devs)[&1].q).lost = false;
    // ferryctl resync: START, and what the kernel was in.
    let r = s.resync_now(false).unwrap();
    assert_eq!((r.was.as_str(), r.dirty_chunks), ("ahead", 12));
    assert_eq!(dev.starts(), 3);
}

/// `resync = "manual"`: never on its own; the status says how.
#[tokio::test]
async fn manual_resync_waits_for_ferryctl() {
    let lines = Arc::new(Lines::default());
    let top = fresh_dir("pri-resync-manual");
    std::fs::create_dir_all(&top).unwrap();
    let dev = Chardev::default();
    let (mut s, _) = primary_in(&top, lines.clone(), "127.0.0.1:9", 0, Box::new(dev.clone()));
    Arc::get_mut(&mut s).unwrap().cfg.resync = ferryd::config::Resync::Manual;
    *lock(&lines.0) =
        Some("p0: 0 8 ferry primary gr 0 data ahead 5 5 5 5 0 1024 3 1 0 0 0 0\n".into());
    connect(&s, 0, true);
    for k in 0..10 {
        s.resync_tick(Instant::now() + RESYNC_RETRY * k);
    }
    assert_eq!(dev.starts(), 0);
    let st = s.status();
    assert_eq!(st.resync_mode, "manual");
    assert_eq!(
        st.resync_note.as_deref(),
        Some("manual resync (resync = \"manual\"): ferryctl resync gr")
    );
    assert_eq!(s.resync_now(false).unwrap().was, "ahead");
    assert_eq!(dev.starts(), 1);
    // An old module: no resync fields, no resync.
    *lock(&lines.0) = Some("p0: 0 8 ferry primary gr 0 data ahead 5 5 5 5 0 1024 3 1 0 0\n".into());
    assert!(s.status().resync_note.unwrap().contains("module has none"));
}

/// What the secondary of [`secondary_on`] took, per device: the run
/// of `dev_seq`s from 1 it holds, as its last one (0: nothing).
type Held = Arc<Mutex<BTreeMap<u32, u64>>>;

/// A secondary on `l` that speaks the link as `ferryd`'s does: the
/// hello checked, a welcome from where it stands, each batch's records
/// verified and taken in order (a record past the run's end is a gap
/// the primary made: the connection ends), the run's end acknowledged.
/// It starts holding `held`.
fn secondary_on(l: tokio::net::TcpListener, gkey: GroupKey, held: Held) {
    let tls = tokio_rustls::TlsAcceptor::from(link::server_config().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (tls, held) = (tls.clone(), held.clone());
            tokio::spawn(async move {
                if let Err(e) = secondary_stream(tls, tcp, gkey, held).await {
                    info!("test secondary: {e:#}");
                }
            });
        }
    });
}

async fn secondary_stream(
    tls: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    gkey: GroupKey,
    held: Held,
) -> Result<()> {
    let key = [0u8; 16];
    let a = crate::listen::authenticate(&tls, tcp, &key, "gr", Duration::from_secs(5)).await?;
    let (mut tls, device) = (a.tls, a.device);
    let next = lock(&held).get(&device).copied().unwrap_or(0) + 1;
    let tag = link::tag(&key, Side::Secondary, "gr", device, &a.ekm);
    let welcome = Frame::Welcome {
        tag,
        next,
        applied: 0,
    };
    link::write_frame(&mut tls, &welcome).await?;
    loop {
        let f = tokio::time::timeout(Duration::from_secs(5), link::read_frame(&mut tls))
            .await
            .context("the primary went silent")??;
        let Frame::Records {
            codec,
            raw_len,
            data,
        } = f
        else {
            bail!("unexpected frame {f:?}");
        };
        let recs = link::unpack(codec, raw_len, data)?;
        let end = {
            let mut held = lock(&held);
            let end = held.entry(device).or_default();
            let mut off = 0;
            while off < recs.len() {
                let r = record::decode_record(&recs[off..], &gkey, &FastDigest)
                    .map_err(|e| anyhow::anyhow!("record rejected: {e}"))?;
                let ds = r.header.dev_seq;
                if ds > *end + 1 {
                    bail!("device {device}: record {ds} after {end}: a gap");
                }
                *end = (*end).max(ds);
                off += r.len;
            }
            *end
        };
        let ack = Frame::Ack {
            dev_seq: end,
            applied: 0,
        };
        link::write_frame(&mut tls, &ack).await?;
    }
}

/// A restart with a full disk spool: the spool's segments hold records
/// the secondary partly has already, the kernel offers again those it
/// still holds (some of them in the disk spool as well), and a log
/// device has records in the kernel only.  Everything reaches the
/// secondary, and the disk spool empties, within a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_spool_drains_after_a_restart() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = l.local_addr().unwrap().to_string();
    let (s, key) = primary_of("restart", Arc::default(), &peer, 0);
    let one = |device, ds| -> Arc<[u8]> { records(&s, &key, device, &[ds], ds).into() };
    // What the first ferryd spooled: device 1's records 1 to 600, in
    // three segments; the secondary acknowledged up to 150 of them.
    crate::files::create_dir(&s.spool_dir).unwrap();
    for first in [1u64, 201, 401] {
        let recs: Vec<_> = (first..first + 200).map(|ds| (ds, one(1, ds))).collect();
        spool::write_segment(&files::Os, &s.spool_dir, 1, &recs).unwrap();
    }
    let held: Held = Arc::default();
    lock(&held).insert(1, 150);
    secondary_on(l, key, held.clone());
    s.recover(spool::load(&files::Os, &s.spool_dir, &key).unwrap());
    assert_eq!(s.status().disk_spool_records, 600);
    // What the kernel offers again: device 1 from 401 (it was not told
    // the last segment was spooled) to 800, device 0's 1 to 50.
    let mut kernel = records(&s, &key, 0, &(1..=50).collect::<Vec<_>>(), 1);
    kernel.extend(records(&s, &key, 1, &(401..=800).collect::<Vec<_>>(), 401));
    read(&s, &key, kernel, "restart").await;
    let drained = |st: &Status| {
        st.streams.len() == 2
            && st.streams.iter().all(|x| x.lag_records == 0)
            && st.disk_spool_bytes == 0
    };
    let t0 = Instant::now();
    while !drained(&s.status()) {
        if t0.elapsed() > Duration::from_secs(30) {
            let st = s.status();
            let streams: Vec<_> = st
                .streams
                .iter()
                .map(|x| (x.device, x.connected, x.received, x.done))
                .collect();
            s.stop().await;
            panic!(
                "not drained in 30 s: (device, connected, read, acknowledged) {streams:?}, \
                 disk spool {} records ({} bytes), the secondary holds {:?}",
                st.disk_spool_records,
                st.disk_spool_bytes,
                lock(&held)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*lock(&held), BTreeMap::from([(0, 50), (1, 800)]));
    // Device 0 was welcomed by a secondary that held nothing of it
    // (next 1, applied 0), device 1 by one that held 150 records; device
    // 0 stays so after it received records.
    let fresh = |id| lock(&lock(&s.devs)[&id].q).fresh;
    assert!(fresh(0));
    assert!(!fresh(1));
    let left = std::fs::read_dir(&s.spool_dir).unwrap().count();
    assert_eq!(left, 0, "segments left in the disk spool");
    s.stop().await;
}

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
    let (r, w) = k.open();
    let (s, key) = primary_fs(top, Arc::default(), peer, 1 << 20, Box::new(w), fs);
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
