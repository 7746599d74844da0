//! What `ferryd` does for systemd, which runs it as `Type=notify`
//! (`systemd/ferryd@.service`):
//!
//! * **The watchdog.**  With `WatchdogSec=` set, systemd gives the
//!   interval in `WATCHDOG_USEC` and expects `WATCHDOG=1` within each.
//!   [`watchdog`] pings at half the interval, and only while every main
//!   loop registered in [`HEARTBEAT`] shows life: each [`Beat`] says when
//!   its loop last made progress (a record read and queued, a frame sent,
//!   a record applied), or that it waits for something from outside (the
//!   kernel's next record, the network), which is no hang.  A loop busy
//!   for longer than the interval without progress (a deadlock, a disk
//!   that does not answer) stops the pings, and systemd restarts `ferryd`.
//! * **`STATUS=`.**  [`status_lines`] sends a one-line summary of the
//!   status document (`Status::summary`: state, lag) whenever it changes,
//!   which `systemctl status` shows.
//! * **The key as a credential.**  A `key_file` of `credential:<name>`
//!   (the default when the configuration gives none) is the file
//!   `$CREDENTIALS_DIRECTORY/<name>`, which systemd fills from the unit's
//!   `LoadCredential=<name>:<path>` ([`key_path`]).
//!
//! Nothing here sends anything when `ferryd` is not run by systemd.

use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tracing::{info, warn};

/// The prefix of a `key_file` that names a credential.
pub const CREDENTIAL: &str = "credential:";

/// The `key_file` of a configuration that names none: the credential
/// `key` (the unit's `LoadCredential=key:/etc/ferry/%i.key`).
pub const DEFAULT_KEY_FILE: &str = "credential:key";

/// The file a `key_file` names: itself, or for `credential:<name>` the
/// credential `<name>` of the service.
pub fn key_path(key_file: &Path) -> Result<PathBuf> {
    key_path_in(
        key_file,
        std::env::var_os("CREDENTIALS_DIRECTORY").as_deref(),
    )
}

/// [`key_path`] with the service's credentials directory given.
pub fn key_path_in(key_file: &Path, credentials: Option<&OsStr>) -> Result<PathBuf> {
    let Some(name) = key_file.to_str().and_then(|s| s.strip_prefix(CREDENTIAL)) else {
        return Ok(key_file.to_path_buf());
    };
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        bail!("key_file {}: not a credential's name", key_file.display());
    }
    match credentials {
        Some(dir) if !dir.is_empty() => Ok(Path::new(dir).join(name)),
        _ => bail!(
            "key_file {}: no credentials from systemd (CREDENTIALS_DIRECTORY is not set); \
             run ferryd under its unit (LoadCredential={name}:<path>) or give key_file a path",
            key_file.display()
        ),
    }
}

/// Set on a beat's value while its loop waits for something from outside.
const WAITING: u64 = 1 << 63;

/// Milliseconds since the first call, plus 1 (never 0).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX >> 2) + 1
}

/// A main loop's sign of life (see the module).
#[derive(Debug)]
pub struct Beat {
    name: String,
    /// When the loop last made progress (`now_ms`), `WAITING` set while
    /// it waits for something from outside.
    at: AtomicU64,
}

impl Beat {
    /// A beat that no [`Heartbeat`] checks (for tests of a loop alone).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            at: AtomicU64::new(now_ms()),
        }
    }

    /// The loop made progress now.
    pub fn progress(&self) {
        self.at.store(now_ms(), Ordering::Relaxed);
    }

    /// The loop waits, from now until its next [`Beat::progress`], for
    /// something from outside: no hang however long it lasts.
    pub fn waiting(&self) {
        self.at.store(now_ms() | WAITING, Ordering::Relaxed);
    }

    /// Awaits `f` as [`Beat::waiting`]; progress once it is done.
    pub async fn wait<F: Future>(&self, f: F) -> F::Output {
        self.waiting();
        let r = f.await;
        self.progress();
        r
    }

    /// How long the loop has been busy without progress at `now` (a
    /// `now_ms`); `None` while it waits.
    fn busy_for(&self, now: u64) -> Option<Duration> {
        let at = self.at.load(Ordering::Relaxed);
        (at & WAITING == 0).then(|| Duration::from_millis(now.saturating_sub(at)))
    }
}

/// The main loops' beats: a loop registers one when it starts
/// ([`Heartbeat::beat`]); dropped with the loop, it is no longer checked.
pub struct Heartbeat {
    beats: Mutex<Vec<Weak<Beat>>>,
}

/// The process's heartbeat, which [`watchdog`] checks.
pub static HEARTBEAT: Heartbeat = Heartbeat::new();

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    pub const fn new() -> Self {
        Self {
            beats: Mutex::new(Vec::new()),
        }
    }

    /// A new loop's beat, checked until it is dropped; progress now.
    pub fn beat(&self, name: impl Into<String>) -> Arc<Beat> {
        let b = Arc::new(Beat::new(name));
        let mut v = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(&b));
        b
    }

    /// The first loop busy for more than `limit` without progress: its
    /// name and how long; `None` when every loop shows life.
    pub fn stalled(&self, limit: Duration) -> Option<(String, Duration)> {
        let now = now_ms();
        let mut v = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.iter().filter_map(Weak::upgrade).find_map(|b| {
            b.busy_for(now)
                .filter(|d| *d > limit)
                .map(|d| (b.name.clone(), d))
        })
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this
/// process); `None` without one.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// Calls `ping` every `every` while no loop of `hb` is busy for more than
/// `limit` without progress; says in the log when it stops pinging (the
/// loop, how long) and when it pings again.  Runs until dropped.
pub async fn watchdog(hb: &Heartbeat, every: Duration, limit: Duration, mut ping: impl FnMut()) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held = false;
    loop {
        tick.tick().await;
        match hb.stalled(limit) {
            None => {
                if std::mem::take(&mut held) {
                    info!("watchdog: every loop shows life again, pinging");
                }
                ping();
            }
            Some((name, d)) => {
                if !std::mem::replace(&mut held, true) {
                    warn!(
                        "watchdog: {name} made no progress for {:.1} s: no more pings (systemd restarts ferryd unless it moves)",
                        d.as_secs_f64()
                    );
                }
            }
        }
    }
}

