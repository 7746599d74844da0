//! The control socket end to end: a release is answered before `ferryd`
//! may exit, `ferryctl promote` tells a `ferryd` that does not run from one
//! that runs and did not release, a stale socket is replaced, a peer that
//! is neither root nor `ferryd`'s user is refused.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferryd::ctl::{self, Control, Release, Released, Reply, Started};

/// A `ferryd` whose release answers `answer` after a short while.
struct Fake {
    answer: Result<u64, String>,
    calls: AtomicU32,
}

impl Fake {
    fn new(answer: Result<u64, String>) -> Arc<Self> {
        Arc::new(Self {
            answer,
            calls: AtomicU32::new(0),
        })
    }
}

impl Control for Fake {
    async fn release(&self, _force: bool) -> Result<Released, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.answer.clone().map(released)
    }

    /// A primary's: `START` taken while `ahead` with `answer`'s dirty
    /// chunks, or refused with its error.
    async fn resync(&self, full: bool) -> Result<Started, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.answer.clone().map(|n| Started {
            was: "ahead".into(),
            dirty_chunks: n,
            full,
        })
    }
}

/// Released at interval `applied_epoch`, no resync span open.
fn released(applied_epoch: u64) -> Released {
    Released {
        applied_epoch,
        span_dropped: None,
        inconsistent: false,
    }
}

/// A fresh directory for a test's socket (its own `run` below it is
/// created by `bind`).
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-ctl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_is_answered_before_ferryd_may_exit() {
    let top = dir("answer");
    let path = top.join("run/ferry/gr.sock");
    let l = ctl::bind(&path).unwrap();
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
    let fake = Fake::new(Ok(42));
    let srv = Arc::new(ctl::serve(l, &path, fake.clone(), own_uid()));
    // What ferryd's main does: exit once the release is answered.
    let exited = Arc::new(AtomicBool::new(false));
    let (srv2, exited2) = (srv.clone(), exited.clone());
    let daemon = tokio::spawn(async move {
        srv2.released().await;
        exited2.store(true, Ordering::SeqCst);
    });
    let (p, ex) = (path.clone(), exited.clone());
    let client = tokio::task::spawn_blocking(move || {
        let s = std::os::unix::net::UnixStream::connect(&p).unwrap();
        (&s).write_all(b"{\"cmd\":\"release\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        // The answer is here, and ferryd still runs: it waits for this
        // side to close.
        assert!(
            !ex.load(Ordering::SeqCst),
            "ferryd exited before the answer was read"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !ex.load(Ordering::SeqCst),
            "ferryd exited before the client closed"
        );
        drop(s);
        serde_json::from_str::<Reply>(line.trim()).unwrap()
    });
    let reply = client.await.unwrap();
    assert_eq!(reply, Reply::Released(released(42)));
    tokio::time::timeout(Duration::from_secs(2), daemon)
        .await
        .expect("ferryd may exit once the client closed")
        .unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    drop(srv);
    assert!(!path.exists(), "the socket is removed when ferryd stops");
    std::fs::remove_dir_all(&top).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_a_live_one_kept() {
    let top = dir("stale");
    let path = top.join("gr.sock");
    // A socket left by a ferryd killed with -9.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let l = ctl::bind(&path).unwrap();
    let _srv = ctl::serve(l, &path, Fake::new(Ok(1)), own_uid());
    let e = ctl::bind(&path).unwrap_err();
    assert!(
        format!("{e:#}").contains("another ferryd serves it"),
        "{e:#}"
    );
    // Not a socket: left alone.
    let file = top.join("file.sock");
    std::fs::write(&file, "x").unwrap();
    assert!(ctl::bind(&file).is_err());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    std::fs::remove_dir_all(&top).unwrap();
}

/// `ferryctl promote`'s question to ferryd: "not running" only when no
/// ferryd serves the socket; a ferryd that runs and does not release is
/// an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_tells_not_running_from_running_and_failed() {
    let top = dir("promote");
    let t = Duration::from_secs(10);
    let ask = |p: PathBuf| tokio::task::spawn_blocking(move || ctl::request_release(&p, false, t));

    // No socket.
    let none = top.join("none/gr.sock");
    assert!(matches!(
        ask(none).await.unwrap(),
        Ok(Release::NotRunning(why)) if why.contains("no control socket")
    ));
    // A stale socket: nobody listens (ECONNREFUSED).
    let stale = top.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(matches!(
        ask(stale).await.unwrap(),
        Ok(Release::NotRunning(why)) if why.contains("nobody listens")
    ));
    // Running, and releases.
    let ok = top.join("ok.sock");
    let _a = ctl::serve(ctl::bind(&ok).unwrap(), &ok, Fake::new(Ok(9)), own_uid());
    assert_eq!(
        ask(ok).await.unwrap().unwrap(),
        Release::Released(released(9))
    );
    // Running, and refuses.
    let no = top.join("no.sock");
    let _b = ctl::serve(
        ctl::bind(&no).unwrap(),
        &no,
        Fake::new(Err(
            "the interval in progress did not finish within 60 s".into()
        )),
        own_uid(),
    );
    let e = ask(no).await.unwrap().unwrap_err();
    assert!(
        format!("{e:#}").contains("refused to release the device: the interval in progress"),
        "{e:#}"
    );
    // Running, and closes without an answer (it failed, or exited).
    let mute = top.join("mute.sock");
    let l = std::os::unix::net::UnixListener::bind(&mute).unwrap();
    let th = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
    });
    let e = ask(mute).await.unwrap().unwrap_err();
    assert!(
        format!("{e:#}").contains("closed the connection without answering"),
        "{e:#}"
    );
    th.join().unwrap();
    std::fs::remove_dir_all(&top).unwrap();
}

