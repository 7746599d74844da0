//! `/etc/ferry/<group>.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Which end of the link this site is.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the kernel's records and ships them.
    Primary,
    /// Stores, acknowledges and applies them.
    Secondary,
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

/// The configuration of one group on one site.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The group's name (as in the dmsetup tables).
    pub group: String,
    /// This site's role.
    pub role: Role,
    /// The pre-shared key file: at least 32 hexadecimal digits.
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
    /// Secondary: the address to listen on.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Secondary: the remote log's directory.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// Status and metrics (HTTP), on loopback.
    #[serde(default = "default_status")]
    pub status: SocketAddr,
}

fn default_spool_after_mb() -> u64 {
    16
}

fn default_spool_max_mb() -> u64 {
    4096
}

fn default_status() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9789))
}

/// The default path of a group's configuration.
pub fn path_of(group: &str) -> PathBuf {
    PathBuf::from(format!("/etc/ferry/{group}.toml"))
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let c: Config =
            toml::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
        c.check()
            .with_context(|| format!("{}: invalid", path.display()))?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        let g = self.group.as_bytes();
        if g.is_empty()
            || g.len() > 32
            || !g
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
        {
            bail!("group: 1 to 32 characters of [A-Za-z0-9_.-]");
        }
        match self.role {
            Role::Primary if self.peer.is_none() => bail!("a primary needs `peer`"),
            Role::Secondary if self.listen.is_none() || self.log_dir.is_none() => {
                bail!("a secondary needs `listen` and `log_dir`")
            }
            _ => {}
        }
        if !self.status.ip().is_loopback() {
            bail!("status must be a loopback address");
        }
        Ok(())
    }

    /// The primary's disk spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/ferry/{}/spool", self.group)))
    }

    /// The character device.
    pub fn device(&self) -> PathBuf {
        self.device
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/dev/ferry/{}", self.group)))
    }

    /// Reads the pre-shared key.
    pub fn key(&self) -> Result<Vec<u8>> {
        let text = std::fs::read_to_string(&self.key_file)
            .with_context(|| format!("cannot read key file {}", self.key_file.display()))?;
        parse_key(text.trim()).with_context(|| format!("key file {}", self.key_file.display()))
    }
}

/// A key in hexadecimal, at least 16 bytes.
pub fn parse_key(hex: &str) -> Result<Vec<u8>> {
    if hex.len() < 32 || hex.len() % 2 != 0 {
        bail!("expected at least 32 hexadecimal digits, an even number");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).context("not hexadecimal"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let c: Config = toml::from_str(
            "group = \"g\"\nrole = \"secondary\"\nkey_file = \"/k\"\nlisten = \"0.0.0.0:7789\"\nlog_dir = \"/var/lib/ferry/g\"\n",
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.device(), PathBuf::from("/dev/ferry/g"));
        assert_eq!(c.spool_dir(), PathBuf::from("/var/lib/ferry/g/spool"));
        assert_eq!((c.spool_after_mb, c.spool_max_mb), (16, 4096));
        let bad: Config =
            toml::from_str("group = \"g\"\nrole = \"primary\"\nkey_file = \"/k\"\n").unwrap();
        assert!(bad.check().is_err());
        assert!(
            toml::from_str::<Config>("group = \"g\"\nrole = \"x\"\nkey_file = \"/k\"\n").is_err()
        );
        assert!(parse_key("00112233445566778899aabbccddeeff").is_ok());
        assert!(parse_key("0011").is_err());
        assert!(parse_key("zz112233445566778899aabbccddeeff").is_err());
    }
}
