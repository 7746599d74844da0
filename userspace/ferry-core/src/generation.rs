//! Data generations: at every connection, which of the two sites holds
//! the newer data, what a resync between them copies, and split brain
//! refused on both sides.
//!
//! **Status: the rules and the on-disk format only.  The kernel does not
//! store generations and `ferryd` does not compare them in this version**
//! (issue 14 builds on them).  `Documentation/protocol.rst`, "Data
//! generations", says the same and gives the format byte by byte.
//!
//! (Not to be confused with the superblock's `generation`, a write
//! counter that picks the current slot ([`crate::meta`]), nor with the
//! write intent's touch generations ([`crate::intent::Gen`]).)
//!
//! # What a generation is
//!
//! A *generation* is a random 64-bit id (never [`NONE`] nor
//! [`JUST_CREATED`]) naming one line of a device's data: from the moment
//! the data may have moved away from what the peer holds, until a resync
//! makes the two the same again.  As DRBD's generation identifiers do,
//! every device keeps [`Generations`]:
//!
//! * `current`: the generation its data belongs to;
//! * `bitmap`: the peer's generation its dirty bitmap counts from, or
//!   [`NONE`] when the peer is taken to hold `current`;
//! * `history`: the generations before those two, newest first
//!   ([`HISTORY`] of them; the oldest falls off).
//!
//! ferry's bitmap ([`crate::intent`]) marks a chunk from before a write
//! reaches it until the peer has acknowledged every write to it (or, for
//! a resync, applied the span that carried it): it names the chunks that
//! may differ from *the peer*, whatever the peer did with them since.  So
//! a copy "from the bitmaps" between two sites copies the **union** of
//! both sites' marked chunks: the source's (its changes the target lacks)
//! and the target's own (its changes the source never acknowledged,
//! which the copy overwrites).
//!
//! # Transitions
//!
//! Each one is persisted (both copies, [`SECTORS`]) before what it guards
//! happens; the caller supplies fresh ids (`get_random_u64()` in the
//! kernel), and a fresh id that is [`NONE`], [`JUST_CREATED`] or already
//! in the tuple is refused ([`GenError::BadId`]: draw another).
//!
//! 1. **Format.**  A new meta device holds [`Generations::new`]:
//!    `current` = [`JUST_CREATED`], nothing else.  Two just-created
//!    devices are taken to hold the same data (as ferry does today); a
//!    just-created device against one that is not is behind it, and copies
//!    all of it unless the other has not resynced since its own creation
//!    (then the two were taken equal at creation: the marked chunks).
//! 2. **Promotion** of a secondary ([`Generations::promote`]): a new
//!    current generation, at once, written or not.  The old current
//!    becomes the bitmap generation (if none is set; else it goes into the
//!    history): the promoted side's bitmap counts its changes from there.
//!    At once, because the promoted image is a *past* state of the old
//!    primary's line (the records it had not applied are dropped), so it
//!    starts a branch of its own; and because the new generation names the
//!    new primary's streams, which start again at 1, so that a secondary
//!    never takes them for the old primary's records.  A promoted side
//!    must also mark in its bitmap the chunks of the records it held and
//!    dropped (acknowledged to the old primary, so cleared there): else a
//!    resync from the bitmaps would miss them.
//! 3. **A primary's first write without its peer**
//!    ([`Generations::new_current`], [`PeerView`]): same change as a
//!    promotion, before that write lands.  "Without its peer": the peer
//!    may hold this primary's current generation but is not connected and
//!    following it (the link went down, or the primary was loaded, after
//!    a crash or a restart, and has not met its peer since).  Taken at the
//!    first write rather than when the link goes: a primary that loses its
//!    peer and writes nothing (a crashed primary restarted and demoted for
//!    a failback) stays in the generation the peer knows, and its writes
//!    the peer lacks are only the ones lost in the failover.  Every write
//!    after it extends the new generation, whatever happens to the link,
//!    until the peer follows again.
//! 4. **Demotion** changes nothing: the data did not change, and the
//!    demoted side's writes the peer lacks stay marked in its bitmap, for
//!    the union.
//! 5. **Resync start**, on the source ([`Generations::sync_start`]): the
//!    source's bitmap is made to count from the target's current
//!    generation.  The caller first merges the target's marked chunks into
//!    the source's bitmap (all chunks for a full copy) and persists them;
//!    then the bitmap generation becomes the target's current (the one it
//!    replaces, the split point of a resolved split brain, goes into the
//!    history).  An interrupted resync is thereby taken up again from the
//!    bitmaps at the next connection, without asking again (the target's
//!    current is the source's bitmap generation).  The target changes
//!    nothing: its image stays its own, consistent, until the span is
//!    applied.
//! 6. **Resync end**, when the target applies the span that ends the copy
//!    (its image is then the source's at the span's end), in three steps.
//!    The source takes its peer as following ([`PeerView::follows`]) from
//!    the moment it ends the span, before the target can adopt anything:
//!    a link lost from then on makes its next write start a generation.
//!    The target adopts the source's tuple with the bitmap generation
//!    moved into the history ([`Generations::synced`]), persisted with the
//!    span's apply: after the mark that begins applying it and before the
//!    mark that ends it (a crash between the two redoes the span, G4, and a
//!    promotion waits for the redo), so that its image and its generations
//!    never disagree.  The source does the same once it hears that the
//!    span is applied (`APPLIED`); a link lost before leaves its bitmap
//!    generation set, and the next connection, which continues, moves it
//!    on both sides (`synced()` is the same tuple where the bitmap
//!    generation is already none).
//!
//! # At a connection ([`compare`])
//!
//! Each side compares its own tuple with the peer's; the two decisions are
//! mirror images ([`Decision::mirror`]), so both sides act alike or refuse
//! alike.  A side's *past* is its bitmap generation and its history.  In
//! order:
//!
//! | case | decision |
//! |------|----------|
//! | either current is [`NONE`] | unrelated (refused) |
//! | same current | continue |
//! | our current is in their past, theirs is not in ours | sync from the peer |
//! | their current is in our past, ours is not in theirs | sync to the peer |
//! | each current is in the other's past | split brain (every chunk) |
//! | the two pasts share a generation | split brain |
//! | our current is [`JUST_CREATED`] | sync from the peer (every chunk) |
//! | their current is [`JUST_CREATED`] | sync to the peer (every chunk) |
//! | nothing in common | unrelated (refused) |
//!
//! What a sync (or a resolution) copies is the same whichever way it
//! goes: the marked chunks of both sides when the tuples share a
//! generation, every chunk when they share none.  [`JUST_CREATED`] found
//! in a history does not count as shared: a device just created (a new or
//! replaced disk) against one that has resynced since its own creation
//! holds nothing the other's marks account for.  (Found as the bitmap
//! generation it does: the other has not resynced since it was created,
//! and two new devices are taken to be equal, as ferry does today.)
//!
//! A current found deeper than the bitmap generation still copies the
//! marked chunks, unlike DRBD's rules (which copy everything then): in
//! ferry a mark is cleared only when *the peer* has acknowledged or
//! applied every write to its chunk, so the marks name what the peer may
//! lack whichever generation it is in.  Between two sites that follow
//! these rules it happens when the link is lost after the target adopted
//! the source's generation and before the source heard of it, and the
//! source then writes alone (its stale bitmap generation stays, the
//! generation the target adopted goes into the history).  What the rules
//! cannot see is a site brought back to an older state (a meta device and
//! data restored from a backup, a disk detached long ago): its marks and
//! the peer's no longer describe it, whatever its generation says, and a
//! full copy must be asked for.
//!
//! Split brain: both sides moved on from a common ancestor (or have
//! nothing in common): each holds changes the other lacks, and copying
//! either way would silently discard the other's.  Refused on both sides:
//! nothing applied, nothing overwritten, until an explicit resolution.
//!
//! # Resolution ([`resolve`])
//!
//! An operator names the side whose changes are discarded; the other is
//! the source, and the copy is the one a sync between the two needs (the
//! marked chunks of both sides when they share a generation).  The
//! resolution is symmetric as well: the side told to discard its own
//! changes and the side told to discard the peer's reach mirror-image
//! decisions.  Its start (transition 5) makes the source's bitmap count
//! from the discarded side's generation, so that a resolution interrupted
//! is taken up again at the next connection without another.
//!
//! # What the caller does (not in this version)
//!
//! The roles: a sync runs from a primary to a secondary (the target is
//! demoted, or the source promoted, first; a continue with two primaries
//! is refused); the exchange of the tuples and of the target's marked
//! chunks over the link; the counting and logging of a refusal with both
//! tuples.

