//! `ferryctl status` for people: the status document in lines of words,
//! bytes in B/KiB/MiB/GiB/TiB, times in seconds, and the group's health.

use std::fmt::Write;

use crate::config::Role;
use crate::ctl::{Released, Started};
use crate::health::Assessment;
use crate::status::Status;

/// `n` bytes for people: `512 B`, `1.5 KiB`, `12.0 MiB`, `2.3 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `s` seconds for people: `0.2 s`.
pub fn seconds(s: f64) -> String {
    format!("{s:.1} s")
}

/// Counts by reason, those above 0: `key 2, tls 1`; `none` when none.
fn by_reason(v: &[(String, u64)]) -> String {
    let l: Vec<String> = v
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    if l.is_empty() {
        "none".into()
    } else {
        l.join(", ")
    }
}

/// The document `s` and its health `h`, as `ferryctl status` prints them.
pub fn status(s: &Status, h: &Assessment) -> String {
    let mut o = String::new();
    // Writing to a String does not fail.
    let _ = write_status(&mut o, s, h);
    o
}

fn write_status(o: &mut String, s: &Status, h: &Assessment) -> std::fmt::Result {
    let full = if s.resync_full && matches!(s.state.as_str(), "resyncing" | "ahead") {
        " (full copy)"
    } else {
        ""
    };
    write!(
        o,
        "group {}: {}, {}{full}; applied interval {}",
        s.group, s.role, s.state, s.applied_epoch
    )?;
    if s.applying_epoch > 0 {
        write!(o, ", applying {}", s.applying_epoch)?;
    }
    writeln!(o)?;
    let (got, done) = match s.role {
        Role::Primary => ("read", "acknowledged"),
        Role::Secondary => ("held", "applied"),
    };
    for d in &s.streams {
        writeln!(
            o,
            "  device {}: link {}; {got} {}, {done} {}; lag {} records, {}, {}; {} of records, {} on the wire",
            d.device,
            if d.connected { "up" } else { "down" },
            d.received,
            d.done,
            d.lag_records,
            bytes(d.lag_bytes),
            seconds(d.lag_seconds),
            bytes(d.record_bytes),
            bytes(d.wire_bytes),
        )?;
        if let Some(why) = &d.log_stopped {
            writeln!(o, "    REMOTE LOG STOPPED: {why}")?;
        }
    }
    match s.role {
        Role::Primary => {
            writeln!(
                o,
                "  records not acknowledged {}; in the disk spool {} ({})",
                s.spool_records,
                s.disk_spool_records,
                bytes(s.disk_spool_bytes)
            )?;
            if let Some(why) = &s.spool_full {
                writeln!(o, "  DISK SPOOL FULL: {why}")?;
            }
            if let Some(why) = &s.spool_error {
                writeln!(o, "  DISK SPOOL ERROR: {why}")?;
            }
            if s.state == "resyncing" {
                writeln!(o, "  resync: {}", s.resync_progress())?;
            }
            if !s.initial_sync.is_empty() {
                writeln!(
                    o,
                    "  resync {}, initial_sync {}",
                    s.resync_mode, s.initial_sync
                )?;
            }
            if s.state == "ahead" || s.dirty_chunks > 0 || s.resync_note.is_some() {
                write!(o, "  dirty chunks {}", s.dirty_chunks)?;
                match &s.resync_note {
                    Some(n) => writeln!(o, "; {n}")?,
                    None => writeln!(o)?,
                }
            }
            if s.resync_room_refusals > 0 {
                writeln!(
                    o,
                    "  resyncs the secondary refused for room in its log_dir: {}",
                    s.resync_room_refusals
                )?;
            }
        }
        Role::Secondary => {
            if let Some(why) = &s.log_full {
                writeln!(o, "  LOG DIR FULL: {why}")?;
            }
            if let Some(why) = &s.apply_error {
                writeln!(o, "  APPLYING STOPPED: {why}")?;
            }
            if s.resync_room_refusals > 0 {
                write!(
                    o,
                    "  resyncs refused for room in log_dir: {}",
                    s.resync_room_refusals
                )?;
                match &s.resync_room {
                    Some(r) => writeln!(o, ", the last {}", r.figures())?,
                    None => writeln!(o)?,
                }
            }
            if s.inconsistent {
                writeln!(
                    o,
                    "  NO CONSISTENT POINT: the initial full copy is in progress (promote refused \
                     until its span is applied; promote --force takes the devices as they are)"
                )?;
            }
            if s.resync_span_open {
                writeln!(
                    o,
                    "  resync span open: {} intervals staged ({} records, {}), {}",
                    s.resync_span_intervals,
                    s.resync_span_records,
                    bytes(s.resync_span_bytes),
                    if s.state == "released" {
                        format!(
                            "not applied: released at interval {}, the primary's image before the resync",
                            s.applied_epoch
                        )
                    } else {
                        "not applied until the span's end arrives".to_string()
                    }
                )?;
            }
            match &s.consistency_point {
                Some(p) => writeln!(
                    o,
                    "  last consistency point held: {} ({})",
                    p.cp_id, p.label
                )?,
                None => writeln!(o, "  no consistency point held")?,
            }
            if s.g2_violations > 0 {
                writeln!(
                    o,
                    "  G2 BROKEN: {} log records became durable after a data record of a later group order",
                    s.g2_violations
                )?;
            }
        }
    }
    let rejected: u64 = s.rejected.iter().map(|(_, n)| n).sum();
    if s.auth_refused > 0 || rejected > 0 {
        writeln!(
            o,
            "  peers refused {} ({}); records rejected {} ({})",
            s.auth_refused,
            by_reason(&s.auth_refused_by),
            rejected,
            by_reason(&s.rejected)
        )?;
    }
    if s.accept_errors > 0 {
        writeln!(o, "  accept errors {} (survived)", s.accept_errors)?;
    }
    write!(o, "health: {}", h.health.word())?;
    for r in &h.reasons {
        write!(o, "\n  {r}")?;
    }
    writeln!(o)
}

