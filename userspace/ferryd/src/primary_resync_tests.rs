//! [`super::next`]'s decisions, and the words of the status and log.

use super::*;

/// Ahead, every stream connected, auto, the secondary holding something:
/// the facts of the ahead case.
fn ahead() -> Facts {
    Facts {
        mode: Mode::Ahead,
        can_resync: true,
        dirty: 12,
        all_connected: true,
        sized: true,
        resync: Resync::Auto,
        initial_sync: InitialSync::Full,
        all_fresh: false,
        full_done: false,
        lost: false,
    }
}

fn attempt(at: Instant, errno: Option<i32>, full: bool) -> Option<Attempt> {
    Some(Attempt {
        at,
        errno,
        held: None,
        full,
    })
}

#[test]
fn when_to_start() {
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let a = ahead();
    let m = Facts {
        resync: Resync::Manual,
        ..a
    };
    // Ahead, every stream connected, auto, nothing tried: start.
    assert_eq!(next(&a, None, t0), Next::Start(Why::Ahead));
    // Resyncing, or replicating with no dirty chunk: nothing, whatever
    // else.
    for (mode, dirty) in [
        (Mode::Replicating, 0),
        (Mode::Resyncing, 0),
        (Mode::Resyncing, 9),
    ] {
        let f = Facts { mode, dirty, ..a };
        assert_eq!(next(&f, None, t0), Next::Nothing);
        let worst = Facts {
            all_connected: false,
            resync: Resync::Manual,
            lost: true,
            ..f
        };
        assert_eq!(
            next(&worst, attempt(t0, Some(libc::EOPNOTSUPP), false), t0),
            Next::Nothing
        );
    }
    // A stream not connected: waits for it.
    let down = Facts {
        all_connected: false,
        ..a
    };
    assert_eq!(next(&down, None, t0), Next::Link(Why::Ahead));
    // Manual: never on its own.
    assert_eq!(next(&m, None, t0), Next::Manual);
    // Records lost from the disk spool: never, in either mode.
    let lost = Facts { lost: true, ..a };
    assert_eq!(next(&lost, None, t0), Next::Lost);
    assert_eq!(next(&Facts { lost: true, ..m }, None, t0), Next::Lost);
    // Refused for room: again after RETRY, not before.
    let enospc = Some(libc::ENOSPC);
    let last = attempt(t0, enospc, false);
    assert_eq!(next(&a, last, at(1)), Next::Retry(enospc));
    assert_eq!(next(&a, last, at(4)), Next::Retry(enospc));
    assert_eq!(next(&a, last, at(5)), Next::Start(Why::Ahead));
    let einval = attempt(t0, Some(libc::EINVAL), false);
    assert_eq!(next(&a, einval, at(60)), Next::Start(Why::Ahead));
    // The link first: a refusal is not retried while a stream is down.
    assert_eq!(next(&down, last, at(60)), Next::Link(Why::Ahead));
    // Accepted, and ahead again (or the kernel's lines not yet read
    // again): not at once.
    let taken = attempt(t0, None, false);
    assert_eq!(next(&a, taken, t0), Next::Retry(None));
    assert_eq!(next(&a, taken, at(5)), Next::Start(Why::Ahead));
    // EOPNOTSUPP: never again automatically.
    let unclean = attempt(t0, Some(libc::EOPNOTSUPP), false);
    assert_eq!(next(&a, unclean, at(3600)), Next::Cannot);
    assert_eq!(next(&m, unclean, at(3600)), Next::Cannot);
    // A module without resync.
    let old = Facts {
        can_resync: false,
        ..a
    };
    assert_eq!(next(&old, None, t0), Next::NoResync);
}

