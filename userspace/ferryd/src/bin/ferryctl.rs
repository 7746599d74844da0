//! `ferryctl`: status and role changes of a ferry group on this site.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferryd::cli::{self, Cmd, Ferryctl};
use ferryd::config::{self, Config};
use ferryd::health::{self, Health};
use ferryd::status::Status;
use ferryd::{ctl, events, render};

/// How long `ferryctl` waits for `ferryd`'s status endpoint.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // Bad arguments exit 1 (clap's own code, 2, is "degraded" here);
    // --help and --version 0.
    let cli = match Ferryctl::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Health::Error.code()
            } else {
                0
            });
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ferryctl: {e:#}");
            ExitCode::from(Health::Error.code())
        }
    }
}

fn load(cli_config: &Option<PathBuf>, group: &str) -> Result<Config> {
    let p = cli_config.clone().unwrap_or_else(|| config::path_of(group));
    Config::load(&p)
}

/// Runs the command; its exit code (an error: 1).
fn run(cli: Ferryctl) -> Result<u8> {
    match &cli.cmd {
        Cmd::Status {
            group,
            json,
            watch,
            interval,
            health,
        } => {
            let c = load(&cli.config, group)?;
            if *watch {
                return watch_status(&c, *interval, health.max_lag);
            }
            let got = fetch(&c);
            match &got {
                Ok(st) if *json => println!(
                    "{}",
                    serde_json::to_string_pretty(&health::Versioned::new(st))?
                ),
                Ok(st) => print!("{}", render::status(st, &health::assess(st, health.max_lag))),
                Err(e) => eprintln!("ferryctl: {e:#}"),
            }
            Ok(health::exit_code(got.as_ref(), health.max_lag))
        }
        Cmd::Events {
            group,
            once,
            interval,
            health,
        } => {
            let configs = event_groups(&cli.config, group)?;
            follow(&configs, *once, *interval, health.max_lag)
        }
        Cmd::Promote { group, force } => {
            let c = load(&cli.config, group)?;
            // Through ferryd when it runs (it must let go of the device
            // first); without it only when it does not run.  A ferryd that
            // runs and did not release (with no consistent point, unless
            // forced) stops the promote.
            match ctl::request_release(&c.control_socket(), *force, ctl::RELEASE_TIMEOUT)
                .context("not promoting")?
            {
                ctl::Release::Released(r) => eprintln!("{}", render::released(&r)),
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
            Ok(0)
        }
        Cmd::Resync {
            group,
            full,
            wait,
            timeout,
        } => {
            let c = load(&cli.config, group)?;
            let r = ctl::request_resync(&c.control_socket(), *full, ctl::RESYNC_TIMEOUT)?;
            println!("{}", render::started(group, &r));
            if !*wait {
                return Ok(0);
            }
            wait_resync(&c, timeout.map(Duration::from_secs_f64))
        }
        Cmd::Demote { group } => bail!(
            "demote {group}: not supported in this version (a former primary must be resynchronised from the new one: failback is not implemented yet)"
        ),
        Cmd::Checkpoint { group } => {
            let devs = members(group)?;
            let first = devs.first().context("no ferry device of the group")?;
            dm(&["message", first, "0", "checkpoint"]).context("checkpoint refused (is this the primary?)")?;
            println!("checkpoint inserted in group {group}");
            Ok(0)
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
            Ok(0)
        }
        Cmd::Keygen { out, force } => {
            let key = config::new_key()?;
            match out {
                None => println!("{key}"),
                Some(p) => {
                    config::write_key_file(p, &key, *force)?;
                    eprintln!("key written to {} (mode 0600)", p.display());
                }
            }
            Ok(0)
        }
        Cmd::GenMan { dir } => {
            for p in cli::gen_man(dir)? {
                println!("{}", p.display());
            }
            Ok(0)
        }
        Cmd::GenCompletions { shell, dir } => {
            for p in cli::gen_completions(*shell, dir)? {
                println!("{}", p.display());
            }
            Ok(0)
        }
    }
}

/// Asks the group's `ferryd` for its status document.
fn fetch(c: &Config) -> Result<Status> {
    let url = format!("http://{}/status", c.status);
    let body = ureq::AgentBuilder::new()
        .timeout(FETCH_TIMEOUT)
        .build()
        .get(&url)
        .call()
        .with_context(|| format!("ferryd of group {} not reachable at {url}", c.group))?
        .into_string()?;
    serde_json::from_str(&body).context("status document")
}

/// `status --watch`: the status every `interval` seconds, until
/// interrupted; on a terminal each redrawn over the last.
fn watch_status(c: &Config, interval: f64, max_lag: f64) -> Result<u8> {
    let tty = std::io::stdout().is_terminal();
    loop {
        let body = match fetch(c) {
            Ok(st) => render::status(&st, &health::assess(&st, max_lag)),
            Err(e) => format!("ferryctl: {e:#}\n"),
        };
        let frame = format!(
            "{}every {interval} s: ferryctl status {}    {}\n\n{body}{}",
            if tty { "\x1b[H\x1b[2J" } else { "" },
            c.group,
            events::rfc3339(SystemTime::now()),
            if tty { "" } else { "\n" },
        );
        let mut out = std::io::stdout().lock();
        if out
            .write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            // Whoever read the output is gone.
            return Ok(0);
        }
        drop(out);
        std::thread::sleep(Duration::from_secs_f64(interval));
    }
}

