// SPDX-License-Identifier: GPL-2.0

//! dm-ferry: asynchronous, write-order-faithful block replication.
//!
//! The module registers the `ferry` device-mapper target.  Its files, in
//! the order a write travels (`Documentation/ferry.rst`, "Reading the
//! code"): `dm/`, the thin unsafe layer over device-mapper, where a bio
//! enters in `map`; `target.rs`, the target in safe Rust; `payload.rs`,
//! the bio's data copied into pages; `group/`, the consistency group (one
//! file per step: admission, sequencing, spool, gate, markers, reader,
//! acknowledgements, write intent, the secondary's apply, the registry);
//! `chardev.rs`, the character device `ferryd` reads.  Under them:
//! `sync.rs` and `work.rs` (what the 6.12 kernel crate lacks), `digest.rs`
//! (ferry-core's checksums over the kernel's, checked at load) and
//! `bindings.rs`.

#![recursion_limit = "256"]

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

struct FerryModule {
    target: Option<dm::Registration<target::Ferry>>,
}

impl kernel::Module for FerryModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        digest::self_test()?;
        work::init()?;
        if let Err(e) = dm::init_bio_set() {
            work::exit();
            return Err(e);
        }
        let registry = match group::Registry::new().and_then(|r| Ok(KBox::new(r, GFP_KERNEL)?)) {
            Ok(r) => r,
            Err(e) => {
                dm::exit_bio_set();
                work::exit();
                return Err(e);
            }
        };
        group::install_registry(registry);
        let target = match dm::Registration::new(module) {
            Ok(t) => t,
            Err(e) => {
                group::free_registry();
                dm::exit_bio_set();
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

impl Drop for FerryModule {
    fn drop(&mut self) {
        drop(self.target.take());
        group::free_registry();
        dm::exit_bio_set();
        work::exit();
        pr_info!("ferry: target unregistered\n");
    }
}
