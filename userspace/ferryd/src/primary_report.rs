//! What the primary's `ferryd` says (its status document) and does on
//! the control socket (a resync; a release is for a secondary).

use super::*;

impl Report for Shared {
    /// The state is the kernel's when it is `ahead` or `resyncing`;
    /// otherwise `replicating` while a stream is connected, `connecting`
    /// when none is.  Every device of the group the kernel names is
    /// listed, also before its first record is read.  When `ahead`, the
    /// note says what will start a resync, or why none will (also when a
    /// full copy or the dirty chunks of a `replicating` group need one).
    fn status(&self) -> Status {
        let view = self.kernel_view();
        let resync_note = view
            .as_ref()
            .and_then(|v| self.resync_note(self.resync_next(v, Instant::now())));
        let (left, total) = view.as_ref().map_or((0, 0), |v| v.resync_chunks());
        let bytes = match &view {
            Some(v) if total > 0 => self
                .kernel
                .tables()
                .ok()
                .and_then(|t| v.resync_bytes(&kernel::chunk_kib(&t, &self.cfg.group))),
            Some(_) => Some((0, 0)),
            None => None,
        };
        let dirty = view.as_ref().map_or(0, |v| v.dirty);
        let (room_refusals, no_room) = {
            let st = lock(&self.resync);
            (st.room_refusals, st.no_room.clone())
        };
        let now = kernel::mono_ns();
        let ahead_ns = self.stamp_ahead.load(Relaxed);
        let devs = lock(&self.devs);
        let mut streams = Vec::new();
        let mut spool = 0;
        let mut disk_records = 0;
        let mut connected = false;
        for d in devs.values() {
            let q = lock(&d.q);
            let lag_bytes = q.recs.iter().map(|r| u64::from(r.len)).sum();
            spool += q.recs.len() as u64;
            disk_records += q
                .recs
                .iter()
                .filter(|r| matches!(r.data, Data::Disk(_)))
                .count() as u64;
            connected |= q.connected;
            streams.push(Stream {
                device: d.id,
                connected: q.connected,
                received: q.highest_read,
                done: q.acked,
                lag_records: q.highest_read - q.acked,
                lag_bytes,
                lag_seconds: q
                    .recs
                    .front()
                    .map_or(0.0, |r| kernel::age_seconds(r.stamp_ns, now, ahead_ns)),
                record_bytes: q.record_bytes,
                wire_bytes: q.wire_bytes,
                applied_writes: 0,
                log_stopped: None,
            });
        }
        drop(devs);
        let mode = view.as_ref().map(|v| v.mode);
        for id in view.map(|v| v.devices).unwrap_or_default() {
            if !streams.iter().any(|s| s.device == id) {
                streams.push(Stream {
                    device: id,
                    ..Stream::default()
                });
            }
        }
        streams.sort_by_key(|s| s.device);
        let trouble = {
            let t = lock(&self.spool_trouble);
            SpoolTrouble {
                full: t.full.clone(),
                error: t.error.clone(),
                retry_at: None,
            }
        };
        Status {
            group: self.cfg.group.clone(),
            role: Role::Primary,
            state: if let Some(m @ (kernel::Mode::Ahead | kernel::Mode::Resyncing)) = mode {
                m.word()
            } else if connected {
                "replicating"
            } else {
                "connecting"
            }
            .into(),
            streams,
            applied_epoch: self.applied.load(Relaxed),
            applying_epoch: 0,
            spool_records: spool,
            auth_refused: 0,
            auth_refused_by: Vec::new(),
            accept_errors: 0,
            rejected: Vec::new(),
            intervals_applied: 0,
            consistency_point: None,
            disk_spool_records: disk_records,
            disk_spool_bytes: self.disk_bytes.load(Relaxed),
            g2_violations: 0,
            apply_error: None,
            log_full: None,
            spool_full: trouble.full,
            spool_error: trouble.error.map(|(_, why)| why),
            resync_span_open: false,
            resync_span_intervals: 0,
            resync_span_records: 0,
            resync_span_bytes: 0,
            resync_spans_applied: 0,
            inconsistent: false,
            resync_mode: self.cfg.resync.to_string(),
            resync_note,
            initial_sync: self.cfg.initial_sync.to_string(),
            resync_full: lock(&self.resync).full_copy,
            dirty_chunks: dirty,
            resync_chunks_left: left,
            resync_chunks_total: total,
            resync_bytes_left: bytes.map(|b| b.0),
            resync_bytes_total: bytes.map(|b| b.1),
            resync_room_refusals: room_refusals,
            resync_room: no_room,
        }
    }
}

impl crate::Control for Shared {
    async fn release(&self, _force: bool) -> Result<ferryd::ctl::Released, String> {
        Err("this site is the primary: release is for a secondary".into())
    }

    async fn resync(&self, full: bool) -> Result<ferryd::ctl::Started, String> {
        self.resync_now(full).await
    }
}
