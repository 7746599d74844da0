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
#[path = "remote_log_tests.rs"]
mod tests;
