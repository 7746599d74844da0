//! Tests of [`super`] (secondary.rs).

use super::apply::{apply_checked, apply_loop, apply_stopped, check_intervals, ApplyFailed};
use super::*;
use crate::files::tests::{fresh_dir, mode_of, usual_umask};
use ferry_core::command::Command;
use ferry_core::record::RecordKind;
use ferry_core::table::MAX_DEVICES;
use ferryd::link::{Frame, Side};
use ferryd::systemd::Beat;

/// A secondary of devices `ids` whose remote log is in `top` (new):
/// it receives, stores and acknowledges as `run`'s does; its "device" is
/// a plain file, and nothing is applied (no markers come).
pub(crate) fn receiver(top: &Path, ids: &[u32]) -> Arc<Sec> {
    receiver_on(top, ids, Arc::new(files::Os))
}

/// A [`receiver`] whose files are reached through `fs`.
pub(crate) fn receiver_on(top: &Path, ids: &[u32], fs: Arc<dyn FileSystem>) -> Arc<Sec> {
    files::create_dir(top).unwrap();
    let cfg: Config = toml::from_str(&format!(
        "group = \"gr\"\nrole = \"secondary\"\nkey_file = \"/k\"\nlisten = \"127.0.0.1:1\"\nlog_dir = {:?}\n",
        top.display().to_string()
    ))
    .unwrap();
    let d = &FastDigest;
    let gid = record::group_id_of_name(d, cfg.group.as_bytes());
    let gkey = GroupKey::derive(d, gid, &[]).unwrap();
    let members = ids.iter().fold(0u64, |m, i| m | 1 << i);
    let (mut windows, mut streams, mut logs) = (Vec::new(), Vec::new(), Vec::new());
    for &id in ids {
        let mut f = remote_log::open(&*fs, top, id).unwrap();
        let r = remote_log::recover(&mut *f, id, 0, 0, |_, b| {
            record::decode_record(b, &gkey, d).map(|r| r.len)
        })
        .unwrap();
        windows.push(Window::new(vec![None; WINDOW], 1, Stamp::default()));
        streams.push(StreamState {
            id,
            saved: Saved {
                next: 1,
                ..Saved::default()
            },
            connected: 0,
            conn_gen: 0,
            record_bytes: 0,
            wire_bytes: 0,
            applied_writes: 0,
            taken: Saved {
                next: 1,
                ..Saved::default()
            },
            unapplied_bytes: 0,
        });
        logs.push(Mutex::new(StreamLog::new(f, id, gkey, &r)));
    }
    Arc::new(Sec {
        cfg,
        key: vec![0; 16],
        gkey,
        fs,
        dir: top.to_path_buf(),
        dev: Mutex::new(Some(File::create(top.join("dev")).unwrap())),
        sizes: test_sizes(ids),
        state: Mutex::new(State {
            windows,
            streams,
            rendezvous: Rendezvous::new(vec![IntervalSlot::default(); INTERVALS], 1, members),
            markers: BTreeMap::new(),
            points: Points::restore(members, None).unwrap(),
            applied: 0,
            applying: 0,
            redo: 0,
            intervals: 0,
            release: false,
            release_force: false,
            release_refused: None,
            released: false,
            stop: false,
            apply_error: None,
            state_full: None,
            g2: DurableOrder::new(0),
            spans: Spans::default(),
            dropped: None,
        }),
        logs,
        more: Notify::new(),
        rejected: Rejected::default(),
        listen: Arc::default(),
        room: Mutex::default(),
    })
}

/// Devices `ids` of 65,536 sectors each.
fn test_sizes(ids: &[u32]) -> Sizes {
    let mut z = [0; MAX_DEVICES as usize];
    for &i in ids {
        z[i as usize] = 65536;
    }
    z
}

/// A record of device 1 in interval `epoch`: `nr` sectors written at
/// `sector`, stored in `s`'s remote log; where it is.
fn stored(s: &Sec, epoch: u64, sector: u64, nr: u32) -> (usize, Loc, bool) {
    let mut h = record::RecordHeader::new(RecordKind::Write);
    h.group_id = s.gkey.group_id;
    h.device_id = 1;
    h.payload_len = nr * record::SECTOR_SIZE;
    (h.dev_seq, h.group_seq, h.epoch) = (1, 1, epoch);
    (h.sector, h.nr_sectors) = (sector, nr);
    let payload = vec![7u8; h.payload_len as usize];
    let mut b = vec![0u8; h.record_len()];
    record::encode_record(&h, &payload, &s.gkey, &FastDigest, &mut b).unwrap();
    let off = lock(&s.logs[0]).append(&[&b]).unwrap()[0];
    (
        0,
        Loc {
            off,
            len: b.len() as u32,
            flags: 0,
        },
        true,
    )
}

