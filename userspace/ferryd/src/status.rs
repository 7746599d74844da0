//! The status document `ferryd` serves on `GET /status` (JSON) and which
//! `ferryctl status` prints; its exposition on `GET /metrics` (Prometheus
//! or OpenMetrics text, through `prometheus-client`); the endpoint that
//! serves both.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::Role;
use crate::cpoints::Point;
use crate::room::NoRoom;

/// One device stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stream {
    /// Device id.
    pub device: u32,
    /// Whether its link connection is up.
    pub connected: bool,
    /// Primary: highest `dev_seq` read from the kernel.  Secondary:
    /// highest contiguous `dev_seq` durable in the remote log.
    pub received: u64,
    /// Primary: highest `dev_seq` the secondary acknowledged.  Secondary:
    /// highest `dev_seq` applied (not those staged in a resync span).
    pub done: u64,
    /// Records between the two.
    pub lag_records: u64,
    /// Bytes of those records.
    pub lag_bytes: u64,
    /// Primary: age of the oldest record not acknowledged, seconds.
    /// Secondary: how much later, by the primary's clock, the newest
    /// record held was written than the last one applied.
    pub lag_seconds: f64,
    /// Bytes of records (before compression) sent or received.
    pub record_bytes: u64,
    /// Bytes on the wire (frames, before TLS).
    pub wire_bytes: u64,
    /// Secondary: write records of the stream this process applied.
    #[serde(default)]
    pub applied_writes: u64,
    /// Secondary: why the stream's remote log takes no more records and
    /// its applying stops (a failed rollback of an append, damage below
    /// the durable end found at start); `None` while it works.
    #[serde(default)]
    pub log_stopped: Option<String>,
}

/// The whole document.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// Group name.
    pub group: String,
    /// Site role.
    pub role: Role,
    /// Primary: `replicating`, `connecting`, `ahead`, `resyncing`;
    /// secondary: `idle`, `applying`, `released`.
    pub state: String,
    /// Streams by device id.
    pub streams: Vec<Stream>,
    /// Last interval applied at the secondary.
    pub applied_epoch: u64,
    /// Secondary: interval being applied, 0 if none.
    pub applying_epoch: u64,
    /// Records the kernel holds in its spool (primary; from the records
    /// read and not acknowledged).
    pub spool_records: u64,
    /// Peers refused (bad key, wrong group or device, ...): the sum of
    /// `auth_refused_by`.
    pub auth_refused: u64,
    /// Secondary: peers refused, by reason (`pending_limit`, `timeout`,
    /// `tls`, `hello`, `not_hello`, `key`, `device`).
    #[serde(default)]
    pub auth_refused_by: Vec<(String, u64)>,
    /// Secondary: errors accepting a connection (descriptors exhausted,
    /// a connection aborted before it was accepted, ...), each survived.
    #[serde(default)]
    pub accept_errors: u64,
    /// Records rejected, by reason.
    pub rejected: Vec<(String, u64)>,
    /// Intervals applied by this process.
    pub intervals_applied: u64,
    /// Secondary: the last consistency point held (every record of it, in
    /// every stream, durable and verified in the remote log).
    #[serde(default)]
    pub consistency_point: Option<Point>,
    /// Primary: records, and bytes, in the disk spool (read from the
    /// kernel, written to this site's disk, not acknowledged).
    #[serde(default)]
    pub disk_spool_records: u64,
    #[serde(default)]
    pub disk_spool_bytes: u64,
    /// Secondary: log records that became durable in the remote log after
    /// a data record of a later group order (G2 broken by the primary; 0
    /// on a correct one).
    #[serde(default)]
    pub g2_violations: u64,
    /// Secondary: why applying stopped (a batch the kernel would refuse,
    /// or an apply that failed); `None` while it goes on.
    #[serde(default)]
    pub apply_error: Option<String>,
    /// Secondary: why the remote log's directory (`log_dir`) is full, when
    /// it is (a batch of records or `state.json` could not be written for
    /// lack of space: replication waits for room, nothing acknowledged);
    /// `None` once what failed went through.
    #[serde(default)]
    pub log_full: Option<String>,
    /// Primary: why the disk spool's directory (`spool_dir`) is full, when
    /// it is (a segment could not be written for lack of space: records
    /// stay in memory and in the kernel's spool); `None` once a segment is
    /// written again.
    #[serde(default)]
    pub spool_full: Option<String>,
    /// Primary: the last failure of the disk spool other than a lack of
    /// space (writing, reading or removing a segment); `None` once that
    /// succeeds again.
    #[serde(default)]
    pub spool_error: Option<String>,
    /// Secondary: a resync span is open (the intervals after one whose
    /// markers carry `RESYNC_BEGIN` are staged, to be applied as one with
    /// the interval whose markers carry `RESYNC_END`).
    #[serde(default)]
    pub resync_span_open: bool,
    /// Secondary: whole intervals of the open span staged (taken from the
    /// streams, not applied), their records and their bytes.
    #[serde(default)]
    pub resync_span_intervals: u64,
    #[serde(default)]
    pub resync_span_records: u64,
    #[serde(default)]
    pub resync_span_bytes: u64,
    /// Secondary: resync spans this process applied whole.
    #[serde(default)]
    pub resync_spans_applied: u64,
    /// Secondary: no consistent point (DRBD's *Inconsistent*): a full
    /// copy's span began while the secondary held nothing of the group,
    /// and is not applied whole yet; its devices hold their own earlier
    /// content, not a point of the primary's past (promote is refused
    /// without `--force`).
    #[serde(default)]
    pub inconsistent: bool,
    /// Primary: how the group leaves `ahead`, the configuration's
    /// `resync`: `auto` or `manual` (empty on a secondary).
    #[serde(default)]
    pub resync_mode: String,
    /// Primary: what will start a resync, or why none will (in words),
    /// when one is needed (the group `ahead`, dirty chunks while
    /// `replicating`, the first full copy to a secondary that holds
    /// nothing); `None` otherwise.
    #[serde(default)]
    pub resync_note: Option<String>,
    /// Primary: the configuration's `initial_sync`, `full` or `none`
    /// (empty on a secondary).
    #[serde(default)]
    pub initial_sync: String,
    /// Primary: a full copy (`START` with `FULL_RESYNC`) this process
    /// started is not done: the group has not been `replicating` without
    /// dirty chunks since.
    #[serde(default)]
    pub resync_full: bool,
    /// Primary: the kernel's dirty chunks, over the group's devices.
    #[serde(default)]
    pub dirty_chunks: u64,
    /// Primary: of the running resync, chunks left to copy and chunks in
    /// it, over the group's devices (both 0 when none runs).
    #[serde(default)]
    pub resync_chunks_left: u64,
    #[serde(default)]
    pub resync_chunks_total: u64,
    /// Primary: the same in bytes, when every device's chunk size is known
    /// (its table); `None` otherwise.
    #[serde(default)]
    pub resync_bytes_left: Option<u64>,
    #[serde(default)]
    pub resync_bytes_total: Option<u64>,
    /// Resyncs refused before they began for lack of room in the
    /// secondary's `log_dir` (`crate::room`): on a secondary, those it
    /// refused; on a primary, those its secondary refused it.
    #[serde(default)]
    pub resync_room_refusals: u64,
    /// The figures of such a refusal: on a secondary, the last one; on a
    /// primary, the one that holds the resync now (`None` once one
    /// starts, or none is needed).
    #[serde(default)]
    pub resync_room: Option<NoRoom>,
}

