// SPDX-License-Identifier: GPL-2.0

//! Payload storage of spooled records: whole pages, copied from a write
//! bio's segments in `map` and copied out to the reader of the character
//! device.  The unsafe code maps pages (`kmap_local_page`) and walks bio
//! segments; the rest is bounds-checked slice copies over the module's own
//! pages.  A bio's data pages are never seen as a Rust slice: they may be
//! an `O_DIRECT` writer's memory, which user space may change while the
//! copy runs, and a reference (`&[u8]`) to memory another party writes
//! meanwhile is undefined behaviour.  They are copied with a raw copy
//! between the two mappings ([`copy_from_shared`]), as the kernel crate's
//! `Page::read_raw` does.
//!
//! In a write's path: `map` copies the bio's data here (through
//! [`Segments`], which the device-mapper layer's `Bio` implements, so that
//! this file does not depend on that layer, which writes payloads on a
//! secondary); the reader copies it out.

use crate::bindings as b;
use kernel::alloc::{flags, AllocError};
use kernel::page::{Page, PAGE_SIZE};
use kernel::prelude::*;
use kernel::uaccess::UserSliceWriter;

/// The data of a write bio, as the page segments it is made of.
pub(crate) trait Segments {
    /// Length in bytes.
    fn bytes(&self) -> usize;

    /// Calls `f(page, offset, len)` for each single-page segment of the
    /// data, in order.  `page` is valid for the call.
    fn for_each_segment(&self, f: impl FnMut(*mut b::page, usize, usize));
}

/// A record's payload: `len` bytes in `ceil(len / PAGE_SIZE)` pages, the
/// first held inline and the others in a vector, so that a payload of one
/// page (a 4 KiB write, the commonest) costs one page allocation and no
/// other.
pub(crate) struct Payload {
    first: Option<Page>,
    rest: KVec<Page>,
    len: usize,
}

/// Runs `f` on the bytes of `page`, one of the module's own pages (a
/// payload's, a meta device's buffer), mapped for the duration of the
/// call.  Its owner serialises access to it (a payload is written before
/// it is shared; a meta page is used under the group's `meta` lock), and
/// no I/O is in flight on it during the call.
pub(crate) fn with_mapped<R>(page: &Page, f: impl FnOnce(&mut [u8; PAGE_SIZE]) -> R) -> R {
    // SAFETY: `page` is a valid page the module owns; the mapping is
    // released below, in reverse order of any nested mapping because `f`
    // cannot leak it.
    let addr = unsafe { b::ferry_kmap_local_page(page.as_ptr().cast()) };
    // SAFETY: a mapped page is PAGE_SIZE bytes, valid for reads and writes
    // until unmapped; no other reference to this mapping exists.
    let r = f(unsafe { &mut *addr.cast::<[u8; PAGE_SIZE]>() });
    // SAFETY: `addr` was returned by the matching map above.
    unsafe { b::ferry_kunmap_local(addr) };
    r
}

/// Copies `len` bytes at `src_off` of `src`, a page another party may
/// write meanwhile (a bio's data page), to `dst_off` of `dst`, one of the
/// module's own pages, with a raw copy: no Rust reference to `src`'s bytes
/// is formed.  A range past either page is clipped.
///
/// `src` is valid while the caller holds the bio it belongs to.
fn copy_from_shared(dst: &Page, dst_off: usize, src: *mut b::page, src_off: usize, len: usize) {
    let len = len
        .min(PAGE_SIZE.saturating_sub(dst_off))
        .min(PAGE_SIZE.saturating_sub(src_off));
    if len == 0 {
        return;
    }
    // SAFETY: `src` is a valid page (a live bio's, caller) and `dst` one of
    // ours; each mapping is PAGE_SIZE bytes and released below in reverse
    // order.
    let (s, d) = unsafe {
        (
            b::ferry_kmap_local_page(src),
            b::ferry_kmap_local_page(dst.as_ptr().cast()),
        )
    };
    // SAFETY: both ranges lie within their page (clipped above), the two
    // pages are distinct (ours is never a bio's data), and the copy goes
    // through raw pointers only: a concurrent writer of `src` changes
    // what is copied, never the validity of the copy.
    unsafe {
        core::ptr::copy_nonoverlapping(
            s.cast::<u8>().add(src_off).cast_const(),
            d.cast::<u8>().add(dst_off),
            len,
        )
    };
    // SAFETY: the mappings above, released in reverse order.
    unsafe {
        b::ferry_kunmap_local(d);
        b::ferry_kunmap_local(s);
    }
}

impl Payload {
    /// An empty payload (flushes, markers).
    pub(crate) fn empty() -> Self {
        Self {
            first: None,
            rest: KVec::new(),
            len: 0,
        }
    }

