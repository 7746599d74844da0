//! The secondary's apply loop: which whole intervals go together, their
//! check, their writing through the kernel, and what is saved after.
//!
//! * **The batch.**  The oldest interval whose markers all arrived at or
//!   below the interval limit is taken whole from the windows (ferry-core's
//!   `interval_limit`, `Rendezvous::ready`, `next_in_group_order`), then the
//!   ready ones after it, up to a batch's bounds.  Each interval's records
//!   are staged in the resync spans ([`crate::span`]); a batch may end
//!   only with an interval outside any open span, and the interval that
//!   ends a span ends its batch.  Records staged inside a span wait there
//!   for the span's end, however many intervals it takes.
//! * **Applied as one.**  Every record of the batch is checked as the
//!   kernel will, then written through the kernel between `APPLY_BEGIN`
//!   and `APPLY_END` of the batch's last interval.
//! * **Saved.**  The positions the batch reached are saved (`state.json`,
//!   held at the start of an open span: [`crate::span`]) and the applied
//!   part of the remote log released.
//! * **Released.**  A release (promote) lets the device go once no batch
//!   is ready; a span's staged records are not applied.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_core::checkpoint;
use ferry_core::command::Command;
use ferry_core::record::{self, RecordKind};
use ferry_core::select::{interval_limit, next_in_group_order};
use ferry_core::FastDigest;
use ferryd::ctl::SpanDropped;
use ferryd::systemd::{Beat, HEARTBEAT};
use tracing::{error, warn};

use super::{
    lock, Item, Saved, SavedState, Sec, State, BATCH_BYTES, BATCH_INTERVALS, BATCH_RECORDS,
};
use crate::span::Step;

/// A batch of whole intervals to apply: the last of them, their records
/// in group order, and the streams' positions once it is applied.
#[derive(Debug, Default)]
pub(super) struct Job {
    pub(super) epoch: u64,
    pub(super) items: Vec<Item>,
    pub(super) intervals: u64,
    pub(super) bytes: u64,
    pub(super) positions: Vec<Saved>,
}

/// What the apply loop finds to do.
#[derive(Debug)]
pub(super) enum Next {
    /// Apply this batch.
    Apply(Job),
    /// Interval `.0` may not be applied, for `.1`: applying stops.
    Refuse(u64, anyhow::Error),
    /// No batch is ready.
    Wait,
}

/// Takes the records of interval `epoch` (those at or below `cut`) out of
/// the windows, in group order, and stages them; returns the flags of its
/// markers (their union) and each stream's marker's offset.
fn take_interval(
    st: &mut State,
    epoch: u64,
    cut: ferry_core::select::Stamp,
) -> (u8, Vec<Option<u64>>) {
    let mut flags = 0;
    let mut markers = vec![None; st.streams.len()];
    while let Some(i) = next_in_group_order(&st.windows, cut) {
        let Some((ds, r)) = st.windows[i].pop_front() else {
            break;
        };
        let len = u64::from(r.item.len);
        let x = &mut st.streams[i];
        x.taken.next = ds + 1;
        (x.taken.ts, x.taken.gs) = (r.stamp.timestamp_ns, r.stamp.group_seq);
        x.taken.log_start = x.taken.log_start.max(r.item.off + len);
        x.unapplied_bytes += len;
        if r.kind == RecordKind::Checkpoint && r.epoch == epoch {
            flags |= r.item.flags;
            markers[i] = Some(r.item.off);
        }
        st.spans
            .stage((i, r.item, r.kind == RecordKind::Write), len);
    }
    (flags, markers)
}