/// Serves `GET /status` (the document, JSON) and `GET /metrics` (its
/// exposition) on `addr`, in a thread, each from a fresh `report()`;
/// returns the address bound.  Nothing else: the endpoint is read-only.
pub fn serve(
    addr: SocketAddr,
    report: Arc<dyn Fn() -> Status + Send + Sync>,
) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("status endpoint {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .context("status endpoint: not an IP address")?;
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let (code, body, ctype) = match (req.method(), req.url()) {
                    (tiny_http::Method::Get, "/status") => (
                        200,
                        serde_json::to_string_pretty(&report()).unwrap_or_default(),
                        "application/json",
                    ),
                    (tiny_http::Method::Get, "/metrics") => {
                        let accept = req
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv("Accept"))
                            .map(|h| h.value.as_str());
                        let f = Format::from_accept(accept);
                        (200, report().metrics(f), f.content_type())
                    }
                    (tiny_http::Method::Get, _) => (404, "not found\n".into(), "text/plain"),
                    _ => (
                        405,
                        "read-only: GET /status or /metrics (ferryctl changes ferryd's state through its control socket)\n".into(),
                        "text/plain",
                    ),
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
    Ok(bound)
}

/// The states of a primary, in the order of `ferry_state`.
pub const PRIMARY_STATES: [&str; 4] = ["replicating", "connecting", "ahead", "resyncing"];

/// The states of a secondary, in the order of `ferry_state`.
pub const SECONDARY_STATES: [&str; 3] = ["idle", "applying", "released"];

/// Why a secondary refuses a peer: the `reason` label of
/// `ferry_auth_refused_total`, every one shown from the start.
pub const AUTH_REFUSAL_REASONS: [&str; 7] = [
    "pending_limit",
    "timeout",
    "tls",
    "hello",
    "not_hello",
    "key",
    "device",
];

