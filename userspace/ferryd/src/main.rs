//! `ferryd`: reads a primary's records from `/dev/ferry/<group>` and ships
//! them to the secondary, or (on the secondary) stores, acknowledges and
//! applies them.  The role comes from `/etc/ferry/<group>.toml`.

mod files;
mod listen;
mod primary;
mod remote_log;
mod secondary;
mod spool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Parser;
use ferryd::config::{self, Config, Role};
use ferryd::status::Status;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(version, about = "ferry's replication helper")]
struct Cli {
    /// The group (its configuration is /etc/ferry/<group>.toml).
    group: Option<String>,
    /// The configuration file (instead of the group's default path).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let path = match (&cli.config, &cli.group) {
        (Some(p), _) => p.clone(),
        (None, Some(g)) => config::path_of(g),
        (None, None) => anyhow::bail!("give a group or --config"),
    };
    let cfg = Config::load(&path)?;
    let key = cfg.key()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    info!(group = %cfg.group, role = ?cfg.role, "starting");
    rt.block_on(async move {
        match cfg.role {
            Role::Primary => primary::run(cfg, key).await,
            Role::Secondary => secondary::run(cfg, key).await,
        }
    })
}

/// What the status endpoint serves, and how to act on `POST /release`.
pub(crate) trait Report: Send + Sync + 'static {
    fn status(&self) -> Status;
    /// Stops applying and closes the character device; returns the last
    /// interval applied.
    fn release(&self) -> Result<u64, String>;
}

/// Serves `GET /status` (JSON), `GET /metrics` (Prometheus text) and
/// `POST /release` on the loopback address `addr`, in a thread.
pub(crate) fn serve_status(addr: SocketAddr, r: Arc<dyn Report>) -> Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("status endpoint {addr}: {e}"))?;
    let server = Arc::new(server);
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let (code, body, ctype) = match (req.method(), req.url()) {
                    (tiny_http::Method::Get, "/status") => (
                        200,
                        serde_json::to_string_pretty(&r.status()).unwrap_or_default(),
                        "application/json",
                    ),
                    (tiny_http::Method::Get, "/metrics") => {
                        (200, r.status().prometheus(), "text/plain; version=0.0.4")
                    }
                    (tiny_http::Method::Post, "/release") => match r.release() {
                        Ok(applied) => (
                            200,
                            format!("{{\"applied_epoch\":{applied}}}"),
                            "application/json",
                        ),
                        Err(e) => (409, e, "text/plain"),
                    },
                    _ => (404, "not found\n".into(), "text/plain"),
                };
                let h = tiny_http::Header::from_bytes("Content-Type", ctype).ok();
                let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
                if let Some(h) = h {
                    resp = resp.with_header(h);
                }
                if let Err(e) = req.respond(resp) {
                    warn!("status endpoint: {e}");
                }
            }
        })
        .context("status thread")?;
    Ok(())
}

/// Tells systemd (`Type=notify`) that the daemon is ready; nothing when
/// not run by systemd.
pub(crate) fn notify_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// Counters of rejected records by reason.
#[derive(Default)]
pub(crate) struct Rejected(Mutex<Vec<(String, u64)>>);

impl Rejected {
    pub(crate) fn count(&self, reason: &str) {
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