/// Replicating with dirty chunks (bits loaded from the meta device,
/// records that never reached the secondary): `START` as when ahead, by
/// the same rules.
#[test]
fn dirty_chunks_while_replicating() {
    let t0 = Instant::now();
    let d = Facts {
        mode: Mode::Replicating,
        dirty: 3,
        ..ahead()
    };
    assert_eq!(next(&d, None, t0), Next::Start(Why::Dirty));
    assert_eq!(
        next(
            &Facts {
                all_connected: false,
                ..d
            },
            None,
            t0
        ),
        Next::Link(Why::Dirty)
    );
    assert_eq!(next(&Facts { lost: true, ..d }, None, t0), Next::Lost);
    assert_eq!(
        next(
            &Facts {
                resync: Resync::Manual,
                ..d
            },
            None,
            t0
        ),
        Next::Manual
    );
    assert_eq!(
        next(
            &Facts {
                can_resync: false,
                ..d
            },
            None,
            t0
        ),
        Next::NoResync
    );
    let enospc = Some(libc::ENOSPC);
    let refused = attempt(t0, enospc, false);
    assert_eq!(next(&d, refused, t0), Next::Retry(enospc));
    assert_eq!(next(&d, refused, t0 + RETRY), Next::Start(Why::Dirty));
    let unclean = attempt(t0, Some(libc::EOPNOTSUPP), false);
    assert_eq!(next(&d, unclean, t0 + RETRY * 100), Next::Cannot);
    // Accepted: the kernel resyncs them, nothing more.
    let resyncing = Facts {
        mode: Mode::Resyncing,
        ..d
    };
    assert_eq!(
        next(&resyncing, attempt(t0, None, false), t0),
        Next::Nothing
    );
    // Done: no dirty chunk, nothing.
    let clean = Facts { dirty: 0, ..d };
    assert_eq!(next(&clean, None, t0), Next::Nothing);
}

/// `initial_sync = "full"` and every stream's secondary holding nothing:
/// `START` with `FULL_RESYNC`, in any mode, once.
#[test]
fn the_initial_full_copy() {
    let t0 = Instant::now();
    let fresh = Facts {
        mode: Mode::Replicating,
        dirty: 0,
        all_fresh: true,
        ..ahead()
    };
    for mode in [Mode::Replicating, Mode::Ahead, Mode::Resyncing] {
        let f = Facts { mode, ..fresh };
        assert_eq!(next(&f, None, t0), Next::Start(Why::Full), "{mode:?}");
        assert_eq!(
            next(&Facts { dirty: 5, ..f }, None, t0),
            Next::Start(Why::Full)
        );
    }
    // Not repeated once one was accepted by this process: the other
    // rules only.
    let done = Facts {
        full_done: true,
        ..fresh
    };
    assert_eq!(next(&done, attempt(t0, None, true), t0), Next::Nothing);
    assert_eq!(
        next(
            &Facts {
                mode: Mode::Ahead,
                ..done
            },
            None,
            t0
        ),
        Next::Start(Why::Ahead)
    );
    assert_eq!(
        next(
            &Facts {
                mode: Mode::Resyncing,
                ..done
            },
            None,
            t0
        ),
        Next::Nothing
    );
    // A stream whose secondary holds something: no full copy.
    let held = Facts {
        all_fresh: false,
        ..fresh
    };
    assert_eq!(next(&held, None, t0), Next::Nothing);
    assert_eq!(
        next(
            &Facts {
                mode: Mode::Ahead,
                ..held
            },
            None,
            t0
        ),
        Next::Start(Why::Ahead)
    );
    // initial_sync = "none": assumed clean.
    let none = Facts {
        initial_sync: InitialSync::None,
        ..fresh
    };
    assert_eq!(next(&none, None, t0), Next::Nothing);
    // Every stream connected first.
    let down = Facts {
        all_connected: false,
        ..fresh
    };
    assert_eq!(next(&down, None, t0), Next::Link(Why::Full));
    // Manual: said, not done.
    let manual = Facts {
        resync: Resync::Manual,
        ..fresh
    };
    assert_eq!(next(&manual, None, t0), Next::ManualFull);
    // Refused for room: again after RETRY.
    let enospc = Some(libc::ENOSPC);
    let refused = attempt(t0, enospc, true);
    assert_eq!(next(&fresh, refused, t0), Next::Retry(enospc));
    assert_eq!(next(&fresh, refused, t0 + RETRY), Next::Start(Why::Full));
    // A full START refused with EOPNOTSUPP is done with (the caller sets
    // full_done); it does not stop the resync of what is dirty.
    let no_full = Facts {
        full_done: true,
        mode: Mode::Ahead,
        ..fresh
    };
    let unsupported = attempt(t0, Some(libc::EOPNOTSUPP), true);
    assert_eq!(
        next(&no_full, unsupported, t0 + RETRY),
        Next::Start(Why::Ahead)
    );
    // A member unclean (a plain START refused so): no full copy either.
    let unclean = attempt(t0, Some(libc::EOPNOTSUPP), false);
    assert_eq!(next(&fresh, unclean, t0 + RETRY), Next::Cannot);
    // Lost records and an old module stop it as the others.
    assert_eq!(
        next(
            &Facts {
                lost: true,
                ..fresh
            },
            None,
            t0
        ),
        Next::Lost
    );
    assert_eq!(
        next(
            &Facts {
                can_resync: false,
                ..fresh
            },
            None,
            t0
        ),
        Next::NoResync
    );
}