/// Why a secondary rejects a record: the `reason` label of
/// `ferry_records_rejected_total`, every one shown from the start.
pub const REJECT_REASONS: [&str; 9] = [
    "checksum",
    "signature",
    "wrong_group",
    "truncated",
    "tail",
    "wrong_stream",
    "malformed",
    "batch",
    "consistency_point",
];

/// The text formats of `GET /metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text, for a scraper that asks for it (`Accept:
    /// application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// The format a request's `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

impl Status {
    /// The Prometheus text exposition of the document.
    pub fn prometheus(&self) -> String {
        self.metrics(Format::Prometheus)
    }

    /// The exposition of the document in `format`: every family, with
    /// every label value it can have (devices, reasons, states), from the
    /// start.
    pub fn metrics(&self, format: Format) -> String {
        let mut reg = Registry::with_prefix("ferry");
        reg.register_collector(Box::new(Metrics(self.clone())));
        let mut out = String::new();
        // Writing to a String does not fail; the collector does not either.
        let _ = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &reg)
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &reg),
        };
        out
    }

    /// One line for systemd's `STATUS=` (`systemctl status`): the state,
    /// the streams connected, the lag (records and bytes summed over the
    /// streams, seconds the most of them), the role's own counts, and
    /// what stopped, if anything did.
    pub fn summary(&self) -> String {
        let s = &self.streams;
        let connected = s.iter().filter(|x| x.connected).count();
        let records: u64 = s.iter().map(|x| x.lag_records).sum();
        let bytes: u64 = s.iter().map(|x| x.lag_bytes).sum();
        let secs = s.iter().map(|x| x.lag_seconds).fold(0.0, f64::max);
        let mut l = format!(
            "{}, {connected}/{} streams connected, lag {records} records ({}), {secs:.1} s",
            self.state,
            s.len(),
            human_bytes(bytes)
        );
        match self.role {
            Role::Primary => {
                if self.disk_spool_records > 0 {
                    l.push_str(&format!(
                        ", disk spool {} records ({})",
                        self.disk_spool_records,
                        human_bytes(self.disk_spool_bytes)
                    ));
                }
                if self.state == "resyncing" {
                    l.push_str(&format!(", resync {}", self.resync_progress()));
                }
                if let Some(n) = &self.resync_note {
                    l.push_str(&format!("; {n}"));
                }
            }
            Role::Secondary => {
                l.push_str(&format!(", applied interval {}", self.applied_epoch));
                if self.applying_epoch > 0 {
                    l.push_str(&format!(", applying to {}", self.applying_epoch));
                }
                if self.resync_span_open {
                    l.push_str(&format!(
                        ", resync span open: {} intervals staged ({}), not applied",
                        self.resync_span_intervals,
                        human_bytes(self.resync_span_bytes)
                    ));
                }
                if self.inconsistent {
                    l.push_str("; NO CONSISTENT POINT: initial full copy in progress");
                }
            }
        }
        if let Some(e) = &self.apply_error {
            l.push_str(&format!("; APPLY STOPPED: {e}"));
        }
        for x in s.iter().filter(|x| x.log_stopped.is_some()) {
            l.push_str(&format!("; REMOTE LOG STOPPED (device {})", x.device));
        }
        if self.g2_violations > 0 {
            l.push_str(&format!("; G2 BROKEN ({})", self.g2_violations));
        }
        // One line, of a length a terminal shows.
        let mut l = l.replace('\n', " ");
        if l.len() > 400 {
            let mut end = 400;
            while !l.is_char_boundary(end) {
                end -= 1;
            }
            l.truncate(end);
            l.push_str("...");
        }
        l
    }

    /// The running resync's progress in words: `30 of 40 chunks left
    /// (1.9 MiB of 2.5 MiB)`, the bytes when they are known.
    pub fn resync_progress(&self) -> String {
        let mut l = format!(
            "{} of {} chunks left",
            self.resync_chunks_left, self.resync_chunks_total
        );
        if let (Some(left), Some(total)) = (self.resync_bytes_left, self.resync_bytes_total) {
            l.push_str(&format!(
                " ({} of {})",
                human_bytes(left),
                human_bytes(total)
            ));
        }
        l
    }

    /// The states a site of this role can be in.
    pub fn states(&self) -> &'static [&'static str] {
        match self.role {
            Role::Primary => &PRIMARY_STATES,
            Role::Secondary => &SECONDARY_STATES,
        }
    }
}

/// `n` bytes, in B, KiB, MiB, GiB or TiB with one decimal.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[path = "status_metrics.rs"]
mod metrics;
use metrics::Metrics;

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
