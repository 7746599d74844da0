//! The status document `ferryd` serves on `GET /status` (JSON) and which
//! `ferryctl status` prints.

use serde::{Deserialize, Serialize};

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
    /// Peers refused (bad key, wrong group or device).
    pub auth_refused: u64,
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
}

impl Status {
    /// The Prometheus text exposition of the document.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let g = &self.group;
        let mut gauge = |name: &str, help: &str, lines: Vec<(String, f64)>| {
            s.push_str(&format!(
                "# HELP ferry_{name} {help}\n# TYPE ferry_{name} gauge\n"
            ));
            for (labels, v) in lines {
                s.push_str(&format!("ferry_{name}{{group=\"{g}\"{labels}}} {v}\n"));
            }
        };
        let per = |f: &dyn Fn(&Stream) -> f64| -> Vec<(String, f64)> {
            self.streams
                .iter()
                .map(|st| (format!(",device=\"{}\"", st.device), f(st)))
                .collect()
        };
        gauge(
            "connected",
            "Link connection of the stream is up",
            per(&|s| f64::from(u8::from(s.connected))),
        );
        gauge(
            "lag_records",
            "Records not yet acknowledged (primary) or applied (secondary)",
            per(&|s| s.lag_records as f64),
        );
        gauge(
            "lag_bytes",
            "Bytes of those records",
            per(&|s| s.lag_bytes as f64),
        );
        gauge(
            "lag_seconds",
            "Primary: age of the oldest record not acknowledged; secondary: primary time between the last record applied and the newest held",
            per(&|s| s.lag_seconds),
        );
        gauge(
            "record_bytes_total",
            "Record bytes shipped or received",
            per(&|s| s.record_bytes as f64),
        );
        gauge(
            "wire_bytes_total",
            "Frame bytes on the link",
            per(&|s| s.wire_bytes as f64),
        );
        gauge(
            "applied_epoch",
            "Last checkpoint interval applied",
            vec![(String::new(), self.applied_epoch as f64)],
        );
        gauge(
            "consistency_point_id",
            "Last consistency point held at the secondary (0: none)",
            vec![(
                String::new(),
                self.consistency_point
                    .as_ref()
                    .map_or(0.0, |p| p.cp_id as f64),
            )],
        );
        gauge(
            "spool_records",
            "Records read from the kernel and not acknowledged",
            vec![(String::new(), self.spool_records as f64)],
        );
        gauge(
            "disk_spool_bytes",
            "Bytes of records in the primary's disk spool",
            vec![(String::new(), self.disk_spool_bytes as f64)],
        );
        gauge(
            "auth_refused_total",
            "Peers refused",
            vec![(String::new(), self.auth_refused as f64)],
        );
        gauge(
            "g2_violations_total",
            "Secondary: log records durable after a data record of a later group order",
            vec![(String::new(), self.g2_violations as f64)],
        );
        gauge(
            "records_rejected_total",
            "Records rejected by reason",
            self.rejected
                .iter()
                .map(|(r, n)| (format!(",reason=\"{r}\""), *n as f64))
                .collect(),
        );
        s
    }
}
