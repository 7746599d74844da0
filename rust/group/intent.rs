// SPDX-License-Identifier: GPL-2.0

//! Write intent on the meta device: the kick work writes the bitmap pages
//! whose bits writes wait for, then submits those writes
//! ([`Group::persist`]); the sweep clears the chunks whose writes are all
//! acknowledged, in memory and on disk ([`Group::sweep_stream`]).  What
//! may be set or cleared when is `ferry_core::intent`'s.

use super::meta_io::{meta_write, StreamMeta};
use super::Group;
use ferry_core::intent::WORDS_PER_PAGE;
use ferry_core::meta;
use kernel::prelude::*;

impl Group {
    /// The kick work: writes the wanted bits to the meta devices, then
    /// submits the writes that waited for them.  A write whose bits could
    /// not be written fails with an I/O error.
    pub(super) fn persist(&self) {
        let mut metas = self.meta.lock();
        // Take the waiting writes first: their bits were wanted before they
        // were queued, so the bits written below cover all of them.
        let mut held = self.state.lock().held.take();
        let mut ok = true;
        for (i, sm) in metas.iter_mut().enumerate() {
            let Some(sm) = sm else { continue };
            let pages = {
                let st = self.state.lock();
                st.streams.get(i).and_then(Option::as_ref).map_or(0, |s| s.intent.pages())
            };
            for p in 0..pages {
                let wanted = {
                    let st = self.state.lock();
                    st.streams.get(i).and_then(Option::as_ref).is_some_and(|s| s.intent.wants_page(p))
                };
                if !wanted {
                    continue;
                }
                let wsnap = &mut sm.wsnap;
                let r = meta_write(&sm.dev, &sm.page, meta::BITMAP_SECTOR + 8 * p as u64, |b| {
                    let st = self.state.lock();
                    if let Some(Some(s)) = st.streams.get(i) {
                        s.intent.persist_page(p, b, wsnap);
                    }
                });
                if r.is_err() {
                    pr_err!(
                        "ferry: device {}: cannot write bitmap page {}; failing the writes that wait for it\n",
                        i,
                        p
                    );
                    ok = false;
                    continue;
                }
                let mut st = self.state.lock();
                if let Some(Some(s)) = st.streams.get_mut(i) {
                    s.intent.persisted(p, &sm.wsnap);
                }
            }
        }
        drop(metas);
        while let Some(b) = held.pop() {
            if ok {
                b.submit();
            } else {
                b.fail();
            }
        }
    }

    /// The write-intent sweep of device `i` (`WriteIntent::sweep`: the
    /// chunks whose writes are all acknowledged are cleared in memory),
    /// then the bitmap pages it changed are written.  `last`: the device
    /// is leaving (no write in flight), so both generations may close.
    /// Called with `meta` held.
    pub(super) fn sweep_stream(&self, metas: &mut KVec<Option<StreamMeta>>, i: usize, last: bool) {
        let Some(Some(sm)) = metas.get_mut(i) else {
            return;
        };
        let cleared = {
            let mut st = self.state.lock();
            let Some(Some(s)) = st.streams.get_mut(i) else {
                return;
            };
            let changed = &mut sm.changed;
            s.intent
                .sweep(last, |w| {
                    if let Some(c) = changed.get_mut(w / WORDS_PER_PAGE) {
                        *c = true;
                    }
                })
                .cleared()
        };
        if !cleared {
            return;
        }
        for p in 0..sm.changed.len() {
            let Some(c) = sm.changed.get_mut(p) else { break };
            if !core::mem::replace(c, false) {
                continue;
            }
            let r = meta_write(&sm.dev, &sm.page, meta::BITMAP_SECTOR + 8 * p as u64, |b| {
                let st = self.state.lock();
                if let Some(Some(s)) = st.streams.get(i) {
                    s.intent.sweep_page(p, b);
                }
            });
            // A failed clear only leaves bits set: more to resync, never less.
            if r.is_err() {
                pr_err!("ferry: device {}: cannot clear bitmap page {}\n", i, p);
            }
        }
    }
}
