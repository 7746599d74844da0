//! What the secondary's `ferryd` says (its status document) and does on
//! the control socket (a release, refused with no consistent point unless
//! forced: `span`).

use super::*;

impl Report for Sec {
    fn status(&self) -> Status {
        let (stopped, full): (Vec<_>, Vec<_>) = self
            .logs
            .iter()
            .map(|l| {
                let l = lock(l);
                (l.stopped().map(str::to_owned), l.full().map(str::to_owned))
            })
            .unzip();
        let (room_refusals, room_last) = {
            let r = lock(&self.room);
            (r.count, r.last.clone())
        };
        let st = lock(&self.state);
        // The first of the streams' appends that found no room, or the
        // save of state.json.
        let log_full = (st.streams.iter().zip(full))
            .find_map(|(x, f)| f.map(|f| format!("device {}: {f}", x.id)))
            .or_else(|| st.state_full.clone());
        let span = st.spans.staged();
        let streams = st
            .streams
            .iter()
            .zip(&st.windows)
            .zip(stopped)
            .map(|((x, w), log_stopped)| {
                let received = w.run_end();
                // Applied: not what is staged in a resync span, nor the
                // batch being applied.
                let done = x.saved.next - 1;
                // What is held durably and not applied yet (in the window,
                // taken from it): its bytes, and how far (in the primary's
                // time) the newest of it is ahead of the last record
                // applied.
                let lag_bytes = (w.next()..=received)
                    .filter_map(|ds| w.get(ds))
                    .map(|r| u64::from(r.item.len))
                    .sum::<u64>()
                    + x.unapplied_bytes;
                let lag_seconds = if received > done {
                    w.run_end_stamp().timestamp_ns.saturating_sub(x.saved.ts) as f64 / 1e9
                } else {
                    0.0
                };
                Stream {
                    device: x.id,
                    connected: x.connected > 0,
                    received,
                    done,
                    lag_records: received - done,
                    lag_bytes,
                    lag_seconds,
                    record_bytes: x.record_bytes,
                    wire_bytes: x.wire_bytes,
                    applied_writes: x.applied_writes,
                    log_stopped,
                }
            })
            .collect();
        Status {
            group: self.cfg.group.clone(),
            role: Role::Secondary,
            state: if st.released {
                "released"
            } else if st.applying > 0 {
                "applying"
            } else {
                "idle"
            }
            .into(),
            streams,
            applied_epoch: st.applied,
            applying_epoch: st.applying,
            spool_records: 0,
            auth_refused: self.listen.refused().iter().map(|(_, n)| n).sum(),
            auth_refused_by: self.listen.refused(),
            accept_errors: self.listen.accept_errors(),
            rejected: self.rejected.snapshot(),
            intervals_applied: st.intervals,
            consistency_point: st.points.held(),
            disk_spool_records: 0,
            disk_spool_bytes: 0,
            g2_violations: st.g2.violations(),
            apply_error: st.apply_error.clone(),
            log_full,
            spool_full: None,
            spool_error: None,
            resync_span_open: st.spans.is_open(),
            resync_span_intervals: span.intervals,
            resync_span_records: span.records,
            resync_span_bytes: span.bytes,
            resync_spans_applied: st.spans.spans_applied(),
            inconsistent: st.spans.inconsistent(),
            resync_room_refusals: room_refusals,
            resync_room: room_last,
            ..Status::default()
        }
    }
}

impl Control for Sec {
    /// Waits (up to 60 s) for the apply loop to apply every complete
    /// interval (but those of an open resync span: not applied, and said)
    /// and close the device; `ferryd` exits once the answer is out
    /// (`run`), not here.  With no consistent point (the initial full
    /// copy not applied) it is refused unless `force`: the device stays,
    /// applying goes on.
    async fn release(&self, force: bool) -> Result<Released, String> {
        {
            let mut st = lock(&self.state);
            if st.stop {
                return Err("ferryd is stopping".into());
            }
            if !force && st.spans.inconsistent() {
                return Err(apply::no_consistent_point(&st));
            }
            st.release = true;
            st.release_force = force;
            st.release_refused = None;
        }
        self.more.notify_one();
        for _ in 0..600 {
            {
                let mut st = lock(&self.state);
                if st.released {
                    return Ok(Released {
                        applied_epoch: st.applied,
                        span_dropped: st.dropped,
                        inconsistent: st.spans.inconsistent(),
                    });
                }
                if let Some(why) = st.release_refused.take() {
                    return Err(why);
                }
                if st.stop {
                    return Err("ferryd is stopping".into());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the interval in progress did not finish within 60 s".into())
    }

    async fn resync(&self, _full: bool) -> Result<ferryd::ctl::Started, String> {
        Err("this site is the secondary: a resync is started on the primary".into())
    }
}
