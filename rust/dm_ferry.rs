// SPDX-License-Identifier: GPL-2.0

//! dm-ferry: asynchronous, write-order-faithful block replication.
//!
//! The module registers the `ferry` device-mapper target.  `dm.rs` is the
//! thin unsafe layer over device-mapper; `digest.rs` binds ferry-core's
//! checksums to the kernel's and checks them at load; `target.rs` is the target, in safe Rust.

#![recursion_limit = "256"]

use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;

mod bindings;
mod chardev;
mod digest;
mod dm;
mod group;
mod payload;
mod sync;
mod target;
mod work;

module! {
    type: FerryModule,
    name: "dm_ferry",
    author: "The ferry developers",
    description: "device-mapper target for asynchronous write-order-faithful replication",
    license: "GPL",
}

/// The consistency groups, set while the target type is registered.
static REGISTRY: AtomicPtr<group::Registry> = AtomicPtr::new(core::ptr::null_mut());

/// The module's groups.  Only target callbacks call this, and they run only
/// while the target type is registered, that is while `REGISTRY` is set.
pub(crate) fn registry() -> &'static group::Registry {
    // SAFETY: `init` sets the pointer to a leaked box before registering the
    // target; `drop` unregisters the target (so no callback runs any more)
    // before freeing it.
    unsafe { &*REGISTRY.load(Ordering::Acquire) }
}

struct FerryModule {
    target: Option<dm::Registration<target::Ferry>>,
}

impl kernel::Module for FerryModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        digest::self_test()?;
        work::init()?;
        let registry = match group::Registry::new().and_then(|r| Ok(KBox::new(r, GFP_KERNEL)?)) {
            Ok(r) => r,
            Err(e) => {
                work::exit();
                return Err(e);
            }
        };
        REGISTRY.store(KBox::into_raw(registry), Ordering::Release);
        let target = match dm::Registration::new(module) {
            Ok(t) => t,
            Err(e) => {
                free_registry();
                work::exit();
                return Err(e);
            }
        };
        pr_info!(
            "ferry: checksums match ferry-core vectors; target registered (record overhead {} bytes + payload pages)\n",
            group::RECORD_OVERHEAD
        );
        Ok(Self {
            target: Some(target),
        })
    }
}

fn free_registry() {
    let p = REGISTRY.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !p.is_null() {
        // SAFETY: `p` came from `KBox::into_raw` in `init`, and no target
        // callback can use it: the target type is not registered.
        drop(unsafe { KBox::from_raw(p) });
    }
}

impl Drop for FerryModule {
    fn drop(&mut self) {
        drop(self.target.take());
        free_registry();
        work::exit();
        pr_info!("ferry: target unregistered\n");
    }
}
