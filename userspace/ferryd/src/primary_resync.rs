//! Leaving `ahead`, and the first copy: the resync.  Writing `START` to
//! the character device while the group is `ahead` (or `replicating` with
//! dirty chunks: bits the meta device held when a member was loaded,
//! records that never reached the secondary) makes the kernel copy every
//! dirty chunk to the secondary as a resync span (its records flagged
//! `RESYNC`, between markers flagged `RESYNC_BEGIN` and `RESYNC_END`); the
//! chunks' bits are cleared once the secondary has applied the span
//! (`APPLIED`, which the acknowledgements already carry).  The group is
//! `resyncing` meanwhile, and `replicating` after.  `START` with
//! `FULL_RESYNC`, in any mode, first marks every chunk of every member
//! dirty: a full copy.
//!
//! With `resync = "auto"` (the default) `ferryd` writes `START` itself
//! once every stream is connected ([`next`] decides, each [`TICK`]):
//!
//! * with `FULL_RESYNC` when `initial_sync = "full"` (the default) and
//!   every stream's secondary held nothing of it when it was welcomed
//!   ([`holds_nothing`]): a new secondary gets a full copy.  Once per
//!   process: a full `START` accepted (or refused with `EOPNOTSUPP`) is not
//!   written again automatically;
//! * otherwise when the group is `ahead`;
//! * otherwise when it is `replicating` with dirty chunks.
//!
//! Before it writes `START` (automatic or `ferryctl resync`, full or
//! not), `ferryd` asks the secondary whether its `log_dir` has room for
//! the resync's copy (`ferryd::room`, `primary_room.rs`): the secondary
//! stages a span whole until its end.  On a no (or no answer) `START` is
//! not written: the group stays as it is, the log says so once with the
//! secondary's figures, the status says why the resync waits, and the
//! question is asked again each [`RETRY`].
//!
//! A refusal is logged once and tried again each [`RETRY`], but
//! `EOPNOTSUPP` (a member came back unclean: no resync can continue its
//! stream), which is not tried again.  With `resync = "manual"` nothing is
//! written automatically, a full copy included (the log and the status
//! say that one is needed); `ferryctl resync [--full]` writes `START` in
//! either mode (`crate::Control::resync`).  Neither does when `ferryd`
//! itself stopped replication because records were lost from its disk
//! spool: those writes are not in the dirty bitmap, and the stream is
//! stopped.

use super::room_side::NotStarted;
use super::*;
use ferry_core::command::start_flags;
use ferryd::config::{InitialSync, Resync};
use ferryd::ctl::Started;
use ferryd::room::NoRoom;

use crate::kernel::Mode;

/// How often the automatic resync looks at the kernel's mode.
pub(super) const TICK: Duration = Duration::from_secs(1);
/// How long after a `START` (refused, or accepted and the group `ahead`
/// again) the automatic resync writes the next.
pub(super) const RETRY: Duration = Duration::from_secs(5);

/// Whether the secondary holds nothing of a stream, from its `Welcome`:
/// `next` (the first `dev_seq` it does not hold) is 1 and `applied` (the
/// last interval applied to its devices) is 0.  A secondary with an empty
/// remote log and a new meta device answers exactly this (its window
/// starts at `dev_seq` 1 with no record in it, and its kernel's mark says
/// no interval applied); one that ever stored a record of the stream, or
/// applied an interval of the group, answers more.
pub(super) fn holds_nothing(next: u64, applied: u64) -> bool {
    next == 1 && applied == 0
}

/// A `START` written, and how the kernel took it; or one held back by
/// the secondary's answer of room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Attempt {
    pub(super) at: Instant,
    /// The errno that refused it; `None`: accepted (or not written).
    pub(super) errno: Option<i32>,
    /// Not written: why (`None`: written).
    pub(super) held: Option<Held>,
    /// With `FULL_RESYNC`.
    pub(super) full: bool,
}

/// Why a `START` was not written: the secondary's answer of room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// No room in its `log_dir` for the resync.
    NoRoom,
    /// No answer (no stream connected, the link closed, none in time).
    NoAnswer,
}

/// Why the automatic resync writes `START`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Why {
    /// The first copy to a secondary that holds nothing: `FULL_RESYNC`.
    Full,
    /// The group is `ahead`.
    Ahead,
    /// The group is `replicating` with dirty chunks.
    Dirty,
}

impl Why {
    /// In the log.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Why::Full => "initial full copy: the secondary holds nothing of the group",
            Why::Ahead => "the group is ahead",
            Why::Dirty => "dirty chunks while replicating",
        }
    }
}

