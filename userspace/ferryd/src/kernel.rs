//! What the primary's kernel says of its group, and its clock.
//!
//! The kernel's mode (`replicating`, or `ahead`: writes go to the bitmap
//! only, and leaving that needs a resync) is in the status line of each of
//! the group's device-mapper devices, not on the character device:
//!
//! ```text
//! <name>: <start> <len> ferry primary <group> <device_id> <role> <mode> ...
//! ```
//!
//! `ferryd` reads those lines with `dmsetup status --target ferry` (as
//! `ferryctl` lists the group's devices with `dmsetup table`), behind
//! [`DmStatus`] so that a test can put its own lines in.
//!
//! Record timestamps (`timestamp_ns` of the record header) are the
//! kernel's `ktime_get()` when the write completed and was sequenced:
//! `CLOCK_MONOTONIC` in nanoseconds (it starts near 0 at boot and does
//! not count suspend), plus the group's base: a group continued from its
//! meta devices after a restart of the host adds what keeps its
//! timestamps above those recorded there.  [`mono_ns`] reads the same
//! clock.

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The status lines of the host's ferry devices.
pub(crate) trait DmStatus: Send + Sync + 'static {
    /// Every line `dmsetup status --target ferry` prints.
    fn lines(&self) -> Result<String>;
}

/// [`DmStatus`] through `dmsetup` (needs root, as device-mapper does).
/// A status request or a scrape runs it at most once a [`Dmsetup::FRESH`]:
/// the lines read last are reused meanwhile, so that frequent polling
/// does not start a process each time.
#[derive(Default)]
pub(crate) struct Dmsetup {
    last: Mutex<Option<(Instant, String)>>,
}

impl Dmsetup {
    /// How long lines read are reused.
    pub(crate) const FRESH: Duration = Duration::from_secs(1);

    fn run() -> Result<String> {
        let out = Command::new("dmsetup")
            .args(["status", "--target", "ferry"])
            .output()
            .context("cannot run dmsetup")?;
        if !out.status.success() {
            bail!(
                "dmsetup status: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl DmStatus for Dmsetup {
    fn lines(&self) -> Result<String> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, lines)) = last.as_ref() {
            if at.elapsed() < Self::FRESH {
                return Ok(lines.clone());
            }
        }
        let lines = Self::run()?;
        *last = Some((Instant::now(), lines.clone()));
        Ok(lines)
    }
}

/// The group's primary devices, as the kernel reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// The kernel's mode is `ahead` (a group has one mode).
    pub(crate) ahead: bool,
    /// The group's device ids, ascending.
    pub(crate) devices: Vec<u32>,
}

/// The view of `group` from status lines; `None` when no line is of a
/// primary device of the group.
pub(crate) fn view(lines: &str, group: &str) -> Option<View> {
    let mut v = View::default();
    let mut found = false;
    for line in lines.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = w.iter().position(|t| *t == "ferry") else {
            continue;
        };
        let [_, "primary", g, id, _role, mode, ..] = &w[i..] else {
            continue;
        };
        if *g != group {
            continue;
        }
        found = true;
        v.ahead |= *mode == "ahead";
        if let Ok(id) = id.parse::<u32>() {
            if !v.devices.contains(&id) {
                v.devices.push(id);
            }
        }
    }
    v.devices.sort_unstable();
    found.then_some(v)
}

/// `CLOCK_MONOTONIC` now, ns: the clock the kernel stamps records with.
pub(crate) fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Seconds since the kernel stamped `stamp_ns`, now `now_ns` on the
/// monotonic clock; `base_ns`: how far the kernel's timestamps are known
/// to run ahead of that clock (the group's base, see the module).
pub(crate) fn age_seconds(stamp_ns: u64, now_ns: u64, base_ns: u64) -> f64 {
    now_ns.saturating_add(base_ns).saturating_sub(stamp_ns) as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_groups_lines() {
        let lines = "\
p1: 0 65536 ferry primary gr 1 data replicating 5 5 5 5 4 1024 0 2 0 0
other: 0 65536 ferry primary gx 0 data ahead 0 0 0 0 0 1024 3 1 0 0
p0: 0 65536 ferry primary gr 0 log replicating 1 1 1 1 4 1024 0 2 0 0
pt: 0 65536 ferry passthrough 0 0 0 0 0
";
        let v = view(lines, "gr").unwrap();
        assert_eq!(
            v,
            View {
                ahead: false,
                devices: vec![0, 1]
            }
        );
        assert!(view(lines, "gx").unwrap().ahead);
        assert_eq!(view(lines, "none"), None);
        assert_eq!(view("No devices found\n", "gr"), None);
        // A secondary's line is no primary's.
        assert_eq!(
            view("s0: 0 8 ferry secondary gr 0 data idle 0 0 0 0\n", "gr"),
            None
        );
        let ahead = "p0: 0 65536 ferry primary gr 0 data ahead 9 9 9 3 0 1024 12 2 0 0\n";
        assert!(view(ahead, "gr").unwrap().ahead);
    }

    #[test]
    fn ages() {
        assert_eq!(age_seconds(1_000_000_000, 3_500_000_000, 0), 2.5);
        // A stamp ahead of the clock by the group's base.
        assert_eq!(
            age_seconds(10_000_000_000, 3_000_000_000, 8_000_000_000),
            1.0
        );
        // Never negative.
        assert_eq!(age_seconds(10, 5, 0), 0.0);
        let a = mono_ns();
        let b = mono_ns();
        assert!(a > 0 && b >= a);
    }
}
