//! Tests of [`super`] (files.rs).

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

/// Sets the usual umask (022), under which files are created 0644 and
/// directories 0755 unless asked otherwise.  (The umask is the
/// process's; every test that sets it sets this one.)
pub(crate) fn usual_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
}

/// A new, empty directory for test `name` under the temporary directory.
pub(crate) fn fresh_dir(name: &str) -> std::path::PathBuf {
    let top = std::env::temp_dir().join(format!("ferry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&top);
    top
}

/// The permission bits of `p`.
pub(crate) fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A fault a [`Faulty`] injects: into `op` on paths holding `part`,
/// `times` times (`None`: until cleared).
#[derive(Clone, Debug)]
struct Rule {
    op: Op,
    part: String,
    /// Operations let through before the first fault.
    skip: u32,
    fault: Fault,
    times: Option<u32>,
}

#[derive(Default)]
struct Rules {
    rules: Vec<Rule>,
    /// Operations that failed, by op.
    hit: Vec<Op>,
    /// fsyncs of a descriptor whose fsync failed before (Linux says
    /// they succeed: the error was reported once).
    blind_syncs: u32,
    /// The bytes `available` says (`None`: the file system's).
    available: Option<u64>,
}

/// The real file system with faults injected as a test says: the
/// [`FileSystem`] a test puts in the place of [`Os`].
#[derive(Clone, Default)]
pub(crate) struct Faulty {
    rules: Arc<Mutex<Rules>>,
}

impl Faulty {
    /// From now on, `op` on paths holding `part` fails with `fault`,
    /// `times` times (`None`: until [`Faulty::clear`]).
    pub(crate) fn inject(&self, op: Op, part: &str, fault: Fault, times: Option<u32>) {
        self.inject_after(op, part, 0, fault, times);
    }

    /// As [`Faulty::inject`], once `skip` such operations went
    /// through.
    pub(crate) fn inject_after(
        &self,
        op: Op,
        part: &str,
        skip: u32,
        fault: Fault,
        times: Option<u32>,
    ) {
        self.rules.lock().unwrap().rules.push(Rule {
            op,
            part: part.into(),
            skip,
            fault,
            times,
        });
    }

    /// From now on, `available` says `bytes` (`None`: what the file
    /// system says).
    pub(crate) fn set_available(&self, bytes: Option<u64>) {
        self.rules.lock().unwrap().available = bytes;
    }

    /// No more faults (space came back).
    pub(crate) fn clear(&self) {
        self.rules.lock().unwrap().rules.clear();
    }

    /// How many operations `op` failed.
    pub(crate) fn hits(&self, op: Op) -> usize {
        self.rules
            .lock()
            .unwrap()
            .hit
            .iter()
            .filter(|&&o| o == op)
            .count()
    }

    pub(crate) fn blind_syncs(&self) -> u32 {
        self.rules.lock().unwrap().blind_syncs
    }

    fn take(&self, op: Op, path: &Path) -> Option<Fault> {
        let mut r = self.rules.lock().unwrap();
        let p = path.to_string_lossy();
        let i = r
            .rules
            .iter()
            .position(|x| x.op == op && p.contains(&x.part))?;
        if r.rules[i].skip > 0 {
            r.rules[i].skip -= 1;
            return None;
        }
        let fault = r.rules[i].fault;
        match &mut r.rules[i].times {
            Some(1) => {
                r.rules.remove(i);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        r.hit.push(op);
        Some(fault)
    }

    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        match self.take(op, path) {
            Some(f) => Err(f.error()),
            None => Ok(()),
        }
    }

    fn wrap(&self, inner: Box<dyn FileIo>, path: &Path) -> Box<dyn FileIo> {
        Box::new(FaultyFile {
            fs: self.clone(),
            inner,
            path: path.to_owned(),
            sync_failed: false,
        })
    }
}

struct FaultyFile {
    fs: Faulty,
    inner: Box<dyn FileIo>,
    path: PathBuf,
    sync_failed: bool,
}

impl FileSystem for Faulty {
    fn open(&self, path: &Path, how: Open) -> io::Result<Box<dyn FileIo>> {
        self.check(Op::Open, path)?;
        Ok(self.wrap(Os.open(path, how)?, path))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove, path)?;
        Os.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, to)?;
        Os.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::SyncDir, dir)?;
        Os.sync_dir(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.check(Op::List, dir)?;
        Os.list(dir)
    }
    fn available(&self, dir: &Path) -> io::Result<u64> {
        self.check(Op::Statvfs, dir)?;
        let set = self.rules.lock().unwrap().available;
        match set {
            Some(b) => Ok(b),
            None => Os.available(dir),
        }
    }
}

impl FileIo for FaultyFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn append(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.fs.take(Op::Write, &self.path) {
            Some(f) => f.write(buf, |b| self.inner.append(b)),
            None => self.inner.append(buf),
        }
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.fs.check(Op::SetLen, &self.path)?;
        self.inner.set_len(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.sync_failed {
            self.fs.rules.lock().unwrap().blind_syncs += 1;
            return Ok(());
        }
        if let Err(e) = self.fs.check(Op::Sync, &self.path) {
            self.sync_failed = true;
            return Err(e);
        }
        self.inner.sync()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.fs.check(Op::Read, &self.path)?;
        self.inner.read_at(buf, off)
    }
    fn reopen(&self) -> io::Result<Box<dyn FileIo>> {
        self.fs.check(Op::Open, &self.path)?;
        Ok(self.fs.wrap(self.inner.reopen()?, &self.path))
    }
    fn punch(&self, upto: u64) {
        self.inner.punch(upto)
    }
}

#[test]
fn created_private() {
    usual_umask();
    let top = fresh_dir("files-test");
    let dir = top.join("a/b");
    create_dir(&dir).unwrap();
    assert_eq!(mode_of(&top), DIR_MODE);
    assert_eq!(mode_of(&top.join("a")), DIR_MODE);
    assert_eq!(mode_of(&dir), DIR_MODE);
    create_dir(&dir).unwrap();
    let f = dir.join("f");
    options().write(true).create(true).open(&f).unwrap();
    assert_eq!(mode_of(&f), FILE_MODE);
    Os.open(&dir.join("g"), Open::Truncate).unwrap();
    assert_eq!(mode_of(&dir.join("g")), FILE_MODE);
    std::fs::remove_dir_all(&top).unwrap();
}

#[test]
fn faults_parse() {
    let p = Path::new("/var/lib/ferry/g/spool/stream-1-5.seg");
    assert_eq!(Fault::parse("ENOSPC", p), Some(Fault::Errno(libc::ENOSPC)));
    assert_eq!(Fault::parse("EIO@spool", p), Some(Fault::Errno(libc::EIO)));
    assert_eq!(Fault::parse("EIO@state.json", p), None);
    assert_eq!(Fault::parse("short:100", p), Some(Fault::Short(100)));
    assert_eq!(
        Fault::parse("torn:7:EDQUOT", p),
        Some(Fault::Torn(7, libc::EDQUOT))
    );
    assert_eq!(Fault::parse("nonsense", p), None);
    assert!(no_space(&Fault::Errno(libc::ENOSPC).error()));
    assert!(no_space(&Fault::Torn(1, libc::EDQUOT).error()));
    assert!(!no_space(&Fault::Errno(libc::EIO).error()));
    let e = anyhow::Error::from(Fault::Errno(libc::ENOSPC).error()).context("write x");
    assert!(out_of_space(&e.context("append")));
    assert!(!out_of_space(&anyhow::anyhow!("no space")));
}

/// `state.json`'s way of being written: whatever fails (no room for
/// the new file, a short or torn write of it, its fsync, the rename),
/// the old file is what is read, and no temporary file is left but
/// after a failed rename (made again by the next save).
#[test]
fn a_replaced_file_is_old_or_new_whole() {
    let dir = fresh_dir("files-replace");
    create_dir(&dir).unwrap();
    let fs = Faulty::default();
    replace(&fs, &dir, "state.json", b"old").unwrap();
    let new = vec![b'n'; 10_000];
    for (op, fault) in [
        (Op::Open, Fault::Errno(libc::ENOSPC)),
        (Op::Write, Fault::Errno(libc::ENOSPC)),
        (Op::Write, Fault::Torn(4096, libc::ENOSPC)),
        (Op::Write, Fault::Torn(100, libc::EIO)),
        (Op::Sync, Fault::Errno(libc::EIO)),
        (Op::Rename, Fault::Errno(libc::EIO)),
    ] {
        fs.inject(op, "state.json", fault, Some(1));
        let e = replace(&fs, &dir, "state.json", &new).unwrap_err();
        assert_eq!(
            out_of_space(&e),
            matches!(
                fault,
                Fault::Errno(libc::ENOSPC) | Fault::Torn(_, libc::ENOSPC)
            ),
            "{op:?} {fault:?}: {e:#}"
        );
        assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), b"old");
        assert_eq!(
            dir.join("state.json.tmp").exists(),
            op == Op::Rename,
            "{op:?} {fault:?}"
        );
    }
    // A short write is carried on; a short write and then nothing
    // fails.
    fs.inject(Op::Write, "state.json", Fault::Short(10), Some(1));
    replace(&fs, &dir, "state.json", &new).unwrap();
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), new);
    fs.inject(Op::Write, "state.json", Fault::Short(10), Some(1));
    fs.inject(Op::Write, "state.json", Fault::Short(0), Some(1));
    assert!(replace(&fs, &dir, "state.json", &[b'x'; 100]).is_err());
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), new);
    assert!(!dir.join("state.json.tmp").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `state.json`'s faults through the failpoints of the real file
/// system (`--features failpoints`).
#[cfg(feature = "failpoints")]
#[test]
fn failpoints_of_state_json() {
    let scenario = fail::FailScenario::setup();
    let dir = fresh_dir("files-fp");
    create_dir(&dir).unwrap();
    replace(&Os, &dir, "state.json", b"old").unwrap();
    let tag = format!("{}/state.json", dir.file_name().unwrap().to_string_lossy());
    for (point, action, full) in [
        ("files::write", "torn:2:ENOSPC", true),
        ("files::write", "EIO", false),
        ("files::open", "EDQUOT", true),
        ("files::sync", "EIO", false),
        ("files::rename", "EIO", false),
    ] {
        fail::cfg(point, &format!("1*return({action}@{tag})")).unwrap();
        let e = replace(&Os, &dir, "state.json", b"new").unwrap_err();
        assert_eq!(out_of_space(&e), full, "{point} {action}: {e:#}");
        assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), b"old");
        fail::remove(point);
    }
    replace(&Os, &dir, "state.json", b"new").unwrap();
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), b"new");
    scenario.teardown();
    std::fs::remove_dir_all(&dir).unwrap();
}