/// What the resync does about the group, from [`next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// No full copy due, not `ahead`, no dirty chunk while replicating:
    /// nothing to start.
    Nothing,
    /// Write `START` now (with `FULL_RESYNC` for [`Why::Full`]).
    Start(Why),
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
    /// `resync = "manual"` and a full copy is due: `ferryctl resync
    /// --full` starts it.
    ManualFull,
    /// Waiting for every stream to be connected (to start this).
    Link(Why),
    /// The room the resync needs on the secondary is not known: a
    /// device's chunk size is not (the kernel's tables).
    Unsized,
    /// The last `START` was refused with this errno (or accepted, `None`,
    /// and the group needs one again): the next one after [`RETRY`].
    Retry(Option<i32>),
    /// The last `START` was not written, the secondary's answer of room
    /// held it: asked again after [`RETRY`].
    Held(Held),
}

/// What [`next`] decides from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Facts {
    /// The kernel's mode.
    pub(super) mode: Mode,
    /// Whether its module can resync (its lines have the resync fields).
    pub(super) can_resync: bool,
    /// Its dirty chunks, over the group's devices.
    pub(super) dirty: u64,
    /// Every stream of the group is connected.
    pub(super) all_connected: bool,
    /// The room a resync needs on the secondary is known (every device's
    /// chunk size).
    pub(super) sized: bool,
    /// The configuration's `resync` and `initial_sync`.
    pub(super) resync: Resync,
    pub(super) initial_sync: InitialSync,
    /// Every stream's secondary held nothing of it at a welcome of this
    /// process ([`holds_nothing`]).
    pub(super) all_fresh: bool,
    /// A full `START` was accepted by this process (or refused with
    /// `EOPNOTSUPP`): none is written again automatically.
    pub(super) full_done: bool,
    /// Records were lost from the disk spool.
    pub(super) lost: bool,
}

/// What the resync does now, from the `facts` and the `last` `START`
/// written (and how it was taken).
pub(super) fn next(f: &Facts, last: Option<Attempt>, now: Instant) -> Next {
    let why = if f.initial_sync == InitialSync::Full && f.all_fresh && !f.full_done {
        Why::Full
    } else if f.mode == Mode::Ahead {
        Why::Ahead
    } else if f.mode == Mode::Replicating && f.dirty > 0 {
        Why::Dirty
    } else {
        return Next::Nothing;
    };
    if f.lost {
        return Next::Lost;
    }
    if !f.can_resync {
        return Next::NoResync;
    }
    if last.is_some_and(|a| a.errno == Some(libc::EOPNOTSUPP) && !a.full) {
        return Next::Cannot;
    }
    if f.resync == Resync::Manual {
        return if why == Why::Full {
            Next::ManualFull
        } else {
            Next::Manual
        };
    }
    if !f.all_connected {
        return Next::Link(why);
    }
    if !f.sized {
        return Next::Unsized;
    }
    match last {
        Some(a) if now.saturating_duration_since(a.at) < RETRY => match a.held {
            Some(h) => Next::Held(h),
            None => Next::Retry(a.errno),
        },
        _ => Next::Start(why),
    }
}

/// A `START` to write: who asks (`automatic`, or `ferryctl resync`), why,
/// what it copies, and the room it needs on the secondary (bytes).
#[derive(Clone, Copy, Debug)]
pub(super) struct StartReq<'a> {
    pub(super) by: &'a str,
    pub(super) reason: &'a str,
    pub(super) full: bool,
    pub(super) initial: bool,
    pub(super) dirty: u64,
    pub(super) need: u64,
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

