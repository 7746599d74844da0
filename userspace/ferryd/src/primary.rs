//! The primary's `ferryd`: a thread reads records from the character
//! device (in group order, through the kernel's log-before-data gate) and
//! queues them per device; one task per device keeps a link connection to
//! the secondary, sends its queue from where the secondary says it stands,
//! and writes the secondary's acknowledgements back to the kernel (which
//! frees the spool and, for log devices, opens the gate).  Streams do not
//! wait for one another.
//!
//! When a data device's records read and not acknowledged exceed
//! `spool_after_mb`, they go to the disk spool (`spool.rs`) and the kernel
//! is told (`SPOOLED`) that it may drop them from its own.  A segment that
//! cannot be written (`spool_dir` full, or another error) leaves the
//! records where they were, in memory and in the kernel's spool; the
//! status says why (`spool_full`, `spool_error`), and spooling is tried
//! again each second until it goes through.

use std::collections::{BTreeMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_core::command::Command;
use ferry_core::record::{self, Flags, GroupKey, HEADER_LEN};
use ferry_core::FastDigest;
use ferryd::config::{Compress, Config, Role};
use ferryd::link::{self, Frame, Side};
use ferryd::status::{Status, Stream};
use ferryd::systemd::{Beat, HEARTBEAT};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::files::{self, FileSystem};
use crate::kernel::{self, DmStatus, Dmsetup};
use crate::spool::{self, OnDisk, Segment};
use crate::Report;

/// Largest read from the character device: more than the largest record.
const READ_BUF: usize = 2 << 20;
/// An idle stream sends an empty batch this often.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// A spooling step that failed is tried again after this long.
const SPOOL_RETRY: Duration = Duration::from_secs(1);
/// Records per frame, at most this many bytes before compression (one
/// record may be larger).  The secondary acknowledges a frame once it is
/// stored, so the first record of a frame waits for the whole of it to
/// cross the link: 256 KiB is 10 ms at 200 Mbit/s, and per-frame costs
/// stay small beside it.
const BATCH_BYTES: usize = 256 << 10;

/// A record's bytes: in memory, or in a segment of the disk spool.
#[derive(Clone)]
enum Data {
    Mem(Arc<[u8]>),
    Disk(OnDisk),
}

struct Queued {
    dev_seq: u64,
    data: Data,
    len: u32,
    /// The record's `timestamp_ns`: the kernel's clock when it sequenced
    /// the write (see `kernel`).
    stamp_ns: u64,
}

#[derive(Default)]
struct DevQ {
    /// Records read and not acknowledged: those in the disk spool first,
    /// then those in memory.
    recs: VecDeque<Queued>,
    /// Bytes of the records in memory.
    mem_bytes: u64,
    /// The disk spool's segments, oldest first, and their bytes.
    segs: VecDeque<Segment>,
    disk_bytes: u64,
    /// The device is a log device (its records never go to disk: the
    /// kernel's gate needs them until they are acknowledged).
    log: bool,
    highest_read: u64,
    acked: u64,
    connected: bool,
    record_bytes: u64,
    wire_bytes: u64,
    /// The stream has a gap nothing can fill (replication stopped).
    lost: bool,
}

/// What went wrong with the disk spool, for the status.
#[derive(Default)]
struct SpoolTrouble {
    /// The last segment could not be written for lack of space.
    full: Option<String>,
    /// The last failure of another kind, and the operation that failed
    /// (`write`, `read`, `remove`: cleared once one of its kind succeeds).
    error: Option<(&'static str, String)>,
    /// No spooling step is tried before this.
    retry_at: Option<Instant>,
}

struct Dev {
    id: u32,
    q: Mutex<DevQ>,
    more: Notify,
    /// The stream's link task's sign of life, for the watchdog: it waits
    /// while it connects or the network holds a frame.
    beat: Arc<Beat>,
}

struct Shared {
    cfg: Config,
    key: Vec<u8>,
    /// The character device, for commands (the reader thread has a dup).
    ctl: Mutex<Box<dyn Write + Send>>,
    devs: Mutex<BTreeMap<u32, Arc<Dev>>>,
    applied: AtomicU64,
    tls: Arc<rustls::ClientConfig>,
    rt: tokio::runtime::Handle,
    /// The disk spool's way to the disk.
    fs: Arc<dyn FileSystem>,
    /// The disk spool's directory, and its threshold and cap in bytes.
    spool_dir: std::path::PathBuf,
    spool_after: u64,
    spool_max: u64,
    /// Bytes in the disk spool, over all devices.
    disk_bytes: AtomicU64,
    spool_trouble: Mutex<SpoolTrouble>,
    /// Set on SIGTERM or SIGINT: the link tasks stop between frames, the
    /// reader before it queues what it read next.
    stop: tokio::sync::watch::Sender<bool>,
    /// The devices' link tasks.
    links: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Held by the reader while it queues (and spools) what it read: once
    /// the stop is set, taking it means the reader holds nothing half done.
    reading: Mutex<()>,
    /// The kernel's status lines (its mode, the group's devices).
    kernel: Box<dyn DmStatus>,
    /// Set once the status lines could not be read (logged once).
    kernel_unread: AtomicBool,
    /// How far the kernel's timestamps run ahead of `CLOCK_MONOTONIC`
    /// (the group's base after a restart of the host), at least: the most
    /// a record's stamp exceeded the clock when it was read.
    stamp_ahead: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn command(&self, c: Command) -> Result<()> {
        let mut b = [0u8; 128];
        let n = c.encode(&mut b).map_err(|e| anyhow::anyhow!("{e}"))?;
        lock(&self.ctl)
            .write_all(&b[..n])
            .with_context(|| format!("{c:?} to the kernel"))
    }

    fn dev(self: &Arc<Self>, id: u32) -> Arc<Dev> {
        let mut devs = lock(&self.devs);
        if let Some(d) = devs.get(&id) {
            return d.clone();
        }
        let d = Arc::new(Dev {
            id,
            q: Mutex::new(DevQ::default()),
            more: Notify::new(),
            beat: HEARTBEAT.beat(format!("the link task of device {id}")),
        });
        devs.insert(id, d.clone());
        let (s, d2) = (self.clone(), d.clone());
        let h = self.rt.spawn(async move { link_loop(s, d2).await });
        lock(&self.links).push(h);
        d
    }

    /// The secondary holds every record of `d` up to `dev_seq`.
    fn acked(&self, d: &Dev, dev_seq: u64, applied: u64) -> Result<()> {
        let mut gone = Vec::new();
        let upto = {
            let mut q = lock(&d.q);
            let upto = dev_seq.min(q.highest_read);
            if upto <= q.acked {
                None
            } else {
                q.acked = upto;
                while q.recs.front().is_some_and(|r| r.dev_seq <= upto) {
                    if let Some(r) = q.recs.pop_front() {
                        if matches!(r.data, Data::Mem(_)) {
                            q.mem_bytes -= u64::from(r.len);
                        }
                    }
                }
                while q.segs.front().is_some_and(|g| g.last <= upto) {
                    if let Some(g) = q.segs.pop_front() {
                        q.disk_bytes -= g.bytes;
                        self.disk_bytes.fetch_sub(g.bytes, Relaxed);
                        gone.push(g);
                    }
                }
                Some(upto)
            }
        };
        for g in &gone {
            match spool::remove(&*self.fs, g) {
                Ok(()) => self.spool_went("remove"),
                Err(e) => self.spool_failed("remove", &e),
            }
        }
        if let Some(upto) = upto {
            self.command(Command::Ack {
                device: d.id,
                dev_seq: upto,
            })?;
        }
        if applied > self.applied.fetch_max(applied, Relaxed) {
            // The kernel refuses an interval it has not closed (ERANGE):
            // harmless, the next acknowledgement says it again.
            if let Err(e) = self.command(Command::Applied { epoch: applied }) {
                warn!("{e:#}");
            }
        }
        Ok(())
    }

    /// Moves device `d`'s records in memory to the disk spool once they
    /// pass the threshold, and lets the kernel drop them.
    fn maybe_spool(&self, d: &Dev) -> Result<()> {
        if lock(&self.spool_trouble)
            .retry_at
            .is_some_and(|t| Instant::now() < t)
        {
            return Ok(());
        }
        let recs: Vec<(u64, Arc<[u8]>)> = {
            let q = lock(&d.q);
            if !self.wants_spool(&q) {
                return Ok(());
            }
            if self.disk_bytes.load(Relaxed) + q.mem_bytes > self.spool_max {
                return Ok(());
            }
            q.recs
                .iter()
                .filter_map(|r| match &r.data {
                    Data::Mem(b) => Some((r.dev_seq, b.clone())),
                    Data::Disk(_) => None,
                })
                .collect()
        };
        let Some(&(last, _)) = recs.last() else {
            return Ok(());
        };
        let (seg, at) = match spool::write_segment(&*self.fs, &self.spool_dir, d.id, &recs) {
            Ok(w) => w,
            Err(e) => {
                // Nothing of it is left: the records stay in memory and
                // in the kernel's spool, and it is tried again later.
                self.spool_failed("write", &e);
                return Ok(());
            }
        };
        self.spool_went("write");
        let (bytes, first) = (seg.bytes, seg.first);
        {
            let mut q = lock(&d.q);
            if last <= q.acked {
                // Acknowledged meanwhile: nothing to keep.
                drop(q);
                if let Err(e) = spool::remove(&*self.fs, &seg) {
                    self.spool_failed("remove", &e);
                }
                return Ok(());
            }
            let mut at = at.into_iter().peekable();
            for r in q.recs.iter_mut() {
                while at.peek().is_some_and(|(ds, _)| *ds < r.dev_seq) {
                    at.next();
                }
                if let Some((ds, _)) = at.peek() {
                    if *ds == r.dev_seq && matches!(r.data, Data::Mem(_)) {
                        if let Some((_, od)) = at.next() {
                            r.data = Data::Disk(od);
                        }
                    }
                }
            }
            q.mem_bytes = q
                .recs
                .iter()
                .filter(|r| matches!(r.data, Data::Mem(_)))
                .map(|r| u64::from(r.len))
                .sum();
            q.disk_bytes += bytes;
            q.segs.push_back(seg);
        }
        self.disk_bytes.fetch_add(bytes, Relaxed);
        tracing::debug!(
            device = d.id,
            records = recs.len(),
            bytes,
            first,
            last,
            "spooled to disk"
        );
        // Durable on this disk: the kernel may drop them (a refusal only
        // keeps them in its spool as well).
        if let Err(e) = self.command(Command::Spooled {
            device: d.id,
            dev_seq: last,
        }) {
            warn!(device = d.id, "{e:#}");
        }
        Ok(())
    }

    /// A disk spool operation `what` (`write`, `read`, `remove`) failed:
    /// the status says why; a lack of space, logged once while it lasts,
    /// is `spool_full`.  Spooling is tried again after [`SPOOL_RETRY`].
    fn spool_failed(&self, what: &'static str, e: &anyhow::Error) {
        let mut t = lock(&self.spool_trouble);
        let why = format!("{what}: {e:#}");
        if what == "write" {
            t.retry_at = Some(Instant::now() + SPOOL_RETRY);
        }
        if what == "write" && files::out_of_space(e) {
            if t.full.is_none() {
                warn!(
                    "disk spool full ({why}): records stay in memory and in the kernel's spool; \
                     spooling is tried again each second"
                );
            }
            t.full = Some(why);
        } else {
            warn!("disk spool: {why}");
            t.error = Some((what, why));
        }
    }

    /// A disk spool operation `what` went through: what its kind's
    /// failure said is over.
    fn spool_went(&self, what: &'static str) {
        let mut t = lock(&self.spool_trouble);
        if what == "write" {
            t.retry_at = None;
            if t.full.take().is_some() {
                info!("disk spool: room again, spooling goes on");
            }
        }
        if t.error.as_ref().is_some_and(|(w, _)| *w == what) {
            t.error = None;
        }
    }

    /// Whether a spooling step failed and is to be tried again.
    fn spool_retry_due(&self) -> bool {
        lock(&self.spool_trouble).retry_at.is_some()
    }

    /// Whether a device's records in memory are past the threshold (and
    /// it may spool).
    fn wants_spool(&self, q: &DevQ) -> bool {
        !(q.log || q.lost || self.spool_after == 0 || q.mem_bytes <= self.spool_after)
    }
}

/// Tries the failed spooling steps again, each [`SPOOL_RETRY`], also when
/// the reader reads nothing new (the kernel's writer waiting, say), as
/// the reader would: under its lock, and not once stopping.
async fn spool_retry_loop(s: Arc<Shared>) {
    let mut stop = s.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SPOOL_RETRY) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        if !s.spool_retry_due() {
            continue;
        }
        let s2 = s.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _reading = lock(&s2.reading);
            if s2.stopping() {
                return;
            }
            let devs: Vec<_> = lock(&s2.devs).values().cloned().collect();
            if !devs.iter().any(|d| s2.wants_spool(&lock(&d.q))) {
                // Nothing to spool any more (acknowledged meanwhile): what
                // the failure said is over.
                let mut t = lock(&s2.spool_trouble);
                t.retry_at = None;
                if t.full.take().is_some() {
                    info!("disk spool: nothing left to spool");
                }
                return;
            }
            for d in devs {
                if let Err(e) = s2.maybe_spool(&d) {
                    warn!(device = d.id, "disk spool: {e:#}");
                }
            }
        })
        .await;
    }
}