/// Every ready interval, oldest first, up to the batch's bounds, as one
/// batch; a redo covers exactly what the kernel's mark has in progress.
/// Intervals inside an open resync span stay staged until the one that
/// ends it ([`crate::span`]).  (A failed apply stops applying; a restart
/// of `ferryd` rebuilds all of this from the remote log and the kernel's
/// mark.)
pub(super) fn take_batch(st: &mut State) -> Result<Next> {
    let mut batch: Option<Job> = None;
    loop {
        if let Some(b) = &batch {
            let full = b.intervals >= BATCH_INTERVALS
                || b.items.len() >= BATCH_RECORDS
                || b.bytes >= BATCH_BYTES;
            if (st.redo > 0 && b.epoch >= st.redo) || (st.redo == 0 && full) {
                break;
            }
        }
        let oldest = st.rendezvous.oldest();
        let limit = interval_limit(&st.windows, |i| {
            st.markers
                .get(&(oldest, i))
                .is_some_and(|&ds| st.windows[i].run_end() >= ds)
        });
        let Some((epoch, cut)) = limit.and_then(|l| st.rendezvous.ready(l)) else {
            break;
        };
        let (flags, markers) = take_interval(st, epoch, cut);
        // Taken: the next ready interval is the next one.
        st.rendezvous
            .retire(epoch)
            .map_err(|e| anyhow::anyhow!("retire {epoch}: {e}"))?;
        st.markers.retain(|&(e, _), _| e > epoch);
        match st.spans.interval(epoch, flags, markers) {
            Err(e) => {
                let why = anyhow::anyhow!(
                    "the markers of interval {epoch} carry RESYNC_END, and no resync span \
                     that began before it is open ({e:?})"
                );
                return Ok(Next::Refuse(epoch, why));
            }
            Ok(Step::Staged) => {}
            Ok(Step::Batch { span_end }) => {
                let d = st.spans.drain();
                let b = batch.get_or_insert_with(Job::default);
                b.epoch = epoch;
                b.items.extend(d.items);
                b.intervals += d.intervals;
                b.bytes += d.bytes;
                b.positions = st.streams.iter().map(|x| x.taken).collect();
                if span_end {
                    break;
                }
            }
        }
    }
    match batch {
        Some(b) if st.redo > 0 && b.epoch != st.redo => bail!(
            "interval {} was in progress, but the remote log holds the intervals up to it only to {}",
            st.redo,
            b.epoch
        ),
        Some(b) => {
            st.applying = b.epoch;
            Ok(Next::Apply(b))
        }
        None => Ok(Next::Wait),
    }
}

/// The batch `job` is applied: the state moves on, and what is to be
/// saved comes back.
pub(super) fn finish_batch(st: &mut State, job: &Job) -> SavedState {
    st.applied = job.epoch;
    st.applying = 0;
    st.redo = 0;
    st.intervals += job.intervals;
    for (x, p) in st.streams.iter_mut().zip(&job.positions) {
        x.saved = *p;
    }
    for &(i, loc, write) in &job.items {
        let x = &mut st.streams[i];
        x.applied_writes += u64::from(write);
        x.unapplied_bytes = x.unapplied_bytes.saturating_sub(u64::from(loc.len));
    }
    st.spans.applied(job.epoch);
    st.saved_state()
}

/// The refusal of a release that is not forced while the secondary has no
/// consistent point.
pub(super) fn no_consistent_point(st: &State) -> String {
    let d = st.spans.staged();
    format!(
        "no consistent point: the initial full copy has not been applied (its resync span is \
         open, {} intervals staged; the devices hold interval {} over their own earlier \
         content, not a point of the primary's past); ferryctl promote --force promotes anyway, \
         and the devices then hold unrelated content in the chunks not copied yet",
        d.intervals, st.applied
    )
}

/// Whether a release asked for may let the device go now: not while the
/// secondary has no consistent point, unless forced (a release refused
/// so is withdrawn, and its answer says why; applying goes on).
pub(super) fn may_let_go(st: &mut State) -> bool {
    if st.release_force || !st.spans.inconsistent() {
        return true;
    }
    st.release = false;
    st.release_refused = Some(no_consistent_point(st));
    false
}

/// Lets the device go (a release), closed before `released` says so: the
/// answer to the release must find the device free for promote.  A resync
/// span open now is not applied: what it staged is dropped, and said.
pub(super) fn let_go(s: &Sec, st: &mut State) {
    lock(&s.dev).take();
    if st.spans.is_open() {
        let d = st.spans.staged();
        warn!(
            applied = st.applied,
            intervals = d.intervals,
            records = d.records,
            bytes = d.bytes,
            "released with a resync span open: what it staged is not applied, the devices hold the last interval applied"
        );
        st.dropped = Some(SpanDropped {
            intervals: d.intervals,
            records: d.records,
            bytes: d.bytes,
        });
    }
    if st.spans.inconsistent() {
        warn!(
            applied = st.applied,
            "released (forced) with no consistent point: the initial full copy was not applied, \
             the chunks not copied yet hold the devices' own earlier content"
        );
    }
    st.released = true;
}