/// The status's words on `next`: what will start a resync, or why none
/// will; `None` when none is needed.
pub(super) fn note(next: Next, group: &str) -> Option<String> {
    Some(match next {
        Next::Nothing => return None,
        Next::Start(Why::Full) => "automatic full copy: starting".into(),
        Next::Start(_) => "automatic resync: starting".into(),
        Next::Lost => "no resync: records were lost from the disk spool, and a resync would \
            not cover them (they are not in the dirty bitmap)"
            .into(),
        Next::NoResync => "no resync: the kernel module has none (its status has no resync \
            fields)"
            .into(),
        Next::Cannot => format!("no resync can run: {}", refused(libc::EOPNOTSUPP)),
        Next::Manual => format!("manual resync (resync = \"manual\"): ferryctl resync {group}"),
        Next::ManualFull => format!(
            "a full copy is needed (the secondary holds nothing of the group, initial_sync = \
             \"full\"; resync = \"manual\"): ferryctl resync --full {group}"
        ),
        Next::Link(Why::Full) => {
            "automatic full copy (the secondary holds nothing of the group): waiting for every \
             stream to connect"
                .into()
        }
        Next::Link(_) => "automatic resync: waiting for every stream to connect".into(),
        Next::Unsized => "automatic resync: the room it needs on the secondary is not known (a \
            device's chunk size is not in the kernel's tables: dmsetup table --target ferry)"
            .into(),
        Next::Held(Held::NoRoom) => format!(
            "automatic resync: refused by the secondary, no room in its log_dir; asked again \
             every {} s",
            RETRY.as_secs()
        ),
        Next::Held(Held::NoAnswer) => format!(
            "automatic resync: the secondary did not answer whether its log_dir has room for \
             it; asked again every {} s",
            RETRY.as_secs()
        ),
        Next::Retry(None) => format!(
            "automatic resync: a resync is needed again after one started, started again within {} s",
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
    /// The last `START` written (or held back).
    pub(super) last: Option<Attempt>,
    /// The errno of the last refusal logged (a refusal is logged once
    /// while it repeats).
    pub(super) logged: Option<i32>,
    /// The last hold logged (logged once while it repeats).
    pub(super) logged_held: Option<Held>,
    /// The words of the hold in force, and the secondary's figures when
    /// it said no room.
    pub(super) held_words: Option<String>,
    pub(super) no_room: Option<NoRoom>,
    /// Resyncs the secondary refused for lack of room.
    pub(super) room_refusals: u64,
    /// What the log last said of the group needing a resync.
    said: Option<Next>,
    /// A full `START` was accepted by this process, or refused with
    /// `EOPNOTSUPP`: the automatic one is not written again.  Kept when
    /// the rest is forgotten.
    pub(super) full_done: bool,
    /// A full copy accepted by this process is not done: the group has
    /// not been `replicating` without dirty chunks since (the status's
    /// `resync_full`).
    pub(super) full_copy: bool,
}

impl ResyncState {
    /// Nothing to start: the last `START` and what was logged forgotten
    /// (not what is known of the full copy).
    fn forget(&mut self) {
        self.last = None;
        self.logged = None;
        self.said = None;
        self.logged_held = None;
        self.held_words = None;
        self.no_room = None;
    }
}

impl Shared {
    /// Whether every stream of the group the kernel names is connected to
    /// the secondary (its handshake done).
    pub(super) fn all_connected(&self, view: &kernel::View) -> bool {
        self.all_streams(view, |q| q.connected)
    }

    /// Whether every stream of the group the kernel names was welcomed by
    /// a secondary that held nothing of it ([`holds_nothing`]).
    pub(super) fn all_fresh(&self, view: &kernel::View) -> bool {
        self.all_streams(view, |q| q.fresh)
    }

    fn all_streams(&self, view: &kernel::View, f: impl Fn(&DevQ) -> bool) -> bool {
        let devs = lock(&self.devs);
        !view.devices.is_empty()
            && view
                .devices
                .iter()
                .all(|id| devs.get(id).is_some_and(|d| f(&lock(&d.q))))
    }

    /// Whether a stream misses records nothing can give (replication
    /// stopped: see `lost`).
    pub(super) fn any_lost(&self) -> bool {
        lock(&self.devs).values().any(|d| lock(&d.q).lost)
    }

    /// What the resync does about the group now (see [`next`]).
    pub(super) fn resync_next(&self, view: &kernel::View, now: Instant) -> Next {
        let (last, full_done) = {
            let st = lock(&self.resync);
            (st.last, st.full_done)
        };
        let all_fresh = self.all_fresh(view);
        // (The chunk sizes are read only when a resync may be needed.)
        let wanted = view.mode == Mode::Ahead
            || view.dirty > 0
            || (self.cfg.initial_sync == InitialSync::Full && all_fresh && !full_done);
        let facts = Facts {
            mode: view.mode,
            can_resync: view.can_resync,
            dirty: view.dirty,
            all_connected: self.all_connected(view),
            sized: wanted && self.need_of(view, false).is_ok(),
            resync: self.cfg.resync,
            initial_sync: self.cfg.initial_sync,
            all_fresh,
            full_done,
            lost: self.any_lost(),
        };
        next(&facts, last, now)
    }

    /// The status's words on `n` ([`note`]), with the secondary's figures
    /// when its answer of room holds the resync: also once the retry is
    /// due (`Start`), until the secondary answers again, so that the
    /// status does not hide a refusal that goes on.
    pub(super) fn resync_note(&self, n: Next) -> Option<String> {
        if let Next::Held(_) | Next::Start(_) = n {
            if let Some(w) = lock(&self.resync).held_words.clone() {
                return Some(w);
            }
        }
        note(n, &self.cfg.group)
    }

    /// The room a resync of the group as `view` shows it (`full`: of
    /// every chunk) needs on the secondary (`ferryd::room::need`); why it
    /// is not known otherwise.
    pub(super) fn need_of(
        &self,
        view: &kernel::View,
        full: bool,
    ) -> std::result::Result<u64, String> {
        let tables = self.kernel.tables().map_err(|e| {
            format!("the devices' chunk sizes cannot be read (dmsetup table: {e:#})")
        })?;
        view.resync_need(&kernel::chunk_kib(&tables, &self.cfg.group), full)
            .ok_or_else(|| "a device's chunk size is not in the kernel's tables".to_string())
    }

    /// Writes `START` (with `FULL_RESYNC` when `full`, and `INITIAL` too
    /// when `initial`: the secondary held nothing, so its devices are not
    /// the primary's); the errno that refused it, if one did.
    fn write_start(&self, full: bool, initial: bool) -> std::result::Result<(), i32> {
        let mut b = [0u8; 16];
        let flags = match (full, initial) {
            (true, true) => start_flags::FULL_RESYNC | start_flags::INITIAL,
            (true, false) => start_flags::FULL_RESYNC,
            (false, _) => 0,
        };
        let n = Command::Start { flags }
            .encode(&mut b)
            .map_err(|_| libc::EINVAL)?;
        let r = lock(&self.ctl).write_all(&b[..n]);
        // The kernel's mode changes with it: read it again next time.
        self.kernel.forget();
        r.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// Writes `START` (`full`: with `FULL_RESYNC`; `initial`: the initial
    /// copy) at `now` for `by` (`automatic`, or `ferryctl resync`) and
    /// `reason`, once the secondary said it has room for `need` bytes;
    /// records and logs how the kernel took it; the errno that refused
    /// it, if one did.
    pub(super) fn start_resync(
        &self,
        req: &StartReq<'_>,
        now: Instant,
    ) -> std::result::Result<(), i32> {
        let StartReq {
            by,
            reason,
            full,
            initial,
            dirty,
            need,
        } = *req;
        let r = self.write_start(full, initial);
        let mut st = lock(&self.resync);
        st.last = Some(Attempt {
            at: now,
            errno: r.err(),
            held: None,
            full,
        });
        st.logged_held = None;
        st.held_words = None;
        st.no_room = None;
        let manual = by != "automatic";
        if full && matches!(r, Ok(()) | Err(libc::EOPNOTSUPP)) {
            st.full_done = true;
        }
        match r {
            Ok(()) => {
                st.logged = None;
                st.full_copy |= full;
                info!(
                    dirty_chunks = dirty,
                    full,
                    room_needed = need,
                    "resync ({by}, {reason}): START accepted"
                );
            }
            Err(e) if st.logged != Some(e) => {
                st.logged = Some(e);
                let then = match (manual, e) {
                    (_, libc::EOPNOTSUPP) => "; not tried again automatically".to_string(),
                    (true, _) => String::new(),
                    (false, _) => format!("; tried again every {} s", RETRY.as_secs()),
                };
                warn!(
                    full,
                    "resync ({by}, {reason}): the kernel refused START: {}{then}",
                    refused(e)
                );
            }
            Err(_) => {}
        }
        r
    }

    /// One look of the automatic resync (blocking: the kernel's lines):
    /// the `START` to write when [`next`] says so, once the secondary has
    /// room ([`Shared::resync_go`]); logs once what keeps it from starting
    /// one that is needed.
    pub(super) fn resync_look(&self, now: Instant) -> Option<Go> {
        let view = self.kernel_view()?;
        if view.mode == Mode::Replicating && view.dirty == 0 {
            lock(&self.resync).full_copy = false;
        }
        let n = self.resync_next(&view, now);
        match n {
            Next::Nothing => lock(&self.resync).forget(),
            Next::Start(why) => {
                let full = why == Why::Full;
                match self.need_of(&view, full) {
                    Ok(need) => {
                        return Some(Go {
                            why,
                            full,
                            initial: full && self.all_fresh(&view),
                            dirty: view.dirty,
                            need,
                        })
                    }
                    // (Known a moment ago: the next look says.)
                    Err(e) => warn!("automatic resync: {e}"),
                }
            }
            Next::Retry(_) | Next::Cannot | Next::Held(_) => {}
            Next::Lost
            | Next::NoResync
            | Next::Manual
            | Next::ManualFull
            | Next::Link(_)
            | Next::Unsized => {
                let mut st = lock(&self.resync);
                if st.said != Some(n) {
                    st.said = Some(n);
                    drop(st);
                    let why = note(n, &self.cfg.group).unwrap_or_default();
                    let mode = view.mode.word();
                    if n == Next::Lost {
                        warn!(dirty_chunks = view.dirty, "the group is {mode}: {why}");
                    } else {
                        info!(dirty_chunks = view.dirty, "the group is {mode}: {why}");
                    }
                }
            }
        }
        None
    }

    /// The automatic `START` of `go` at `now`, once the secondary has room.
    pub(super) async fn resync_go(&self, go: Go, now: Instant) {
        let req = StartReq {
            by: "automatic",
            reason: go.why.reason(),
            full: go.full,
            initial: go.initial,
            dirty: go.dirty,
            need: go.need,
        };
        let _ = self.room_then_start(&req, now).await;
    }

    /// A look and, when it says so, the `START` (the tests' tick).
    #[cfg(test)]
    pub(super) async fn resync_tick(&self, now: Instant) {
        if let Some(go) = self.resync_look(now) {
            self.resync_go(go, now).await;
        }
    }

    /// `ferryctl resync [--full]`: writes `START` whatever `resync` says,
    /// once the secondary said it has room when it begins a resync (the
    /// group `ahead`, dirty chunks while `replicating`, or `full`);
    /// refused when records were lost from the disk spool (no resync
    /// covers them), or when the room it needs is not known.
    pub(super) async fn resync_now(&self, full: bool) -> std::result::Result<Started, String> {
        if self.any_lost() {
            return Err(note(Next::Lost, &self.cfg.group).unwrap_or_default());
        }
        let Some(view) = self.kernel_view() else {
            return Err(
                "the kernel's status cannot be read (see ferryd's log): the room the \
                 resync needs on the secondary is not known; START not written"
                    .into(),
            );
        };
        let (was, dirty) = (view.mode.word(), view.dirty);
        let reason = if full {
            "full copy".to_string()
        } else {
            format!("the group was {was}")
        };
        let begins =
            full || view.mode == Mode::Ahead || (view.mode == Mode::Replicating && view.dirty > 0);
        // A full copy is the initial one when every stream's secondary held
        // nothing at its welcome ([`holds_nothing`]); over a secondary that
        // holds something, it keeps its consistent point.
        let initial = full && self.all_fresh(&view);
        let by = "ferryctl resync";
        let now = Instant::now();
        let mut req = StartReq {
            by,
            reason: &reason,
            full,
            initial,
            dirty,
            need: 0,
        };
        let r = if begins {
            req.need = self
                .need_of(&view, full)
                .map_err(|e| format!("the room the resync needs on the secondary is not known: {e}; START not written"))?;
            self.room_then_start(&req, now).await
        } else {
            // Nothing to copy: START changes nothing, there is nothing to
            // ask.
            self.start_resync(&req, now).map_err(NotStarted::Kernel)
        };
        r.map_err(|e| match e {
            NotStarted::Kernel(e) => format!("the kernel refused START: {}", refused(e)),
            NotStarted::Held(words) => words,
        })?;
        Ok(Started {
            was: was.to_string(),
            dirty_chunks: dirty,
            full,
        })
    }
}

/// A `START` the automatic resync is to write, once the secondary has
/// room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Go {
    pub(super) why: Why,
    pub(super) full: bool,
    /// The initial copy (`INITIAL`): every stream's secondary held nothing.
    pub(super) initial: bool,
    pub(super) dirty: u64,
    /// The room it needs on the secondary, bytes.
    pub(super) need: u64,
}

/// The automatic resync's loop: a look ([`Shared::resync_look`]) each
/// [`TICK`] until the stop, and the `START` it says.
pub(super) async fn resync_loop(s: Arc<Shared>) {
    let mut stop = s.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        let (s2, now) = (s.clone(), Instant::now());
        // dmsetup runs in it.
        let go = tokio::task::spawn_blocking(move || s2.resync_look(now)).await;
        if let Ok(Some(go)) = go {
            tokio::select! {
                _ = s.resync_go(go, now) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    }
}

#[cfg(test)]
#[path = "primary_resync_tests.rs"]
mod tests;
