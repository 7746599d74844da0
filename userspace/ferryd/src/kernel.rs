//! What the primary's kernel says of its group, and its clock.
//!
//! The kernel's mode (`replicating`; `ahead`: writes go to the bitmap
//! only, and leaving that needs a resync; `resyncing`: the dirty chunks
//! are being copied) is in the status line of each of the group's
//! device-mapper devices, not on the character device:
//!
//! ```text
//! <name>: <start> <len> ferry primary <group> <device_id> <role> <mode>
//!     <written> <completed> <shipped> <acked> <spool_kib> <spool_cap_kib>
//!     <dirty> <epoch> <not_shipped> <rejected> [<resync_left> <resync_total>]
//! ```
//!
//! The last two (this device's chunks left to copy, and its chunks in the
//! running resync) come with the module that resyncs; without them the
//! module has none (both taken as 0).  The chunk size of a device is in
//! its table (`chunk_kb`, 64 when not given: [`chunk_kib`]).
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

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The status lines of the host's ferry devices.
pub(crate) trait DmStatus: Send + Sync + 'static {
    /// Every line `dmsetup status --target ferry` prints.
    fn lines(&self) -> Result<String>;
    /// Every line `dmsetup table --target ferry` prints (none known: an
    /// error, and sizes are not shown in bytes).
    fn tables(&self) -> Result<String> {
        bail!("no tables")
    }
    /// The next [`DmStatus::lines`] reads the kernel again (its mode just
    /// changed).
    fn forget(&self) {}
}

/// [`DmStatus`] through `dmsetup` (needs root, as device-mapper does).
/// A status request or a scrape runs it at most once a [`Dmsetup::FRESH`]:
/// the lines read last are reused meanwhile, so that frequent polling
/// does not start a process each time.
#[derive(Default)]
pub(crate) struct Dmsetup {
    last: Mutex<Option<(Instant, String)>>,
    last_tables: Mutex<Option<(Instant, String)>>,
}

impl Dmsetup {
    /// How long lines read are reused.
    pub(crate) const FRESH: Duration = Duration::from_secs(1);
    /// How long tables read are reused (a chunk size changes only with a
    /// new table).
    pub(crate) const TABLES_FRESH: Duration = Duration::from_secs(10);

    fn run(what: &str) -> Result<String> {
        let out = Command::new("dmsetup")
            .args([what, "--target", "ferry"])
            .output()
            .context("cannot run dmsetup")?;
        if !out.status.success() {
            bail!(
                "dmsetup {what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cached(
        cache: &Mutex<Option<(Instant, String)>>,
        fresh: Duration,
        what: &str,
    ) -> Result<String> {
        let mut last = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, lines)) = last.as_ref() {
            if at.elapsed() < fresh {
                return Ok(lines.clone());
            }
        }
        let lines = Self::run(what)?;
        *last = Some((Instant::now(), lines.clone()));
        Ok(lines)
    }
}

impl DmStatus for Dmsetup {
    fn lines(&self) -> Result<String> {
        Self::cached(&self.last, Self::FRESH, "status")
    }

    fn tables(&self) -> Result<String> {
        Self::cached(&self.last_tables, Self::TABLES_FRESH, "table")
    }

    fn forget(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The kernel's mode of a primary group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every write becomes a record.
    #[default]
    Replicating,
    /// Writes go to the dirty-chunk bitmap only (until a resync).
    Ahead,
    /// A resync copies the dirty chunks (from the `START` that began it
    /// until the secondary applied its span's end).
    Resyncing,
}

impl Mode {
    /// As the status line says it.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Mode::Replicating => "replicating",
            Mode::Ahead => "ahead",
            Mode::Resyncing => "resyncing",
        }
    }

    /// One device's word; an unknown one is taken as `replicating`.
    fn of(word: &str) -> Self {
        match word {
            "ahead" => Mode::Ahead,
            "resyncing" => Mode::Resyncing,
            _ => Mode::Replicating,
        }
    }
}

/// The group's primary devices, as the kernel reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// The kernel's mode (a group has one; lines read while it changes
    /// may differ: `ahead` wins over `resyncing`, which wins over
    /// `replicating`).
    pub(crate) mode: Mode,
    /// The group's device ids, ascending.
    pub(crate) devices: Vec<u32>,
    /// Chunks marked dirty, over the group's devices.
    pub(crate) dirty: u64,
    /// By device: its chunks marked dirty, and its length in sectors.
    pub(crate) sizes: BTreeMap<u32, (u64, u64)>,
    /// Of the running resync, by device: chunks left to copy, and chunks
    /// in it (both 0 when none runs).
    pub(crate) resync: BTreeMap<u32, (u64, u64)>,
    /// Every line had the resync fields (the module can resync).
    pub(crate) can_resync: bool,
}