use core::fmt;

use crate::bytes::{get_u32, set_u32, Reader, Writer};
use crate::digest::crc32c;
use crate::Digest;

/// Entries of the history.
pub const HISTORY: usize = 4;
/// "No generation" (an empty bitmap generation or history entry).
pub const NONE: u64 = 0;
/// The current generation of a just-formatted meta device.
pub const JUST_CREATED: u64 = 1;
/// Encoded size of a [`Generations`] block.
pub const GEN_LEN: usize = 64;
/// First four bytes of an encoded block.
pub const GEN_MAGIC: [u8; 4] = *b"FGEN";
/// Format version of the block.
pub const GEN_VERSION: u16 = 1;
/// Where a later change will keep the two copies on the meta device
/// (copy A, then copy B, as the apply mark's): sectors 32 and 40, in the
/// range [`crate::meta`] reserves.  Nothing reads or writes them in this
/// version.
pub const SECTORS: [u64; 2] = [32, 40];

/// Why a transition or a decode refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenError {
    /// The buffer is shorter than [`GEN_LEN`].
    Truncated,
    /// Not [`GEN_MAGIC`] (e.g. never written).
    BadMagic,
    /// A version this code does not know.
    UnsupportedVersion(u16),
    /// The checksum does not match (e.g. a torn write).
    BadChecksum,
    /// The checksum matches but the content breaks a rule (a reserved
    /// field set, no current generation, a gap in the history, an id
    /// twice): refused, not overwritten.
    Invalid(&'static str),
    /// A fresh id that is [`NONE`], [`JUST_CREATED`] or already in the
    /// tuple: draw another.
    BadId,
}

