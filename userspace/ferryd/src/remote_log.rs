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
//! The file operations are behind [`LogFile`], so that tests can make them
//! fail.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use ferry_core::record::{self, GroupKey};
use ferry_core::FastDigest;
use tracing::{error, warn};

use crate::files;

/// The operations the remote log needs of its file.
pub(crate) trait LogFile: Send {
    /// The file's length.
    fn size(&self) -> io::Result<u64>;
    /// Writes from `buf` at the end of the file; may write less than all.
    fn append(&mut self, buf: &[u8]) -> io::Result<usize>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// fsync (the data and the length).
    fn sync(&mut self) -> io::Result<()>;
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// A new descriptor of the same file.
    fn reopen(&self) -> io::Result<Box<dyn LogFile>>;
    /// Releases the space of `[0, upto)`, the length kept (best effort).
    fn punch(&self, upto: u64);
}

/// A stream's file on disk.
pub(crate) struct Disk {
    file: File,
    path: PathBuf,
}

fn open_file(path: &Path) -> io::Result<File> {
    files::options()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

impl LogFile for Disk {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn append(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut self.file, buf)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.file.read_at(buf, off)
    }
    fn reopen(&self) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(Disk {
            file: open_file(&self.path)?,
            path: self.path.clone(),
        }))
    }
    fn punch(&self, upto: u64) {
        let _ = nix::fcntl::fallocate(
            self.file.as_raw_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            upto as i64,
        );
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens (creates, 0600) the file of stream `id` in `dir`, and syncs `dir`
/// so that the file's name is durable before anything in it is
/// acknowledged.  (Also when the file existed: an earlier `ferryd` may have
/// died between creating it and syncing.)
pub(crate) fn open(dir: &Path, id: u32) -> Result<Disk> {
    open_with(dir, id, sync_dir)
}

fn open_with(dir: &Path, id: u32, sync_dir: impl Fn(&Path) -> io::Result<()>) -> Result<Disk> {
    let path = dir.join(format!("stream-{id}.log"));
    let file = open_file(&path).with_context(|| format!("open {}", path.display()))?;
    sync_dir(dir).with_context(|| format!("sync {}", dir.display()))?;
    Ok(Disk { file, path })
}

fn read_exact_at(f: &dyn LogFile, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.read_at(buf, off) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn append_all(f: &mut dyn LogFile, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match f.append(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
    f: &mut dyn LogFile,
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
    file: Box<dyn LogFile>,
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
}

impl StreamLog {
    /// The file of `device` as [`recover`] left it; stopped if damaged.
    pub(crate) fn new(
        file: Box<dyn LogFile>,
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
        }
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
            return Ok(at);
        };
        let what = if sync { "fsync" } else { "write" };
        match self.roll_back(base, sync) {
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

    /// Releases the space below `upto` (whole pages).
    pub(crate) fn punch(&self, upto: u64) {
        self.file.punch(upto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const ENOSPC: i32 = 28;
    const EIO: i32 = 5;

    /// A fault to inject.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
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
        faults: Vec<Fault>,
        /// fsyncs of a descriptor whose fsync failed before (Linux says
        /// they succeed: the error was reported once).
        blind_syncs: u32,
        reopens: u32,
    }

    /// A file in memory that fails as told; its descriptors share it.
    #[derive(Clone, Default)]
    struct Faulty {
        s: Arc<Mutex<Shared>>,
        sync_failed: bool,
    }

    impl Faulty {
        fn inject(&self, f: Fault) {
            self.s.lock().unwrap().faults.push(f);
        }
        fn take(&self, pick: impl Fn(&Fault) -> bool) -> Option<Fault> {
            let mut s = self.s.lock().unwrap();
            let i = s.faults.iter().position(pick)?;
            Some(s.faults.remove(i))
        }
        fn data(&self) -> Vec<u8> {
            self.s.lock().unwrap().data.clone()
        }
    }

    impl LogFile for Faulty {
        fn size(&self) -> io::Result<u64> {
            Ok(self.s.lock().unwrap().data.len() as u64)
        }
        fn append(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut s = self.s.lock().unwrap();
            let mut n = buf.len();
            if let Some(i) = s.faults.iter().position(|f| matches!(f, Fault::Write(..))) {
                let Fault::Write(left, errno) = s.faults[i] else {
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
                s.faults[i] = Fault::Write(left - n, errno);
            }
            s.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            if self.take(|f| matches!(f, Fault::SetLen)).is_some() {
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
            if self.take(|f| matches!(f, Fault::Sync)).is_some() {
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
        fn reopen(&self) -> io::Result<Box<dyn LogFile>> {
            self.s.lock().unwrap().reopens += 1;
            Ok(Box::new(Faulty {
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
    fn read_back(f: &mut dyn LogFile, durable: u64) -> (Vec<u64>, Recovery) {
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

    fn new_log() -> (Faulty, StreamLog) {
        let f = Faulty::default();
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
            Fault::Write(len + 100, Some(ENOSPC)),
            Fault::Write(10, Some(EIO)),
            // A short write, then nothing.
            Fault::Write(len + 1, None),
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
        f.inject(Fault::Sync);
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
        f.inject(Fault::Write(100, Some(ENOSPC)));
        f.inject(Fault::SetLen);
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
        f.inject(Fault::Sync);
        f.inject(Fault::Sync);
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
        let dir = std::env::temp_dir().join(format!("ferry-rlog-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let synced = Mutex::new(Vec::new());
        open_with(&dir, 2, |d| {
            synced.lock().unwrap().push(d.to_owned());
            Ok(())
        })
        .unwrap();
        assert!(dir.join("stream-2.log").exists());
        assert_eq!(*synced.lock().unwrap(), std::slice::from_ref(&dir));
        assert!(open_with(&dir, 3, |_| Err(io::Error::from_raw_os_error(EIO))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
