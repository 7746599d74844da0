//! A model of two sites that run the generation rules, explored over
//! every sequence of events up to a bounded length, with an oracle that
//! knows what each site's data hold.
//!
//! Data are sets of writes (a bit each).  A write is *protected* when its
//! site wrote it while its peer was not connected and following it: such
//! a write may be discarded only by an explicit resolution.  A promotion
//! counts as a protected write (the promoted site starts a branch of its
//! own).  A write made while the peer follows is not protected: if the
//! peer is promoted before it has it, it is lost in the failover, as
//! asynchronous replication loses it.  Each site also has its bitmap (the
//! writes not acknowledged by the peer) and, as a secondary, the records
//! it holds but has not applied.
//!
//! At every connection both sites decide; the decisions must be mirror
//! images, and:
//!
//! * continue: the secondary holds nothing the primary lacks, and what it
//!   lacks is marked at the primary or held by it;
//! * sync: the target holds no protected write the source lacks, and a
//!   copy of the marked chunks covers every difference;
//! * split brain: both hold protected writes the other lacks (no false
//!   refusal), and a resolution from the marked chunks would cover every
//!   difference;
//! * unrelated: never, between two sites that started together.

use super::*;

/// Events explored, at most.
const DEPTH: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Primary,
    Secondary,
}

#[derive(Clone, Copy, Debug)]
struct Site {
    gens: Generations,
    role: Role,
    view: PeerView,
    /// Writes the image holds.
    data: u64,
    /// Writes held in the remote log (a secondary), applied or not.
    held: u64,
    /// Writes marked in the bitmap.
    dirty: u64,
}

