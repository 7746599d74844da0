//! `replay-check`: power cuts that drop what was not flushed, checked
//! offline from a `dm-log-writes` log (the method of xfstests'
//! generic/482).
//!
//! The guest stacks one `log-writes` device over one disk and splits it
//! with two `linear` devices into the target's data device and its meta
//! device, so that every write of both reaches the log in one total order,
//! with its flush and FUA flags.  `dm-log-writes` logs a FUA write when it
//! completes, and a write without FUA only when a flush after it has
//! completed (just before that flush): the log is the order in which the
//! writes became durable at the latest.  A power cut may have kept any
//! subset of the writes not yet flushed, in any order: this checker holds
//! the durable image of the meta device (the writes that are durable for
//! sure: FUA ones at their place, others at the next flush) apart from the
//! pending ones, and asks at every data write whether what must be durable
//! before it is, whatever subset of the pending writes a power cut kept:
//!
//! * primary (G3): every chunk the data write touches has its write-intent
//!   bit set in the durable bitmap, no pending bitmap write clearing it,
//!   at some point of the window in which the write may have been issued.
//!   A write without FUA is logged at the flush after it, not when it
//!   completed: it was issued after the flush before the previous one was
//!   submitted, so the window reaches back two flushes.  A write that is
//!   followed by its own flush (`O_DSYNC` on a device without FUA, as the
//!   tests' dependent writer does) has a window of one write;
//! * secondary (G4): the durable update-in-progress mark says an interval
//!   is in progress (no pending write to the mark), and when a mark that
//!   ends an interval becomes durable no data write of it is pending.
//!
//! Torn writes need no case of their own: a data write is issued only
//! after the meta write it depends on completed, so a power cut that tears
//! the meta write finds no data write after it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ferry_core::checkpoint::{ApplyMark, ApplyState, APPLY_MARK_LEN};
use ferry_core::meta::{APPLY_MARK_SECTORS, BITMAP_SECTOR};
use ferry_core::FastDigest;

use crate::Res;

const LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
const LOG_FLUSH: u64 = 1 << 0;
const LOG_FUA: u64 = 1 << 1;
const LOG_DISCARD: u64 = 1 << 2;
const LOG_MARK: u64 = 1 << 3;

#[derive(clap::Args)]
pub(crate) struct ReplayCheckArgs {
    /// The `log-writes` log device (or a copy of it).
    #[arg(long)]
    log: PathBuf,
    /// The data device's first sector on the logged device (512 bytes).
    #[arg(long)]
    data_start: u64,
    /// The data device's length, sectors.
    #[arg(long)]
    data_sectors: u64,
    /// The meta device's first sector on the logged device.
    #[arg(long)]
    meta_start: u64,
    /// The meta device's length, sectors.
    #[arg(long)]
    meta_sectors: u64,
    /// The target's chunk size, KiB (primary).
    #[arg(long, default_value_t = 64)]
    chunk_kb: u64,
    /// Check a secondary's mark (G4) rather than a primary's write intent
    /// (G3).
    #[arg(long)]
    secondary: bool,
    /// Check the data writes only after this log mark (`dmsetup message
    /// <log-writes dev> 0 mark <name>`): the test's own setup writes come
    /// before it.  Meta writes before it still build the image.
    #[arg(long)]
    from_mark: Option<String>,
}

/// One write of the log, in 512-byte sectors of the logged device.
struct Entry {
    sector: u64,
    sectors: u64,
    flags: u64,
    /// The payload, or a mark's name.
    data: Vec<u8>,
}

