//! The secondary's remote log: one file per stream,
//! `<log_dir>/stream-<device>.log`, whole records back to back.  A batch is
//! appended and fsynced before any of it is acknowledged.
//!
//! * **A failed append** (an error or a short write, or a failed fsync) is
//!   rolled back: the file is truncated to its length before the batch (the
//!   end of the last whole record) and fsynced again; nothing of the batch
//!   is acknowledged, and the caller drops the connection (the primary
//!   sends again from what is acknowledged).
//! * **A failed fsync** is final for its descriptor: the kernel may have
//!   dropped the dirty pages and reports the error once, so a later fsync
//!   of the same descriptor proves nothing.  The rollback then opens the
//!   file again, truncates and fsyncs through the new descriptor and reads
//!   the last whole record back (it must verify and end the file).
//! * **A failed rollback** stops the stream: it takes no more records (never
//!   appends after what may be a partial record) until `ferryd` restarts;
//!   the reason is logged as an error and shown in the status.
//! * **At start** the file is read from the applied position; a bad record
//!   at or beyond the durable end saved in `state.json` is a torn tail of
//!   the last append and is cut; one below it (or a file shorter than it)
//!   is damage to acknowledged records: nothing is cut, the stream is
//!   stopped and says why.
//!
//! * **A full disk** (`ENOSPC`, `EDQUOT`) is a failed append like the
//!   others, rolled back, and not a stop: the stream says it is full
//!   ([`StreamLog::full`]) until an append goes through again, which the
//!   primary's next attempt makes once there is room.
//!
//! The file operations are behind [`files::FileIo`] and
//! [`files::FileSystem`], so that tests can make them fail.

use std::io;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ferry_core::record::{self, GroupKey};
use ferry_core::FastDigest;
use tracing::{error, warn};

use crate::files::{self, append_all, read_exact_at, FileIo, FileSystem, Open};

/// Opens (creates, 0600) the file of stream `id` in `dir`, and syncs `dir`
/// so that the file's name is durable before anything in it is
/// acknowledged.  (Also when the file existed: an earlier `ferryd` may have
/// died between creating it and syncing.)
pub(crate) fn open(fs: &dyn FileSystem, dir: &Path, id: u32) -> Result<Box<dyn FileIo>> {
    let path = dir.join(format!("stream-{id}.log"));
    let file = fs
        .open(&path, Open::Append)
        .with_context(|| format!("open {}", path.display()))?;
    fs.sync_dir(dir)
        .with_context(|| format!("sync {}", dir.display()))?;
    Ok(file)
}

/// What [`recover`] found.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// End of the last whole record (the file's length, unless damaged).
    pub(crate) end: u64,
    /// Offset and length of the last whole record read.
    last: Option<(u64, u32)>,
    /// The durable end saved, or `end` if beyond it.
    durable: u64,
    /// Why the stream must stop: damage below the durable end.
    pub(crate) damaged: Option<String>,
}

/// Reads stream `id`'s file from `start` (what is applied lies below), and
/// hands each record in turn to `decode` (its offset and the bytes from
/// it), which returns its length or why it is bad.  A bad record at or
/// beyond `durable` (the end of what was fsynced whole when `state.json`
/// was last saved) is a torn tail: the file is cut there.  One below it,
/// or a file that ends below it, is damage: logged as an error and
/// reported, the file left as it is.
pub(crate) fn recover<E: std::fmt::Display>(
    f: &mut dyn FileIo,
    id: u32,
    start: u64,
    durable: u64,
    mut decode: impl FnMut(u64, &[u8]) -> Result<usize, E>,
) -> Result<Recovery> {
    let size = f.size().context("remote log length")?;
    let mut buf = vec![0u8; size.saturating_sub(start) as usize];
    read_exact_at(&*f, &mut buf, start).context("read the remote log")?;
    let mut off = 0usize;
    let mut last = None;
    let mut bad = None;
    while off < buf.len() {
        match decode(start + off as u64, &buf[off..]) {
            Ok(len) => {
                last = Some((start + off as u64, len as u32));
                off += len;
            }
            Err(e) => {
                bad = Some(e.to_string());
                break;
            }
        }
    }
    let end = start + off as u64;
    let damaged = match bad {
        _ if size < start.max(durable) => Some(format!(
            "the file ends at {size}, below what was durable and may have been acknowledged ({})",
            start.max(durable)
        )),
        Some(e) if end < durable => Some(format!(
            "a bad record at offset {end} ({e}), below the end of what was durable and may have been acknowledged ({durable})"
        )),
        Some(e) => {
            warn!(
                device = id,
                offset = end,
                "remote log ends with a bad record ({e}): cut"
            );
            f.set_len(end).context("cut the remote log")?;
            f.sync().context("sync the remote log")?;
            None
        }
        None => None,
    };
    if let Some(why) = &damaged {
        error!(
            device = id,
            "remote log damaged: {why}; nothing cut, the stream stops"
        );
    }
    Ok(Recovery {
        end,
        last,
        durable: durable.max(end),
        damaged,
    })
}

