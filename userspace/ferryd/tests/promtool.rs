//! A live scrape of ferryd's status endpoint (`status::serve`, as ferryd
//! runs it), checked by Prometheus's own linter, `promtool check metrics`:
//! a primary and a secondary, each fresh and in the middle of things.
//!
//! promtool comes from Debian's `prometheus` package (scripts/deps.sh puts
//! it in `$FERRY_CACHE/tools/bin`); `FERRY_PROMTOOL` names another.
//! Without it the test fails, unless `FERRY_SKIP_PROMTOOL=1` says to skip
//! (for a developer's machine without it; CI has it).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use ferryd::config::Role;
use ferryd::cpoints::Point;
use ferryd::status::{self, Status, Stream};

/// promtool: `FERRY_PROMTOOL`, the tools deps.sh installs, or on `PATH`.
fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_PROMTOOL") {
        return Some(p.into());
    }
    let tools = std::env::var_os("FERRY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("FERRY_CACHE")
                .map_or_else(|| PathBuf::from("/var/cache/ferry"), PathBuf::from)
                .join("tools")
        });
    let p = tools.join("bin/promtool");
    if p.exists() {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("promtool"))
            .find(|p| p.exists())
    })
}

fn stream(device: u32) -> Stream {
    Stream {
        device,
        ..Stream::default()
    }
}

fn fresh(role: Role, state: &str, devices: &[u32]) -> Status {
    Status {
        group: "db".into(),
        role,
        state: state.into(),
        streams: devices.iter().map(|&d| stream(d)).collect(),
        applied_epoch: 0,
        applying_epoch: 0,
        spool_records: 0,
        auth_refused: 0,
        auth_refused_by: Vec::new(),
        accept_errors: 0,
        rejected: Vec::new(),
        intervals_applied: 0,
        consistency_point: None,
        disk_spool_records: 0,
        disk_spool_bytes: 0,
        g2_violations: 0,
        apply_error: None,
        log_full: None,
        spool_full: None,
        spool_error: None,
        resync_span_open: false,
        resync_span_intervals: 0,
        resync_span_records: 0,
        resync_span_bytes: 0,
        resync_spans_applied: 0,
        ..Status::default()
    }
}

/// A primary shipping two devices, one connected, one spooling to disk.
fn primary() -> Status {
    let mut st = fresh(Role::Primary, "replicating", &[0, 1]);
    st.streams[0] = Stream {
        device: 0,
        connected: true,
        received: 1_204,
        done: 1_200,
        lag_records: 4,
        lag_bytes: 16_384,
        lag_seconds: 0.012,
        record_bytes: 52_428_800,
        wire_bytes: 20_971_520,
        ..Stream::default()
    };
    st.streams[1] = Stream {
        device: 1,
        connected: false,
        received: 90_000,
        done: 10_000,
        lag_records: 80_000,
        lag_bytes: 327_680_000,
        lag_seconds: 42.5,
        record_bytes: 1 << 33,
        wire_bytes: 1 << 32,
        ..Stream::default()
    };
    st.applied_epoch = 311;
    st.spool_records = 80_004;
    st.disk_spool_records = 79_000;
    st.disk_spool_bytes = 323_584_000;
    st.resync_room_refusals = 4;
    st
}

/// A secondary applying, that refused peers and records, holds a
/// consistency point, stages a resync span, with a stopped remote log and
/// an apply error.
fn secondary() -> Status {
    let mut st = fresh(Role::Secondary, "applying", &[0, 1, 2]);
    for (i, s) in st.streams.iter_mut().enumerate() {
        s.connected = i != 2;
        s.received = 5_000 + i as u64;
        s.done = 4_990;
        s.lag_records = 10 + i as u64;
        s.lag_bytes = 40_960;
        s.lag_seconds = 0.35;
        s.record_bytes = 1 << 30;
        s.wire_bytes = 1 << 29;
        s.applied_writes = 4_900;
    }
    st.streams[2].log_stopped = Some("rollback of an append failed: EIO".into());
    st.applied_epoch = 1_024;
    st.applying_epoch = 1_030;
    st.auth_refused = 5;
    st.auth_refused_by = vec![("key".into(), 3), ("timeout".into(), 2)];
    st.accept_errors = 1;
    st.rejected = vec![("checksum".into(), 2), ("tail".into(), 1)];
    st.intervals_applied = 1_024;
    st.consistency_point = Some(Point {
        cp_id: 17,
        label: "nightly \"backup\" \\ done".into(),
    });
    st.g2_violations = 0;
    st.resync_span_open = true;
    st.resync_span_intervals = 12;
    st.resync_span_records = 4_800;
    st.resync_span_bytes = 19_660_800;
    st.resync_spans_applied = 1;
    st.inconsistent = true;
    st.resync_room_refusals = 2;
    st.resync_room = Some(ferryd::room::NoRoom {
        need: 33_808_720,
        available: 8_388_608,
        reserve: 67_108_864,
        log_dir: "/var/lib/ferry/db".into(),
    });
    st.apply_error =
        Some("a record of 2097152 bytes: above the 1048576 a secondary applies".into());
    st
}

/// Serves `st` as ferryd does and scrapes `/metrics` asking for `accept`.
fn scrape(st: Status, accept: &str) -> String {
    let addr = status::serve("127.0.0.1:0".parse().unwrap(), Arc::new(move || st.clone())).unwrap();
    ureq::get(&format!("http://{addr}/metrics"))
        .set("Accept", accept)
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

/// `promtool check metrics` on `text`: its exit status and output.
fn check(promtool: &PathBuf, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", promtool.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn promtool_checks_a_live_scrape() {
    let Some(promtool) = promtool() else {
        if std::env::var_os("FERRY_SKIP_PROMTOOL").is_some_and(|v| v == "1") {
            eprintln!("SKIP: no promtool (FERRY_SKIP_PROMTOOL=1)");
            return;
        }
        panic!(
            "no promtool (Debian's prometheus package; scripts/deps.sh puts it in \
             $FERRY_CACHE/tools/bin): run scripts/deps.sh, name it in FERRY_PROMTOOL, \
             or set FERRY_SKIP_PROMTOOL=1 to skip this test"
        );
    };
    let cases = [
        ("fresh primary", fresh(Role::Primary, "connecting", &[0, 1])),
        ("primary", primary()),
        ("fresh secondary", fresh(Role::Secondary, "idle", &[0])),
        ("secondary", secondary()),
    ];
    for (name, st) in cases {
        let text = scrape(st, "text/plain;version=0.0.4");
        assert!(text.contains("# TYPE ferry_state gauge"), "{name}: {text}");
        let (ok, said) = check(&promtool, &text);
        eprintln!("promtool check metrics, {name}: {}", said.trim());
        assert!(ok, "{name}: promtool check metrics failed:\n{said}\n{text}");
        // Not a word of complaint: promtool prints nothing on a clean
        // exposition (a lint problem is a line and a failure).
        assert!(said.trim().is_empty(), "{name}: promtool says:\n{said}");
    }
}
