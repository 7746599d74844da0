//! The files `ferryd` keeps on disk, and the one way it reaches them.
//!
//! * **Private.**  The files and directories `ferryd` creates (the remote
//!   log, the disk spool, `state.json`) hold replicated data: they are
//!   private to `ferryd`'s user from their creation, files 0600 in
//!   directories 0700, whatever the process's umask.  What exists already
//!   is left as it is.
//! * **One I/O boundary.**  Every file operation of the remote log, the
//!   disk spool and `state.json` goes through [`FileSystem`] (the
//!   directory: open, remove, rename, sync, list) and [`FileIo`] (an open
//!   file: append, sync, truncate, read), so that a test can put a faulty
//!   one in their place ([`tests::Faulty`]).  The real ones, [`Os`], carry
//!   failpoints (`fail::fail_point!`, compiled in with the cargo feature
//!   `failpoints`): `files::<op>` for each [`Op`], whose `return(..)`
//!   action names a [`Fault`] (`ENOSPC`, `EIO`, `short:100`,
//!   `torn:100:EIO`) and, after an `@`, a part of the paths it hits.
//! * **Full is not broken.**  [`no_space`] tells a full file system
//!   (`ENOSPC`, `EDQUOT`) from the other failures: what ran out of space
//!   waits for room and goes on by itself, where damage stops.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Mode of the files `ferryd` creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of the directories `ferryd` creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents, each [`DIR_MODE`].
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))
}

/// Open options whose `create` makes a [`FILE_MODE`] file.
pub(crate) fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Whether `e` says the file system is full (`ENOSPC`, or the user's
/// quota: `EDQUOT`): a condition that passes, not damage.
pub(crate) fn no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

/// [`no_space`] for an error with context: whether any of its causes is
/// one.
pub(crate) fn out_of_space(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<io::Error>().is_some_and(no_space))
}

/// The operations `ferryd` needs of an open file.
pub(crate) trait FileIo: Send + Sync {
    /// The file's length.
    fn size(&self) -> io::Result<u64>;
    /// Writes from `buf` at the end of the file; may write less than all.
    fn append(&mut self, buf: &[u8]) -> io::Result<usize>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// fsync (the data and the length).  A failure is final for the
    /// descriptor: a later fsync of it proves nothing ([`FileIo::reopen`]).
    fn sync(&mut self) -> io::Result<()>;
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// A new descriptor of the same file.
    fn reopen(&self) -> io::Result<Box<dyn FileIo>>;
    /// Releases the space of `[0, upto)`, the length kept (best effort).
    fn punch(&self, upto: u64);
}

/// How [`FileSystem::open`] opens a file: always to read and append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Open {
    /// As it is, created ([`FILE_MODE`]) if missing.
    Append,
    /// Created or emptied.
    Truncate,
    /// Created; an error if it exists.
    New,
    /// As it is; an error if missing.
    Existing,
}

/// The operations `ferryd` needs of its directories.
pub(crate) trait FileSystem: Send + Sync {
    fn open(&self, path: &Path, how: Open) -> io::Result<Box<dyn FileIo>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// fsync of the directory: the names in it made, renamed or removed
    /// are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The bytes available to `ferryd` in the file system of `dir`
    /// (`statvfs`: `f_bavail * f_frsize`).
    fn available(&self, dir: &Path) -> io::Result<u64>;
}

/// Reads the whole of `f` from `off`, retrying short reads.
pub(crate) fn read_exact_at(f: &dyn FileIo, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
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

/// Appends the whole of `buf`, retrying short writes; a write of nothing
/// is an error (`WriteZero`).
pub(crate) fn append_all(f: &mut dyn FileIo, mut buf: &[u8]) -> io::Result<()> {
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

/// Replaces `dir/name` by `bytes` whole: a new file (`name.tmp`, made
/// again if a crash left one), synced, renamed over the old one, and the
/// directory synced.  On any failure the old file is what a reader finds
/// (the rename is the only step that changes it, and it is atomic).
pub(crate) fn replace(fs: &dyn FileSystem, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    match fs.remove(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove {}", tmp.display()))
        }
        _ => {}
    }
    let written = (|| {
        let mut f = fs.open(&tmp, Open::New).context("create")?;
        append_all(&mut *f, bytes).context("write")?;
        f.sync().context("fsync")
    })();
    if let Err(e) = written {
        // (A full disk, say: what is left of it goes, the old file stays.)
        let _ = fs.remove(&tmp);
        return Err(e).with_context(|| format!("write {}", tmp.display()));
    }
    let to = dir.join(name);
    fs.rename(&tmp, &to)
        .with_context(|| format!("rename {} to {}", tmp.display(), to.display()))?;
    fs.sync_dir(dir)
        .with_context(|| format!("sync {}", dir.display()))
}

/// A file operation, as [`Fault`]s and failpoints name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Open,
    Write,
    Sync,
    SetLen,
    Read,
    Remove,
    Rename,
    SyncDir,
    List,
    Statvfs,
}

impl Op {
    /// The name of its failpoint.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub(crate) fn point(self) -> &'static str {
        match self {
            Op::Open => "files::open",
            Op::Write => "files::write",
            Op::Sync => "files::sync",
            Op::SetLen => "files::set_len",
            Op::Read => "files::read",
            Op::Remove => "files::remove",
            Op::Rename => "files::rename",
            Op::SyncDir => "files::sync_dir",
            Op::List => "files::list",
            Op::Statvfs => "files::statvfs",
        }
    }
}