impl View {
    /// Chunks left to copy, and chunks in the running resync, over the
    /// group's devices.
    pub(crate) fn resync_chunks(&self) -> (u64, u64) {
        self.resync
            .values()
            .fold((0, 0), |(l, t), (dl, dt)| (l + dl, t + dt))
    }

    /// The room a resync needs on the secondary (`ferryd::room::need`):
    /// of the dirty chunks, or of every chunk when `full`, with each
    /// device's chunk size in KiB from `chunk_kib`; `None` when one of
    /// them is not known.
    pub(crate) fn resync_need(&self, chunk_kib: &BTreeMap<u32, u64>, full: bool) -> Option<u64> {
        let mut devs = Vec::new();
        for id in &self.devices {
            let c = chunk_kib.get(id)? << 10;
            let (dirty, sectors) = self.sizes.get(id).copied().unwrap_or_default();
            let chunks = if full {
                ferryd::room::chunks_of(sectors, c)
            } else {
                dirty
            };
            devs.push((chunks, c));
        }
        Some(ferryd::room::need(devs))
    }

    /// The same in bytes, with each device's chunk size in KiB from
    /// `chunk_kib`; `None` when one of them is not known.
    pub(crate) fn resync_bytes(&self, chunk_kib: &BTreeMap<u32, u64>) -> Option<(u64, u64)> {
        let mut b = (0u64, 0u64);
        for (id, (l, t)) in &self.resync {
            let c = chunk_kib.get(id)? << 10;
            b.0 += l * c;
            b.1 += t * c;
        }
        Some(b)
    }
}

/// The view of `group` from status lines; `None` when no line is of a
/// primary device of the group.
pub(crate) fn view(lines: &str, group: &str) -> Option<View> {
    let mut v = View {
        can_resync: true,
        ..View::default()
    };
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
        v.mode = v.mode.max_with(Mode::of(mode));
        let num = |k: usize| w.get(i + k).and_then(|t| t.parse::<u64>().ok());
        let dirty = num(12).unwrap_or(0);
        v.dirty += dirty;
        let resync = num(16).zip(num(17));
        v.can_resync &= resync.is_some();
        if let Ok(id) = id.parse::<u32>() {
            if !v.devices.contains(&id) {
                v.devices.push(id);
            }
            v.resync.insert(id, resync.unwrap_or((0, 0)));
            // `<len>` comes before `ferry`.
            let len = i
                .checked_sub(1)
                .and_then(|k| w[k].parse::<u64>().ok())
                .unwrap_or(0);
            v.sizes.insert(id, (dirty, len));
        }
    }
    v.devices.sort_unstable();
    found.then_some(v)
}

