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
    /// A secondary that held nothing of the stream welcomed it in this
    /// process (`resync::holds_nothing`; kept: the first copy is due).
    fresh: bool,
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
    /// The resync's last `START` and what the log said (`resync`).
    resync: Mutex<resync::ResyncState>,
    /// The question of room for a resync asked of the secondary
    /// (`room_side`).
    room: Mutex<room_side::Questions>,
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
        resync: Mutex::default(),
        room: Mutex::default(),
    });
    s.recover(found);
    // The status endpoint last: once it answers, nothing of the start is
    // left to fail (a starter that waits for it takes ferryd for started).
    let _ctl = crate::serve_control(&s.cfg, s.clone())?;
    crate::serve_status(status, s.clone())?;
    let s2 = s.clone();
    let rd = tokio::task::spawn_blocking(move || read_loop(s2, reader, gkey));
    tokio::spawn(spool_retry_loop(s.clone()));
    tokio::spawn(resync::resync_loop(s.clone()));
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

impl Shared {
    /// Device `d`'s stream misses records from `cursor` on: they are
    /// neither in the kernel's spool nor in the disk spool (a disk spool
    /// removed while `ferryd` was down).  Replication stops: the group goes
    /// `ahead`, its bitmap naming what the secondary misses (but not
    /// these records: no resync is started, see `resync`).
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
                "records are in neither the kernel's spool nor the disk spool: replication stops, and no resync is started (those writes are not in the dirty bitmap)"
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

#[path = "primary_report.rs"]
mod report;

#[path = "primary_resync.rs"]
mod resync;

#[path = "primary_room.rs"]
mod room_side;

#[path = "primary_link.rs"]
mod link_side;
use link_side::link_loop;

#[cfg(test)]
#[path = "primary_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "primary_e2e_tests.rs"]
mod e2e_tests;
