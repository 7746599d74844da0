// SPDX-License-Identifier: GPL-2.0

//! The module's groups: a device's constructor joins the group its table
//! line names (created with the first device), its destructor leaves it
//! (the group ends with its last device).  The module installs the one
//! [`Registry`] at load and frees it at unload ([`registry`]).

use super::{Group, JoinError, Member, Settings};
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

/// The consistency groups, set while the target type is registered.
static REGISTRY: AtomicPtr<Registry> = AtomicPtr::new(core::ptr::null_mut());

/// The module's groups.  Only target callbacks call this, and they run only
/// while the target type is registered, that is while `REGISTRY` is set.
pub(crate) fn registry() -> &'static Registry {
    // SAFETY: the module's `init` sets the pointer to a leaked box
    // (`install_registry`) before registering the target; its `drop`
    // unregisters the target (so no callback runs any more) before freeing
    // it (`free_registry`).
    unsafe { &*REGISTRY.load(Ordering::Acquire) }
}

/// Makes `registry` the module's: module init, before the target type is
/// registered.
pub(crate) fn install_registry(registry: KBox<Registry>) {
    REGISTRY.store(KBox::into_raw(registry), Ordering::Release);
}

/// Frees the module's registry: module init failure or exit, when the
/// target type is not registered.
pub(crate) fn free_registry() {
    let p = REGISTRY.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !p.is_null() {
        // SAFETY: `p` came from `KBox::into_raw` in `install_registry`, and
        // no target callback can use it: the target type is not registered.
        drop(unsafe { KBox::from_raw(p) });
    }
}

/// The groups of the module.  Its mutex serialises constructors and
/// destructors, so that a group is never left by its last device while
/// another joins it.
pub(crate) struct Registry {
    groups: Pin<KBox<Mutex<KVec<Option<Arc<Group>>>>>>,
}

/// Which group settings a table line gave.
pub(crate) struct Given {
    pub(crate) spool_mb: bool,
    pub(crate) overflow: bool,
    pub(crate) checkpoint_ms: bool,
    pub(crate) block_timeout: bool,
    pub(crate) resync_mbps: bool,
}

impl Registry {
    /// An empty registry.
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            groups: KBox::pin_init(new_mutex!(KVec::new()), GFP_KERNEL)?,
        })
    }

    /// Joins device `id` to the group named `name`, created with `settings`
    /// if it does not exist; the `given` settings must match an existing
    /// group's.
    pub(crate) fn join(
        &self,
        name: &[u8],
        settings: Settings,
        given: Given,
        m: &Member,
    ) -> core::result::Result<Arc<Group>, JoinError> {
        let mut groups = self.groups.lock();
        let found = groups.iter().flatten().find(|g| g.name() == name).cloned();
        let (g, created) = match found {
            Some(g) => {
                let s = g.settings();
                if (given.spool_mb && s.spool_mb != settings.spool_mb)
                    || (given.overflow && s.overflow != settings.overflow)
                    || (given.checkpoint_ms && s.checkpoint_ms != settings.checkpoint_ms)
                    || (given.block_timeout && s.block_timeout_s != settings.block_timeout_s)
                    || (given.resync_mbps && s.resync_mbps != settings.resync_mbps)
                {
                    return Err(JoinError::Settings);
                }
                (g, false)
            }
            None => (
                Group::create(name, settings, m.secondary).map_err(JoinError::Create)?,
                true,
            ),
        };
        if let Err(e) = g.join(m) {
            if created {
                g.shutdown();
            }
            return Err(e);
        }
        if created {
            let slot = groups.iter().position(Option::is_none);
            let stored = match slot {
                Some(i) => groups.get_mut(i).map(|s| *s = Some(g.clone())).is_some(),
                None => groups.push(Some(g.clone()), GFP_KERNEL).is_ok(),
            };
            if !stored {
                g.leave(m.id);
                g.shutdown();
                return Err(JoinError::NoMemory);
            }
        }
        Ok(g)
    }

    /// Removes one user of device `id` of `group`; the group ends with its
    /// last device.  It is shut down (its character device deregistered)
    /// before the registry is unlocked: a device of the same group created
    /// meanwhile makes a new group whose character device would otherwise
    /// find the old one's name still taken.  (The order registry, then
    /// `misc_mtx` is the one `join` takes when it registers; nothing that
    /// holds `misc_mtx` takes the registry.)
    pub(crate) fn leave(&self, group: &Arc<Group>, id: u32) {
        let mut groups = self.groups.lock();
        if !group.leave(id) {
            return;
        }
        for slot in groups.iter_mut() {
            if slot.as_ref().is_some_and(|g| Arc::ptr_eq(g, group)) {
                *slot = None;
            }
        }
        group.shutdown();
        drop(groups);
    }
}
