// SPDX-License-Identifier: GPL-2.0

//! The resync's part of the write path, under the group's state lock: what
//! a host write does while its device's resync runs
//! (`ferry_core::resync::Resync::host_write`), its completion, a record
//! dropped, `APPLIED` of the span's end, and the status.  The copy itself
//! is `resync.rs`'s.

use super::resync::Check;
use super::State;
use ferry_core::resync::{HostWrite, WriteTicket};

impl State {
    /// Whether a resync runs or its span waits to be applied: the mode
    /// `resyncing`.
    pub(super) fn resyncing(&self) -> bool {
        self.spool.replicating()
            && (self.resync.span_end.is_some() || self.streams.iter().flatten().any(|s| s.resync.is_some()))
    }

    /// Whether `START` (`full`: with `FULL_RESYNC`) begins a resync: while
    /// `ahead`, always; while replicating, for a full copy, or when no
    /// resync runs and a member has dirty chunks (the meta device marked
    /// them when it was loaded, or a full copy that could not begin);
    /// otherwise it changes nothing.
    pub(super) fn must_begin(&self, full: bool) -> bool {
        ferry_core::resync::start_begins(
            !self.spool.replicating(),
            full,
            self.resyncing(),
            self.streams.iter().flatten().any(|s| s.intent.dirty_count() > 0),
        )
    }

    /// A host write of device `id` to `at` (sectors, count) is admitted
    /// (`Resync::host_write`).
    pub(super) fn resync_check(&mut self, id: u32, at: (u64, u64)) -> Check {
        if !self.spool.replicating() {
            return Check::None;
        }
        let gen = self.resync.gen;
        match self.stream(id).and_then(|s| s.resync.as_mut()) {
            None => Check::None,
            Some(r) => match r.host_write(at.0, at.1) {
                HostWrite::Go(t) => Check::Go((gen, t)),
                HostWrite::Wait => Check::Wait,
            },
        }
    }

    /// A host write of device `id` admitted with `ticket` (none: before
    /// the resync began, or none runs) completed; `recorded`: its record
    /// was numbered and carries the content of the range.
    pub(super) fn resync_write_done(&mut self, id: u32, ticket: Option<(u64, WriteTicket)>, at: (u64, u64), recorded: bool) {
        let gen = self.resync.gen;
        let Some(s) = self.stream(id) else { return };
        s.inflight = s.inflight.saturating_sub(1);
        if let Some(r) = s.resync.as_mut() {
            let t = match ticket {
                Some((g, t)) if g == gen => t,
                _ => WriteTicket::BEFORE,
            };
            r.host_write_done(t, at.0, at.1, recorded);
        }
    }

    /// A host write of device `id` admitted with `ticket` is refused after
    /// all (`EAGAIN`): it was never in flight.
    pub(super) fn resync_refused(&mut self, id: u32, ticket: Option<(u64, WriteTicket)>) {
        self.resync_write_done(id, ticket, (0, 0), false);
    }

    /// `nr` sectors at `sector` of device `id` were dirtied again (a record
    /// dropped): out of the chunks a resync covers (rule 1).
    pub(super) fn resync_dirtied(&mut self, id: u32, sector: u64, nr: u64) {
        let Some(s) = self.stream(id) else { return };
        if let Some(r) = s.resync.as_mut() {
            r.dirtied(sector, nr);
        }
        if let Some((first, n)) = ferry_core::bitmap::chunks_of(sector, nr, s.intent.chunk_shift()) {
            ferry_core::resync::uncover(&mut s.covered, first, n);
        }
    }

    /// `APPLIED` up to `epoch`: once that covers the span's end, its
    /// covered chunks are dirty no more (rule 7).
    pub(super) fn resync_applied(&mut self, epoch: u64) {
        if !self.spool.replicating() {
            // Ahead since the span ended: writes dirtied chunks it covers
            // and no record carries them.  They stay dirty.
            self.resync.span_end = None;
            for s in self.streams.iter_mut().flatten() {
                s.covered.iter_mut().for_each(|w| *w = 0);
            }
            return;
        }
        if !self.resync.span_end.is_some_and(|e| epoch >= e) {
            return;
        }
        self.resync.span_end = None;
        self.resync.spans_applied += 1;
        for s in self.streams.iter_mut().flatten() {
            s.intent.resynced(&s.covered);
            s.covered.iter_mut().for_each(|w| *w = 0);
        }
    }

    /// Chunks left to copy and chunks in the resync of device `id`.
    pub(super) fn resync_progress(&mut self, id: u32) -> (u64, u64) {
        self.stream(id)
            .and_then(|s| s.resync.as_ref())
            .map_or((0, 0), |r| {
                let p = r.progress();
                (p.left(), p.total)
            })
    }
}