/// Tells systemd `state`; nothing when not run by systemd.
pub fn notify(state: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(false, state);
}

/// Whether `ferryd` runs under systemd's notification protocol.
pub fn notifying() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// How often [`status_lines`] looks at the status.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Every `every`, takes `line()` (in a blocking thread: a primary's
/// status runs `dmsetup`) and calls `send` with it when it differs from
/// the last one sent.  Runs until dropped.
pub async fn status_lines(
    every: Duration,
    line: Arc<dyn Fn() -> String + Send + Sync>,
    mut send: impl FnMut(&str),
) {
    let mut last = String::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let l = line.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || l()).await else {
            continue;
        };
        if now != last {
            send(&now);
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn key_paths() {
        let creds = Some(OsStr::new("/run/credentials/ferryd@db.service"));
        assert_eq!(
            key_path_in(Path::new("/etc/ferry/db.key"), creds).unwrap(),
            Path::new("/etc/ferry/db.key")
        );
        assert_eq!(
            key_path_in(Path::new("/etc/ferry/db.key"), None).unwrap(),
            Path::new("/etc/ferry/db.key")
        );
        assert_eq!(
            key_path_in(Path::new(DEFAULT_KEY_FILE), creds).unwrap(),
            Path::new("/run/credentials/ferryd@db.service/key")
        );
        assert_eq!(
            key_path_in(Path::new("credential:db.key"), creds).unwrap(),
            Path::new("/run/credentials/ferryd@db.service/db.key")
        );
        let e = format!(
            "{:#}",
            key_path_in(Path::new(DEFAULT_KEY_FILE), None).unwrap_err()
        );
        assert!(e.contains("CREDENTIALS_DIRECTORY is not set"), "{e}");
        assert!(e.contains("LoadCredential=key:<path>"), "{e}");
        for bad in [
            "credential:",
            "credential:..",
            "credential:a/b",
            "credential:/k",
        ] {
            assert!(key_path_in(Path::new(bad), creds).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_busy_loop_without_progress_stalls() {
        let hb = Heartbeat::new();
        let limit = Duration::from_millis(50);
        let a = hb.beat("apply");
        let b = hb.beat("reader");
        assert_eq!(hb.stalled(limit), None);
        std::thread::sleep(Duration::from_millis(80));
        // Busy and silent: stalled, the first of them named.
        assert_eq!(hb.stalled(limit).map(|(n, _)| n), Some("apply".into()));
        a.progress();
        assert_eq!(hb.stalled(limit).map(|(n, _)| n), Some("reader".into()));
        // Waiting for the kernel is no hang, however long.
        b.waiting();
        assert_eq!(hb.stalled(limit), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(hb.stalled(limit).map(|(n, _)| n), Some("apply".into()));
        // A loop that ended is not checked.
        drop(a);
        assert_eq!(hb.stalled(limit), None);
        b.progress();
        assert_eq!(hb.stalled(limit), None);
    }

    /// The pinger pings while the loops move, stops while one is stuck,
    /// and pings again once it moves.
    #[tokio::test]
    async fn pings_only_while_the_loops_move() {
        static HB: Heartbeat = Heartbeat::new();
        static PINGS: AtomicU32 = AtomicU32::new(0);
        let every = Duration::from_millis(20);
        let beat = HB.beat("apply");
        let pinger = tokio::spawn(watchdog(&HB, every, every * 5, || {
            PINGS.fetch_add(1, Ordering::Relaxed);
        }));
        // Moving: pings.
        for _ in 0..10 {
            beat.progress();
            tokio::time::sleep(every).await;
        }
        let moving = PINGS.load(Ordering::Relaxed);
        assert!(moving >= 3, "{moving} pings");
        // Stuck (busy, no progress): the pings stop within the limit.
        tokio::time::sleep(every * 8).await;
        let stuck = PINGS.load(Ordering::Relaxed);
        tokio::time::sleep(every * 10).await;
        assert_eq!(PINGS.load(Ordering::Relaxed), stuck);
        // Waiting for input (however long), or moving again: pings.
        beat.wait(tokio::time::sleep(every * 10)).await;
        assert!(PINGS.load(Ordering::Relaxed) >= stuck + 3);
        pinger.abort();
    }

    /// Sent when it changed, only then.
    #[tokio::test]
    async fn a_status_line_is_sent_when_it_changes() {
        const LINES: [&str; 7] = ["a", "a", "b", "b", "b", "a", "c"];
        let calls = Arc::new(AtomicU32::new(0));
        let c2 = calls.clone();
        let line: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
            let n = c2.fetch_add(1, Ordering::SeqCst) as usize;
            LINES[n.min(LINES.len() - 1)].to_string()
        });
        let sent = Arc::new(Mutex::new(Vec::<String>::new()));
        let sent2 = sent.clone();
        let t = tokio::spawn(status_lines(Duration::from_millis(1), line, move |l| {
            sent2.lock().unwrap().push(l.to_string())
        }));
        while calls.load(Ordering::SeqCst) < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        t.abort();
        assert_eq!(*sent.lock().unwrap(), ["a", "b", "a", "c"]);
    }
}
