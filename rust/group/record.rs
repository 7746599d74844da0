// SPDX-License-Identifier: GPL-2.0

//! The record: a write, discard, flush or marker on its way to the
//! secondary, as the spool holds it and the reader frames it.  Built in
//! `map` ([`record_for`]) or by a marker insertion, the first thing a
//! write becomes; numbered at completion (`sequence.rs`).

use crate::payload::Payload;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use ferry_core::intent::Gen;
use ferry_core::resync::WriteTicket;
use ferry_core::record::{
    Flags, RecordHeader, RecordKind, CP_FIXED_LEN, HEADER_LEN, LABEL_MAX, TAIL_LEN,
};
use ferry_core::spool;
use ferry_core::stream::{Numbered, Sequenced};
use ferry_core::table::Role;
use kernel::page::PAGE_SIZE;

/// A write, discard, flush or marker on its way to the secondary.
///
/// Built in `map` (or by a marker insertion), numbered at completion; the
/// numbers are atomics so that the record can be shared (`Arc`) between the
/// bio in flight and, later, the ring and the reader.
pub(crate) struct Record {
    kind: RecordKind,
    flags: Flags,
    pub(super) device_id: u32,
    pub(super) sector: u64,
    pub(super) nr_sectors: u32,
    pub(super) payload: Payload,
    /// A consistency point's payload, encoded.
    pub(super) inline: [u8; CP_FIXED_LEN + LABEL_MAX],
    pub(super) inline_len: usize,
    /// Spool bytes charged for this record (`ferry_core::spool::charge`).
    pub(super) charge: usize,
    /// The bytes a write held for spool room waits to reserve (its
    /// `charge` is 0 until it is let in); 0 for every other record.
    pub(super) queued: usize,
    /// Its payload could not be copied in `map` without sleeping: the
    /// kick work copies it (`admit.rs`, [`Group::copy_in`]).
    ///
    /// [`Group::copy_in`]: super::Group::copy_in
    pub(super) copy: bool,
    /// When its copy was first left to the kick work (ms of the monotonic
    /// clock): it is retried until `block_timeout` has passed.
    pub(super) copy_since: u64,
    /// Write-intent generation whose count this record holds, or
    /// [`Gen::NONE`] (no chunk: flushes, markers).
    pub(super) wgen: Gen,
    /// A host write let through by its device's resync: the resync's
    /// generation and the write's ticket (`ferry_core::resync`, rule 4).
    pub(super) ticket: Option<(u64, WriteTicket)>,
    /// It touches a chunk a resync is reading: held, not admitted, until
    /// the read completes (`resync.rs`); the count of reads done when it
    /// was told to wait.
    pub(super) resync_wait: Option<u64>,
    dev_seq: AtomicU64,
    group_seq: AtomicU64,
    timestamp_ns: AtomicU64,
    epoch: AtomicU64,
}

impl Record {
    pub(super) fn new(kind: RecordKind, device_id: u32, role: Role) -> Self {
        let mut flags = Flags(0);
        if role == Role::Log {
            flags.0 |= Flags::LOG;
        }
        Self {
            kind,
            flags,
            device_id,
            sector: 0,
            nr_sectors: 0,
            payload: Payload::empty(),
            inline: [0; CP_FIXED_LEN + LABEL_MAX],
            inline_len: 0,
            // No payload (a marker, a flush): one page; admission
            // charges a write's payload (`admit.rs`).
            charge: spool::charge(0, PAGE_SIZE),
            queued: 0,
            copy: false,
            copy_since: 0,
            wgen: Gen::NONE,
            ticket: None,
            resync_wait: None,
            dev_seq: AtomicU64::new(0),
            group_seq: AtomicU64::new(0),
            timestamp_ns: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
        }
    }

    /// The record's kind.
    pub(super) fn record_kind(&self) -> RecordKind {
        self.kind
    }

    /// Flags it `RESYNC_BEGIN`, `RESYNC_END` (a checkpoint) or `RESYNC` (a
    /// resync's copy of a chunk).
    pub(super) fn flag(&mut self, bit: u8) {
        self.flags.0 |= bit;
    }

    /// A record for the same write, admitted afresh: what `map` built,
    /// before admission (a write held while a resync read its chunk goes
    /// through admission again, `resync.rs`).
    pub(super) fn renewed(&self) -> Self {
        let mut r = Self::new(self.kind, self.device_id, Role::Data);
        r.flags = self.flags;
        r.sector = self.sector;
        r.nr_sectors = self.nr_sectors;
        r
    }

    fn payload_len(&self) -> usize {
        if self.inline_len > 0 {
            self.inline_len
        } else {
            self.payload.len()
        }
    }

    pub(super) fn header(&self, group_id: u64) -> RecordHeader {
        let mut h = RecordHeader::new(self.kind);
        h.flags = self.flags;
        h.group_id = group_id;
        h.device_id = self.device_id;
        h.payload_len = u32::try_from(self.payload_len()).unwrap_or(u32::MAX);
        h.dev_seq = self.dev_seq.load(Relaxed);
        h.group_seq = self.group_seq.load(Relaxed);
        h.timestamp_ns = self.timestamp_ns.load(Relaxed);
        h.epoch = self.epoch.load(Relaxed);
        h.sector = self.sector;
        h.nr_sectors = self.nr_sectors;
        h
    }

    /// Size of the framed record: header, payload, tail.
    pub(super) fn framed_len(&self) -> usize {
        HEADER_LEN + self.payload_len() + TAIL_LEN
    }

    pub(super) fn set_numbers(&self, n: &Numbered) {
        self.dev_seq.store(n.dev_seq, Relaxed);
        self.group_seq.store(n.group_seq, Relaxed);
        self.timestamp_ns.store(n.timestamp_ns, Relaxed);
        self.epoch.store(n.epoch, Relaxed);
    }
}

impl Sequenced for Record {
    fn kind(&self) -> RecordKind {
        self.kind
    }

    fn dev_seq(&self) -> u64 {
        self.dev_seq.load(Relaxed)
    }

    fn group_seq(&self) -> u64 {
        self.group_seq.load(Relaxed)
    }
}

/// Builds a record for a write-like bio of a device.
pub(crate) fn record_for(
    kind: RecordKind,
    device_id: u32,
    role: Role,
    sector: u64,
    nr_sectors: u32,
    fua: bool,
    preflush: bool,
) -> Record {
    let mut r = Record::new(kind, device_id, role);
    if kind != RecordKind::Flush {
        r.sector = sector;
        r.nr_sectors = nr_sectors;
    }
    if fua {
        r.flags.0 |= Flags::FUA;
    }
    if preflush {
        r.flags.0 |= Flags::PREFLUSH;
    }
    r
}

/// Bytes of kernel memory a spooled record costs besides its payload
/// pages, for the documentation's and the benchmark's accounting.
pub(crate) const RECORD_OVERHEAD: usize = core::mem::size_of::<Record>();
