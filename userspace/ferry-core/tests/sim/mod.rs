//! Deterministic simulation of a ferry consistency group: a primary with one
//! `log` and two `data` devices, a writer issuing dependent and concurrent
//! writes, a network that reorders, duplicates, drops, corrupts, delays and
//! partitions each stream, and a secondary with a remote log and atomic
//! interval apply. Primary and secondary crash at random steps and recover.
//!
//! Everything the system under test decides goes through ferry-core: record
//! encoding and verification, receive windows, the limit, the checkpoint
//! rendezvous, the apply state machine, consistency points, and on the
//! primary the types the kernel runs: the group order and each device's
//! stream (`stream::GroupOrder`, `stream::Stream`: numbering at
//! completion, the gate, the order records are read in, `ACK`, `ACK_LOG`
//! and `SPOOLED` as the helper writes them), its write intent
//! (`intent::WriteIntent`: admission in passes, intent written before a
//! write lands, `SPOOLED`, the sweep, and the bitmap pages it writes to the
//! meta device) and the group's spool (`spool::Spool`: what each record
//! charges under a small cap, `overflow block` writers that wait for room
//! and come back when it has some, `overflow bitmap` going `ahead`, writes
//! while `ahead` tracked in the bitmap only, markers refused while full or
//! ahead), and every command the helper writes (`ACK`, `ACK_LOG`,
//! `SPOOLED`, `INSERT_CHECKPOINT`, `INSERT_CONSISTENCY_POINT`) checked whole
//! as the kernel checks a `write(2)` (`batch::Batch`). The helper's part (records read and not acknowledged, sent
//! again after a timeout or a reconnect) is modelled here. An independent
//! oracle checks after every step:
//!
//! * G1: the secondary image a host may read equals the primary's image
//!   after a prefix of its completion order;
//! * G2: no data record becomes durable at the secondary before every log
//!   record of lower or equal group order;
//! * G3: every block where the images differ is marked on the primary's meta
//!   device, or the record that wrote it is durable in the secondary's
//!   contiguous remote log (acknowledged: the secondary applies it whatever
//!   happens to the primary); and every record the primary drops as
//!   acknowledged is durable remotely;
//! * G4: host reads wait while an interval is applied, and the readable image
//!   is exactly the image at the end of the last applied interval;
//! * G5: every record the secondary stores is byte for byte one the primary
//!   produced; consistency points are held only when their sets are durable;
//! * G6: the spool counts exactly the charges of the records it holds and
//!   of the writes it took that have not completed, never above its cap.
//!
//! At the end the faults stop and the run must converge: the secondary
//! applies everything, its image equals the primary's, and once everything
//! is acknowledged the sweeps leave no chunk marked.
//!
//! A restarted primary here continues with a jump in its numbers (through
//! `GroupOrder::continue_from`, the rule of a clean restart) and resyncs
//! the chunks its meta device marks with `ferry_core::resync`: reads that
//! take time (taken, issued when the host writes admitted before them are
//! done, numbered steps later) while host writes go on (held while they
//! touch a chunk being read), copies charged to the spool, a span from
//! `RESYNC_BEGIN` to `RESYNC_END` that the secondary applies as one batch
//! (`resync::Span`), and the covered chunks cleared from the dirty bitmap
//! once the secondary has applied it; every third seed runs the reads
//! under the rate cap (`resync::RateCap`, as the kernel's resync work
//! applies `resync_mbps`). Primary and secondary crash during
//! resyncs as at any other time. The product does not run that part yet (a
//! device that did not leave cleanly comes back `ahead`). The way out of
//! `ahead` after an overflow under `overflow bitmap` is the kernel's: `START`
//! while `ahead` (`start_live`, at random steps and in the drain) begins a
//! resync of the dirty chunks with the writes in flight counted in its first
//! epoch (`Resync::writes_before`), the interval `RESYNC_BEGIN` closes ending
//! before the first write made while `ahead`.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use ferry_core::batch::{Batch, Rejected};
use ferry_core::bitmap::words_for;
use ferry_core::checkpoint::{
    place, ApplyMark, ApplyState, IntervalApply, IntervalSlot, ReadHold, Rendezvous, APPLY_MARK_LEN,
};
use ferry_core::command::Command;
use ferry_core::consistency::{ConsistencyError, ConsistencyTracker};
use ferry_core::gate::{DeviceClass, Watermark};
use ferry_core::intent::{storage_words, Gen, Room, WriteIntent, WORDS_PER_PAGE};
use ferry_core::record::{
    decode_record, encode_record, off, ConsistencyPayload, Flags, GroupKey, Label, RecordHeader,
    RecordKind, HEADER_LEN, SECTOR_SIZE,
};
use ferry_core::resync::{
    app_first, start_begins, HostWrite, RateCap, ReadTicket, Resync, Span, WriteTicket,
};
use ferry_core::select::{
    interval_limit, next_in_group_order, Insert, Received, Stamp, StreamWindow,
};
use ferry_core::spool::{self, Reserve, Spool};
use ferry_core::stream::{next_releasable, watermark, Ack, GroupOrder, Sequenced, Stream};
use ferry_core::table::Overflow;
use ferry_core::FastDigest;

/// Streams (devices) of the group: stream 0 is the `log` device.
pub const DEVICES: usize = 3;
const CLASSES: [DeviceClass; DEVICES] = [DeviceClass::Log, DeviceClass::Data, DeviceClass::Data];
const BLOCKS: u64 = 16;
const CHUNK_SHIFT: u32 = 1;
const CHUNKS: u64 = BLOCKS >> CHUNK_SHIFT;
const WINDOW: usize = 96;
const INTERVALS: usize = 32;
/// Sequence numbers a restarted primary skips (its persisted reservation).
const JUMP: u64 = 1 << 12;
/// Bytes of a spool page here: a sector, so that a one-block write
/// charges one page and a two-block write two.
const PAGE: usize = SECTOR_SIZE as usize;
/// Spool cap, pages: from `SPOOL_MIN` to twice that, by seed.
const SPOOL_MIN: usize = 32;
/// Each `OVERFLOW_BITMAP_EVERY`th seed runs under `overflow bitmap`, the
/// others under `overflow block`.
const OVERFLOW_BITMAP_EVERY: u64 = 4;
/// An `ahead` write's token (what its blocks hold): this bit, and a count.
const AHEAD_TOKEN: u64 = 1 << 48;
const RTO: u64 = 10;
const GROUP_ID: u64 = 0x6665_7272_7953_494d;
const MAX_INFLIGHT: usize = 4;
/// Per mille, each step: the write-intent sweep of the tick runs.
const SWEEP: u64 = 250;
/// Per mille, each step with wanted bits: the kick work writes them.
const PERSIST: u64 = 400;
/// Per mille, each step: a writer waiting for spool room that has some
/// runs again.
const WAKE: u64 = 300;
/// Per mille, each step: the helper spools a data stream's records to the
/// primary's disk (`SPOOLED`).
const SPOOLED: u64 = 30;
/// Bytes of a chunk, as the rate cap counts them.
const CHUNK_BYTES: u64 = (PAGE as u64) << CHUNK_SHIFT;
/// The rate cap of the runs that have one (every third seed): 30 chunks
/// per second of simulated time (a step is a millisecond), a burst of 30
/// chunks, then a chunk every 33 steps.
const CAP_BYTES_PER_SEC: u64 = 30 * CHUNK_BYTES;

/// A defect injected on purpose to show the oracle catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The primary releases data records without waiting for the watermark.
    GateIgnoresWatermark,
    /// The secondary's limit is the latest run end instead of the earliest.
    LimitIsMax,
    /// The secondary stores records whose checksums or signatures fail.
    SkipVerification,
    /// The secondary applies intervals without persisting the
    /// update-in-progress mark.
    NoUpdateInProgressMark,
}

/// One simulation run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Seed of every random choice.
    pub seed: u64,
    /// Steps with faults before the final drain.
    pub steps: u64,
    /// Defect to inject.
    pub bug: Option<Bug>,
    /// What a full spool does.
    pub overflow: Overflow,
}

impl Config {
    /// The standard run for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            steps: 400,
            bug: None,
            overflow: if seed % OVERFLOW_BITMAP_EVERY == OVERFLOW_BITMAP_EVERY - 1 {
                Overflow::Bitmap
            } else {
                Overflow::Block
            },
        }
    }
}

/// A violated guarantee.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Seed of the run.
    pub seed: u64,
    /// Step at which the oracle objected.
    pub step: u64,
    /// Guarantee violated.
    pub rule: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {}: {} violated: {}",
            self.seed, self.step, self.rule, self.detail
        )
    }
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Writes completed on the primary.
    pub writes: u64,
    /// Intervals applied at the secondary.
    pub intervals: u64,
    /// Records rejected by verification at the secondary.
    pub rejected: u64,
    /// Primary crashes.
    pub primary_crashes: u64,
    /// Secondary crashes.
    pub secondary_crashes: u64,
    /// Intervals redone after a secondary crash.
    pub redos: u64,
    /// Apply marks torn by a secondary crash.
    pub torn_marks: u64,
    /// Host reads that had to wait for an interval.
    pub reads_waited: u64,
    /// Consistency points held.
    pub points_held: u64,
    /// Writes that waited for their write intent to be written.
    pub intent_waits: u64,
    /// Sweeps that cleared chunks on a meta device.
    pub chunks_cleared: u64,
    /// Writes that found the spool full and waited (`overflow block`).
    pub spool_waits: u64,
    /// Overflows that sent the group `ahead` (`overflow bitmap`).
    pub overflows: u64,
    /// Writes completed while `ahead` (tracked in the bitmap only).
    pub ahead_writes: u64,
    /// Steps run, drain included.
    pub steps: u64,
    /// Chunks a resync read and made records.
    pub resync_reads: u64,
    /// Chunks of a resync that a host write's record copied.
    pub resync_by_write: u64,
    /// Host writes held while a resync read their chunk.
    pub resync_held: u64,
    /// Resync spans the secondary applied whole.
    pub spans_applied: u64,
    /// Resyncs begun by `START` (not by a restart).
    pub live_resyncs: u64,
    /// Of those, full copies (`FULL_RESYNC`: every chunk marked first).
    pub full_resyncs: u64,
    /// Steps at which the rate cap (`resync_mbps`) held a read back.
    pub reads_paced: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

fn key() -> GroupKey {
    GroupKey::derive(&FastDigest, GROUP_ID, b"simulation").expect("key")
}

// ---------------------------------------------------------------- network

#[derive(Clone, Debug)]
enum Msg {
    Record(Vec<u8>),
    Ack { dev_seq: u64, applied: u64 },
}

#[derive(Clone, Debug)]
struct Packet {
    at: u64,
    stream: usize,
    to_secondary: bool,
    msg: Msg,
}

