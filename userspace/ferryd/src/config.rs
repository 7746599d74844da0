//! `/etc/ferry/<group>.toml`.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Which end of the link this site is.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the kernel's records and ships them.
    #[default]
    Primary,
    /// Stores, acknowledges and applies them.
    Secondary,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        })
    }
}

/// Compression of record batches on the link.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compress {
    /// None.
    None,
    /// LZ4 block format (the default).
    #[default]
    Lz4,
}

/// How a primary leaves `ahead` (`resync = "auto"` or `"manual"`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resync {
    /// `ferryd` starts a resync once every stream of the group is
    /// connected (the default).
    #[default]
    Auto,
    /// Only `ferryctl resync <group>` starts one.
    Manual,
}

impl std::fmt::Display for Resync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resync::Auto => "auto",
            Resync::Manual => "manual",
        })
    }
}

/// What a primary does when its secondary holds nothing of the group
/// (`initial_sync = "full"` or `"none"`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialSync {
    /// A new secondary gets a full copy of the primary's devices (a
    /// `START` with `FULL_RESYNC`): the default.
    #[default]
    Full,
    /// Both sites are known to hold the same (both zeroed, or copied by
    /// other means): no copy, as mdadm's `--assume-clean`.
    None,
}

impl std::fmt::Display for InitialSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InitialSync::Full => "full",
            InitialSync::None => "none",
        })
    }
}

/// The configuration of one group on one site.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The group's name (as in the dmsetup tables).
    pub group: String,
    /// This site's role.
    pub role: Role,
    /// The pre-shared key file: at least 32 hexadecimal digits; or
    /// `credential:<name>`, a credential of the service (the default:
    /// `credential:key`, see `crate::systemd::key_path`).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// The character device (default `/dev/ferry/<group>`).
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// Primary: the secondary's address.
    #[serde(default)]
    pub peer: Option<String>,
    /// Primary: batch compression.
    #[serde(default)]
    pub compress: Compress,
    /// Primary: the disk spool's directory (default
    /// `/var/lib/ferry/<group>/spool`).
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Primary: a data device's records read and not acknowledged beyond
    /// this many MiB go to the disk spool (0: never).
    #[serde(default = "default_spool_after_mb")]
    pub spool_after_mb: u64,
    /// Primary: the disk spool's cap, MiB.
    #[serde(default = "default_spool_max_mb")]
    pub spool_max_mb: u64,
    /// Primary: whether `ferryd` starts a resync itself when the group is
    /// `ahead` (`auto`), or only `ferryctl resync` does (`manual`).
    #[serde(default)]
    pub resync: Resync,
    /// Primary: whether a secondary that holds nothing of the group gets
    /// a full copy of the devices (`full`) or is taken as equal to them
    /// (`none`).  A secondary ignores it, as the other primary keys.
    #[serde(default)]
    pub initial_sync: InitialSync,
    /// Secondary: the address to listen on.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Secondary: the remote log's directory.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// Secondary: MiB of `log_dir` kept beyond a resync's copy: a resync
    /// is refused unless its copy fits in the rest (`crate::room`).
    #[serde(default = "default_resync_reserve_mb")]
    pub resync_reserve_mb: u64,
    /// Status and metrics (HTTP, read-only), on loopback.
    #[serde(default = "default_status")]
    pub status: SocketAddr,
    /// The control socket (default `/run/ferry/<group>.sock`).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
}

fn default_key_file() -> PathBuf {
    PathBuf::from(crate::systemd::DEFAULT_KEY_FILE)
}

fn default_spool_after_mb() -> u64 {
    16
}

fn default_spool_max_mb() -> u64 {
    4096
}

fn default_resync_reserve_mb() -> u64 {
    crate::room::DEFAULT_RESERVE_MB
}

fn default_status() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9789))
}

/// Where the groups' configurations are.
pub const DIR: &str = "/etc/ferry";

/// The default path of a group's configuration.
pub fn path_of(group: &str) -> PathBuf {
    PathBuf::from(format!("{DIR}/{group}.toml"))
}

