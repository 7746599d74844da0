//! `ferryd`: reads a primary's records from `/dev/ferry/<group>` and ships
//! them to the secondary, or (on the secondary) stores, acknowledges and
//! applies them.  The role comes from `/etc/ferry/<group>.toml`.

mod files;
mod kernel;
mod listen;
mod primary;
mod remote_log;
mod secondary;
mod span;
mod spool;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ferryd::cli::Ferryd as Cli;
use ferryd::config::{Config, Role};
use ferryd::ctl::{self, Control};
use ferryd::status::Status;
use ferryd::systemd;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info};

fn main() -> std::process::ExitCode {
    // The command line is defined in `ferryd::cli` (the manual page and
    // completions are generated from it).
    let cli = Cli::parse();
    // `--check`: the configuration is checked, in plain words, and nothing
    // starts.
    if cli.check.is_some() {
        return match cli.config_path() {
            Ok(p) => ferryd::check::run(&p).into(),
            Err(e) => {
                eprintln!("ferryd: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let cfg = Config::load(&cli.config_path()?)?;
    let key = cfg.key()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    info!(group = %cfg.group, role = ?cfg.role, "starting");
    let r = rt.block_on(async move {
        spawn_watchdog();
        match cfg.role {
            Role::Primary => primary::run(cfg, key).await,
            Role::Secondary => secondary::run(cfg, key).await,
        }
    });
    // A primary's reader may be blocked in a read of the character device:
    // not waited for (it holds nothing half done, see `primary`); other
    // blocking work (an append to the remote log) gets a moment to end.
    rt.shutdown_timeout(Duration::from_millis(500));
    r
}

/// SIGTERM and SIGINT, caught from the start (before `ferryd` reports
/// ready): either asks `ferryd` to stop cleanly.
pub(crate) struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    /// The next of them to arrive.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Binds the group's control socket and serves it for `c`: root and
/// `ferryd`'s own user may use it.
pub(crate) fn serve_control<C: Control>(cfg: &Config, c: Arc<C>) -> Result<ctl::Server> {
    let path = cfg.control_socket();
    let l = ctl::bind(&path)?;
    info!(path = %path.display(), "control socket");
    Ok(ctl::serve(l, &path, c, nix::unistd::geteuid().as_raw()))
}

/// What the status endpoint serves.
pub(crate) trait Report: Send + Sync + 'static {
    fn status(&self) -> Status;
}

/// Serves `GET /status` (JSON) and `GET /metrics` (Prometheus text) on the
/// loopback address `addr`, in a thread.  Nothing else: whatever changes
/// `ferryd`'s state goes through the control socket (`ctl`), which only
/// root may use; this endpoint is open to every local user.  Under
/// systemd, the status's summary goes to `STATUS=` as it changes.
pub(crate) fn serve_status(addr: SocketAddr, r: Arc<dyn Report>) -> Result<()> {
    let r2 = r.clone();
    ferryd::status::serve(addr, Arc::new(move || r.status()))?;
    if systemd::notifying() {
        tokio::spawn(systemd::status_lines(
            systemd::STATUS_EVERY,
            Arc::new(move || r2.status().summary()),
            |l| systemd::notify(&[NotifyState::Status(l)]),
        ));
    }
    Ok(())
}

/// With `WatchdogSec=` in the unit: pings systemd's watchdog at half its
/// interval while the main loops show life (`ferryd::systemd`).
fn spawn_watchdog() {
    if let Some(every) = systemd::watchdog_interval() {
        info!(interval = ?every, "watchdog");
        tokio::spawn(systemd::watchdog(
            &systemd::HEARTBEAT,
            every / 2,
            every,
            || systemd::notify(&[NotifyState::Watchdog]),
        ));
    }
}

/// Tells systemd (`Type=notify`) that the daemon is ready; nothing when
/// not run by systemd.
pub(crate) fn notify_ready() {
    systemd::notify(&[NotifyState::Ready]);
}

/// Tells systemd that the daemon is stopping; nothing when not run by
/// systemd.
pub(crate) fn notify_stopping() {
    systemd::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Counters of rejected records by reason (one of
/// `ferryd::status::REJECT_REASONS`).
#[derive(Default)]
pub(crate) struct Rejected(Mutex<Vec<(String, u64)>>);

impl Rejected {
    pub(crate) fn count(&self, reason: &str) {
        debug_assert!(
            ferryd::status::REJECT_REASONS.contains(&reason),
            "{reason} is not in REJECT_REASONS"
        );
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match v.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => v.push((reason.to_string(), 1)),
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<(String, u64)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{raise, Signal as Sig};

    /// SIGTERM and SIGINT are caught (not the default action, which would
    /// end this test process) and reported, so `run` can stop cleanly.
    #[tokio::test]
    async fn sigterm_and_sigint_are_caught() {
        let mut s = Signals::new().unwrap();
        raise(Sig::SIGTERM).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), s.recv()).await;
        assert_eq!(got, Ok("SIGTERM"));
        raise(Sig::SIGINT).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), s.recv()).await;
        assert_eq!(got.ok(), Some("SIGINT"));
    }
}
