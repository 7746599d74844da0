//! The command lines of `ferryd` and `ferryctl` (clap), in the library so
//! that one generator (`ferryctl gen-man`, `ferryctl gen-completions`)
//! writes the manual pages and shell completions of both from the
//! definitions the programs parse with.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

/// Exit codes of `ferryctl` (see [`crate::health`]).
pub const EXIT_CODES: &str = "\
Exit status:
  0  healthy: replicating (primary) or idle/applying (secondary), every link up
  1  error: ferryd not reachable, bad arguments, the command failed
  2  degraded: a link down, connecting, ahead (resync needed), resyncing,
     a remote log stopped, applying stopped, log_dir or spool_dir full, a disk spool
     error, G2 broken, released, no consistent point (a secondary's initial
     full copy in progress), or a lag beyond --max-lag seconds (default 30)";

/// `ferryd`'s command line.
#[derive(Parser, Debug)]
#[command(
    name = "ferryd",
    version,
    about = "ferry's replication helper",
    long_about = "ferry's replication helper: on a primary it reads a group's records from \
/dev/ferry/<group> and ships them; on a secondary it stores, acknowledges and applies them.  \
The role comes from the group's configuration, /etc/ferry/<group>.toml."
)]
pub struct Ferryd {
    /// The group (its configuration is /etc/ferry/<group>.toml).
    pub group: Option<String>,
    /// The configuration file (instead of the group's default path).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Check the configuration and exit: 0 and "ok" when it is usable,
    /// 1 with what is wrong otherwise.  CONFIG is a file or a group's name;
    /// without it, the group's or --config's.
    #[arg(long, value_name = "CONFIG", num_args = 0..=1)]
    pub check: Option<Option<PathBuf>>,
}

impl Ferryd {
    /// The configuration file `ferryd` runs (or `--check` checks) with.
    pub fn config_path(&self) -> Result<PathBuf> {
        if let Some(Some(p)) = &self.check {
            return Ok(config_arg(p));
        }
        match (&self.config, &self.group) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(g)) => Ok(crate::config::path_of(g)),
            (None, None) => anyhow::bail!("give a group or --config"),
        }
    }
}

/// `--check`'s argument: a file, or (a bare name that is not a file) a
/// group's name.
fn config_arg(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    if p.exists() || s.contains('/') || s.ends_with(".toml") {
        p.to_owned()
    } else {
        crate::config::path_of(&s)
    }
}

