//! Tests of the secondary with no consistent point (`span`'s
//! *inconsistent*): the initial copy's span not applied whole yet, the
//! refusal of a release that is not forced, and the flag across restarts.

use super::apply::apply_loop;
use super::span_tests::{batches, restarted, saved_in, snapshot, until, Feed, BEGIN, END, IDS};
use super::tests::receiver;
use super::*;
use crate::files::tests::fresh_dir;
use ferry_core::record::Flags;

const INITIAL: u8 = Flags::RESYNC_BEGIN | Flags::RESYNC_INITIAL;

/// A new secondary whose first interval carries the first markers of the
/// initial copy's span, 2 and 3 staged in it: the secondary, its apply loop,
/// and the feed.
async fn full_copy_open(name: &str) -> (Arc<Sec>, tokio::task::JoinHandle<Result<()>>, Feed) {
    let s = receiver(&fresh_dir(name), &IDS);
    assert!(!s.status().inconsistent);
    let applier = tokio::spawn(apply_loop(s.clone()));
    let mut feed = Feed::default();
    for (e, f) in [(1, INITIAL), (2, 0), (3, BEGIN)] {
        feed.interval(&s, e, f);
    }
    until(&s, "2 and 3 staged", |st| {
        st.applied == 1 && st.spans.staged().intervals == 2
    })
    .await;
    (s, applier, feed)
}

/// Inconsistent from the initial copy's first interval to its end applied;
/// status, metrics and health say so meanwhile, and `state.json` keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_copy_to_a_secondary_that_holds_nothing() {
    let (s, applier, mut feed) = full_copy_open("sec-incons").await;
    let st = s.status();
    assert!(st.inconsistent && st.resync_span_open);
    assert!(st
        .prometheus()
        .contains("ferry_inconsistent{group=\"gr\"} 1\n"));
    let a = ferryd::health::assess(&st, 30.0);
    assert_eq!(a.health, ferryd::health::Health::Degraded);
    assert!(
        a.reasons.iter().any(|r| r.contains("no consistent point")),
        "{a:?}"
    );
    assert!(saved_in(&s.dir).inconsistent);
    feed.interval(&s, 4, END);
    until(&s, "the span applied", |st| st.applied == 4).await;
    let st = s.status();
    assert!(!st.inconsistent && !st.resync_span_open);
    assert!(st
        .prometheus()
        .contains("ferry_inconsistent{group=\"gr\"} 0\n"));
    // A later full copy (no RESYNC_INITIAL) keeps the consistent point
    // (interval 5).
    feed.interval(&s, 5, BEGIN);
    feed.interval(&s, 6, 0);
    until(&s, "6 staged", |st| {
        st.applied == 5 && st.spans.staged().intervals == 1
    })
    .await;
    assert!(!s.status().inconsistent);
    s.stop();
    applier.await.unwrap().unwrap();
    // Saved after each batch; the flag written only while set.
    assert!(!saved_in(&s.dir).inconsistent);
    let text = std::fs::read_to_string(s.dir.join("state.json")).unwrap();
    assert!(!text.contains("inconsistent"), "{text}");
    std::fs::remove_dir_all(&s.dir).unwrap();
}

/// A full copy asked for on a secondary that applied something (its
/// markers carry no `RESYNC_INITIAL`): staged, consistent.  The initial
/// copy's span is inconsistent even after intervals were applied (they
/// landed on unrelated content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_initial_copy_leaves_no_consistent_point() {
    let s = receiver(&fresh_dir("sec-incons-after"), &IDS);
    let applier = tokio::spawn(apply_loop(s.clone()));
    let mut feed = Feed::default();
    feed.interval(&s, 1, 0);
    until(&s, "1 applied", |st| st.applied == 1).await;
    feed.interval(&s, 2, BEGIN);
    feed.interval(&s, 3, 0);
    until(&s, "3 staged", |st| {
        st.applied == 2 && st.spans.staged().intervals == 1
    })
    .await;
    assert!(!s.status().inconsistent);
    assert!(!saved_in(&s.dir).inconsistent);
    // Promote as before: the staged span is dropped.
    let r = Control::release(&*s, false).await.unwrap();
    assert_eq!(r.applied_epoch, 2);
    assert!(r.span_dropped.is_some() && !r.inconsistent);
    applier.await.unwrap().unwrap();
    std::fs::remove_dir_all(&s.dir).unwrap();

    let s = receiver(&fresh_dir("sec-incons-late"), &IDS);
    let applier = tokio::spawn(apply_loop(s.clone()));
    let mut feed = Feed::default();
    feed.interval(&s, 1, 0);
    until(&s, "1 applied", |st| st.applied == 1).await;
    feed.interval(&s, 2, INITIAL);
    until(&s, "inconsistent", |st| st.spans.inconsistent()).await;
    assert!(s.status().inconsistent);
    assert!(Control::release(&*s, false).await.is_err());
    s.stop();
    applier.await.unwrap().unwrap();
    std::fs::remove_dir_all(&s.dir).unwrap();
}