/// One stream's file of the remote log, at the end of its last whole
/// record outside [`StreamLog::append`].
pub(crate) struct StreamLog {
    file: Box<dyn FileIo>,
    device: u32,
    key: GroupKey,
    /// End of the last whole record, fsynced.
    end: u64,
    last: Option<(u64, u32)>,
    /// Below it everything was fsynced whole (and may be acknowledged);
    /// never lowered.
    durable: u64,
    /// Why the stream takes no more records.
    stopped: Option<String>,
    /// The last append failed for lack of space (and was rolled back).
    full: Option<String>,
}

impl StreamLog {
    /// The file of `device` as [`recover`] left it; stopped if damaged.
    pub(crate) fn new(
        file: Box<dyn FileIo>,
        device: u32,
        key: GroupKey,
        r: &Recovery,
    ) -> StreamLog {
        StreamLog {
            file,
            device,
            key,
            end: r.end,
            last: r.last,
            durable: r.durable,
            stopped: r.damaged.clone(),
            full: None,
        }
    }

    /// Why the last append failed, when it was for lack of space (and was
    /// rolled back): the stream waits for room, it is not stopped.
    /// `None` once an append went through.
    pub(crate) fn full(&self) -> Option<&str> {
        self.full.as_deref()
    }

    /// Why the stream takes no more records, if it does not.
    pub(crate) fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Offset below which every record was fsynced whole.
    pub(crate) fn durable(&self) -> u64 {
        self.durable
    }

    /// Appends `recs` (whole records) and fsyncs; returns where each
    /// landed.  On an error nothing is durable of the batch and the file
    /// ends where it did before (or the stream is stopped).
    pub(crate) fn append(&mut self, recs: &[&[u8]]) -> Result<Vec<u64>> {
        if let Some(why) = &self.stopped {
            anyhow::bail!("the remote log of device {} is stopped: {why}", self.device);
        }
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        let base = self.end;
        let mut at = Vec::with_capacity(recs.len());
        let mut end = base;
        let mut failed = None;
        for r in recs {
            if let Err(e) = append_all(&mut *self.file, r) {
                failed = Some((e, false));
                break;
            }
            at.push(end);
            end += r.len() as u64;
        }
        if failed.is_none() {
            if let Err(e) = self.file.sync() {
                failed = Some((e, true));
            }
        }
        let Some((e, sync)) = failed else {
            self.end = end;
            self.durable = self.durable.max(end);
            self.last = recs.last().map(|r| (end - r.len() as u64, r.len() as u32));
            self.full = None;
            return Ok(at);
        };
        let what = if sync { "fsync" } else { "write" };
        match self.roll_back(base, sync) {
            Ok(()) if files::no_space(&e) => {
                let why = format!("{what} of {} records at offset {base}: {e}", recs.len());
                // (Logged once per spell: the primary tries again and
                // again until there is room.)
                if self.full.is_none() {
                    warn!(
                        device = self.device,
                        "remote log full ({why}): rolled back, nothing acknowledged; \
                         replication waits for room"
                    );
                }
                self.full = Some(why);
            }
            Ok(()) => warn!(
                device = self.device,
                offset = base,
                "remote log {what} failed ({e}): rolled back, nothing acknowledged"
            ),
            Err(re) => {
                let why = format!(
                    "{what} failed ({e}) and the rollback to offset {base} failed ({re:#})"
                );
                error!(
                    device = self.device,
                    "remote log: {why}; the stream takes no more records"
                );
                self.stopped = Some(why);
            }
        }
        Err(anyhow!(e).context(format!("remote log {what}")))
    }

