//! A `write(2)` of commands to a primary's character device: all of them
//! or none.
//!
//! One `write(2)` may carry several commands ([`crate::command`]).  The
//! kernel checks the whole batch, in order, each command against the state
//! the earlier commands of the batch leave ([`Batch::check`]), under one
//! hold of the group's lock; only if every command passes does it apply
//! them, in order, under that same hold, with steps that cannot fail once
//! checked.  A refused batch changes nothing, and the `write(2)` fails with
//! the errno of the first refused command ([`Why::errno`]).
//!
//! The state a batch is checked against is a copy, of plain values:
//!
//! * per device, its acknowledgement positions ([`AckState`]): `ACK_LOG`,
//!   `ACK` and `SPOOLED` are checked and applied by
//!   [`AckState::acknowledge`], the rule [`Stream::acknowledge`]
//!   (`crate::stream::Stream::acknowledge`) applies to the stream itself;
//! * the group's numbers ([`GroupOrder`]): `APPLIED e` needs `e` below the
//!   open interval, which an earlier `INSERT_CHECKPOINT` of the batch
//!   raises;
//! * the group's spool ([`Spool`], a copy), changed by the spool's own
//!   rules ([`crate::spool`]) as the commands would change it:
//!   - a marker (`INSERT_CHECKPOINT`, `INSERT_CONSISTENCY_POINT`)
//!     reserves [`Batch::marker_charge`] bytes, the charges
//!     ([`crate::spool::charge`]) of its records, one in every stream
//!     ([`Spool::reserve`]); anything but [`Reserve::Done`] (`ahead`, or
//!     no room under either policy) refuses it (`-ENOSPC`).  A refused
//!     batch changes nothing, so a refused marker does not make the group
//!     `ahead`, even under `overflow bitmap` (writes that find the spool
//!     full do);
//!   - an `ACK` or `SPOOLED` of the batch releases the charge of the
//!     records it drops ([`Spool::release`]; `freed`, the caller's sum of
//!     their charges);
//!   - `STOP` makes the group `ahead` ([`Spool::stop`]), after which a
//!     marker is refused and `START` is `-EOPNOTSUPP` ([`Spool::start`]:
//!     leaving `ahead` needs a resync).
//!
//! A group with no device takes no marker (`-ENODEV`).  `APPLY_BEGIN` and
//! `APPLY_END` are a secondary's (`-EOPNOTSUPP`).  A malformed command is
//! `-EINVAL` where it stands: a command before it that is refused refuses
//! the batch with its own errno.
//!
//! [`Stream::acknowledge`]: crate::stream::Stream::acknowledge

use crate::command::{start_flags, Command, CommandError, Commands};
use crate::spool::{Reserve, Spool};
use crate::stream::{Ack, AckState, GroupOrder, Refused};

/// Why a command of a batch was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Not a well-formed command (`-EINVAL`).
    Malformed(CommandError),
    /// An acknowledgement or `APPLIED` refused (`-EINVAL` or `-ERANGE`);
    /// an acknowledgement of a device not in the group is
    /// [`Refused::Invalid`].
    Refused(Refused),
    /// Not a primary's command, or `START` while `ahead`
    /// (`-EOPNOTSUPP`).
    Unsupported,
    /// A marker while `ahead` or without room in the spool (`-ENOSPC`).
    NoSpace,
    /// A marker in a group with no device (`-ENODEV`).
    NoDevice,
}

impl Why {
    /// The Linux errno, positive, that `write(2)` fails with.
    pub fn errno(&self) -> i32 {
        const EINVAL: i32 = 22;
        const ERANGE: i32 = 34;
        const EOPNOTSUPP: i32 = 95;
        const ENOSPC: i32 = 28;
        const ENODEV: i32 = 19;
        match self {
            Self::Malformed(_) | Self::Refused(Refused::Invalid) => EINVAL,
            Self::Refused(Refused::Range) => ERANGE,
            Self::Unsupported => EOPNOTSUPP,
            Self::NoSpace => ENOSPC,
            Self::NoDevice => ENODEV,
        }
    }
}

/// The first refused command of a batch: its place (from 0) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Its place in the batch, from 0.
    pub index: usize,
    /// Why.
    pub why: Why,
}

/// Whether a command inserts a marker into every stream.
pub fn is_marker(c: &Command) -> bool {
    matches!(
        c,
        Command::InsertCheckpoint | Command::InsertConsistencyPoint { .. }
    )
}

/// The markers among the well-formed commands at the start of `buf`: how
/// many sets of marker records the caller builds before it checks.
pub fn markers(buf: &[u8]) -> usize {
    Commands::new(buf)
        .map_while(Result::ok)
        .filter(is_marker)
        .count()
}

