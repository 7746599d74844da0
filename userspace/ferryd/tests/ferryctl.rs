//! `ferryctl` and `ferryd --check` as a person runs them: the programs
//! built by cargo, against a status endpoint serving a document the test
//! sets (`ferryd::status::serve`, as `ferryd` serves it).  Their words,
//! JSON, events, exit codes, key files, manual pages and completions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferryd::config::Role;
use ferryd::status::{Status, Stream};

const SUBCOMMANDS: [&str; 8] = [
    "status",
    "events",
    "promote",
    "resync",
    "demote",
    "checkpoint",
    "cp",
    "keygen",
];

/// The top-level fields of `ferryctl status --json`, schema version 1.
const DOCUMENT_FIELDS: [&str; 18] = [
    "schema_version",
    "group",
    "role",
    "state",
    "streams",
    "applied_epoch",
    "applying_epoch",
    "spool_records",
    "auth_refused",
    "auth_refused_by",
    "accept_errors",
    "rejected",
    "intervals_applied",
    "consistency_point",
    "disk_spool_records",
    "disk_spool_bytes",
    "g2_violations",
    "apply_error",
];

/// The fields of each of its `streams`, schema version 1.
const STREAM_FIELDS: [&str; 11] = [
    "device",
    "connected",
    "received",
    "done",
    "lag_records",
    "lag_bytes",
    "lag_seconds",
    "record_bytes",
    "wire_bytes",
    "applied_writes",
    "log_stopped",
];

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-ctl-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A healthy secondary of two streams, as `ferryd` would report it.
fn secondary() -> Status {
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
            record_bytes: 3 << 20,
            ..Stream::default()
        })
        .collect();
    s
}

/// A `ferryd` status endpoint serving what the test puts in the mutex.
fn endpoint(st: Status) -> (SocketAddr, Arc<Mutex<Status>>) {
    let shared = Arc::new(Mutex::new(st));
    let s = shared.clone();
    let addr = ferryd::status::serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move || s.lock().unwrap().clone()),
    )
    .unwrap();
    (addr, shared)
}

/// A loopback address nobody listens on.
fn nobody() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A secondary's configuration of group `db` whose status endpoint is
/// `addr`, in `d`.
fn config(d: &Path, addr: SocketAddr) -> PathBuf {
    let p = d.join("db.toml");
    std::fs::write(
        &p,
        format!(
            "group = \"db\"\nrole = \"secondary\"\nkey_file = \"{}/db.key\"\nlisten = \"0.0.0.0:7789\"\nlog_dir = \"{}/log\"\nstatus = \"{addr}\"\ncontrol_socket = \"{}/run/db.sock\"\n",
            d.display(),
            d.display(),
            d.display()
        ),
    )
    .unwrap();
    p
}