/// A batch with a record the kernel would refuse (outside the device
/// on this site) is not begun: nothing reaches the device, the status
/// says why, and a release still closes the device (promote).
#[tokio::test]
async fn a_batch_the_kernel_would_refuse_is_not_begun() {
    let top = fresh_dir("sec-refuse");
    let s = receiver(&top, &[1]);
    let good = stored(&s, 1, 65536 - 8, 8);
    let outside = stored(&s, 1, 65536 - 8, 16);
    assert!(check_intervals(&s, 1, &[good]).is_ok());
    let f = apply_checked(&s, 1, &[good, outside], &Beat::new("apply")).unwrap_err();
    assert!(!f.begun);
    assert!(
        format!("{:#}", f.error).contains("outside its device"),
        "{:#}",
        f.error
    );
    assert_eq!(
        std::fs::metadata(top.join("dev")).unwrap().len(),
        0,
        "APPLY_BEGIN was sent"
    );
    // Another interval than the batch's, and a device the group lacks.
    assert!(check_intervals(&s, 0, &[good]).is_err());
    lock(&s.state).applied = 1;
    assert!(check_intervals(&s, 2, &[good]).is_err());
    lock(&s.state).applied = 0;
    let top2 = fresh_dir("sec-refuse2");
    let mut alone = receiver(&top2, &[1]);
    Arc::get_mut(&mut alone).unwrap().sizes = [0; MAX_DEVICES as usize];
    let g = stored(&alone, 1, 0, 8);
    assert!(
        format!("{:#}", check_intervals(&alone, 1, &[g]).unwrap_err()).contains("no such device")
    );
    std::fs::remove_dir_all(top2).unwrap();
    // The loop stops applying, stays up, and answers a release.
    let s2 = s.clone();
    let stopped = tokio::spawn(async move { apply_stopped(&s2, 1, f).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let st = s.status();
    assert!(
        st.apply_error
            .as_deref()
            .unwrap_or("")
            .contains("the devices hold interval 0"),
        "{st:?}"
    );
    assert_eq!(st.applying_epoch, 0);
    lock(&s.state).release = true;
    s.more.notify_one();
    stopped.await.unwrap().unwrap();
    assert!(lock(&s.dev).is_none() && lock(&s.state).released);
    // A good batch goes: APPLY_BEGIN first.
    let top3 = fresh_dir("sec-refuse3");
    let s3 = receiver(&top3, &[1]);
    let g = stored(&s3, 1, 0, 8);
    apply_checked(&s3, 1, &[g], &Beat::new("apply")).unwrap();
    let dev = std::fs::read(top3.join("dev")).unwrap();
    let mut begin = [0u8; 64];
    let n = Command::ApplyBegin { epoch: 1 }.encode(&mut begin).unwrap();
    assert_eq!(&dev[..n], &begin[..n]);
    for t in [top, top3] {
        std::fs::remove_dir_all(t).unwrap();
    }
}

/// A primary's link for device 1 of group "gr": authenticated, its
/// welcome read.
async fn link_for_1(
    addr: std::net::SocketAddr,
    key: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("ferry")
        .unwrap()
        .to_owned();
    let mut c = tokio_rustls::TlsConnector::from(link::client_config().unwrap())
        .connect(name, tcp)
        .await
        .unwrap();
    let mut ekm = [0u8; 32];
    c.get_ref()
        .1
        .export_keying_material(&mut ekm, link::EXPORTER_LABEL, None)
        .unwrap();
    let hello = Frame::Hello {
        version: link::VERSION,
        group: "gr".into(),
        device: 1,
        tag: link::tag(key, Side::Primary, "gr", 1, &ekm),
    };
    link::write_frame(&mut c, &hello).await.unwrap();
    match link::read_frame(&mut c).await.unwrap() {
        Frame::Welcome { .. } => c,
        f => panic!("not welcomed: {f:?}"),
    }
}

/// One connection serves a stream: a newer one (a primary that
/// reconnected while its old connection lingers) replaces the older,
/// which ends at its next frame; the newer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_of_a_stream_replaces_the_older() {
    let top = fresh_dir("sec-replace");
    let s = receiver(&top, &[1]);
    let key = s.key.clone();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(accept_on(s.clone(), l));
    let mut old = link_for_1(addr, &key).await;
    let mut new = link_for_1(addr, &key).await;
    let empty = link::pack(&[], false);
    // The older one's next batch ends it.
    link::write_frame(&mut old, &empty).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), link::read_frame(&mut old)).await;
    assert!(
        matches!(r, Ok(Err(_))),
        "the older connection was not ended: {r:?}"
    );
    // The newer one is served: its batch is acknowledged.
    link::write_frame(&mut new, &empty).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), link::read_frame(&mut new)).await;
    assert!(
        matches!(r, Ok(Ok(Frame::Ack { .. }))),
        "the newer connection: {r:?}"
    );
    server.abort();
    std::fs::remove_dir_all(&top).unwrap();
}

