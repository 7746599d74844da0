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
//!   with the ready intervals after it, up to a batch's bounds.  A resync
//!   span (the intervals after one whose markers carry `RESYNC_BEGIN`, up
//!   to the one whose markers carry `RESYNC_END`) is applied as one batch:
//!   its intervals are staged until its end (`span`).  The positions
//!   reached are then saved (`state.json`) and the applied part of the
//!   remote log is released (hole punched).  A save that finds no room
//!   waits for it (nothing is released meanwhile); one that fails
//!   otherwise stops applying.  (`apply`.)
//! * **Restart.**  The kernel's mark says which interval was applied last
//!   and whether one was in progress; the remote log from the saved
//!   positions rebuilds the windows, the rendezvous and the resync span
//!   (`restore`), and an interval in progress is applied again (redo).
//! * **Release** (`ferryctl promote`): every complete interval outside an
//!   open resync span is applied, then the device is let go.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_core::checkpoint::{ApplyMark, ApplyState, IntervalSlot, Rendezvous, APPLY_MARK_LEN};
use ferry_core::command::Command;
use ferry_core::gate::{DeviceClass, DurableOrder};
use ferry_core::record::{self, GroupKey, RecordError, RecordKind};
use ferry_core::select::{Received, Stamp, StreamWindow};
use ferry_core::table::MAX_DEVICES;
use ferry_core::FastDigest;
use ferryd::config::{Config, Role};
use ferryd::cpoints::{self, Points};
use ferryd::ctl::{self, Control, Released, SpanDropped};
use ferryd::link;
use ferryd::status::{Status, Stream};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::files::{self, FileSystem};
use crate::listen::{self, Counters};
use crate::remote_log::{self, StreamLog};
use crate::span::Spans;
use crate::{Rejected, Report};

#[path = "apply.rs"]
mod apply;
#[path = "receive.rs"]
mod receive;

use apply::apply_loop;
use receive::serve;

/// Records a stream may hold between the last applied and the newest.
const WINDOW: usize = 1 << 18;
/// A stream connection that carries nothing for this long is dropped.
const SILENCE: Duration = Duration::from_secs(5);
/// Checkpoint intervals open at once.
const INTERVALS: usize = 4096;
/// Ready intervals applied under one mark: at most this many, and no more
/// once this many records or bytes are in (host reads wait for the whole
/// batch).  A resync span is applied under one mark whatever its size.
const BATCH_INTERVALS: u64 = 32;
const BATCH_RECORDS: usize = 4096;
const BATCH_BYTES: u64 = 64 << 20;

/// Where a record is in its stream's file, and its flags.
#[derive(Clone, Copy, Debug)]
struct Loc {
    off: u64,
    len: u32,
    flags: u8,
}

/// A record taken from its window to be applied: the stream's index, where
/// it is, whether it is a write.
type Item = (usize, Loc, bool);

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
    /// No consistent point: the initial full copy's span is not applied
    /// whole (`span`).  Written only while set: an older `ferryd`, which
    /// would take the devices for consistent, refuses such a `state.json`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    inconsistent: bool,
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
    /// The position past every record taken from the window: applied,
    /// being applied, or staged in a resync span (`saved` is the applied
    /// one).
    taken: Saved,
    /// Bytes of the records taken from the window and not applied yet.
    unapplied_bytes: u64,
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
    /// The release is forced (`ferryctl promote --force`): let go even
    /// with no consistent point.
    release_force: bool,
    /// Why the release asked for was refused (no consistent point), for
    /// its answer.
    release_refused: Option<String>,
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
    /// The resync spans, and the records staged in the open one.
    spans: Spans<Item>,
    /// Released with a resync span open: what it had staged, not applied.
    dropped: Option<SpanDropped>,
}