/// `ferryctl`'s command line.
#[derive(Parser, Debug)]
#[command(
    name = "ferryctl",
    version,
    about = "Control a ferry group on this site",
    after_help = EXIT_CODES
)]
pub struct Ferryctl {
    /// The configuration file (default /etc/ferry/<group>.toml).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// What `ferryctl status` and `ferryctl events --once` take as degraded.
#[derive(Args, Debug, Clone, Copy)]
pub struct HealthArgs {
    /// A stream whose lag_seconds is beyond this is degraded (exit 2).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub max_lag: f64,
}

/// `ferryctl`'s commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Role, state, links, lag and progress of the group; the exit status
    /// tells its health.
    #[command(after_help = EXIT_CODES)]
    Status {
        group: String,
        /// The status document as JSON (with schema_version).
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw every --interval seconds until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between redraws of --watch.
        #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = positive_secs, requires = "watch")]
        interval: f64,
        #[command(flatten)]
        health: HealthArgs,
    },
    /// Follow the group's state changes as JSON lines: first the current
    /// state ("exists"), then each change.
    Events {
        /// The group to follow (default: every /etc/ferry/*.toml; with
        /// --config, that file's group).
        #[arg(long)]
        group: Vec<String>,
        /// Print the current state and exit (the exit status as status's).
        #[arg(long)]
        once: bool,
        /// Seconds between polls of ferryd's status.
        #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = positive_secs)]
        interval: f64,
        #[command(flatten)]
        health: HealthArgs,
    },
    /// Make this secondary a primary: ferryd (asked on its control socket,
    /// as root) applies every complete interval it holds and lets go of the
    /// device, then the kernel group becomes a primary that tracks its own
    /// writes.  Refused (exit 1, nothing changed, ferryd goes on) while the
    /// secondary has no consistent point: the initial full copy is not
    /// applied yet.
    Promote {
        group: String,
        /// Promote with no consistent point too: the devices then hold
        /// their own earlier content, unrelated to the primary's, in the
        /// chunks the initial full copy has not copied.
        #[arg(long)]
        force: bool,
    },
    /// Start a resync on this primary: ferryd (asked on its control socket,
    /// as root) asks the secondary for room in its log_dir, then writes
    /// START, and a group that is ahead (or replicating with dirty chunks)
    /// copies its dirty chunks to the secondary, then replicates again.
    /// Exits 1 with the secondary's figures when it has no room, with the
    /// kernel's reason when it refuses.
    Resync {
        group: String,
        /// Copy every chunk of every device (START with FULL_RESYNC), in
        /// any state: a full copy to the secondary.
        #[arg(long)]
        full: bool,
        /// Then follow the resync (chunks done of its total) until the
        /// group replicates (exit 0); exit 1 if it goes ahead again.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up (exit 1) after this many seconds.
        #[arg(long, value_name = "SECS", value_parser = positive_secs, requires = "wait")]
        timeout: Option<f64>,
    },
    /// Make this primary a secondary (needs failback: not in this version).
    Demote { group: String },
    /// Close the open checkpoint interval now (primary).
    Checkpoint { group: String },
    /// Insert an application-consistent point: freeze the filesystem at
    /// the mount point, insert the point in every stream, thaw (also on
    /// error).
    Cp {
        group: String,
        /// The mounted filesystem to quiesce.
        #[arg(long)]
        freeze: PathBuf,
        /// The point's label (1 to 64 printable characters, no blanks).
        #[arg(long, default_value = "ferryctl")]
        label: String,
    },
    /// Make a new pre-shared key (64 hexadecimal digits): printed, or
    /// written to a new file of mode 0600.
    Keygen {
        /// Write the key to this file (mode 0600), not to standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long, requires = "out")]
        force: bool,
    },
    /// Write the manual pages ferryd.8 and ferryctl.8 into DIR.
    #[command(hide = true)]
    GenMan { dir: PathBuf },
    /// Write the completions of ferryd and ferryctl for SHELL into DIR.
    #[command(hide = true)]
    GenCompletions { shell: Shell, dir: PathBuf },
}

/// A number of seconds, more than 0.
fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s}: not a number of seconds above 0")),
    }
}

/// Writes the manual pages into `dir` (created if missing): `ferryd.8`,
/// `ferryctl.8`, and one per command of `ferryctl` (`ferryctl-status.8`,
/// ..., which `ferryctl.8` refers to); returns their paths.
pub fn gen_man(dir: &Path) -> Result<Vec<PathBuf>> {
    fn generate(cmd: clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            generate(sub.clone(), dir, out)?;
        }
        let man = clap_mangen::Man::new(cmd).section("8").manual("ferry");
        let path = man
            .generate_to(dir)
            .with_context(|| format!("write a manual page in {}", dir.display()))?;
        out.push(path);
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut out = Vec::new();
    for cmd in [Ferryd::command(), Ferryctl::command()] {
        // Built, the commands are named `ferryctl-status`, ...; no `help`
        // command (it has no page).
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        generate(cmd, dir, &mut out)?;
    }
    Ok(out)
}