    /// Cuts the file back to `base` durably; after a failed fsync, through
    /// a new descriptor, and the last record is read back.
    fn roll_back(&mut self, base: u64, sync_failed: bool) -> Result<()> {
        if sync_failed {
            self.file = self.file.reopen().context("reopen")?;
        }
        self.file.set_len(base).context("truncate")?;
        self.file.sync().context("fsync")?;
        let size = self.file.size().context("length")?;
        if size != base {
            anyhow::bail!("the file is {size} bytes long after the rollback");
        }
        if let (true, Some((off, len))) = (sync_failed, self.last) {
            let mut b = vec![0u8; len as usize];
            read_exact_at(&*self.file, &mut b, off).context("read the last record back")?;
            match record::decode_record(&b, &self.key, &FastDigest) {
                Ok(r) if r.len == b.len() && off + u64::from(len) == base => {}
                Ok(_) => anyhow::bail!("the last record at {off} does not end the file"),
                Err(e) => anyhow::bail!("the last record at {off} does not verify: {e}"),
            }
        }
        Ok(())
    }

    pub(crate) fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        read_exact_at(&*self.file, buf, off)
    }

    /// End of the last whole record.
    #[cfg(test)]
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Releases the space below `upto` (whole pages).
    pub(crate) fn punch(&self, upto: u64) {
        self.file.punch(upto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::tests::fresh_dir;
    use crate::files::{Fault, Op};
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    const ENOSPC: i32 = 28;
    const EIO: i32 = 5;

    /// A fault to inject.
    #[derive(Clone, Copy, Debug)]
    enum MemFault {
        /// The appends write this many more bytes (the last one short),
        /// then one fails with this errno (or writes nothing: `None`).
        Write(usize, Option<i32>),
        /// The next fsync fails with EIO.
        Sync,
        /// The next truncation fails with EIO.
        SetLen,
    }

    #[derive(Default)]
    struct Shared {
        data: Vec<u8>,
        faults: Vec<MemFault>,
        /// fsyncs of a descriptor whose fsync failed before (Linux says
        /// they succeed: the error was reported once).
        blind_syncs: u32,
        reopens: u32,
    }

    /// A file in memory that fails as told; its descriptors share it.
    #[derive(Clone, Default)]
    struct Mem {
        s: Arc<Mutex<Shared>>,
        sync_failed: bool,
    }

    impl Mem {
        fn inject(&self, f: MemFault) {
            self.s.lock().unwrap().faults.push(f);
        }
        fn take(&self, pick: impl Fn(&MemFault) -> bool) -> Option<MemFault> {
            let mut s = self.s.lock().unwrap();
            let i = s.faults.iter().position(pick)?;
            Some(s.faults.remove(i))
        }
        fn data(&self) -> Vec<u8> {
            self.s.lock().unwrap().data.clone()
        }
    }

    impl FileIo for Mem {
        fn size(&self) -> io::Result<u64> {
            Ok(self.s.lock().unwrap().data.len() as u64)
        }
        fn append(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut s = self.s.lock().unwrap();
            let mut n = buf.len();
            if let Some(i) = s
                .faults
                .iter()
                .position(|f| matches!(f, MemFault::Write(..)))
            {
                let MemFault::Write(left, errno) = s.faults[i] else {
                    unreachable!()
                };
                if left == 0 {
                    s.faults.remove(i);
                    return match errno {
                        Some(e) => Err(io::Error::from_raw_os_error(e)),
                        None => Ok(0),
                    };
                }
                n = n.min(left);
                s.faults[i] = MemFault::Write(left - n, errno);
            }
            s.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            if self.take(|f| matches!(f, MemFault::SetLen)).is_some() {
                return Err(io::Error::from_raw_os_error(EIO));
            }
            self.s.lock().unwrap().data.resize(len as usize, 0);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            if self.sync_failed {
                self.s.lock().unwrap().blind_syncs += 1;
                return Ok(());
            }
            if self.take(|f| matches!(f, MemFault::Sync)).is_some() {
                self.sync_failed = true;
                return Err(io::Error::from_raw_os_error(EIO));
            }
            Ok(())
        }
        fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
            let s = self.s.lock().unwrap();
            let from = (off as usize).min(s.data.len());
            let n = buf.len().min(s.data.len() - from);
            buf[..n].copy_from_slice(&s.data[from..from + n]);
            Ok(n)
        }
        fn reopen(&self) -> io::Result<Box<dyn FileIo>> {
            self.s.lock().unwrap().reopens += 1;
            Ok(Box::new(Mem {
                s: self.s.clone(),
                sync_failed: false,
            }))
        }
        fn punch(&self, _: u64) {}
    }

    fn key() -> GroupKey {
        let gid = record::group_id_of_name(&FastDigest, b"g");
        GroupKey::derive(&FastDigest, gid, &[]).unwrap()
    }

    fn rec(ds: u64) -> Vec<u8> {
        let key = key();
        crate::spool::tests::rec(&key, key.group_id, ds).to_vec()
    }

    /// Recovers `f` from 0; returns the `dev_seq`s read and the recovery.
    fn read_back(f: &mut dyn FileIo, durable: u64) -> (Vec<u64>, Recovery) {
        let key = key();
        let mut seqs = Vec::new();
        let r = recover(f, 1, 0, durable, |_, b| {
            record::decode_record(b, &key, &FastDigest).map(|r| {
                seqs.push(r.header.dev_seq);
                r.len
            })
        })
        .unwrap();
        (seqs, r)
    }

    fn new_log() -> (Mem, StreamLog) {
        let f = Mem::default();
        let r = read_back(&mut f.clone(), 0).1;
        let log = StreamLog::new(Box::new(f.clone()), 1, key(), &r);
        (f, log)
    }

    fn append(log: &mut StreamLog, seqs: std::ops::Range<u64>) -> Result<Vec<u64>> {
        let recs: Vec<_> = seqs.map(rec).collect();
        log.append(&recs.iter().map(|r| &r[..]).collect::<Vec<_>>())
    }

    #[test]
    fn a_failed_write_is_rolled_back() {
        let len = rec(1).len();
        for fault in [
            // ENOSPC in the middle of the batch's second record.
            MemFault::Write(len + 100, Some(ENOSPC)),
            MemFault::Write(10, Some(EIO)),
            // A short write, then nothing.
            MemFault::Write(len + 1, None),
        ] {
            let (f, mut log) = new_log();
            append(&mut log, 1..3).unwrap();
            let before = f.data();
            f.inject(fault);
            assert!(append(&mut log, 3..6).is_err(), "{fault:?}");
            assert_eq!(f.data(), before, "{fault:?}: rolled back");
            assert!(log.stopped().is_none());
            // The primary sends them again.
            let at = append(&mut log, 3..6).unwrap();
            assert_eq!(at[0], before.len() as u64);
            let (seqs, r) = read_back(&mut f.clone(), log.durable());
            assert_eq!(seqs, (1..6).collect::<Vec<_>>(), "{fault:?}");
            assert!(r.damaged.is_none());
            assert_eq!(r.end, f.data().len() as u64);
        }
    }

    #[test]
    fn a_failed_fsync_is_rolled_back_through_a_new_descriptor() {
        let (f, mut log) = new_log();
        append(&mut log, 1..3).unwrap();
        let before = f.data();
        f.inject(MemFault::Sync);
        assert!(append(&mut log, 3..5).is_err());
        assert_eq!(f.data(), before);
        let s = f.s.lock().unwrap();
        assert_eq!((s.reopens, s.blind_syncs), (1, 0));
        drop(s);
        assert!(log.stopped().is_none());
        append(&mut log, 3..5).unwrap();
        assert_eq!(f.s.lock().unwrap().blind_syncs, 0);
        assert_eq!(read_back(&mut f.clone(), 0).0, (1..5).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_rollback_stops_the_stream() {
        let (f, mut log) = new_log();
        append(&mut log, 1..3).unwrap();
        f.inject(MemFault::Write(100, Some(ENOSPC)));
        f.inject(MemFault::SetLen);
        assert!(append(&mut log, 3..4).is_err());
        let why = log.stopped().expect("stopped").to_owned();
        assert!(why.contains("rollback"), "{why}");
        // Nothing is appended after the partial record any more.
        let garbage = f.data();
        assert!(append(&mut log, 3..4).is_err());
        assert_eq!(f.data(), garbage);
        // A fsync that fails, and then the new descriptor's as well.
        let (f, mut log) = new_log();
        append(&mut log, 1..2).unwrap();
        f.inject(MemFault::Sync);
        f.inject(MemFault::Sync);
        assert!(append(&mut log, 2..3).is_err());
        assert!(log.stopped().is_some());
        assert_eq!(f.s.lock().unwrap().blind_syncs, 0);
    }

    #[test]
    fn recovery_cuts_a_torn_tail_but_not_below_the_durable_end() {
        let (f, mut log) = new_log();
        append(&mut log, 1..4).unwrap();
        let len = rec(1).len() as u64;
        let durable = log.durable();
        assert_eq!(durable, 3 * len);
        // A torn append beyond the durable end: cut.
        let mut torn = f.clone();
        torn.append(&rec(4)[..100]).unwrap();
        let (seqs, r) = read_back(&mut torn, durable);
        assert_eq!((seqs.len(), r.end, r.damaged), (3, durable, None));
        assert_eq!(f.data().len() as u64, durable);
        // The second record damaged: nothing cut, the stream stopped.
        let mut data = f.data();
        data[len as usize + 50] ^= 1;
        f.s.lock().unwrap().data = data.clone();
        let (seqs, r) = read_back(&mut f.clone(), durable);
        assert_eq!(seqs, [1]);
        let why = r.damaged.clone().expect("damaged");
        assert!(why.contains(&format!("offset {len}")), "{why}");
        assert_eq!(f.data(), data, "nothing cut");
        let mut log = StreamLog::new(Box::new(f.clone()), 1, key(), &r);
        assert!(log.stopped().is_some());
        assert!(append(&mut log, 4..5).is_err());
        assert_eq!(log.durable(), durable);
        // A file shorter than the durable end.
        let (f, mut log) = new_log();
        append(&mut log, 1..3).unwrap();
        f.s.lock().unwrap().data.truncate(len as usize);
        let (seqs, r) = read_back(&mut f.clone(), 2 * len);
        assert_eq!(seqs, [1]);
        assert!(r.damaged.is_some());
        // Without a durable end saved (an older state.json): cut.
        let (seqs, r) = read_back(&mut f.clone(), 0);
        assert_eq!((seqs.len(), r.damaged), (1, None));
    }

    #[test]
    fn the_directory_is_synced_when_a_stream_file_is_opened() {
        let dir = fresh_dir("rlog-open");
        files::create_dir(&dir).unwrap();
        let fs = files::tests::Faulty::default();
        open(&fs, &dir, 2).unwrap();
        assert!(dir.join("stream-2.log").exists());
        let part = dir.to_string_lossy().into_owned();
        fs.inject(Op::SyncDir, &part, Fault::Errno(EIO), Some(1));
        assert!(open(&fs, &dir, 3).is_err());
        assert_eq!(fs.hits(Op::SyncDir), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A stream's log on a real file in a new directory `name`, its
    /// operations through `fs`.
    fn on_disk(name: &str, fs: &files::tests::Faulty) -> (PathBuf, StreamLog) {
        let dir = fresh_dir(name);
        files::create_dir(&dir).unwrap();
        let mut f = open(fs, &dir, 1).unwrap();
        let r = read_back(&mut *f, 0).1;
        (dir.clone(), StreamLog::new(f, 1, key(), &r))
    }

    /// What a restart finds in `dir`: the `dev_seq`s, and the recovery.
    fn restart(dir: &Path, durable: u64) -> (Vec<u64>, Recovery) {
        let mut f = open(&files::Os, dir, 1).unwrap();
        read_back(&mut *f, durable)
    }

    /// The log directory fills up in the middle of a batch (a record
    /// written whole, the next one torn by `ENOSPC`): the batch is
    /// rolled back and not acknowledged, the stream is full and not
    /// stopped, each new attempt fails the same way while there is no
    /// room, and the first once there is goes through.  Nothing that was
    /// acknowledged is lost, and a restart finds no damage.
    #[test]
    fn a_full_log_waits_for_room() {
        let len = rec(1).len();
        let fs = files::tests::Faulty::default();
        let (dir, mut log) = on_disk("rlog-full", &fs);
        append(&mut log, 1..3).unwrap();
        let before = log.end();
        for fault in [
            Fault::Torn(len + 100, ENOSPC),
            Fault::Torn(100, ENOSPC),
            Fault::Errno(ENOSPC),
            Fault::Errno(libc::EDQUOT),
        ] {
            fs.inject_after(Op::Write, "stream-1", 1, fault, None);
            for _ in 0..3 {
                let e = append(&mut log, 3..6).unwrap_err();
                assert!(files::out_of_space(&e), "{fault:?}: {e:#}");
                assert!(log.stopped().is_none(), "{fault:?}: full is not a stop");
                assert!(log.full().is_some_and(|w| w.contains("offset")));
                assert_eq!(
                    std::fs::metadata(dir.join("stream-1.log")).unwrap().len(),
                    before
                );
            }
            fs.clear();
        }
        // Another failure (EIO) is no lack of space: the stream is not
        // said to be full by it, but still rolled back.
        fs.inject(Op::Write, "stream-1", Fault::Torn(10, EIO), Some(1));
        assert!(!files::out_of_space(&append(&mut log, 3..6).unwrap_err()));
        assert_eq!(log.end(), before);
        // Room again: the primary's next attempt goes through.
        append(&mut log, 3..6).unwrap();
        assert!(log.full().is_none());
        let (seqs, r) = restart(&dir, log.durable());
        assert_eq!(seqs, (1..6).collect::<Vec<_>>());
        assert!(r.damaged.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Short writes: one that is followed by the rest goes through whole;
    /// one followed by nothing (`WriteZero`) or by `ENOSPC` is rolled back.
    #[test]
    fn short_writes() {
        let fs = files::tests::Faulty::default();
        let (dir, mut log) = on_disk("rlog-short", &fs);
        fs.inject(Op::Write, "stream-1", Fault::Short(1000), Some(1));
        append(&mut log, 1..3).unwrap();
        let before = log.end();
        fs.inject(Op::Write, "stream-1", Fault::Short(1000), Some(1));
        fs.inject(Op::Write, "stream-1", Fault::Short(0), Some(1));
        assert!(append(&mut log, 3..4).is_err());
        fs.inject(Op::Write, "stream-1", Fault::Short(1000), Some(1));
        fs.inject(Op::Write, "stream-1", Fault::Errno(ENOSPC), Some(1));
        assert!(append(&mut log, 3..4).is_err());
        assert!(log.full().is_some());
        assert_eq!(log.end(), before);
        append(&mut log, 3..4).unwrap();
        assert_eq!(restart(&dir, log.durable()).0, [1, 2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A failed fsync of a real file: the rollback goes through a new
    /// descriptor (never trusting the failed one again), and the log goes
    /// on from where it was.
    #[test]
    fn a_failed_fsync_of_a_file() {
        let fs = files::tests::Faulty::default();
        let (dir, mut log) = on_disk("rlog-fsync", &fs);
        append(&mut log, 1..3).unwrap();
        fs.inject(Op::Sync, "stream-1", Fault::Errno(EIO), Some(1));
        assert!(append(&mut log, 3..5).is_err());
        assert!(log.stopped().is_none() && log.full().is_none());
        append(&mut log, 3..5).unwrap();
        assert_eq!(fs.blind_syncs(), 0);
        assert_eq!(restart(&dir, log.durable()).0, [1, 2, 3, 4]);
        // A fsync that fails for lack of space (a thin device, NFS): full.
        fs.inject(Op::Sync, "stream-1", Fault::Errno(ENOSPC), Some(1));
        assert!(append(&mut log, 5..6).is_err());
        assert!(log.full().is_some() && log.stopped().is_none());
        // The new descriptor cannot be opened: stopped.
        fs.inject(Op::Sync, "stream-1", Fault::Errno(EIO), Some(1));
        fs.inject(Op::Open, "stream-1", Fault::Errno(EIO), Some(1));
        assert!(append(&mut log, 5..6).is_err());
        assert!(log.stopped().is_some_and(|w| w.contains("reopen")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A torn append whose rollback fails (the disk went bad): the stream
    /// stops with the partial record in its file; the restart (the disk
    /// healthy again) cuts it, beyond the durable end, and every record
    /// acknowledged before is there.
    #[test]
    fn a_torn_append_is_cut_at_the_restart() {
        let fs = files::tests::Faulty::default();
        let (dir, mut log) = on_disk("rlog-torn", &fs);
        append(&mut log, 1..4).unwrap();
        let durable = log.durable();
        fs.inject(Op::Write, "stream-1", Fault::Torn(300, EIO), Some(1));
        fs.inject(Op::SetLen, "stream-1", Fault::Errno(EIO), Some(1));
        assert!(append(&mut log, 4..6).is_err());
        assert!(log.stopped().is_some());
        assert!(std::fs::metadata(dir.join("stream-1.log")).unwrap().len() > durable);
        let (seqs, r) = restart(&dir, durable);
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!((r.end, r.damaged), (durable, None));
        assert_eq!(
            std::fs::metadata(dir.join("stream-1.log")).unwrap().len(),
            durable
        );
        // Damage below the durable end found at the restart: nothing cut,
        // the stream stops and says where.
        let mut data = std::fs::read(dir.join("stream-1.log")).unwrap();
        data[rec(1).len() + 60] ^= 1;
        std::fs::write(dir.join("stream-1.log"), &data).unwrap();
        let (seqs, r) = restart(&dir, durable);
        assert_eq!(seqs, [1]);
        assert!(r.damaged.is_some());
        assert_eq!(std::fs::read(dir.join("stream-1.log")).unwrap(), data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The same faults through the failpoints of the real file system
    /// (`--features failpoints`).
    #[cfg(feature = "failpoints")]
    #[test]
    fn failpoints_of_the_remote_log() {
        let scenario = fail::FailScenario::setup();
        let dir = fresh_dir("rlog-fp");
        files::create_dir(&dir).unwrap();
        let mut f = open(&files::Os, &dir, 1).unwrap();
        let r = read_back(&mut *f, 0).1;
        let mut log = StreamLog::new(f, 1, key(), &r);
        append(&mut log, 1..3).unwrap();
        let before = log.end();
        let tag = dir.file_name().unwrap().to_string_lossy().into_owned();
        let len = rec(1).len();
        // The directory fills up in the middle of the second record.
        fail::cfg(
            "files::write",
            &format!("return(torn:{}:ENOSPC@{tag})", len + 100),
        )
        .unwrap();
        let e = append(&mut log, 3..6).unwrap_err();
        assert!(files::out_of_space(&e), "{e:#}");
        assert!(log.full().is_some() && log.stopped().is_none());
        assert_eq!(
            std::fs::metadata(dir.join("stream-1.log")).unwrap().len(),
            before
        );
        fail::remove("files::write");
        // A failed fsync: through a new descriptor.
        fail::cfg("files::sync", &format!("1*return(EIO@{tag})")).unwrap();
        assert!(append(&mut log, 3..6).is_err());
        assert!(log.stopped().is_none());
        fail::remove("files::sync");
        append(&mut log, 3..6).unwrap();
        assert!(log.full().is_none());
        // A torn write, and its rollback fails: stopped; cut at the restart.
        let durable = log.durable();
        fail::cfg("files::write", &format!("1*return(torn:300:EIO@{tag})")).unwrap();
        fail::cfg("files::set_len", &format!("1*return(EIO@{tag})")).unwrap();
        assert!(append(&mut log, 6..7).is_err());
        assert!(log.stopped().is_some());
        fail::remove("files::write");
        fail::remove("files::set_len");
        drop(log);
        let (seqs, r) = restart(&dir, durable);
        assert_eq!(seqs, (1..6).collect::<Vec<_>>());
        assert_eq!((r.end, r.damaged), (durable, None));
        scenario.teardown();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