/// How long `resync --wait` takes an `ahead` it sees before any
/// `resyncing` for the kernel's mode before the `START` (the status's
/// lines are read at most once a second), not for a resync that ended
/// `ahead` again.
const AHEAD_GRACE: Duration = Duration::from_secs(10);

/// `resync --wait`: polls the status each second until the group is
/// `replicating` (0), drawing the resync's progress (chunks done of its
/// total: a bar on a terminal, a line each 10 s otherwise); 1 when it goes
/// `ahead` again or `timeout` passes.
fn wait_resync(c: &Config, timeout: Option<Duration>) -> Result<u8> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let start = std::time::Instant::now();
    let tty = std::io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("resyncing [{bar:40}] {pos}/{len} chunks {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    if !tty {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let mut seen_resyncing = false;
    let mut last_line = None::<std::time::Instant>;
    let fail = |bar: &ProgressBar, msg: String| {
        bar.abandon();
        eprintln!("ferryctl: {msg}");
        Ok(Health::Error.code())
    };
    loop {
        match fetch(c) {
            Ok(st) => match st.state.as_str() {
                "replicating" => {
                    bar.finish_and_clear();
                    println!(
                        "group {}: replicating{}",
                        c.group,
                        if seen_resyncing {
                            " (the resync is done: the secondary applied it)"
                        } else {
                            ""
                        }
                    );
                    return Ok(0);
                }
                "resyncing" => {
                    seen_resyncing = true;
                    let (left, total) = (st.resync_chunks_left, st.resync_chunks_total);
                    bar.set_length(total);
                    bar.set_position(total.saturating_sub(left));
                    if let (Some(l), Some(t)) = (st.resync_bytes_left, st.resync_bytes_total) {
                        bar.set_message(format!(
                            "({} of {})",
                            render::bytes(t.saturating_sub(l)),
                            render::bytes(t)
                        ));
                    }
                    if !tty && last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        last_line = Some(std::time::Instant::now());
                        eprintln!("resyncing: {}", st.resync_progress());
                    }
                }
                "ahead" if seen_resyncing || start.elapsed() >= AHEAD_GRACE => {
                    return fail(
                        &bar,
                        format!(
                            "group {} is ahead again: the resync did not complete{}",
                            c.group,
                            st.resync_note
                                .as_ref()
                                .map(|n| format!(" ({n})"))
                                .unwrap_or_default()
                        ),
                    );
                }
                _ => {}
            },
            Err(e) => {
                if !tty {
                    eprintln!("ferryctl: {e:#}");
                }
                bar.set_message(format!("(ferryd not reachable: {e})"));
            }
        }
        if let Some(t) = timeout {
            if start.elapsed() >= t {
                return fail(
                    &bar,
                    format!(
                        "group {}: not replicating after {} s (ferryctl status {} says more)",
                        c.group,
                        t.as_secs_f64(),
                        c.group
                    ),
                );
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The groups `events` follows: those of `--group` (with `--config`, its
/// file's; one group then), or every configuration in /etc/ferry.
fn event_groups(cli_config: &Option<PathBuf>, groups: &[String]) -> Result<Vec<Config>> {
    match (cli_config, groups) {
        (Some(p), []) => Ok(vec![Config::load(p)?]),
        (Some(_), [g]) => Ok(vec![load(cli_config, g)?]),
        (Some(_), _) => bail!("--config names one group's file: give at most one --group"),
        (None, []) => {
            let all = config::all_in(std::path::Path::new(config::DIR))?;
            if all.is_empty() {
                bail!("no group: no configuration in {}", config::DIR);
            }
            all.iter().map(|p| Config::load(p)).collect()
        }
        (None, gs) => gs.iter().map(|g| load(&None, g)).collect(),
    }
}

/// `events`: the groups' state as `exists` events, then (unless `once`)
/// each change, polling every `interval` seconds until interrupted.  With
/// `once`, the exit code is the worst of the groups' health.
fn follow(configs: &[Config], once: bool, interval: f64, max_lag: f64) -> Result<u8> {
    let mut last: Vec<Option<events::Snapshot>> = vec![None; configs.len()];
    loop {
        let mut worst = Health::Healthy;
        for (c, last) in configs.iter().zip(&mut last) {
            let got = fetch(c);
            let snap = match &got {
                Ok(st) => {
                    worst = worst.worst(health::assess(st, max_lag).health);
                    events::Snapshot::of(st)
                }
                Err(e) => {
                    if once {
                        eprintln!("ferryctl: {e:#}");
                    }
                    worst = Health::Error;
                    events::Snapshot::unreachable(&c.group, c.role)
                }
            };
            let now = SystemTime::now();
            let mut text = String::new();
            for e in events::diff(last.as_ref(), &snap) {
                text.push_str(&events::line(&snap.group, &e, now));
                text.push('\n');
            }
            let mut out = std::io::stdout().lock();
            if out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                // Whoever read the events is gone.
                return Ok(0);
            }
            *last = Some(snap);
        }
        if once {
            return Ok(worst.code());
        }
        std::thread::sleep(Duration::from_secs_f64(interval));
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
