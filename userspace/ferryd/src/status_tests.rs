//! Tests of [`super`] (status.rs).

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
        resync_span_open: false,
        resync_span_intervals: 0,
        resync_span_records: 0,
        resync_span_bytes: 0,
        resync_spans_applied: 0,
        ..Status::default()
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
pub(crate) const FAMILIES: [(&str, &str); 34] = [
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
    ("ferry_resync_span_open", "gauge"),
    ("ferry_resync_span_intervals", "gauge"),
    ("ferry_resync_span_records", "gauge"),
    ("ferry_resync_span_bytes", "gauge"),
    ("ferry_resync_spans_applied_total", "counter"),
    ("ferry_inconsistent", "gauge"),
    ("ferry_resync_chunks_left", "gauge"),
    ("ferry_resync_chunks", "gauge"),
    ("ferry_resync_full", "gauge"),
    ("ferry_resync_room_refusals_total", "counter"),
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
    st.resync_span_open = true;
    st.resync_span_intervals = 5;
    st.resync_span_bytes = 3 << 20;
    assert!(
        st.summary().contains(
            ", applying to 43, resync span open: 5 intervals staged (3.0 MiB), not applied; APPLY"
        ),
        "{}",
        st.summary()
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
