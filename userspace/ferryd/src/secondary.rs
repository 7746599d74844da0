//! The secondary's `ferryd`.
//!
//! * **Receive.**  Each authenticated stream connection delivers batches of
//!   records.  Every record is verified (checksums, signatures, group, the
//!   stream it came on); a bad one is counted by reason and the connection
//!   is closed, so the primary reconnects and sends again from what this
//!   side acknowledged (the re-request).  Records are appended to the
//!   stream's file of the remote log (one file per device: log and data
//!   records apart), the file is fsynced, the records enter the stream's
//!   window (ferry-core's `StreamWindow`) and the contiguous run end is
//!   acknowledged.  A failed append is rolled back and acknowledges
//!   nothing (`remote_log`); a full `log_dir` is not a stop: the status
//!   says so (`log_full`) and the primary's next attempt goes through
//!   once there is room.
//! * **Apply.**  ferry-core chooses what may be applied: the limit is the
//!   earliest of the streams' run-end stamps; the oldest checkpoint
//!   interval whose markers all arrived at or below it is applied whole,
//!   in group order, through the kernel (`APPLY_BEGIN`, records,
//!   `APPLY_END`; the kernel keeps the update-in-progress mark), together
//!   with the ready intervals after it, up to a batch's bounds.  The
//!   positions reached are then saved (`state.json`) and the applied part
//!   of the remote log is released (hole punched).  A save that finds no
//!   room waits for it (nothing is released meanwhile); one that fails
//!   otherwise stops applying.
//! * **Restart.**  The kernel's mark says which interval was applied last
//!   and whether one was in progress; the remote log from the saved
//!   positions rebuilds the windows and the rendezvous, and an interval in
//!   progress is applied again (redo).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_core::checkpoint::{
    self, ApplyMark, ApplyState, IntervalSlot, Rendezvous, APPLY_MARK_LEN,
};
use ferry_core::command::Command;
use ferry_core::gate::{DeviceClass, DurableOrder};
use ferry_core::record::{self, GroupKey, RecordError, RecordKind};
use ferry_core::select::{interval_limit, next_in_group_order, Received, Stamp, StreamWindow};
use ferry_core::table::MAX_DEVICES;
use ferry_core::FastDigest;
use ferryd::config::{Config, Role};
use ferryd::cpoints::{self, Points};
use ferryd::link::{self, Frame, Side};
use ferryd::status::{Status, Stream};
use ferryd::systemd::{Beat, HEARTBEAT};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::files::{self, FileSystem};
use crate::listen::{self, Counters, Refusal};
use crate::remote_log::{self, StreamLog};
use crate::{Rejected, Report};
use ferryd::ctl::{self, Control};

/// Records a stream may hold between the last applied and the newest.
const WINDOW: usize = 1 << 18;
/// A stream connection that carries nothing for this long is dropped.
const SILENCE: Duration = Duration::from_secs(5);
/// Checkpoint intervals open at once.
const INTERVALS: usize = 4096;
/// Ready intervals applied under one mark: at most this many, and no more
/// once this many records or bytes are in (host reads wait for the whole
/// batch).
const BATCH_INTERVALS: usize = 32;
const BATCH_RECORDS: usize = 4096;
const BATCH_BYTES: u64 = 64 << 20;

#[derive(Clone, Copy, Debug)]
struct Loc {
    off: u64,
    len: u32,
}

type Window = StreamWindow<Loc, Vec<Option<Received<Loc>>>>;

/// What is saved after each interval, per device.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// First `dev_seq` not applied.
    next: u64,
    /// Stamp of the last applied record.
    ts: u64,
    gs: u64,
    /// Offset in the stream's file below which everything is applied.
    log_start: u64,
    /// Offset below which every record of the file was fsynced whole (may
    /// have been acknowledged) when this was saved: a bad record below it
    /// at start is damage, not a torn tail (0 in an older `state.json`).
    #[serde(default)]
    durable: u64,
}

/// `state.json`: the positions, and the consistency points.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    streams: BTreeMap<u32, Saved>,
    #[serde(default)]
    points: Option<cpoints::Saved>,
}

struct StreamState {
    id: u32,
    saved: Saved,
    connected: u32,
    /// Bumped by each authenticated connection of the stream: the newest
    /// one serves it, an older one ends at its next frame.
    conn_gen: u64,
    record_bytes: u64,
    wire_bytes: u64,
    /// Write records applied by this process.
    applied_writes: u64,
}