fn config(top: &Path, sock: &Path) -> PathBuf {
    let c = top.join("gr.toml");
    std::fs::write(
        &c,
        format!(
            "group = \"gr\"\nrole = \"secondary\"\nkey_file = \"/nonexistent\"\nlisten = \"127.0.0.1:1\"\nlog_dir = \"/nonexistent\"\ncontrol_socket = {:?}\n",
            sock.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o644)).unwrap();
    c
}

fn ferryctl(args: &[&str], uid: Option<u32>) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ferryctl"));
    c.args(args).env("PATH", "/nonexistent");
    if let Some(u) = uid {
        c.uid(u).gid(u);
    }
    c.output().unwrap()
}

/// The ferryctl binary: says plainly that ferryd does not run, and refuses
/// to promote past a ferryd that runs and does not release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferryctl_promote_messages() {
    let top = dir("ferryctl");
    let sock = top.join("gr.sock");
    let cfg = config(&top, &sock);
    let cfg = cfg.to_str().unwrap().to_owned();
    let c2 = cfg.clone();
    let out = tokio::task::spawn_blocking(move || ferryctl(&["-c", &c2, "promote", "gr"], None))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ferryd is not running (") && err.contains("promoting without it"),
        "{err}"
    );
    // (No device of the group here: the promote itself fails after that.)
    assert!(!out.status.success());

    let fake = Fake::new(Err("ferryd is stopping".into()));
    let _s = ctl::serve(ctl::bind(&sock).unwrap(), &sock, fake.clone(), own_uid());
    let out = tokio::task::spawn_blocking(move || ferryctl(&["-c", &cfg, "promote", "gr"], None))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ferryd refused to release the device: ferryd is stopping"),
        "{err}"
    );
    assert!(!err.contains("without it"), "{err}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    std::fs::remove_dir_all(&top).unwrap();
}

