//! The primary's `ferryd`: a thread reads records from the character
//! device (in group order, through the kernel's log-before-data gate) and
//! queues them per device; one task per device keeps a link connection to
//! the secondary, sends its queue from where the secondary says it stands,
//! and writes the secondary's acknowledgements back to the kernel (which
//! frees the spool and, for log devices, opens the gate).  Streams do not
//! wait for one another.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_core::command::Command;
use ferry_core::record::{self, GroupKey, HEADER_LEN};
use ferry_core::FastDigest;
use ferryd::config::{Compress, Config, Role};
use ferryd::link::{self, Frame, Side};
use ferryd::status::{Status, Stream};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::Report;

/// Largest read from the character device: more than the largest record.
const READ_BUF: usize = 2 << 20;
/// An idle stream sends an empty batch this often.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Records per frame, at most this many bytes before compression.
const BATCH_BYTES: usize = 1 << 20;

struct Queued {
    dev_seq: u64,
    bytes: Arc<[u8]>,
    read_at: Instant,
}

#[derive(Default)]
struct DevQ {
    recs: VecDeque<Queued>,
    highest_read: u64,
    acked: u64,
    connected: bool,
    record_bytes: u64,
    wire_bytes: u64,
}

struct Dev {
    id: u32,
    q: Mutex<DevQ>,
    more: Notify,
}

struct Shared {
    cfg: Config,
    key: Vec<u8>,
    /// The character device, for commands (the reader thread has a dup).
    ctl: Mutex<File>,
    devs: Mutex<BTreeMap<u32, Arc<Dev>>>,
    applied: AtomicU64,
    tls: Arc<rustls::ClientConfig>,
    rt: tokio::runtime::Handle,
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
        });
        devs.insert(id, d.clone());
        let (s, d2) = (self.clone(), d.clone());
        self.rt.spawn(async move { link_loop(s, d2).await });
        d
    }

    /// The secondary holds every record of `d` up to `dev_seq`.
    fn acked(&self, d: &Dev, dev_seq: u64, applied: u64) -> Result<()> {
        let upto = {
            let mut q = lock(&d.q);
            let upto = dev_seq.min(q.highest_read);
            if upto <= q.acked {
                None
            } else {
                q.acked = upto;
                while q.recs.front().is_some_and(|r| r.dev_seq <= upto) {
                    q.recs.pop_front();
                }
                Some(upto)
            }
        };
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
}

pub(crate) async fn run(cfg: Config, key: Vec<u8>) -> Result<()> {
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
    let s = Arc::new(Shared {
        cfg,
        key,
        ctl: Mutex::new(f),
        devs: Mutex::new(BTreeMap::new()),
        applied: AtomicU64::new(0),
        tls: link::client_config()?,
        rt: tokio::runtime::Handle::current(),
    });
    crate::serve_status(status, s.clone())?;
    let s2 = s.clone();
    let rd = tokio::task::spawn_blocking(move || read_loop(s2, reader, gkey));
    crate::notify_ready();
    tokio::select! {
        r = rd => r.context("reader")?,
        _ = tokio::signal::ctrl_c() => { info!("interrupted"); Ok(()) }
    }
}

/// Reads records from the kernel and queues them per device.
fn read_loop(s: Arc<Shared>, mut f: File, key: GroupKey) -> Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => bail!("the group has no device any more (end of stream)"),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read from the character device"),
        };
        let mut off = 0;
        let mut touched = Vec::new();
        while off < n {
            // The kernel hands whole records; the header says how long.
            let h = record::decode_header(&buf[off..n.min(off + HEADER_LEN)], &key, &FastDigest)
                .map_err(|e| anyhow::anyhow!("record from the kernel: {e}"))?;
            let len = h.header.record_len();
            if off + len > n {
                bail!("partial record from the kernel");
            }
            let d = s.dev(h.header.device_id);
            {
                let mut q = lock(&d.q);
                q.highest_read = q.highest_read.max(h.header.dev_seq);
                q.recs.push_back(Queued {
                    dev_seq: h.header.dev_seq,
                    bytes: buf[off..off + len].into(),
                    read_at: Instant::now(),
                });
            }
            if !touched.contains(&h.header.device_id) {
                touched.push(h.header.device_id);
            }
            off += len;
        }
        for id in touched {
            s.dev(id).more.notify_one();
        }
    }
}

/// Keeps device `d`'s link up, reconnecting with backoff.
async fn link_loop(s: Arc<Shared>, d: Arc<Dev>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match session(&s, &d).await {
            Ok(()) => {}
            Err(e) => warn!(device = d.id, "link: {e:#}"),
        }
        lock(&d.q).connected = false;
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(s: &Arc<Shared>, d: &Arc<Dev>) -> Result<()> {
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
    lock(&d.q).connected = true;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let lz4 = s.cfg.compress == Compress::Lz4;
    let sender = async {
        let mut cursor = next;
        loop {
            let notified = d.more.notified();
            let batch = {
                let q = lock(&d.q);
                let mut b = Vec::new();
                let mut last = 0;
                for r in q.recs.iter().filter(|r| r.dev_seq >= cursor) {
                    if !b.is_empty() && b.len() + r.bytes.len() > BATCH_BYTES {
                        break;
                    }
                    b.extend_from_slice(&r.bytes);
                    last = r.dev_seq;
                }
                (!b.is_empty()).then_some((b, last))
            };
            let Some((b, last)) = batch else {
                // Idle: an empty batch every second tells the secondary
                // the link is alive (it drops a silent connection).
                if tokio::time::timeout(KEEPALIVE, notified).await.is_err() {
                    use tokio::io::AsyncWriteExt;
                    wr.write_all(&link::pack(&[], false).encode()).await?;
                    wr.flush().await?;
                }
                continue;
            };
            let f = link::pack(&b, lz4);
            let wire = f.encode();
            use tokio::io::AsyncWriteExt;
            wr.write_all(&wire).await?;
            wr.flush().await?;
            {
                let mut q = lock(&d.q);
                q.record_bytes += b.len() as u64;
                q.wire_bytes += wire.len() as u64;
            }
            cursor = last + 1;
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    let receiver = async {
        loop {
            match link::read_frame(&mut rd).await? {
                Frame::Ack { dev_seq, applied } => s.acked(d, dev_seq, applied)?,
                other => bail!("unexpected frame {other:?}"),
            }
        }
    };
    tokio::select! {
        r = sender => r,
        r = receiver => r,
    }
}

impl Report for Shared {
    fn status(&self) -> Status {
        let devs = lock(&self.devs);
        let mut streams = Vec::new();
        let mut spool = 0;
        let mut connected = false;
        for d in devs.values() {
            let q = lock(&d.q);
            let lag_bytes = q.recs.iter().map(|r| r.bytes.len() as u64).sum();
            spool += q.recs.len() as u64;
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
                    .map_or(0.0, |r| r.read_at.elapsed().as_secs_f64()),
                record_bytes: q.record_bytes,
                wire_bytes: q.wire_bytes,
            });
        }
        Status {
            group: self.cfg.group.clone(),
            role: Role::Primary,
            state: if connected {
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
            rejected: Vec::new(),
            intervals_applied: 0,
            consistency_point: None,
        }
    }

    fn release(&self) -> Result<u64, String> {
        Err("release is for a secondary".into())
    }
}