impl fmt::Display for GenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("generations truncated"),
            Self::BadMagic => f.write_str("no generations"),
            Self::UnsupportedVersion(v) => write!(f, "generations version {v} unsupported"),
            Self::BadChecksum => f.write_str("generations checksum mismatch"),
            Self::Invalid(why) => write!(f, "generations invalid: {why}"),
            Self::BadId => f.write_str("fresh generation id unusable"),
        }
    }
}

/// A device's generations (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generations {
    /// The generation the data belongs to; never [`NONE`].
    pub current: u64,
    /// The peer's generation the bitmap counts from, or [`NONE`].
    pub bitmap: u64,
    /// Earlier generations, newest first; [`NONE`] entries only at the end.
    pub history: [u64; HISTORY],
}

impl Default for Generations {
    fn default() -> Self {
        Self::new()
    }
}

impl Generations {
    /// A just-formatted device's (transition 1).
    pub const fn new() -> Self {
        Self {
            current: JUST_CREATED,
            bitmap: NONE,
            history: [NONE; HISTORY],
        }
    }

    /// Whether `id` (not [`NONE`]) is the current, bitmap or a history
    /// generation.
    pub fn contains(&self, id: u64) -> bool {
        id != NONE && (self.current == id || self.bitmap == id || self.history.contains(&id))
    }

    /// Whether `id` (not [`NONE`]) is in this side's past: its bitmap
    /// generation or its history.
    fn in_past(&self, id: u64) -> bool {
        id != NONE && (self.bitmap == id || self.history.contains(&id))
    }

