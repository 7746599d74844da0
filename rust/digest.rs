// SPDX-License-Identifier: GPL-2.0

//! ferry-core's checksums over the kernel's `crc32c()` and `xxh64()`.
//!
//! Userspace computes the same functions with other code; both sides are
//! pinned to ferry-core's vectors.  [`self_test`] checks this binding, and
//! the record format built on it, against those vectors when the module
//! loads: a module whose records userspace would reject does not load.
//! In a write's path: the reader signs each record with these
//! (`group/reader.rs`), and a secondary checks the records it applies.

use crate::bindings as b;
use ferry_core::digest::{crc32c, vectors};
use ferry_core::record::{self, vector, GroupKey, HEADER_LEN, TAIL_LEN};
use ferry_core::Digest;
use kernel::error::code::EINVAL;
use kernel::prelude::*;

/// The kernel's implementation of ferry-core's [`Digest`].
pub(crate) struct KernelDigest;

impl Digest for KernelDigest {
    fn crc32c(&self, crc: u32, data: &[u8]) -> u32 {
        let mut crc = crc;
        // `crc32c()` takes an `unsigned int` length.
        for chunk in data.chunks(u32::MAX as usize) {
            // SAFETY: `chunk` is `chunk.len()` readable bytes, and that
            // length fits in a u32 by construction; crc32c only reads them.
            crc = unsafe { b::crc32c(crc, chunk.as_ptr().cast(), chunk.len() as u32) };
        }
        crc
    }

    fn xxh64(&self, seed: u64, data: &[u8]) -> u64 {
        // SAFETY: `data` is `data.len()` readable bytes; xxh64 only reads them.
        unsafe { b::xxh64(data.as_ptr().cast(), data.len(), seed) }
    }
}

/// Checks the binding and the record encoding against ferry-core's pinned
/// vectors.
pub(crate) fn self_test() -> Result {
    let d = KernelDigest;
    for (i, (msg, raw)) in vectors::CRC32C.iter().enumerate() {
        if d.crc32c(!0, msg) != *raw {
            pr_err!("ferry: crc32c() disagrees with vector {}\n", i);
            return Err(EINVAL);
        }
    }
    for (i, (msg, seed, want)) in vectors::XXH64.iter().enumerate() {
        if d.xxh64(*seed, msg) != *want {
            pr_err!("ferry: xxh64() disagrees with vector {}\n", i);
            return Err(EINVAL);
        }
    }

    let fail = |what: &str| {
        pr_err!(
            "ferry: record encoding disagrees with the pinned vector: {}\n",
            what
        );
        EINVAL
    };
    let key = GroupKey::derive(&d, 1, vector::SECRET).map_err(|_| fail("key"))?;
    if (key.head, key.tail) != (vector::HEAD_KEY, vector::TAIL_KEY) {
        return Err(fail("group key"));
    }
    let payload = [vector::PAYLOAD_BYTE; 512];
    if crc32c(&d, &payload) != vector::PAYLOAD_CRC {
        return Err(fail("payload crc"));
    }
    let mut head = [0u8; HEADER_LEN];
    record::encode_header(&vector::header(), vector::PAYLOAD_CRC, &key, &d, &mut head)
        .map_err(|_| fail("header encode"))?;
    if head != vector::HEADER {
        return Err(fail("header"));
    }
    let mut tail = [0u8; TAIL_LEN];
    record::encode_tail(&head, &key, &d, &mut tail);
    if tail != vector::TAIL {
        return Err(fail("tail"));
    }
    let decoded = record::decode_header(&head, &key, &d).map_err(|_| fail("header decode"))?;
    record::verify_payload(&decoded, &d, [&payload[..]]).map_err(|_| fail("payload verify"))?;
    record::verify_tail(&decoded, &tail, &key, &d).map_err(|_| fail("tail verify"))?;
    Ok(())
}