/// A release that is not forced is refused while inconsistent: the
/// device stays, applying goes on (the span's end is applied after); a
/// forced one lets the device go, and says it had no consistent point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_is_refused_unless_forced() {
    let (s, applier, mut feed) = full_copy_open("sec-incons-promote").await;
    let why = Control::release(&*s, false).await.unwrap_err();
    assert!(
        why.contains("no consistent point")
            && why.contains("initial full copy has not been applied")
            && why.contains("ferryctl promote --force"),
        "{why}"
    );
    assert!(lock(&s.dev).is_some());
    {
        let st = lock(&s.state);
        assert!(!st.release && !st.released);
    }
    assert_eq!(s.status().state, "idle");
    // Records are still taken, and applied.
    feed.interval(&s, 4, 0);
    until(&s, "4 staged", |st| st.spans.staged().intervals == 3).await;
    let r = Control::release(&*s, true).await.unwrap();
    assert!(r.inconsistent);
    assert_eq!(r.applied_epoch, 1);
    let d = r.span_dropped.expect("span_dropped");
    assert_eq!(d.intervals, 3);
    applier.await.unwrap().unwrap();
    assert!(lock(&s.dev).is_none());
    let b = batches(&s, &s.dir.join("dev"));
    assert_eq!(b, [(1, vec![1])]);
    let st = s.status();
    assert_eq!(st.state, "released");
    assert!(st.inconsistent);
    assert!(ferryd::render::released(&r).contains("no consistent point"));
    std::fs::remove_dir_all(&s.dir).unwrap();
}

/// A release asked for while the full copy's first interval is still on
/// its way is withdrawn once that interval makes the secondary
/// inconsistent, not let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_under_way_is_refused_once_inconsistent() {
    let s = receiver(&fresh_dir("sec-incons-race"), &IDS);
    let mut feed = Feed::default();
    feed.interval(&s, 1, INITIAL);
    // Asked before the apply loop took interval 1.
    let s2 = s.clone();
    let asked = tokio::spawn(async move { Control::release(&*s2, false).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let applier = tokio::spawn(apply_loop(s.clone()));
    let why = asked.await.unwrap().unwrap_err();
    assert!(why.contains("no consistent point"), "{why}");
    assert!(lock(&s.dev).is_some());
    assert!(!lock(&s.state).released);
    s.stop();
    applier.await.unwrap().unwrap();
    std::fs::remove_dir_all(&s.dir).unwrap();
}

/// Across restarts: in the middle of the span, inconsistent (saved, the
/// span replayed); with the kernel past its end and `state.json` not
/// saved after it, consistent; with the kernel past the span's first
/// interval and `state.json` not saved after it (nothing applied),
/// inconsistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconsistent_across_restarts() {
    let (s, applier, mut feed) = full_copy_open("sec-incons-restart").await;
    s.stop();
    applier.await.unwrap().unwrap();
    let dir = s.dir.clone();
    assert!(saved_in(&dir).inconsistent);
    feed.interval(&s, 4, END);
    let as_before = snapshot(&dir);
    // Started again in the middle: inconsistent, a release refused.
    let r = restarted(&dir, 1, 0, "dev-mid");
    assert!(r.status().inconsistent);
    assert!(Control::release(&*r, false)
        .await
        .unwrap_err()
        .contains("no consistent point"));
    let applier = tokio::spawn(apply_loop(r.clone()));
    until(&r, "the span applied", |st| st.applied == 4).await;
    assert!(!r.status().inconsistent);
    r.stop();
    applier.await.unwrap().unwrap();
    assert!(!saved_in(&dir).inconsistent);
    // Started again as saved then: consistent.
    let r = restarted(&dir, 4, 0, "dev-after");
    assert!(!r.status().inconsistent);
    // The kernel applied the span's end, state.json not saved after it.
    as_before();
    let r = restarted(&dir, 4, 0, "dev-past");
    assert!(!r.status().inconsistent && !r.status().resync_span_open);
    std::fs::remove_dir_all(&dir).unwrap();
    // A new secondary: the kernel applied interval 1, state.json was not
    // saved after it (nothing applied, nothing released from the log).
    let s = receiver(&fresh_dir("sec-incons-first"), &IDS);
    let dir = s.dir.clone();
    let mut feed = Feed::default();
    for (e, f) in [(1, INITIAL), (2, 0)] {
        feed.interval(&s, e, f);
    }
    let r = restarted(&dir, 1, 0, "dev-first");
    assert!(r.status().inconsistent && r.status().resync_span_open);
    // The kernel had interval 1 in progress: the redo makes it so, and
    // the span applied undoes it.
    let r = restarted(&dir, 0, 1, "dev-redo");
    assert!(!r.status().inconsistent);
    let applier = tokio::spawn(apply_loop(r.clone()));
    until(&r, "the redo", |st| {
        st.applied == 1 && st.spans.staged().intervals == 1
    })
    .await;
    assert!(r.status().inconsistent);
    feed.interval(&r, 3, END);
    until(&r, "the span", |st| st.applied == 3).await;
    assert_eq!(
        batches(&r, &dir.join("dev-redo")),
        [(1, vec![1]), (3, vec![2, 3])]
    );
    assert!(!r.status().inconsistent);
    r.stop();
    applier.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `state.json` of an older `ferryd` (no flag) is consistent; the flag
/// is read back.
#[test]
fn the_flag_in_state_json() {
    let old: SavedState = serde_json::from_str(r#"{"streams":{},"points":null}"#).unwrap();
    assert!(!old.inconsistent);
    let new: SavedState =
        serde_json::from_str(r#"{"streams":{},"points":null,"inconsistent":true}"#).unwrap();
    assert!(new.inconsistent);
    let text = serde_json::to_string(&new).unwrap();
    assert!(text.contains(r#""inconsistent":true"#), "{text}");
}
