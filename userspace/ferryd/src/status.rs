//! The status document `ferryd` serves on `GET /status` (JSON) and which
//! `ferryctl status` prints; its exposition on `GET /metrics` (Prometheus
//! or OpenMetrics text, through `prometheus-client`); the endpoint that
//! serves both.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::Role;
use crate::cpoints::Point;

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
    /// highest `dev_seq` applied.
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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Group name.
    pub group: String,
    /// Site role.
    pub role: Role,
    /// `replicating`, `connecting`, `applying`, `idle`, `released`.
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
pub const PRIMARY_STATES: [&str; 3] = ["replicating", "connecting", "ahead"];

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
            Role::Primary if self.disk_spool_records > 0 => l.push_str(&format!(
                ", disk spool {} records ({})",
                self.disk_spool_records,
                human_bytes(self.disk_spool_bytes)
            )),
            Role::Primary => {}
            Role::Secondary => {
                l.push_str(&format!(", applied interval {}", self.applied_epoch));
                if self.applying_epoch > 0 {
                    l.push_str(&format!(", applying to {}", self.applying_epoch));
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

/// Counts by reason: every reason of `known` (0 when absent from `got`),
/// then whatever else `got` holds.
fn by_reason(known: &[&str], got: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = known
        .iter()
        .map(|r| {
            let n = got.iter().find(|(g, _)| g == r).map_or(0, |(_, n)| *n);
            (r.to_string(), n)
        })
        .collect();
    v.extend(
        got.iter()
            .filter(|(g, _)| !known.contains(&g.as_str()))
            .cloned(),
    );
    v
}

/// A status document as a collector of constant metrics.
#[derive(Debug)]
struct Metrics(Status);

type Labels = Vec<(&'static str, String)>;

impl Metrics {
    fn group(&self) -> Labels {
        vec![("group", self.0.group.clone())]
    }

    fn with(&self, key: &'static str, value: impl ToString) -> Labels {
        let mut l = self.group();
        l.push((key, value.to_string()));
        l
    }

    fn per_device<N>(&self, f: impl Fn(&Stream) -> N) -> Vec<(Labels, N)> {
        self.0
            .streams
            .iter()
            .map(|s| (self.with("device", s.device), f(s)))
            .collect()
    }
}

/// One family: its name (without the unit and `_total`), help, unit and
/// samples.
fn family<M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: Vec<(Labels, M)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), M::TYPE)?;
    for (labels, v) in &samples {
        v.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge<N: EncodeGaugeValue>(v: N) -> ConstGauge<N> {
    ConstGauge::new(v)
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let st = &self.0;
        let e = &mut enc;
        family(
            e,
            "build_info",
            "The version of ferryd",
            None,
            vec![(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                gauge(1i64),
            )],
        )?;
        family(
            e,
            "state",
            "The state of the site (1: the current one): a primary's is replicating, connecting, or ahead (the kernel tracks writes in its bitmap); a secondary's is idle, applying or released",
            None,
            st.states()
                .iter()
                .map(|s| (self.with("state", s), gauge(i64::from(*s == st.state))))
                .collect(),
        )?;
        family(
            e,
            "connected",
            "The stream's link connection is up",
            None,
            self.per_device(|s| gauge(i64::from(s.connected))),
        )?;
        family(
            e,
            "lag_records",
            "Records not yet acknowledged (primary) or applied (secondary)",
            None,
            self.per_device(|s| gauge(s.lag_records)),
        )?;
        family(
            e,
            "lag",
            "Bytes of those records",
            Some(Unit::Bytes),
            self.per_device(|s| gauge(s.lag_bytes)),
        )?;
        family(
            e,
            "lag",
            "Primary: age of the oldest record not acknowledged, from the kernel's timestamp of its write; secondary: primary time between the last record applied and the newest held",
            Some(Unit::Seconds),
            self.per_device(|s| gauge(s.lag_seconds)),
        )?;
        family(
            e,
            "record",
            "Record bytes (before compression) shipped or received",
            Some(Unit::Bytes),
            self.per_device(|s| counter(s.record_bytes)),
        )?;
        family(
            e,
            "wire",
            "Frame bytes on the link",
            Some(Unit::Bytes),
            self.per_device(|s| counter(s.wire_bytes)),
        )?;
        family(
            e,
            "applied_writes",
            "Secondary: write records of the stream this process applied",
            None,
            self.per_device(|s| counter(s.applied_writes)),
        )?;
        family(
            e,
            "remote_log_stopped",
            "Secondary: the stream's remote log takes no more records (see the log and the status)",
            None,
            self.per_device(|s| gauge(i64::from(s.log_stopped.is_some()))),
        )?;
        family(
            e,
            "remote_log_full",
            "Secondary: the remote log's directory is full: replication waits for room",
            None,
            vec![(self.group(), gauge(i64::from(st.log_full.is_some())))],
        )?;
        family(
            e,
            "applied_epoch",
            "Last checkpoint interval applied",
            None,
            vec![(self.group(), gauge(st.applied_epoch))],
        )?;
        family(
            e,
            "applying_epoch",
            "Secondary: checkpoint interval being applied (0: none)",
            None,
            vec![(self.group(), gauge(st.applying_epoch))],
        )?;
        family(
            e,
            "intervals_applied",
            "Secondary: checkpoint intervals this process applied",
            None,
            vec![(self.group(), counter(st.intervals_applied))],
        )?;
        family(
            e,
            "consistency_point_id",
            "Last consistency point held at the secondary (0: none)",
            None,
            vec![(
                self.group(),
                gauge(st.consistency_point.as_ref().map_or(0, |p| p.cp_id)),
            )],
        )?;
        family(
            e,
            "spool_records",
            "Primary: records read from the kernel and not acknowledged",
            None,
            vec![(self.group(), gauge(st.spool_records))],
        )?;
        family(
            e,
            "disk_spool_records",
            "Primary: of those, the records in the disk spool",
            None,
            vec![(self.group(), gauge(st.disk_spool_records))],
        )?;
        family(
            e,
            "disk_spool",
            "Primary: bytes of the disk spool's segments",
            Some(Unit::Bytes),
            vec![(self.group(), gauge(st.disk_spool_bytes))],
        )?;
        family(
            e,
            "disk_spool_full",
            "Primary: the disk spool's directory is full: records stay in the kernel's spool",
            None,
            vec![(self.group(), gauge(i64::from(st.spool_full.is_some())))],
        )?;
        family(
            e,
            "auth_refused",
            "Secondary: peers refused, by reason",
            None,
            by_reason(&AUTH_REFUSAL_REASONS, &st.auth_refused_by)
                .into_iter()
                .map(|(r, n)| (self.with("reason", r), counter(n)))
                .collect(),
        )?;
        family(
            e,
            "accept_errors",
            "Secondary: errors accepting a connection",
            None,
            vec![(self.group(), counter(st.accept_errors))],
        )?;
        family(
            e,
            "records_rejected",
            "Secondary: records rejected, by reason",
            None,
            by_reason(&REJECT_REASONS, &st.rejected)
                .into_iter()
                .map(|(r, n)| (self.with("reason", r), counter(n)))
                .collect(),
        )?;
        family(
            e,
            "g2_violations",
            "Secondary: log records durable after a data record of a later group order",
            None,
            vec![(self.group(), counter(st.g2_violations))],
        )?;
        family(
            e,
            "apply_stopped",
            "Secondary: applying stopped on an error (see the log and the status)",
            None,
            vec![(self.group(), gauge(i64::from(st.apply_error.is_some())))],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            group: "gr".into(),
            role: Role::Secondary,
            state: "idle".into(),
            streams: Vec::new(),
            applied_epoch: 0,
            applying_epoch: 0,
            spool_records: 0,
            auth_refused: 0,
            auth_refused_by: Vec::new(),
            accept_errors: 0,
            rejected: vec![("checksum".into(), 1)],
            intervals_applied: 0,
            consistency_point: None,
            disk_spool_records: 0,
            disk_spool_bytes: 0,
            g2_violations: 0,
            apply_error: None,
            log_full: None,
            spool_full: None,
            spool_error: None,
        }
    }

    /// A scrape parsed with a real parser: its samples, with their types
    /// (the parser types a sample by a `# TYPE` line of its exact name).
    /// Every line is either a comment or a sample the parser took.
    pub(crate) fn parse(text: &str) -> Vec<prometheus_parse::Sample> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let sample_lines = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(
            scrape.samples.len(),
            sample_lines,
            "unparsed lines:\n{text}"
        );
        for smp in &scrape.samples {
            assert!(
                scrape.docs.contains_key(&smp.metric),
                "{} has no HELP",
                smp.metric
            );
        }
        scrape.samples
    }

    /// Every family ferryd exposes, and its type.
    pub(crate) const FAMILIES: [(&str, &str); 24] = [
        ("ferry_build_info", "gauge"),
        ("ferry_state", "gauge"),
        ("ferry_connected", "gauge"),
        ("ferry_lag_records", "gauge"),
        ("ferry_lag_bytes", "gauge"),
        ("ferry_lag_seconds", "gauge"),
        ("ferry_record_bytes_total", "counter"),
        ("ferry_wire_bytes_total", "counter"),
        ("ferry_applied_writes_total", "counter"),
        ("ferry_remote_log_stopped", "gauge"),
        ("ferry_remote_log_full", "gauge"),
        ("ferry_applied_epoch", "gauge"),
        ("ferry_applying_epoch", "gauge"),
        ("ferry_intervals_applied_total", "counter"),
        ("ferry_consistency_point_id", "gauge"),
        ("ferry_spool_records", "gauge"),
        ("ferry_disk_spool_records", "gauge"),
        ("ferry_disk_spool_bytes", "gauge"),
        ("ferry_disk_spool_full", "gauge"),
        ("ferry_auth_refused_total", "counter"),
        ("ferry_accept_errors_total", "counter"),
        ("ferry_records_rejected_total", "counter"),
        ("ferry_g2_violations_total", "counter"),
        ("ferry_apply_stopped", "gauge"),
    ];

    fn kind(v: &prometheus_parse::Value) -> &'static str {
        match v {
            prometheus_parse::Value::Counter(_) => "counter",
            prometheus_parse::Value::Gauge(_) => "gauge",
            _ => "other",
        }
    }

    /// Checks a fresh site's scrape: every family, typed, with every
    /// label value at 0 (but the state's and the build's 1).
    pub(crate) fn check_fresh(text: &str, devices: &[u32], states: &[&str], state: &str) {
        let samples = parse(text);
        for (name, ty) in FAMILIES {
            let of: Vec<_> = samples.iter().filter(|s| s.metric == name).collect();
            assert!(!of.is_empty(), "{name} missing:\n{text}");
            for s in &of {
                assert_eq!(kind(&s.value), ty, "{name}");
            }
        }
        for s in &samples {
            assert!(
                FAMILIES.iter().any(|(n, _)| *n == s.metric),
                "{} not in the list",
                s.metric
            );
            let v = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => unreachable!(),
            };
            let one = s.metric == "ferry_build_info"
                || (s.metric == "ferry_state" && s.labels.get("state") == Some(state));
            assert_eq!(v, if one { 1.0 } else { 0.0 }, "{s:?}");
            if s.metric != "ferry_build_info" {
                assert_eq!(s.labels.get("group"), Some("gr"), "{s:?}");
            }
        }
        let values = |name: &str, label: &str| -> Vec<String> {
            samples
                .iter()
                .filter(|s| s.metric == name)
                .map(|s| s.labels.get(label).unwrap_or_default().to_string())
                .collect()
        };
        let devs: Vec<String> = devices.iter().map(u32::to_string).collect();
        for name in [
            "ferry_connected",
            "ferry_lag_records",
            "ferry_lag_bytes",
            "ferry_lag_seconds",
            "ferry_record_bytes_total",
            "ferry_wire_bytes_total",
            "ferry_applied_writes_total",
            "ferry_remote_log_stopped",
        ] {
            assert_eq!(values(name, "device"), devs, "{name}");
        }
        assert_eq!(values("ferry_state", "state"), states);
        assert_eq!(
            values("ferry_auth_refused_total", "reason"),
            AUTH_REFUSAL_REASONS
        );
        assert_eq!(
            values("ferry_records_rejected_total", "reason"),
            REJECT_REASONS
        );
        assert_eq!(
            values("ferry_build_info", "version"),
            [env!("CARGO_PKG_VERSION")]
        );
    }

    /// A fresh secondary's exposition, before any event: every family is
    /// there, typed, counters named `_total`, every device and reason at 0.
    #[test]
    fn every_family_from_the_start() {
        let mut st = status();
        st.rejected.clear();
        st.streams = vec![
            Stream {
                device: 1,
                ..Stream::default()
            },
            Stream {
                device: 2,
                ..Stream::default()
            },
        ];
        let m = st.prometheus();
        check_fresh(&m, &[1, 2], &SECONDARY_STATES, "idle");
        assert!(
            m.contains("\n# TYPE ferry_auth_refused_total counter\n"),
            "{m}"
        );
        assert!(
            m.contains("\n# TYPE ferry_record_bytes_total counter\n"),
            "{m}"
        );
        // A primary's: its own states, the same families.
        st.role = Role::Primary;
        st.state = "ahead".into();
        check_fresh(&st.prometheus(), &[1, 2], &PRIMARY_STATES, "ahead");
    }

    /// A live scrape of the endpoint of a secondary that has seen
    /// nothing yet: every family, typed; and the document's fields the
    /// guest tests read.
    #[test]
    fn a_live_scrape_before_any_event() {
        let mut st = status();
        st.rejected.clear();
        st.streams = vec![Stream {
            device: 0,
            ..Stream::default()
        }];
        let addr = serve("127.0.0.1:0".parse().unwrap(), Arc::new(move || st.clone())).unwrap();
        let get = |path: &str, accept: &str| {
            let r = ureq::get(&format!("http://{addr}{path}"))
                .set("Accept", accept)
                .call()
                .unwrap();
            let ctype = r.header("Content-Type").unwrap_or_default().to_string();
            (ctype, r.into_string().unwrap())
        };
        let (ctype, m) = get("/metrics", "text/plain");
        assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
        check_fresh(&m, &[0], &SECONDARY_STATES, "idle");
        let (ctype, m) = get("/metrics", "application/openmetrics-text; version=1.0.0");
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(m.ends_with("# EOF\n"));
        let (_, doc) = get("/status", "*/*");
        for field in [
            "connected",
            "applied_epoch",
            "applying_epoch",
            "lag_records",
            "lag_seconds",
            "lag_bytes",
            "record_bytes",
            "wire_bytes",
            "applied_writes",
            "g2_violations",
            "disk_spool_bytes",
            "done",
        ] {
            assert!(doc.contains(&format!("\"{field}\": ")), "{field}: {doc}");
        }
    }

    /// Documentation/ferryd.rst lists exactly the families exposed.
    #[test]
    fn the_documented_families() {
        let doc = include_str!("../../../Documentation/ferryd.rst");
        let from = doc.find("``GET /metrics`` serves").unwrap();
        let to = from + doc[from..].find("\nferryctl\n====").unwrap();
        let mut listed: Vec<&str> = doc[from..to]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("ferry_"))
            .collect();
        listed.sort_unstable();
        listed.dedup();
        let mut exposed: Vec<&str> = FAMILIES.iter().map(|(n, _)| *n).collect();
        exposed.sort_unstable();
        assert_eq!(listed, exposed);
    }

    /// The OpenMetrics exposition (asked for by `Accept`): typed families
    /// with their units, and the closing `# EOF`.
    #[test]
    fn openmetrics_on_request() {
        let st = status();
        let f = Format::from_accept(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ));
        assert_eq!(f, Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        let m = st.metrics(f);
        assert!(m.ends_with("# EOF\n"), "{m}");
        assert!(
            m.contains("\n# TYPE ferry_records_rejected counter\n"),
            "{m}"
        );
        assert!(
            m.contains("\n# TYPE ferry_lag_seconds gauge\n# UNIT ferry_lag_seconds seconds\n"),
            "{m}"
        );
        assert!(m.contains("\nferry_records_rejected_total{group=\"gr\",reason=\"checksum\"} 1\n"));
    }

    #[test]
    fn listener_metrics() {
        let mut st = status();
        st.accept_errors = 3;
        st.auth_refused = 3;
        st.auth_refused_by = vec![("pending_limit".into(), 2), ("key".into(), 1)];
        let m = st.prometheus();
        assert!(
            m.contains("\nferry_accept_errors_total{group=\"gr\"} 3\n"),
            "{m}"
        );
        assert!(m.contains("\nferry_auth_refused_total{group=\"gr\",reason=\"pending_limit\"} 2\n"));
        assert!(m.contains("\nferry_auth_refused_total{group=\"gr\",reason=\"key\"} 1\n"));
        assert!(m.contains("\nferry_auth_refused_total{group=\"gr\",reason=\"tls\"} 0\n"));
        assert!(m.contains("\nferry_records_rejected_total{group=\"gr\",reason=\"checksum\"} 1\n"));
        assert!(m.contains("\nferry_records_rejected_total{group=\"gr\",reason=\"tail\"} 0\n"));
        assert!(m.contains("\nferry_state{group=\"gr\",state=\"idle\"} 1\n"));
        assert!(m.contains("\nferry_state{group=\"gr\",state=\"applying\"} 0\n"));
        // A document without the reasons (an older ferryd's) still reads.
        let mut old = status();
        old.auth_refused = 4;
        let json = serde_json::to_value(&old).unwrap();
        let mut json = json.as_object().unwrap().clone();
        json.remove("auth_refused_by");
        json.remove("accept_errors");
        let back: Status = serde_json::from_value(json.into()).unwrap();
        assert_eq!((back.auth_refused, back.accept_errors), (4, 0));
    }

    /// The `STATUS=` line: state and lag, the role's counts, what stopped.
    #[test]
    fn summaries() {
        let mut st = status();
        st.streams = vec![
            Stream {
                device: 0,
                connected: true,
                lag_records: 3,
                lag_bytes: 12288,
                lag_seconds: 0.25,
                ..Stream::default()
            },
            Stream {
                device: 1,
                lag_records: 1,
                lag_bytes: 4096,
                lag_seconds: 1.04,
                ..Stream::default()
            },
        ];
        st.applied_epoch = 41;
        assert_eq!(
            st.summary(),
            "idle, 1/2 streams connected, lag 4 records (16.0 KiB), 1.0 s, applied interval 41"
        );
        st.state = "applying".into();
        st.applying_epoch = 43;
        st.apply_error = Some("a record\nof 2 MiB".into());
        st.streams[1].log_stopped = Some("damaged".into());
        st.g2_violations = 2;
        assert_eq!(
            st.summary(),
            "applying, 1/2 streams connected, lag 4 records (16.0 KiB), 1.0 s, applied interval 41, applying to 43; APPLY STOPPED: a record of 2 MiB; REMOTE LOG STOPPED (device 1); G2 BROKEN (2)"
        );
        let mut p = status();
        p.role = Role::Primary;
        p.state = "replicating".into();
        assert_eq!(
            p.summary(),
            "replicating, 0/0 streams connected, lag 0 records (0 B), 0.0 s"
        );
        p.disk_spool_records = 9;
        p.disk_spool_bytes = 3 << 30;
        assert!(p.summary().ends_with(", disk spool 9 records (3.0 GiB)"));
        p.apply_error = Some("x".repeat(1000));
        assert_eq!(p.summary().len(), 403);
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(5 << 40), "5.0 TiB");
        assert_eq!(human_bytes(5 << 50), "5120.0 TiB");
    }

    #[test]
    fn a_stopped_remote_log_shows() {
        let mut st = status();
        st.streams = vec![
            Stream {
                device: 1,
                ..Stream::default()
            },
            Stream {
                device: 2,
                log_stopped: Some("damaged".into()),
                ..Stream::default()
            },
        ];
        let m = st.prometheus();
        assert!(m.contains("\nferry_remote_log_stopped{group=\"gr\",device=\"1\"} 0\n"));
        assert!(m.contains("\nferry_remote_log_stopped{group=\"gr\",device=\"2\"} 1\n"));
        let json = serde_json::to_value(&st.streams[0]).unwrap();
        let mut json = json.as_object().unwrap().clone();
        json.remove("log_stopped");
        let back: Stream = serde_json::from_value(json.into()).unwrap();
        assert!(back.log_stopped.is_none());
    }

    /// A full remote log or disk spool shows in the document and its
    /// gauge; a document of an older ferryd (without them) still reads.
    #[test]
    fn a_full_directory_shows() {
        let mut st = status();
        let m = st.prometheus();
        assert!(
            m.contains("\nferry_remote_log_full{group=\"gr\"} 0\n"),
            "{m}"
        );
        assert!(
            m.contains("\nferry_disk_spool_full{group=\"gr\"} 0\n"),
            "{m}"
        );
        st.log_full = Some("write: No space left on device (os error 28)".into());
        st.spool_full = Some("no space".into());
        let m = st.prometheus();
        assert!(
            m.contains("\nferry_remote_log_full{group=\"gr\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("\nferry_disk_spool_full{group=\"gr\"} 1\n"),
            "{m}"
        );
        let json = serde_json::to_value(&st).unwrap();
        assert!(json["log_full"].as_str().unwrap().contains("No space"));
        let mut json = json.as_object().unwrap().clone();
        for f in ["log_full", "spool_full", "spool_error"] {
            json.remove(f);
        }
        let back: Status = serde_json::from_value(json.into()).unwrap();
        assert!(back.log_full.is_none() && back.spool_full.is_none() && back.spool_error.is_none());
    }
}
