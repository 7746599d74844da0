//! The primary's resync held by the secondary's answer of room: nothing
//! written to the kernel, the status and the metric say so with both
//! numbers, the question asked again after the retry, `START` once there
//! is room; `ferryctl resync` refused with the same words.  (The
//! secondary here answers as `ferryd`'s does, in place of the links;
//! `primary_e2e_tests.rs` asks over a real link.)

use super::super::resync::RETRY;
use super::super::tests::{connect, primary_in, Chardev, Lines, Room};
use super::*;
use crate::files::tests::fresh_dir;
use ferry_core::command::start_flags;

/// Two devices of 32 MiB, ahead: 3 dirty chunks on the first, every
/// one (512) on the second; 64 KiB chunks.
const AHEAD: &str = "p0: 0 65536 ferry primary gr 0 log ahead 5 5 5 5 0 1024 3 1 0 0 0 0\n\
                     p1: 0 65536 ferry primary gr 1 data ahead 5 5 5 5 0 1024 512 1 0 0 0 0\n";

/// What the resync of [`AHEAD`] needs: 515 chunks and a record each.
const NEED: u64 = 515 * ((64 << 10) + 112);
/// What a full copy of it needs: every chunk, 1,024.
const NEED_FULL: u64 = 1024 * ((64 << 10) + 112);

/// A primary of [`AHEAD`], both streams connected; `manual`: `resync =
/// "manual"`.  Its secondary answers as [`Room`] says.
fn ahead(name: &str, room: &Room, manual: bool) -> (Arc<Shared>, Chardev) {
    let lines = Arc::new(Lines::default());
    let top = fresh_dir(name);
    std::fs::create_dir_all(&top).unwrap();
    let dev = Chardev::default();
    let (mut s, _) = primary_in(&top, lines.clone(), "127.0.0.1:9", 0, Box::new(dev.clone()));
    if manual {
        Arc::get_mut(&mut s).unwrap().cfg.resync = ferryd::config::Resync::Manual;
    }
    *lock(&lines.0) = Some(AHEAD.into());
    for id in [0, 1] {
        connect(&s, id, true);
    }
    room.answer(&s);
    (s, dev)
}

#[tokio::test]
async fn a_resync_the_secondary_has_no_room_for_waits() {
    // The secondary's log_dir: 8 MiB available, 4 MiB kept.
    let room = Room::new(8 << 20, 4 << 20);
    let (s, dev) = ahead("pri-room", &room, false);
    let t0 = Instant::now();
    s.resync_tick(t0).await;
    assert_eq!(room.asked(), [NEED]);
    assert_eq!(dev.starts(), 0, "START written with no room");
    let st = s.status();
    assert_eq!(st.state, "ahead");
    assert_eq!(st.resync_room_refusals, 1);
    assert_eq!(
        st.resync_room,
        Some(NoRoom {
            need: NEED,
            available: 8 << 20,
            reserve: 4 << 20,
            log_dir: "/var/lib/ferry/gr".into(),
        })
    );
    assert_eq!(
        st.resync_note.as_deref(),
        Some(
            "resync refused by the secondary: it needs 32.2 MiB in its log_dir \
             (/var/lib/ferry/gr), 4.0 MiB are free (8.0 MiB available, less its reserve of \
             4.0 MiB); free space there, or raise it, and the resync starts by itself"
        )
    );
    assert!(st
        .prometheus()
        .contains("\nferry_resync_room_refusals_total{group=\"gr\"} 1\n"));
    // Not asked again before the retry.
    s.resync_tick(t0 + Duration::from_secs(1)).await;
    assert_eq!(room.asked().len(), 1);
    // The retry due, the secondary not asked yet: the status still says
    // the refusal (not "starting").
    let view = s.kernel_view().unwrap();
    let due = s.resync_note(s.resync_next(&view, t0 + RETRY));
    assert_eq!(due, st.resync_note);
    // Asked again: still no room, counted, nothing written.
    s.resync_tick(t0 + RETRY).await;
    assert_eq!(room.asked(), [NEED, NEED]);
    assert_eq!(dev.starts(), 0);
    assert_eq!(s.status().resync_room_refusals, 2);
    // Room (space freed): the next question starts it.
    lock(&room.0).0 = 64 << 20;
    s.resync_tick(t0 + RETRY * 2).await;
    assert_eq!(room.asked().len(), 3);
    assert_eq!(dev.starts(), 1);
    let st = s.status();
    assert_eq!((st.resync_room_refusals, &st.resync_room), (2, &None));
    assert!(
        st.resync_note
            .as_deref()
            .is_none_or(|n| !n.contains("refused by the secondary")),
        "{st:?}"
    );
}