/// A failure to inject into a file operation (by a test's [`FileSystem`],
/// or a failpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The operation fails with this errno, having done nothing.
    Errno(i32),
    /// A write writes only the first this many bytes, and says so (a
    /// short write); other operations fail with `EIO`.
    Short(usize),
    /// A write writes the first this many bytes, then fails with this
    /// errno (a torn write: part of it is in the file).
    Torn(usize, i32),
}

impl Fault {
    /// Parses a failpoint's argument: `ENOSPC`, `EDQUOT`, `EIO`,
    /// `short:<bytes>`, `torn:<bytes>:<errno name>`, each optionally
    /// followed by `@<part>`, when it only hits paths holding `part`.
    /// `None` when it does not hit `path` (or does not parse).
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub(crate) fn parse(spec: &str, path: &Path) -> Option<Fault> {
        let (what, part) = match spec.split_once('@') {
            Some((w, p)) => (w, Some(p)),
            None => (spec, None),
        };
        if part.is_some_and(|p| !path.to_string_lossy().contains(p)) {
            return None;
        }
        let errno = |n: &str| match n {
            "ENOSPC" => Some(libc::ENOSPC),
            "EDQUOT" => Some(libc::EDQUOT),
            "EIO" => Some(libc::EIO),
            _ => None,
        };
        let mut f = what.split(':');
        match (f.next()?, f.next(), f.next()) {
            ("short", Some(n), None) => Some(Fault::Short(n.parse().ok()?)),
            ("torn", Some(n), Some(e)) => Some(Fault::Torn(n.parse().ok()?, errno(e)?)),
            (e, None, None) => Some(Fault::Errno(errno(e)?)),
            _ => None,
        }
    }

    /// The error the faulty operation returns (a short "write" of another
    /// operation: `EIO`).
    pub(crate) fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            Fault::Errno(e) | Fault::Torn(_, e) => e,
            Fault::Short(_) => libc::EIO,
        })
    }

    /// A write of `buf` through `write` with this fault.
    pub(crate) fn write(
        self,
        buf: &[u8],
        write: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        match self {
            Fault::Errno(e) => Err(io::Error::from_raw_os_error(e)),
            Fault::Short(n) => write(&buf[..n.min(buf.len())]),
            Fault::Torn(n, e) => {
                // (What a torn write wrote stays in the file.)
                let part = &buf[..n.min(buf.len())];
                if !part.is_empty() {
                    write(part)?;
                }
                Err(io::Error::from_raw_os_error(e))
            }
        }
    }
}

/// The failpoint of `op` on `path`: the fault its `return(..)` action
/// names, if it hits `path`.
#[cfg(feature = "failpoints")]
fn injected(op: Op, path: &Path) -> Option<Fault> {
    fail::fail_point!(op.point(), |arg: Option<String>| arg
        .and_then(|a| Fault::parse(&a, path)));
    None
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn injected(_: Op, _: &Path) -> Option<Fault> {
    None
}

/// Fails with the failpoint's error when it is set for `op` on `path`.
fn check(op: Op, path: &Path) -> io::Result<()> {
    match injected(op, path) {
        Some(f) => Err(f.error()),
        None => Ok(()),
    }
}

/// The real file system.
pub(crate) struct Os;

/// An open file of [`Os`].
pub(crate) struct OsFile {
    file: File,
    path: PathBuf,
}

fn os_open(path: &Path, how: Open) -> io::Result<File> {
    check(Op::Open, path)?;
    let mut o = options();
    o.read(true).append(true);
    match how {
        Open::Append => o.create(true),
        // (`truncate` is not allowed with `append`: done after.)
        Open::Truncate => o.create(true),
        Open::New => o.create_new(true),
        Open::Existing => &mut o,
    };
    let f = o.open(path)?;
    if how == Open::Truncate {
        f.set_len(0)?;
    }
    Ok(f)
}

impl FileSystem for Os {
    fn open(&self, path: &Path, how: Open) -> io::Result<Box<dyn FileIo>> {
        Ok(Box::new(OsFile {
            file: os_open(path, how)?,
            path: path.to_owned(),
        }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        check(Op::Remove, path)?;
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        check(Op::Rename, to)?;
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        check(Op::SyncDir, dir)?;
        File::open(dir)?.sync_all()
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        check(Op::List, dir)?;
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }
    fn available(&self, dir: &Path) -> io::Result<u64> {
        check(Op::Statvfs, dir)?;
        let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
        // (Narrower than u64 on 32-bit targets.)
        #[allow(clippy::useless_conversion)]
        let (blocks, size) = (
            u64::from(st.blocks_available()),
            u64::from(st.fragment_size()),
        );
        Ok(blocks.saturating_mul(size))
    }
}

impl FileIo for OsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn append(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(f) = injected(Op::Write, &self.path) {
            return f.write(buf, |b| io::Write::write(&mut self.file, b));
        }
        io::Write::write(&mut self.file, buf)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        check(Op::SetLen, &self.path)?;
        self.file.set_len(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        check(Op::Sync, &self.path)?;
        self.file.sync_data()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        check(Op::Read, &self.path)?;
        self.file.read_at(buf, off)
    }
    fn reopen(&self) -> io::Result<Box<dyn FileIo>> {
        Ok(Box::new(OsFile {
            file: os_open(&self.path, Open::Existing)?,
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

#[cfg(test)]
#[path = "files_tests.rs"]
pub(crate) mod tests;