/// Applies whole intervals as they become ready.  Returns when released,
/// or when asked to stop: between batches, never in the middle of one
/// (a batch is applied, and its positions saved, whole).
pub(super) async fn apply_loop(s: Arc<Sec>) -> Result<()> {
    // Its sign of life, for the watchdog: each turn (at least every
    // 500 ms), once a batch is checked, and each record applied.
    let beat = HEARTBEAT.beat("the apply loop");
    loop {
        beat.progress();
        let notified = s.more.notified();
        let next = {
            let mut st = lock(&s.state);
            if st.stop {
                return Ok(());
            }
            let next = take_batch(&mut st)?;
            // (With a redo due, the kernel holds host reads until the
            // intervals up to it are whole here.)
            if matches!(next, Next::Wait) && st.release && may_let_go(&mut st) {
                let_go(&s, &mut st);
                return Ok(());
            }
            next
        };
        let job = match next {
            Next::Apply(job) => job,
            Next::Refuse(epoch, error) => {
                let f = ApplyFailed {
                    begun: false,
                    saving: false,
                    error,
                };
                return apply_stopped(&s, epoch, f).await;
            }
            Next::Wait => {
                let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
                continue;
            }
        };
        let epoch = job.epoch;
        let (s2, b2) = (s.clone(), beat.clone());
        let applied = tokio::task::spawn_blocking(move || {
            apply_checked(&s2, job.epoch, &job.items, &b2).map(|()| job)
        })
        .await?;
        let job = match applied {
            Ok(job) => job,
            Err(f) => return apply_stopped(&s, epoch, f).await,
        };
        let mut saved = finish_batch(&mut lock(&s.state), &job);
        for (i, sv) in saved.streams.values_mut().enumerate() {
            sv.durable = lock(&s.logs[i]).durable();
        }
        tracing::debug!(
            epoch,
            intervals = job.intervals,
            records = job.items.len(),
            "intervals applied"
        );
        match s.save_waiting(&saved).await {
            Ok(true) => {}
            // Stopping or released: nothing is released from the log.
            Ok(false) => continue,
            Err(error) => {
                let f = ApplyFailed {
                    begun: false,
                    saving: true,
                    error,
                };
                return apply_stopped(&s, epoch, f).await;
            }
        }
        // What is applied and saved leaves the remote log.
        for (i, sv) in saved.streams.values().enumerate() {
            let upto = sv.log_start & !4095;
            if upto > 0 {
                lock(&s.logs[i]).punch(upto);
            }
        }
    }
}

