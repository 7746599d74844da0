//! Tests of [`super`] (remote_log.rs).

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
