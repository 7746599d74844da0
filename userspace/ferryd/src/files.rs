//! The files and directories `ferryd` creates (the remote log, the disk
//! spool, `state.json`) hold replicated data: they are private to
//! `ferryd`'s user from their creation, files 0600 in directories 0700,
//! whatever the process's umask.  What exists already is left as it is.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
        std::fs::remove_dir_all(&top).unwrap();
    }
}
