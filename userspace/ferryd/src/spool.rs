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

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferry_core::record::{self, GroupKey};
use ferry_core::FastDigest;
use tracing::warn;

use crate::files;

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) bytes: u64,
    pub(crate) path: PathBuf,
}

/// Where one record of a segment is.
#[derive(Clone, Debug)]
pub(crate) struct OnDisk {
    pub(crate) file: Arc<File>,
    pub(crate) off: u64,
    pub(crate) len: u32,
}

impl OnDisk {
    /// The record's bytes.
    pub(crate) fn read(&self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.len as usize];
        self.file
            .read_exact_at(&mut b, self.off)
            .context("read the disk spool")?;
        Ok(b)
    }
}

/// Where records `(dev_seq, offset, length)` of a segment's file are.
fn located(file: &Arc<File>, at: Vec<(u64, u64, u32)>) -> Vec<(u64, OnDisk)> {
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

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))
}

/// Writes records `(dev_seq, bytes)` of `device` (in stream order) as a
/// durable segment; returns it and where each record is.
pub(crate) fn write_segment(
    dir: &Path,
    device: u32,
    recs: &[(u64, Arc<[u8]>)],
) -> Result<(Segment, Vec<(u64, OnDisk)>)> {
    let (Some(first), Some(last)) = (recs.first(), recs.last()) else {
        anyhow::bail!("an empty segment");
    };
    let (first, last) = (first.0, last.0);
    let path = dir.join(format!("stream-{device}-{first:020}.seg"));
    let r = write_records(&path, recs);
    if r.is_err() {
        // (A full disk, say: the records stay in the kernel's spool.)
        let _ = fs::remove_file(&path);
    }
    let (f, at, off) = r?;
    sync_dir(dir)?;
    let at = located(&Arc::new(f), at);
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
    path: &Path,
    recs: &[(u64, Arc<[u8]>)],
) -> Result<(File, Vec<(u64, u64, u32)>, u64)> {
    let mut f = files::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let mut off = 0u64;
    let mut at = Vec::with_capacity(recs.len());
    for (ds, b) in recs {
        f.write_all(b)
            .with_context(|| format!("write {}", path.display()))?;
        at.push((*ds, off, b.len() as u32));
        off += b.len() as u64;
    }
    f.sync_all()
        .with_context(|| format!("sync {}", path.display()))?;
    Ok((f, at, off))
}

/// Removes a segment whose records are all acknowledged.
pub(crate) fn remove(seg: &Segment) {
    if let Err(e) = fs::remove_file(&seg.path) {
        warn!(path = %seg.path.display(), "cannot remove a spooled segment: {e}");
    }
}

/// A device's segments found at start, oldest first, with their records
/// (`dev_seq`, `timestamp_ns`, where).
pub(crate) type Found = Vec<(Segment, Vec<(u64, u64, OnDisk)>)>;

/// Reads back every segment of `dir` (created if missing, 0700), by device.
/// Records are verified whole; a segment ends at its first bad record (cut
/// there: a torn write of the last spooling step), and an empty one is
/// removed.
pub(crate) fn load(dir: &Path, key: &GroupKey) -> Result<Vec<(u32, Found)>> {
    files::create_dir(dir)?;
    let mut names = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
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
        names.push((dev, first, e.path()));
    }
    names.sort();
    let mut out: Vec<(u32, Found)> = Vec::new();
    for (dev, _, path) in names {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let buf = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
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
                    f.set_len(off as u64)?;
                    f.sync_all()?;
                    break;
                }
            }
        }
        let (Some(&(first, _, _)), Some(&(last, _, _))) = (recs.first(), recs.last()) else {
            let _ = fs::remove_file(&path);
            continue;
        };
        let at = located(&Arc::new(f), recs)
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
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let gid = record::group_id_of_name(&FastDigest, b"g");
        let key = GroupKey::derive(&FastDigest, gid, &[]).unwrap();
        let recs: Vec<_> = (5..9).map(|ds| (ds, rec(&key, gid, ds))).collect();
        let (seg, at) = write_segment(&dir, 1, &recs).unwrap();
        assert_eq!((seg.first, seg.last, at.len()), (5, 8, 4));
        assert_eq!(at[2].1.read().unwrap(), &*recs[2].1);
        let recs2: Vec<_> = (9..11).map(|ds| (ds, rec(&key, gid, ds))).collect();
        let (seg2, _) = write_segment(&dir, 1, &recs2).unwrap();
        // A torn last record of the second segment.
        let f = fs::OpenOptions::new().write(true).open(&seg2.path).unwrap();
        f.set_len(seg2.bytes - 100).unwrap();
        let found = load(&dir, &key).unwrap();
        assert_eq!(found.len(), 1);
        let (dev, segs) = &found[0];
        assert_eq!(*dev, 1);
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[0].0.first, segs[0].0.last), (5, 8));
        assert_eq!((segs[1].0.first, segs[1].0.last), (9, 9));
        assert_eq!(segs[1].1[0].2.read().unwrap(), &*recs2[0].1);
        // With the kernel's timestamp of each record.
        assert_eq!((segs[1].1[0].0, segs[1].1[0].1), (9, 9000));
        remove(&segs[0].0);
        remove(&segs[1].0);
        assert!(load(&dir, &key).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spool_is_private() {
        use crate::files::tests::{fresh_dir, mode_of, usual_umask};
        usual_umask();
        let top = fresh_dir("spool-mode");
        let dir = top.join("g/spool");
        let gid = record::group_id_of_name(&FastDigest, b"g");
        let key = GroupKey::derive(&FastDigest, gid, &[]).unwrap();
        assert!(load(&dir, &key).unwrap().is_empty());
        assert_eq!(mode_of(&top.join("g")), 0o700);
        assert_eq!(mode_of(&dir), 0o700);
        let (seg, _) = write_segment(&dir, 1, &[(5, rec(&key, gid, 5))]).unwrap();
        assert_eq!(mode_of(&seg.path), 0o600);
        fs::remove_dir_all(&top).unwrap();
    }
}