/// A `START` the secondary's answer of room held back (not written):
/// the question is asked again after `RETRY`, not before; the link, a
/// manual resync, lost records come first; the room not known is said.
#[test]
fn a_start_held_for_room() {
    let t0 = Instant::now();
    let a = ahead();
    let held = |h| {
        Some(Attempt {
            at: t0,
            errno: None,
            held: Some(h),
            full: false,
        })
    };
    for h in [Held::NoRoom, Held::NoAnswer] {
        assert_eq!(next(&a, held(h), t0), Next::Held(h));
        assert_eq!(
            next(&a, held(h), t0 + RETRY - Duration::from_millis(1)),
            Next::Held(h)
        );
        // Asked again: a START (once the secondary has room).
        assert_eq!(next(&a, held(h), t0 + RETRY), Next::Start(Why::Ahead));
    }
    let no_room = held(Held::NoRoom);
    // Dirty chunks while replicating, and the initial full copy, alike.
    let dirty = Facts {
        mode: Mode::Replicating,
        dirty: 3,
        ..a
    };
    assert_eq!(next(&dirty, no_room, t0), Next::Held(Held::NoRoom));
    assert_eq!(next(&dirty, no_room, t0 + RETRY), Next::Start(Why::Dirty));
    let fresh = Facts {
        all_fresh: true,
        ..dirty
    };
    let full = Some(Attempt {
        full: true,
        ..no_room.unwrap()
    });
    assert_eq!(next(&fresh, full, t0), Next::Held(Held::NoRoom));
    assert_eq!(next(&fresh, full, t0 + RETRY), Next::Start(Why::Full));
    // Held, then resyncing (a START by other means) or clean: nothing.
    for f in [
        Facts {
            mode: Mode::Resyncing,
            ..a
        },
        Facts {
            mode: Mode::Replicating,
            dirty: 0,
            ..a
        },
    ] {
        assert_eq!(next(&f, no_room, t0), Next::Nothing);
    }
    // What comes before it.
    let down = Facts {
        all_connected: false,
        ..a
    };
    assert_eq!(next(&down, no_room, t0), Next::Link(Why::Ahead));
    let manual = Facts {
        resync: Resync::Manual,
        ..a
    };
    assert_eq!(next(&manual, no_room, t0), Next::Manual);
    assert_eq!(next(&Facts { lost: true, ..a }, no_room, t0), Next::Lost);
    // The room a resync needs not known: no START (and no question).
    let no_size = Facts { sized: false, ..a };
    assert_eq!(next(&no_size, None, t0), Next::Unsized);
    assert_eq!(next(&no_size, no_room, t0 + RETRY), Next::Unsized);
    assert_eq!(
        next(
            &Facts {
                sized: false,
                ..down
            },
            None,
            t0
        ),
        Next::Link(Why::Ahead)
    );
    // Their words (the figures come with the secondary's answer).
    let n = note(Next::Held(Held::NoRoom), "gr").unwrap();
    assert!(
        n.contains("refused by the secondary, no room in its log_dir")
            && n.contains("asked again every 5 s"),
        "{n}"
    );
    let n = note(Next::Held(Held::NoAnswer), "gr").unwrap();
    assert!(n.contains("did not answer"), "{n}");
    let n = note(Next::Unsized, "gr").unwrap();
    assert!(n.contains("chunk size"), "{n}");
}

#[test]
fn holding_nothing() {
    // What a secondary with an empty remote log and a new meta device
    // answers.
    assert!(holds_nothing(1, 0));
    // A record of the stream held, or an interval applied.
    assert!(!holds_nothing(2, 0));
    assert!(!holds_nothing(1, 1));
    assert!(!holds_nothing(40, 7));
    // Not a welcome a secondary sends; not nothing either.
    assert!(!holds_nothing(0, 0));
}

