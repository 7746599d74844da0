//! The secondary's answer to the primary's question of room before a
//! resync (`ferryd::room`): room in `log_dir` when the resync's bytes fit
//! in what its file system has available less `resync_reserve_mb`.  A
//! refusal is counted, kept for the status (the last one's figures) and
//! logged when refusals begin; the yes that ends them is logged too.

use super::*;
use ferryd::link::Frame;
use ferryd::room::{self, NoRoom};

/// The resyncs this secondary refused for lack of room.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// How many.
    pub(super) count: u64,
    /// The last one's figures.
    pub(super) last: Option<NoRoom>,
    /// The last answer was a refusal.
    refusing: bool,
}

impl Sec {
    /// The answer to question `ask` of device `device`'s stream: has
    /// `log_dir` room for a resync of `need` bytes?  A `log_dir` whose
    /// space cannot be read (`statvfs` failed) has none: said in the log.
    pub(super) fn room_answer(&self, device: u32, ask: u64, need: u64) -> Frame {
        let reserve = self.cfg.resync_reserve_mb.saturating_mul(1 << 20);
        let log_dir = self.dir.display().to_string();
        let available = match self.fs.available(&self.dir) {
            Ok(b) => b,
            Err(e) => {
                warn!(
                    device,
                    "room for a resync: the space of {log_dir} cannot be read ({e}): refused"
                );
                0
            }
        };
        let ok = room::decide(need, available, reserve);
        let r = NoRoom {
            need,
            available,
            reserve,
            log_dir: log_dir.clone(),
        };
        let mut st = lock(&self.room);
        if ok {
            if std::mem::replace(&mut st.refusing, false) {
                info!(device, "room for a resync again: {}", r.figures());
            } else {
                info!(device, "room for a resync: {}", r.figures());
            }
        } else {
            st.count += 1;
            if !std::mem::replace(&mut st.refusing, true) {
                warn!(
                    device,
                    "resync refused: no room in log_dir, {} (the primary asks again)",
                    r.figures()
                );
            }
            st.last = Some(r);
        }
        Frame::Room {
            ask,
            ok,
            need,
            available,
            reserve,
            log_dir,
        }
    }
}
