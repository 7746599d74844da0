//! A group's health, from its status document: what `ferryctl status`
//! (and `ferryctl events --once`) exit with.
//!
//! * [`Health::Healthy`] (exit 0): a primary `replicating`, a secondary
//!   `idle` or `applying`, every stream's link up, nothing stopped, no
//!   stream's lag beyond the threshold.
//! * [`Health::Error`] (exit 1): `ferryd` cannot be reached, the arguments
//!   are wrong, the command failed.  Never from a document.
//! * [`Health::Degraded`] (exit 2): a document that says something is
//!   wrong ([`assess`] says what).

use serde::Serialize;

use crate::config::Role;
use crate::status::Status;

/// The version of the document `ferryctl status --json` prints: the
/// status document with this `schema_version` added.  It goes up when a
/// field is removed or changes its meaning, not when one is added.
pub const SCHEMA_VERSION: u32 = 1;

/// The default `--max-lag`: a stream whose `lag_seconds` is beyond it is
/// degraded.
pub const MAX_LAG_SECONDS: f64 = 30.0;

/// How a group is, and `ferryctl`'s exit code for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Exit 0.
    Healthy,
    /// Exit 2.
    Degraded,
    /// Exit 1: `ferryd` not reachable, bad arguments, a command failed.
    Error,
}

impl Health {
    /// The exit code.
    pub fn code(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Error => 1,
            Health::Degraded => 2,
        }
    }

    /// In words: `healthy`, `degraded`, `error`.
    pub fn word(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Error => "error",
        }
    }

    /// The worse of the two (an error is worse than degraded).
    pub fn worst(self, other: Health) -> Health {
        self.max(other)
    }
}

/// A group's health and, when it is not healthy, why (one reason a line,
/// in plain words).
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub health: Health,
    pub reasons: Vec<String>,
}

/// What the document `s` says of the group's health, with streams whose
/// `lag_seconds` exceeds `max_lag` degraded.
pub fn assess(s: &Status, max_lag: f64) -> Assessment {
    let mut r = Vec::new();
    match (s.role, s.state.as_str()) {
        // A resync needed and not started (a full copy to a secondary that
        // holds nothing, dirty chunks): the secondary is no copy yet.
        (Role::Primary, "replicating") if s.resync_note.is_some() => r.push(format!(
            "replicating, a resync is needed: {}",
            s.resync_note.as_deref().unwrap_or_default()
        )),
        (Role::Primary, "replicating") | (Role::Secondary, "idle" | "applying") => {}
        (Role::Primary, "ahead") => {
            let mut l = "ahead: the kernel stopped replicating and tracks writes in its bitmap (a resync is needed)"
                .to_string();
            if let Some(n) = &s.resync_note {
                l.push_str(&format!("; {n}"));
            }
            r.push(l)
        }
        (Role::Primary, "resyncing") => r.push(format!(
            "resyncing: the dirty chunks are being copied, {}; the secondary holds the image before the resync until it is done",
            s.resync_progress()
        )),
        (Role::Primary, "connecting") => r.push("connecting: no stream is connected".to_string()),
        (Role::Secondary, "released") => {
            r.push("released: ferryd let go of the device (promote)".to_string())
        }
        (_, other) => r.push(format!("state {other}")),
    }
    if s.streams.is_empty() {
        r.push("no device stream".to_string());
    }
    for d in &s.streams {
        if !d.connected {
            r.push(format!("device {}: link down", d.device));
        }
        if let Some(why) = &d.log_stopped {
            r.push(format!("device {}: remote log stopped: {why}", d.device));
        }
        if d.lag_seconds > max_lag {
            r.push(format!(
                "device {}: lag {:.1} s, beyond {} s",
                d.device, d.lag_seconds, max_lag
            ));
        }
    }
    if let Some(why) = &s.apply_error {
        r.push(format!("applying stopped: {why}"));
    }
    if s.inconsistent {
        r.push(
            "no consistent point: the initial full copy is in progress (promote is refused \
             until it is applied)"
                .to_string(),
        );
    }
    if let Some(why) = &s.log_full {
        r.push(format!("log_dir full: {why}"));
    }
    if let Some(why) = &s.spool_full {
        r.push(format!("spool_dir full: {why}"));
    }
    if let Some(why) = &s.spool_error {
        r.push(format!("disk spool error: {why}"));
    }
    if s.g2_violations > 0 {
        r.push(format!(
            "G2 broken: {} log records became durable after a data record of a later group order",
            s.g2_violations
        ));
    }
    Assessment {
        health: if r.is_empty() {
            Health::Healthy
        } else {
            Health::Degraded
        },
        reasons: r,
    }
}

/// The exit code of `ferryctl status` for what asking `ferryd` gave: 1
/// when it could not be asked, else the document's health.
pub fn exit_code<E>(got: Result<&Status, E>, max_lag: f64) -> u8 {
    match got {
        Ok(s) => assess(s, max_lag).health.code(),
        Err(_) => Health::Error.code(),
    }
}