#[test]
fn refusals_in_words() {
    assert!(refused(libc::EOPNOTSUPP).contains("unclean shutdown"));
    assert!(refused(libc::EOPNOTSUPP).contains("primary crash recovery is not in this version"));
    assert!(refused(libc::ENOSPC).contains("no room in the kernel's spool"));
    assert!(refused(libc::EINVAL).contains("quarter of the kernel's spool"));
    assert!(refused(libc::EIO).contains("Input/output error"));
    assert_eq!(note(Next::Nothing, "gr"), None);
    assert_eq!(
        note(Next::Manual, "gr").unwrap(),
        "manual resync (resync = \"manual\"): ferryctl resync gr"
    );
    assert!(note(Next::ManualFull, "gr")
        .unwrap()
        .ends_with("ferryctl resync --full gr"));
    assert_eq!(
        note(Next::Link(Why::Ahead), "gr").unwrap(),
        "automatic resync: waiting for every stream to connect"
    );
    assert!(note(Next::Link(Why::Full), "gr")
        .unwrap()
        .starts_with("automatic full copy"));
    assert!(note(Next::Lost, "gr")
        .unwrap()
        .contains("not in the dirty bitmap"));
    assert!(note(Next::Retry(Some(libc::ENOSPC)), "gr")
        .unwrap()
        .contains("tried again every 5 s"));
    assert_eq!(
        Why::Full.reason(),
        "initial full copy: the secondary holds nothing of the group"
    );
    assert_eq!(Why::Ahead.reason(), "the group is ahead");
    assert_eq!(Why::Dirty.reason(), "dirty chunks while replicating");
}

mod flow {
    use super::super::super::tests::{connect, primary_in, Chardev, Lines, Room};
    use super::*;
    use crate::files::tests::fresh_dir;

    const REPLICATING: &str = "p0: 0 8 ferry primary gr 0 log replicating 5 5 5 5 0 1024 0 1 0 0 0 0\n\
                               p1: 0 8 ferry primary gr 1 data replicating 5 5 5 5 0 1024 0 1 0 0 0 0\n";

    /// A primary of two streams, both connected; `fresh`: both welcomed
    /// by a secondary that held nothing.
    fn two_streams(name: &str, fresh: bool) -> (Arc<Shared>, Arc<Lines>, Chardev) {
        let lines = Arc::new(Lines::default());
        let top = fresh_dir(name);
        std::fs::create_dir_all(&top).unwrap();
        let dev = Chardev::default();
        let (s, _) = primary_in(&top, lines.clone(), "127.0.0.1:9", 0, Box::new(dev.clone()));
        *lock(&lines.0) = Some(REPLICATING.into());
        for id in [0, 1] {
            connect(&s, id, true);
            lock(&lock(&s.devs)[&id].q).fresh = fresh;
        }
        (s, lines, dev)
    }

    /// A new secondary: one full `START`, the status says a full copy
    /// runs until the group replicates with nothing dirty; never again
    /// in this process.
    #[tokio::test]
    async fn a_new_secondary_gets_a_full_copy() {
        let (s, lines, dev) = two_streams("pri-full", true);
        Room::new(u64::MAX, 0).answer(&s);
        let t0 = Instant::now();
        let st = s.status();
        assert_eq!(st.initial_sync, "full");
        assert!(!st.resync_full);
        assert_eq!(
            st.resync_note.as_deref(),
            Some("automatic full copy: starting")
        );
        s.resync_tick(t0).await;
        // The initial copy: the secondary held nothing.
        assert_eq!(
            dev.starts_with(start_flags::FULL_RESYNC | start_flags::INITIAL),
            1
        );
        assert_eq!(dev.starts_with(start_flags::FULL_RESYNC), 0);
        assert_eq!(dev.starts(), 0);
        *lock(&lines.0) = Some(
            "p0: 0 8 ferry primary gr 0 log resyncing 5 5 5 5 0 1024 8 1 0 0 8 8\n\
             p1: 0 8 ferry primary gr 1 data resyncing 5 5 5 5 0 1024 64 1 0 0 60 64\n"
                .into(),
        );
        s.resync_tick(t0 + RETRY).await;
        let st = s.status();
        assert_eq!(st.state, "resyncing");
        assert!(st.resync_full);
        assert_eq!(st.resync_note, None);
        assert!(st
            .prometheus()
            .contains("\nferry_resync_full{group=\"gr\"} 1\n"));
        // Done: replicating, nothing dirty.
        *lock(&lines.0) = Some(REPLICATING.into());
        for k in 2..10 {
            s.resync_tick(t0 + RETRY * k).await;
        }
        let st = s.status();
        assert!(!st.resync_full);
        assert_eq!(st.resync_note, None);
        // The secondary still said nothing held at its welcome: not again.
        assert_eq!(
            dev.starts_with(start_flags::FULL_RESYNC | start_flags::INITIAL),
            1
        );
        assert_eq!(dev.starts(), 0);
    }