    /// Checks the rules every tuple these transitions build keeps: a
    /// current generation, the history packed, no id twice.
    pub fn check(&self) -> Result<(), GenError> {
        if self.current == NONE {
            return Err(GenError::Invalid("no current generation"));
        }
        let mut ended = false;
        for (i, &h) in self.history.iter().enumerate() {
            if h == NONE {
                ended = true;
            } else if ended {
                return Err(GenError::Invalid("gap in the history"));
            } else if h == self.current
                || h == self.bitmap
                || self.history.iter().skip(i + 1).any(|&x| x == h)
            {
                return Err(GenError::Invalid("a generation twice"));
            }
        }
        if self.bitmap == self.current {
            return Err(GenError::Invalid("a generation twice"));
        }
        Ok(())
    }

    /// Puts `id` at the head of the history (out of it first if it is
    /// there); the oldest entry falls off.
    fn push(&mut self, id: u64) {
        if id == NONE || id == self.current {
            return;
        }
        self.remove(id);
        self.history.rotate_right(1);
        self.history[0] = id;
    }

    /// Takes `id` out of the history, keeping it packed.
    fn remove(&mut self, id: u64) {
        if let Some(i) = self.history.iter().position(|&h| h == id) {
            if let Some(tail) = self.history.get_mut(i..) {
                tail.rotate_left(1);
            }
            self.history[HISTORY - 1] = NONE;
        }
    }

    /// A new current generation `fresh` (transitions 2 and 3): the old one
    /// becomes the bitmap generation if none is set, else it goes into
    /// the history.  Refused, changing nothing, if `fresh` is unusable.
    pub fn new_current(&mut self, fresh: u64) -> Result<(), GenError> {
        if fresh == NONE || fresh == JUST_CREATED || self.contains(fresh) {
            return Err(GenError::BadId);
        }
        let old = core::mem::replace(&mut self.current, fresh);
        if self.bitmap == NONE {
            self.bitmap = old;
        } else {
            self.push(old);
        }
        Ok(())
    }

    /// Promotion of a secondary (transition 2): a new current generation
    /// at once, [`Self::new_current`].
    pub fn promote(&mut self, fresh: u64) -> Result<(), GenError> {
        self.new_current(fresh)
    }

    /// Resync start on the source (transition 5), towards a target whose
    /// current generation is `target`: the bitmap counts from it (once
    /// the caller has merged and persisted the target's marked chunks, or
    /// marked every chunk for a full copy).  Nothing changes when the
    /// bitmap already counts from it, or when `target` is this side's
    /// current (a resolution between sides of the same generation copies
    /// the marked chunks and moves nothing).  Refused for [`NONE`].
    pub fn sync_start(&mut self, target: u64) -> Result<(), GenError> {
        if target == NONE {
            return Err(GenError::BadId);
        }
        if target == self.current || target == self.bitmap {
            return Ok(());
        }
        self.push(self.bitmap);
        self.remove(target);
        self.bitmap = target;
        Ok(())
    }

    /// The tuple after a resync's end (transition 6): this one with the
    /// bitmap generation moved into the history.  The target adopts the
    /// source's `synced()`; the source takes it once the target has.
    pub fn synced(&self) -> Self {
        let mut g = *self;
        let b = g.bitmap;
        g.bitmap = NONE;
        g.push(b);
        g
    }

    /// Encodes into a [`GEN_LEN`]-byte block (see
    /// `Documentation/protocol.rst`, "Data generations").
    pub fn encode<D: Digest + ?Sized>(&self, d: &D, out: &mut [u8; GEN_LEN]) {
        let mut w = Writer::new(out);
        let _ = (|| {
            w.put(&GEN_MAGIC)?;
            w.u16(GEN_VERSION)?;
            w.u16(0)?;
            w.u64(self.current)?;
            w.u64(self.bitmap)?;
            for h in self.history {
                w.u64(h)?;
            }
            w.u32(0)
        })();
        let crc = crc32c(d, &out[..GEN_LEN - 4]);
        set_u32(out, GEN_LEN - 4, crc);
    }

