//! The primary's disk spool: records of a data device that `ferryd` has
//! read from the kernel and the secondary has not acknowledged yet, written
//! to the primary's own disk when the link is slower than the writer, so
//! that the kernel may drop them from its bounded spool (`SPOOLED`) before
//! it has to fall back to the bitmap.
//!
//! A spooling step writes the records in memory as one *segment*, a file
//! `stream-<device>-<first dev_seq>.seg` holding whole records back to
//! back, and makes it durable (file and directory synced) before the
//! kernel is told.  A segment goes once the secondary acknowledged its last
//! record.  At start the segments are read back and verified (a torn last
//! record is cut): they are shipped before what the kernel offers again,
//! and the kernel's copies of records they hold are dropped as duplicates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferry_core::record::{self, GroupKey};
use ferry_core::FastDigest;
use tracing::warn;

use crate::files::{self, append_all, read_exact_at, FileIo, FileSystem, Open};

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) bytes: u64,
    pub(crate) path: PathBuf,
}

/// Where one record of a segment is.
#[derive(Clone)]
pub(crate) struct OnDisk {
    pub(crate) file: Arc<dyn FileIo>,
    pub(crate) off: u64,
    pub(crate) len: u32,
}

impl std::fmt::Debug for OnDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OnDisk({}+{})", self.off, self.len)
    }
}

impl OnDisk {
    /// The record's bytes.
    pub(crate) fn read(&self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.len as usize];
        read_exact_at(&*self.file, &mut b, self.off).context("read the disk spool")?;
        Ok(b)
    }
}

/// Where records `(dev_seq, offset, length)` of a segment's file are.
fn located(file: &Arc<dyn FileIo>, at: Vec<(u64, u64, u32)>) -> Vec<(u64, OnDisk)> {
    at.into_iter()
        .map(|(ds, off, len)| {
            (
                ds,
                OnDisk {
                    file: file.clone(),
                    off,
                    len,
                },
            )
        })
        .collect()
}

/// Writes records `(dev_seq, bytes)` of `device` (in stream order) as a
/// durable segment; returns it and where each record is.  On a failure
/// (a full disk, say: [`files::out_of_space`] tells) nothing is left of
/// it: the records stay where they were (in memory, in the kernel's
/// spool).
pub(crate) fn write_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    device: u32,
    recs: &[(u64, Arc<[u8]>)],
) -> Result<(Segment, Vec<(u64, OnDisk)>)> {
    let (Some(first), Some(last)) = (recs.first(), recs.last()) else {
        anyhow::bail!("an empty segment");
    };
    let (first, last) = (first.0, last.0);
    let path = dir.join(format!("stream-{device}-{first:020}.seg"));
    let r = write_records(fs, &path, recs).and_then(|w| {
        fs.sync_dir(dir)
            .with_context(|| format!("sync {}", dir.display()))?;
        Ok(w)
    });
    let (f, at, off) = match r {
        Ok(w) => w,
        Err(e) => {
            if let Err(re) = fs.remove(&path) {
                if re.kind() != std::io::ErrorKind::NotFound {
                    // (Found again at the next start: its records are
                    // verified, and those the kernel still offers are
                    // dropped as duplicates.)
                    warn!(path = %path.display(), "cannot remove a segment not written whole: {re}");
                }
            }
            return Err(e);
        }
    };
    let at = located(&Arc::from(f), at);
    Ok((
        Segment {
            first,
            last,
            bytes: off,
            path,
        },
        at,
    ))
}

/// Writes and syncs a segment's file.
#[allow(clippy::type_complexity)]
fn write_records(
    fs: &dyn FileSystem,
    path: &Path,
    recs: &[(u64, Arc<[u8]>)],
) -> Result<(Box<dyn FileIo>, Vec<(u64, u64, u32)>, u64)> {
    let mut f = fs
        .open(path, Open::Truncate)
        .with_context(|| format!("create {}", path.display()))?;
    let mut off = 0u64;
    let mut at = Vec::with_capacity(recs.len());
    for (ds, b) in recs {
        append_all(&mut *f, b).with_context(|| format!("write {}", path.display()))?;
        at.push((*ds, off, b.len() as u32));
        off += b.len() as u64;
    }
    f.sync()
        .with_context(|| format!("sync {}", path.display()))?;
    Ok((f, at, off))
}

/// Removes a segment whose records are all acknowledged.  A failure is
/// logged and returned; the segment is found again at the next start
/// (its records acknowledged by then: dropped).
pub(crate) fn remove(fs: &dyn FileSystem, seg: &Segment) -> Result<()> {
    fs.remove(&seg.path).map_err(|e| {
        warn!(path = %seg.path.display(), "cannot remove a spooled segment: {e}");
        anyhow::Error::from(e).context(format!("remove {}", seg.path.display()))
    })
}