/// `ferryctl resync`: says what the kernel did, or why it refused (exit
/// 1); without a ferryd, that a resync needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferryctl_resync_messages() {
    let top = dir("resync");
    let sock = top.join("gr.sock");
    let cfg = config(&top, &sock);
    let cfg = cfg.to_str().unwrap().to_owned();
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            ferryctl(&a, None)
        })
        .await
        .unwrap()
    };
    let args = |c: &str| {
        vec![
            "-c".to_string(),
            c.to_string(),
            "resync".into(),
            "gr".into(),
        ]
    };
    let out = run(args(&cfg)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ferryd is not running (") && err.contains("a resync needs it"),
        "{err}"
    );

    let fake = Fake::new(Ok(42));
    let s = ctl::serve(ctl::bind(&sock).unwrap(), &sock, fake.clone(), own_uid());
    let out = run(args(&cfg)).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("resync of group gr started: 42 dirty chunks to copy"),
        "{text}"
    );
    // --full: the request of its own, and the answer says so.
    let mut full = args(&cfg);
    full.push("--full".into());
    let out = run(full).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("full resync of group gr started (it was ahead)"),
        "{text}"
    );
    drop(s);

    let fake = Fake::new(Err(
        "the kernel refused START: no room in the kernel's spool for the resync's marker now"
            .into(),
    ));
    let _s = ctl::serve(ctl::bind(&sock).unwrap(), &sock, fake.clone(), own_uid());
    let out = run(args(&cfg)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("ferryd did not start a resync: the kernel refused START: no room"),
        "{err}"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    let t = Duration::from_secs(10);
    let p = sock.clone();
    let e = tokio::task::spawn_blocking(move || ctl::request_resync(&p, false, t))
        .await
        .unwrap()
        .unwrap_err();
    assert!(format!("{e:#}").contains("no room"), "{e:#}");
    drop(_s);

    // The secondary has no room for the resync: exit 1, its figures said.
    let no = ferryd::room::NoRoom {
        need: 96 << 20,
        available: 76 << 20,
        reserve: 64 << 20,
        log_dir: "/var/lib/ferry/gr".into(),
    };
    let fake = Fake::new(Err(no.words("then run ferryctl resync gr again")));
    let _s = ctl::serve(ctl::bind(&sock).unwrap(), &sock, fake.clone(), own_uid());
    let out = run(args(&cfg)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(
            "ferryd did not start a resync: resync refused by the secondary: it needs 96.0 MiB \
             in its log_dir (/var/lib/ferry/gr), 12.0 MiB are free (76.0 MiB available, less its \
             reserve of 64.0 MiB); free space there, or raise it, then run ferryctl resync gr \
             again"
        ),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    std::fs::remove_dir_all(&top).unwrap();
}

/// A peer that is neither root nor ferryd's user is refused by its
/// credentials, even when the socket's mode would let it connect (needs
/// root to run ferryctl as another user; skipped otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_is_refused() {
    if own_uid() != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let top = dir("peer");
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = top.join("gr.sock");
    let cfg = config(&top, &sock);
    let fake = Fake::new(Ok(3));
    // As a ferryd running as root would: root and uid 0 only.
    let _s = ctl::serve(ctl::bind(&sock).unwrap(), &sock, fake.clone(), 0);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let c = cfg.to_str().unwrap().to_owned();
    let out =
        tokio::task::spawn_blocking(move || ferryctl(&["-c", &c, "promote", "gr"], Some(65534)))
            .await
            .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied: uid 65534 may not control ferryd (only root)"),
        "{err}"
    );
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        0,
        "released for a refused peer"
    );
    // The socket's own mode keeps it out in the first place.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = cfg.to_str().unwrap().to_owned();
    let out =
        tokio::task::spawn_blocking(move || ferryctl(&["-c", &c, "promote", "gr"], Some(65534)))
            .await
            .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot use ferryd's control socket"), "{err}");
    assert!(!err.contains("without it"), "{err}");
    std::fs::remove_dir_all(&top).unwrap();
}
