//! The control socket: the commands that change `ferryd`'s state
//! (`release`, `resync`), on a Unix socket only root (or `ferryd`'s own user) may use.
//!
//! * **Where.**  `/run/ferry/<group>.sock` unless the configuration says
//!   `control_socket`.  A missing directory is created mode 0700; the
//!   socket is mode 0600.  A socket left by a `ferryd` that died is removed
//!   at start (one that still answers is not: another `ferryd` serves it).
//! * **Who.**  Each connection's peer is checked with `SO_PEERCRED`: uid 0
//!   or `ferryd`'s own uid ([`peer_allowed`]).  Any other is answered
//!   [`Reply::Refused`] and closed, whatever the socket's mode.
//! * **Format.**  One request, one reply, each a line of JSON:
//!   `{"cmd":"release"}` is answered `{"result":"released",
//!   "applied_epoch":N}` (with `"span_dropped":{...}` when a resync span
//!   was open: [`SpanDropped`]) or `{"result":"refused","error":"..."}`
//!   (a secondary with no consistent point, the initial full copy not
//!   applied, refuses it); `{"cmd":"release_force"}` (`ferryctl promote
//!   --force`) releases that one too, and says so (`"inconsistent":true`).
//!   (A command of its own: a `ferryd` that has no such refusal refuses it
//!   as a bad request, and `ferryctl` then asks it for a plain release.)
//!  
//!   `{"cmd":"resync"}` is answered `{"result":"started","was":"ahead",
//!   "dirty_chunks":N}` ([`Started`]) or refused; `{"cmd":"resync_full"}`
//!   (`ferryctl resync --full`) the same, with `"full":true` in the
//!   answer.  (A command of its own, not a field of `resync`: a `ferryd`
//!   that has no full resync refuses it as a bad request, where it would
//!   take a field it does not know for a plain `resync`.)
//! * **Release.**  The answer goes out once the secondary has applied every
//!   complete interval (but those of an open resync span, which are not
//!   applied) and closed its character device; `ferryd` then waits
//!   (up to [`CLOSE_WAIT`]) for the client to close the connection before
//!   it exits, so the client always reads the answer.
//! * **Resync.**  A primary's `ferryd` writes `START` to the character
//!   device (`FULL_RESYNC` in its flags for `resync_full`) and answers how
//!   the kernel took it: the mode it was in, or the refusal in words (the
//!   errno's meaning).

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tracing::{info, warn};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request line.
const REQUEST_MAX: u64 = 1024;
/// After answering a release, how long `ferryd` waits for the client to
/// close the connection (it has read the answer) before it exits anyway.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long `ferryctl` waits for the answer to a release (the secondary
/// gives the interval in progress 60 s).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(90);

/// The default control socket of a group.
pub fn default_path(group: &str) -> PathBuf {
    PathBuf::from(format!("/run/ferry/{group}.sock"))
}

/// A request, one line of JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Secondary: apply every complete interval held, close the character
    /// device, and exit once the answer is read; refused while the
    /// secondary has no consistent point.
    Release,
    /// Secondary: the same, with no consistent point too (`ferryctl
    /// promote --force`).
    #[serde(rename = "release_force")]
    ReleaseForce,
    /// Primary: write `START` (leave `ahead` by a resync).
    Resync,
    /// Primary: write `START` with `FULL_RESYNC` (copy every chunk of
    /// every member).
    #[serde(rename = "resync_full")]
    ResyncFull,
}

impl Request {
    /// The release request: forced or not.
    pub fn release(force: bool) -> Self {
        if force {
            Request::ReleaseForce
        } else {
            Request::Release
        }
    }

    /// The resync request: full (`START` with `FULL_RESYNC`) or not.
    pub fn resync(full: bool) -> Self {
        if full {
            Request::ResyncFull
        } else {
            Request::Resync
        }
    }
}

/// How a primary's kernel took the `START` of `ferryctl resync`: the mode
/// the group was in when it was written (`ahead`: a resync began;
/// `replicating`, `resyncing`: nothing changed; `unknown`: the kernel's
/// status could not be read) and its dirty chunks then; `full`: the
/// `START` had `FULL_RESYNC` (every chunk of every member is copied,
/// whatever the mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub was: String,
    pub dirty_chunks: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
}

/// What a secondary let go of: the device's image is interval
/// `applied_epoch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The last interval applied.
    pub applied_epoch: u64,
    /// A resync span was open: what it had staged, not applied (the image
    /// is the primary's before the resync began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_dropped: Option<SpanDropped>,
    /// Released (forced) with no consistent point: the initial full copy
    /// was not applied, the chunks it had not copied hold the devices' own
    /// earlier content.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inconsistent: bool,
}