struct Faults {
    drop: u64,
    dup: u64,
    corrupt: u64,
    max_delay: u64,
    partition: u64,
    /// Per mille, each `APPLY_BEGIN`: the secondary crashes while it
    /// writes the marks, leaving some copies old and one torn.
    torn_mark: u64,
}

const FAULTY: Faults = Faults {
    drop: 60,
    dup: 60,
    corrupt: 40,
    max_delay: 9,
    partition: 6,
    torn_mark: 30,
};
const CALM: Faults = Faults {
    drop: 0,
    dup: 30,
    corrupt: 0,
    max_delay: 4,
    partition: 0,
    torn_mark: 0,
};

struct Net {
    q: Vec<Packet>,
    down_until: [u64; DEVICES],
}

impl Net {
    fn send(&mut self, rng: &mut Rng, f: &Faults, now: u64, stream: usize, to_sec: bool, msg: Msg) {
        if now < self.down_until[stream] || rng.chance(f.drop) {
            return;
        }
        let copies = if rng.chance(f.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut msg = msg.clone();
            if rng.chance(f.corrupt) {
                match &mut msg {
                    Msg::Record(b) if !b.is_empty() => {
                        let i = rng.below(b.len() as u64) as usize;
                        b[i] ^= 1 << rng.below(8);
                    }
                    // Acknowledgements travel in authenticated frames: a
                    // damaged one is discarded by the link.
                    _ => continue,
                }
            }
            let at = now + 1 + rng.below(f.max_delay);
            self.q.push(Packet {
                at,
                stream,
                to_secondary: to_sec,
                msg,
            });
        }
    }

