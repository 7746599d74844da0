//! Leaving `ahead`: the resync.  Writing `START` to the character device
//! while the group is `ahead` makes the kernel copy every dirty chunk to
//! the secondary as a resync span (its records flagged `RESYNC`, between
//! markers flagged `RESYNC_BEGIN` and `RESYNC_END`); the chunks' bits are
//! cleared once the secondary has applied the span (`APPLIED`, which the
//! acknowledgements already carry).  The group is `resyncing` meanwhile,
//! and `replicating` after.
//!
//! With `resync = "auto"` (the default) `ferryd` writes `START` itself
//! once the group is `ahead` and every stream is connected ([`next`]
//! decides, each [`TICK`]); a refusal is logged once and tried again each
//! [`RETRY`], but `EOPNOTSUPP` (a member came back unclean: no resync can
//! continue its stream), which is not tried again.  `ferryctl resync`
//! writes it in either mode (`crate::Control::resync`).  Neither does when
//! `ferryd` itself stopped replication because records were lost from its
//! disk spool: those writes are not in the dirty bitmap, so a resync would
//! not bring them to the secondary.

use super::*;
use ferryd::config::Resync;
use ferryd::ctl::Started;

use crate::kernel::Mode;

/// How often the automatic resync looks at the kernel's mode.
pub(super) const TICK: Duration = Duration::from_secs(1);
/// How long after a `START` (refused, or accepted and the group `ahead`
/// again) the automatic resync writes the next.
pub(super) const RETRY: Duration = Duration::from_secs(5);

/// A `START` written, and how the kernel took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Attempt {
    pub(super) at: Instant,
    /// The errno that refused it; `None`: accepted.
    pub(super) errno: Option<i32>,
}

/// What the resync does about the group, from [`next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// The group is not `ahead`: nothing to start.
    NotAhead,
    /// Write `START` now.
    Start,
    /// Records were lost from the disk spool: no resync covers them.
    Lost,
    /// The kernel module has no resync (its status lines lack the resync
    /// fields).
    NoResync,
    /// `START` was refused with `EOPNOTSUPP`: not tried again
    /// automatically.
    Cannot,
    /// `resync = "manual"`: `ferryctl resync` starts it.
    Manual,
    /// Waiting for every stream to be connected.
    Link,
    /// The last `START` was refused with this errno (or accepted, `None`,
    /// and the group went `ahead` again): the next one after [`RETRY`].
    Retry(Option<i32>),
}

/// What the resync does now: the kernel's `mode` (and whether its
/// module `can_resync`), whether every stream of the group is connected,
/// the configuration's `resync`, whether records were `lost` from the
/// disk spool, and the `last` `START` written (and how it was taken).
pub(super) fn next(
    mode: Mode,
    can_resync: bool,
    all_connected: bool,
    resync: Resync,
    lost: bool,
    last: Option<Attempt>,
    now: Instant,
) -> Next {
    if mode != Mode::Ahead {
        return Next::NotAhead;
    }
    if lost {
        return Next::Lost;
    }
    if !can_resync {
        return Next::NoResync;
    }
    if last.is_some_and(|a| a.errno == Some(libc::EOPNOTSUPP)) {
        return Next::Cannot;
    }
    if resync == Resync::Manual {
        return Next::Manual;
    }
    if !all_connected {
        return Next::Link;
    }
    match last {
        Some(a) if now.saturating_duration_since(a.at) < RETRY => Next::Retry(a.errno),
        _ => Next::Start,
    }
}

/// What `errno` refusing `START` means.
pub(super) fn refused(errno: i32) -> String {
    match errno {
        libc::EOPNOTSUPP => "a member of the group came back from an unclean shutdown: \
            the numbers its stream used are unknown, so a resync cannot continue it \
            (primary crash recovery is not in this version)"
            .into(),
        libc::ENOSPC => "no room in the kernel's spool for the resync's marker now: \
            to be tried again later"
            .into(),
        libc::EINVAL => "the kernel refuses a resync of this group: a dirty chunk is more \
            than a quarter of the kernel's spool (its copy could never find room; raise \
            spool_mb or lower chunk_kb), or flags it does not know"
            .into(),
        e => format!("{}", std::io::Error::from_raw_os_error(e)),
    }
}

/// The status's words on `next`: what will take the group out of
/// `ahead`, or why nothing will; `None` when it is not `ahead`.
pub(super) fn note(next: Next, group: &str) -> Option<String> {
    Some(match next {
        Next::NotAhead => return None,
        Next::Start => "automatic resync: starting".into(),
        Next::Lost => "no resync: records were lost from the disk spool, and a resync would \
            not cover them (they are not in the dirty bitmap)"
            .into(),
        Next::NoResync => "no resync: the kernel module has none (its status has no resync \
            fields)"
            .into(),
        Next::Cannot => format!("no resync can run: {}", refused(libc::EOPNOTSUPP)),
        Next::Manual => format!("manual resync (resync = \"manual\"): ferryctl resync {group}"),
        Next::Link => "automatic resync: waiting for every stream to connect".into(),
        Next::Retry(None) => format!(
            "automatic resync: ahead again after a resync started, started again within {} s",
            RETRY.as_secs()
        ),
        Next::Retry(Some(e)) => format!(
            "automatic resync: START refused ({}), tried again every {} s",
            refused(e),
            RETRY.as_secs()
        ),
    })
}