/// A device's segments found at start, oldest first, with their records
/// (`dev_seq`, `timestamp_ns`, where).
pub(crate) type Found = Vec<(Segment, Vec<(u64, u64, OnDisk)>)>;

/// Reads back every segment of `dir` (created if missing, 0700), by device.
/// Records are verified whole; a segment ends at its first bad record (cut
/// there: a torn write of the last spooling step), and an empty one is
/// removed.
pub(crate) fn load(fs: &dyn FileSystem, dir: &Path, key: &GroupKey) -> Result<Vec<(u32, Found)>> {
    files::create_dir(dir)?;
    let mut names = Vec::new();
    for name in fs
        .list(dir)
        .with_context(|| format!("read {}", dir.display()))?
    {
        let Some(rest) = name
            .strip_prefix("stream-")
            .and_then(|r| r.strip_suffix(".seg"))
        else {
            continue;
        };
        let Some((dev, first)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(dev), Ok(first)) = (dev.parse::<u32>(), first.parse::<u64>()) else {
            continue;
        };
        names.push((dev, first, dir.join(&name)));
    }
    names.sort();
    let mut out: Vec<(u32, Found)> = Vec::new();
    for (dev, _, path) in names {
        let mut f = fs
            .open(&path, Open::Existing)
            .with_context(|| format!("open {}", path.display()))?;
        let size = f
            .size()
            .with_context(|| format!("read {}", path.display()))?;
        let mut buf = vec![0u8; size as usize];
        read_exact_at(&*f, &mut buf, 0).with_context(|| format!("read {}", path.display()))?;
        let mut recs = Vec::new();
        let mut stamps = Vec::new();
        let mut off = 0usize;
        while off < buf.len() {
            match record::decode_record(&buf[off..], key, &FastDigest) {
                Ok(r) if r.header.device_id == dev => {
                    recs.push((r.header.dev_seq, off as u64, r.len as u32));
                    stamps.push(r.header.timestamp_ns);
                    off += r.len;
                }
                Ok(_) | Err(_) => {
                    warn!(path = %path.display(), offset = off, "spooled segment ends with a bad record: cut");
                    f.set_len(off as u64)
                        .with_context(|| format!("cut {}", path.display()))?;
                    f.sync()
                        .with_context(|| format!("sync {}", path.display()))?;
                    break;
                }
            }
        }
        let (Some(&(first, _, _)), Some(&(last, _, _))) = (recs.first(), recs.last()) else {
            let _ = fs.remove(&path);
            continue;
        };
        let at = located(&Arc::from(f), recs)
            .into_iter()
            .zip(stamps)
            .map(|((ds, od), ts)| (ds, ts, od))
            .collect();
        let seg = Segment {
            first,
            last,
            bytes: off as u64,
            path,
        };
        match out.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, v)) => v.push((seg, at)),
            None => out.push((dev, vec![(seg, at)])),
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::files::tests::{fresh_dir, Faulty};
    use crate::files::{Fault, Op, Os};
    use ferry_core::record::{RecordHeader, RecordKind};

    /// A 4 KiB write record of device 1 with `dev_seq` `ds` (also used by
    /// the remote log's tests).
    pub(crate) fn rec(key: &GroupKey, gid: u64, ds: u64) -> Arc<[u8]> {
        let mut h = RecordHeader::new(RecordKind::Write);
        h.group_id = gid;
        h.device_id = 1;
        h.dev_seq = ds;
        h.group_seq = ds;
        h.epoch = 1;
        h.payload_len = 4096;
        h.nr_sectors = 8;
        h.sector = ds * 8;
        h.timestamp_ns = ds * 1000;
        let payload = vec![ds as u8; 4096];
        let mut out = vec![0u8; h.record_len()];
        record::encode_record(&h, &payload, key, &FastDigest, &mut out).unwrap();
        out.into()
    }

    #[test]
    fn segments_survive_a_restart_and_a_torn_tail_is_cut() {
        let dir = std::env::temp_dir().join(format!("ferry-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gid = record::group_id_of_name(&FastDigest, b"g");
        let key = GroupKey::derive(&FastDigest, gid, &[]).unwrap();
        let recs: Vec<_> = (5..9).map(|ds| (ds, rec(&key, gid, ds))).collect();
        let (seg, at) = write_segment(&Os, &dir, 1, &recs).unwrap();
        assert_eq!((seg.first, seg.last, at.len()), (5, 8, 4));
        assert_eq!(at[2].1.read().unwrap(), &*recs[2].1);
        let recs2: Vec<_> = (9..11).map(|ds| (ds, rec(&key, gid, ds))).collect();
        let (seg2, _) = write_segment(&Os, &dir, 1, &recs2).unwrap();
        // A torn last record of the second segment.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg2.path)
            .unwrap();
        f.set_len(seg2.bytes - 100).unwrap();
        let found = load(&Os, &dir, &key).unwrap();
        assert_eq!(found.len(), 1);
        let (dev, segs) = &found[0];
        assert_eq!(*dev, 1);
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[0].0.first, segs[0].0.last), (5, 8));
        assert_eq!((segs[1].0.first, segs[1].0.last), (9, 9));
        assert_eq!(segs[1].1[0].2.read().unwrap(), &*recs2[0].1);
        // With the kernel's timestamp of each record.
        assert_eq!((segs[1].1[0].0, segs[1].1[0].1), (9, 9000));
        remove(&Os, &segs[0].0).unwrap();
        remove(&Os, &segs[1].0).unwrap();
        assert!(load(&Os, &dir, &key).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spool_is_private() {
        use crate::files::tests::{fresh_dir, mode_of, usual_umask};
        usual_umask();
        let top = fresh_dir("spool-mode");
        let dir = top.join("g/spool");
        let gid = record::group_id_of_name(&FastDigest, b"g");
        let key = GroupKey::derive(&FastDigest, gid, &[]).unwrap();
        assert!(load(&Os, &dir, &key).unwrap().is_empty());
        assert_eq!(mode_of(&top.join("g")), 0o700);
        assert_eq!(mode_of(&dir), 0o700);
        let (seg, _) = write_segment(&Os, &dir, 1, &[(5, rec(&key, gid, 5))]).unwrap();
        assert_eq!(mode_of(&seg.path), 0o600);
        std::fs::remove_dir_all(&top).unwrap();
    }

    fn gkey() -> (GroupKey, u64) {
        let gid = record::group_id_of_name(&FastDigest, b"g");
        (GroupKey::derive(&FastDigest, gid, &[]).unwrap(), gid)
    }

    /// The segments' files in `dir`.
    fn segments_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = Os.list(dir).unwrap();
        v.sort();
        v
    }

    /// A segment that cannot be written whole (no room for the file, a
    /// full disk in the middle of it, a torn or short write, a failed
    /// fsync of the file or of the directory) leaves nothing: no file,
    /// the error says whether it was for lack of space, and the same
    /// records are spooled once the fault is gone.
    #[test]
    fn a_segment_not_written_whole_leaves_nothing() {
        let dir = fresh_dir("spool-faults");
        files::create_dir(&dir).unwrap();
        let (key, gid) = gkey();
        let recs: Vec<_> = (5..9).map(|ds| (ds, rec(&key, gid, ds))).collect();
        let len = recs[0].1.len();
        let fs = Faulty::default();
        for (op, fault, full) in [
            (Op::Open, Fault::Errno(libc::ENOSPC), true),
            (Op::Write, Fault::Errno(libc::ENOSPC), true),
            (Op::Write, Fault::Torn(len + 10, libc::ENOSPC), true),
            (Op::Write, Fault::Torn(len + 10, libc::EDQUOT), true),
            (Op::Write, Fault::Torn(100, libc::EIO), false),
            (Op::Write, Fault::Short(0), false),
            (Op::Sync, Fault::Errno(libc::EIO), false),
            (Op::Sync, Fault::Errno(libc::ENOSPC), true),
            (Op::SyncDir, Fault::Errno(libc::EIO), false),
        ] {
            fs.inject(op, "spool-faults", fault, Some(1));
            let e = write_segment(&fs, &dir, 1, &recs).unwrap_err();
            assert_eq!(files::out_of_space(&e), full, "{op:?} {fault:?}: {e:#}");
            assert!(segments_in(&dir).is_empty(), "{op:?} {fault:?}");
        }
        // A short write followed by the rest is a whole segment.
        fs.inject(Op::Write, "spool-faults", Fault::Short(100), Some(1));
        let (seg, at) = write_segment(&fs, &dir, 1, &recs).unwrap();
        assert_eq!(at[3].1.read().unwrap(), &*recs[3].1);
        assert_eq!(load(&Os, &dir, &key).unwrap()[0].1[0].1.len(), 4);
        remove(&Os, &seg).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A segment that cannot be read (EIO) says so, and the records are
    /// still there to be read once it can; one that cannot be removed
    /// says so and is found again at the next start.
    #[test]
    fn reading_and_removing_a_segment_fail_loudly() {
        let dir = fresh_dir("spool-rd");
        files::create_dir(&dir).unwrap();
        let (key, gid) = gkey();
        let recs: Vec<_> = (1..4).map(|ds| (ds, rec(&key, gid, ds))).collect();
        let fs = Faulty::default();
        let (seg, at) = write_segment(&fs, &dir, 1, &recs).unwrap();
        fs.inject(Op::Read, "spool-rd", Fault::Errno(libc::EIO), Some(1));
        assert!(at[1].1.read().is_err());
        assert_eq!(at[1].1.read().unwrap(), &*recs[1].1);
        fs.inject(Op::Remove, "spool-rd", Fault::Errno(libc::EIO), Some(1));
        assert!(remove(&fs, &seg).is_err());
        let found = load(&fs, &dir, &key).unwrap();
        assert_eq!((found[0].1[0].0.first, found[0].1[0].0.last), (1, 3));
        // Reading it back at start fails: the start fails, saying why.
        fs.inject(Op::Read, "spool-rd", Fault::Errno(libc::EIO), Some(1));
        assert!(load(&fs, &dir, &key).is_err());
        remove(&fs, &seg).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A torn last spooling step (a crash, or a full disk before the file
    /// could be removed) is cut at start; a cut that fails stops the
    /// start, nothing being shipped from a segment that is not whole.
    #[test]
    fn a_torn_segment_is_cut_at_start() {
        let dir = fresh_dir("spool-torn");
        files::create_dir(&dir).unwrap();
        let (key, gid) = gkey();
        let recs: Vec<_> = (1..4).map(|ds| (ds, rec(&key, gid, ds))).collect();
        let len = recs[0].1.len();
        // What a crash in the middle of a torn write leaves: two records
        // and a part of the third.
        let fs = Faulty::default();
        fs.inject_after(
            Op::Write,
            "spool-torn",
            2,
            Fault::Torn(50, libc::ENOSPC),
            Some(1),
        );
        fs.inject(Op::Remove, "spool-torn", Fault::Errno(libc::EIO), Some(1));
        assert!(write_segment(&fs, &dir, 1, &recs).is_err());
        assert_eq!(segments_in(&dir).len(), 1);
        fs.inject(Op::SetLen, "spool-torn", Fault::Errno(libc::EIO), Some(1));
        assert!(load(&fs, &dir, &key).is_err());
        let found = load(&fs, &dir, &key).unwrap();
        let (seg, at) = &found[0].1[0];
        assert_eq!((seg.first, seg.last, seg.bytes), (1, 2, 2 * len as u64));
        assert_eq!(at[1].2.read().unwrap(), &*recs[1].1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The disk spool's faults through the failpoints of the real file
    /// system (`--features failpoints`).
    #[cfg(feature = "failpoints")]
    #[test]
    fn failpoints_of_the_disk_spool() {
        let scenario = fail::FailScenario::setup();
        let dir = fresh_dir("spool-fp");
        files::create_dir(&dir).unwrap();
        let tag = dir.file_name().unwrap().to_string_lossy().into_owned();
        let (key, gid) = gkey();
        let recs: Vec<_> = (1..4).map(|ds| (ds, rec(&key, gid, ds))).collect();
        let len = recs[0].1.len();
        fail::cfg(
            "files::write",
            &format!("return(torn:{}:ENOSPC@{tag})", len + 7),
        )
        .unwrap();
        let e = write_segment(&Os, &dir, 1, &recs).unwrap_err();
        assert!(files::out_of_space(&e), "{e:#}");
        assert!(segments_in(&dir).is_empty());
        fail::remove("files::write");
        fail::cfg("files::sync_dir", &format!("1*return(EIO@{tag})")).unwrap();
        let e = write_segment(&Os, &dir, 1, &recs).unwrap_err();
        assert!(!files::out_of_space(&e), "{e:#}");
        assert!(segments_in(&dir).is_empty());
        let (seg, at) = write_segment(&Os, &dir, 1, &recs).unwrap();
        fail::cfg("files::read", &format!("1*return(EIO@{tag})")).unwrap();
        assert!(at[0].1.read().is_err());
        assert_eq!(at[0].1.read().unwrap(), &*recs[0].1);
        fail::cfg("files::remove", &format!("1*return(EIO@{tag})")).unwrap();
        assert!(remove(&Os, &seg).is_err());
        assert_eq!(segments_in(&dir).len(), 1);
        remove(&Os, &seg).unwrap();
        scenario.teardown();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
