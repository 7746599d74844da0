//! Tests of [`super`] (ctl.rs).

use super::*;

#[test]
fn only_root_and_ferryds_own_user() {
    assert!(peer_allowed(0, 0));
    assert!(peer_allowed(0, 1000));
    assert!(peer_allowed(1000, 1000));
    assert!(!peer_allowed(1000, 0));
    assert!(!peer_allowed(1001, 1000));
    assert!(!peer_allowed(65534, 0));
}

#[test]
fn wire_format() {
    assert_eq!(
        serde_json::to_string(&Request::Release).unwrap(),
        r#"{"cmd":"release"}"#
    );
    let r = Released {
        applied_epoch: 7,
        span_dropped: None,
        inconsistent: false,
    };
    assert_eq!(
        serde_json::to_string(&Reply::Released(r.clone())).unwrap(),
        r#"{"result":"released","applied_epoch":7}"#
    );
    let mut dropped = r.clone();
    dropped.span_dropped = Some(SpanDropped {
        intervals: 3,
        records: 40,
        bytes: 4096,
    });
    let line = r#"{"result":"released","applied_epoch":7,"span_dropped":{"intervals":3,"records":40,"bytes":4096}}"#;
    assert_eq!(
        serde_json::to_string(&Reply::Released(dropped.clone())).unwrap(),
        line
    );
    assert_eq!(
        serde_json::from_str::<Reply>(line).unwrap(),
        Reply::Released(dropped)
    );
    // The answer of an older ferryd.
    assert_eq!(
        serde_json::from_str::<Reply>(r#"{"result":"released","applied_epoch":7}"#).unwrap(),
        Reply::Released(r)
    );
    assert_eq!(
        serde_json::from_str::<Reply>(r#"{"result":"refused","error":"x"}"#).unwrap(),
        Reply::Refused { error: "x".into() }
    );
    assert_eq!(
        serde_json::to_string(&Request::Resync).unwrap(),
        r#"{"cmd":"resync"}"#
    );
    let started = Reply::Started(Started {
        was: "ahead".into(),
        dirty_chunks: 12,
        full: false,
    });
    let line = r#"{"result":"started","was":"ahead","dirty_chunks":12}"#;
    assert_eq!(serde_json::to_string(&started).unwrap(), line);
    assert_eq!(serde_json::from_str::<Reply>(line).unwrap(), started);
}

#[test]
fn a_forced_release_on_the_wire() {
    assert_eq!(Request::release(false), Request::Release);
    assert_eq!(Request::release(true), Request::ReleaseForce);
    // Without --force: the request of every ferryctl.
    assert_eq!(
        serde_json::to_string(&Request::release(false)).unwrap(),
        r#"{"cmd":"release"}"#
    );
    let line = r#"{"cmd":"release_force"}"#;
    assert_eq!(serde_json::to_string(&Request::ReleaseForce).unwrap(), line);
    assert_eq!(
        serde_json::from_str::<Request>(line).unwrap(),
        Request::ReleaseForce
    );
    // Not a field: an older ferryd would pass over it and release as
    // asked plainly (as this one does).
    assert!(serde_json::from_str::<Request>(r#"{"cmd":"release","force":true}"#).is_ok());
    let forced = Reply::Released(Released {
        applied_epoch: 3,
        span_dropped: None,
        inconsistent: true,
    });
    let line = r#"{"result":"released","applied_epoch":3,"inconsistent":true}"#;
    assert_eq!(serde_json::to_string(&forced).unwrap(), line);
    assert_eq!(serde_json::from_str::<Reply>(line).unwrap(), forced);
}

/// A secondary's `ferryd`, as the control socket sees it.
struct Fake {
    inconsistent: bool,
    older: bool,
}

impl Control for Fake {
    async fn release(&self, force: bool) -> Result<Released, String> {
        if self.inconsistent && !force {
            return Err("no consistent point".into());
        }
        Ok(Released {
            applied_epoch: 4,
            span_dropped: None,
            inconsistent: self.inconsistent,
        })
    }

    async fn resync(&self, _full: bool) -> Result<Started, String> {
        Err("no".into())
    }
}

/// Asks a fake ferryd at a socket of its own to release.
async fn ask(c: Fake, force: bool) -> Result<Release> {
    let dir = std::env::temp_dir().join(format!(
        "ferry-ctl-release-{}-{}-{}-{force}",
        std::process::id(),
        c.inconsistent,
        c.older
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("g.sock");
    let l = bind(&path).unwrap();
    let older = c.older;
    let server = if older {
        // An older ferryd: it knows no release_force.
        let task = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = l.accept().await.unwrap();
                let mut line = String::new();
                tokio::io::BufReader::new(&mut s)
                    .read_line(&mut line)
                    .await
                    .unwrap();
                let r = match serde_json::from_str::<serde_json::Value>(&line).unwrap()["cmd"]
                    .as_str()
                {
                    Some("release") => r#"{"result":"released","applied_epoch":4}"#,
                    _ => {
                        r#"{"result":"refused","error":"bad request: unknown variant `release_force`"}"#
                    }
                };
                s.write_all(format!("{r}\n").as_bytes()).await.unwrap();
            }
        });
        Err(task)
    } else {
        Ok(serve(l, &path, Arc::new(c), own_uid()))
    };
    let p = path.clone();
    let r =
        tokio::task::spawn_blocking(move || request_release(&p, force, Duration::from_secs(10)))
            .await
            .unwrap();
    match server {
        Ok(s) => drop(s),
        Err(t) => t.abort(),
    }
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// This process's uid (allowed on its own sockets).
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_is_refused_with_no_consistent_point_unless_forced() {
    let e = ask(
        Fake {
            inconsistent: true,
            older: false,
        },
        false,
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("no consistent point"), "{e:#}");
    let r = ask(
        Fake {
            inconsistent: true,
            older: false,
        },
        true,
    )
    .await
    .unwrap();
    assert!(matches!(
        r,
        Release::Released(Released {
            inconsistent: true,
            ..
        })
    ));
    // An older ferryd: --force falls back to its plain release.
    let r = ask(
        Fake {
            inconsistent: false,
            older: true,
        },
        true,
    )
    .await
    .unwrap();
    assert!(
        matches!(
            r,
            Release::Released(Released {
                applied_epoch: 4,
                inconsistent: false,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn a_full_resync_on_the_wire() {
    assert_eq!(Request::resync(false), Request::Resync);
    assert_eq!(Request::resync(true), Request::ResyncFull);
    // Without --full: the request of every ferryctl.
    assert_eq!(
        serde_json::to_string(&Request::resync(false)).unwrap(),
        r#"{"cmd":"resync"}"#
    );
    let line = r#"{"cmd":"resync_full"}"#;
    assert_eq!(serde_json::to_string(&Request::ResyncFull).unwrap(), line);
    assert_eq!(
        serde_json::from_str::<Request>(line).unwrap(),
        Request::ResyncFull
    );
    // An unknown command is refused, not taken for another.
    assert!(serde_json::from_str::<Request>(r#"{"cmd":"resync_all"}"#).is_err());
    let started = Reply::Started(Started {
        was: "replicating".into(),
        dirty_chunks: 0,
        full: true,
    });
    let line = r#"{"result":"started","was":"replicating","dirty_chunks":0,"full":true}"#;
    assert_eq!(serde_json::to_string(&started).unwrap(), line);
    assert_eq!(serde_json::from_str::<Reply>(line).unwrap(), started);
}