/// The state a batch is checked against (a copy the check changes as each
/// command would): see the module documentation.
#[derive(Debug)]
pub struct Batch<'a> {
    /// Each device's acknowledgement positions, by device id (`None`: no
    /// device there); storage the caller provides.
    pub streams: &'a mut [Option<AckState>],
    /// The group's numbers (the check moves its intervals, the applied
    /// interval and the consistency points; it numbers no record).
    pub order: GroupOrder,
    /// The group's spool: its use, cap, policy and mode (the check
    /// reserves, releases and stops as the commands would).
    pub spool: Spool,
    /// Spool bytes one marker reserves: the sum of its records' charges
    /// ([`crate::spool::charge`]), one record in every stream.
    pub marker_charge: usize,
}

impl Batch<'_> {
    /// Checks the commands of `buf`, in order, each against the state the
    /// earlier ones leave (the module documentation says how each
    /// changes it); `freed(device, first, last)` tells the spool bytes
    /// the records of `device` from `dev_seq` `first` to `last` hold.
    /// Returns the number of commands, or the first refused one.  After
    /// `Ok`, `self` is the state the batch leaves.
    pub fn check(
        &mut self,
        buf: &[u8],
        mut freed: impl FnMut(u32, u64, u64) -> usize,
    ) -> Result<usize, Rejected> {
        let mut n = 0;
        for c in Commands::new(buf) {
            c.map_err(Why::Malformed)
                .and_then(|c| self.step(&c, &mut freed))
                .map_err(|why| Rejected { index: n, why })?;
            n += 1;
        }
        Ok(n)
    }

    /// One command, checked and applied to the copy.
    fn step(
        &mut self,
        c: &Command,
        freed: &mut impl FnMut(u32, u64, u64) -> usize,
    ) -> Result<(), Why> {
        if let Some((ack, device, dev_seq)) = Ack::of(c) {
            let s = usize::try_from(device)
                .ok()
                .and_then(|d| self.streams.get_mut(d))
                .and_then(Option::as_mut)
                .ok_or(Why::Refused(Refused::Invalid))?;
            if let Some((first, last)) = s.acknowledge(ack, dev_seq).map_err(Why::Refused)? {
                self.spool.release(freed(device, first, last));
            }
            return Ok(());
        }
        match *c {
            Command::Applied { epoch } => self.order.applied(epoch).map_err(Why::Refused),
            Command::InsertCheckpoint | Command::InsertConsistencyPoint { .. } => {
                if self.streams.iter().all(Option::is_none) {
                    return Err(Why::NoDevice);
                }
                // On this copy only: an `Overflow` that made it `ahead`
                // is dropped with the refused batch.
                if self.spool.reserve(self.marker_charge) != Reserve::Done {
                    return Err(Why::NoSpace);
                }
                if *c == Command::InsertCheckpoint {
                    self.order.checkpoint_inserted();
                } else {
                    let id = self.order.next_cp_id();
                    self.order.consistency_point_inserted(id);
                }
                Ok(())
            }
            // Leaving `ahead` needs a resync, which this version does not
            // have.
            // A resync begins only by `START` written alone: a full copy
            // among other commands is refused, as is `START` while ahead.
            Command::Start { flags } if flags & start_flags::FULL_RESYNC != 0 => {
                Err(Why::Unsupported)
            }
            Command::Start { .. } => self.spool.start().map_err(|_| Why::Unsupported),
            Command::Stop => {
                self.spool.stop();
                Ok(())
            }
            Command::ApplyBegin { .. } | Command::ApplyEnd { .. } => Err(Why::Unsupported),
            Command::AckLog { .. } | Command::Ack { .. } | Command::Spooled { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::DeviceClass::{self, Data, Log};
    use crate::record::{Label, RecordKind};
    use crate::spool::{self, Mode};
    use crate::stream::{Numbered, Sequenced, Stream};
    use crate::table::Overflow;

    #[derive(Debug)]
    struct R {
        n: Numbered,
    }

    impl Sequenced for R {
        fn kind(&self) -> RecordKind {
            RecordKind::Write
        }
        fn dev_seq(&self) -> u64 {
            self.n.dev_seq
        }
        fn group_seq(&self) -> u64 {
            self.n.group_seq
        }
    }

    const PAGE: usize = 4096;
    /// Every record here (no payload) charges this much spool.
    const CHARGE: usize = PAGE;

    type S = Stream<Vec<Option<Box<R>>>>;

    /// What a group's state is, for "changes nothing".
    type Snapshot = (Vec<Option<(AckState, usize)>>, GroupOrder, Spool);

    /// A group as the kernel keeps it: streams, numbers, spool.
    struct G {
        streams: Vec<Option<S>>,
        order: GroupOrder,
        spool: Spool,
    }

    impl G {
        /// Device 0 a data device, device 1 a log device, `n` records
        /// each, all read; room for `cap` records in all, `overflow
        /// block`.
        fn new(n: usize, cap: usize) -> Self {
            Self::with(n, cap, Overflow::Block)
        }

        /// As [`G::new`], a full spool doing `overflow`.
        fn with(n: usize, cap: usize, overflow: Overflow) -> Self {
            let mut g = Self {
                streams: vec![Some(stream(Data)), Some(stream(Log)), None],
                order: GroupOrder::new(),
                spool: Spool::new(cap * PAGE, overflow),
            };
            for _ in 0..n {
                for s in g.streams.iter_mut().flatten() {
                    let r = Box::new(R {
                        n: Numbered::default(),
                    });
                    assert_eq!(g.spool.reserve(CHARGE), spool::Reserve::Done);
                    g.order.sequence(s, 1, r, |r, n| r.n = *n).expect("room");
                }
            }
            for s in g.streams.iter_mut().flatten() {
                while s.next_unsent().is_some() {
                    s.mark_sent();
                }
            }
            g
        }

        fn members(&self) -> usize {
            self.streams.iter().flatten().count()
        }

        /// What the kernel's `write(2)` does: check the batch on a copy,
        /// then apply every command, none of which may fail.
        fn write(&mut self, cmds: &[Command]) -> Result<(), Rejected> {
            let buf = encode(cmds);
            let mut acks: Vec<Option<AckState>> = self
                .streams
                .iter()
                .map(|s| s.as_ref().map(Stream::ack_state))
                .collect();
            let streams = &self.streams;
            let mut b = Batch {
                streams: &mut acks,
                order: self.order,
                spool: self.spool,
                marker_charge: self.members() * spool::charge(0, PAGE),
            };
            let n = b.check(&buf, |d, first, last| {
                let s = streams[d as usize].as_ref().expect("a member");
                s.records()
                    .filter(|r| (first..=last).contains(&r.n.dev_seq))
                    .count()
                    * CHARGE
            })?;
            let (order, spool) = (b.order, b.spool);
            assert_eq!(n, cmds.len());
            for c in Commands::new(&buf) {
                self.apply(&c.expect("checked"));
            }
            // The copy foretold the state the batch leaves.
            let now: Vec<_> = self
                .streams
                .iter()
                .map(|s| s.as_ref().map(Stream::ack_state))
                .collect();
            assert_eq!(now, acks);
            let numbers = |o: &GroupOrder| (o.epoch(), o.applied_epoch(), o.next_cp_id());
            assert_eq!(numbers(&self.order), numbers(&order));
            assert_eq!(self.spool, spool);
            Ok(())
        }

        fn apply(&mut self, c: &Command) {
            if let Some((ack, d, ds)) = Ack::of(c) {
                let s = self.streams[d as usize].as_mut().expect("checked");
                let spool = &mut self.spool;
                s.acknowledge(ack, ds, |_| spool.release(CHARGE))
                    .expect("checked");
                return;
            }
            match *c {
                Command::Applied { epoch } => self.order.applied(epoch).expect("checked"),
                Command::InsertCheckpoint | Command::InsertConsistencyPoint { .. } => {
                    for s in self.streams.iter_mut().flatten() {
                        let r = Box::new(R {
                            n: Numbered::default(),
                        });
                        assert_eq!(self.spool.reserve(CHARGE), Reserve::Done, "checked");
                        self.order.sequence(s, 1, r, |r, n| r.n = *n).expect("room");
                    }
                    if *c == Command::InsertCheckpoint {
                        self.order.checkpoint_inserted();
                    } else {
                        let id = self.order.next_cp_id();
                        self.order.consistency_point_inserted(id);
                    }
                }
                Command::Stop => {
                    self.spool.stop();
                }
                Command::Start { .. } => self.spool.start().expect("checked"),
                _ => panic!("checked"),
            }
        }

        fn snapshot(&self) -> Snapshot {
            let s = self
                .streams
                .iter()
                .map(|s| s.as_ref().map(|s| (s.ack_state(), s.len())))
                .collect();
            (s, self.order, self.spool)
        }
    }

    fn stream(class: DeviceClass) -> S {
        Stream::new((0..64).map(|_| None).collect(), class, 0, 1)
    }

    fn encode(cmds: &[Command]) -> Vec<u8> {
        let mut buf = Vec::new();
        for c in cmds {
            let mut b = [0u8; crate::command::COMMAND_MAX_LEN];
            let n = c.encode(&mut b).expect("encode");
            buf.extend_from_slice(&b[..n]);
        }
        buf
    }

    fn ack(device: u32, dev_seq: u64) -> Command {
        Command::Ack { device, dev_seq }
    }

    fn ack_log(device: u32, dev_seq: u64) -> Command {
        Command::AckLog { device, dev_seq }
    }

    fn spooled(device: u32, dev_seq: u64) -> Command {
        Command::Spooled { device, dev_seq }
    }

    fn refused(index: usize, why: Why) -> Result<(), Rejected> {
        Err(Rejected { index, why })
    }

    #[test]
    fn a_bad_last_command_changes_nothing() {
        let mut g = G::new(5, 64);
        let before = g.snapshot();
        let r = g.write(&[ack(0, 3), ack_log(1, 2), ack(0, 99)]);
        assert_eq!(r, refused(2, Why::Refused(Refused::Range)));
        assert_eq!(r.unwrap_err().why.errno(), 34);
        assert!(g.snapshot() == before, "a refused batch applied something");
        // Then the valid commands alone are applied.
        g.write(&[ack(0, 3), ack_log(1, 2)]).expect("valid");
        let s = g.streams[0].as_ref().unwrap();
        assert_eq!((s.acked(), s.len()), (3, 2));
        assert_eq!(g.streams[1].as_ref().unwrap().log_acked(), 2);
        assert_eq!(g.spool.used(), 7 * CHARGE);
        // A device not in the group, last.
        let before = g.snapshot();
        let r = g.write(&[ack(0, 5), ack(2, 1)]);
        assert_eq!(r, refused(1, Why::Refused(Refused::Invalid)));
        assert!(g.snapshot() == before);
    }

    #[test]
    fn a_command_valid_only_after_an_earlier_one_is_accepted() {
        let mut g = G::new(4, 64);
        // SPOOLED of a log device needs its log acknowledgement first.
        let log_then_spooled = [ack_log(1, 3), spooled(1, 3)];
        g.write(&log_then_spooled).expect("in order");
        assert_eq!(g.streams[1].as_ref().unwrap().len(), 1);
        // APPLIED of the interval a checkpoint of the batch closes.
        g.write(&[Command::InsertCheckpoint, Command::Applied { epoch: 1 }])
            .expect("in order");
        assert_eq!(g.order.applied_epoch(), 1);
        // A marker that fits in the room an ACK of the batch frees.
        let mut g = G::new(4, 8);
        let room_then_marker = [ack(0, 4), Command::InsertCheckpoint];
        g.write(&room_then_marker).expect("in order");
        // Stale acknowledgements after newer ones: nothing lowered.
        let mut g = G::new(5, 64);
        g.write(&[ack(0, 5), ack(0, 3)]).expect("stale is fine");
        assert_eq!(g.streams[0].as_ref().unwrap().acked(), 5);
    }

    #[test]
    fn the_same_commands_in_the_wrong_order_are_refused_as_a_whole() {
        let mut g = G::new(4, 64);
        let before = g.snapshot();
        let r = g.write(&[spooled(1, 3), ack_log(1, 3)]);
        assert_eq!(r, refused(0, Why::Refused(Refused::Invalid)));
        let r = g.write(&[Command::Applied { epoch: 1 }, Command::InsertCheckpoint]);
        assert_eq!(r, refused(0, Why::Refused(Refused::Range)));
        let mut full = G::new(4, 8);
        let r = full.write(&[Command::InsertCheckpoint, ack(0, 4)]);
        assert_eq!(r, refused(0, Why::NoSpace));
        assert!(g.snapshot() == before);
        // Under `overflow bitmap` too, and the refused marker does not
        // make the group `ahead`.
        let mut full = G::with(4, 8, Overflow::Bitmap);
        let full_before = full.snapshot();
        let r = full.write(&[ack(0, 1), Command::InsertCheckpoint]);
        assert_eq!(r, refused(1, Why::NoSpace));
        assert!(full.snapshot() == full_before);
        assert_eq!(full.spool.mode(), Mode::Replicating);
        // STOP, then what `ahead` refuses.
        let r = g.write(&[Command::Stop, Command::Start { flags: 0 }]);
        assert_eq!(r, refused(1, Why::Unsupported));
        assert_eq!(r.unwrap_err().why.errno(), 95);
        let r = g.write(&[Command::Stop, Command::InsertCheckpoint]);
        assert_eq!(r, refused(1, Why::NoSpace));
        assert!(g.snapshot() == before, "STOP of a refused batch applied");
        // A full copy begins only by `START` written alone.
        let r = g.write(&[
            ack(0, 1),
            Command::Start {
                flags: start_flags::FULL_RESYNC,
            },
        ]);
        assert_eq!(r, refused(1, Why::Unsupported));
        assert!(g.snapshot() == before, "the ACK of a refused batch applied");
        g.write(&[Command::Start { flags: 0 }, Command::Stop])
            .expect("in order");
        assert_eq!(g.spool.mode(), Mode::Ahead);
    }

    #[test]
    fn the_first_refused_command_gives_the_errno() {
        let mut g = G::new(2, 64);
        let mut buf = encode(&[ack(0, 1), ack(0, 9)]);
        buf.extend_from_slice(b"garbage!");
        let mut acks = [None; 2];
        let mut b = Batch {
            streams: &mut acks,
            order: g.order,
            spool: Spool::new(0, Overflow::Block),
            marker_charge: 0,
        };
        b.streams[0] = Some(g.streams[0].as_ref().unwrap().ack_state());
        let r = b.check(&buf, |_, _, _| 0);
        assert_eq!(
            r,
            Err(Rejected {
                index: 1,
                why: Why::Refused(Refused::Range)
            })
        );
        // Malformed after valid ones: -EINVAL where it stands.
        let mut buf = encode(&[ack(0, 1)]);
        buf.extend_from_slice(b"garbage!");
        b.streams[0] = Some(g.streams[0].as_ref().unwrap().ack_state());
        let r = b.check(&buf, |_, _, _| 0).unwrap_err();
        assert_eq!((r.index, r.why.errno()), (1, 22));
        assert!(matches!(r.why, Why::Malformed(_)));
        // The secondary's commands, and markers in an empty group.
        let r = g.write(&[Command::ApplyBegin { epoch: 1 }]);
        assert_eq!(r, refused(0, Why::Unsupported));
        let mut none = [None; 4];
        let mut b = Batch {
            streams: &mut none,
            order: GroupOrder::new(),
            spool: Spool::new(usize::MAX, Overflow::Block),
            marker_charge: 0,
        };
        let cp = Command::InsertConsistencyPoint {
            label: Label::new(b"x").unwrap(),
        };
        let r = b.check(&encode(&[cp]), |_, _, _| 0).unwrap_err();
        assert_eq!((r.why, r.why.errno()), (Why::NoDevice, 19));
        assert_eq!(Why::NoSpace.errno(), 28);
        // How many marker sets to build before checking.
        let mut buf = encode(&[cp, ack(0, 1), Command::InsertCheckpoint, cp]);
        assert_eq!(markers(&buf), 3);
        buf.truncate(buf.len() - 1);
        assert_eq!(markers(&buf), 2, "only the well-formed prefix");
    }

    #[test]
    fn whatever_a_checked_batch_holds_applies() {
        // Random batches over a small group: a batch the check accepts
        // applies without a failure and leaves the state the check
        // foretold, the spool's use and mode included (`G::write` asserts
        // both); a refused one changes nothing.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut accepted, mut refusals) = (0, 0);
        for i in 0..300 {
            // Either policy: a refused marker changes nothing under both.
            let overflow = if i % 2 == 0 {
                Overflow::Block
            } else {
                Overflow::Bitmap
            };
            let mut g = G::with(6, 20, overflow);
            for _ in 0..4 {
                let cmds: Vec<Command> = (0..1 + next(5))
                    .map(|_| {
                        let (device, dev_seq) = (u32::try_from(next(3)).unwrap(), 1 + next(8));
                        match next(9) {
                            0 => Command::AckLog { device, dev_seq },
                            1 | 2 => Command::Ack { device, dev_seq },
                            3 => Command::Spooled { device, dev_seq },
                            4 => Command::Applied { epoch: 1 + next(3) },
                            5 => Command::InsertCheckpoint,
                            6 => Command::InsertConsistencyPoint {
                                label: Label::new(b"p").unwrap(),
                            },
                            7 if next(4) == 0 => Command::Stop,
                            _ => Command::Start { flags: 0 },
                        }
                    })
                    .collect();
                let before = g.snapshot();
                match g.write(&cmds) {
                    Ok(()) => accepted += 1,
                    Err(_) => {
                        refusals += 1;
                        assert!(g.snapshot() == before);
                    }
                }
            }
        }
        assert!(accepted > 100 && refusals > 100, "{accepted} {refusals}");
    }
}