    /// `n` pages for `len` bytes, allocated with `gfp`.
    fn alloc(len: usize, gfp: kernel::alloc::Flags) -> Result<Self, AllocError> {
        let n = Self::pages_for(len);
        let mut p = Self::empty();
        if n == 0 {
            return Ok(p);
        }
        p.first = Some(Page::alloc_page(gfp)?);
        if n > 1 {
            p.rest = KVec::with_capacity(n - 1, gfp)?;
            for _ in 1..n {
                p.rest.push(Page::alloc_page(gfp)?, gfp)?;
            }
        }
        p.len = len;
        Ok(p)
    }

    /// Page `i` of the payload.
    fn page(&self, i: usize) -> Option<&Page> {
        match i {
            0 => self.first.as_ref(),
            _ => self.rest.get(i - 1),
        }
    }

    /// The pages, in order.
    fn pages(&self) -> impl Iterator<Item = &Page> {
        Iterator::chain(self.first.iter(), self.rest.iter())
    }

    /// Pages a payload of `len` bytes occupies.
    pub(crate) fn pages_for(len: usize) -> usize {
        len.div_ceil(PAGE_SIZE)
    }

    /// Copies the data of a write bio, allocating with `gfp`
    /// (`GFP_NOWAIT` in `map`, which never sleeps; `GFP_NOIO` in the
    /// worker that lets in a writer held for room).  An allocation failure
    /// is the caller's overflow.
    pub(crate) fn copy_from_bio(bio: &impl Segments, gfp: kernel::alloc::Flags) -> Result<Self, AllocError> {
        let p = Self::alloc(bio.bytes(), gfp | flags::__GFP_NOWARN)?;
        let mut at = 0usize;
        bio.for_each_segment(|page, offset, seg_len| {
            p.copy_in_shared(at, page, offset, seg_len);
            at += seg_len;
        });
        Ok(p)
    }

    /// Copies `len` bytes at `offset` of `src`, a bio's data page, into the
    /// payload at byte `at` (clipped to the payload), raw
    /// ([`copy_from_shared`]).
    fn copy_in_shared(&self, mut at: usize, src: *mut b::page, mut offset: usize, mut len: usize) {
        while len > 0 && at < self.len {
            let (pi, po) = (at / PAGE_SIZE, at % PAGE_SIZE);
            let n = len.min(PAGE_SIZE - po).min(self.len - at);
            let Some(page) = self.page(pi) else {
                return;
            };
            copy_from_shared(page, po, src, offset, n);
            (at, offset, len) = (at + n, offset + n, len - n);
        }
    }

    /// A copy of `src` (process context; may sleep).
    pub(crate) fn from_slice(src: &[u8]) -> Result<Self, AllocError> {
        let mut p = Self::alloc(src.len(), GFP_KERNEL)?;
        p.write_at(0, src);
        Ok(p)
    }

    /// Calls `f(page, len)` for each page in order (`len` is the bytes of
    /// the payload in it).  The pages live as long as `self`.
    pub(crate) fn for_each_page(&self, mut f: impl FnMut(*mut b::page, usize)) {
        let mut left = self.len;
        for page in self.pages() {
            let n = left.min(PAGE_SIZE);
            f(page.as_ptr().cast(), n);
            left -= n;
        }
    }

    /// Copies `src` into the payload at byte `at` (clipped to the payload).
    fn write_at(&mut self, mut at: usize, mut src: &[u8]) {
        while !src.is_empty() && at < self.len {
            let (pi, po) = (at / PAGE_SIZE, at % PAGE_SIZE);
            let n = src.len().min(PAGE_SIZE - po).min(self.len - at);
            let Some(page) = self.page(pi) else {
                return;
            };
            with_mapped(page, |dst| {
                dst[po..po + n].copy_from_slice(&src[..n]);
            });
            src = &src[n..];
            at += n;
        }
    }

    /// `len` bytes of pages, to be filled by a read (a resync's chunk,
    /// whole sectors); not zeroed: the read fills every byte or fails.
    pub(crate) fn for_read(len: usize, gfp: kernel::alloc::Flags) -> Result<Self, AllocError> {
        Self::alloc(len, gfp)
    }

    /// Whether every byte is zero.
    pub(crate) fn is_zero(&self) -> bool {
        let mut zero = true;
        self.for_each_chunk(|b| zero = zero && b.iter().all(|&x| x == 0));
        zero
    }

    /// Payload length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` on each page's bytes in order (the last one clipped).
    pub(crate) fn for_each_chunk(&self, mut f: impl FnMut(&[u8])) {
        let mut left = self.len;
        for page in self.pages() {
            let n = left.min(PAGE_SIZE);
            with_mapped(page, |bytes| f(&bytes[..n]));
            left -= n;
        }
    }

    /// Copies the payload to user space.  May fault and sleep: call with no
    /// spinlock held.
    pub(crate) fn copy_to_user(&self, out: &mut UserSliceWriter) -> Result {
        let mut left = self.len;
        for page in self.pages() {
            let n = left.min(PAGE_SIZE);
            // The user copy may fault and sleep, which `kmap_local`
            // mappings allow.
            with_mapped(page, |bytes| out.write_slice(&bytes[..n]))?;
            left -= n;
        }
        Ok(())
    }
}