    fn due(&mut self, rng: &mut Rng, now: u64) -> Vec<Packet> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.q.len() {
            if self.q[i].at <= now {
                out.push(self.q.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Deliver in a random order.
        for i in (1..out.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            out.swap(i, j);
        }
        out
    }
}

// ---------------------------------------------------------------- oracle

struct Oracle {
    seed: u64,
    step: u64,
    /// Per device and block: `(place, token)` of completed writes, in
    /// completion order.  A record's place is twice its `group_seq` (its
    /// token the `group_seq`); a write completed while `ahead` comes after
    /// the last record numbered before it, at twice its `group_seq` plus
    /// one.
    history: Vec<Vec<Vec<(u64, u64)>>>,
    /// Every record the primary produced, by (stream, dev_seq).
    produced: HashMap<(usize, u64), Vec<u8>>,
    /// Log records (every record of a log device) not yet durable remotely.
    log_not_durable: BTreeSet<u64>,
    /// Records ever durable at the secondary.
    durable: HashSet<(usize, u64)>,
    /// Group order of the last marker of each closed interval.
    epoch_end: HashMap<u64, u64>,
    /// dev_seq of each stream's record of each consistency point.
    points: HashMap<u64, [u64; DEVICES]>,
    /// First dev_seq of each stream's current generation.
    gen_base: [u64; DEVICES],
    /// Per device and block: the `dev_seq` of the latest record that
    /// carries what the primary's block holds (a write or a resync copy;
    /// `u64::MAX`: none, a write while `ahead`).
    carrier: Vec<Vec<u64>>,
    /// Writes completed while `ahead`, which have no `group_seq`: their
    /// place in the completion order, by token.
    ahead: HashMap<u64, u64>,
}

impl Oracle {
    fn fail(&self, rule: &'static str, detail: String) -> Failure {
        Failure {
            seed: self.seed,
            step: self.step,
            rule,
            detail,
        }
    }

    /// The place in the completion order of the write whose token a block
    /// holds.
    fn place_of(&self, token: u64) -> u64 {
        self.ahead.get(&token).copied().unwrap_or(2 * token)
    }

    /// A write of `[block, +len)` of `dev` completed while `ahead`, after
    /// the record `last_group_seq`: its token.
    fn ahead_write(&mut self, dev: usize, block: u64, len: u64, last_group_seq: u64) -> u64 {
        let token = AHEAD_TOKEN + self.ahead.len() as u64;
        let place = 2 * last_group_seq + 1;
        self.ahead.insert(token, place);
        for b in block..block + len {
            self.history[dev][b as usize].push((place, token));
            self.carrier[dev][b as usize] = u64::MAX;
        }
        token
    }

    /// What `block` of `dev` holds after the completion order up to
    /// `place`.
    fn image_at(&self, dev: usize, block: usize, place: u64) -> u64 {
        let h = &self.history[dev][block];
        let i = h.partition_point(|&(g, _)| g <= place);
        if i == 0 {
            0
        } else {
            h[i - 1].1
        }
    }

    fn sequenced(&mut self, stream: usize, h: &RecordHeader, bytes: &[u8]) {
        self.produced.insert((stream, h.dev_seq), bytes.to_vec());
        if CLASSES[stream] == DeviceClass::Log && ferry_core::gate::holds_data_back(h.kind) {
            self.log_not_durable.insert(h.group_seq);
        }
        if h.kind.modifies_data() {
            for b in h.sector..h.sector + u64::from(h.nr_sectors) {
                if !h.flags.has(Flags::RESYNC) {
                    self.history[stream][b as usize].push((2 * h.group_seq, h.group_seq));
                    self.carrier[stream][b as usize] = h.dev_seq;
                } else if self.carrier[stream][b as usize] == u64::MAX {
                    // A resync's copy carries what writes made while
                    // `ahead` left there; elsewhere the record that wrote
                    // the block still carries the same (a chunk is dirty
                    // for a flush while `ahead` too: its first sector's).
                    self.carrier[stream][b as usize] = h.dev_seq;
                }
            }
        }
    }

    fn made_durable(
        &mut self,
        stream: usize,
        h: &RecordHeader,
        bytes: &[u8],
    ) -> Result<(), Failure> {
        match self.produced.get(&(stream, h.dev_seq)) {
            Some(orig) if orig.as_slice() == bytes => {}
            _ => {
                return Err(self.fail(
                    "G5 validated before applied",
                    format!(
                    "stream {stream} dev_seq {} stored but differs from what the primary produced",
                    h.dev_seq
                ),
                ))
            }
        }
        if CLASSES[stream] == DeviceClass::Data {
            if let Some(&l) = self.log_not_durable.first() {
                if l <= h.group_seq {
                    return Err(self.fail(
                        "G2 log before data",
                        format!(
                            "data record group_seq {} durable before log record group_seq {l}",
                            h.group_seq
                        ),
                    ));
                }
            }
        } else {
            self.log_not_durable.remove(&h.group_seq);
        }
        self.durable.insert((stream, h.dev_seq));
        Ok(())
    }

    fn check_image(&self, sec: &[Vec<u64>], applied: u64) -> Result<(), Failure> {
        // G1: the image equals the image after the prefix ending at the
        // latest write it shows.
        let p = sec
            .iter()
            .flatten()
            .map(|&v| self.place_of(v))
            .max()
            .unwrap_or(0);
        for (d, img) in sec.iter().enumerate() {
            for (b, &v) in img.iter().enumerate() {
                let want = self.image_at(d, b, p);
                if v != want {
                    return Err(self.fail(
                        "G1 write-order fidelity",
                        format!(
                            "device {d} block {b} holds write {v} but the prefix through place {p} has {want}"
                        ),
                    ));
                }
            }
        }
        // G4: and it is exactly the end of the last applied interval.
        let end = if applied == 0 {
            0
        } else {
            match self.epoch_end.get(&applied) {
                Some(&e) => e,
                None => {
                    return Err(self.fail(
                        "G4 atomic intervals",
                        format!("applied interval {applied} was never closed by the primary"),
                    ))
                }
            }
        };
        for (d, img) in sec.iter().enumerate() {
            for (b, &v) in img.iter().enumerate() {
                let want = self.image_at(d, b, 2 * end);
                if v != want {
                    return Err(self.fail(
                        "G4 atomic intervals",
                        format!(
                            "device {d} block {b} holds {v}, interval {applied} ends with {want}"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- primary

/// A record in the kernel's ring of its device.
struct SpoolRec {
    dev_seq: u64,
    group_seq: u64,
    kind: RecordKind,
    bytes: Vec<u8>,
    /// Its write-intent generation, and its range.
    gen: Gen,
    sector: u64,
    nr: u64,
    /// Bytes it charges to the spool.
    charge: usize,
}

impl Sequenced for SpoolRec {
    fn kind(&self) -> RecordKind {
        self.kind
    }
    fn dev_seq(&self) -> u64 {
        self.dev_seq
    }
    fn group_seq(&self) -> u64 {
        self.group_seq
    }
}

/// A record the helper read from the kernel and the secondary has not
/// acknowledged (in the kernel's ring, or only on the primary's disk after
/// `SPOOLED`).
struct Shipped {
    dev_seq: u64,
    bytes: Vec<u8>,
    last_sent: Option<u64>,
}

/// Where a write is between `map` and its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admitted {
    /// The spool was full: the writer sleeps (`overflow block`).
    Sleeping,
    /// Its chunks are not durable yet: held until the kick work writes
    /// them.
    Waiting,
    /// Submitted to the data device.
    Issued,
    /// It touches a chunk a resync is reading: held, not admitted yet
    /// (`resync`, rule 4).
    Held,
}

#[derive(Clone, Copy)]
struct Inflight {
    dev: usize,
    kind: RecordKind,
    block: u64,
    len: u64,
    gen: Gen,
    /// A pass said its chunks were not durable: it waits for the kick.
    defer: bool,
    state: Admitted,
    /// Bytes its record charges to the spool.
    charge: usize,
    /// The spool took it (`Reserve::Done`): it becomes a record.
    record: bool,
    /// Let through by the device's resync: reported at completion.
    ticket: Option<WriteTicket>,
    /// The resync that gave the ticket (`Primary::resync_gen`).
    rgen: u64,
}

struct PDev {
    // Durable (the device and the meta device).
    image: Vec<u64>,
    /// The meta device's write-intent bitmap, as the pages written left it.
    meta: Vec<u64>,
    // Volatile.
    intent: WriteIntent<Vec<u64>>,
    stream: Stream<Vec<Option<Box<SpoolRec>>>>,
    /// The helper's records of the device.
    helper: std::collections::VecDeque<Shipped>,
    /// The device's resync (`ferry_core::resync`), while one runs.
    resync: Option<Resync<Vec<u64>>>,
    /// Its reads in flight: taken, then issued (the chunk's content read
    /// at that instant), then completed (numbered) at a later step.
    reads: Vec<(ReadTicket, Option<Vec<u64>>)>,
}

impl PDev {
    /// Device `dev`, its stream continuing after `start`, its ring of
    /// `slots` records.
    fn new(dev: usize, start: u64, slots: usize) -> Self {
        let words = vec![0; storage_words(CHUNKS).expect("words")];
        let slots = (0..slots).map(|_| None).collect();
        Self {
            image: vec![0; BLOCKS as usize],
            meta: vec![0; words_for(CHUNKS) as usize],
            intent: WriteIntent::new(words, CHUNKS, CHUNK_SHIFT).expect("intent"),
            stream: Stream::new(slots, CLASSES[dev], start, start + 1),
            helper: Default::default(),
            resync: None,
            reads: Vec::new(),
        }
    }

    /// The kick work: writes each bitmap page with wanted bits; they are
    /// durable once it is written.
    fn persist(&mut self) {
        let mut page = vec![0u8; 4096];
        let mut snap = vec![0u64; WORDS_PER_PAGE];
        for p in 0..self.intent.pages() {
            if self.intent.wants_page(p) {
                self.intent.persist_page(p, &mut page, &mut snap);
                write_page(&mut self.meta, p, &page);
                self.intent.persisted(p, &snap);
            }
        }
    }

    /// The tick's sweep: clears acknowledged chunks in memory, then writes
    /// the pages it changed.  Returns whether it cleared any.
    fn sweep(&mut self, last: bool) -> bool {
        let mut changed = vec![false; self.intent.pages()];
        let swept = self
            .intent
            .sweep(last, |w| changed[w / WORDS_PER_PAGE] = true);
        if swept.cleared() {
            let mut page = vec![0u8; 4096];
            for (p, _) in changed.iter().enumerate().filter(|(_, &c)| c) {
                self.intent.sweep_page(p, &mut page);
                write_page(&mut self.meta, p, &page);
            }
        }
        swept.cleared()
    }

    fn marked(&self, block: u64) -> bool {
        let c = block >> CHUNK_SHIFT;
        self.meta[(c / 64) as usize] & 1 << (c % 64) != 0
    }
}

/// A bitmap page written to the meta device.
fn write_page(meta: &mut [u64], p: usize, page: &[u8]) {
    for (i, b) in page.chunks_exact(8).enumerate() {
        if let Some(w) = meta.get_mut(p * WORDS_PER_PAGE + i) {
            *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Handshake {
    generation: u64,
    bases: [u64; DEVICES],
    first_epoch: u64,
}

struct Primary {
    up: bool,
    /// The group's spool accounting and mode.
    spool: Spool,
    devs: Vec<PDev>,
    order: GroupOrder,
    generation: u64,
    inflight: Vec<Inflight>,
    handshake: Option<Handshake>,
    /// The interval the last resync span ended with, until the secondary
    /// has applied it; and what each device's resync covered, whose dirty
    /// bits clear then (`resync`, rule 7).
    span_end: Option<u64>,
    covered: Vec<Vec<u64>>,
    /// Counts the resyncs begun: a write's ticket names its own.
    resync_gen: u64,
    /// The resync's read rate cap (`resync_mbps`), as the kernel's
    /// resync work applies it: a read is issued only when it lets it.
    cap: RateCap,
}

// ---------------------------------------------------------------- secondary

#[derive(Clone)]
struct Entry {
    h: RecordHeader,
    payload: Vec<u8>,
}

type Window = StreamWindow<(), Vec<Option<Received<()>>>>;

/// A batch of whole intervals to apply: its last interval, and its
/// records (stream, `dev_seq`) in the order they are applied.
type AppliedBatch = (u64, Vec<(usize, u64)>);

struct Job {
    epoch: u64,
    items: Vec<(usize, u64)>,
    pos: usize,
}

struct Secondary {
    up: bool,
    // Durable: the image, the remote log, the meta block.
    image: Vec<Vec<u64>>,
    log: HashMap<(usize, u64), Entry>,
    /// Each member's meta device: the apply mark, copy A and copy B.
    marks: [[[u8; APPLY_MARK_LEN]; 2]; DEVICES],
    next: [u64; DEVICES],
    next_stamp: [Stamp; DEVICES],
    first_epoch: u64,
    points: ConsistencyTracker<DEVICES, 8>,
    point_scan: [u64; DEVICES],
    generation: u64,
    /// Records of a primary generation before the last handshake that the
    /// secondary held contiguously (so acknowledged), in group order: they
    /// are applied first in the next interval.
    carry: Vec<(usize, u64)>,
    /// The resync spans (`ferry_core::resync::Span`) as of the last batch
    /// applied.
    span: Span,
    // Volatile.
    /// Records of whole intervals taken inside an open span, to be applied
    /// with the interval that ends it.
    staged: Vec<(usize, u64)>,
    /// The spans with the markers of the staged intervals seen.
    span_work: Span,
    windows: Vec<Window>,
    rendezvous: Rendezvous<Vec<IntervalSlot>>,
    apply: IntervalApply,
    reads: ReadHold,
    job: Option<Job>,
    handshake: Option<Handshake>,
}

impl Secondary {
    fn new() -> Self {
        let mut s = Self {
            up: true,
            image: vec![vec![0; BLOCKS as usize]; DEVICES],
            log: HashMap::new(),
            marks: [[encode_mark(IntervalApply::new(0).mark()); 2]; DEVICES],
            next: [1; DEVICES],
            next_stamp: [Stamp::ZERO; DEVICES],
            first_epoch: 1,
            points: ConsistencyTracker::new([0; DEVICES], (1 << DEVICES) - 1),
            point_scan: [0; DEVICES],
            generation: 0,
            carry: Vec::new(),
            span: Span::new(),
            staged: Vec::new(),
            span_work: Span::new(),
            windows: Vec::new(),
            rendezvous: Rendezvous::new(vec![IntervalSlot::default(); INTERVALS], 1, 0),
            apply: IntervalApply::new(0),
            reads: ReadHold::new(false),
            job: None,
            handshake: None,
        };
        s.rebuild();
        s
    }

    /// Rebuilds the volatile state from the durable one (start, restart).
    fn rebuild(&mut self) {
        // Each window holds what the remote log holds of its stream past
        // what was applied (a span staged whole may be longer than a
        // window), and a window's room more (as ferryd's recovery).
        self.windows = (0..DEVICES)
            .map(|s| {
                let held = self
                    .log
                    .keys()
                    .filter(|k| k.0 == s && k.1 >= self.next[s])
                    .count();
                StreamWindow::new(vec![None; WINDOW + held], self.next[s], self.next_stamp[s])
            })
            .collect();
        self.rendezvous = Rendezvous::new(
            vec![IntervalSlot::default(); INTERVALS],
            self.first_epoch,
            (1 << DEVICES) - 1,
        );
        let mut entries: Vec<_> = self.log.iter().map(|(k, e)| (*k, e.h)).collect();
        entries.sort_by_key(|(k, _)| *k);
        for ((s, ds), h) in entries {
            let r = received(&h);
            if matches!(self.windows[s].insert(ds, r), Ok(Insert::Accepted { .. }))
                && h.kind == RecordKind::Checkpoint
            {
                let _ = self.rendezvous.marker(s as u32, h.epoch, r.stamp);
            }
        }
        // As the kernel's join: each member's mark from its copies, merged.
        let mark = self
            .marks
            .iter()
            .fold(IntervalApply::new(0).mark(), |m, copies| {
                let read = copies
                    .iter()
                    .map(|b| Ok::<_, ()>(ApplyMark::decode(b, &FastDigest).ok()));
                m.merge(ApplyMark::first_valid(read).expect("no I/O error"))
            });
        let (apply, _) = IntervalApply::recover(mark);
        self.apply = apply;
        self.reads = ReadHold::new(!apply.may_read());
        self.job = None;
        self.handshake = None;
        self.staged.clear();
        self.span_work = self.span;
    }
}

impl Secondary {
    /// Whether record `ds` of `stream` is durable in the contiguous remote
    /// log, or carried: it will be applied, whatever the primary does.
    fn holds(&self, stream: usize, ds: u64) -> bool {
        self.carry.contains(&(stream, ds))
            || (self.log.contains_key(&(stream, ds)) && ds <= self.windows[stream].run_end())
    }
}

/// ferry-core's limit for the oldest open interval: a stream whose run
/// holds its marker of that interval counts as complete.
fn interval_limit_of(s: &Secondary) -> Option<Stamp> {
    let oldest = s.rendezvous.oldest();
    interval_limit(&s.windows, |i| {
        s.log.iter().any(|(&(st, ds), e)| {
            st == i
                && e.h.kind == RecordKind::Checkpoint
                && e.h.epoch == oldest
                && ds <= s.windows[i].run_end()
        })
    })
}

fn received(h: &RecordHeader) -> Received<()> {
    Received {
        stamp: Stamp {
            timestamp_ns: h.timestamp_ns,
            group_seq: h.group_seq,
        },
        epoch: h.epoch,
        kind: h.kind,
        item: (),
    }
}

/// What a secondary without verification would make of a damaged record.
fn parse_unverified(b: &[u8]) -> Option<(RecordHeader, Vec<u8>)> {
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let h = RecordHeader {
        kind: RecordKind::from_u8(*b.get(off::KIND)?)?,
        flags: Flags(*b.get(off::FLAGS)?),
        group_id: u64_at(off::GROUP_ID)?,
        device_id: u32_at(off::DEVICE_ID)?,
        payload_len: u32_at(off::PAYLOAD_LEN)?,
        dev_seq: u64_at(off::DEV_SEQ)?,
        group_seq: u64_at(off::GROUP_SEQ)?,
        timestamp_ns: u64_at(off::TIMESTAMP)?,
        epoch: u64_at(off::EPOCH)?,
        sector: u64_at(off::SECTOR)?,
        nr_sectors: u32_at(off::NR_SECTORS)?,
    };
    h.validate().ok()?;
    if h.sector + u64::from(h.nr_sectors) > BLOCKS {
        return None;
    }
    let p = b.get(HEADER_LEN..HEADER_LEN + h.payload_len as usize)?;
    Some((h, p.to_vec()))
}

// ---------------------------------------------------------------- the world

struct World {
    cfg: Config,
    rng: Rng,
    now: u64,
    key: GroupKey,
    net: Net,
    p: Primary,
    s: Secondary,
    o: Oracle,
    stats: Stats,
    faults: &'static Faults,
    image_dirty: bool,
}

/// The primary's spool in run `cfg`: its cap by seed, its policy.
fn new_spool(cfg: &Config) -> Spool {
    let pages = SPOOL_MIN + (cfg.seed / OVERFLOW_BITMAP_EVERY % (SPOOL_MIN as u64 + 1)) as usize;
    Spool::new(pages * PAGE, cfg.overflow)
}

/// Records a device's ring holds: what the spool's cap bounds, and the
/// resync's copies, which charge nothing.
fn ring_slots(spool: &Spool) -> usize {
    spool.slots(PAGE) + CHUNKS as usize
}

/// Runs one simulation; `Ok` with its counters, or the first violation.
pub fn run(cfg: Config) -> Result<Stats, Failure> {
    let spool = new_spool(&cfg);
    let mut w = World {
        cfg,
        rng: Rng(cfg.seed ^ 0x5EED_F00D_CAFE_0001),
        now: 0,
        key: key(),
        net: Net {
            q: Vec::new(),
            down_until: [0; DEVICES],
        },
        p: Primary {
            up: true,
            spool,
            devs: (0..DEVICES)
                .map(|d| PDev::new(d, 0, ring_slots(&spool)))
                .collect(),
            order: GroupOrder::new(),
            generation: 0,
            inflight: Vec::new(),
            handshake: None,
            span_end: None,
            covered: vec![Vec::new(); DEVICES],
            resync_gen: 0,
            cap: RateCap::new(
                if cfg.seed % 3 == 1 {
                    CAP_BYTES_PER_SEC
                } else {
                    0
                },
                0,
            ),
        },
        s: Secondary::new(),
        o: Oracle {
            seed: cfg.seed,
            step: 0,
            history: vec![vec![Vec::new(); BLOCKS as usize]; DEVICES],
            produced: HashMap::new(),
            log_not_durable: BTreeSet::new(),
            durable: HashSet::new(),
            epoch_end: HashMap::new(),
            points: HashMap::new(),
            gen_base: [1; DEVICES],
            carrier: vec![vec![0; BLOCKS as usize]; DEVICES],
            ahead: HashMap::new(),
        },
        stats: Stats::default(),
        faults: &FAULTY,
        image_dirty: true,
    };
    for _ in 0..cfg.steps {
        w.step(true)?;
    }
    w.drain()?;
    w.stats.steps = w.now;
    Ok(w.stats)
}

impl World {
    fn step(&mut self, faults: bool) -> Result<(), Failure> {
        self.now += 1;
        self.o.step = self.now;

        if faults {
            self.inject_faults()?;
        }
        if self.p.up {
            if faults {
                self.writer();
            } else {
                self.complete_some(MAX_INFLIGHT);
            }
            self.intent_work();
            if faults && !self.p.spool.replicating() && self.rng.chance(20) {
                self.start_live(false);
            } else if faults && self.p.spool.replicating() && self.rng.chance(2) {
                // `START` while replicating: a full copy, or (nothing
                // happens unless a device has dirty chunks) a plain one.
                let full = self.rng.chance(500);
                self.start_live(full);
            }
            self.resync_work();
            if self.now % 12 == 0 {
                self.checkpoint();
            }
            if faults && self.rng.chance(15) {
                self.consistency_point();
            }
            self.release_and_send();
            if faults {
                self.spool_to_disk();
            }
            self.offer_handshake();
        }
        for pkt in self.net.due(&mut self.rng, self.now) {
            if pkt.to_secondary {
                if self.s.up {
                    if let Msg::Record(b) = pkt.msg {
                        self.receive(pkt.stream, &b)?;
                    }
                }
            } else if self.p.up {
                if let Msg::Ack { dev_seq, applied } = pkt.msg {
                    self.resync_applied(applied);
                    self.on_ack(pkt.stream, dev_seq)?;
                }
            }
        }
        if self.s.up {
            self.secondary_work()?;
        }
        self.check()
    }

    fn inject_faults(&mut self) -> Result<(), Failure> {
        for s in 0..DEVICES {
            if self.rng.chance(self.faults.partition) {
                self.net.down_until[s] = self.now + 5 + self.rng.below(40);
            }
            if self.now == self.net.down_until[s] && self.p.up {
                self.reconnect(s);
            }
        }
        if self.p.up && self.rng.chance(4) {
            self.crash_primary();
        } else if !self.p.up && self.rng.chance(100) {
            self.recover_primary();
        }
        if self.s.up && self.rng.chance(5) {
            self.crash_secondary();
        } else if !self.s.up && self.rng.chance(120) {
            self.recover_secondary()?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ primary

    fn writer(&mut self) {
        if self.p.inflight.len() < MAX_INFLIGHT && self.rng.chance(450) {
            let dev = self.rng.below(DEVICES as u64) as usize;
            self.submit(dev);
        }
        let issued: Vec<usize> = (0..self.p.inflight.len())
            .filter(|&i| self.p.inflight[i].state == Admitted::Issued)
            .collect();
        if !issued.is_empty() && self.rng.chance(550) {
            let i = issued[self.rng.below(issued.len() as u64) as usize];
            let done = self.p.inflight.swap_remove(i);
            self.complete(done);
            // A database writes its data page once the log record is down.
            if CLASSES[done.dev] == DeviceClass::Log && self.rng.chance(500) {
                let dev = 1 + self.rng.below(DEVICES as u64 - 1) as usize;
                self.submit(dev);
            }
        }
    }

    /// The drain: every writer waiting for spool room that has some is let
    /// in, the intent written, and up to `n` writes complete.
    fn complete_some(&mut self, n: usize) {
        for i in 0..self.p.inflight.len() {
            let f = self.p.inflight[i];
            if f.state == Admitted::Sleeping && self.p.spool.has_room(f.charge) {
                self.admit_again(i);
            }
        }
        self.persist_intent();
        for _ in 0..n {
            let Some(i) = self
                .p
                .inflight
                .iter()
                .rposition(|f| f.state == Admitted::Issued)
            else {
                break;
            };
            let done = self.p.inflight.remove(i);
            self.complete(done);
        }
    }

    /// A spool reservation of `charge` bytes (`Spool::reserve`), counted.
    fn reserve(&mut self, charge: usize) -> Reserve {
        let r = self.p.spool.reserve(charge);
        match r {
            Reserve::Full => self.stats.spool_waits += 1,
            Reserve::Overflow => self.stats.overflows += 1,
            _ => {}
        }
        r
    }

    fn submit(&mut self, dev: usize) {
        let roll = self.rng.below(100);
        let kind = match roll {
            0..=79 => RecordKind::Write,
            80..=86 => RecordKind::Discard,
            87..=93 => RecordKind::WriteZeroes,
            _ => RecordKind::Flush,
        };
        let (block, len) = if kind == RecordKind::Flush {
            (0, 0)
        } else {
            let len = 1 + self.rng.below(2);
            let block = self.rng.below(BLOCKS - len + 1);
            // Concurrent writes never overlap (their order would be undefined).
            if self.p.inflight.iter().any(|f| {
                f.dev == dev && f.len > 0 && f.block < block + len && block < f.block + f.len
            }) {
                return;
            }
            (block, len)
        };
        self.start_write(dev, kind, block, len);
    }

    /// `map` of a write: held while it touches a chunk the device's resync
    /// is reading (`resync`, rule 4), else the first admission pass, spool
    /// room then write intent, as the kernel's `Group::admit` does.
    fn start_write(&mut self, dev: usize, kind: RecordKind, block: u64, len: u64) {
        let payload = if kind == RecordKind::Write { len } else { 0 };
        let charge = spool::charge(payload as usize * SECTOR_SIZE as usize, PAGE);
        let ticket = match self.p.devs[dev]
            .resync
            .as_mut()
            .map(|r| r.host_write(block, len))
        {
            Some(HostWrite::Wait) => {
                self.stats.resync_held += 1;
                self.p.inflight.push(Inflight {
                    dev,
                    kind,
                    block,
                    len,
                    gen: Gen::NONE,
                    defer: false,
                    state: Admitted::Held,
                    charge,
                    record: false,
                    ticket: None,
                    rgen: 0,
                });
                return;
            }
            Some(HostWrite::Go(t)) => Some(t),
            None => None,
        };
        let reserve = self.reserve(charge);
        let a = self.p.devs[dev]
            .intent
            .admit(block, len, true, reserve.room());
        if reserve.room() == Room::Bitmap {
            self.dirtied(dev, block, len);
        }
        if self.rng.chance(50) && (a.defer || reserve == Reserve::Full) {
            // REQ_NOWAIT: it would have to wait, so it fails with EAGAIN
            // and its room and record are given back.
            if reserve == Reserve::Done {
                self.p.spool.release(charge);
            }
            self.p.devs[dev].intent.finish(a.gen);
            if let (Some(t), Some(r)) = (ticket, self.p.devs[dev].resync.as_mut()) {
                r.host_write_done(t, block, len, false);
            }
            return;
        }
        let state = match reserve {
            Reserve::Full => Admitted::Sleeping,
            _ if a.defer => Admitted::Waiting,
            _ => Admitted::Issued,
        };
        if state == Admitted::Waiting {
            self.stats.intent_waits += 1;
        }
        self.p.inflight.push(Inflight {
            dev,
            kind,
            block,
            len,
            gen: a.gen,
            defer: a.defer,
            state,
            charge,
            record: reserve == Reserve::Done,
            ticket,
            rgen: self.p.resync_gen,
        });
    }

    /// `len` blocks at `block` of `dev` were marked dirty: out of what a
    /// resync covers, running or waiting for its span to be applied
    /// (`resync`, rule 1).
    fn dirtied(&mut self, dev: usize, block: u64, len: u64) {
        if let Some(r) = self.p.devs[dev].resync.as_mut() {
            r.dirtied(block, len);
        }
        if let Some((first, n)) = ferry_core::bitmap::chunks_of(block, len, CHUNK_SHIFT) {
            ferry_core::resync::uncover(&mut self.p.covered[dev], first, n);
        }
    }

    /// Writes held for a resync read go through `map` again (held again
    /// if the read is still in flight).
    fn let_held_in(&mut self) {
        let held: Vec<Inflight> = self
            .p
            .inflight
            .iter()
            .filter(|f| f.state == Admitted::Held)
            .copied()
            .collect();
        if held.is_empty() {
            return;
        }
        self.p.inflight.retain(|f| f.state != Admitted::Held);
        for f in held {
            self.start_write(f.dev, f.kind, f.block, f.len);
        }
    }

    /// A sleeping writer comes back: admitted again with what the spool
    /// does now (`first` false; full again, it sleeps again); it waits for
    /// its intent if either pass said so.
    fn admit_again(&mut self, i: usize) {
        let f = self.p.inflight[i];
        let reserve = self.reserve(f.charge);
        let a = self.p.devs[f.dev]
            .intent
            .admit(f.block, f.len, false, reserve.room());
        if reserve.room() == Room::Bitmap {
            self.dirtied(f.dev, f.block, f.len);
        }
        if reserve == Reserve::Full {
            return;
        }
        let f = &mut self.p.inflight[i];
        f.record = reserve == Reserve::Done;
        f.gen = a.gen;
        f.defer |= a.defer;
        f.state = if f.defer {
            Admitted::Waiting
        } else {
            Admitted::Issued
        };
        if f.defer {
            self.stats.intent_waits += 1;
        }
    }

    /// The kick work: every device's wanted bits are written, then the
    /// writes that waited for them go.
    fn persist_intent(&mut self) {
        for d in &mut self.p.devs {
            d.persist();
        }
        for f in &mut self.p.inflight {
            if f.state == Admitted::Waiting {
                f.state = Admitted::Issued;
            }
        }
    }

    /// The group's work items: sleeping writers whose wait is over
    /// (`Spool::has_room`) run again, the kick work, the tick's sweep.
    fn intent_work(&mut self) {
        for i in 0..self.p.inflight.len() {
            let f = self.p.inflight[i];
            if f.state == Admitted::Sleeping
                && self.p.spool.has_room(f.charge)
                && self.rng.chance(WAKE)
            {
                self.admit_again(i);
            }
        }
        let waiting = self.p.inflight.iter().any(|f| f.state == Admitted::Waiting);
        if waiting && self.rng.chance(PERSIST) {
            self.persist_intent();
        }
        if self.rng.chance(SWEEP) {
            for d in &mut self.p.devs {
                if d.sweep(false) {
                    self.stats.chunks_cleared += 1;
                }
            }
        }
    }

    /// The helper spools records of a data stream to the primary's disk:
    /// `SPOOLED` up to a record it read.
    fn spool_to_disk(&mut self) {
        if !self.rng.chance(SPOOLED) {
            return;
        }
        let dev = 1 + self.rng.below(DEVICES as u64 - 1) as usize;
        let d = &mut self.p.devs[dev];
        let (acked, shipped) = (d.stream.acked(), d.stream.shipped());
        if shipped <= acked {
            return;
        }
        let upto = acked + 1 + self.rng.below(shipped - acked);
        let spooled = Command::Spooled {
            device: dev as u32,
            dev_seq: upto,
        };
        self.check_commands(&[spooled])
            .expect("SPOOLED of records read");
        let d = &mut self.p.devs[dev];
        let (intent, spool) = (&mut d.intent, &mut self.p.spool);
        d.stream
            .acknowledge(Ack::Spooled, upto, |r| {
                spool.release(r.charge);
                intent.spooled(r.gen, r.sector, r.nr, r.dev_seq, acked)
            })
            .expect("SPOOLED of records read");
    }

    fn complete(&mut self, w: Inflight) {
        let recorded = w.record && self.p.spool.replicating();
        self.complete_write(w);
        // A write without a ticket of the running resync was in flight
        // when it began (`Resync::writes_before`).
        let ticket = match w.ticket {
            Some(t) if w.rgen == self.p.resync_gen => t,
            _ => WriteTicket::BEFORE,
        };
        if let Some(r) = self.p.devs[w.dev].resync.as_mut() {
            let t = ticket;
            let before = r.progress().by_write;
            r.host_write_done(t, w.block, w.len, recorded);
            self.stats.resync_by_write += r.progress().by_write - before;
        }
    }

    fn complete_write(&mut self, w: Inflight) {
        if !(w.record && self.p.spool.replicating()) {
            // No record (the group was ahead when it was admitted), or the
            // group went ahead since: its room comes back, its chunks stay
            // dirty, and the write is in the completion order with no
            // number.
            if w.record {
                self.p.spool.release(w.charge);
                self.p.devs[w.dev].intent.dropped(w.gen, w.block, w.len);
                self.dirtied(w.dev, w.block, w.len);
            }
            if w.kind.modifies_data() {
                let last = self.p.order.last_group_seq();
                let token = self.o.ahead_write(w.dev, w.block, w.len, last);
                for b in w.block..w.block + w.len {
                    self.p.devs[w.dev].image[b as usize] = token;
                }
                self.stats.writes += 1;
                self.stats.ahead_writes += 1;
            }
            return;
        }
        let mut payload = Vec::new();
        let gseq = self.p.order.last_group_seq() + 1;
        if w.kind == RecordKind::Write {
            for _ in 0..w.len {
                let mut sector = vec![0u8; SECTOR_SIZE as usize];
                sector[..8].copy_from_slice(&gseq.to_le_bytes());
                for (i, b) in sector.iter_mut().enumerate().skip(8) {
                    *b = (gseq as u8).wrapping_add(i as u8);
                }
                payload.extend_from_slice(&sector);
            }
        }
        let h = self.sequence(
            w.dev,
            w.kind,
            Flags(0),
            (w.block, w.len),
            &payload,
            (w.gen, w.charge),
        );
        debug_assert_eq!(h.group_seq, gseq);
        if w.kind.modifies_data() {
            for b in w.block..w.block + w.len {
                self.p.devs[w.dev].image[b as usize] = gseq;
            }
            self.stats.writes += 1;
        }
    }

    /// Gives a completed write (or a marker) of `(sector, nr)` its place in
    /// the stream and in the group order (`GroupOrder::sequence`, as the
    /// kernel's completion does), encoded into the device's ring with its
    /// write-intent generation and spool charge.
    fn sequence(
        &mut self,
        dev: usize,
        kind: RecordKind,
        flags: Flags,
        (sector, nr): (u64, u64),
        payload: &[u8],
        (gen, charge): (Gen, usize),
    ) -> RecordHeader {
        let mut flags = flags;
        if CLASSES[dev] == DeviceClass::Log {
            flags.0 |= Flags::LOG;
        }
        let rec = Box::new(SpoolRec {
            dev_seq: 0,
            group_seq: 0,
            kind,
            bytes: Vec::new(),
            gen,
            sector,
            nr,
            charge,
        });
        let key = &self.key;
        let mut made = None;
        let d = &mut self.p.devs[dev];
        let numbered = self
            .p
            .order
            .sequence(&mut d.stream, self.now * 1000, rec, |r, n| {
                let h = RecordHeader {
                    kind,
                    flags,
                    group_id: GROUP_ID,
                    device_id: dev as u32,
                    payload_len: payload.len() as u32,
                    dev_seq: n.dev_seq,
                    group_seq: n.group_seq,
                    timestamp_ns: n.timestamp_ns,
                    epoch: n.epoch,
                    sector,
                    nr_sectors: nr as u32,
                };
                let mut bytes = vec![0u8; h.record_len()];
                encode_record(&h, payload, key, &FastDigest, &mut bytes).expect("encode");
                (r.dev_seq, r.group_seq) = (n.dev_seq, n.group_seq);
                r.bytes = bytes;
                made = Some(h);
            });
        assert!(numbered.is_ok(), "device {dev}: ring full");
        let h = made.expect("numbered");

        let bytes = d.stream.records().last().expect("pushed").bytes.clone();
        self.o.sequenced(dev, &h, &bytes);
        h
    }

    /// A `write(2)` of `cmds` to the kernel, checked whole as the kernel
    /// checks it (`ferry_core::batch::Batch`, on copies of the streams'
    /// acknowledgement positions, the group's numbers and the spool; a
    /// marker charges one empty record in every stream): the number of
    /// commands, or the first refused one.  The caller applies them.
    fn check_commands(&self, cmds: &[Command]) -> Result<usize, Rejected> {
        let mut buf = Vec::new();
        for c in cmds {
            let mut b = [0u8; 128];
            let n = c.encode(&mut b).expect("encode");
            buf.extend_from_slice(&b[..n]);
        }
        let mut acks: Vec<_> = self
            .p
            .devs
            .iter()
            .map(|d| Some(d.stream.ack_state()))
            .collect();
        let mut b = Batch {
            streams: &mut acks,
            order: self.p.order,
            spool: self.p.spool,
            marker_charge: DEVICES * spool::charge(0, PAGE),
        };
        let devs = &self.p.devs;
        b.check(&buf, |d, first, last| {
            devs[d as usize]
                .stream
                .records()
                .filter(|r| (first..=last).contains(&r.dev_seq))
                .map(|r| r.charge)
                .sum()
        })
    }

    /// Spool room for a marker in every stream, as the kernel's
    /// `INSERT_CHECKPOINT` or `INSERT_CONSISTENCY_POINT` takes it: the
    /// command is checked as a batch of one (`ENOSPC` when full or ahead,
    /// and then nothing changes, even under `overflow bitmap`), then the
    /// room is reserved; the charge of each marker.
    fn reserve_markers(&mut self, c: Command) -> Option<usize> {
        if self.check_commands(&[c]).is_err() {
            return None;
        }
        let charge = spool::charge(0, PAGE);
        let r = self.reserve(DEVICES * charge);
        assert_eq!(
            r,
            Reserve::Done,
            "the batch check passed, the reservation did not"
        );
        Some(charge)
    }

    /// Closes the open interval; false if the spool has no room for the
    /// markers.
    fn checkpoint(&mut self) -> bool {
        self.checkpoint_flagged(0)
    }

    /// Closes the open interval with markers carrying `flags`
    /// (`RESYNC_BEGIN`, `RESYNC_END`); false if the spool has no room.
    fn checkpoint_flagged(&mut self, flags: u8) -> bool {
        let Some(charge) = self.reserve_markers(Command::InsertCheckpoint) else {
            return false;
        };
        let e = self.p.order.epoch();
        let mut last = 0;
        for dev in 0..DEVICES {
            last = self
                .sequence(
                    dev,
                    RecordKind::Checkpoint,
                    Flags(flags),
                    (0, 0),
                    &[],
                    (Gen::NONE, charge),
                )
                .group_seq;
        }
        self.o.epoch_end.insert(e, last);
        self.p.order.checkpoint_inserted();
        true
    }

    /// Each device's resync (`ferry_core::resync`): chunks taken while the
    /// spool is under half full, each read issued once the host writes
    /// admitted before it completed (its content read at that instant),
    /// and completed at a later step: admitted through the write intent
    /// and numbered as a write flagged `RESYNC`.  When every device is
    /// done, `RESYNC_END` closes the interval.  A group that goes `ahead`
    /// meanwhile drops the resync (its chunks stay dirty).
    fn resync_work(&mut self) {
        if self.p.devs.iter().all(|d| d.resync.is_none()) {
            return;
        }
        if !self.p.spool.replicating() {
            for d in &mut self.p.devs {
                d.resync = None;
                d.reads.clear();
            }
            return;
        }
        for dev in 0..DEVICES {
            let Some(r) = self.p.devs[dev].resync.as_mut() else {
                continue;
            };
            if app_first(self.p.spool.used(), self.p.spool.cap()) && self.rng.chance(300) {
                if let Some(t) = r.next_read() {
                    self.p.devs[dev].reads.push((t, None));
                }
            }
            let now_ns = self.now * 1_000_000;
            let cap = &mut self.p.cap;
            let d = &mut self.p.devs[dev];
            let r = d.resync.as_mut().expect("resync");
            for (t, content) in &mut d.reads {
                if content.is_none() && r.may_issue(*t) && self.rng.chance(500) {
                    if !cap.take(now_ns, CHUNK_BYTES) {
                        self.stats.reads_paced += 1;
                        continue;
                    }
                    let first = t.chunk << CHUNK_SHIFT;
                    let blocks = first..(first + (1 << CHUNK_SHIFT)).min(BLOCKS);
                    *content = Some(blocks.map(|b| d.image[b as usize]).collect());
                }
            }
            let done: Vec<usize> = (0..d.reads.len())
                .filter(|&i| d.reads[i].1.is_some())
                .collect();
            for i in done.into_iter().rev() {
                if !self.rng.chance(500) {
                    continue;
                }
                let (t, content) = self.p.devs[dev].reads[i].clone();
                let content = content.expect("issued");
                let first = t.chunk << CHUNK_SHIFT;
                let n = content.len() as u64;
                let charge = spool::charge(content.len() * SECTOR_SIZE as usize, PAGE);
                match self.reserve(charge) {
                    Reserve::Done => {}
                    // Ahead: dropped at the next step.  Full: later.
                    _ => continue,
                }
                let a = self.p.devs[dev].intent.admit(first, n, true, Room::Spool);
                let mut payload = Vec::new();
                for v in &content {
                    let mut sector = vec![0u8; SECTOR_SIZE as usize];
                    sector[..8].copy_from_slice(&v.to_le_bytes());
                    payload.extend_from_slice(&sector);
                }
                self.sequence(
                    dev,
                    RecordKind::Write,
                    Flags(Flags::RESYNC),
                    (first, n),
                    &payload,
                    (a.gen, charge),
                );
                let d = &mut self.p.devs[dev];
                d.reads.swap_remove(i);
                d.resync.as_mut().expect("resync").read_done(t, true);
                self.stats.resync_reads += 1;
            }
        }
        self.let_held_in();
        let all_done = self
            .p
            .devs
            .iter()
            .all(|d| d.resync.as_ref().is_none_or(|r| r.done()) && d.reads.is_empty());
        if all_done && self.checkpoint_flagged(Flags::RESYNC_END) {
            self.p.span_end = Some(self.p.order.epoch() - 1);
            for (dev, d) in self.p.devs.iter_mut().enumerate() {
                if let Some(r) = d.resync.take() {
                    self.p.covered[dev] = r.covered().to_vec();
                }
            }
        }
    }

    fn consistency_point(&mut self) {
        let id = self.p.order.next_cp_id();
        let label = Label::new(format!("cp-{id}").as_bytes()).expect("label");
        let Some(charge) = self.reserve_markers(Command::InsertConsistencyPoint { label }) else {
            return;
        };
        let mut seqs = [0; DEVICES];
        for (dev, seq) in seqs.iter_mut().enumerate() {
            let cp = ConsistencyPayload {
                cp_id: id,
                first_dev_seq: self.p.devs[dev].stream.cp_first(),
                label,
            };
            let mut buf = [0u8; 80];
            let n = cp.encode(&mut buf).expect("cp");
            let h = self.sequence(
                dev,
                RecordKind::ConsistencyPoint,
                Flags(0),
                (0, 0),
                &buf[..n],
                (Gen::NONE, charge),
            );
            *seq = h.dev_seq;
        }
        self.p.order.consistency_point_inserted(id);
        self.o.points.insert(id, seqs);
    }

    /// The helper reads every record the kernel releases, in the order it
    /// releases them (`stream::watermark`, `stream::next_releasable`), and
    /// sends (again after a timeout) what the secondary has not
    /// acknowledged.
    fn release_and_send(&mut self) {
        loop {
            let w = if self.cfg.bug == Some(Bug::GateIgnoresWatermark) {
                Watermark::UNBOUNDED
            } else {
                watermark(self.p.devs.iter_mut().map(|d| &mut d.stream))
            };
            let Some(i) = next_releasable(self.p.devs.iter().map(|d| Some(&d.stream)), w) else {
                break;
            };
            let d = &mut self.p.devs[i];
            let r = d.stream.next_unsent().expect("releasable");
            d.helper.push_back(Shipped {
                dev_seq: r.dev_seq,
                bytes: r.bytes.clone(),
                last_sent: None,
            });
            d.stream.mark_sent();
        }
        for dev in 0..DEVICES {
            let mut out = Vec::new();
            for r in self.p.devs[dev].helper.iter_mut() {
                if out.len() >= 6 {
                    break;
                }
                if r.last_sent.is_none_or(|t| self.now >= t + RTO) {
                    r.last_sent = Some(self.now);
                    out.push(r.bytes.clone());
                }
            }
            for b in out {
                self.net.send(
                    &mut self.rng,
                    self.faults,
                    self.now,
                    dev,
                    true,
                    Msg::Record(b),
                );
            }
        }
    }

    /// The link of `stream` came back: the helper sends again what was not
    /// acknowledged.
    fn reconnect(&mut self, stream: usize) {
        for r in self.p.devs[stream].helper.iter_mut() {
            r.last_sent = None;
        }
    }

    /// The secondary applied every interval up to `applied`: once that
    /// covers the last resync span, the chunks it covered are dirty no more
    /// (`resync`, rule 7).
    fn resync_applied(&mut self, applied: u64) {
        if self.p.span_end.is_some_and(|e| applied >= e) {
            self.p.span_end = None;
            for (d, covered) in self.p.devs.iter_mut().zip(&mut self.p.covered) {
                d.intent.resynced(covered);
                covered.clear();
            }
        }
    }

    /// An acknowledgement, as the helper writes it to the kernel: `ACK`
    /// (for a log stream, sometimes `ACK_LOG` first, in the same write),
    /// each checked before any acts.  The write intent learns how far the
    /// secondary holds the stream; each record dropped from the ring gives
    /// its write intent back.
    fn on_ack(&mut self, stream: usize, dev_seq: u64) -> Result<(), Failure> {
        // An acknowledgement of nothing new writes no command (as
        // `ferryd`'s; a `dev_seq` of 0 is not even a well-formed one).
        if dev_seq <= self.p.devs[stream].stream.acked() {
            return Ok(());
        }
        let log_first = CLASSES[stream] == DeviceClass::Log && self.rng.chance(500);
        let mut cmds = vec![(Ack::Durable, dev_seq)];
        if log_first {
            cmds.insert(0, (Ack::Log, dev_seq));
        }
        // One write of them, checked whole as the kernel does.
        let device = stream as u32;
        let batch: Vec<Command> = cmds
            .iter()
            .map(|&(a, dev_seq)| match a {
                Ack::Log => Command::AckLog { device, dev_seq },
                Ack::Durable => Command::Ack { device, dev_seq },
                Ack::Spooled => Command::Spooled { device, dev_seq },
            })
            .collect();
        if let Err(rej) = self.check_commands(&batch) {
            return Err(self.o.fail(
                "protocol",
                format!(
                    "stream {stream} {:?}: refused {:?}",
                    cmds[rej.index], rej.why
                ),
            ));
        }
        let d = &mut self.p.devs[stream];
        let mut dropped = Vec::new();
        for (a, ds) in cmds {
            let (intent, spool) = (&mut d.intent, &mut self.p.spool);
            d.stream
                .acknowledge(a, ds, |r| {
                    spool.release(r.charge);
                    intent.finish(r.gen);
                    dropped.push(r.dev_seq);
                })
                .expect("checked");
        }
        let acked = d.stream.acked();
        d.intent.ack(acked);
        while d.helper.front().is_some_and(|r| r.dev_seq <= acked) {
            dropped.push(d.helper.pop_front().expect("front").dev_seq);
        }
        for ds in dropped {
            if !self.o.durable.contains(&(stream, ds)) {
                return Err(self.o.fail(
                    "G3 nothing lost",
                    format!("stream {stream} dev_seq {ds} dropped by the primary but not durable remotely"),
                ));
            }
        }
        Ok(())
    }

    fn crash_primary(&mut self) {
        self.stats.primary_crashes += 1;
        self.p.up = false;
        // Writes in flight never complete; the spool and the gate are lost.
        // What they held is covered by the bitmap (checked by G3).
        self.p.inflight.clear();
        self.p.handshake = None;
        self.o.log_not_durable.clear();
    }

    /// The primary comes back: a new generation of numbers, and a resync of
    /// what the meta devices mark.  (The protocol of the resync work to come;
    /// today a device that did not leave cleanly comes back `ahead`.)
    fn recover_primary(&mut self) {
        self.p.up = true;
        self.p.generation += 1;
        let mut n = self.p.order.numbers(0);
        n.group_seq += JUMP;
        n.epoch += 1;
        self.p.order = GroupOrder::new();
        self.p.order.continue_from(&n, self.now * 1000);
        let resync_epoch = self.p.order.epoch();
        self.p.spool = new_spool(&self.cfg);
        let slots = ring_slots(&self.p.spool);
        let mut bases = [0; DEVICES];
        for (dev, base) in bases.iter_mut().enumerate() {
            let old = &self.p.devs[dev];
            let start = old.stream.last_dev_seq() + JUMP;
            let mut d = PDev::new(dev, start, slots);
            d.image = old.image.clone();
            d.meta = old.meta.clone();
            self.p.devs[dev] = d;
            *base = start + 1;
            self.o.gen_base[dev] = start + 1;
        }
        self.p.resync_gen += 1;
        // Resync (`ferry_core::resync`): the chunks the meta device marks
        // are loaded dirty, as the kernel's join loads them, and copied
        // while new writes go on, in a span that `RESYNC_BEGIN` opens now
        // and `RESYNC_END` closes once every chunk is copied.
        self.p.span_end = None;
        for (dev, covered) in self.p.covered.iter_mut().enumerate() {
            covered.clear();
            let d = &mut self.p.devs[dev];
            let mut page = vec![0u8; 4096];
            for p in 0..d.intent.pages() {
                for (i, b) in page.chunks_exact_mut(8).enumerate() {
                    let w = d.meta.get(p * WORDS_PER_PAGE + i).copied().unwrap_or(0);
                    b.copy_from_slice(&w.to_le_bytes());
                }
                d.intent.load(p, &page);
            }
            let words = vec![0; Resync::<Vec<u64>>::storage_words(CHUNKS).expect("words")];
            let r =
                Resync::new(words, d.intent.dirty_words(), CHUNKS, CHUNK_SHIFT).expect("resync");
            d.resync = Some(r);
        }
        assert!(
            self.checkpoint_flagged(Flags::RESYNC_BEGIN),
            "room for the resync's markers"
        );
        self.p.handshake = Some(Handshake {
            generation: self.p.generation,
            bases,
            first_epoch: resync_epoch,
        });
    }

    /// `START` while `ahead`, as the kernel's `Group::resync_start` runs
    /// it: the spool leaves `ahead`, each device's dirty chunks become its
    /// resync's set, the writes in flight (admitted while `ahead`, or
    /// before it) count in its first epoch, and `RESYNC_BEGIN` closes the
    /// open interval.  An earlier span not yet applied is forgotten (its
    /// chunks are dirty still).  No room for the marker: back to `ahead`.
    fn start_live(&mut self, full: bool) -> bool {
        let resyncing = self.p.span_end.is_some() || self.p.devs.iter().any(|d| d.resync.is_some());
        let dirty = self.p.devs.iter().any(|d| d.intent.dirty_count() > 0);
        if !start_begins(!self.p.spool.replicating(), full, resyncing, dirty) {
            return false;
        }
        let was_ahead = self.p.spool.resync();
        self.p.resync_gen += 1;
        self.p.span_end = None;
        for dev in 0..DEVICES {
            self.p.covered[dev].clear();
            let inflight = self
                .p
                .inflight
                .iter()
                .filter(|w| w.dev == dev && w.state != Admitted::Held)
                .count() as u64;
            let d = &mut self.p.devs[dev];
            d.reads.clear();
            if full {
                d.intent.mark_all();
            }
            let words = vec![0; Resync::<Vec<u64>>::storage_words(CHUNKS).expect("words")];
            let mut r =
                Resync::new(words, d.intent.dirty_words(), CHUNKS, CHUNK_SHIFT).expect("resync");
            r.writes_before(inflight);
            d.resync = Some(r);
        }
        // No record was numbered while `ahead`: the interval `RESYNC_BEGIN`
        // closes ends, in the completion order, before the first write
        // made while `ahead` (which the span carries).
        let before = self.p.order.last_group_seq();
        // (Both sites hold the same here: a full copy on demand, not the
        // initial one.)
        if !self.checkpoint_flagged(Flags::RESYNC_BEGIN) {
            // As before `START` (a full copy's chunks stay dirty).
            if was_ahead {
                self.p.spool.go_ahead();
            }
            for d in &mut self.p.devs {
                d.resync = None;
            }
            return false;
        }
        if was_ahead {
            self.o.epoch_end.insert(self.p.order.epoch() - 1, before);
        }
        self.stats.live_resyncs += 1;
        if full {
            self.stats.full_resyncs += 1;
        }

        true
    }

    fn offer_handshake(&mut self) {
        if let Some(hs) = self.p.handshake {
            if self.s.generation >= hs.generation {
                self.p.handshake = None;
            } else if self.s.up && self.s.handshake.is_none() {
                self.s.handshake = Some(hs);
            }
        }
    }

    // ------------------------------------------------------------ secondary

    fn receive(&mut self, stream: usize, bytes: &[u8]) -> Result<(), Failure> {
        let (h, payload) = match decode_record(bytes, &self.key, &FastDigest) {
            Ok(r) => (r.header, r.payload.to_vec()),
            Err(_) => {
                self.stats.rejected += 1;
                if self.cfg.bug != Some(Bug::SkipVerification) {
                    return Ok(());
                }
                match parse_unverified(bytes) {
                    Some(x) => x,
                    None => return Ok(()),
                }
            }
        };
        if h.device_id as usize != stream || self.s.handshake.is_some() {
            return Ok(());
        }
        let w = &mut self.s.windows[stream];
        if h.dev_seq < w.next() {
            self.send_ack(stream);
            return Ok(());
        }
        if h.kind == RecordKind::Checkpoint {
            let oldest = self.s.rendezvous.oldest();
            if h.epoch < oldest || h.epoch >= oldest + INTERVALS as u64 {
                return Ok(());
            }
        }
        let r = received(&h);
        match self.s.windows[stream].insert(h.dev_seq, r) {
            Ok(Insert::Accepted { run_end }) => {
                self.o.made_durable(stream, &h, bytes)?;
                self.s.log.insert((stream, h.dev_seq), Entry { h, payload });
                if h.kind == RecordKind::Checkpoint {
                    let _ = self.s.rendezvous.marker(stream as u32, h.epoch, r.stamp);
                }
                self.scan_points(stream, run_end)?;
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
        self.send_ack(stream);
        Ok(())
    }

    /// Consistency points whose stream run now reaches them are validated.
    fn scan_points(&mut self, stream: usize, run_end: u64) -> Result<(), Failure> {
        while self.s.point_scan[stream] < run_end {
            let ds = self.s.point_scan[stream] + 1;
            self.s.point_scan[stream] = ds;
            let Some(e) = self.s.log.get(&(stream, ds)) else {
                continue;
            };
            if e.h.kind != RecordKind::ConsistencyPoint {
                continue;
            }
            let cp = ConsistencyPayload::decode(&e.payload).map_err(|err| {
                self.o.fail(
                    "G5 validated before applied",
                    format!("bad consistency point: {err}"),
                )
            })?;
            match self.s.points.delivered(stream as u32, ds, &cp) {
                Ok(Some(held)) => {
                    self.stats.points_held += 1;
                    let seqs = self.o.points.get(&held.cp_id).copied().unwrap_or_default();
                    for (s, &last) in seqs.iter().enumerate() {
                        for d in self.o.gen_base[s]..=last {
                            if !self.o.durable.contains(&(s, d)) {
                                return Err(self.o.fail(
                                    "G5 validated before applied",
                                    format!(
                                        "consistency point {} held without stream {s} record {d}",
                                        held.cp_id
                                    ),
                                ));
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(ConsistencyError::Full) => {
                    // Too many points open: validate this one later, and do
                    // not apply past it meanwhile (see plan_interval).
                    self.s.point_scan[stream] = ds - 1;
                    return Ok(());
                }
                Err(err) => {
                    return Err(self.o.fail(
                        "G5 validated before applied",
                        format!("consistency point {} refused: {err}", cp.cp_id),
                    ))
                }
            }
        }
        Ok(())
    }

    fn send_ack(&mut self, stream: usize) {
        let msg = Msg::Ack {
            dev_seq: self.s.windows[stream].run_end(),
            applied: self.s.apply.applied(),
        };
        self.net
            .send(&mut self.rng, self.faults, self.now, stream, false, msg);
    }

    fn secondary_work(&mut self) -> Result<(), Failure> {
        for s in 0..DEVICES {
            let end = self.s.windows[s].run_end();
            self.scan_points(s, end)?;
        }
        if self.s.job.is_none() {
            if let Some(hs) = self.s.handshake.take() {
                self.accept_handshake(hs);
            }
            self.plan_interval()?;
        }
        if let Some(job) = &mut self.s.job {
            let n = 1 + self.rng.below(3) as usize;
            for _ in 0..n {
                if job.pos >= job.items.len() {
                    break;
                }
                let (s, ds) = job.items[job.pos];
                job.pos += 1;
                if let Some(e) = self.s.log.get(&(s, ds)) {
                    if !self.s.apply.admits(e.h.epoch) {
                        return Err(self.o.fail(
                            "G4 atomic intervals",
                            format!(
                                "stream {s} record {ds} of interval {} applied in interval {}",
                                e.h.epoch, job.epoch
                            ),
                        ));
                    }
                    apply_entry(&mut self.s.image[s], e);
                    self.image_dirty = true;
                }
            }
            if job.pos >= job.items.len() {
                self.finish_interval()?;
            }
        }
        Ok(())
    }

    fn accept_handshake(&mut self, hs: Handshake) {
        let s = &mut self.s;
        // What the remote log holds contiguously was acknowledged, and the
        // primary may have cleared its chunks: it is kept (what was staged
        // first), to be applied with the span the restarted primary's
        // resync opens, and the rest dropped.
        for k in std::mem::take(&mut s.staged) {
            if !s.carry.contains(&k) {
                s.carry.push(k);
            }
        }
        for (i, w) in s.windows.iter().enumerate() {
            for ds in w.next()..=w.run_end() {
                if s.log.contains_key(&(i, ds)) && !s.carry.contains(&(i, ds)) {
                    s.carry.push((i, ds));
                }
            }
        }
        let log = &s.log;
        s.carry.sort_by_key(|k| log[k].h.group_seq);
        let carry = &s.carry;
        s.log.retain(|k, _| carry.contains(k));
        s.next = hs.bases;
        s.first_epoch = hs.first_epoch;
        s.point_scan = hs.bases.map(|b| b - 1);
        s.points.restart(hs.bases.map(|b| b - 1));
        s.generation = hs.generation;
        for (i, w) in s.windows.iter_mut().enumerate() {
            w.reset(hs.bases[i], s.next_stamp[i]);
        }
        s.rendezvous.reset(hs.first_epoch);
        // A restarted primary resyncs: from its first interval on, until
        // its `RESYNC_END`, everything is one span, the carry with it
        // (`resync`, rule 8: inside an open span, the same span).
        s.span.begin(hs.first_epoch - 1);
        s.span_work = s.span;
    }

    /// Takes whole intervals in order while they are ready: each one's
    /// records leave the windows, its markers' `RESYNC_BEGIN` and
    /// `RESYNC_END` move the spans, and the first one a batch may end with
    /// (`Span::batch_may_end`) ends the batch: its epoch and every record
    /// to apply (the carry, then the intervals taken, in group order).
    /// Intervals inside an open span are staged meanwhile.
    fn take_batch(&mut self) -> Result<Option<AppliedBatch>, Failure> {
        loop {
            let limit = if self.cfg.bug == Some(Bug::LimitIsMax) {
                self.s.windows.iter().map(|w| w.run_end_stamp()).max()
            } else {
                interval_limit_of(&self.s)
            };
            let Some(limit) = limit else { return Ok(None) };
            let Some((epoch, cut)) = self.s.rendezvous.ready(limit) else {
                return Ok(None);
            };
            // A record leaves the remote log only once scanned for points.
            for (s, w) in self.s.windows.iter().enumerate() {
                let mut ds = w.next();
                while w.get(ds).is_some_and(|r| r.stamp <= cut) {
                    ds += 1;
                }
                if ds - 1 > self.s.point_scan[s] {
                    return Ok(None);
                }
            }
            let mut flags = 0;
            while let Some(i) = next_in_group_order(&self.s.windows, cut) {
                let (ds, _) = self.s.windows[i].pop_front().expect("front");
                if let Some(e) = self.s.log.get(&(i, ds)) {
                    if e.h.kind == RecordKind::Checkpoint && e.h.epoch == epoch {
                        flags |= e.h.flags.0;
                    }
                }
                self.s.staged.push((i, ds));
            }
            if flags & Flags::RESYNC_BEGIN != 0 {
                self.s.span_work.begin(epoch);
            }
            if flags & Flags::RESYNC_END != 0 {
                self.s.span_work.end(epoch).map_err(|e| {
                    self.o.fail(
                        "G1 consistent",
                        format!("RESYNC_END of interval {epoch}: {e:?}"),
                    )
                })?;
            }
            if self.s.span_work.batch_may_end(epoch) {
                let mut items = self.s.carry.clone();
                items.extend_from_slice(&self.s.staged);
                return Ok(Some((epoch, items)));
            }
            // Inside a span: the next interval is the oldest now.
            let _ = self.s.rendezvous.retire(epoch);
        }
    }

    fn plan_interval(&mut self) -> Result<(), Failure> {
        let Some((epoch, items)) = self.take_batch()? else {
            return Ok(());
        };
        let mark = match self.s.apply.begin_or_redo(epoch) {
            Ok(mark) => mark,
            other => {
                return Err(self
                    .o
                    .fail("G4 atomic intervals", format!("begin {epoch}: {other:?}")))
            }
        };
        if self.cfg.bug != Some(Bug::NoUpdateInProgressMark) {
            if self.rng.chance(self.faults.torn_mark) {
                let torn = self.rng.below(2 * DEVICES as u64) as usize;
                self.tear_marks(mark, torn);
                return Ok(());
            }
            self.s.marks = [[encode_mark(mark); 2]; DEVICES];
        }
        self.s.reads.hold();
        self.s.job = Some(Job {
            epoch,
            items,
            pos: 0,
        });
        Ok(())
    }

    fn finish_interval(&mut self) -> Result<(), Failure> {
        let job = self.s.job.take().expect("job");
        let mark = self.s.apply.finish(job.epoch).map_err(|e| {
            self.o
                .fail("G4 atomic intervals", format!("finish {}: {e}", job.epoch))
        })?;
        if self.rng.chance(self.faults.torn_mark) {
            // Torn before the last device's copy A: that device still says
            // in progress, and the interval is redone.  (Past it, every
            // device would read idle while the positions and the remote
            // log below were not updated: one update here, two in ferryd.)
            let torn = self.rng.below(2 * DEVICES as u64 - 1) as usize;
            self.tear_marks(mark, torn);
            return Ok(());
        }
        // One meta update: marks idle, streams' positions, log trimmed.
        self.s.marks = [[encode_mark(mark); 2]; DEVICES];
        self.s.reads.end();
        for &(s, ds) in &job.items {
            if let Some(e) = self.s.log.remove(&(s, ds)) {
                if ds >= self.s.next[s] {
                    self.s.next[s] = ds + 1;
                    self.s.next_stamp[s] = received(&e.h).stamp;
                }
            }
        }
        self.s.carry.clear();
        self.s.staged.clear();
        let was_open = self.s.span_work.is_open();
        self.s.span_work.applied(job.epoch);
        if was_open && !self.s.span_work.is_open() {
            self.stats.spans_applied += 1;
        }
        self.s.span = self.s.span_work;
        self.s.first_epoch = job.epoch + 1;
        let _ = self.s.rendezvous.retire(job.epoch);
        self.stats.intervals += 1;
        self.image_dirty = true;
        for s in 0..DEVICES {
            self.send_ack(s);
        }
        Ok(())
    }

    /// The secondary crashes while it writes `mark` to the meta devices,
    /// device by device, copy A then B: the writes before the `torn`-th
    /// are done, that one is half written, the others never happen.
    fn tear_marks(&mut self, mark: ApplyMark, torn: usize) {
        let new = encode_mark(mark);
        for (k, copy) in self.s.marks.iter_mut().flatten().enumerate() {
            if k < torn {
                *copy = new;
            } else if k == torn {
                copy[..APPLY_MARK_LEN / 2].copy_from_slice(&new[..APPLY_MARK_LEN / 2]);
            }
        }
        self.stats.torn_marks += 1;
        self.crash_secondary();
    }

    fn crash_secondary(&mut self) {
        self.stats.secondary_crashes += 1;
        self.s.up = false;
    }

    fn recover_secondary(&mut self) -> Result<(), Failure> {
        self.s.up = true;
        // The marks are read back from the meta devices.
        self.s.rebuild();
        if let ApplyState::InProgress { epoch } = self.s.apply.state() {
            // Redo the whole interval from the remote log (`APPLY_BEGIN` of
            // the interval in progress again, its mark written again on
            // every member); reads wait.
            self.stats.redos += 1;
            match self.s.apply.begin_or_redo(epoch) {
                Ok(mark) if self.s.reads.holding() => {
                    self.s.marks = [[encode_mark(mark); 2]; DEVICES];
                }
                other => {
                    return Err(self.o.fail(
                        "G4 atomic intervals",
                        format!("interval {epoch} is not redone with reads held ({other:?})"),
                    ))
                }
            }
            // The same intervals are taken again, and must end the batch
            // at the one in progress.
            let items = match self.take_batch()? {
                Some((e, items)) if e == epoch => items,
                other => {
                    return Err(self.o.fail(
                        "G4 atomic intervals",
                        format!(
                            "interval {epoch} cannot be redone from the remote log ({:?})",
                            other.map(|(e, _)| e)
                        ),
                    ))
                }
            };
            self.s.job = Some(Job {
                epoch,
                items,
                pos: 0,
            });
        } else {
            // A host may read as soon as the secondary is back.
            self.o.check_image(&self.s.image, self.s.apply.applied())?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ oracle

    fn check(&mut self) -> Result<(), Failure> {
        // G6: the spool counts exactly the records it holds and the writes
        // it took that have not completed, and never more than its cap.
        if self.p.up {
            let spooled: usize = self
                .p
                .devs
                .iter()
                .flat_map(|d| d.stream.records())
                .map(|r| r.charge)
                .sum();
            let admitted: usize = self
                .p
                .inflight
                .iter()
                .filter(|f| f.record)
                .map(|f| f.charge)
                .sum();
            let spool = &self.p.spool;
            if spool.used() != spooled + admitted || spool.used() > spool.cap() {
                return Err(self.o.fail(
                    "G6 bounded",
                    format!(
                        "the spool counts {} of {} bytes, its records {spooled} and admitted writes {admitted}",
                        spool.used(),
                        spool.cap()
                    ),
                ));
            }
        }
        // G4: a host read waits while an interval is being applied.
        if self.s.up && self.s.job.is_some() {
            let mut probe = self.s.reads;
            if self.s.apply.may_read() || probe.read() {
                return Err(self.o.fail(
                    "G4 atomic intervals",
                    "host read allowed during an interval".into(),
                ));
            }
            self.stats.reads_waited += 1;
        }
        // G1 and G4 as a host would see the image if the secondary were
        // promoted now: an interval in progress is first finished (redone).
        if let (true, Some(job)) = (self.s.up, &self.s.job) {
            let mut view = self.s.image.clone();
            for &(s, ds) in &job.items[job.pos..] {
                if let Some(e) = self.s.log.get(&(s, ds)) {
                    apply_entry(&mut view[s], e);
                }
            }
            self.o.check_image(&view, job.epoch)?;
        }
        let readable = self.s.up && !self.s.reads.holding();
        if readable && self.image_dirty {
            self.image_dirty = false;
            self.o.check_image(&self.s.image, self.s.apply.applied())?;
        }
        // G3: every block where the images differ is marked on the meta
        // device, or the record that carries what the primary holds there
        // is acknowledged (durable in the secondary's contiguous remote
        // log), whatever crashes next.
        for d in 0..DEVICES {
            for b in 0..BLOCKS {
                let pd = &self.p.devs[d];
                if pd.image[b as usize] == self.s.image[d][b as usize] || pd.marked(b) {
                    continue;
                }
                let ds = self.o.carrier[d][b as usize];
                if !self.s.holds(d, ds) {
                    return Err(self.o.fail(
                        "G3 nothing lost",
                        format!(
                            "device {d} block {b} differs from the secondary, its chunk is not \
                             marked on the meta device, and the secondary does not hold record {ds}"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), Failure> {
        self.faults = &CALM;
        self.net.down_until = [0; DEVICES];
        if !self.p.up {
            self.recover_primary();
        }
        if !self.s.up {
            self.recover_secondary()?;
        }
        // Every write completes (those waiting for spool room once it has
        // some), then the last interval closes (once the spool has room
        // for its markers).  A group `ahead` is restarted and resyncs: the
        // design of the resync work to come.
        for _ in 0..4000 {
            if !self.p.spool.replicating() && !self.start_live(false) && self.rng.chance(50) {
                self.crash_primary();
                self.recover_primary();
            }
            // Chunks left dirty while replicating (a full copy whose
            // marker found no room): `START` again, as ferryd does.
            let dirty = self.p.devs.iter().any(|d| d.intent.dirty_count() > 0);
            let unstarted = dirty && self.p.span_end.is_none();
            if self.p.spool.replicating() && unstarted {
                self.start_live(false);
            }
            self.complete_some(MAX_INFLIGHT);
            self.let_held_in();
            let resyncing = self.p.devs.iter().any(|d| d.resync.is_some());
            let unstarted = !resyncing && dirty && self.p.span_end.is_none();
            if self.p.inflight.is_empty() && !resyncing && !unstarted && self.checkpoint() {
                break;
            }
            self.step(false)?;
        }
        let target = self.p.order.epoch() - 1;
        for _ in 0..4000 {
            self.step(false)?;
            if self.s.apply.applied() >= target && self.s.job.is_none() {
                break;
            }
        }
        for d in 0..DEVICES {
            if self.p.devs[d].image != self.s.image[d] {
                return Err(self.o.fail(
                    "liveness",
                    format!(
                        "after the drain device {d} differs (applied {} of {target})",
                        self.s.apply.applied()
                    ),
                ));
            }
        }
        // Once every record is acknowledged, the wanted bits written and
        // two sweeps passed, no chunk stays marked.
        for _ in 0..1000 {
            if self.p.span_end.is_none()
                && self
                    .p
                    .devs
                    .iter()
                    .all(|d| d.stream.is_empty() && d.helper.is_empty())
            {
                break;
            }
            self.step(false)?;
        }
        for (i, d) in self.p.devs.iter_mut().enumerate() {
            d.persist();
            d.sweep(false);
            d.sweep(false);
            let unacked = d.stream.len() + d.helper.len();
            if d.meta.iter().any(|&w| w != 0) || unacked > 0 {
                return Err(self.o.fail(
                    "liveness",
                    format!(
                        "after the drain device {i} keeps chunks {:#x} marked ({} records unacknowledged)",
                        d.meta[0], unacked
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A mark in its on-disk form.
fn encode_mark(mark: ApplyMark) -> [u8; APPLY_MARK_LEN] {
    let mut b = [0u8; APPLY_MARK_LEN];
    mark.encode(&FastDigest, &mut b);
    b
}

fn apply_entry(image: &mut [u64], e: &Entry) {
    let h = &e.h;
    // Where it lands, checked as the kernel checks it (a record outside
    // the device is refused).
    let Ok(Some(at)) = place(h.kind, h.sector, h.nr_sectors, BLOCKS, 0) else {
        return;
    };
    match h.kind {
        RecordKind::Write => {
            for (i, sector) in e.payload.chunks_exact(SECTOR_SIZE as usize).enumerate() {
                let token = u64::from_le_bytes(sector[..8].try_into().expect("8 bytes"));
                if let Some(b) = image.get_mut(at as usize + i) {
                    *b = token;
                }
            }
        }
        RecordKind::Discard | RecordKind::WriteZeroes => {
            for b in at..at + u64::from(h.nr_sectors) {
                if let Some(b) = image.get_mut(b as usize) {
                    *b = h.group_seq;
                }
            }
        }
        _ => {}
    }
}
