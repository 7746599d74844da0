//! `ferryctl events`: a group's state changes as JSON lines, after
//! drbdsetup's `events2`.
//!
//! `ferryctl` polls `ferryd`'s status document and reduces each to a
//! [`Snapshot`]: the group (role, state, whether the kernel is ahead, why
//! applying stopped, the last consistency point held) and its streams
//! (link up, why the remote log stopped).  The first snapshot is printed
//! as `exists` events, one for the group then one per stream; each later
//! one is compared with the one before ([`diff`]) and what differs printed
//! as `change` events (a stream that appears: `create`; one that is gone:
//! `destroy`).  Counters and lag, which move all the time, are not events.
//!
//! Each event is one line, one JSON object:
//!
//! ```text
//! {"time":"2025-01-02T03:04:05.678Z","event":"exists","group":"db","object":"group",
//!  "role":"secondary","state":"idle","ahead":false,"apply_error":null,"consistency_point":null}
//! {"time":"...","event":"change","group":"db","object":"stream","device":1,
//!  "connected":false,"log_stopped":null,"changed":["connected"]}
//! ```
//!
//! A `ferryd` that cannot be reached is a group of state `unreachable`
//! without streams (they are destroyed, and created again when it
//! answers).

use std::time::SystemTime;

use serde::Serialize;

use crate::config::Role;
use crate::cpoints::Point;
use crate::status::Status;

/// The state a group is shown in when its `ferryd` does not answer.
pub const UNREACHABLE: &str = "unreachable";

/// The group's part of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupView {
    pub role: Role,
    /// The document's `state`, or [`UNREACHABLE`].
    pub state: String,
    /// The kernel says the primary is ahead (resync needed).
    pub ahead: bool,
    /// Secondary: why applying stopped, `null` while it goes on.
    pub apply_error: Option<String>,
    /// Secondary: the last consistency point held.
    pub consistency_point: Option<Point>,
}

/// A stream's part of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamView {
    pub device: u32,
    /// Its link is up.
    pub connected: bool,
    /// Secondary: why its remote log stopped, `null` while it works.
    pub log_stopped: Option<String>,
}

/// What events are about, of one status document.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub group: String,
    pub view: GroupView,
    /// By device id.
    pub streams: Vec<StreamView>,
}

impl Snapshot {
    /// Of the document `s`.
    pub fn of(s: &Status) -> Self {
        let mut streams: Vec<StreamView> = s
            .streams
            .iter()
            .map(|d| StreamView {
                device: d.device,
                connected: d.connected,
                log_stopped: d.log_stopped.clone(),
            })
            .collect();
        streams.sort_by_key(|d| d.device);
        Self {
            group: s.group.clone(),
            view: GroupView {
                role: s.role,
                state: s.state.clone(),
                ahead: s.role == Role::Primary && s.state == "ahead",
                apply_error: s.apply_error.clone(),
                consistency_point: s.consistency_point.clone(),
            },
            streams,
        }
    }

    /// Of a group (of role `role`, from its configuration) whose `ferryd`
    /// does not answer.
    pub fn unreachable(group: &str, role: Role) -> Self {
        Self {
            group: group.to_string(),
            view: GroupView {
                role,
                state: UNREACHABLE.into(),
                ahead: false,
                apply_error: None,
                consistency_point: None,
            },
            streams: Vec::new(),
        }
    }
}

/// The kind of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The state when `ferryctl events` started.
    Exists,
    /// A stream that was not there.
    Create,
    /// Something of the object changed (`changed` names what).
    Change,
    /// A stream that is no longer there.
    Destroy,
}

/// What an event is about, and all its fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "object", rename_all = "lowercase")]
pub enum Object {
    Group(GroupView),
    Stream(StreamView),
}

/// One event, a line of `ferryctl events`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub event: Kind,
    #[serde(flatten)]
    pub object: Object,
    /// The fields that changed (`change` events only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// An event's line, stamped `time`: `time`, `event`, `object`, `group`,
/// then the object's fields.
pub fn line(group: &str, e: &Event, time: SystemTime) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        time: String,
        event: Kind,
        group: &'a str,
        #[serde(flatten)]
        object: &'a Object,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        changed: &'a [String],
    }
    // Serialising these plain structs does not fail.
    serde_json::to_string(&Line {
        time: rfc3339(time),
        event: e.event,
        group,
        object: &e.object,
        changed: &e.changed,
    })
    .unwrap_or_default()
}

/// The fields of `a` and `b` (objects of one type) that differ, in
/// alphabetical order.
fn changed<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Vec::new();
    };
    let mut c: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    c.sort();
    c
}

