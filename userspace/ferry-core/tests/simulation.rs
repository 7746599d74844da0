//! The deterministic simulation under `cargo test`.
//!
//! * `seeds`: FERRY_SIM_SEEDS seeds (default 10,000) from FERRY_SIM_START
//!   (default 0), on every core; any failing seed is printed with the
//!   command that replays it.
//! * `replay`: runs FERRY_SIM_SEED alone, verbosely.
//! * `soak` (ignored): millions of seeds, e.g.
//!   `FERRY_SIM_SEEDS=1000000 FERRY_SIM_START=10000 cargo test --test simulation -- --ignored soak --nocapture`
//!   (the test profile is optimised and keeps overflow checks).
//! * `bug_*`: defects injected on purpose; the oracle must catch each.

mod sim;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use sim::{run, Bug, Config, Failure, Stats};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn replay_hint(f: &Failure, bug: Option<Bug>) -> String {
    match bug {
        None => format!(
            "{f}\n  reproduce: FERRY_SIM_SEED={} cargo test -p ferry-core --test simulation -- replay --nocapture",
            f.seed
        ),
        Some(b) => format!("{f} (with {b:?})"),
    }
}

/// Runs `count` seeds from `start` on every core; returns the failures and
/// the summed counters.
fn sweep(start: u64, count: u64, bug: Option<Bug>, stop_at_first: bool) -> (Vec<Failure>, Stats) {
    let next = AtomicU64::new(start);
    let failures = Mutex::new(Vec::new());
    let total = Mutex::new(Stats::default());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                let mut local = Stats::default();
                loop {
                    if stop_at_first && !failures.lock().unwrap().is_empty() {
                        break;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= start + count {
                        break;
                    }
                    let n = seed - start + 1;
                    if n % 50_000 == 0 {
                        eprintln!("simulation: {n} seeds run");
                    }
                    let mut cfg = Config::new(seed);
                    cfg.bug = bug;
                    match run(cfg) {
                        Ok(s) => {
                            local.writes += s.writes;
                            local.intervals += s.intervals;
                            local.rejected += s.rejected;
                            local.primary_crashes += s.primary_crashes;
                            local.secondary_crashes += s.secondary_crashes;
                            local.redos += s.redos;
                            local.torn_marks += s.torn_marks;
                            local.reads_waited += s.reads_waited;
                            local.points_held += s.points_held;
                            local.intent_waits += s.intent_waits;
                            local.chunks_cleared += s.chunks_cleared;
                            local.spool_waits += s.spool_waits;
                            local.resync_reads += s.resync_reads;
                            local.resync_by_write += s.resync_by_write;
                            local.resync_held += s.resync_held;
                            local.spans_applied += s.spans_applied;
                            local.live_resyncs += s.live_resyncs;
                            local.full_resyncs += s.full_resyncs;
                            local.reads_paced += s.reads_paced;
                            local.overflows += s.overflows;
                            local.ahead_writes += s.ahead_writes;
                            local.steps += s.steps;
                        }
                        Err(f) => {
                            if bug.is_none() {
                                eprintln!("{}", replay_hint(&f, bug));
                            }
                            failures.lock().unwrap().push(f);
                        }
                    }
                }
                let mut t = total.lock().unwrap();
                t.writes += local.writes;
                t.intervals += local.intervals;
                t.rejected += local.rejected;
                t.primary_crashes += local.primary_crashes;
                t.secondary_crashes += local.secondary_crashes;
                t.redos += local.redos;
                t.torn_marks += local.torn_marks;
                t.reads_waited += local.reads_waited;
                t.points_held += local.points_held;
                t.intent_waits += local.intent_waits;
                t.chunks_cleared += local.chunks_cleared;
                t.spool_waits += local.spool_waits;
                t.overflows += local.overflows;
                t.ahead_writes += local.ahead_writes;
                t.steps += local.steps;
                t.resync_reads += local.resync_reads;
                t.resync_by_write += local.resync_by_write;
                t.resync_held += local.resync_held;
                t.spans_applied += local.spans_applied;
                t.live_resyncs += local.live_resyncs;
                t.full_resyncs += local.full_resyncs;
                t.reads_paced += local.reads_paced;
            });
        }
    });
    (failures.into_inner().unwrap(), total.into_inner().unwrap())
}

