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
            "remote_log_stopped",
            "Secondary: the stream's remote log takes no more records (see the log and the status)",
            per(&|s| f64::from(u8::from(s.log_stopped.is_some()))),
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
            "Peers refused, by reason",
            if self.auth_refused_by.is_empty() {
                vec![(String::new(), self.auth_refused as f64)]
            } else {
                self.auth_refused_by
                    .iter()
                    .map(|(r, n)| (format!(",reason=\"{r}\""), *n as f64))
                    .collect()
            },
        );
        gauge(
            "accept_errors_total",
            "Secondary: errors accepting a connection",
            vec![(String::new(), self.accept_errors as f64)],
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
        }
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
        assert!(m.contains("\nferry_records_rejected_total{group=\"gr\",reason=\"checksum\"} 1\n"));
        // A document without the reasons (a primary's, an older ferryd's).
        let mut old = status();
        old.auth_refused = 4;
        assert!(old
            .prometheus()
            .contains("\nferry_auth_refused_total{group=\"gr\"} 4\n"));
        let json = serde_json::to_value(&old).unwrap();
        let mut json = json.as_object().unwrap().clone();
        json.remove("auth_refused_by");
        json.remove("accept_errors");
        let back: Status = serde_json::from_value(json.into()).unwrap();
        assert_eq!((back.auth_refused, back.accept_errors), (4, 0));
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
}