/// The log, read one entry at a time (a long log does not fit in memory;
/// only the payloads of meta writes are kept).
struct LogReader {
    f: File,
    n: u64,
    i: u64,
    at: u64,
    bs: u64,
    head: Vec<u8>,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

impl LogReader {
    fn open(path: &PathBuf) -> Res<Self> {
        let f = File::open(path).map_err(|e| format!("replay|FAIL|open log: {e}"))?;
        let mut sb = [0u8; 28];
        f.read_exact_at(&mut sb, 0)
            .map_err(|e| format!("replay|FAIL|read log super: {e}"))?;
        if u64_at(&sb, 0) != LOG_MAGIC || u64_at(&sb, 8) != 1 {
            return Err("replay|FAIL|not a dm-log-writes log (magic or version)".into());
        }
        let bs = u64::from(u32::from_le_bytes(sb[24..28].try_into().unwrap()));
        if bs < 512 || bs % 512 != 0 {
            return Err(format!("replay|FAIL|log sector size {bs}"));
        }
        Ok(Self {
            f,
            n: u64_at(&sb, 16),
            i: 0,
            at: bs,
            bs,
            head: vec![0; bs as usize],
        })
    }

    /// The next entry; its payload only if `keep(sector)` (512-byte
    /// sectors of the logged device).
    fn next(&mut self, keep: impl Fn(u64) -> bool) -> Res<Option<Entry>> {
        if self.i == self.n {
            return Ok(None);
        }
        let (i, bs, unit) = (self.i, self.bs, self.bs / 512);
        self.f
            .read_exact_at(&mut self.head, self.at)
            .map_err(|e| format!("replay|FAIL|entry {i}: {e}"))?;
        let h = &self.head;
        let (sector, nr, flags) = (u64_at(h, 0) * unit, u64_at(h, 8), u64_at(h, 16));
        self.at += bs;
        let mut data = Vec::new();
        if flags & LOG_MARK != 0 {
            let len = (u64_at(h, 24) as usize).min(h.len() - 32);
            data = h[32..32 + len].to_vec();
        } else if flags & LOG_DISCARD == 0 && nr > 0 {
            if keep(sector) {
                data.resize((nr * bs) as usize, 0);
                self.f
                    .read_exact_at(&mut data, self.at)
                    .map_err(|e| format!("replay|FAIL|entry {i} data: {e}"))?;
            }
            self.at += nr * bs;
        }
        self.i += 1;
        Ok(Some(Entry {
            sector,
            sectors: nr * unit,
            flags,
            data,
        }))
    }
}

/// The meta device as a power cut may leave it: what is durable, and the
/// writes not yet flushed.
struct Meta {
    durable: Vec<u8>,
    pending: Vec<(usize, Vec<u8>)>,
}

impl Meta {
    fn flush(&mut self) {
        for (off, d) in std::mem::take(&mut self.pending) {
            self.durable[off..off + d.len()].copy_from_slice(&d);
        }
    }

    /// Whether byte `b`'s bit `bit` is 1 in every image a power cut may
    /// leave.
    fn surely_set(&self, b: usize, bit: u8) -> bool {
        self.durable[b] & (1 << bit) != 0
            && self
                .pending
                .iter()
                .all(|(off, d)| b < *off || b >= off + d.len() || d[b - off] & (1 << bit) != 0)
    }

    fn pending_over(&self, start: usize, len: usize) -> bool {
        self.pending
            .iter()
            .any(|(off, d)| *off < start + len && start < off + d.len())
    }

