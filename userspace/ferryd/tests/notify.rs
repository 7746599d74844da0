//! The real `ferryd` under systemd's notification protocol, as the unit
//! runs it (`Type=notify`, `WatchdogSec=`, `LoadCredential=key:...`): a
//! primary whose character device is a FIFO (nothing to read: its reader
//! waits, as on an idle group), its key a credential.  It says READY=1,
//! a STATUS= line, WATCHDOG=1 at half the interval while it waits, and
//! STOPPING=1 on SIGTERM, then exits 0.  Without the credentials systemd
//! passes, a configuration without `key_file` does not start.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-notify-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A primary's configuration in `d`, without `key_file`: the device a
/// FIFO, the peer a closed port, everything else under `d`.
fn config(d: &Path) -> PathBuf {
    let dev = d.join("dev");
    nix::unistd::mkfifo(&dev, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let cfg = d.join("gr.toml");
    std::fs::write(
        &cfg,
        format!(
            "group = \"gr\"\nrole = \"primary\"\npeer = \"127.0.0.1:1\"\ndevice = {:?}\n\
             spool_dir = {:?}\nstatus = \"127.0.0.1:0\"\ncontrol_socket = {:?}\n",
            dev.display().to_string(),
            d.join("spool").display().to_string(),
            d.join("run/gr.sock").display().to_string()
        ),
    )
    .unwrap();
    cfg
}

/// Starts ferryd as systemd would (`WATCHDOG_PID` its own pid), with
/// `env` and nothing of systemd's from this process's environment.
fn start(cfg: &Path, env: &[(&str, &OsStr)]) -> Child {
    let mut c = Command::new("sh");
    c.args([
        "-c",
        "WATCHDOG_PID=$$ exec \"$0\" --config \"$1\"",
        env!("CARGO_BIN_EXE_ferryd"),
    ])
    .arg(cfg)
    .env_remove("NOTIFY_SOCKET")
    .env_remove("WATCHDOG_USEC")
    .env_remove("CREDENTIALS_DIRECTORY")
    .stdin(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// The messages on `sock` until `until` holds for them or `limit` passes.
fn collect(
    sock: &UnixDatagram,
    got: &mut Vec<String>,
    limit: Duration,
    until: impl Fn(&[String]) -> bool,
) {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < end && !until(got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
    }
}

fn count(got: &[String], what: &str) -> usize {
    got.iter().filter(|m| *m == what).count()
}

#[test]
fn ready_status_watchdog_stopping() {
    let d = dir("run");
    let cfg = config(&d);
    let creds = d.join("creds");
    std::fs::create_dir(&creds).unwrap();
    let key = creds.join("key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let sock_path = d.join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // 400 ms: pings every 200 ms.
    let child = start(
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock_path.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new("400000")),
            ("CREDENTIALS_DIRECTORY", creds.as_os_str()),
        ],
    );
    let mut got = Vec::new();
    collect(&sock, &mut got, Duration::from_secs(20), |g| {
        count(g, "WATCHDOG=1") >= 4 && g.iter().any(|m| m.starts_with("STATUS="))
    });
    assert!(got.contains(&"READY=1".to_string()), "{got:?}");
    assert!(count(&got, "WATCHDOG=1") >= 4, "{got:?}");
    let status = got.iter().find(|m| m.starts_with("STATUS="));
    assert_eq!(
        status.map(String::as_str),
        Some("STATUS=connecting, 0/0 streams connected, lag 0 records (0 B), 0.0 s"),
        "{got:?}"
    );
    // The pings go on while the reader waits for records.
    let before = count(&got, "WATCHDOG=1");
    collect(&sock, &mut got, Duration::from_millis(1000), |_| false);
    assert!(count(&got, "WATCHDOG=1") >= before + 3, "{got:?}");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    collect(&sock, &mut got, Duration::from_secs(10), |g| {
        g.contains(&"STOPPING=1".to_string())
    });
    assert!(got.contains(&"STOPPING=1".to_string()), "{got:?}");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn no_key_file_needs_the_credential() {
    let d = dir("nocred");
    let cfg = config(&d);
    let out = start(&cfg, &[]).wait_with_output().unwrap();
    assert!(!out.status.success());
    // Its log (stderr, the journal's under systemd) says why.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "key_file credential:key: no credentials from systemd (CREDENTIALS_DIRECTORY is not set)"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