/// Serves the primaries that connect to `l` for `s`, as `run` does.
pub(crate) async fn accept_on(s: Arc<Sec>, l: TcpListener) {
    let tls = tokio_rustls::TlsAcceptor::from(link::server_config().unwrap());
    let counters = s.listen.clone();
    let serving = move |tcp: TcpStream, _, pending| {
        let (s, tls) = (s.clone(), tls.clone());
        async move {
            if let Err(e) = serve(&s, tls, tcp, pending).await {
                info!("test secondary: {e:#}");
            }
        }
    };
    let _ = listen::accept_loop(l, listen::Limits::default(), counters, serving).await;
}

/// Each stream's device and the end of its contiguous run (what it
/// acknowledges).
pub(crate) fn run_ends(s: &Sec) -> Vec<(u32, u64)> {
    let st = lock(&s.state);
    st.streams
        .iter()
        .zip(&st.windows)
        .map(|(x, w)| (x.id, w.run_end()))
        .collect()
}

#[test]
fn remote_log_and_state_are_private() {
    usual_umask();
    let top = fresh_dir("sec-mode");
    let dir = top.join("log");
    files::create_dir(&dir).unwrap();
    assert_eq!(mode_of(&dir), 0o700);
    remote_log::open(&files::Os, &dir, 3).unwrap();
    assert_eq!(mode_of(&dir.join("stream-3.log")), 0o600);
    // A leftover of a crash (of an older version: 0644) is not reused.
    std::fs::write(dir.join("state.json.tmp"), "x").unwrap();
    let mut st = SavedState::default();
    st.streams.insert(3, Saved::default());
    save_state(&files::Os, &dir, &st).unwrap();
    assert_eq!(mode_of(&dir.join("state.json")), 0o600);
    assert!(!dir.join("state.json.tmp").exists());
    let back: SavedState =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert!(back.streams.contains_key(&3));
    std::fs::remove_dir_all(&top).unwrap();
}

/// A secondary with no stream and nothing to apply, its "device" a
/// plain file.
fn idle(name: &str) -> (Arc<Sec>, PathBuf) {
    let top = fresh_dir(&format!("sec-{name}"));
    files::create_dir(&top).unwrap();
    let cfg: Config = toml::from_str(&format!(
        "group = \"gr\"\nrole = \"secondary\"\nkey_file = \"/k\"\nlisten = \"127.0.0.1:1\"\nlog_dir = {:?}\n",
        top.display().to_string()
    ))
    .unwrap();
    let d = &FastDigest;
    let gid = record::group_id_of_name(d, cfg.group.as_bytes());
    let gkey = GroupKey::derive(d, gid, &[]).unwrap();
    let dev = File::create(top.join("dev")).unwrap();
    let s = Arc::new(Sec {
        cfg,
        key: vec![0; 16],
        gkey,
        fs: Arc::new(files::Os),
        dir: top.clone(),
        dev: Mutex::new(Some(dev)),
        sizes: [0; MAX_DEVICES as usize],
        state: Mutex::new(State {
            windows: Vec::new(),
            streams: Vec::new(),
            rendezvous: Rendezvous::new(vec![IntervalSlot::default(); 4], 6, 0),
            markers: BTreeMap::new(),
            points: Points::restore(0, None).unwrap(),
            applied: 5,
            applying: 0,
            redo: 0,
            intervals: 0,
            release: false,
            release_force: false,
            release_refused: None,
            released: false,
            stop: false,
            apply_error: None,
            state_full: None,
            g2: DurableOrder::new(0),
            spans: Spans::default(),
            dropped: None,
        }),
        logs: Vec::new(),
        more: Notify::new(),
        rejected: Rejected::default(),
        listen: Arc::default(),
        room: Mutex::default(),
    });
    (s, top)
}