/// Writes the completions of `ferryd` and `ferryctl` for `shell` into
/// `dir` (created if missing), under the names the shell looks for
/// (`ferryctl.bash`, `_ferryctl`, `ferryctl.fish`, ...); returns their
/// paths.
pub fn gen_completions(shell: Shell, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut out = Vec::new();
    for mut cmd in [Ferryd::command(), Ferryctl::command()] {
        let name = cmd.get_name().to_string();
        let path = clap_complete::generate_to(shell, &mut cmd, &name, dir)
            .with_context(|| format!("write the {shell} completions of {name}"))?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_consistent() {
        Ferryd::command().debug_assert();
        Ferryctl::command().debug_assert();
    }

    #[test]
    fn check_takes_a_file_or_a_group() {
        let d = Ferryd::try_parse_from(["ferryd", "--check", "db"]).unwrap();
        assert_eq!(
            d.config_path().unwrap(),
            PathBuf::from("/etc/ferry/db.toml")
        );
        let d = Ferryd::try_parse_from(["ferryd", "--check", "./db.toml"]).unwrap();
        assert_eq!(d.config_path().unwrap(), PathBuf::from("./db.toml"));
        let d = Ferryd::try_parse_from(["ferryd", "db", "--check"]).unwrap();
        assert_eq!(d.check, Some(None));
        assert_eq!(
            d.config_path().unwrap(),
            PathBuf::from("/etc/ferry/db.toml")
        );
        let d = Ferryd::try_parse_from(["ferryd", "-c", "/x.toml", "--check"]).unwrap();
        assert_eq!(d.config_path().unwrap(), PathBuf::from("/x.toml"));
        let d = Ferryd::try_parse_from(["ferryd", "db"]).unwrap();
        assert_eq!(d.check, None);
        assert!(Ferryd::try_parse_from(["ferryd"])
            .unwrap()
            .config_path()
            .is_err());
    }

    #[test]
    fn intervals_are_positive_seconds() {
        assert_eq!(positive_secs("0.5"), Ok(0.5));
        assert!(positive_secs("0").is_err());
        assert!(positive_secs("-1").is_err());
        assert!(positive_secs("nan").is_err());
        assert!(positive_secs("x").is_err());
        assert!(
            Ferryctl::try_parse_from(["ferryctl", "status", "g", "--interval", "1"]).is_err(),
            "--interval without --watch"
        );
        assert!(
            Ferryctl::try_parse_from(["ferryctl", "status", "g", "--json", "--watch"]).is_err()
        );
        assert!(Ferryctl::try_parse_from(["ferryctl", "keygen", "--force"]).is_err());
        assert!(Ferryctl::try_parse_from(["ferryctl", "resync", "g", "--timeout", "5"]).is_err());
        let c = Ferryctl::try_parse_from(["ferryctl", "resync", "g", "--wait", "--timeout", "5"])
            .unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Resync { wait: true, timeout: Some(t), full: false, .. } if t == 5.0
        ));
    }

    #[test]
    fn promote_force() {
        let c = Ferryctl::try_parse_from(["ferryctl", "promote", "g"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Promote { ref group, force: false } if group == "g"));
        let c = Ferryctl::try_parse_from(["ferryctl", "promote", "--force", "g"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Promote { ref group, force: true } if group == "g"));
        let c = Ferryctl::try_parse_from(["ferryctl", "promote", "g", "--force"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Promote { force: true, .. }));
        assert!(Ferryctl::try_parse_from(["ferryctl", "promote", "--force"]).is_err());
        assert!(Ferryctl::try_parse_from(["ferryctl", "promote", "g", "--force=yes"]).is_err());
    }

    #[test]
    fn resync_full() {
        let c = Ferryctl::try_parse_from(["ferryctl", "resync", "--full", "g"]).unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Resync { ref group, full: true, wait: false, timeout: None } if group == "g"
        ));
        let c = Ferryctl::try_parse_from(["ferryctl", "resync", "g", "--full", "--wait"]).unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Resync {
                full: true,
                wait: true,
                ..
            }
        ));
        let c = Ferryctl::try_parse_from(["ferryctl", "resync", "g"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Resync { full: false, .. }));
        assert!(Ferryctl::try_parse_from(["ferryctl", "resync", "g", "--full=no"]).is_err());
    }
}