/// `ferryctl resync [--full]`: the same question first; a refusal is
/// its error, with both numbers and what to run; nothing written.
#[tokio::test]
async fn ferryctl_resync_asks_first() {
    // 64 MiB available, nothing kept: the resync of the dirty chunks
    // fits, a full copy (64 MiB and its headers) does not.
    let room = Room::new(64 << 20, 0);
    let (s, dev) = ahead("pri-room-ctl", &room, false);
    let e = s.resync_now(true).await.unwrap_err();
    assert_eq!(room.asked(), [NEED_FULL]);
    assert_eq!(
        e,
        "resync refused by the secondary: it needs 64.1 MiB in its log_dir \
         (/var/lib/ferry/gr), 64.0 MiB are free (64.0 MiB available, less its reserve of 0 B); \
         free space there, or raise it, then run ferryctl resync --full gr again"
    );
    assert_eq!(dev.starts_with(start_flags::FULL_RESYNC), 0);
    assert_eq!(s.status().resync_room_refusals, 1);
    // Not full: room, START.
    let r = s.resync_now(false).await.unwrap();
    assert_eq!((r.was.as_str(), r.dirty_chunks), ("ahead", 515));
    assert_eq!(dev.starts(), 1);
    assert_eq!(room.asked(), [NEED_FULL, NEED]);
    // resync = "manual": what to run says so.
    let room = Room::new(1 << 20, 0);
    let (s, dev) = ahead("pri-room-manual", &room, true);
    let e = s.resync_now(false).await.unwrap_err();
    assert!(
        e.starts_with("resync refused by the secondary: it needs 32.2 MiB in its log_dir")
            && e.ends_with("then run ferryctl resync gr again"),
        "{e}"
    );
    assert_eq!(dev.starts(), 0);
    // resync = "auto": the automatic resync goes on asking.
    let (s2, _) = ahead("pri-room-auto", &room, false);
    let e = s2.resync_now(false).await.unwrap_err();
    assert!(
        e.ends_with("and the automatic resync starts it by itself"),
        "{e}"
    );
    drop(s);
}

/// No answer (the link that carries the question closes, no stream is
/// connected): nothing written, the status says why, asked again.
#[tokio::test]
async fn no_answer_writes_nothing() {
    let room = Room::new(u64::MAX, 0);
    let lines = Arc::new(Lines::default());
    let top = fresh_dir("pri-room-none");
    std::fs::create_dir_all(&top).unwrap();
    let dev = Chardev::default();
    let (s, _) = primary_in(&top, lines.clone(), "127.0.0.1:9", 0, Box::new(dev.clone()));
    *lock(&lines.0) = Some(AHEAD.into());
    for id in [0, 1] {
        connect(&s, id, true);
    }
    // The link that takes the question closes before an answer.
    let s2 = s.clone();
    let closer = tokio::spawn(async move {
        loop {
            if s2.room_question(0).is_some() {
                s2.room_link_closed(0);
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let t0 = Instant::now();
    s.resync_tick(t0).await;
    closer.await.unwrap();
    assert_eq!(dev.starts(), 0);
    let st = s.status();
    assert_eq!((st.resync_room_refusals, &st.resync_room), (0, &None));
    let n = st.resync_note.unwrap_or_default();
    assert!(
        n.contains("the secondary did not answer whether its log_dir has room")
            && n.contains("link, which carried the question, closed")
            && n.contains("asked again every 5 s"),
        "{n}"
    );
    // No stream connected: ferryctl resync says so.
    for id in [0, 1] {
        connect(&s, id, false);
    }
    let e = s.resync_now(false).await.unwrap_err();
    assert!(e.contains("no stream is connected to the secondary"), "{e}");
    // Answered again: START.
    for id in [0, 1] {
        connect(&s, id, true);
    }
    room.answer(&s);
    s.resync_tick(Instant::now() + RETRY).await;
    assert_eq!(dev.starts(), 1);
}

/// A yes to less than the resync needs now (the application wrote while
/// the question was on its way) starts nothing; the next question asks
/// for the new need, and its yes starts the resync.
#[tokio::test]
async fn a_yes_to_a_need_that_grew_starts_nothing() {
    let lines = Arc::new(Lines::default());
    let top = fresh_dir("pri-room-grew");
    std::fs::create_dir_all(&top).unwrap();
    let dev = Chardev::default();
    let (s, _) = primary_in(&top, lines.clone(), "127.0.0.1:9", 0, Box::new(dev.clone()));
    // Ahead with 3 dirty chunks on p0 and none yet on p1.
    *lock(&lines.0) = Some(AHEAD.replace(" 1024 512 1 ", " 1024 0 1 "));
    for id in [0, 1] {
        connect(&s, id, true);
    }
    // The secondary says yes to everything; the first time, the writes
    // have dirtied all of p1 by the time the yes comes.
    let asked = Arc::new(Mutex::new(Vec::new()));
    {
        let (s, lines, asked) = (s.clone(), lines.clone(), asked.clone());
        tokio::spawn(async move {
            while !s.stopping() {
                let ids: Vec<u32> = lock(&s.devs).keys().copied().collect();
                for id in ids {
                    if let Some(Frame::RoomAsk { ask, need }) = s.room_question(id) {
                        lock(&asked).push(need);
                        *lock(&lines.0) = Some(AHEAD.into());
                        let no = ferryd::room::NoRoom {
                            need,
                            available: 1 << 40,
                            reserve: 0,
                            log_dir: "/var/lib/ferry/gr".into(),
                        };
                        s.room_answered(ask, true, no);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    let t0 = Instant::now();
    s.resync_tick(t0).await;
    let small = 3 * ((64 << 10) + 112);
    assert_eq!(*lock(&asked), [small]);
    assert_eq!(
        dev.starts(),
        0,
        "START written on a yes to {small} bytes with {NEED} needed"
    );
    assert!(
        s.status().resync_note.is_some_and(|n| n.contains(&format!(
            "its yes was for {small} bytes; the dirty data grew to {NEED} bytes since"
        ))),
        "{:?}",
        s.status()
    );
    s.resync_tick(t0 + RETRY).await;
    assert_eq!(*lock(&asked), [small, NEED]);
    assert_eq!(dev.starts(), 1);
}