/// SIGTERM's stop ends the apply loop (between batches), without
/// releasing the device.
#[tokio::test]
async fn the_apply_loop_stops() {
    let (s, top) = idle("stop");
    let applier = tokio::spawn(apply_loop(s.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!applier.is_finished());
    s.stop();
    tokio::time::timeout(Duration::from_secs(2), applier)
        .await
        .expect("the apply loop did not stop")
        .unwrap()
        .unwrap();
    assert!(lock(&s.dev).is_some());
    assert!(!lock(&s.state).released);
    // A release asked of a stopping ferryd is refused.
    assert_eq!(
        Control::release(&*s, false).await,
        Err("ferryd is stopping".to_string())
    );
    std::fs::remove_dir_all(&top).unwrap();
}

/// A release answers once the device is closed (promote needs it
/// closed), with the last interval applied; it does not end the
/// process (`run` does, once the answer is out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_answers_with_the_device_closed() {
    let (s, top) = idle("release");
    let applier = tokio::spawn(apply_loop(s.clone()));
    let s2 = s.clone();
    let watcher = std::thread::spawn(move || {
        // Whenever `released` shows, the device is closed already.
        for _ in 0..20_000 {
            let st = lock(&s2.state);
            if st.released {
                assert!(lock(&s2.dev).is_none(), "released with the device open");
                return;
            }
            drop(st);
            std::thread::yield_now();
        }
    });
    assert_eq!(
        Control::release(&*s, false).await,
        Ok(Released {
            applied_epoch: 5,
            span_dropped: None,
            inconsistent: false,
        })
    );
    assert!(lock(&s.dev).is_none());
    watcher.join().unwrap();
    tokio::time::timeout(Duration::from_secs(2), applier)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&top).unwrap();
}

#[test]
fn the_durable_end_is_saved() {
    let mut st = SavedState::default();
    st.streams.insert(
        1,
        Saved {
            durable: 8192,
            ..Saved::default()
        },
    );
    let back: SavedState = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
    assert_eq!(back.streams[&1].durable, 8192);
    // An older state.json: no durable end, nothing refused at start.
    let old = r#"{"streams":{"1":{"next":5,"ts":1,"gs":2,"log_start":4096}}}"#;
    let back: SavedState = serde_json::from_str(old).unwrap();
    assert_eq!(back.streams[&1].durable, 0);
}