struct State {
    /// The members' windows, in the order of `streams` (ferry-core's
    /// selection takes them as a slice).
    windows: Vec<Window>,
    streams: Vec<StreamState>,
    rendezvous: Rendezvous<Vec<IntervalSlot>>,
    /// `dev_seq` of each stream's checkpoint marker, by (interval, stream
    /// index), for ferry-core's `interval_limit`.
    markers: BTreeMap<(u64, usize), u64>,
    /// The consistency points the remote log holds.
    points: Points,
    applied: u64,
    applying: u64,
    /// The kernel's mark had this interval in progress at start: the first
    /// batch must reach it (0 once redone).
    redo: u64,
    intervals: u64,
    /// `ferryctl promote` asked for the device: apply every complete
    /// interval, then close it (`released`).
    release: bool,
    released: bool,
    /// SIGTERM or SIGINT: stop applying before the next batch.
    stop: bool,
    /// Why applying stopped (`apply_stopped`); `None` while it goes on.
    apply_error: Option<String>,
    /// Why `state.json` could not be saved for lack of space; `None` once
    /// it was.
    state_full: Option<String>,
    /// G2 as seen here: the order in which records became durable in the
    /// remote log (ferry-core's `DurableOrder`).
    g2: DurableOrder,
}

pub(crate) struct Sec {
    cfg: Config,
    key: Vec<u8>,
    gkey: GroupKey,
    /// The remote log's and `state.json`'s way to the disk.
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    dev: Mutex<Option<File>>,
    /// The members' lengths on this site, from the kernel.
    sizes: Sizes,
    state: Mutex<State>,
    logs: Vec<Mutex<StreamLog>>,
    more: Notify,
    rejected: Rejected,
    /// The listener's: accept errors, peers refused.
    listen: Arc<Counters>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a record comes from a `log` device of its group.
fn class_of(h: &record::RecordHeader) -> DeviceClass {
    if h.flags.has(record::Flags::LOG) {
        DeviceClass::Log
    } else {
        DeviceClass::Data
    }
}

fn stamp(h: &record::RecordHeader) -> Stamp {
    Stamp {
        timestamp_ns: h.timestamp_ns,
        group_seq: h.group_seq,
    }
}

fn received(h: &record::RecordHeader, loc: Loc) -> Received<Loc> {
    Received {
        stamp: stamp(h),
        epoch: h.epoch,
        kind: h.kind,
        item: loc,
    }
}

/// A short name for a rejection reason (metrics label).
fn reason(e: &RecordError) -> &'static str {
    match e {
        RecordError::Truncated { .. } => "truncated",
        RecordError::HeaderChecksum | RecordError::PayloadChecksum => "checksum",
        RecordError::HeadSignature | RecordError::TailSignature => "signature",
        RecordError::WrongGroup => "wrong_group",
        RecordError::BadTail | RecordError::TailMismatch => "tail",
        _ => "malformed",
    }
}

/// Writes `state.json` in `dir` whole (a new file 0600, renamed over the
/// old one: `files::replace`).
fn save_state(fs: &dyn FileSystem, dir: &Path, saved: &SavedState) -> Result<()> {
    files::replace(
        fs,
        dir,
        "state.json",
        serde_json::to_string(saved)?.as_bytes(),
    )
}

/// Each device id's length in sectors on this site (0: no member), as the
/// kernel reports it.
type Sizes = [u64; MAX_DEVICES as usize];

/// Length of the secondary kernel's state: the apply mark, the members,
/// the sizes (`Documentation/ferry.rst`, "Applying through the character
/// device").
const KERNEL_STATE_LEN: usize = APPLY_MARK_LEN + 8 + 8 * MAX_DEVICES as usize;

/// Reads the secondary kernel's state: its apply mark, members and sizes.
fn kernel_state(f: &mut File) -> Result<(ApplyMark, u64, Sizes)> {
    let mut b = [0u8; KERNEL_STATE_LEN + 8];
    let n = f.read(&mut b).context("read the secondary's state")?;
    if n != KERNEL_STATE_LEN {
        bail!(
            "the character device gave {n} bytes of state, not {KERNEL_STATE_LEN}: \
             not a secondary's (is the table `mode secondary`?), or a dm-ferry of another version"
        );
    }
    let mark =
        ApplyMark::decode(&b[..APPLY_MARK_LEN], &FastDigest).map_err(|e| anyhow::anyhow!("{e}"))?;
    let at = APPLY_MARK_LEN;
    let members = u64::from_le_bytes(b[at..at + 8].try_into()?);
    let mut sizes = [0u64; MAX_DEVICES as usize];
    for (i, c) in b[at + 8..KERNEL_STATE_LEN].chunks_exact(8).enumerate() {
        sizes[i] = u64::from_le_bytes(c.try_into()?);
    }
    Ok((mark, members, sizes))
}

impl Sec {
    /// Asks the apply loop to stop before its next batch.
    fn stop(&self) {
        lock(&self.state).stop = true;
        self.more.notify_one();
    }