fn ferryctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferryctl"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn status_in_words_and_its_exit_codes() {
    let d = dir("status");
    let (addr, st) = endpoint(secondary());
    let c = config(&d, addr);
    let c = c.to_str().unwrap();
    let out = ferryctl(&["status", "db", "-c", c]);
    let words = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{words}");
    assert!(
        words.starts_with("group db: secondary, idle; applied interval 7\n"),
        "{words}"
    );
    assert!(words.contains("3.0 MiB of records"), "{words}");
    assert!(words.contains("0.0 s;"), "{words}");
    assert!(words.ends_with("health: healthy\n"), "{words}");
    // No Rust debug formatting.
    for debug in ["Some(", "None", "[(", "\"", "Secondary"] {
        assert!(!words.contains(debug), "{debug} in {words}");
    }

    st.lock().unwrap().streams[1].connected = false;
    let out = ferryctl(&["status", "db", "-c", c]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).ends_with("health: degraded\n  device 1: link down\n"));

    let mut lagging = secondary();
    lagging.streams[0].lag_seconds = 12.0;
    *st.lock().unwrap() = lagging;
    assert_eq!(ferryctl(&["status", "db", "-c", c]).status.code(), Some(0));
    let out = ferryctl(&["status", "db", "-c", c, "--max-lag", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).contains("device 0: lag 12.0 s, beyond 10 s"));

    let gone = config(&d, nobody());
    let out = ferryctl(&["status", "db", "-c", gone.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .starts_with("ferryctl: ferryd of group db not reachable at http://127.0.0.1:"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn status_json_has_a_schema_version_and_the_fields() {
    let d = dir("json");
    let mut s = secondary();
    s.role = Role::Primary;
    s.state = "ahead".into();
    let (addr, _st) = endpoint(s);
    let c = config(&d, addr);
    let out = ferryctl(&["status", "db", "-c", c.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(2), "ahead is degraded");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["state"], "ahead");
    for f in DOCUMENT_FIELDS {
        assert!(v.get(f).is_some(), "{f} missing: {v}");
    }
    for f in STREAM_FIELDS {
        assert!(
            v["streams"][0].get(f).is_some(),
            "streams[].{f} missing: {v}"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// Documentation/ferryd.rst lists the fields of schema version 1.
#[test]
fn the_documented_json_fields() {
    let doc = include_str!("../../../Documentation/ferryd.rst");
    let from = doc.find("``schema_version``").unwrap();
    for f in DOCUMENT_FIELDS.iter().chain(&STREAM_FIELDS) {
        assert!(
            doc[from..].contains(&format!("``{f}``")),
            "{f} not documented"
        );
    }
}

#[test]
fn bad_arguments_exit_1_and_help_tells_the_exit_codes() {
    for args in [
        &["status"][..],
        &["status", "db", "--interval", "1"],
        &["status", "db", "--watch", "--interval", "0"],
        &["nonsense"],
        &["keygen", "--force"],
    ] {
        let out = ferryctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    for args in [&["--help"][..], &["status", "--help"]] {
        let out = ferryctl(args);
        assert_eq!(out.status.code(), Some(0));
        let help = text(&out.stdout);
        assert!(help.contains("Exit status:\n  0  healthy"), "{help}");
        assert!(help.contains("2  degraded"), "{help}");
    }
    // A configuration that is not there: an error.
    let out = ferryctl(&["status", "db", "-c", "/nonexistent/db.toml"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn status_watch_redraws() {
    let d = dir("watch");
    let (addr, st) = endpoint(secondary());
    let c = config(&d, addr);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferryctl"))
        .args(["status", "db", "-c", c.to_str().unwrap(), "--watch"])
        .args(["--interval", "0.2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    st.lock().unwrap().state = "applying".into();
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let words = text(&out.stdout);
    let frames = words.matches("every 0.2 s: ferryctl status db").count();
    assert!(frames >= 4, "{frames} frames: {words}");
    assert!(words.contains("secondary, idle;") && words.contains("secondary, applying;"));
    std::fs::remove_dir_all(&d).unwrap();
}

fn lines(out: &[u8]) -> Vec<serde_json::Value> {
    text(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn events_once_prints_the_state_as_exists() {
    let d = dir("events-once");
    let mut s = secondary();
    s.consistency_point = Some(ferryd::cpoints::Point {
        cp_id: 3,
        label: "nightly".into(),
    });
    let (addr, _st) = endpoint(s);
    let c = config(&d, addr);
    let out = ferryctl(&["events", "-c", c.to_str().unwrap(), "--once"]);
    assert_eq!(out.status.code(), Some(0));
    let ev = lines(&out.stdout);
    assert_eq!(ev.len(), 3);
    assert!(ev
        .iter()
        .all(|e| e["event"] == "exists" && e["group"] == "db"));
    assert_eq!(ev[0]["object"], "group");
    assert_eq!(ev[0]["state"], "idle");
    assert_eq!(ev[0]["ahead"], false);
    assert_eq!(ev[0]["consistency_point"]["cp_id"], 3);
    assert_eq!(ev[0]["consistency_point"]["label"], "nightly");
    assert_eq!(ev[2]["object"], "stream");
    assert_eq!(ev[2]["device"], 1);
    assert_eq!(ev[2]["connected"], true);
    assert!(ev[2]["log_stopped"].is_null());
    let t = ev[0]["time"].as_str().unwrap();
    assert!(
        t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
        "{t}"
    );

    // --group with --config: that file's group; ferryd not there: exit 1,
    // the group unreachable.
    let gone = config(&d, nobody());
    let out = ferryctl(&[
        "events",
        "-c",
        gone.to_str().unwrap(),
        "--group",
        "db",
        "--once",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let ev = lines(&out.stdout);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["state"], "unreachable");
    assert_eq!(ev[0]["role"], "secondary");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn events_follow_the_changes() {
    let d = dir("events");
    let (addr, st) = endpoint(secondary());
    let c = config(&d, addr);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferryctl"))
        .args(["events", "-c", c.to_str().unwrap(), "--interval", "0.1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx
                .send(serde_json::from_str::<serde_json::Value>(&l).unwrap())
                .is_err()
            {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("an event within 10 s")
    };
    for _ in 0..3 {
        assert_eq!(next()["event"], "exists");
    }
    type Step = (fn(&mut Status), &'static str, &'static str);
    let steps: [Step; 5] = [
        (|s| s.streams[0].connected = false, "stream", "connected"),
        (
            |s| s.streams[1].log_stopped = Some("rollback failed".into()),
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
                s.consistency_point = Some(ferryd::cpoints::Point {
                    cp_id: 9,
                    label: "l".into(),
                })
            },
            "group",
            "consistency_point",
        ),
        (
            |s| {
                s.role = Role::Primary;
                s.state = "ahead".into()
            },
            "group",
            "ahead",
        ),
    ];
    let start = Instant::now();
    for (change, object, field) in steps {
        // Counters move without events.
        st.lock().unwrap().applied_epoch += 1;
        change(&mut st.lock().unwrap());
        let e = next();
        assert_eq!(e["event"], "change", "{e}");
        assert_eq!(e["object"], object, "{e}");
        assert!(
            e["changed"].as_array().unwrap().contains(&field.into()),
            "{field}: {e}"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn keygen_writes_a_private_file() {
    let d = dir("keygen");
    // Under the usual umask a file would be 0644: the key file is not.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let k = d.join("db.key");
    let ks = k.to_str().unwrap();
    let out = ferryctl(&["keygen", "--out", ks]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "the key is not printed");
    let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&k).unwrap();
    assert_eq!(key.len(), 65);
    assert!(ferryd::config::parse_key(key.trim()).is_ok());

    let out = ferryctl(&["keygen", "--out", ks]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("ferryctl: {ks} exists: not replaced (--force replaces it)\n")
    );
    assert_eq!(std::fs::read_to_string(&k).unwrap(), key);

    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ferryctl(&["keygen", "--out", ks, "--force"]);
    assert_eq!(out.status.code(), Some(0));
    let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert_ne!(std::fs::read_to_string(&k).unwrap(), key);
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        1,
        "no temporary left"
    );

    let out = ferryctl(&["keygen"]);
    assert_eq!(out.status.code(), Some(0));
    let printed = text(&out.stdout);
    assert_eq!(printed.len(), 65);
    assert!(ferryd::config::parse_key(printed.trim()).is_ok());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn manual_pages_and_completions() {
    let d = dir("gen");
    let out = ferryctl(&["gen-man", d.join("man").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ctl = std::fs::read_to_string(d.join("man/ferryctl.8")).unwrap();
    let daemon = std::fs::read_to_string(d.join("man/ferryd.8")).unwrap();
    assert!(ctl.contains(".TH ferryctl 8"), "{ctl}");
    for sub in SUBCOMMANDS {
        assert!(ctl.contains(sub), "{sub} not in ferryctl.8");
    }
    assert!(ctl.contains("degraded"), "the exit codes in ferryctl.8");
    assert!(
        daemon.contains(".TH ferryd 8") && daemon.contains("check"),
        "{daemon}"
    );
    // A page per command, as ferryctl.8 refers to them; none for the
    // hidden ones, nor for help.
    for sub in SUBCOMMANDS {
        assert!(
            ctl.contains(&format!("ferryctl\\-{sub}(8)")),
            "{sub}: {ctl}"
        );
        let page = std::fs::read_to_string(d.join(format!("man/ferryctl-{sub}.8"))).unwrap();
        assert!(page.contains(&format!(".TH ferryctl-{sub} 8")), "{page}");
    }
    let status = std::fs::read_to_string(d.join("man/ferryctl-status.8")).unwrap();
    assert!(
        status.contains("max\\-lag") && status.contains("degraded"),
        "{status}"
    );
    let mut pages: Vec<String> = std::fs::read_dir(d.join("man"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    assert_eq!(pages.len(), 2 + SUBCOMMANDS.len(), "{pages:?}");

    for (shell, files) in [
        ("bash", ["ferryd.bash", "ferryctl.bash"]),
        ("zsh", ["_ferryd", "_ferryctl"]),
        ("fish", ["ferryd.fish", "ferryctl.fish"]),
    ] {
        let to = d.join(shell);
        let out = ferryctl(&["gen-completions", shell, to.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let daemon = std::fs::read_to_string(to.join(files[0])).unwrap();
        assert!(daemon.contains("check"), "{shell}: {daemon}");
        let ctl = std::fs::read_to_string(to.join(files[1])).unwrap();
        for sub in SUBCOMMANDS {
            assert!(ctl.contains(sub), "{sub} not in the {shell} completion");
        }
        assert!(ctl.contains("max-lag") && ctl.contains("once"), "{shell}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn ferryd_check() {
    let d = dir("check");
    let c = config(&d, nobody());
    std::fs::write(d.join("db.key"), "00112233445566778899aabbccddeeff\n").unwrap();
    std::fs::set_permissions(d.join("db.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferryd"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = check(&["--check", c.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}: ok\n", c.display()));
    let out = check(&["-c", c.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !d.join("log").exists() && !d.join("run").exists(),
        "nothing created"
    );

    std::fs::set_permissions(d.join("db.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = check(&["--check", c.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{}: key file {}/db.key is accessible by others (mode 0640): chmod 600 it\n",
            c.display(),
            d.display()
        )
    );
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}
