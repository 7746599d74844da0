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

    /// The tables of the primary devices the lines name, without
    /// `chunk_kb` (64 KiB chunks).
    fn tables(&self) -> Result<String> {
        let lines = self.lines()?;
        Ok(lines
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let i = w.iter().position(|t| *t == "ferry")?;
                let [name, start, len] = w.get(..3)?.try_into().ok()?;
                let (g, id) = (w.get(i + 2)?, w.get(i + 3)?);
                Some(format!(
                    "{name} {start} {len} ferry 253:0 253:1 4 group {g} device_id {id}\n"
                ))
            })
            .collect())
    }
}

/// The secondary's side of the questions of room, in place of the
/// links: what its `log_dir` has available and keeps in reserve, and
/// the needs it was asked about.
#[derive(Clone, Default)]
pub(super) struct Room(pub(super) Arc<Mutex<(u64, u64, Vec<u64>)>>);

impl Room {
    /// A secondary with `available` bytes in `log_dir`, keeping `reserve`.
    pub(super) fn new(available: u64, reserve: u64) -> Self {
        Self(Arc::new(Mutex::new((available, reserve, Vec::new()))))
    }

    /// The needs asked about so far.
    pub(super) fn asked(&self) -> Vec<u64> {
        lock(&self.0).2.clone()
    }

    /// Answers every question of `s` as a secondary's `ferryd` does
    /// (`ferryd::room::decide`), until `s` stops.
    pub(super) fn answer(&self, s: &Arc<Shared>) {
        let (room, s) = (self.clone(), s.clone());
        tokio::spawn(async move {
            while !s.stopping() {
                let ids: Vec<u32> = lock(&s.devs).keys().copied().collect();
                for id in ids {
                    if let Some(Frame::RoomAsk { ask, need }) = s.room_question(id) {
                        let (available, reserve) = {
                            let mut r = lock(&room.0);
                            r.2.push(need);
                            (r.0, r.1)
                        };
                        let ok = ferryd::room::decide(need, available, reserve);
                        let no = ferryd::room::NoRoom {
                            need,
                            available,
                            reserve,
                            log_dir: "/var/lib/ferry/gr".into(),
                        };
                        s.room_answered(ask, ok, no);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
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
pub(super) fn primary_fs(
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
        room: Mutex::default(),
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
    Room::new(u64::MAX, 0).answer(&s);
    let ahead = "p0: 0 8 ferry primary gr 0 log ahead 5 5 5 5 0 1024 3 1 0 0 0 0\n\
                 p1: 0 8 ferry primary gr 1 data ahead 5 5 5 5 0 1024 9 1 0 0 0 0\n";
    *lock(&lines.0) = Some(ahead.into());
    let t0 = Instant::now();
    // Only device 0 connected: waits, and says so.
    connect(&s, 0, true);
    s.resync_tick(t0).await;
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
    s.resync_tick(t0).await;
    assert_eq!(dev.starts(), 1);
    s.resync_tick(t0 + Duration::from_secs(1)).await;
    assert_eq!(dev.starts(), 1, "the kernel's lines not read again yet");
    // Taken: the kernel resyncs.
    *lock(&lines.0) = Some(
        "p0: 0 8 ferry primary gr 0 log resyncing 5 5 5 5 0 1024 3 1 0 0 1 3\n\
         p1: 0 8 ferry primary gr 1 data resyncing 5 5 5 5 0 1024 9 1 0 0 6 9\n"
            .into(),
    );
    s.resync_tick(t0 + Duration::from_secs(6)).await;
    assert_eq!(dev.starts(), 1);
    let st = s.status();
    assert_eq!(st.state, "resyncing");
    assert_eq!((st.resync_chunks_left, st.resync_chunks_total), (7, 12));
    // The tables say 64 KiB chunks.
    assert_eq!(
        (st.resync_bytes_left, st.resync_bytes_total),
        (Some(7 << 16), Some(12 << 16))
    );
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
    s.resync_tick(t0 + Duration::from_secs(7)).await;
    assert_eq!(dev.starts(), 1);
    let st = s.status();
    assert!(st.resync_note.unwrap().contains("START refused (no room"));
    lock(&dev.0).1 = None;
    s.resync_tick(t0 + Duration::from_secs(9)).await;
    assert_eq!(dev.starts(), 1, "within the backoff");
    s.resync_tick(t0 + Duration::from_secs(7) + RESYNC_RETRY)
        .await;
    assert_eq!(dev.starts(), 2);
    // EOPNOTSUPP: never again on its own.
    lock(&dev.0).1 = Some(libc::EOPNOTSUPP);
    let later = t0 + Duration::from_secs(20);
    s.resync_tick(later).await;
    lock(&dev.0).1 = None;
    for k in 3..10 {
        s.resync_tick(later + RESYNC_RETRY * k).await;
    }
    assert_eq!(dev.starts(), 2);
    assert!(s.status().resync_note.unwrap().contains("unclean shutdown"));
    // ferryctl resync says the same.
    lock(&dev.0).1 = Some(libc::EOPNOTSUPP);
    let e = s.resync_now(false).await.unwrap_err();
    assert!(e.contains("the kernel refused START: a member"), "{e}");
    lock(&dev.0).1 = None;
    // Replicating again: forgotten.
    *lock(&lines.0) = Some(
        "p0: 0 8 ferry primary gr 0 log replicating 5 5 5 5 0 1024 0 1 0 0 0 0\n\
         p1: 0 8 ferry primary gr 1 data replicating 5 5 5 5 0 1024 0 1 0 0 0 0\n"
            .into(),
    );
    s.resync_tick(later).await;
    assert_eq!(s.status().state, "replicating");
    // Records lost from the disk spool: no resync, automatic or asked.
    *lock(&lines.0) = Some(ahead.into());
    lock(&lock(&s.devs)[&1].q).lost = true;
    s.resync_tick(later + RESYNC_RETRY * 20).await;
    assert_eq!(dev.starts(), 2);
    let st = s.status();
    assert!(st
        .resync_note
        .unwrap()
        .contains("records were lost from the disk spool"));
    assert!(s
        .resync_now(false)
        .await
        .unwrap_err()
        .contains("not in the dirty bitmap"));
    assert_eq!(dev.starts(), 2);
    lock(&lock(&s.devs)[&1].q).lost = false;
    // ferryctl resync: START, and what the kernel was in.
    let r = s.resync_now(false).await.unwrap();
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
    Room::new(u64::MAX, 0).answer(&s);
    *lock(&lines.0) =
        Some("p0: 0 8 ferry primary gr 0 data ahead 5 5 5 5 0 1024 3 1 0 0 0 0\n".into());
    connect(&s, 0, true);
    for k in 0..10 {
        s.resync_tick(Instant::now() + RESYNC_RETRY * k).await;
    }
    assert_eq!(dev.starts(), 0);
    let st = s.status();
    assert_eq!(st.resync_mode, "manual");
    assert_eq!(
        st.resync_note.as_deref(),
        Some("manual resync (resync = \"manual\"): ferryctl resync gr")
    );
    assert_eq!(s.resync_now(false).await.unwrap().was, "ahead");
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