/// What a secondary released with a resync span open had staged of it,
/// and did not apply: whole intervals, their records and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanDropped {
    pub intervals: u64,
    pub records: u64,
    pub bytes: u64,
}

/// The answer, one line of JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Reply {
    /// The device is let go.
    Released(Released),
    /// `START` was written and taken.
    Started(Started),
    /// Not done, and why.
    Refused { error: String },
}

/// Whether a peer of uid `peer` may use the control socket of a `ferryd`
/// running as `own`: root, or `ferryd`'s own user.
pub fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == 0 || peer == own
}

/// What a `ferryd` does on the control socket's commands.
pub trait Control: Send + Sync + 'static {
    /// Applies every complete interval held (but those of an open resync
    /// span) and closes the character device; says what it let go of.
    /// Returns only once the device is closed.  Refused with no consistent
    /// point (the initial full copy not applied) unless `force`.
    fn release(&self, force: bool) -> impl Future<Output = Result<Released, String>> + Send;
    /// Writes `START` to the character device (a primary), with
    /// `FULL_RESYNC` when `full`; says how the kernel took it.
    fn resync(&self, full: bool) -> impl Future<Output = Result<Started, String>> + Send;
}

/// Binds the control socket at `path`: its directory created 0700 if
/// missing, a stale socket removed, the socket 0600.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A socket nobody listens on is a dead ferryd's: removed.
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "control socket {}: another ferryd serves it",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    info!(path = %path.display(), "stale control socket removed");
                    std::fs::remove_file(path)
                        .with_context(|| format!("remove stale {}", path.display()))?
                }
                Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
            }
        }
        Ok(_) => bail!(
            "control socket {}: exists and is not a socket",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    }
    let l =
        UnixListener::bind(path).with_context(|| format!("control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(l)
}

/// The control socket being served.  Dropping it stops serving and removes
/// the socket (if it is still this one).
pub struct Server {
    released: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
    ino: Option<(u64, u64)>,
}

impl Server {
    /// Resolves once a release was answered (and the client closed the
    /// connection, or [`CLOSE_WAIT`] passed): `ferryd` may exit.
    pub async fn released(&self) {
        self.released.notified().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.ino {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves `l` (bound at `path`) for `c`, allowing the peers
/// [`peer_allowed`] allows for a `ferryd` of uid `own`.
pub fn serve<C: Control>(l: UnixListener, path: &Path, c: Arc<C>, own: u32) -> Server {
    let released = Arc::new(Notify::new());
    let r = released.clone();
    let task = tokio::spawn(async move {
        loop {
            let s = match l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("control socket: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (c, r) = (c.clone(), r.clone());
            tokio::spawn(async move {
                if let Err(e) = connection(&*c, s, own, &r).await {
                    warn!("control socket: {e:#}");
                }
            });
        }
    });
    let ino = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    Server {
        released,
        task,
        path: path.to_owned(),
        ino,
    }
}

async fn reply(s: &mut UnixStream, r: &Reply) -> Result<()> {
    let mut line = serde_json::to_string(r)?;
    line.push('\n');
    s.write_all(line.as_bytes()).await?;
    s.flush().await?;
    Ok(())
}

async fn connection<C: Control>(
    c: &C,
    mut s: UnixStream,
    own: u32,
    released: &Notify,
) -> Result<()> {
    let cred = s.peer_cred().context("SO_PEERCRED")?;
    if !peer_allowed(cred.uid(), own) {
        warn!(uid = cred.uid(), pid = ?cred.pid(), "control socket: peer refused");
        let own_name = if own == 0 {
            "root".to_string()
        } else {
            format!("root or uid {own}")
        };
        reply(
            &mut s,
            &Reply::Refused {
                error: format!(
                    "permission denied: uid {} may not control ferryd (only {own_name})",
                    cred.uid()
                ),
            },
        )
        .await?;
        return Ok(());
    }
    let mut line = String::new();
    {
        let mut rd = tokio::io::BufReader::new((&mut s).take(REQUEST_MAX));
        tokio::time::timeout(REQUEST_TIMEOUT, rd.read_line(&mut line))
            .await
            .context("no request")??;
    }
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            reply(
                &mut s,
                &Reply::Refused {
                    error: format!("bad request: {e}"),
                },
            )
            .await?;
            return Ok(());
        }
    };
    match req {
        Request::Release | Request::ReleaseForce => {
            let force = req == Request::ReleaseForce;
            info!(uid = cred.uid(), force, "release requested");
            match c.release(force).await {
                Ok(r) => {
                    let sent = reply(&mut s, &Reply::Released(r)).await;
                    if sent.is_ok() {
                        // The client closes once it has the answer.
                        let mut b = [0u8; 64];
                        let _ = tokio::time::timeout(CLOSE_WAIT, async {
                            while !matches!(s.read(&mut b).await, Ok(0) | Err(_)) {}
                        })
                        .await;
                    }
                    // The device is let go: ferryd may exit, answer read or
                    // not.
                    released.notify_one();
                    sent
                }
                Err(error) => reply(&mut s, &Reply::Refused { error }).await,
            }
        }
        Request::Resync | Request::ResyncFull => {
            let full = req == Request::ResyncFull;
            info!(uid = cred.uid(), full, "resync requested");
            match c.resync(full).await {
                Ok(r) => reply(&mut s, &Reply::Started(r)).await,
                Err(error) => reply(&mut s, &Reply::Refused { error }).await,
            }
        }
    }
}

/// What asking `ferryd` to release came to, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// `ferryd` let go of the device, at this interval.
    Released(Released),
    /// No `ferryd` serves the socket (it is absent, or nobody listens on
    /// it): nothing holds the device on its behalf.
    NotRunning(String),
}

/// Asks the `ferryd` serving `path` to release, forced or not (blocking;
/// `ferryctl promote [--force]`).  An error means `ferryd` runs but did
/// not release: refused (with no consistent point, unless `force`),
/// failed, did not answer, or the socket cannot be used (permissions).  A
/// `ferryd` that has no forced release (older: it has no consistent point
/// to refuse for either) is asked for a plain one.
pub fn request_release(path: &Path, force: bool, timeout: Duration) -> Result<Release> {
    match request(path, &Request::release(force), timeout, "the release")? {
        Err(why) => Ok(Release::NotRunning(why)),
        Ok(Reply::Released(r)) => Ok(Release::Released(r)),
        Ok(Reply::Refused { error }) if force && error.contains("unknown variant") => {
            request_release(path, false, timeout)
        }
        Ok(Reply::Refused { error }) => bail!("ferryd refused to release the device: {error}"),
        Ok(other) => bail!("an answer of ferryd not understood: {other:?}"),
    }
}

/// How long `ferryctl resync` waits for the answer.
pub const RESYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the `ferryd` serving `path` to write `START`, with `FULL_RESYNC`
/// when `full` (blocking; `ferryctl resync [--full]`).  An error: no
/// `ferryd` runs, it refused (the kernel's errno in words), or it did not
/// answer.
pub fn request_resync(path: &Path, full: bool, timeout: Duration) -> Result<Started> {
    match request(path, &Request::resync(full), timeout, "the resync")? {
        Err(why) => bail!("ferryd is not running ({why}): a resync needs it, it ships the chunks"),
        Ok(Reply::Started(r)) => Ok(r),
        Ok(Reply::Refused { error }) if full && error.contains("unknown variant") => {
            bail!("ferryd did not start a full resync: it has none (an older ferryd: {error})")
        }
        Ok(Reply::Refused { error }) => bail!("ferryd did not start a resync: {error}"),
        Ok(other) => bail!("an answer of ferryd not understood: {other:?}"),
    }
}

/// Sends `req` (`what`, for messages) to the `ferryd` serving `path` and
/// reads its answer; `Err(why)` inside when no `ferryd` serves the socket
/// (it is absent, or nobody listens on it).
fn request(
    path: &Path,
    req: &Request,
    timeout: Duration,
    what: &str,
) -> Result<std::result::Result<Reply, String>> {
    let s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Err(format!(
                "{}: {}",
                path.display(),
                if e.kind() == std::io::ErrorKind::NotFound {
                    "no control socket"
                } else {
                    "nobody listens on the control socket"
                }
            )));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot use ferryd's control socket {}", path.display()))
        }
    };
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    // A peer refused is answered, and the connection closed, before the
    // request is read: the answer is still there to read when sending it
    // failed.
    let sent = (&s).write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(&s).read_line(&mut answer);
    if answer.is_empty() {
        sent.with_context(|| format!("send {what} to ferryd ({})", path.display()))?;
        read.with_context(|| format!("no answer from ferryd ({})", path.display()))?;
        bail!(
            "ferryd ({}) closed the connection without answering (see its log)",
            path.display()
        );
    }
    Ok(Ok(serde_json::from_str(answer.trim()).with_context(
        || format!("an answer of ferryd not understood: {}", answer.trim()),
    )?))
}

#[cfg(test)]
#[path = "ctl_tests.rs"]
mod tests;