    /// Decodes and checks a block: magic, version, checksum, then the
    /// reserved fields and [`Self::check`].
    pub fn decode<D: Digest + ?Sized>(d: &D, buf: &[u8]) -> Result<Self, GenError> {
        let t = GenError::Truncated;
        let b = buf.get(..GEN_LEN).ok_or(t)?;
        let mut r = Reader::new(b);
        if r.bytes4().ok_or(t)? != GEN_MAGIC {
            return Err(GenError::BadMagic);
        }
        let version = r.u16().ok_or(t)?;
        if version != GEN_VERSION {
            return Err(GenError::UnsupportedVersion(version));
        }
        if crc32c(d, b.get(..GEN_LEN - 4).ok_or(t)?) != get_u32(b, GEN_LEN - 4) {
            return Err(GenError::BadChecksum);
        }
        let reserved = r.u16().ok_or(t)?;
        let current = r.u64().ok_or(t)?;
        let bitmap = r.u64().ok_or(t)?;
        let mut history = [NONE; HISTORY];
        for h in history.iter_mut() {
            *h = r.u64().ok_or(t)?;
        }
        if reserved != 0 || r.u32().ok_or(t)? != 0 {
            return Err(GenError::Invalid("reserved field set"));
        }
        let g = Self {
            current,
            bitmap,
            history,
        };
        g.check()?;
        Ok(g)
    }

    /// A device's generations from its two copies (A first): copy A if it
    /// decodes, else copy B, else none (never written: the caller takes
    /// [`Self::new`]).  A copy whose checksum holds but whose content is
    /// [`GenError::Invalid`] refuses the device whatever the other holds.
    pub fn choose(
        a: Result<Self, GenError>,
        b: Result<Self, GenError>,
    ) -> Result<Option<Self>, GenError> {
        match (a, b) {
            (Err(e @ GenError::Invalid(_)), _) | (_, Err(e @ GenError::Invalid(_))) => Err(e),
            (a, b) => Ok(a.ok().or(b.ok())),
        }
    }
}

/// Which chunks a resync copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunks {
    /// The union of both sides' marked chunks.
    Marked,
    /// Every chunk of the device.
    All,
}

/// A side of a connection, as each side names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This side.
    Local,
    /// The other side.
    Peer,
}

impl Side {
    /// The same side as the other side names it.
    pub const fn mirror(self) -> Self {
        match self {
            Self::Local => Self::Peer,
            Self::Peer => Self::Local,
        }
    }
}

/// What a connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Same generation: replication goes on from where it stands (the
    /// primary's stream and marks); both sides take [`Generations::synced`]
    /// (a bitmap generation left by a resync's end moves on).
    Continue,
    /// `source`'s data goes to the other side, which discards its own
    /// changes since their generations parted.
    Sync {
        /// The side whose data wins.
        source: Side,
        /// What is copied.
        chunks: Chunks,
    },
    /// Both sides moved on from a common ancestor: refused on both sides
    /// until [`resolve`]; `chunks` is what a resolution would copy.
    SplitBrain {
        /// What a resolution copies.
        chunks: Chunks,
    },
    /// Nothing in common: refused; a resolution copies every chunk.
    Unrelated,
}

impl Decision {
    /// The same decision as the other side states it.
    pub const fn mirror(self) -> Self {
        match self {
            Self::Sync { source, chunks } => Self::Sync {
                source: source.mirror(),
                chunks,
            },
            d => d,
        }
    }

    /// Whether the connection is refused (nothing applied, nothing
    /// overwritten).
    pub const fn refused(self) -> bool {
        matches!(self, Self::SplitBrain { .. } | Self::Unrelated)
    }
}