/// What the resync knows between ticks.
#[derive(Default)]
pub(super) struct ResyncState {
    /// The last `START` written.
    pub(super) last: Option<Attempt>,
    /// The errno of the last refusal logged (a refusal is logged once
    /// while it repeats).
    logged: Option<i32>,
    /// What the log last said of the group being `ahead`.
    said: Option<Next>,
}

impl Shared {
    /// Whether every stream of the group the kernel names is connected to
    /// the secondary (its handshake done).
    pub(super) fn all_connected(&self, view: &kernel::View) -> bool {
        let devs = lock(&self.devs);
        !view.devices.is_empty()
            && view
                .devices
                .iter()
                .all(|id| devs.get(id).is_some_and(|d| lock(&d.q).connected))
    }

    /// Whether a stream misses records nothing can give (replication
    /// stopped: see `lost`).
    pub(super) fn any_lost(&self) -> bool {
        lock(&self.devs).values().any(|d| lock(&d.q).lost)
    }

    /// What the resync does about the group now (see [`next`]).
    pub(super) fn resync_next(&self, view: &kernel::View, now: Instant) -> Next {
        let last = lock(&self.resync).last;
        next(
            view.mode,
            view.can_resync,
            self.all_connected(view),
            self.cfg.resync,
            self.any_lost(),
            last,
            now,
        )
    }