/// The events from `old` to `new`: with no `old`, the `exists` events of
/// `new` (the group, then each stream); otherwise the group's change if
/// any, then its streams' changes, creations and destructions, by device.
pub fn diff(old: Option<&Snapshot>, new: &Snapshot) -> Vec<Event> {
    let Some(old) = old else {
        return std::iter::once(Object::Group(new.view.clone()))
            .chain(new.streams.iter().cloned().map(Object::Stream))
            .map(|object| Event {
                event: Kind::Exists,
                object,
                changed: Vec::new(),
            })
            .collect();
    };
    let mut v = Vec::new();
    let c = changed(&old.view, &new.view);
    if !c.is_empty() {
        v.push(Event {
            event: Kind::Change,
            object: Object::Group(new.view.clone()),
            changed: c,
        });
    }
    let mut devices: Vec<u32> = old
        .streams
        .iter()
        .chain(&new.streams)
        .map(|d| d.device)
        .collect();
    devices.sort_unstable();
    devices.dedup();
    for dev in devices {
        let a = old.streams.iter().find(|d| d.device == dev);
        let b = new.streams.iter().find(|d| d.device == dev);
        let (event, s, changed) = match (a, b) {
            (None, Some(b)) => (Kind::Create, b, Vec::new()),
            (Some(a), None) => (Kind::Destroy, a, Vec::new()),
            (Some(a), Some(b)) => {
                let c = changed(a, b);
                if c.is_empty() {
                    continue;
                }
                (Kind::Change, b, c)
            }
            (None, None) => continue,
        };
        v.push(Event {
            event,
            object: Object::Stream(s.clone()),
            changed,
        });
    }
    v
}

/// `t` in RFC 3339, UTC, to the millisecond: `2025-01-02T03:04:05.678Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's
    // `civil_from_days`, for days >= 0).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::secondary;
    use std::time::Duration;

    fn at(secs: u64, ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_735_787_045, 678)), "2025-01-02T03:04:05.678Z");
        assert_eq!(rfc3339(at(4_102_444_799, 999)), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn the_first_lines_are_exists() {
        let s = Snapshot::of(&secondary());
        let ev = diff(None, &s);
        assert_eq!(ev.len(), 3);
        assert!(ev.iter().all(|e| e.event == Kind::Exists));
        let lines: Vec<String> = ev.iter().map(|e| line("db", e, at(0, 0))).collect();
        assert_eq!(
            lines[0],
            r#"{"time":"1970-01-01T00:00:00.000Z","event":"exists","group":"db","object":"group","role":"secondary","state":"idle","ahead":false,"apply_error":null,"consistency_point":null}"#
        );
        assert_eq!(
            lines[2],
            r#"{"time":"1970-01-01T00:00:00.000Z","event":"exists","group":"db","object":"stream","device":1,"connected":true,"log_stopped":null}"#
        );
        assert!(diff(Some(&s), &s).is_empty(), "nothing changed, no event");
    }

    #[test]
    fn each_watched_field_changes() {
        let base = secondary();
        let old = Snapshot::of(&base);
        type Change = fn(&mut Status);
        let cases: [(Change, &str, &str); 6] = [
            (|s| s.streams[1].connected = false, "stream", "connected"),
            (
                |s| s.streams[0].log_stopped = Some("x".into()),
                "stream",
                "log_stopped",
            ),
            (
                |s| s.apply_error = Some("EIO".into()),
                "group",
                "apply_error",
            ),
            (
                |s| {
                    s.consistency_point = Some(Point {
                        cp_id: 3,
                        label: "l".into(),
                    })
                },
                "group",
                "consistency_point",
            ),
            (|s| s.state = "applying".into(), "group", "state"),
            (
                // Counters and lag are not events.
                |s| {
                    s.streams[0].lag_records = 9;
                    s.applied_epoch = 99
                },
                "",
                "",
            ),
        ];
        for (change, object, field) in cases {
            let mut st = base.clone();
            change(&mut st);
            let ev = diff(Some(&old), &Snapshot::of(&st));
            if object.is_empty() {
                assert!(ev.is_empty(), "{ev:?}");
                continue;
            }
            assert_eq!(ev.len(), 1, "{ev:?}");
            assert_eq!(ev[0].event, Kind::Change);
            assert_eq!(ev[0].changed, [field]);
            let l = line("db", &ev[0], at(0, 0));
            assert!(l.contains(&format!("\"object\":\"{object}\"")), "{l}");
            assert!(l.ends_with(&format!(",\"changed\":[\"{field}\"]}}")), "{l}");
        }
    }

    #[test]
    fn a_primary_going_ahead() {
        let mut st = secondary();
        st.role = Role::Primary;
        st.state = "replicating".into();
        let old = Snapshot::of(&st);
        st.state = "ahead".into();
        let ev = diff(Some(&old), &Snapshot::of(&st));
        assert_eq!(ev[0].changed, ["ahead", "state"]);
        let Object::Group(g) = &ev[0].object else {
            panic!("{ev:?}")
        };
        assert!(g.ahead);
    }

    #[test]
    fn unreachable_destroys_the_streams_and_back() {
        let live = Snapshot::of(&secondary());
        let gone = Snapshot::unreachable("db", Role::Secondary);
        let ev = diff(Some(&live), &gone);
        let kinds: Vec<Kind> = ev.iter().map(|e| e.event).collect();
        assert_eq!(kinds, [Kind::Change, Kind::Destroy, Kind::Destroy]);
        assert_eq!(ev[0].changed, ["state"]);
        let back = diff(Some(&gone), &live);
        let kinds: Vec<Kind> = back.iter().map(|e| e.event).collect();
        assert_eq!(kinds, [Kind::Change, Kind::Create, Kind::Create]);
        let l = line("db", &back[1], at(0, 0));
        assert!(
            l.contains("\"event\":\"create\"") && !l.contains("changed"),
            "{l}"
        );
    }
}