    fn save(&self, saved: &SavedState) -> Result<()> {
        save_state(&*self.fs, &self.dir, saved)
    }

    /// Saves `saved`; while `log_dir` has no room for it, tries again each
    /// second (the status says why: `log_full`).  `Ok(false)`: not saved,
    /// a stop or a release came meanwhile (the older `state.json` and the
    /// kernel's mark make the same start: nothing was released from the
    /// remote log).
    async fn save_waiting(&self, saved: &SavedState) -> Result<bool> {
        let mut logged = false;
        loop {
            let e = match self.save(saved) {
                Ok(()) => {
                    if lock(&self.state).state_full.take().is_some() {
                        info!("state.json saved: log_dir has room again");
                    }
                    return Ok(true);
                }
                Err(e) if files::out_of_space(&e) => e,
                Err(e) => return Err(e),
            };
            if !logged {
                warn!("log_dir full: state.json not saved ({e:#}); applying waits for room");
                logged = true;
            }
            let notified = self.more.notified();
            {
                let mut st = lock(&self.state);
                st.state_full = Some(format!("state.json: {e:#}"));
                if st.stop || st.release {
                    return Ok(false);
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    fn command(&self, c: Command) -> Result<()> {
        let mut b = [0u8; 64];
        let n = c.encode(&mut b).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut dev = lock(&self.dev);
        let f = dev.as_mut().context("released")?;
        f.write_all(&b[..n]).with_context(|| format!("{c:?}"))
    }
}

pub(crate) async fn run(cfg: Config, key: Vec<u8>) -> Result<()> {
    let mut signals = crate::Signals::new()?;
    let path = cfg.device();
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let (mark, members, sizes) = kernel_state(&mut dev)?;
    let (applied, applying) = match mark.state {
        ApplyState::Idle => (mark.applied, 0),
        ApplyState::InProgress { epoch } => (mark.applied, epoch),
    };
    let dir = cfg.log_dir.clone().context("log_dir")?;
    files::create_dir(&dir)?;
    let fs: Arc<dyn FileSystem> = Arc::new(files::Os);
    let d = &FastDigest;
    let gid = record::group_id_of_name(d, cfg.group.as_bytes());
    let gkey = GroupKey::derive(d, gid, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state: SavedState = match std::fs::read(dir.join("state.json")) {
        // The positions alone: the form of version 0.3.0.
        Ok(b) => serde_json::from_slice(&b)
            .or_else(|e| {
                serde_json::from_slice(&b)
                    .map(|streams| SavedState {
                        streams,
                        points: None,
                    })
                    .map_err(|_| e)
            })
            .context("state.json")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedState::default(),
        Err(e) => return Err(e).context("state.json"),
    };
    let saved = &state.streams;
    let mut points = Points::restore(members, state.points.as_ref())?;
    let mut rendezvous = Rendezvous::new(
        vec![IntervalSlot::default(); INTERVALS],
        applied + 1,
        members,
    );
    let mut streams = Vec::new();
    let mut windows = Vec::new();
    let mut markers = BTreeMap::new();
    let mut logs = Vec::new();
    // The highest data record the remote log holds, for the G2 observer.
    let mut data_high = 0;
    for id in (0..64u32).filter(|i| members & (1 << i) != 0) {
        let mut sv = saved.get(&id).copied().unwrap_or(Saved {
            next: 1,
            ..Saved::default()
        });
        let mut f = remote_log::open(&*fs, &dir, id)?;
        // The log from the saved position: what is applied moves `next`,
        // the rest goes back into the window; a torn tail is cut, damage
        // below what was durable stops the stream (its records before the
        // damage are taken).
        let mut recs = Vec::new();
        let recovery = remote_log::recover(&mut *f, id, sv.log_start, sv.durable, |off, b| {
            let r = record::decode_record(b, &gkey, d)?;
            if let Some(cp) = r.consistency() {
                points.found(id, r.header.dev_seq, cp);
            }
            recs.push((
                r.header,
                Loc {
                    off,
                    len: r.len as u32,
                },
            ));
            Ok::<_, RecordError>(r.len)
        })?;
        for (h, _) in &recs {
            if class_of(h) == DeviceClass::Data {
                data_high = data_high.max(h.group_seq);
            }
        }
        for (h, loc) in &recs {
            if h.epoch <= applied && h.dev_seq >= sv.next {
                sv.next = h.dev_seq + 1;
                (sv.ts, sv.gs) = (h.timestamp_ns, h.group_seq);
                sv.log_start = sv.log_start.max(loc.off + u64::from(loc.len));
            }
        }
        let mut window = Window::new(
            vec![None; WINDOW],
            sv.next,
            Stamp {
                timestamp_ns: sv.ts,
                group_seq: sv.gs,
            },
        );
        let mut held = 0;
        for (h, loc) in &recs {
            if h.epoch > applied
                && h.dev_seq >= sv.next
                && window.insert(h.dev_seq, received(h, *loc)).is_ok()
            {
                held += 1;
                if h.kind == RecordKind::Checkpoint {
                    let _ = rendezvous.marker(id, h.epoch, stamp(h));
                    markers.insert((h.epoch, streams.len()), h.dev_seq);
                }
            }
        }
        info!(
            device = id,
            next = sv.next,
            held,
            "stream recovered from the remote log"
        );
        windows.push(window);
        streams.push(StreamState {
            id,
            saved: sv,
            connected: 0,
            conn_gen: 0,
            record_bytes: 0,
            wire_bytes: 0,
            applied_writes: 0,
        });
        logs.push(Mutex::new(StreamLog::new(f, id, gkey, &recovery)));
    }
    if streams.is_empty() {
        bail!("the secondary group has no device");
    }
    let refused = advance_points(&mut points, &streams, &windows);
    if refused > 0 {
        warn!(refused, "consistency points in the remote log refused");
    }
    if let Some(p) = points.held() {
        info!(cp_id = p.cp_id, label = %p.label, "last consistency point held");
    }
    if applying > 0 {
        info!(
            interval = applying,
            "an interval was being applied: redo from the remote log"
        );
    }
    let listen = cfg.listen.context("listen")?;
    let status = cfg.status;
    let s = Arc::new(Sec {
        cfg,
        key,
        gkey,
        fs,
        dir,
        dev: Mutex::new(Some(dev)),
        sizes,
        state: Mutex::new(State {
            windows,
            streams,
            rendezvous,
            markers,
            points,
            applied,
            applying,
            redo: applying,
            intervals: 0,
            release: false,
            released: false,
            stop: false,
            apply_error: None,
            state_full: None,
            g2: DurableOrder::new(data_high),
        }),
        logs,
        more: Notify::new(),
        rejected: Rejected::default(),
        listen: Arc::default(),
    });
    let ctl = crate::serve_control(&s.cfg, s.clone())?;
    let tls = tokio_rustls::TlsAcceptor::from(link::server_config()?);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    // The status endpoint last: once it answers, nothing of the start is
    // left to fail (a starter that waits for it takes ferryd for started).
    crate::serve_status(status, s.clone())?;
    info!(%listen, applied, "secondary ready");
    crate::notify_ready();
    let s2 = s.clone();
    let mut applier = tokio::spawn(async move { apply_loop(s2).await });
    let s3 = s.clone();
    let accept = listen::accept_loop(
        listener,
        listen::Limits::default(),
        s.listen.clone(),
        move |tcp: TcpStream, peer, pending| {
            let (s, tls) = (s3.clone(), tls.clone());
            async move {
                let _ = tcp.set_nodelay(true);
                if let Err(e) = serve(&s, tls, tcp, pending).await {
                    warn!(%peer, "connection: {e:#}");
                }
            }
        },
    );
    tokio::select! {
        r = &mut applier => {
            r.context("applier")??;
            // Released: the device is closed; ferryd exits once the answer
            // to `ferryctl promote` is out (the client has read it).
            crate::notify_stopping();
            if tokio::time::timeout(ctl::CLOSE_WAIT * 2, ctl.released()).await.is_err() {
                warn!("released, but the answer to the release was not confirmed");
            }
            info!("released: exiting");
            Ok(())
        }
        r = accept => match r {},
        sig = signals.recv() => {
            info!(signal = sig, "stopping: the intervals being applied are finished first");
            crate::notify_stopping();
            s.stop();
            // The listener ends with this function: no more connections.
            applier.await.context("applier")??;
            info!("stopped");
            Ok(())
        }
    }
}

/// Decrements a stream's connection count when a connection ends.
struct Connected<'a>(&'a Sec, usize);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        if let Some(s) = st.streams.get_mut(self.1) {
            s.connected = s.connected.saturating_sub(1);
        }
    }
}

/// Serves one connection: authenticates the primary (it holds `pending`
/// until then), then receives its stream.
async fn serve(
    s: &Arc<Sec>,
    tls: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    pending: listen::Pending,
) -> Result<()> {
    let group = &s.cfg.group;
    let listen::Authenticated {
        mut tls,
        device,
        ekm,
    } = match listen::authenticate(&tls, tcp, &s.key, group, listen::AUTH_TIMEOUT).await {
        Ok(a) => a,
        Err(r) => {
            s.listen.refuse(r.why);
            return Err(r.into());
        }
    };
    let (idx, next, applied, gen) = {
        let mut st = lock(&s.state);
        if st.release {
            bail!("released: not accepting");
        }
        let Some(i) = st.streams.iter().position(|x| x.id == device) else {
            s.listen.refuse(Refusal::Device);
            bail!("refused: device {device} is not in the secondary group");
        };
        st.streams[i].connected += 1;
        // The newest connection of a stream serves it (a primary that
        // reconnected after a cut while the old connection lingers).
        st.streams[i].conn_gen += 1;
        (
            i,
            st.windows[i].run_end() + 1,
            st.applied,
            st.streams[i].conn_gen,
        )
    };
    // Authenticated: its place among the pending connections is free.
    drop(pending);
    let _c = Connected(s, idx);
    if let Some(why) = lock(&s.logs[idx]).stopped() {
        error!(device, "refused: the stream's remote log is stopped: {why}");
        bail!("the remote log of device {device} is stopped: {why}");
    }
    link::write_frame(
        &mut tls,
        &Frame::Welcome {
            tag: link::tag(&s.key, Side::Secondary, group, device, &ekm),
            next,
            applied,
        },
    )
    .await?;
    info!(device, next, "stream connected");
    loop {
        // The primary sends at least an empty batch every second.
        let f = tokio::time::timeout(SILENCE, link::read_frame(&mut tls))
            .await
            .context("the primary went silent")??;
        if lock(&s.state).streams[idx].conn_gen != gen {
            info!(device, "connection replaced by a newer one of the stream");
            bail!("device {device}: replaced by a newer connection");
        }
        let Frame::Records {
            codec,
            raw_len,
            data,
        } = f
        else {
            bail!("unexpected frame");
        };
        let wire = data.len() as u64 + 10;
        let raw = u64::from(raw_len);
        let recs = match link::unpack(codec, raw_len, data) {
            Ok(r) => r,
            Err(e) => {
                s.rejected.count("batch");
                return Err(e.into());
            }
        };
        // Verify everything first (G5); a bad record closes the connection
        // and the primary sends again from what is acknowledged.
        let mut parsed = Vec::new();
        let mut off = 0;
        while off < recs.len() {
            let r = match record::decode_record(&recs[off..], &s.gkey, &FastDigest) {
                Ok(r) => r,
                Err(e) => {
                    s.rejected.count(reason(&e));
                    bail!("record rejected: {e}");
                }
            };
            if r.header.device_id != device {
                s.rejected.count("wrong_stream");
                bail!("record of device {} on stream {device}", r.header.device_id);
            }
            parsed.push((r.header, off, r.len, r.consistency()));
            off += r.len;
        }
        let fresh: Vec<_> = {
            let st = lock(&s.state);
            let w = &st.windows[idx];
            parsed
                .into_iter()
                .filter(|(h, _, _, _)| h.dev_seq >= w.next() && w.get(h.dev_seq).is_none())
                .collect()
        };
        // Durable in the remote log before anything is acknowledged; a
        // failed append is rolled back and ends the connection, nothing of
        // the batch acknowledged.
        let s2 = s.clone();
        let located = tokio::task::spawn_blocking(move || -> Result<Vec<_>> {
            let parts: Vec<&[u8]> = fresh
                .iter()
                .map(|&(_, o, len, _)| &recs[o..o + len])
                .collect();
            let at = lock(&s2.logs[idx]).append(&parts)?;
            Ok(fresh
                .into_iter()
                .zip(at)
                .map(|((h, _, len, cp), off)| {
                    (
                        h,
                        Loc {
                            off,
                            len: len as u32,
                        },
                        cp,
                    )
                })
                .collect())
        })
        .await??;
        let (run_end, applied, full) = {
            let mut st = lock(&s.state);
            let mut full = false;
            for (h, loc, cp) in &located {
                match st.windows[idx].insert(h.dev_seq, received(h, *loc)) {
                    Ok(_) => {
                        if st.g2.durable(class_of(h), h.kind, h.group_seq) {
                            warn!(
                                device,
                                dev_seq = h.dev_seq,
                                group_seq = h.group_seq,
                                "G2 broken: a log record became durable after a data record of a later group order"
                            );
                        }
                        if let Some(cp) = cp {
                            st.points.found(device, h.dev_seq, *cp);
                        }
                        if h.kind == RecordKind::Checkpoint {
                            if let Err(e) = st.rendezvous.marker(device, h.epoch, stamp(h)) {
                                warn!(device, epoch = h.epoch, "checkpoint marker: {e}");
                            }
                            st.markers.insert((h.epoch, idx), h.dev_seq);
                        }
                    }
                    Err(e) => {
                        full = true;
                        warn!(device, dev_seq = h.dev_seq, "not taken: {e:?}");
                        break;
                    }
                }
            }
            let st = &mut *st;
            for _ in 0..advance_points(&mut st.points, &st.streams, &st.windows) {
                s.rejected.count("consistency_point");
            }
            let sst = &mut st.streams[idx];
            sst.record_bytes += raw;
            sst.wire_bytes += wire;
            (st.windows[idx].run_end(), st.applied, full)
        };
        s.more.notify_one();
        link::write_frame(
            &mut tls,
            &Frame::Ack {
                dev_seq: run_end,
                applied,
            },
        )
        .await?;
        if full {
            bail!("stream window full: the primary will send again");
        }
    }
}

/// A batch was not applied: applying stops here, and `ferryd` stays up
/// so that its status says why and a release (`ferryctl promote`) still
/// finds it.  Not begun: the devices are at the last interval applied, and
/// the secondary may be promoted there.  Begun: the kernel's mark holds the
/// interval in progress (the devices are not consistent); a restart of
/// `ferryd` applies it again (redo).
async fn apply_stopped(s: &Arc<Sec>, epoch: u64, f: ApplyFailed) -> Result<()> {
    let why = if f.saving {
        format!(
            "state.json not saved after interval {epoch} was applied: {:#}; the devices hold \
             interval {epoch} (restart ferryd once log_dir is healthy)",
            f.error
        )
    } else if f.begun {
        format!(
            "interval {epoch} failed while applied: {:#}; the devices are mid-interval \
             (restart ferryd to apply it again)",
            f.error
        )
    } else {
        format!(
            "intervals up to {epoch} not applied: {:#}; the devices hold interval {}",
            f.error,
            lock(&s.state).applied
        )
    };
    error!("applying stopped: {why}");
    {
        let mut st = lock(&s.state);
        st.apply_error = Some(why);
        if !f.begun {
            st.applying = 0;
        }
    }
    loop {
        let notified = s.more.notified();
        {
            let mut st = lock(&s.state);
            if st.stop {
                return Ok(());
            }
            if st.release {
                lock(&s.dev).take();
                st.released = true;
                return Ok(());
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
    }
}

/// Applies whole intervals as they become ready.  Returns when released,
/// or when asked to stop: between batches, never in the middle of one
/// (a batch is applied, and its positions saved, whole).
async fn apply_loop(s: Arc<Sec>) -> Result<()> {
    // Its sign of life, for the watchdog: each turn (at least every
    // 500 ms), once a batch is checked, and each record applied.
    let beat = HEARTBEAT.beat("the apply loop");
    loop {
        beat.progress();
        let notified = s.more.notified();
        let job = {
            let mut st = lock(&s.state);
            if st.stop {
                return Ok(());
            }
            // Every ready interval, oldest first, up to the batch's bounds;
            // a redo covers exactly what the kernel's mark has in progress.
            let mut items = Vec::new();
            let mut bytes = 0u64;
            let mut batch = 0usize;
            let mut last = None;
            loop {
                if let Some(e) = last {
                    let full = batch >= BATCH_INTERVALS
                        || items.len() >= BATCH_RECORDS
                        || bytes >= BATCH_BYTES;
                    if (st.redo > 0 && e >= st.redo) || (st.redo == 0 && full) {
                        break;
                    }
                }
                let oldest = st.rendezvous.oldest();
                let limit = interval_limit(&st.windows, |i| {
                    st.markers
                        .get(&(oldest, i))
                        .is_some_and(|&ds| st.windows[i].run_end() >= ds)
                });
                let Some((epoch, cut)) = limit.and_then(|l| st.rendezvous.ready(l)) else {
                    break;
                };
                while let Some(i) = next_in_group_order(&st.windows, cut) {
                    let Some((ds, r)) = st.windows[i].pop_front() else {
                        break;
                    };
                    let sv = &mut st.streams[i].saved;
                    sv.next = ds + 1;
                    (sv.ts, sv.gs) = (r.stamp.timestamp_ns, r.stamp.group_seq);
                    sv.log_start = sv.log_start.max(r.item.off + u64::from(r.item.len));
                    bytes += u64::from(r.item.len);
                    items.push((i, r.item, r.kind == RecordKind::Write));
                }
                // Taken: the next ready interval is the next one.  (A
                // failed apply ends ferryd, whose restart rebuilds all of
                // this from the remote log and the kernel's mark.)
                st.rendezvous
                    .retire(epoch)
                    .map_err(|e| anyhow::anyhow!("retire {epoch}: {e}"))?;
                st.markers.retain(|&(e, _), _| e > epoch);
                batch += 1;
                last = Some(epoch);
            }
            match last {
                Some(epoch) if st.redo > 0 && epoch != st.redo => {
                    bail!(
                        "interval {} was in progress, but the remote log holds the intervals up to it only to {epoch}",
                        st.redo
                    );
                }
                Some(epoch) => {
                    st.applying = epoch;
                    Some((epoch, items, batch))
                }
                None => {
                    // (With a redo due, the kernel holds host reads until
                    // the intervals up to it are whole here.)
                    if st.release {
                        // Closed before `released` says so: the answer to
                        // the release must find the device free for
                        // promote.
                        lock(&s.dev).take();
                        st.released = true;
                        return Ok(());
                    }
                    None
                }
            }
        };
        let Some((epoch, items, batch)) = job else {
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
            continue;
        };
        let (s2, b2) = (s.clone(), beat.clone());
        let n = items.len();
        let applied = tokio::task::spawn_blocking(move || {
            apply_checked(&s2, epoch, &items, &b2).map(|()| items)
        })
        .await?;
        let items = match applied {
            Ok(items) => items,
            Err(f) => return apply_stopped(&s, epoch, f).await,
        };
        let mut saved = {
            let mut st = lock(&s.state);
            st.applied = epoch;
            st.applying = 0;
            st.redo = 0;
            st.intervals += batch as u64;
            for &(i, _, write) in &items {
                st.streams[i].applied_writes += u64::from(write);
            }
            SavedState {
                streams: st.streams.iter().map(|x| (x.id, x.saved)).collect(),
                points: Some(st.points.saved()),
            }
        };
        for (i, sv) in saved.streams.values_mut().enumerate() {
            sv.durable = lock(&s.logs[i]).durable();
        }
        tracing::debug!(epoch, intervals = batch, records = n, "intervals applied");
        match s.save_waiting(&saved).await {
            Ok(true) => {}
            // Stopping or released: nothing is released from the log.
            Ok(false) => continue,
            Err(error) => {
                let f = ApplyFailed {
                    begun: false,
                    saving: true,
                    error,
                };
                return apply_stopped(&s, epoch, f).await;
            }
        }
        // What is applied and saved leaves the remote log.
        for (i, sv) in saved.streams.values().enumerate() {
            let upto = sv.log_start & !4095;
            if upto > 0 {
                lock(&s.logs[i]).punch(upto);
            }
        }
    }
}

/// Hands the consistency points the streams' runs reached to the tracker;
/// returns how many it refused.
fn advance_points(points: &mut Points, streams: &[StreamState], windows: &[Window]) -> u64 {
    points.advance(|d| {
        streams
            .iter()
            .position(|x| x.id == d)
            .map_or(0, |i| windows[i].run_end())
    })
}

/// Why a batch of intervals was not applied.
#[derive(Debug)]
struct ApplyFailed {
    /// Whether `APPLY_BEGIN` went: the devices may hold part of the batch
    /// (the kernel's mark says so, and holds host reads and promote).
    begun: bool,
    /// The batch was applied whole, and saving the positions failed.
    saving: bool,
    error: anyhow::Error,
}

/// Checks every record of the intervals up to `epoch` as the kernel will
/// (`ferry_core::record::decode_record`, at most `MAX_RECORD_LEN` bytes,
/// an interval of the batch, a member device, a range inside it on this
/// site: `ferry_core::checkpoint::place`), so that a batch the kernel
/// would refuse half-way is never begun, and the devices stay at the last
/// interval applied.
fn check_intervals(s: &Sec, epoch: u64, items: &[(usize, Loc, bool)]) -> Result<()> {
    let after = lock(&s.state).applied;
    let mut buf = Vec::new();
    for &(i, loc, _) in items {
        if loc.len as usize > record::MAX_RECORD_LEN {
            bail!(
                "a record of {} bytes at {} of stream {}: above the {} a secondary applies",
                loc.len,
                loc.off,
                i,
                record::MAX_RECORD_LEN
            );
        }
        buf.resize(loc.len as usize, 0);
        lock(&s.logs[i])
            .read_exact_at(&mut buf, loc.off)
            .context("read the remote log")?;
        let r = record::decode_record(&buf, &s.gkey, &FastDigest)
            .map_err(|e| anyhow::anyhow!("a record at {} of stream {i}: {e}", loc.off))?;
        let h = r.header;
        let what = || format!("record {} of device {}", h.dev_seq, h.device_id);
        if r.len != buf.len() {
            bail!(
                "{}: {} bytes in the remote log, {} in the record",
                what(),
                buf.len(),
                r.len
            );
        }
        if h.epoch <= after || h.epoch > epoch {
            bail!(
                "{}: interval {}, not in {}..={epoch}",
                what(),
                h.epoch,
                after + 1
            );
        }
        let len = s.sizes.get(h.device_id as usize).copied().unwrap_or(0);
        if len == 0 {
            bail!("{}: no such device in this secondary's group", what());
        }
        checkpoint::place(h.kind, h.sector, h.nr_sectors, len, 0).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (sectors {}+{}, the device here has {len}: is it smaller than the primary's?)",
                what(),
                h.sector,
                h.nr_sectors
            )
        })?;
    }
    Ok(())
}

/// Applies the intervals up to `epoch` once every record of them is
/// checked (`check_intervals`).
fn apply_checked(
    s: &Sec,
    epoch: u64,
    items: &[(usize, Loc, bool)],
    beat: &Beat,
) -> Result<(), ApplyFailed> {
    check_intervals(s, epoch, items).map_err(|error| ApplyFailed {
        begun: false,
        saving: false,
        error,
    })?;
    beat.progress();
    apply_intervals(s, epoch, items, beat).map_err(|error| ApplyFailed {
        begun: true,
        saving: false,
        error,
    })
}

/// Writes the intervals up to `epoch` through the kernel, as one: the mark,
/// the records in group order, the end.
fn apply_intervals(s: &Sec, epoch: u64, items: &[(usize, Loc, bool)], beat: &Beat) -> Result<()> {
    s.command(Command::ApplyBegin { epoch })?;
    let mut buf = Vec::new();
    for &(i, loc, _) in items {
        beat.progress();
        buf.resize(loc.len as usize, 0);
        lock(&s.logs[i])
            .read_exact_at(&mut buf, loc.off)
            .context("read the remote log")?;
        let mut dev = lock(&s.dev);
        dev.as_mut()
            .context("released")?
            .write_all(&buf)
            .context("apply a record")?;
    }
    s.command(Command::ApplyEnd { epoch })
}

impl Report for Sec {
    fn status(&self) -> Status {
        let (stopped, full): (Vec<_>, Vec<_>) = self
            .logs
            .iter()
            .map(|l| {
                let l = lock(l);
                (l.stopped().map(str::to_owned), l.full().map(str::to_owned))
            })
            .unzip();
        let st = lock(&self.state);
        // The first of the streams' appends that found no room, or the
        // save of state.json.
        let log_full = (st.streams.iter().zip(full))
            .find_map(|(x, f)| f.map(|f| format!("device {}: {f}", x.id)))
            .or_else(|| st.state_full.clone());
        let streams = st
            .streams
            .iter()
            .zip(&st.windows)
            .zip(stopped)
            .map(|((x, w), log_stopped)| {
                let received = w.run_end();
                let done = w.next() - 1;
                // What is held durably and not applied yet: its bytes, and
                // how far (in the primary's time) the newest of it is ahead
                // of the last record applied.
                let lag_bytes = (w.next()..=received)
                    .filter_map(|ds| w.get(ds))
                    .map(|r| u64::from(r.item.len))
                    .sum();
                let lag_seconds = if received > done {
                    w.run_end_stamp().timestamp_ns.saturating_sub(x.saved.ts) as f64 / 1e9
                } else {
                    0.0
                };
                Stream {
                    device: x.id,
                    connected: x.connected > 0,
                    received,
                    done,
                    lag_records: received - done,
                    lag_bytes,
                    lag_seconds,
                    record_bytes: x.record_bytes,
                    wire_bytes: x.wire_bytes,
                    applied_writes: x.applied_writes,
                    log_stopped,
                }
            })
            .collect();
        Status {
            group: self.cfg.group.clone(),
            role: Role::Secondary,
            state: if st.released {
                "released"
            } else if st.applying > 0 {
                "applying"
            } else {
                "idle"
            }
            .into(),
            streams,
            applied_epoch: st.applied,
            applying_epoch: st.applying,
            spool_records: 0,
            auth_refused: self.listen.refused().iter().map(|(_, n)| n).sum(),
            auth_refused_by: self.listen.refused(),
            accept_errors: self.listen.accept_errors(),
            rejected: self.rejected.snapshot(),
            intervals_applied: st.intervals,
            consistency_point: st.points.held(),
            disk_spool_records: 0,
            disk_spool_bytes: 0,
            g2_violations: st.g2.violations(),
            apply_error: st.apply_error.clone(),
            log_full,
            spool_full: None,
            spool_error: None,
        }
    }
}

impl Control for Sec {
    /// Waits (up to 60 s) for the apply loop to apply every complete
    /// interval and close the device; `ferryd` exits once the answer is
    /// out (`run`), not here.
    async fn release(&self) -> Result<u64, String> {
        {
            let mut st = lock(&self.state);
            if st.stop {
                return Err("ferryd is stopping".into());
            }
            st.release = true;
        }
        self.more.notify_one();
        for _ in 0..600 {
            {
                let st = lock(&self.state);
                if st.released {
                    return Ok(st.applied);
                }
                if st.stop {
                    return Err("ferryd is stopping".into());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the interval in progress did not finish within 60 s".into())
    }
}

#[cfg(test)]
#[path = "secondary_tests.rs"]
pub(crate) mod tests;
