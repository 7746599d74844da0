//! `ferryctl`: status and role changes of a ferry group on this site.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ferryd::config::{self, Config};
use ferryd::ctl;
use ferryd::status::Status;

#[derive(Parser)]
#[command(version, about = "Control a ferry group on this site")]
struct Cli {
    /// The configuration file (default /etc/ferry/<group>.toml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Role, state, link, lag and progress of the group.
    Status {
        group: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make this secondary a primary: ferryd (asked on its control socket,
    /// as root) applies every complete interval it holds and lets go of the
    /// device, then the kernel group becomes a primary that tracks its own
    /// writes.
    Promote { group: String },
    /// Make this primary a secondary (needs resync: not in this version).
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
    /// Print a new pre-shared key (64 hexadecimal digits).
    Keygen,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli_config: &Option<PathBuf>, group: &str) -> Result<Config> {
    let p = cli_config.clone().unwrap_or_else(|| config::path_of(group));
    Config::load(&p)
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Status { group, json } => {
            let c = load(&cli.config, group)?;
            let st = fetch(&c)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(())
        }
        Cmd::Promote { group } => {
            let c = load(&cli.config, group)?;
            // Through ferryd when it runs (it must let go of the device
            // first); without it only when it does not run.  A ferryd that
            // runs and did not release stops the promote.
            match ctl::request_release(&c.control_socket(), ctl::RELEASE_TIMEOUT)
                .context("not promoting")?
            {
                ctl::Release::Released(applied) => {
                    eprintln!("ferryd applied up to interval {applied} and released the device")
                }
                ctl::Release::NotRunning(why) => {
                    eprintln!("ferryd is not running ({why}): promoting without it")
                }
            }
            let devs = members(group)?;
            let first = devs.first().context("no ferry device of the group")?;
            dm(&["message", first, "0", "promote"])
                .context("the kernel refused promote (see dmesg)")?;
            for d in &devs {
                // Host reads may have cached blocks from before the last
                // intervals were applied: drop them.
                let _ = Command::new("blockdev")
                    .args(["--flushbufs", &format!("/dev/mapper/{d}")])
                    .status();
            }
            println!("promoted group {group}: {} now a primary", devs.join(", "));
            Ok(())
        }
        Cmd::Demote { group } => bail!(
            "demote {group}: not supported in this version (a former primary must be resynchronised from the new one, and resync is not implemented yet)"
        ),
        Cmd::Checkpoint { group } => {
            let devs = members(group)?;
            let first = devs.first().context("no ferry device of the group")?;
            dm(&["message", first, "0", "checkpoint"]).context("checkpoint refused (is this the primary?)")?;
            println!("checkpoint inserted in group {group}");
            Ok(())
        }
        Cmd::Cp {
            group,
            freeze,
            label,
        } => {
            let devs = members(group)?;
            let first = devs.first().context("no ferry device of the group")?;
            run_tool("fsfreeze", &["--freeze", &freeze.to_string_lossy()])
                .with_context(|| format!("cannot freeze {}", freeze.display()))?;
            let r = dm(&["message", first, "0", "cp", label]);
            let t = run_tool("fsfreeze", &["--unfreeze", &freeze.to_string_lossy()]);
            r.context("consistency point refused")?;
            t.with_context(|| format!("cannot thaw {}", freeze.display()))?;
            println!("consistency point {label} inserted in group {group}");
            Ok(())
        }
        Cmd::Keygen => {
            let mut b = [0u8; 32];
            use std::io::Read;
            std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
            println!("{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>());
            Ok(())
        }
    }
}

fn fetch(c: &Config) -> Result<Status> {
    let url = format!("http://{}/status", c.status);
    let body = ureq::get(&url)
        .call()
        .with_context(|| format!("ferryd of group {} not reachable at {url}", c.group))?
        .into_string()?;
    serde_json::from_str(&body).context("status document")
}

fn print_status(s: &Status) {
    println!(
        "group {}: {:?}, {}; applied interval {}{}",
        s.group,
        s.role,
        s.state,
        s.applied_epoch,
        if s.applying_epoch > 0 {
            format!(", applying {}", s.applying_epoch)
        } else {
            String::new()
        }
    );
    for d in &s.streams {
        println!(
            "  device {}: link {}, lag {} records, {} bytes, {:.1} s; {} -> {}; {} record bytes, {} on the wire",
            d.device,
            if d.connected { "up" } else { "down" },
            d.lag_records,
            d.lag_bytes,
            d.lag_seconds,
            d.received,
            d.done,
            d.record_bytes,
            d.wire_bytes
        );
        if let Some(why) = &d.log_stopped {
            println!("    REMOTE LOG STOPPED: {why}");
        }
    }
    if s.role == config::Role::Primary {
        println!(
            "  records not acknowledged {}; in the disk spool {} ({} bytes)",
            s.spool_records, s.disk_spool_records, s.disk_spool_bytes
        );
    }
    if s.role == config::Role::Secondary {
        if let Some(why) = &s.apply_error {
            println!("  APPLYING STOPPED: {why}");
        }
        match &s.consistency_point {
            Some(p) => println!("  last consistency point held: {} ({})", p.cp_id, p.label),
            None => println!("  no consistency point held"),
        }
        if s.g2_violations > 0 {
            println!(
                "  G2 BROKEN: {} log records became durable after a data record of a later group order",
                s.g2_violations
            );
        }
    }
    if s.auth_refused > 0 || !s.rejected.is_empty() {
        let by: Vec<_> = s.auth_refused_by.iter().filter(|(_, n)| *n > 0).collect();
        println!(
            "  peers refused {} {:?}, records rejected {:?}",
            s.auth_refused, by, s.rejected
        );
    }
    if s.accept_errors > 0 {
        println!("  accept errors {} (survived)", s.accept_errors);
    }
}

fn run_tool(tool: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(tool)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {tool}"))?;
    if !st.success() {
        bail!("{tool} {} failed ({st})", args.join(" "));
    }
    Ok(())
}

fn dm(args: &[&str]) -> Result<()> {
    let out = Command::new("dmsetup")
        .args(args)
        .output()
        .context("cannot run dmsetup")?;
    if !out.status.success() {
        bail!(
            "dmsetup {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The device-mapper devices of the group (their tables name it).
fn members(group: &str) -> Result<Vec<String>> {
    let out = Command::new("dmsetup")
        .args(["table", "--target", "ferry"])
        .output()
        .context("cannot run dmsetup")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for line in text.lines() {
        let Some((name, table)) = line.split_once(": ") else {
            continue;
        };
        let w: Vec<&str> = table.split_whitespace().collect();
        if w.windows(2).any(|p| p[0] == "group" && p[1] == group) && !v.contains(&name.to_string())
        {
            v.push(name.to_string());
        }
    }
    if v.is_empty() {
        bail!("no ferry device of group {group} on this host");
    }
    Ok(v)
}