/// A batch was not applied: applying stops here, and `ferryd` stays up
/// so that its status says why and a release (`ferryctl promote`) still
/// finds it.  Not begun: the devices are at the last interval applied, and
/// the secondary may be promoted there.  Begun: the kernel's mark holds the
/// interval in progress (the devices are not consistent); a restart of
/// `ferryd` applies it again (redo).
pub(super) async fn apply_stopped(s: &Arc<Sec>, epoch: u64, f: ApplyFailed) -> Result<()> {
    let why = if f.saving {
        format!(
            "state.json not saved after interval {epoch} was applied: {:#}; the devices hold \
             interval {epoch} (restart ferryd once log_dir is healthy)",
            f.error
        )
    } else if f.begun {
        format!(
            "interval {epoch} failed while applied: {:#}; the devices are mid-interval \
             (restart ferryd to apply it again)",
            f.error
        )
    } else {
        format!(
            "intervals up to {epoch} not applied: {:#}; the devices hold interval {}",
            f.error,
            lock(&s.state).applied
        )
    };
    error!("applying stopped: {why}");
    {
        let mut st = lock(&s.state);
        st.apply_error = Some(why);
        if !f.begun {
            st.applying = 0;
        }
    }
    loop {
        let notified = s.more.notified();
        {
            let mut st = lock(&s.state);
            if st.stop {
                return Ok(());
            }
            if st.release && may_let_go(&mut st) {
                let_go(s, &mut st);
                return Ok(());
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
    }
}

/// Why a batch of intervals was not applied.
#[derive(Debug)]
pub(super) struct ApplyFailed {
    /// Whether `APPLY_BEGIN` went: the devices may hold part of the batch
    /// (the kernel's mark says so, and holds host reads and promote).
    pub(super) begun: bool,
    /// The batch was applied whole, and saving the positions failed.
    pub(super) saving: bool,
    pub(super) error: anyhow::Error,
}

/// Checks every record of the intervals up to `epoch` as the kernel will
/// (`ferry_core::record::decode_record`, at most `MAX_RECORD_LEN` bytes,
/// an interval of the batch, a member device, a range inside it on this
/// site: `ferry_core::checkpoint::place`), so that a batch the kernel
/// would refuse half-way is never begun, and the devices stay at the last
/// interval applied.
pub(super) fn check_intervals(s: &Sec, epoch: u64, items: &[Item]) -> Result<()> {
    let after = lock(&s.state).applied;
    let mut buf = Vec::new();
    for &(i, loc, _) in items {
        if loc.len as usize > record::MAX_RECORD_LEN {
            bail!(
                "a record of {} bytes at {} of stream {}: above the {} a secondary applies",
                loc.len,
                loc.off,
                i,
                record::MAX_RECORD_LEN
            );
        }
        buf.resize(loc.len as usize, 0);
        lock(&s.logs[i])
            .read_exact_at(&mut buf, loc.off)
            .context("read the remote log")?;
        let r = record::decode_record(&buf, &s.gkey, &FastDigest)
            .map_err(|e| anyhow::anyhow!("a record at {} of stream {i}: {e}", loc.off))?;
        let h = r.header;
        let what = || format!("record {} of device {}", h.dev_seq, h.device_id);
        if r.len != buf.len() {
            bail!(
                "{}: {} bytes in the remote log, {} in the record",
                what(),
                buf.len(),
                r.len
            );
        }
        if h.epoch <= after || h.epoch > epoch {
            bail!(
                "{}: interval {}, not in {}..={epoch}",
                what(),
                h.epoch,
                after + 1
            );
        }
        let len = s.sizes.get(h.device_id as usize).copied().unwrap_or(0);
        if len == 0 {
            bail!("{}: no such device in this secondary's group", what());
        }
        checkpoint::place(h.kind, h.sector, h.nr_sectors, len, 0).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (sectors {}+{}, the device here has {len}: is it smaller than the primary's?)",
                what(),
                h.sector,
                h.nr_sectors
            )
        })?;
    }
    Ok(())
}

/// Applies the intervals up to `epoch` once every record of them is
/// checked (`check_intervals`).
pub(super) fn apply_checked(
    s: &Sec,
    epoch: u64,
    items: &[Item],
    beat: &Beat,
) -> Result<(), ApplyFailed> {
    check_intervals(s, epoch, items).map_err(|error| ApplyFailed {
        begun: false,
        saving: false,
        error,
    })?;
    beat.progress();
    apply_intervals(s, epoch, items, beat).map_err(|error| ApplyFailed {
        begun: true,
        saving: false,
        error,
    })
}

/// Writes the intervals up to `epoch` through the kernel, as one: the mark,
/// the records in group order, the end.
fn apply_intervals(s: &Sec, epoch: u64, items: &[Item], beat: &Beat) -> Result<()> {
    s.command(Command::ApplyBegin { epoch })?;
    let mut buf = Vec::new();
    for &(i, loc, _) in items {
        beat.progress();
        buf.resize(loc.len as usize, 0);
        lock(&s.logs[i])
            .read_exact_at(&mut buf, loc.off)
            .context("read the remote log")?;
        let mut dev = lock(&s.dev);
        dev.as_mut()
            .context("released")?
            .write_all(&buf)
            .context("apply a record")?;
    }
    s.command(Command::ApplyEnd { epoch })
}
