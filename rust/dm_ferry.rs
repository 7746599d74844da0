// SPDX-License-Identifier: GPL-2.0

//! dm-ferry: asynchronous, write-order-faithful block replication.
//!
//! The module registers the `ferry` device-mapper target.  `dm.rs` is the
//! thin unsafe layer over device-mapper; `digest.rs` binds ferry-core's
//! checksums to the kernel's and checks them at load; `target.rs` is the target, in safe Rust.

use kernel::prelude::*;

mod bindings;
mod digest;
mod dm;
mod target;

module! {
    type: FerryModule,
    name: "dm_ferry",
    author: "The ferry developers",
    description: "device-mapper target for asynchronous write-order-faithful replication",
    license: "GPL",
}

struct FerryModule {
    _target: dm::Registration<target::Ferry>,
}

impl kernel::Module for FerryModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        digest::self_test()?;
        let target = dm::Registration::new(module)?;
        pr_info!("ferry: checksums match ferry-core vectors; target registered\n");
        Ok(Self { _target: target })
    }
}

impl Drop for FerryModule {
    fn drop(&mut self) {
        pr_info!("ferry: target unregistered\n");
    }
}
