// SPDX-License-Identifier: GPL-2.0

//! The log-before-data gate: which member's next record the reader may
//! take, in group order, once no log record before it is unread
//! (`ferry_core::stream::watermark` and `next_releasable`).  Between the
//! spool and the reader in a write's path.

use super::State;
use ferry_core::stream;

impl State {
    /// The device whose next unread record comes first in the group order
    /// among those the gate releases.
    pub(super) fn next_releasable(&mut self) -> Option<usize> {
        let w = stream::watermark(self.streams.iter_mut().flatten().map(|s| &mut s.q));
        stream::next_releasable(self.streams.iter().map(|s| s.as_ref().map(|s| &s.q)), w)
    }
}