fn run_seeds(default_count: u64) {
    let start = env_u64("FERRY_SIM_START", 0);
    let count = env_u64("FERRY_SIM_SEEDS", default_count);
    let t = Instant::now();
    let (failures, s) = sweep(start, count, None, false);
    println!(
        "simulation: {count} seeds from {start} in {:.1?}: {} steps, {} writes, {} intervals applied, \
         {} primary and {} secondary crashes ({} tearing a mark), {} redos, {} damaged records rejected, \
         {} host reads held, {} consistency points held, {} writes waited for their \
         write intent, {} sweeps cleared chunks, {} writes waited for spool room, {} overflows \
         went ahead, {} writes while ahead; resync: {} chunks read, {} copied by a host write, \
         {} host writes held for a read, {} spans applied whole, {} resyncs begun by START \
         ({} of them full copies), {} steps a read waited for the rate cap",
        t.elapsed(),
        s.steps,
        s.writes,
        s.intervals,
        s.primary_crashes,
        s.secondary_crashes,
        s.torn_marks,
        s.redos,
        s.rejected,
        s.reads_waited,
        s.points_held,
        s.intent_waits,
        s.chunks_cleared,
        s.spool_waits,
        s.overflows,
        s.ahead_writes,
        s.resync_reads,
        s.resync_by_write,
        s.resync_held,
        s.spans_applied,
        s.live_resyncs,
        s.full_resyncs,
        s.reads_paced
    );
    if !failures.is_empty() {
        let mut seeds: Vec<u64> = failures.iter().map(|f| f.seed).collect();
        seeds.sort_unstable();
        panic!("{} of {count} seeds failed: {seeds:?}", failures.len());
    }
    if count >= 1000 {
        // The faults did happen and the secondary did its work.
        assert!(s.intervals > count, "the secondary barely applied anything");
        assert!(s.primary_crashes > 0 && s.secondary_crashes > 0 && s.redos > 0);
        assert!(s.intent_waits > 0 && s.chunks_cleared > 0);
        assert!(s.spool_waits > 0 && s.overflows > 0 && s.ahead_writes > 0);
        assert!(s.resync_reads > 0 && s.resync_by_write > 0 && s.resync_held > 0);
        assert!(s.spans_applied > 0 && s.live_resyncs > 0 && s.full_resyncs > 0);
        assert!(s.reads_paced > 0, "the rate cap never held a read back");
    }
}

#[test]
fn seeds() {
    run_seeds(10_000);
}

#[test]
#[ignore = "long: run explicitly with FERRY_SIM_SEEDS"]
fn soak() {
    run_seeds(1_000_000);
}

#[test]
fn replay() {
    let Ok(seed) = std::env::var("FERRY_SIM_SEED") else {
        return;
    };
    let seed: u64 = seed.parse().expect("FERRY_SIM_SEED");
    match run(Config::new(seed)) {
        Ok(s) => println!("seed {seed}: ok {s:?}"),
        Err(f) => panic!("{f}"),
    }
}

/// Runs seeds with `bug` until the oracle objects; fails if it never does.
fn caught(bug: Bug, expect_rule: &str) {
    let (failures, _) = sweep(0, 2_000, Some(bug), true);
    let f = failures
        .iter()
        .min_by_key(|f| f.seed)
        .unwrap_or_else(|| panic!("{bug:?} went unnoticed over 2000 seeds"));
    println!("{bug:?} caught: {f}");
    assert!(
        failures.iter().any(|f| f.rule.starts_with(expect_rule)),
        "{bug:?} caught, but not as {expect_rule}: {f}"
    );
}

#[test]
fn bug_gate_ignoring_watermark_is_caught() {
    caught(Bug::GateIgnoresWatermark, "G2");
}

#[test]
fn bug_limit_taking_latest_run_is_caught() {
    caught(Bug::LimitIsMax, "G");
}

#[test]
fn bug_skipping_verification_is_caught() {
    caught(Bug::SkipVerification, "G");
}

#[test]
fn bug_missing_update_in_progress_mark_is_caught() {
    caught(Bug::NoUpdateInProgressMark, "G");
}