    /// Writes `START`; the errno that refused it, if one did.
    fn write_start(&self) -> std::result::Result<(), i32> {
        let mut b = [0u8; 16];
        let n = Command::Start { flags: 0 }
            .encode(&mut b)
            .map_err(|_| libc::EINVAL)?;
        let r = lock(&self.ctl).write_all(&b[..n]);
        // The kernel's mode changes with it: read it again next time.
        self.kernel.forget();
        r.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// Writes `START` (`manual`: for `ferryctl resync`) at `now`, records
    /// and logs how the kernel took it; the errno that refused it, if one
    /// did.
    pub(super) fn start_resync(
        &self,
        manual: bool,
        dirty: u64,
        now: Instant,
    ) -> std::result::Result<(), i32> {
        let r = self.write_start();
        let mut st = lock(&self.resync);
        st.last = Some(Attempt {
            at: now,
            errno: r.err(),
        });
        let by = if manual {
            "ferryctl resync"
        } else {
            "automatic"
        };
        match r {
            Ok(()) => {
                st.logged = None;
                info!(dirty_chunks = dirty, "resync ({by}): START accepted");
            }
            Err(e) if st.logged != Some(e) => {
                st.logged = Some(e);
                let then = match (manual, e) {
                    (_, libc::EOPNOTSUPP) => "; not tried again automatically".to_string(),
                    (true, _) => String::new(),
                    (false, _) => format!("; tried again every {} s", RETRY.as_secs()),
                };
                warn!(
                    "resync ({by}): the kernel refused START: {}{then}",
                    refused(e)
                );
            }
            Err(_) => {}
        }
        r
    }

    /// One look of the automatic resync: writes `START` when [`next`]
    /// says so; logs once what keeps the group `ahead`.
    pub(super) fn resync_tick(&self, now: Instant) {
        let Some(view) = self.kernel_view() else {
            return;
        };
        let n = self.resync_next(&view, now);
        match n {
            Next::NotAhead => *lock(&self.resync) = ResyncState::default(),
            Next::Start => {
                let _ = self.start_resync(false, view.dirty, now);
            }
            Next::Retry(_) | Next::Cannot => {}
            Next::Lost | Next::NoResync | Next::Manual | Next::Link => {
                let mut st = lock(&self.resync);
                if st.said != Some(n) {
                    st.said = Some(n);
                    drop(st);
                    let why = note(n, &self.cfg.group).unwrap_or_default();
                    if n == Next::Lost {
                        warn!(dirty_chunks = view.dirty, "the group is ahead: {why}");
                    } else {
                        info!(dirty_chunks = view.dirty, "the group is ahead: {why}");
                    }
                }
            }
        }
    }

    /// `ferryctl resync`: writes `START` whatever `resync` says; refused
    /// when records were lost from the disk spool (no resync covers them).
    pub(super) fn resync_now(&self) -> std::result::Result<Started, String> {
        let view = self.kernel_view();
        if self.any_lost() {
            return Err(note(Next::Lost, &self.cfg.group).unwrap_or_default());
        }
        let (was, dirty) = view
            .as_ref()
            .map_or(("unknown", 0), |v| (v.mode.word(), v.dirty));
        self.start_resync(true, dirty, Instant::now())
            .map_err(|e| format!("the kernel refused START: {}", refused(e)))?;
        Ok(Started {
            was: was.to_string(),
            dirty_chunks: dirty,
        })
    }
}

/// The automatic resync's loop: a [`Shared::resync_tick`] each [`TICK`]
/// until the stop.
pub(super) async fn resync_loop(s: Arc<Shared>) {
    let mut stop = s.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        let s2 = s.clone();
        // dmsetup runs in it.
        let _ = tokio::task::spawn_blocking(move || s2.resync_tick(Instant::now())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_to_start() {
        let t0 = Instant::now();
        let at = |secs: u64, errno| {
            Some(Attempt { at: t0, errno }).map(|a| (a, t0 + Duration::from_secs(secs)))
        };
        let (a, m) = (Resync::Auto, Resync::Manual);
        let n = |mode, conn, r, lost, last: Option<(Attempt, Instant)>| {
            next(
                mode,
                true,
                conn,
                r,
                lost,
                last.map(|(a, _)| a),
                last.map_or(t0, |(_, now)| now),
            )
        };
        // Ahead, every stream connected, auto, nothing tried: start.
        assert_eq!(n(Mode::Ahead, true, a, false, None), Next::Start);
        // Not ahead: nothing, whatever else.
        for mode in [Mode::Replicating, Mode::Resyncing] {
            assert_eq!(n(mode, true, a, false, None), Next::NotAhead);
            assert_eq!(
                n(mode, false, m, true, at(0, Some(libc::EOPNOTSUPP))),
                Next::NotAhead
            );
        }
        // A stream not connected: waits for it.
        assert_eq!(n(Mode::Ahead, false, a, false, None), Next::Link);
        // Manual: never on its own.
        assert_eq!(n(Mode::Ahead, true, m, false, None), Next::Manual);
        // Records lost from the disk spool: never, in either mode.
        assert_eq!(n(Mode::Ahead, true, a, true, None), Next::Lost);
        assert_eq!(n(Mode::Ahead, true, m, true, None), Next::Lost);
        // Refused for room: again after RETRY, not before.
        let enospc = Some(libc::ENOSPC);
        assert_eq!(
            n(Mode::Ahead, true, a, false, at(1, enospc)),
            Next::Retry(enospc)
        );
        assert_eq!(
            n(Mode::Ahead, true, a, false, at(4, enospc)),
            Next::Retry(enospc)
        );
        assert_eq!(n(Mode::Ahead, true, a, false, at(5, enospc)), Next::Start);
        assert_eq!(
            n(Mode::Ahead, true, a, false, at(60, Some(libc::EINVAL))),
            Next::Start
        );
        // The link first: a refusal is not retried while a stream is down.
        assert_eq!(n(Mode::Ahead, false, a, false, at(60, enospc)), Next::Link);
        // Accepted, and ahead again (or the kernel's lines not yet read
        // again): not at once.
        assert_eq!(
            n(Mode::Ahead, true, a, false, at(0, None)),
            Next::Retry(None)
        );
        assert_eq!(n(Mode::Ahead, true, a, false, at(5, None)), Next::Start);
        // EOPNOTSUPP: never again automatically.
        let unclean = Some(libc::EOPNOTSUPP);
        assert_eq!(
            n(Mode::Ahead, true, a, false, at(3600, unclean)),
            Next::Cannot
        );
        assert_eq!(
            n(Mode::Ahead, true, m, false, at(3600, unclean)),
            Next::Cannot
        );
        // A module without resync.
        assert_eq!(
            next(Mode::Ahead, false, true, a, false, None, t0),
            Next::NoResync
        );
    }

    #[test]
    fn refusals_in_words() {
        assert!(refused(libc::EOPNOTSUPP).contains("unclean shutdown"));
        assert!(refused(libc::EOPNOTSUPP).contains("primary crash recovery is not in this version"));
        assert!(refused(libc::ENOSPC).contains("no room in the kernel's spool"));
        assert!(refused(libc::EINVAL).contains("quarter of the kernel's spool"));
        assert!(refused(libc::EIO).contains("Input/output error"));
        assert_eq!(note(Next::NotAhead, "gr"), None);
        assert_eq!(
            note(Next::Manual, "gr").unwrap(),
            "manual resync (resync = \"manual\"): ferryctl resync gr"
        );
        assert_eq!(
            note(Next::Link, "gr").unwrap(),
            "automatic resync: waiting for every stream to connect"
        );
        assert!(note(Next::Lost, "gr")
            .unwrap()
            .contains("not in the dirty bitmap"));
        assert!(note(Next::Retry(Some(libc::ENOSPC)), "gr")
            .unwrap()
            .contains("tried again every 5 s"));
    }
}