/// `log_dir` has no room for `state.json`: the save waits for room
/// (applying waits with it), the status says why, and it goes through
/// once there is room; a release meanwhile is not held up.  Another
/// failure stops applying, the reason in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_dir_holds_the_state_until_there_is_room() {
    let (mut s, top) = idle("state-full");
    let fs = files::tests::Faulty::default();
    Arc::get_mut(&mut s).unwrap().fs = Arc::new(fs.clone());
    let mut st = SavedState::default();
    st.streams.insert(1, Saved::default());
    fs.inject(
        files::Op::Write,
        "state.json",
        files::Fault::Torn(5, libc::ENOSPC),
        None,
    );
    let s2 = s.clone();
    let saving = tokio::spawn(async move {
        let mut st = SavedState::default();
        st.streams.insert(1, Saved::default());
        s2.save_waiting(&st).await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!saving.is_finished());
    let why = s.status().log_full.expect("log_full");
    assert!(
        why.contains("state.json") && why.contains("No space"),
        "{why}"
    );
    assert!(!top.join("state.json").exists());
    assert!(fs.hits(files::Op::Write) >= 2, "tried again");
    fs.clear();
    assert!(tokio::time::timeout(Duration::from_secs(3), saving)
        .await
        .unwrap()
        .unwrap()
        .unwrap());
    assert!(s.status().log_full.is_none());
    assert!(top.join("state.json").exists());
    // A release while there is no room: not saved, not held up.
    fs.inject(
        files::Op::Open,
        "state.json",
        files::Fault::Errno(libc::EDQUOT),
        None,
    );
    lock(&s.state).release = true;
    assert!(!s.save_waiting(&st).await.unwrap());
    lock(&s.state).release = false;
    fs.clear();
    // EIO: no waiting; applying stops, and says why.
    fs.inject(
        files::Op::Sync,
        "state.json",
        files::Fault::Errno(libc::EIO),
        Some(1),
    );
    let error = s.save_waiting(&st).await.unwrap_err();
    let f = ApplyFailed {
        begun: false,
        saving: true,
        error,
    };
    let s2 = s.clone();
    let stopped = tokio::spawn(async move { apply_stopped(&s2, 5, f).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let why = s.status().apply_error.expect("apply_error");
    assert!(
        why.contains("state.json not saved") && why.contains("fsync"),
        "{why}"
    );
    s.stop();
    stopped.await.unwrap().unwrap();
    std::fs::remove_dir_all(&top).unwrap();
}

/// The answer of room for a resync: room when the need fits in what
/// `log_dir` has available less `resync_reserve_mb`; a refusal is
/// counted and its figures kept, and the status and the metric say so;
/// a `log_dir` whose space cannot be read has none.
#[test]
fn room_for_a_resync_is_what_is_available_less_the_reserve() {
    const MIB: u64 = 1 << 20;
    let top = fresh_dir("sec-room");
    let fs = files::tests::Faulty::default();
    fs.set_available(Some(100 * MIB));
    let mut s = receiver_on(&top, &[1], Arc::new(fs.clone()));
    assert_eq!(s.cfg.resync_reserve_mb, 64);
    let answer = |s: &Sec, need| match s.room_answer(1, 7, need) {
        Frame::Room {
            ask,
            ok,
            need: n,
            available,
            reserve,
            log_dir,
        } => {
            assert_eq!((ask, n), (7, need));
            assert_eq!(log_dir, top.display().to_string());
            (ok, available, reserve)
        }
        f => panic!("not an answer of room: {f:?}"),
    };
    // 100 MiB available, 64 kept: 36 free.
    assert_eq!(answer(&s, 36 * MIB), (true, 100 * MIB, 64 * MIB));
    assert_eq!(answer(&s, 0), (true, 100 * MIB, 64 * MIB));
    assert_eq!(s.status().resync_room_refusals, 0);
    assert_eq!(answer(&s, 36 * MIB + 1), (false, 100 * MIB, 64 * MIB));
    let st = s.status();
    assert_eq!(st.resync_room_refusals, 1);
    assert_eq!(
        st.resync_room,
        Some(ferryd::room::NoRoom {
            need: 36 * MIB + 1,
            available: 100 * MIB,
            reserve: 64 * MIB,
            log_dir: top.display().to_string(),
        })
    );
    assert!(st
        .prometheus()
        .contains("\nferry_resync_room_refusals_total{group=\"gr\"} 1\n"));
    // Less than the reserve available: nothing is free.
    fs.set_available(Some(8 * MIB));
    assert_eq!(answer(&s, 1), (false, 8 * MIB, 64 * MIB));
    // Without a reserve: all that is available.
    Arc::get_mut(&mut s).unwrap().cfg.resync_reserve_mb = 0;
    assert_eq!(answer(&s, 8 * MIB), (true, 8 * MIB, 0));
    assert_eq!(answer(&s, 8 * MIB + 1), (false, 8 * MIB, 0));
    // The space cannot be read: refused.
    fs.inject(
        files::Op::Statvfs,
        "",
        files::Fault::Errno(libc::EIO),
        Some(1),
    );
    assert_eq!(answer(&s, 1), (false, 0, 0));
    let st = s.status();
    assert_eq!(st.resync_room_refusals, 4);
    assert_eq!(st.resync_room.map(|r| (r.need, r.available)), Some((1, 0)));
    // The real file system's figure.
    fs.set_available(None);
    let (_, available, _) = answer(&s, 0);
    assert!(available > 0);
    std::fs::remove_dir_all(&top).unwrap();
}
