//! The primary's question of room before a resync (`ferryd::room`): the
//! need is the primary's figure, the answer the secondary's.  A question
//! goes on the link of one connected stream (the lowest device id), as a
//! [`Frame::RoomAsk`] between its batches; the secondary's
//! [`Frame::Room`] comes back among its acknowledgements.  One question
//! at a time: a newer one replaces one not answered.  On a yes `START` is
//! written ([`Shared::room_then_start`]); on a no, or no answer, nothing
//! is: the hold is recorded, counted, logged and said ([`Shared::held`]).

use super::resync::{Attempt, Held, StartReq, RETRY};
use super::*;
use ferryd::config::Resync;
use ferryd::room::NoRoom;
use tokio::sync::oneshot;

/// How long the primary waits for the answer.
pub(super) const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The secondary's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// Room for the resync: `START` may be written.
    Room,
    /// No room, and the secondary's figures.
    NoRoom(NoRoom),
}

/// The question being asked.
struct Pending {
    ask: u64,
    need: u64,
    /// The stream whose link carries it.
    device: u32,
    /// Sent on that link (not to be sent again).
    sent: bool,
    answer: oneshot::Sender<Answer>,
}

/// The questions of room.
#[derive(Default)]
pub(super) struct Questions {
    /// The number of the last question.
    last: u64,
    pending: Option<Pending>,
}

impl Shared {
    /// The question of room device `id`'s link is to send now, if any
    /// (once).
    pub(super) fn room_question(&self, id: u32) -> Option<Frame> {
        let mut q = lock(&self.room);
        let p = q.pending.as_mut().filter(|p| p.device == id && !p.sent)?;
        p.sent = true;
        Some(Frame::RoomAsk {
            ask: p.ask,
            need: p.need,
        })
    }

    /// The secondary answered question `ask` (an answer to no question
    /// waiting, one given up, is dropped).
    pub(super) fn room_answered(&self, ask: u64, ok: bool, room: NoRoom) {
        let mut q = lock(&self.room);
        if q.pending.as_ref().is_some_and(|p| p.ask == ask) {
            if let Some(p) = q.pending.take() {
                let _ = p.answer.send(if ok {
                    Answer::Room
                } else {
                    Answer::NoRoom(room)
                });
            }
        }
    }

    /// Device `id`'s link closed: a question it carried (or was to carry)
    /// gets no answer.
    pub(super) fn room_link_closed(&self, id: u32) {
        let mut q = lock(&self.room);
        if q.pending.as_ref().is_some_and(|p| p.device == id) {
            q.pending = None;
        }
    }

    /// Asks the secondary whether its `log_dir` has room for a resync of
    /// `need` bytes; `Err` says why there is no answer (no stream
    /// connected, the connection closed, none within [`ASK_TIMEOUT`]).
    pub(super) async fn ask_room(&self, need: u64) -> std::result::Result<Answer, String> {
        let dev = {
            let devs = lock(&self.devs);
            devs.values().find(|d| lock(&d.q).connected).cloned()
        };
        let Some(dev) = dev else {
            return Err("no stream is connected to the secondary".into());
        };
        let (tx, rx) = oneshot::channel();
        let ask = {
            let mut q = lock(&self.room);
            q.last += 1;
            q.pending = Some(Pending {
                ask: q.last,
                need,
                device: dev.id,
                sent: false,
                answer: tx,
            });
            q.last
        };
        dev.more.notify_one();
        let r = tokio::time::timeout(ASK_TIMEOUT, rx).await;
        let mut q = lock(&self.room);
        if q.pending.as_ref().is_some_and(|p| p.ask == ask) {
            q.pending = None;
        }
        match r {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err(format!(
                "device {}'s link, which carried the question, closed (or a newer question \
                 replaced it)",
                dev.id
            )),
            Err(_) => Err(format!(
                "no answer on device {}'s link within {} s",
                dev.id,
                ASK_TIMEOUT.as_secs()
            )),
        }
    }
}

impl Shared {
    /// A `START` for `by` and `reason` not written: the secondary said no
    /// room (`Ok`, its figures) or did not answer (`Err`, why).  Records
    /// it (asked again after [`RETRY`]), counts a refusal, logs it once
    /// while it repeats (each time for `ferryctl resync`); its words.
    pub(super) fn held(
        &self,
        by: &str,
        reason: &str,
        full: bool,
        answer: std::result::Result<NoRoom, String>,
        now: Instant,
    ) -> String {
        let manual = by != "automatic";
        let group = &self.cfg.group;
        let again = if full { " --full" } else { "" };
        let then = if !manual {
            "and the resync starts by itself".to_string()
        } else if self.cfg.resync == Resync::Auto && !full {
            "and the automatic resync starts it by itself".to_string()
        } else {
            format!("then run ferryctl resync{again} {group} again")
        };
        let (kind, words, no_room) = match answer {
            Ok(r) => (Held::NoRoom, r.words(&then), Some(r)),
            Err(why) => (
                Held::NoAnswer,
                format!(
                    "resync not started: the secondary did not answer whether its log_dir has \
                     room for it ({why}); {}",
                    if manual {
                        format!("START not written, run ferryctl resync{again} {group} again")
                    } else {
                        format!("asked again every {} s", RETRY.as_secs())
                    }
                ),
                None,
            ),
        };
        let mut st = lock(&self.resync);
        st.last = Some(Attempt {
            at: now,
            errno: None,
            held: Some(kind),
            full,
        });
        if kind == Held::NoRoom {
            st.room_refusals += 1;
        }
        st.no_room = no_room;
        st.held_words = Some(words.clone());
        st.logged = None;
        if manual || st.logged_held != Some(kind) {
            st.logged_held = Some(kind);
            warn!(full, "resync ({by}, {reason}): {words}");
        }
        words
    }

    /// Asks the secondary for room for `need` bytes, then writes `START`
    /// as [`Shared::start_resync`] does on a yes; on a no, or no answer,
    /// writes nothing ([`Shared::held`]).
    pub(super) async fn room_then_start(
        &self,
        req: &StartReq<'_>,
        now: Instant,
    ) -> std::result::Result<(), NotStarted> {
        let (by, reason, full) = (req.by, req.reason, req.full);
        match self.ask_room(req.need).await {
            Ok(Answer::Room) => {
                // The dirty data may have grown while the question was
                // on its way (the application writes while `ahead`; a
                // question can wait in TCP through a short cut): a yes
                // to less than the resync needs now starts nothing, and
                // the next question asks for what it needs then.
                self.kernel.forget();
                let grown = self
                    .kernel_view()
                    .and_then(|v| self.need_of(&v, full).ok())
                    .filter(|&n| n > req.need);
                if let Some(n) = grown {
                    let why = format!(
                        "its yes was for {} bytes; the dirty data grew to {n} bytes since",
                        req.need
                    );
                    return Err(NotStarted::Held(self.held(by, reason, full, Err(why), now)));
                }
                self.start_resync(req, now).map_err(NotStarted::Kernel)
            }
            Ok(Answer::NoRoom(r)) => Err(NotStarted::Held(self.held(by, reason, full, Ok(r), now))),
            Err(why) => Err(NotStarted::Held(self.held(by, reason, full, Err(why), now))),
        }
    }
}

/// Why a `START` was not taken.
#[derive(Debug)]
pub(super) enum NotStarted {
    /// The kernel refused it with this errno.
    Kernel(i32),
    /// Not written: the secondary's answer of room (its words).
    Held(String),
}

#[cfg(test)]
#[path = "primary_room_tests.rs"]
mod tests;