    /// The apply mark of the durable image (copy A, else B).
    fn mark(&self) -> Option<ApplyMark> {
        APPLY_MARK_SECTORS.iter().find_map(|&s| {
            let o = (s * 512) as usize;
            ApplyMark::decode(&self.durable[o..o + APPLY_MARK_LEN], &FastDigest).ok()
        })
    }
}

pub(crate) fn replay_check(a: ReplayCheckArgs) -> Res<()> {
    let mut log = LogReader::open(&a.log)?;
    let meta_len = (a.meta_sectors * 512) as usize;
    let mut meta = Meta {
        durable: vec![0; meta_len],
        pending: Vec::new(),
    };
    let in_range = |s: u64, start: u64, len: u64| s >= start && s < start + len;
    let chunk_sectors = a.chunk_kb * 2;
    let bitmap = (BITMAP_SECTOR * 512) as usize;
    let (mut flushes, mut fua, mut data_writes, mut meta_writes, mut intervals) = (0, 0, 0, 0, 0);
    // Secondary: data writes not yet durable, and whether the durable mark
    // had an interval in progress at the last look.
    let mut unflushed = 0u64;
    let mut in_progress = false;
    let mut checking = a.from_mark.is_none();
    // Primary: the chunks whose bit was surely set at some point since the
    // last flush, and in the interval before it.
    let chunks = a.data_sectors.div_ceil(chunk_sectors) as usize;
    let mut set_cur = vec![false; chunks];
    let mut set_prev = vec![false; chunks];
    let surely = |meta: &Meta, c: usize| {
        let b = bitmap + c / 8;
        b < meta_len && meta.surely_set(b, (c % 8) as u8)
    };
    let trace = std::env::var_os("FERRY_REPLAY_TRACE").is_some();
    let mut next = 0u64;
    while let Some(e) = log.next(|s| in_range(s, a.meta_start, a.meta_sectors))? {
        let i = next;
        next += 1;
        if trace {
            eprintln!(
                "{i}: sector {} +{} flags {:#x}{}",
                e.sector,
                e.sectors,
                e.flags,
                if in_range(e.sector, a.meta_start, a.meta_sectors) {
                    " meta"
                } else {
                    ""
                }
            );
        }
        if e.flags & LOG_MARK != 0 {
            checking |= a.from_mark.as_deref().map(str::as_bytes) == Some(&e.data[..]);
            continue;
        }
        if e.flags & LOG_FLUSH != 0 {
            flushes += 1;
            meta.flush();
            unflushed = 0;
            for c in 0..chunks {
                set_prev[c] = set_cur[c];
                set_cur[c] = surely(&meta, c);
            }
        }
        if e.sectors == 0 {
            continue;
        }
        let durable_now = e.flags & LOG_FUA != 0;
        fua += u64::from(durable_now);
        if in_range(e.sector, a.meta_start, a.meta_sectors) {
            meta_writes += 1;
            if e.flags & LOG_DISCARD != 0 {
                continue;
            }
            let off = ((e.sector - a.meta_start) * 512) as usize;
            let len = e.data.len().min(meta_len.saturating_sub(off));
            let d = e.data[..len].to_vec();
            if durable_now {
                meta.durable[off..off + len].copy_from_slice(&d);
            } else {
                meta.pending.push((off, d));
            }
            if off + len > bitmap {
                let c0 = (off.saturating_sub(bitmap) * 8).min(chunks);
                let c1 = ((off + len - bitmap) * 8).min(chunks);
                for (c, set) in set_cur.iter_mut().enumerate().take(c1).skip(c0) {
                    *set |= surely(&meta, c);
                }
            }
            if a.secondary {
                let now = matches!(
                    meta.mark().map(|m| m.state),
                    Some(ApplyState::InProgress { .. })
                );
                if in_progress && !now {
                    intervals += 1;
                    if unflushed > 0 {
                        return Err(format!(
                            "replay|FAIL|entry {i}: the mark that ends an interval is durable while {unflushed} data writes of it are not (no flush before the mark was cleared): G4"
                        ));
                    }
                }
                in_progress = now;
            }
        } else if checking && in_range(e.sector, a.data_start, a.data_sectors) {
            data_writes += 1;
            let rel = e.sector - a.data_start;
            if a.secondary {
                let marks = APPLY_MARK_SECTORS
                    .iter()
                    .any(|&s| meta.pending_over((s * 512) as usize, APPLY_MARK_LEN));
                if !in_progress || marks {
                    return Err(format!(
                        "replay|FAIL|entry {i}: a data write (sector {rel}) while the durable mark says no interval is in progress{}: G4",
                        if marks { " (a mark write is not durable yet)" } else { "" }
                    ));
                }
                if !durable_now {
                    unflushed += 1;
                }
            } else {
                let first = rel / chunk_sectors;
                let last = (rel + e.sectors - 1) / chunk_sectors;
                for c in first..=last {
                    let c = c as usize;
                    let ok = c < chunks && (set_cur[c] || set_prev[c] || surely(&meta, c));
                    if !ok {
                        return Err(format!(
                            "replay|FAIL|entry {i}: a data write (sector {rel}, {} sectors) reached chunk {c}, whose write-intent bit a power cut could leave clear: G3",
                            e.sectors
                        ));
                    }
                }
            }
        }
    }
    if !checking {
        return Err("replay|FAIL|the log holds no such mark".into());
    }
    if data_writes == 0 {
        return Err("replay|FAIL|the log holds no data write".into());
    }
    if a.secondary && intervals == 0 {
        return Err("replay|FAIL|the log holds no interval".into());
    }
    println!(
        "replay|PASS|entries={}|flushes={flushes}|fua={fua}|data_writes={data_writes}|meta_writes={meta_writes}{}",
        log.n,
        if a.secondary {
            format!("|intervals={intervals}")
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::checkpoint::ApplyMark;

    /// A log of `(sector, sectors, flags, payload)` entries (512-byte
    /// sectors), as dm-log-writes writes it.
    fn log(entries: &[(u64, u64, u64, Vec<u8>)]) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ferry-replay-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut b = vec![0u8; 512];
        b[0..8].copy_from_slice(&LOG_MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&1u64.to_le_bytes());
        b[16..24].copy_from_slice(&(entries.len() as u64).to_le_bytes());
        b[24..28].copy_from_slice(&512u32.to_le_bytes());
        for (sector, sectors, flags, data) in entries {
            let mut h = vec![0u8; 512];
            h[0..8].copy_from_slice(&sector.to_le_bytes());
            h[8..16].copy_from_slice(&sectors.to_le_bytes());
            h[16..24].copy_from_slice(&flags.to_le_bytes());
            if flags & LOG_MARK != 0 {
                h[24..32].copy_from_slice(&(data.len() as u64).to_le_bytes());
                h[32..32 + data.len()].copy_from_slice(data);
                b.extend_from_slice(&h);
            } else {
                b.extend_from_slice(&h);
                let mut d = data.clone();
                d.resize((*sectors * 512) as usize, 0);
                b.extend_from_slice(&d);
            }
        }
        std::fs::write(&p, b).unwrap();
        p
    }

    const D: u64 = 65536;
    const M: u64 = 16384;
    const BM: u64 = D + BITMAP_SECTOR;

    fn args(log: PathBuf, secondary: bool) -> ReplayCheckArgs {
        ReplayCheckArgs {
            log,
            data_start: 0,
            data_sectors: D,
            meta_start: D,
            meta_sectors: M,
            chunk_kb: 64,
            secondary,
            from_mark: None,
        }
    }

    /// A bitmap page with chunk `c` set (or none).
    fn page(c: Option<usize>) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        if let Some(c) = c {
            p[c / 8] |= 1 << (c % 8);
        }
        p
    }

    #[test]
    fn a_write_after_its_durable_bit_passes_and_without_fua_fails() {
        // Chunk 3 (sectors 384..512) marked with FUA, then written.
        let good = log(&[
            (BM, 8, LOG_FUA, page(Some(3))),
            (400, 8, 0, vec![1; 4096]),
            (0, 0, LOG_FLUSH, vec![]),
        ]);
        assert!(replay_check(args(good, false)).is_ok());
        // The same without FUA: the bit is durable only at the flush.
        let bad = log(&[
            (BM, 8, 0, page(Some(3))),
            (400, 8, 0, vec![1; 4096]),
            (0, 0, LOG_FLUSH, vec![]),
        ]);
        let e = replay_check(args(bad, false)).unwrap_err();
        assert!(e.contains("chunk 3") && e.contains("G3"), "{e}");
        // A bit set in the durable image but cleared by a pending write is
        // not sure at that point: with nothing earlier in the window, the
        // write fails.
        let cleared = log(&[
            (BM, 8, LOG_FUA, page(Some(3))),
            (BM, 8, 0, page(None)),
            (0, 0, LOG_FLUSH, vec![]),
            (0, 0, LOG_FLUSH, vec![]),
            (400, 8, 0, vec![1; 4096]),
        ]);
        assert!(replay_check(args(cleared, false)).is_err());
    }

    #[test]
    fn a_write_issued_two_flushes_after_its_bit_was_cleared_fails() {
        let late = log(&[
            (BM, 8, LOG_FUA, page(Some(3))),
            (BM, 8, LOG_FUA, page(None)),
            (0, 0, LOG_FLUSH, vec![]),
            (0, 0, LOG_FLUSH, vec![]),
            (400, 8, 0, vec![1; 4096]),
            (0, 0, LOG_FLUSH, vec![]),
        ]);
        assert!(replay_check(args(late, false)).is_err());
        // One flush back, the write may have been issued while it was set.
        let window = log(&[
            (BM, 8, LOG_FUA, page(Some(3))),
            (BM, 8, LOG_FUA, page(None)),
            (0, 0, LOG_FLUSH, vec![]),
            (400, 8, 0, vec![1; 4096]),
            (0, 0, LOG_FLUSH, vec![]),
        ]);
        assert!(replay_check(args(window, false)).is_ok());
    }

    fn mark(in_progress: Option<u64>, applied: u64) -> Vec<u8> {
        let m = ApplyMark {
            applied,
            state: match in_progress {
                Some(epoch) => ApplyState::InProgress { epoch },
                None => ApplyState::Idle,
            },
        };
        let mut enc = [0u8; APPLY_MARK_LEN];
        m.encode(&FastDigest, &mut enc);
        let mut p = vec![0u8; 4096];
        p[..APPLY_MARK_LEN].copy_from_slice(&enc);
        p
    }

    #[test]
    fn the_mark_must_cover_the_interval_until_it_is_durable() {
        let (a, b) = (D + APPLY_MARK_SECTORS[0], D + APPLY_MARK_SECTORS[1]);
        let good = log(&[
            (a, 8, LOG_FUA, mark(Some(1), 0)),
            (b, 8, LOG_FUA, mark(Some(1), 0)),
            (100, 8, 0, vec![2; 4096]),
            (0, 0, LOG_FLUSH, vec![]),
            (a, 8, LOG_FUA, mark(None, 1)),
            (b, 8, LOG_FUA, mark(None, 1)),
        ]);
        let r = replay_check(args(good, true));
        assert!(r.is_ok(), "{r:?}");
        // No flush before the mark is cleared: the write is logged at a
        // later flush, outside the interval.
        let bad = log(&[
            (a, 8, LOG_FUA, mark(Some(1), 0)),
            (b, 8, LOG_FUA, mark(Some(1), 0)),
            (a, 8, LOG_FUA, mark(None, 1)),
            (b, 8, LOG_FUA, mark(None, 1)),
            (100, 8, 0, vec![2; 4096]),
            (0, 0, LOG_FLUSH, vec![]),
        ]);
        let e = replay_check(args(bad, true)).unwrap_err();
        assert!(e.contains("G4"), "{e}");
        // A mark cleared with a FUA data write of it still pending cannot
        // happen; one cleared while a write is pending can.
        let pending = log(&[
            (a, 8, LOG_FUA, mark(Some(1), 0)),
            (100, 8, 0, vec![2; 4096]),
            (a, 8, LOG_FUA, mark(None, 1)),
            (0, 0, LOG_FLUSH, vec![]),
        ]);
        assert!(replay_check(args(pending, true)).is_err());
    }
}