    /// A secondary that holds something of a stream: no full copy; dirty
    /// chunks while replicating start a resync of them.
    #[tokio::test]
    async fn a_secondary_that_holds_something() {
        let (s, lines, dev) = two_streams("pri-held", true);
        Room::new(u64::MAX, 0).answer(&s);
        lock(&lock(&s.devs)[&1].q).fresh = false;
        let t0 = Instant::now();
        s.resync_tick(t0).await;
        assert_eq!(dev.starts_with(start_flags::FULL_RESYNC), 0);
        assert_eq!(dev.starts(), 0);
        assert_eq!(s.status().resync_note, None);
        *lock(&lines.0) = Some(
            "p0: 0 8 ferry primary gr 0 log replicating 5 5 5 5 0 1024 0 1 0 0 0 0\n\
             p1: 0 8 ferry primary gr 1 data replicating 5 5 5 5 0 1024 3 1 0 0 0 0\n"
                .into(),
        );
        s.resync_tick(t0 + RETRY).await;
        assert_eq!(dev.starts(), 1);
        assert_eq!(dev.starts_with(start_flags::FULL_RESYNC), 0);
        assert!(!s.status().resync_full);
        // `ferryctl resync --full` over it: a full copy, not the initial
        // one (the secondary keeps its consistent point meanwhile).
        s.resync_now(true).await.unwrap();
        assert_eq!(dev.starts_with(start_flags::FULL_RESYNC), 1);
        assert_eq!(
            dev.starts_with(start_flags::FULL_RESYNC | start_flags::INITIAL),
            0
        );
        // initial_sync = "none" and fresh secondaries: no full copy.
        let (mut s, _, dev) = two_streams("pri-none", true);
        Arc::get_mut(&mut s).unwrap().cfg.initial_sync = InitialSync::None;
        Room::new(u64::MAX, 0).answer(&s);
        s.resync_tick(t0).await;
        assert_eq!(dev.starts_with(start_flags::FULL_RESYNC), 0);
        assert_eq!(s.status().initial_sync, "none");
    }

    /// `resync = "manual"`: the full copy is said, and `ferryctl resync
    /// --full` starts it.
    #[tokio::test]
    async fn manual_full_copy() {
        let (mut s, _, dev) = two_streams("pri-full-manual", true);
        Arc::get_mut(&mut s).unwrap().cfg.resync = Resync::Manual;
        Room::new(u64::MAX, 0).answer(&s);
        let t0 = Instant::now();
        for k in 0..5 {
            s.resync_tick(t0 + RETRY * k).await;
        }
        assert_eq!(dev.starts_with(start_flags::FULL_RESYNC), 0);
        let st = s.status();
        assert!(
            st.resync_note
                .as_deref()
                .is_some_and(|n| n.ends_with("ferryctl resync --full gr")),
            "{st:?}"
        );
        let r = s.resync_now(true).await.unwrap();
        assert_eq!(
            (r.was.as_str(), r.dirty_chunks, r.full),
            ("replicating", 0, true)
        );
        // The secondary held nothing: the initial copy.
        assert_eq!(
            dev.starts_with(start_flags::FULL_RESYNC | start_flags::INITIAL),
            1
        );
        assert!(s.status().resync_full);
        // Accepted once: the note is gone.
        assert_eq!(s.status().resync_note, None);
        // Refused with EOPNOTSUPP (an unclean member): said so.
        lock(&dev.0).1 = Some(libc::EOPNOTSUPP);
        let e = s.resync_now(true).await.unwrap_err();
        assert!(e.contains("unclean shutdown"), "{e}");
    }
}