impl Site {
    /// The image the site will have: a secondary applies the records it
    /// holds before anything a connection sends (they come first).
    fn image(&self) -> u64 {
        match self.role {
            Role::Primary => self.data,
            Role::Secondary => self.held,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct World {
    s: [Site; 2],
    connected: bool,
    /// The secondary follows the primary's line (connected, and the
    /// decision was continue or the resync ended).
    follows: bool,
    /// A resync in progress: its source.
    syncing: Option<usize>,
    /// The source has not yet moved its bitmap generation (resync end).
    rotate: Option<usize>,
    /// The last decision refused the connection.
    refused: bool,
    protected: u64,
    next_write: u32,
    next_gen: u64,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Write(usize),
    Ack,
    Apply(usize),
    Connect,
    Disconnect,
    End,
    Rotate,
    Crash(usize),
    Promote(usize),
    Demote(usize),
    Resolve(usize),
}

const EVENTS: [Ev; 17] = [
    Ev::Write(0),
    Ev::Write(1),
    Ev::Ack,
    Ev::Apply(0),
    Ev::Apply(1),
    Ev::Connect,
    Ev::Disconnect,
    Ev::End,
    Ev::Rotate,
    Ev::Crash(0),
    Ev::Crash(1),
    Ev::Promote(0),
    Ev::Promote(1),
    Ev::Demote(0),
    Ev::Demote(1),
    Ev::Resolve(0),
    Ev::Resolve(1),
];

/// Counters of an exploration.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) states: u64,
    pub(super) decisions: [u64; 6],
}

fn side_of(i: usize, from: usize) -> Side {
    if i == from {
        Side::Local
    } else {
        Side::Peer
    }
}

impl World {
    /// A primary (site 0) and a secondary, both just formatted.
    fn new() -> Self {
        let site = |role| Site {
            gens: Generations::new(),
            role,
            view: PeerView::LOADED,
            data: 0,
            held: 0,
            dirty: 0,
        };
        Self {
            s: [site(Role::Primary), site(Role::Secondary)],
            connected: false,
            follows: false,
            syncing: None,
            rotate: None,
            refused: false,
            protected: 0,
            next_write: 0,
            next_gen: 2,
        }
    }

    fn fresh(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// A new write (or promotion mark) on site `x`.
    fn mark(&mut self, x: usize, protected: bool) {
        let w = 1u64 << self.next_write;
        self.next_write += 1;
        let s = &mut self.s[x];
        s.data |= w;
        s.dirty |= w;
        if protected {
            self.protected |= w;
        }
    }

    fn lose_link(&mut self) {
        self.connected = false;
        self.follows = false;
        self.syncing = None;
        self.rotate = None;
        self.refused = false;
        for s in &mut self.s {
            s.view.lost();
        }
    }

    /// Starts a resync from `src` if the roles allow it (the caller would
    /// otherwise promote or demote first).
    fn start(&mut self, src: usize, chunks: Chunks) {
        let t = 1 - src;
        if self.s[src].role != Role::Primary || self.s[t].role != Role::Secondary {
            return;
        }
        let target_dirty = self.s[t].dirty;
        let target_current = self.s[t].gens.current;
        let s = &mut self.s[src];
        s.dirty |= match chunks {
            Chunks::Marked => target_dirty,
            Chunks::All => u64::MAX,
        };
        s.gens.sync_start(target_current).unwrap();
        self.syncing = Some(src);
    }

    /// The oracle's verdict on decision `d` (site 0's view), and the
    /// decision's effect.
    fn decide(&mut self, d: Decision, seen: &mut Seen) -> Result<(), String> {
        let (a, b) = (&self.s[0], &self.s[1]);
        let (only_a, only_b) = (a.image() & !b.image(), b.image() & !a.image());
        let (pa, pb) = (only_a & self.protected, only_b & self.protected);
        let covered = (only_a | only_b) & !(a.dirty | b.dirty) == 0;
        match d {
            Decision::Continue => {
                seen.decisions[0] += 1;
                let p = match (a.role, b.role) {
                    (Role::Primary, Role::Secondary) => 0,
                    (Role::Secondary, Role::Primary) => 1,
                    (Role::Secondary, Role::Secondary) => {
                        if pa != 0 && pb != 0 {
                            return Err("continue between diverged secondaries".into());
                        }
                        self.s[0].gens = self.s[0].gens.synced();
                        self.s[1].gens = self.s[1].gens.synced();
                        return Ok(());
                    }
                    (Role::Primary, Role::Primary) => {
                        return Err("two primaries in one generation".into())
                    }
                };
                let (ps, ss) = (&self.s[p], &self.s[1 - p]);
                if ss.held & !ps.data != 0 {
                    return Err("continue, the secondary holds writes the primary lacks".into());
                }
                if ps.data & !ss.held & !ps.dirty != 0 {
                    return Err("continue, a write the secondary lacks is not marked".into());
                }
                self.s[0].gens = self.s[0].gens.synced();
                self.s[1].gens = self.s[1].gens.synced();
                self.follows = true;
                self.s[p].view.follows();
            }
            Decision::Sync { source, chunks } => {
                seen.decisions[if chunks == Chunks::Marked { 1 } else { 2 }] += 1;
                let src = if source == Side::Local { 0 } else { 1 };
                if [pb, pa][src] != 0 {
                    return Err("sync discards protected writes".into());
                }
                if chunks == Chunks::Marked && !covered {
                    return Err("sync of the marked chunks misses a difference".into());
                }
                self.start(src, chunks);
            }
            Decision::SplitBrain { chunks } => {
                seen.decisions[if chunks == Chunks::Marked { 3 } else { 4 }] += 1;
                if pa == 0 || pb == 0 {
                    return Err("split brain refused, but only one side moved on".into());
                }
                if chunks == Chunks::Marked && !covered {
                    return Err("a resolution of the marked chunks misses a difference".into());
                }
                self.refused = true;
            }
            Decision::Unrelated => return Err("unrelated".into()),
        }
        Ok(())
    }

    /// Applies `ev` if it is possible; `Ok(false)` if not.
    fn step(&mut self, ev: Ev, seen: &mut Seen) -> Result<bool, String> {
        match ev {
            Ev::Write(x) => {
                if self.s[x].role != Role::Primary || self.next_write >= 60 {
                    return Ok(false);
                }
                if self.s[x].view.write_needs_new_generation() {
                    let id = self.fresh();
                    self.s[x].gens.new_current(id).unwrap();
                    self.s[x].view.diverged();
                }
                let protected = !self.follows;
                self.mark(x, protected);
            }
            Ev::Ack => {
                if !self.follows {
                    return Ok(false);
                }
                let p = usize::from(self.s[0].role != Role::Primary);
                self.s[1 - p].held = self.s[p].data;
                self.s[p].dirty = 0;
            }
            Ev::Apply(x) => {
                let s = &mut self.s[x];
                if s.role != Role::Secondary || s.held == s.data {
                    return Ok(false);
                }
                s.data = s.held;
            }
            Ev::Connect => {
                if self.connected {
                    return Ok(false);
                }
                self.connected = true;
                let d = compare(&self.s[0].gens, &self.s[1].gens);
                let mirror = compare(&self.s[1].gens, &self.s[0].gens);
                if mirror != d.mirror() {
                    return Err(format!("asymmetric: {d:?} and {mirror:?}"));
                }
                self.decide(d, seen)?;
            }
            Ev::Disconnect => {
                if !self.connected {
                    return Ok(false);
                }
                self.lose_link();
            }
            Ev::End => {
                let Some(src) = self.syncing.filter(|_| self.connected) else {
                    return Ok(false);
                };
                // The source is followed from the moment the target may
                // adopt; the target applies the span and adopts with it.
                self.s[src].view.follows();
                let s = self.s[src];
                let t = &mut self.s[1 - src];
                t.data = s.data;
                t.held = s.data;
                t.dirty = 0;
                t.gens = s.gens.synced();
                self.s[src].dirty = 0;
                self.syncing = None;
                self.follows = true;
                self.rotate = Some(src);
            }
            Ev::Rotate => {
                let Some(src) = self.rotate.filter(|_| self.connected) else {
                    return Ok(false);
                };
                self.s[src].gens = self.s[src].gens.synced();
                self.rotate = None;
            }
            Ev::Crash(x) => {
                // A secondary's crash is a lost link here (its marks and
                // what it holds are durable).
                if self.s[x].role != Role::Primary {
                    return Ok(false);
                }
                if self.connected {
                    self.lose_link();
                }
                self.s[x].view = PeerView::LOADED;
            }
            Ev::Promote(x) => {
                if self.connected || self.s[x].role != Role::Secondary {
                    return Ok(false);
                }
                let id = self.fresh();
                let s = &mut self.s[x];
                // Records held and dropped are marked (transition 2).
                s.dirty |= s.held & !s.data;
                s.held = s.data;
                s.gens.promote(id).unwrap();
                s.role = Role::Primary;
                s.view = PeerView::PROMOTED;
                self.mark(x, true);
            }
            Ev::Demote(x) => {
                if self.syncing.is_some() || self.s[x].role != Role::Primary {
                    return Ok(false);
                }
                let s = &mut self.s[x];
                s.role = Role::Secondary;
                s.held = s.data;
                self.follows = false;
            }
            Ev::Resolve(x) => {
                // Site x discards its changes.
                if !self.refused
                    || self.s[x].role != Role::Secondary
                    || self.s[1 - x].role != Role::Primary
                {
                    return Ok(false);
                }
                let r = resolve(&self.s[0].gens, &self.s[1].gens, side_of(x, 0));
                let mirror = resolve(&self.s[1].gens, &self.s[0].gens, side_of(x, 1));
                if mirror != r.mirror() {
                    return Err(format!("asymmetric resolution: {r:?} and {mirror:?}"));
                }
                let Decision::Sync { source, chunks } = r else {
                    return Err(format!("resolution {r:?}"));
                };
                if source != side_of(1 - x, 0) {
                    return Err("the resolution keeps the discarded side".into());
                }
                let (a, b) = (&self.s[0], &self.s[1]);
                let diff = a.image() ^ b.image();
                if chunks == Chunks::Marked && diff & !(a.dirty | b.dirty) != 0 {
                    return Err("a resolution of the marked chunks misses a difference".into());
                }
                seen.decisions[5] += 1;
                // The operator's choice stands until the resync ends.
                self.protected &= !(self.s[x].image() & !self.s[1 - x].image());
                self.refused = false;
                self.start(1 - x, chunks);
            }
        }
        for s in &self.s {
            s.gens.check().map_err(|e| format!("{e}: {:?}", s.gens))?;
        }
        Ok(true)
    }
}

/// Explores every sequence of events from `w`, `depth` more at most.
fn explore(w: &World, depth: usize, path: &mut Vec<Ev>, seen: &mut Seen) {
    seen.states += 1;
    if depth == 0 {
        return;
    }
    for ev in EVENTS {
        let mut next = *w;
        match next.step(ev, seen) {
            Ok(false) => {}
            Ok(true) => {
                path.push(ev);
                explore(&next, depth - 1, path, seen);
                path.pop();
            }
            Err(e) => panic!("{e} after {:?}, {ev:?}\n{next:#?}", path),
        }
    }
}

/// Runs `evs` from a new world (each must be possible); the world after.
fn run(evs: &[Ev]) -> (World, Seen) {
    let (mut w, mut seen) = (World::new(), Seen::default());
    for (i, &ev) in evs.iter().enumerate() {
        match w.step(ev, &mut seen) {
            Ok(true) => {}
            r => panic!("{ev:?} (event {i}): {r:?}\n{w:#?}"),
        }
    }
    (w, seen)
}

#[test]
fn every_sequence_of_events_decides_right() {
    let mut seen = Seen::default();
    explore(&World::new(), DEPTH, &mut Vec::new(), &mut seen);
    // Every decision occurs but a copy of every chunk: two sites that
    // started together never need one.
    let [cont, marked, all, split, split_all, resolved] = seen.decisions;
    assert!(
        cont > 0 && marked > 0 && split > 0 && resolved > 0,
        "{seen:?}"
    );
    assert_eq!((all, split_all), (0, 0), "{seen:?}");
    assert!(seen.states > 100_000, "{seen:?}");
}

use Ev::*;

/// Connected, the first write shipped and applied.
const START: [Ev; 5] = [Connect, Write(0), Ack, Apply(1), Write(0)];

#[test]
fn switchover_and_back_copy_nothing() {
    let mut evs = START.to_vec();
    // Drain, demote A, promote B: A is behind, and nothing is marked.
    evs.extend([Ack, Apply(1), Demote(0), Disconnect, Promote(1), Connect]);
    let (w, seen) = run(&evs);
    assert_eq!(seen.decisions[1], 1);
    assert_eq!(w.syncing, Some(1));
    // The promotion's own mark stands for its writes: none else.
    assert_eq!((w.s[0].dirty | w.s[1].dirty).count_ones(), 1);
    // B writes, drains; back again.
    evs.extend([End, Rotate, Write(1), Ack, Apply(0), Demote(1), Disconnect]);
    evs.extend([Promote(0), Connect]);
    let (w, seen) = run(&evs);
    assert_eq!(seen.decisions[1], 2);
    assert_eq!(w.syncing, Some(0));
    assert_eq!(w.s[0].gens.bitmap, w.s[1].gens.current);
    assert_eq!((w.s[0].dirty | w.s[1].dirty).count_ones(), 1);
}

#[test]
fn failback_copies_the_union_of_the_marked_chunks() {
    let mut evs = START.to_vec();
    // A's last write is not acknowledged; A crashes, B is promoted and
    // writes; A comes back and is demoted without writing.
    evs.extend([Crash(0), Promote(1), Write(1), Demote(0), Connect]);
    let (w, seen) = run(&evs);
    assert_eq!(seen.decisions[1], 1);
    assert_eq!(w.syncing, Some(1));
    // A's unacknowledged write, B's mark and write: three chunks.
    assert_eq!(w.s[1].dirty.count_ones(), 3);
    let (w, _) = run(&[&evs[..], &[End]].concat());
    assert_eq!(w.s[0].data, w.s[1].data);
}

#[test]
fn split_brain_is_refused_then_resolved() {
    let mut evs = START.to_vec();
    evs.extend([Disconnect, Write(0), Promote(1), Write(1), Connect]);
    let (w, seen) = run(&evs);
    assert_eq!(seen.decisions[3], 1);
    assert!(w.refused && w.syncing.is_none());
    // Demote A and discard its changes.
    evs.extend([Demote(0), Resolve(0), Disconnect, Connect]);
    let (w, seen) = run(&evs);
    // The interrupted resolution is taken up without another.
    assert_eq!((seen.decisions[3], seen.decisions[5]), (1, 1));
    assert_eq!(w.syncing, Some(1));
    let (w, _) = run(&[&evs[..], &[End, Rotate]].concat());
    assert_eq!(w.s[0].gens, w.s[1].gens);
    assert_eq!(w.s[0].data, w.s[1].data);
}