impl Mode {
    /// Of two lines' modes, the group's (see [`View::mode`]).
    fn max_with(self, other: Mode) -> Mode {
        let rank = |m: Mode| match m {
            Mode::Replicating => 0,
            Mode::Resyncing => 1,
            Mode::Ahead => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// The chunk size in KiB of each device of `group`, from the lines of
/// `dmsetup table --target ferry` (`chunk_kb`, 64 when the table does not
/// give it; `device_id`, 0 when it does not).
pub(crate) fn chunk_kib(tables: &str, group: &str) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    for line in tables.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = w.iter().position(|t| *t == "ferry") else {
            continue;
        };
        let opt = |k: &str| w[i..].windows(2).find(|p| p[0] == k).map(|p| p[1]);
        if opt("group") != Some(group) {
            continue;
        }
        let id = opt("device_id").map_or(Some(0), |t| t.parse::<u32>().ok());
        let kib = opt("chunk_kb").map_or(Some(64), |t| t.parse::<u64>().ok());
        if let (Some(id), Some(kib)) = (id, kib) {
            m.insert(id, kib);
        }
    }
    m
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
                mode: Mode::Replicating,
                devices: vec![0, 1],
                dirty: 0,
                sizes: BTreeMap::from([(0, (0, 65536)), (1, (0, 65536))]),
                resync: BTreeMap::from([(0, (0, 0)), (1, (0, 0))]),
                can_resync: false,
            }
        );
        assert!(view(lines, "gx").unwrap().mode == Mode::Ahead);
        assert_eq!(view(lines, "gx").unwrap().dirty, 3);
        assert_eq!(view(lines, "none"), None);
        assert_eq!(view("No devices found\n", "gr"), None);
        // A secondary's line is no primary's.
        assert_eq!(
            view("s0: 0 8 ferry secondary gr 0 data idle 0 0 0 0\n", "gr"),
            None
        );
        let ahead = "p0: 0 65536 ferry primary gr 0 data ahead 9 9 9 3 0 1024 12 2 0 0\n";
        assert!(view(ahead, "gr").unwrap().mode == Mode::Ahead);
    }

    #[test]
    fn a_resync_in_the_lines() {
        let lines = "\
p1: 0 65536 ferry primary gr 1 data resyncing 5 5 5 5 4 1024 40 2 0 0 30 40
p0: 0 65536 ferry primary gr 0 log resyncing 1 1 1 1 4 1024 2 2 0 0 1 2
";
        let v = view(lines, "gr").unwrap();
        assert_eq!(v.mode, Mode::Resyncing);
        assert!(v.can_resync);
        assert_eq!(v.dirty, 42);
        assert_eq!(v.resync_chunks(), (31, 42));
        let kib = BTreeMap::from([(0, 4), (1, 64)]);
        assert_eq!(
            v.resync_bytes(&kib),
            Some((30 * 65536 + 4096, 40 * 65536 + 2 * 4096))
        );
        assert_eq!(v.resync_bytes(&BTreeMap::from([(1, 64)])), None);
        // Done: both 0, back to replicating.
        let done = "p0: 0 8 ferry primary gr 0 data replicating 1 1 1 1 0 1024 0 3 0 0 0 0\n";
        let v = view(done, "gr").unwrap();
        assert_eq!(
            (v.mode, v.resync_chunks(), v.can_resync),
            (Mode::Replicating, (0, 0), true)
        );
        // Lines read while the mode changes: ahead wins, then resyncing.
        let mixed = "\
p0: 0 8 ferry primary gr 0 data resyncing 1 1 1 1 0 1024 5 3 0 0 5 5
p1: 0 8 ferry primary gr 1 data ahead 1 1 1 1 0 1024 5 3 0 0 0 0
p2: 0 8 ferry primary gr 2 data replicating 1 1 1 1 0 1024 0 3 0 0 0 0
";
        assert_eq!(view(mixed, "gr").unwrap().mode, Mode::Ahead);
        let mixed = "\
p0: 0 8 ferry primary gr 0 data replicating 1 1 1 1 0 1024 5 3 0 0 0 0
p1: 0 8 ferry primary gr 1 data resyncing 1 1 1 1 0 1024 5 3 0 0 5 5
";
        assert_eq!(view(mixed, "gr").unwrap().mode, Mode::Resyncing);
        // An old module: no resync fields, 0.
        let old = "p0: 0 8 ferry primary gr 0 data ahead 1 1 1 1 0 1024 5 3 0 0\n";
        let v = view(old, "gr").unwrap();
        assert_eq!((v.resync_chunks(), v.can_resync), ((0, 0), false));
        assert_eq!(Mode::Resyncing.word(), "resyncing");
    }

    /// The room a resync needs: the dirty chunks of each device in its
    /// own chunk size, or all of them for a full copy.
    #[test]
    fn the_need_of_a_resync() {
        let lines = "\
p0: 0 8192 ferry primary gr 0 log ahead 5 5 5 5 4 1024 3 2 0 0 0 0
p1: 0 65536 ferry primary gr 1 data ahead 5 5 5 5 4 1024 512 2 0 0 0 0
";
        let v = view(lines, "gr").unwrap();
        assert_eq!(v.sizes, BTreeMap::from([(0, (3, 8192)), (1, (512, 65536))]));
        let kib = BTreeMap::from([(0, 4), (1, 64)]);
        assert_eq!(
            v.resync_need(&kib, false),
            Some(3 * (4096 + 112) + 512 * ((64 << 10) + 112))
        );
        // Full: 4 MiB in 4 KiB chunks, 32 MiB in 64 KiB ones.
        assert_eq!(
            v.resync_need(&kib, true),
            Some(1024 * (4096 + 112) + 512 * ((64 << 10) + 112))
        );
        // A chunk size not known: no figure.
        assert_eq!(v.resync_need(&BTreeMap::from([(1, 64)]), false), None);
    }

    #[test]
    fn chunk_sizes_from_the_tables() {
        let tables = "\
p0: 0 65536 ferry 253:0 253:3 6 group gr device_id 0 role log
p1: 0 65536 ferry 253:1 253:4 6 group gr device_id 1 chunk_kb 4
px: 0 65536 ferry 253:5 253:6 2 group gx
pt: 0 524288 ferry 254:0 254:32 2 data_offset 2048
";
        assert_eq!(chunk_kib(tables, "gr"), BTreeMap::from([(0, 64), (1, 4)]));
        assert_eq!(chunk_kib(tables, "gx"), BTreeMap::from([(0, 64)]));
        assert!(chunk_kib(tables, "none").is_empty());
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