/// What a copy between `a` and `b` needs (whichever way it goes): the
/// marked chunks when the two share a generation, except
/// [`JUST_CREATED`] found in a history (a creation is no common state of
/// the data once the history has moved past it); every chunk when they
/// share none, when either has no current generation, or when each
/// current is in the other's past (pasts that contradict each other).
fn chunks(a: &Generations, b: &Generations) -> Chunks {
    if a.current == NONE || b.current == NONE || (b.in_past(a.current) && a.in_past(b.current)) {
        return Chunks::All;
    }
    let created = |g: &Generations| g.history.contains(&JUST_CREATED);
    let linked = |id: u64| {
        a.contains(id) && b.contains(id) && !(id == JUST_CREATED && (created(a) || created(b)))
    };
    if linked(a.current) || linked(a.bitmap) || a.history.iter().any(|&h| linked(h)) {
        Chunks::Marked
    } else {
        Chunks::All
    }
}

/// The decision at a connection between this side's generations and the
/// peer's (see the table in the module documentation).
pub fn compare(ours: &Generations, theirs: &Generations) -> Decision {
    let (a, b) = (ours, theirs);
    if a.current == NONE || b.current == NONE {
        return Decision::Unrelated;
    }
    if a.current == b.current {
        return Decision::Continue;
    }
    let chunks = chunks(a, b);
    match (b.in_past(a.current), a.in_past(b.current)) {
        (true, false) => Decision::Sync {
            source: Side::Peer,
            chunks,
        },
        (false, true) => Decision::Sync {
            source: Side::Local,
            chunks,
        },
        (true, true) => Decision::SplitBrain { chunks },
        (false, false) => {
            let common = b.in_past(a.bitmap) || a.history.iter().any(|&h| b.in_past(h));
            if common {
                Decision::SplitBrain { chunks }
            } else if a.current == JUST_CREATED {
                Decision::Sync {
                    source: Side::Peer,
                    chunks,
                }
            } else if b.current == JUST_CREATED {
                Decision::Sync {
                    source: Side::Local,
                    chunks,
                }
            } else {
                Decision::Unrelated
            }
        }
    }
}

/// The decision after an explicit resolution that discards `discard`'s
/// changes: a sync from the other side, of the chunks a copy between the
/// two needs (as [`compare`] gives them).
pub fn resolve(ours: &Generations, theirs: &Generations, discard: Side) -> Decision {
    Decision::Sync {
        source: discard.mirror(),
        chunks: chunks(ours, theirs),
    }
}

/// What a primary knows of its peer, for transition 3: whether its next
/// write must first start a new generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerView {
    /// The peer follows (or may hold) the current generation and is
    /// connected: writes extend the generation.
    Follows,
    /// The peer may hold the current generation and is not connected:
    /// the next write starts a new generation first.
    Lost,
    /// A generation started since the peer was lost (or at promotion):
    /// writes extend it.
    Diverged,
}

impl PeerView {
    /// A primary loaded (created, restarted after a crash or not): it has
    /// not met its peer, which may hold its current generation.
    pub const LOADED: Self = Self::Lost;
    /// Just promoted: the promotion started a generation.
    pub const PROMOTED: Self = Self::Diverged;

    /// Whether the next write must start a new generation (persisted)
    /// before it lands; then call [`Self::diverged`].
    pub const fn write_needs_new_generation(self) -> bool {
        matches!(self, Self::Lost)
    }

    /// The new generation is persisted.
    pub fn diverged(&mut self) {
        *self = Self::Diverged;
    }

    /// The link is lost (or the peer stopped following).
    pub fn lost(&mut self) {
        if *self == Self::Follows {
            *self = Self::Lost;
        }
    }

    /// The peer follows: a connection decided [`Decision::Continue`], or
    /// this side, as a resync's source, lets the target adopt its
    /// generation (transition 6).
    pub fn follows(&mut self) {
        *self = Self::Follows;
    }
}

#[cfg(test)]
#[path = "generation_tests.rs"]
mod tests;