pub(crate) async fn run(cfg: Config, key: Vec<u8>) -> Result<()> {
    let mut signals = crate::Signals::new()?;
    let path = cfg.device();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let reader = f.try_clone()?;
    let d = &FastDigest;
    let gid = record::group_id_of_name(d, cfg.group.as_bytes());
    let gkey = GroupKey::derive(d, gid, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = cfg.status;
    let spool_dir = cfg.spool_dir();
    let fs: Arc<dyn FileSystem> = Arc::new(files::Os);
    let found = spool::load(&*fs, &spool_dir, &gkey)?;
    let (spool_after, spool_max) = (cfg.spool_after_mb << 20, cfg.spool_max_mb << 20);
    let s = Arc::new(Shared {
        cfg,
        key,
        ctl: Mutex::new(Box::new(f)),
        devs: Mutex::new(BTreeMap::new()),
        applied: AtomicU64::new(0),
        tls: link::client_config()?,
        rt: tokio::runtime::Handle::current(),
        fs,
        spool_dir,
        spool_after,
        spool_max,
        disk_bytes: AtomicU64::new(0),
        spool_trouble: Mutex::default(),
        stop: tokio::sync::watch::Sender::new(false),
        links: Mutex::new(Vec::new()),
        reading: Mutex::new(()),
        kernel: Box::new(Dmsetup::default()),
        kernel_unread: AtomicBool::new(false),
        stamp_ahead: AtomicU64::new(0),
    });
    s.recover(found);
    // The status endpoint last: once it answers, nothing of the start is
    // left to fail (a starter that waits for it takes ferryd for started).
    let _ctl = crate::serve_control(&s.cfg, s.clone())?;
    crate::serve_status(status, s.clone())?;
    let s2 = s.clone();
    let rd = tokio::task::spawn_blocking(move || read_loop(s2, reader, gkey));
    tokio::spawn(spool_retry_loop(s.clone()));
    crate::notify_ready();
    tokio::select! {
        r = rd => r.context("reader")?,
        sig = signals.recv() => {
            info!(signal = sig, "stopping");
            crate::notify_stopping();
            s.stop().await;
            info!("stopped");
            Ok(())
        }
    }
}

impl Shared {
    /// Queues what the disk spool held at start (`spool::load`): it goes
    /// first; the kernel offers again only what it still has.
    fn recover(self: &Arc<Self>, found: Vec<(u32, spool::Found)>) {
        for (id, segs) in found {
            let d = self.dev(id);
            let mut q = lock(&d.q);
            let (mut n, mut bytes) = (0u64, 0u64);
            for (seg, at) in segs {
                for (ds, stamp_ns, od) in at {
                    if ds > q.highest_read {
                        let len = od.len;
                        q.recs.push_back(Queued {
                            dev_seq: ds,
                            data: Data::Disk(od),
                            len,
                            stamp_ns,
                        });
                        q.highest_read = ds;
                        n += 1;
                    }
                }
                bytes += seg.bytes;
                q.disk_bytes += seg.bytes;
                q.segs.push_back(seg);
            }
            self.disk_bytes.fetch_add(bytes, Relaxed);
            info!(
                device = id,
                records = n,
                bytes,
                upto = q.highest_read,
                "disk spool recovered"
            );
        }
    }
}

/// How long a stop waits for the link tasks (a frame being sent, the
/// acknowledgements of those sent): a link that does not move is left
/// (what it was sending is sent again by the next `ferryd`).
const STOP_WAIT: Duration = Duration::from_secs(2);

impl Shared {
    /// Stops shipping: each link task ends after the frame it is sending
    /// (and the acknowledgements of what it sent, briefly); the reader ends
    /// before it queues anything more.  What is not acknowledged stays in
    /// the kernel's spool (and the disk spool) for the next `ferryd`.
    async fn stop(self: &Arc<Self>) {
        self.stop.send_replace(true);
        let links = std::mem::take(&mut *lock(&self.links));
        let all = futures_join(links);
        if tokio::time::timeout(STOP_WAIT, all).await.is_err() {
            warn!("link tasks did not stop within {STOP_WAIT:?}");
        }
        // The reader may be blocked reading the kernel: it returns at the
        // next record, sees the stop and queues nothing.  What it is doing
        // now (queueing, writing a disk spool segment) is finished first.
        let s = self.clone();
        let _ = tokio::task::spawn_blocking(move || drop(lock(&s.reading))).await;
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Waits for every task of `hs`.
async fn futures_join(hs: Vec<tokio::task::JoinHandle<()>>) {
    for h in hs {
        let _ = h.await;
    }
}

/// Reads records from the kernel and queues them per device.
fn read_loop(s: Arc<Shared>, mut f: impl Read, key: GroupKey) -> Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    // Waiting in a read for the kernel's next record is no hang; queueing
    // and spooling what was read is work.
    let beat = HEARTBEAT.beat("the reader");
    loop {
        beat.waiting();
        let r = f.read(&mut buf);
        beat.progress();
        let n = match r {
            Ok(0) => bail!("the group has no device any more (end of stream)"),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read from the character device"),
        };
        let _reading = lock(&s.reading);
        if s.stopping() {
            // The kernel offers these again to the next ferryd.
            return Ok(());
        }
        let mut off = 0;
        let mut touched = Vec::new();
        let now = kernel::mono_ns();
        while off < n {
            // The kernel hands whole records; the header says how long.
            let h = record::decode_header(&buf[off..n.min(off + HEADER_LEN)], &key, &FastDigest)
                .map_err(|e| anyhow::anyhow!("record from the kernel: {e}"))?;
            let len = h.header.record_len();
            if off + len > n {
                bail!("partial record from the kernel");
            }
            s.stamp_ahead
                .fetch_max(h.header.timestamp_ns.saturating_sub(now), Relaxed);
            let d = s.dev(h.header.device_id);
            {
                let mut q = lock(&d.q);
                q.log |= h.header.flags.0 & Flags::LOG != 0;
                // Records the disk spool already holds come again from the
                // kernel when it was not told before a restart: dropped.
                if h.header.dev_seq > q.highest_read {
                    q.highest_read = h.header.dev_seq;
                    q.mem_bytes += len as u64;
                    q.recs.push_back(Queued {
                        dev_seq: h.header.dev_seq,
                        data: Data::Mem(buf[off..off + len].into()),
                        len: len as u32,
                        stamp_ns: h.header.timestamp_ns,
                    });
                }
            }
            if !touched.contains(&h.header.device_id) {
                touched.push(h.header.device_id);
            }
            off += len;
        }
        for id in touched {
            let d = s.dev(id);
            d.more.notify_one();
            if let Err(e) = s.maybe_spool(&d) {
                warn!(device = id, "disk spool: {e:#}");
            }
        }
    }
}

/// Keeps device `d`'s link up, reconnecting with backoff.
/// Ends when the stop is set.
async fn link_loop(s: Arc<Shared>, d: Arc<Dev>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        // Connecting, and between connections: waiting for the network.
        d.beat.waiting();
        match session(&s, &d).await {
            Ok(()) => {}
            Err(e) => warn!(device = d.id, "link: {e:#}"),
        }
        lock(&d.q).connected = false;
        if s.stopping() {
            return;
        }
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(s.stop.subscribe()) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Resolves once the stop is set.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// One connection of device `d`'s stream, until it fails or the stop is
/// set (then between frames: a frame is never cut).
async fn session(s: &Arc<Shared>, d: &Arc<Dev>) -> Result<()> {
    let connected = tokio::select! {
        r = connect(s, d) => r?,
        // Nothing sent yet: given up at once.
        _ = stopped(s.stop.subscribe()) => return Ok(()),
    };
    let (tls, next) = connected;
    stream(s, d, tls, next).await
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects and authenticates device `d`'s stream; returns the first
/// record the secondary wants.
async fn connect(s: &Arc<Shared>, d: &Arc<Dev>) -> Result<(Tls, u64)> {
    let peer = s.cfg.peer.clone().unwrap_or_default();
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&peer))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect {peer}"))?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("ferry")?.to_owned();
    let mut tls = tokio_rustls::TlsConnector::from(s.tls.clone())
        .connect(name, tcp)
        .await
        .context("TLS")?;
    let mut ekm = [0u8; 32];
    tls.get_ref()
        .1
        .export_keying_material(&mut ekm, link::EXPORTER_LABEL, None)
        .map_err(|e| anyhow::anyhow!("exporter: {e}"))?;
    let group = s.cfg.group.clone();
    link::write_frame(
        &mut tls,
        &Frame::Hello {
            version: link::VERSION,
            group: group.clone(),
            device: d.id,
            tag: link::tag(&s.key, Side::Primary, &group, d.id, &ekm),
        },
    )
    .await?;
    let welcome = tokio::time::timeout(Duration::from_secs(10), link::read_frame(&mut tls))
        .await
        .context("no welcome (wrong key or group?)")?
        .context("no welcome (wrong key or group?)")?;
    let Frame::Welcome { tag, next, applied } = welcome else {
        bail!("unexpected frame instead of welcome");
    };
    if !link::tag_ok(&s.key, Side::Secondary, &group, d.id, &ekm, &tag) {
        bail!("the secondary's tag does not verify: wrong key");
    }
    info!(device = d.id, next, applied, "connected");
    if next > 1 {
        s.acked(d, next - 1, applied)?;
    }
    Ok((tls, next))
}

/// Sends device `d`'s records from `next` and takes the acknowledgements.
/// On the stop: the frame being sent is finished, the acknowledgements of
/// what was sent are awaited briefly, and the connection is closed.
async fn stream(s: &Arc<Shared>, d: &Arc<Dev>, tls: Tls, next: u64) -> Result<()> {
    lock(&d.q).connected = true;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let lz4 = s.cfg.compress == Compress::Lz4;
    let receiver = async {
        loop {
            match link::read_frame(&mut rd).await? {
                Frame::Ack { dev_seq, applied } => s.acked(d, dev_seq, applied)?,
                other => bail!("unexpected frame {other:?}"),
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::pin!(receiver);
    // The last record sent, once the sender stopped.
    let sent: Result<u64> = {
        let sender = async {
            let mut cursor = next;
            loop {
                d.beat.progress();
                if s.stopping() {
                    return Ok(cursor - 1);
                }
                let notified = d.more.notified();
                let parts = {
                    let q = lock(&d.q);
                    // What the secondary acknowledged (also what came on an
                    // older connection) is not sent again.
                    cursor = cursor.max(q.acked + 1);
                    if q.recs.front().is_some_and(|r| r.dev_seq > cursor) {
                        drop(q);
                        return Err(s.lost(d, cursor));
                    }
                    let mut parts = Vec::new();
                    let (mut size, mut last) = (0usize, 0);
                    for r in q.recs.iter().filter(|r| r.dev_seq >= cursor) {
                        if size > 0 && size + r.len as usize > BATCH_BYTES {
                            break;
                        }
                        parts.push(r.data.clone());
                        size += r.len as usize;
                        last = r.dev_seq;
                    }
                    (!parts.is_empty()).then_some((parts, size, last))
                };
                let batch = match parts {
                    None => None,
                    Some((parts, size, last)) => {
                        let disk = parts.iter().any(|p| matches!(p, Data::Disk(_)));
                        let b = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
                            let mut b = Vec::with_capacity(size);
                            for p in parts {
                                match p {
                                    Data::Mem(m) => b.extend_from_slice(&m),
                                    Data::Disk(od) => b.extend_from_slice(&od.read()?),
                                }
                            }
                            Ok(b)
                        })
                        .await?;
                        // (A segment that cannot be read ends the
                        // connection; the records stay on disk, and the
                        // next connection reads them again.)
                        match &b {
                            Ok(_) if disk => s.spool_went("read"),
                            Err(e) => s.spool_failed("read", e),
                            Ok(_) => {}
                        }
                        Some((b?, last))
                    }
                };
                let Some((b, last)) = batch else {
                    // Idle: an empty batch every second tells the secondary
                    // the link is alive (it drops a silent connection).
                    d.beat.waiting();
                    tokio::select! {
                        r = tokio::time::timeout(KEEPALIVE, notified) => if r.is_err() {
                            use tokio::io::AsyncWriteExt;
                            wr.write_all(&link::pack(&[], false).encode()).await?;
                            wr.flush().await?;
                        },
                        _ = stopped(s.stop.subscribe()) => {}
                    }
                    continue;
                };
                let f = link::pack(&b, lz4);
                let wire = f.encode();
                use tokio::io::AsyncWriteExt;
                d.beat
                    .wait(async {
                        wr.write_all(&wire).await?;
                        wr.flush().await
                    })
                    .await?;
                {
                    let mut q = lock(&d.q);
                    q.record_bytes += b.len() as u64;
                    q.wire_bytes += wire.len() as u64;
                }
                cursor = last + 1;
            }
        };
        tokio::pin!(sender);
        tokio::select! {
            r = &mut sender => r,
            r = &mut receiver => r.map(|()| 0),
        }
    };
    let sent = sent?;
    // Stopping: the acknowledgements of what was sent (the kernel frees
    // those records), for a short while; then the connection is closed.
    let acked = async {
        while lock(&d.q).acked < sent {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tokio::select! {
            _ = acked => {}
            _ = &mut receiver => {}
        }
    })
    .await;
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_millis(500), wr.shutdown()).await;
    info!(device = d.id, "link stopped");
    Ok(())
}

impl Shared {
    /// Device `d`'s stream misses records from `cursor` on: they are
    /// neither in the kernel's spool nor in the disk spool (a disk spool
    /// removed while `ferryd` was down).  Replication stops: the group goes
    /// `ahead`, its bitmap naming what the secondary misses.
    fn lost(&self, d: &Dev, cursor: u64) -> anyhow::Error {
        let first = {
            let mut q = lock(&d.q);
            let was = std::mem::replace(&mut q.lost, true);
            (!was).then(|| q.recs.front().map_or(0, |r| r.dev_seq))
        };
        if let Some(first) = first {
            tracing::error!(
                device = d.id,
                missing_from = cursor,
                missing_to = first.saturating_sub(1),
                "records are in neither the kernel's spool nor the disk spool: replication stops (a resync is needed)"
            );
            if let Err(e) = self.command(Command::Stop) {
                warn!("{e:#}");
            }
        }
        anyhow::anyhow!("device {}: the stream has a gap from {cursor}", d.id)
    }
}

impl Shared {
    /// What the kernel says of the group now; `None` when its status
    /// lines cannot be read (logged once) or name no device of it.
    fn kernel_view(&self) -> Option<kernel::View> {
        match self.kernel.lines() {
            Ok(lines) => kernel::view(&lines, &self.cfg.group),
            Err(e) => {
                if !self.kernel_unread.swap(true, Relaxed) {
                    warn!("the kernel's status (the state shown cannot say ahead): {e:#}");
                }
                None
            }
        }
    }
}

impl Report for Shared {
    /// The state is the kernel's when it is `ahead`; otherwise
    /// `replicating` while a stream is connected, `connecting` when none
    /// is.  Every device of the group the kernel names is listed, also
    /// before its first record is read.
    fn status(&self) -> Status {
        let view = self.kernel_view();
        let now = kernel::mono_ns();
        let ahead_ns = self.stamp_ahead.load(Relaxed);
        let devs = lock(&self.devs);
        let mut streams = Vec::new();
        let mut spool = 0;
        let mut disk_records = 0;
        let mut connected = false;
        for d in devs.values() {
            let q = lock(&d.q);
            let lag_bytes = q.recs.iter().map(|r| u64::from(r.len)).sum();
            spool += q.recs.len() as u64;
            disk_records += q
                .recs
                .iter()
                .filter(|r| matches!(r.data, Data::Disk(_)))
                .count() as u64;
            connected |= q.connected;
            streams.push(Stream {
                device: d.id,
                connected: q.connected,
                received: q.highest_read,
                done: q.acked,
                lag_records: q.highest_read - q.acked,
                lag_bytes,
                lag_seconds: q
                    .recs
                    .front()
                    .map_or(0.0, |r| kernel::age_seconds(r.stamp_ns, now, ahead_ns)),
                record_bytes: q.record_bytes,
                wire_bytes: q.wire_bytes,
                applied_writes: 0,
                log_stopped: None,
            });
        }
        drop(devs);
        let ahead = view.as_ref().is_some_and(|v| v.ahead);
        for id in view.map(|v| v.devices).unwrap_or_default() {
            if !streams.iter().any(|s| s.device == id) {
                streams.push(Stream {
                    device: id,
                    ..Stream::default()
                });
            }
        }
        streams.sort_by_key(|s| s.device);
        let trouble = {
            let t = lock(&self.spool_trouble);
            SpoolTrouble {
                full: t.full.clone(),
                error: t.error.clone(),
                retry_at: None,
            }
        };
        Status {
            group: self.cfg.group.clone(),
            role: Role::Primary,
            state: if ahead {
                "ahead"
            } else if connected {
                "replicating"
            } else {
                "connecting"
            }
            .into(),
            streams,
            applied_epoch: self.applied.load(Relaxed),
            applying_epoch: 0,
            spool_records: spool,
            auth_refused: 0,
            auth_refused_by: Vec::new(),
            accept_errors: 0,
            rejected: Vec::new(),
            intervals_applied: 0,
            consistency_point: None,
            disk_spool_records: disk_records,
            disk_spool_bytes: self.disk_bytes.load(Relaxed),
            g2_violations: 0,
            apply_error: None,
            log_full: None,
            spool_full: trouble.full,
            spool_error: trouble.error.map(|(_, why)| why),
        }
    }
}

impl crate::Control for Shared {
    async fn release(&self) -> Result<u64, String> {
        Err("this site is the primary: release is for a secondary".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::tests::fresh_dir;
    use ferry_core::record::RecordKind;
    use std::fs::File;

    /// Status lines a test sets.
    #[derive(Default)]
    struct Lines(Mutex<Option<String>>);

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
    fn primary_in(
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
        });
        (s, gkey)
    }

    /// Device `device`'s write records `dev_seqs`, stamped `stamp_ns`.
    fn records(
        s: &Shared,
        key: &GroupKey,
        device: u32,
        dev_seqs: &[u64],
        stamp_ns: u64,
    ) -> Vec<u8> {
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
    async fn drained(
        k: &FakeKernel,
        s: &Arc<Shared>,
        sec: &crate::secondary::Sec,
        limit: Duration,
    ) {
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
}