/// The configurations in `dir` (every `*.toml`), sorted.
pub fn all_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let c = Self::parse(&text).with_context(|| format!("{}: invalid", path.display()))?;
        c.check()
            .with_context(|| format!("{}: invalid", path.display()))?;
        Ok(c)
    }

    /// Parses a configuration's text (its syntax, keys and types; not
    /// [`Config::problems`]).
    pub fn parse(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
    }

    fn check(&self) -> Result<()> {
        match self.problems().as_slice() {
            [] => Ok(()),
            p => bail!("{}", p.join("; ")),
        }
    }

    /// What is wrong with a parsed configuration (empty: nothing), in
    /// plain words: the group's name, the fields the role needs, the
    /// addresses.  The files it names are not looked at (see
    /// [`Config::key`] and `ferryd --check`).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let g = self.group.as_bytes();
        if g.is_empty()
            || g.len() > 32
            || !g
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
        {
            p.push("group: 1 to 32 characters of [A-Za-z0-9_.-]".to_string());
        }
        match self.role {
            Role::Primary => match &self.peer {
                None => p.push("a primary needs `peer`".to_string()),
                Some(peer) => {
                    if let Err(e) = check_host_port(peer) {
                        p.push(format!("peer \"{peer}\": {e}"));
                    }
                }
            },
            Role::Secondary if self.listen.is_none() || self.log_dir.is_none() => {
                p.push("a secondary needs `listen` and `log_dir`".to_string())
            }
            Role::Secondary => {}
        }
        if !self.status.ip().is_loopback() {
            p.push("status must be a loopback address".to_string());
        }
        p
    }

    /// The primary's disk spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/ferry/{}/spool", self.group)))
    }

    /// The control socket (`ctl`).
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| crate::ctl::default_path(&self.group))
    }

    /// The character device.
    pub fn device(&self) -> PathBuf {
        self.device
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/dev/ferry/{}", self.group)))
    }

    /// Reads the pre-shared key.  A key file that its group or others may
    /// read or write is refused, as ssh refuses such a private key.
    pub fn key(&self) -> Result<Vec<u8>> {
        let p = &crate::systemd::key_path(&self.key_file)?;
        let mut f = std::fs::File::open(p)
            .with_context(|| format!("cannot read key file {}", p.display()))?;
        let mode = f
            .metadata()
            .with_context(|| format!("cannot read key file {}", p.display()))?
            .permissions()
            .mode();
        check_key_mode(p, mode)?;
        let mut text = String::new();
        f.read_to_string(&mut text)
            .with_context(|| format!("cannot read key file {}", p.display()))?;
        parse_key(text.trim()).with_context(|| format!("key file {}", p.display()))
    }
}

/// A `host:port` as `peer` takes it: a host name or an IP address (an
/// IPv6 one in brackets), and a port from 1 to 65535.  The name is not
/// resolved.
pub fn check_host_port(s: &str) -> Result<()> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        bail!("expected host:port");
    };
    match port.parse::<u16>() {
        Ok(n) if n > 0 => {}
        _ => bail!("port \"{port}\": expected a number from 1 to 65535"),
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    if !name_ok {
        bail!("host \"{host}\": not a host name or an IP address (an IPv6 one in brackets)");
    }
    Ok(())
}

/// A new pre-shared key: 32 random bytes from `/dev/urandom`, as the 64
/// hexadecimal digits a key file holds.
pub fn new_key() -> Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes `key` (and a newline) to a new key file at `path`, mode 0600
/// from its creation.  An existing file is an error unless `force`, which
/// replaces it (a new file of mode 0600 renamed over it: never a moment
/// with the key in a file others may read).
pub fn write_key_file(path: &Path, key: &str, force: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let create = |p: &Path| -> std::io::Result<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)?;
        // Exactly 0600, whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(f)
    };
    let write = |mut f: std::fs::File| -> std::io::Result<()> {
        f.write_all(format!("{key}\n").as_bytes())?;
        f.sync_all()
    };
    let ctx = || format!("cannot write key file {}", path.display());
    if !force {
        let f = match create(path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                bail!(
                    "{} exists: not replaced (--force replaces it)",
                    path.display()
                )
            }
            r => r.with_context(ctx)?,
        };
        return write(f).with_context(ctx);
    }
    let name = path.file_name().context("not a file name")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".new-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let r = create(&tmp)
        .and_then(write)
        .and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(ctx)
}

/// A key file must be private to its owner: no permission bit for its
/// group or others.
fn check_key_mode(path: &Path, mode: u32) -> Result<()> {
    if mode & 0o077 != 0 {
        bail!(
            "key file {} is accessible by others (mode {:04o}): chmod 600 it",
            path.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// A key in hexadecimal, at least 16 bytes.  Any other text is an error
/// (never a panic).
pub fn parse_key(hex: &str) -> Result<Vec<u8>> {
    let b = hex.as_bytes();
    if b.len() < 32 || b.len() % 2 != 0 {
        bail!("expected at least 32 hexadecimal digits, an even number");
    }
    let digit = |c: u8| char::from(c).to_digit(16).context("not hexadecimal");
    b.chunks_exact(2)
        .map(|p| Ok((digit(p[0])? << 4 | digit(p[1])?) as u8))
        .collect()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