/// What `ferryctl promote` says of the release: where the devices are,
/// and what an open resync span had staged and was not applied.
pub fn released(r: &Released) -> String {
    let mut l = format!(
        "ferryd applied up to interval {} and released the device",
        r.applied_epoch
    );
    if let Some(d) = &r.span_dropped {
        l.push_str(&format!(
            "; a resync span was open: its {} intervals staged ({} records, {}) were not applied \
             (resync span open: not applied), the devices hold interval {}, the primary's image \
             before the resync began",
            d.intervals,
            d.records,
            bytes(d.bytes),
            r.applied_epoch
        ));
    }
    if r.inconsistent {
        l.push_str(
            "; FORCED with no consistent point: the initial full copy was not applied, the \
             chunks it had not copied hold the devices' own earlier content, unrelated to the \
             primary's",
        );
    }
    l
}

/// What `ferryctl resync` says of the `START` the kernel took.
pub fn started(group: &str, r: &Started) -> String {
    if r.full {
        return format!(
            "full resync of group {group} started (it was {}): every chunk of every device is copied to the secondary (ferryctl resync {group} --wait follows it)",
            r.was
        );
    }
    match r.was.as_str() {
        "ahead" => format!(
            "resync of group {group} started: {} dirty chunks to copy (ferryctl resync {group} --wait follows it)",
            r.dirty_chunks
        ),
        "resyncing" => format!("group {group} is resyncing already: START changed nothing"),
        "replicating" if r.dirty_chunks > 0 => format!(
            "resync of group {group} started: {} dirty chunks to copy while replicating (ferryctl resync {group} --wait follows it)",
            r.dirty_chunks
        ),
        "replicating" => {
            format!("group {group} is replicating: nothing to resync (START changed nothing)")
        }
        other => format!(
            "START taken by the kernel (the group's state before it: {other}; ferryctl status {group} says more)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{assess, tests::secondary};

    #[test]
    fn a_start_in_words() {
        let r = |was: &str| Started {
            was: was.into(),
            dirty_chunks: 7,
            full: false,
        };
        assert_eq!(
            started("gr", &r("ahead")),
            "resync of group gr started: 7 dirty chunks to copy (ferryctl resync gr --wait follows it)"
        );
        assert_eq!(
            started("gr", &r("replicating")),
            "resync of group gr started: 7 dirty chunks to copy while replicating (ferryctl resync gr --wait follows it)"
        );
        let clean = Started {
            dirty_chunks: 0,
            ..r("replicating")
        };
        assert!(started("gr", &clean).contains("nothing to resync"));
        let full = Started {
            full: true,
            ..clean
        };
        assert_eq!(
            started("gr", &full),
            "full resync of group gr started (it was replicating): every chunk of every device is copied to the secondary (ferryctl resync gr --wait follows it)"
        );
        assert!(started("gr", &r("resyncing")).contains("resyncing already"));
        assert!(started("gr", &r("unknown")).contains("START taken"));
    }

    #[test]
    fn a_resync_of_the_primary_in_words() {
        let mut s = secondary();
        s.role = Role::Primary;
        s.rejected.clear();
        s.state = "ahead".into();
        s.resync_mode = "auto".into();
        s.dirty_chunks = 40;
        s.resync_note = Some("automatic resync: waiting for every stream to connect".into());
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains(
                "\n  dirty chunks 40; automatic resync: waiting for every stream to connect\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n  ahead: the kernel stopped replicating and tracks writes in its bitmap (a resync is needed); automatic resync: waiting for every stream to connect\n"),
            "{text}"
        );
        s.resync_note = Some("manual resync (resync = \"manual\"): ferryctl resync db".into());
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains(
                "\n  dirty chunks 40; manual resync (resync = \"manual\"): ferryctl resync db\n"
            ),
            "{text}"
        );
        s.state = "resyncing".into();
        s.resync_note = None;
        s.resync_chunks_left = 30;
        s.resync_chunks_total = 40;
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.starts_with("group db: primary, resyncing; applied interval 7\n"),
            "{text}"
        );
        s.resync_full = true;
        s.initial_sync = "full".into();
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.starts_with("group db: primary, resyncing (full copy); applied interval 7\n"),
            "{text}"
        );
        assert!(
            text.contains("\n  resync auto, initial_sync full\n"),
            "{text}"
        );
        // Done: replicating, the full copy not said.
        s.state = "replicating".into();
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.starts_with("group db: primary, replicating; applied interval 7\n"),
            "{text}"
        );
        // A full copy needed and not started: said, and degraded.
        s.resync_full = false;
        s.dirty_chunks = 0;
        s.resync_note = Some("a full copy is needed (...): ferryctl resync --full db".into());
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains(
                "\n  dirty chunks 0; a full copy is needed (...): ferryctl resync --full db\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n  replicating, a resync is needed: a full copy is needed (...)"),
            "{text}"
        );
        s.state = "resyncing".into();
        s.resync_note = None;
        s.dirty_chunks = 40;
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains("\n  resync: 30 of 40 chunks left\n"),
            "{text}"
        );
        assert!(text.contains("\n  dirty chunks 40\n"), "{text}");
        assert!(text.contains("\nhealth: degraded\n"), "{text}");
        assert!(
            text.contains(
                "\n  resyncing: the dirty chunks are being copied, 30 of 40 chunks left;"
            ),
            "{text}"
        );
        s.resync_bytes_left = Some(30 << 16);
        s.resync_bytes_total = Some(40 << 16);
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains("\n  resync: 30 of 40 chunks left (1.9 MiB of 2.5 MiB)\n"),
            "{text}"
        );
    }

    /// A resync refused for room: the primary's note names both
    /// numbers, and the count; the secondary's count and last figures.
    #[test]
    fn a_resync_refused_for_room_in_words() {
        let no = crate::room::NoRoom {
            need: 33_624_400,
            available: 8 << 20,
            reserve: 64 << 20,
            log_dir: "/var/lib/ferry/gr".into(),
        };
        let mut s = secondary();
        s.role = Role::Primary;
        s.rejected.clear();
        s.state = "ahead".into();
        s.dirty_chunks = 512;
        s.resync_room_refusals = 3;
        s.resync_note = Some(no.words("and the resync starts by itself"));
        s.resync_room = Some(no.clone());
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains(
                "\n  dirty chunks 512; resync refused by the secondary: it needs 32.1 MiB in its \
                 log_dir (/var/lib/ferry/gr), 0 B are free (8.0 MiB available, less its reserve \
                 of 64.0 MiB); free space there, or raise it, and the resync starts by itself\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n  resyncs the secondary refused for room in its log_dir: 3\n"),
            "{text}"
        );
        let mut s = secondary();
        assert!(!status(&s, &assess(&s, 30.0)).contains("refused for room"));
        s.resync_room_refusals = 2;
        s.resync_room = Some(no);
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains(
                "\n  resyncs refused for room in log_dir: 2, the last needed 32.1 MiB, 0 B free \
                 (8.0 MiB available less the reserve of 64.0 MiB) in /var/lib/ferry/gr\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 << 20), "12.0 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(bytes(3 << 40), "3.0 TiB");
        assert_eq!(bytes(1 << 60), "1048576.0 TiB");
        assert_eq!(seconds(0.25), "0.2 s");
        assert_eq!(seconds(12.0), "12.0 s");
    }

    #[test]
    fn a_secondary_in_words() {
        let mut s = secondary();
        s.streams[0].lag_bytes = 3 << 20;
        s.streams[0].lag_seconds = 1.25;
        s.streams[0].received = 10;
        s.streams[0].done = 7;
        s.streams[0].lag_records = 3;
        s.streams[1].connected = false;
        s.streams[1].log_stopped = Some("damage at 4096".into());
        s.apply_error = Some("EIO".into());
        s.auth_refused = 3;
        s.auth_refused_by = vec![("key".into(), 2), ("tls".into(), 1), ("hello".into(), 0)];
        s.rejected = vec![("checksum".into(), 1)];
        s.consistency_point = Some(crate::cpoints::Point {
            cp_id: 4,
            label: "nightly".into(),
        });
        let text = status(&s, &assess(&s, 30.0));
        assert_eq!(
            text,
            "group db: secondary, idle; applied interval 7
  device 0: link up; held 10, applied 7; lag 3 records, 3.0 MiB, 1.2 s; 0 B of records, 0 B on the wire
  device 1: link down; held 0, applied 0; lag 0 records, 0 B, 0.0 s; 0 B of records, 0 B on the wire
    REMOTE LOG STOPPED: damage at 4096
  APPLYING STOPPED: EIO
  last consistency point held: 4 (nightly)
  peers refused 3 (key 2, tls 1); records rejected 1 (checksum 1)
health: degraded
  device 1: link down
  device 1: remote log stopped: damage at 4096
  applying stopped: EIO
"
        );
    }

    #[test]
    fn a_resync_span_in_words() {
        let mut s = secondary();
        s.resync_span_open = true;
        s.resync_span_intervals = 6;
        s.resync_span_records = 300;
        s.resync_span_bytes = 5 << 20;
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains("\n  resync span open: 6 intervals staged (300 records, 5.0 MiB), not applied until the span's end arrives\n"),
            "{text}"
        );
        s.state = "released".into();
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains("\n  resync span open: 6 intervals staged (300 records, 5.0 MiB), not applied: released at interval 7, the primary's image before the resync\n"),
            "{text}"
        );
        let mut r = Released {
            applied_epoch: 7,
            span_dropped: None,
            inconsistent: false,
        };
        assert_eq!(
            released(&r),
            "ferryd applied up to interval 7 and released the device"
        );
        r.span_dropped = Some(crate::ctl::SpanDropped {
            intervals: 6,
            records: 300,
            bytes: 5 << 20,
        });
        assert_eq!(
            released(&r),
            "ferryd applied up to interval 7 and released the device; a resync span was open: \
             its 6 intervals staged (300 records, 5.0 MiB) were not applied (resync span open: \
             not applied), the devices hold interval 7, the primary's image before the resync began"
        );
    }

    #[test]
    fn a_primary_in_words() {
        let mut s = secondary();
        s.role = Role::Primary;
        s.state = "replicating".into();
        s.applying_epoch = 8;
        s.spool_records = 5;
        s.disk_spool_records = 2;
        s.disk_spool_bytes = 2 << 20;
        s.rejected.clear();
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.starts_with("group db: primary, replicating; applied interval 7, applying 8\n  device 0: link up; read 0, acknowledged 0;"),
            "{text}"
        );
        assert!(text.contains("\n  records not acknowledged 5; in the disk spool 2 (2.0 MiB)\n"));
        assert!(text.ends_with("\nhealth: healthy\n"), "{text}");
        assert!(
            !text.contains("resync") && !text.contains("dirty"),
            "{text}"
        );
        // No Rust debug formatting: no brackets, no quoted strings.
        assert!(!text.contains('[') && !text.contains('"'), "{text}");
    }

    #[test]
    fn no_consistent_point_in_words() {
        let mut s = Status {
            group: "db".into(),
            role: Role::Secondary,
            state: "idle".into(),
            applied_epoch: 1,
            inconsistent: true,
            ..Status::default()
        };
        let text = status(&s, &assess(&s, 30.0));
        assert!(
            text.contains("\n  NO CONSISTENT POINT: the initial full copy is in progress"),
            "{text}"
        );
        assert!(
            text.contains("\nhealth: degraded\n") && text.contains("\n  no consistent point: "),
            "{text}"
        );
        assert!(
            s.summary().contains("NO CONSISTENT POINT"),
            "{}",
            s.summary()
        );
        s.inconsistent = false;
        assert!(!status(&s, &assess(&s, 30.0)).contains("CONSISTENT"));
        let r = Released {
            applied_epoch: 1,
            span_dropped: None,
            inconsistent: true,
        };
        assert!(released(&r).contains("FORCED with no consistent point"));
    }
}