impl State {
    /// What `state.json` is to hold now: the applied positions (each held
    /// at its stream's marker of the interval that opened a resync span
    /// still open, so that a restart reads that marker again: `span`), and
    /// the consistency points.
    fn saved_state(&self) -> SavedState {
        let hold = self.spans.hold().map(|(_, m)| m);
        SavedState {
            streams: (self.streams.iter().enumerate())
                .map(|(i, x)| {
                    let mut sv = x.saved;
                    if let Some(&Some(off)) = hold.and_then(|m| m.get(i)) {
                        sv.log_start = sv.log_start.min(off);
                    }
                    (x.id, sv)
                })
                .collect(),
            points: Some(self.points.saved()),
            inconsistent: self.spans.inconsistent(),
        }
    }
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
    /// The resyncs refused for lack of room in `log_dir`.
    room: Mutex<room::Refusals>,
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

/// Rebuilds the secondary's state at start, from `state.json` and the
/// remote log in `dir` (reached through `fs`), the kernel's mark
/// (`applied`, and `applying` when an interval was in progress) and its
/// members: the windows, the rendezvous, the consistency points and the
/// resync span; and opens the members' stream files.
fn restore(
    fs: &dyn FileSystem,
    dir: &Path,
    gkey: GroupKey,
    members: u64,
    applied: u64,
    applying: u64,
) -> Result<(State, Vec<Mutex<StreamLog>>)> {
    let d = &FastDigest;
    let state: SavedState = match std::fs::read(dir.join("state.json")) {
        // The positions alone: the form of version 0.3.0.
        Ok(b) => serde_json::from_slice(&b)
            .or_else(|e| {
                serde_json::from_slice(&b)
                    .map(|streams| SavedState {
                        streams,
                        points: None,
                        inconsistent: false,
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
    // The checkpoint markers of the intervals applied (`span`).
    let mut applied_markers = Vec::new();
    for id in (0..64u32).filter(|i| members & (1 << i) != 0) {
        let mut sv = saved.get(&id).copied().unwrap_or(Saved {
            next: 1,
            ..Saved::default()
        });
        let mut f = remote_log::open(fs, dir, id)?;
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
                    flags: r.header.flags.0,
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
            if h.epoch <= applied && h.kind == RecordKind::Checkpoint {
                applied_markers.push((h.epoch, streams.len(), h.flags.0, loc.off));
            }
            if h.epoch <= applied && h.dev_seq >= sv.next {
                sv.next = h.dev_seq + 1;
                (sv.ts, sv.gs) = (h.timestamp_ns, h.group_seq);
                sv.log_start = sv.log_start.max(loc.off + u64::from(loc.len));
            }
        }
        // The window holds every record of the log past what was applied
        // (a resync span, staged whole until its end, may be longer than a
        // window: a record left out would never come back, as the primary
        // does not resend what was acknowledged), and a window's room more.
        let pending = recs
            .iter()
            .filter(|(h, _)| h.epoch > applied && h.dev_seq >= sv.next)
            .count();
        let mut window = Window::new(
            vec![None; WINDOW + pending],
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
            taken: sv,
            unapplied_bytes: 0,
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
    let spans = Spans::recover(streams.len(), applied, applied_markers, state.inconsistent);
    if let Some((after, _)) = spans.hold() {
        info!(
            after,
            "a resync span is open: its intervals are applied as one once its end arrives"
        );
    }
    if spans.inconsistent() {
        warn!(
            applied,
            "no consistent point: the initial full copy is in progress (its span is not applied)"
        );
    }
    let state = State {
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
        release_force: false,
        release_refused: None,
        released: false,
        stop: false,
        apply_error: None,
        state_full: None,
        g2: DurableOrder::new(data_high),
        spans,
        dropped: None,
    };
    Ok((state, logs))
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
    let (state, logs) = restore(&*fs, &dir, gkey, members, applied, applying)?;
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
        state: Mutex::new(state),
        logs,
        more: Notify::new(),
        rejected: Rejected::default(),
        listen: Arc::default(),
        room: Mutex::default(),
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

#[path = "secondary_report.rs"]
mod report;

#[path = "secondary_room.rs"]
mod room;

#[cfg(test)]
#[path = "secondary_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "secondary_span_tests.rs"]
mod span_tests;

#[cfg(test)]
#[path = "secondary_incons_tests.rs"]
mod incons_tests;