/// The status document with its [`SCHEMA_VERSION`] (`ferryctl status
/// --json`): `schema_version` first, then the document's fields.
#[derive(Serialize)]
pub struct Versioned<'a> {
    pub schema_version: u32,
    #[serde(flatten)]
    pub status: &'a Status,
}

impl<'a> Versioned<'a> {
    pub fn new(status: &'a Status) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            status,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::status::Stream;

    /// A healthy secondary of two streams.
    pub(crate) fn secondary() -> Status {
        let mut s: Status = serde_json::from_value(serde_json::json!({
            "group": "db", "role": "secondary", "state": "idle", "streams": [],
            "applied_epoch": 7, "applying_epoch": 0, "spool_records": 0,
            "auth_refused": 0, "rejected": [], "intervals_applied": 7,
            "consistency_point": null
        }))
        .unwrap();
        s.streams = (0..2)
            .map(|device| Stream {
                device,
                connected: true,
                ..Stream::default()
            })
            .collect();
        s
    }

    fn code(s: &Status) -> u8 {
        exit_code(Ok::<_, ()>(s), MAX_LAG_SECONDS)
    }

    #[test]
    fn healthy_states_exit_0() {
        let mut s = secondary();
        assert_eq!(code(&s), 0);
        s.state = "applying".into();
        assert_eq!(code(&s), 0);
        s.role = Role::Primary;
        s.state = "replicating".into();
        assert_eq!(code(&s), 0);
        assert_eq!(assess(&s, 30.0).reasons, Vec::<String>::new());
    }

    #[test]
    fn unreachable_exits_1() {
        assert_eq!(exit_code(Err::<&Status, _>("refused"), 30.0), 1);
    }

    #[test]
    fn each_degradation_exits_2_and_says_why() {
        type Change = fn(&mut Status);
        let cases: [(Change, &str); 13] = [
            (|s| s.streams[1].connected = false, "device 1: link down"),
            (
                |s| {
                    s.role = Role::Primary;
                    s.state = "ahead".into()
                },
                "ahead: the kernel stopped replicating and tracks writes in its bitmap (a resync is needed)",
            ),
            (
                |s| {
                    s.role = Role::Primary;
                    s.state = "connecting".into()
                },
                "connecting: no stream is connected",
            ),
            (
                |s| s.streams[0].log_stopped = Some("rollback failed".into()),
                "device 0: remote log stopped: rollback failed",
            ),
            (
                |s| s.apply_error = Some("EIO".into()),
                "applying stopped: EIO",
            ),
            (
                |s| s.log_full = Some("No space left on device".into()),
                "log_dir full: No space left on device",
            ),
            (
                |s| s.spool_full = Some("No space left on device".into()),
                "spool_dir full: No space left on device",
            ),
            (
                |s| s.spool_error = Some("EIO".into()),
                "disk spool error: EIO",
            ),
            (
                |s| s.streams[1].lag_seconds = 30.5,
                "device 1: lag 30.5 s, beyond 30 s",
            ),
            (
                |s| s.state = "released".into(),
                "released: ferryd let go of the device (promote)",
            ),
            (|s| s.streams.clear(), "no device stream"),
            (
                |s| s.g2_violations = 2,
                "G2 broken: 2 log records became durable after a data record of a later group order",
            ),
            (|s| s.state = "replicating".into(), "state replicating"),
        ];
        for (change, why) in cases {
            let mut s = secondary();
            change(&mut s);
            assert_eq!(code(&s), 2, "{why}");
            assert_eq!(assess(&s, MAX_LAG_SECONDS).reasons, [why]);
        }
        // A lag at the threshold is not beyond it; a threshold of its own.
        let mut s = secondary();
        s.streams[0].lag_seconds = 30.0;
        assert_eq!(code(&s), 0);
        assert_eq!(exit_code(Ok::<_, ()>(&s), 10.0), 2);
    }

    #[test]
    fn worst_of_several() {
        use Health::*;
        assert_eq!(Healthy.worst(Degraded), Degraded);
        assert_eq!(Degraded.worst(Error), Error);
        assert_eq!(Error.worst(Healthy), Error);
        assert_eq!([Healthy, Degraded, Error].map(Health::code), [0, 2, 1]);
    }

    #[test]
    fn json_has_the_schema_version_first() {
        let s = secondary();
        let text = serde_json::to_string(&Versioned::new(&s)).unwrap();
        assert!(
            text.starts_with("{\"schema_version\":1,\"group\":\"db\","),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        // The document's fields, unchanged, beside it.
        let mut doc = serde_json::to_value(&s).unwrap();
        doc.as_object_mut()
            .unwrap()
            .insert("schema_version".into(), 1.into());
        assert_eq!(v, doc);
    }
}
