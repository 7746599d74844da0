//! Bounds-checked little-endian access to byte buffers.

/// Reads fixed-width little-endian integers from a buffer; every read is
/// checked and a short buffer yields `None`, never a panic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Some(a)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn bytes4(&mut self) -> Option<[u8; 4]> {
        self.array()
    }
}

/// Writes fixed-width little-endian integers into a buffer; a write past the
/// end is refused (returns `None`) and leaves the buffer unchanged.
#[derive(Debug)]
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn put(&mut self, src: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(src.len())?;
        self.buf.get_mut(self.pos..end)?.copy_from_slice(src);
        self.pos = end;
        Some(())
    }

    pub(crate) fn u8(&mut self, v: u8) -> Option<()> {
        self.put(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> Option<()> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Option<()> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> Option<()> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
}

/// Little-endian `u32` at `off`, or 0 when out of range.
pub(crate) fn get_u32(buf: &[u8], off: usize) -> u32 {
    let mut r = Reader::new(buf);
    r.take(off).and_then(|_| r.u32()).unwrap_or(0)
}

/// Little-endian `u64` at `off`, or 0 when out of range.
pub(crate) fn get_u64(buf: &[u8], off: usize) -> u64 {
    let mut r = Reader::new(buf);
    r.take(off).and_then(|_| r.u64()).unwrap_or(0)
}

/// Stores `v` little-endian at `off` if it fits.
pub(crate) fn set_u32(buf: &mut [u8], off: usize, v: u32) {
    if let Some(d) = buf.get_mut(off..off.saturating_add(4)) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// Stores `v` little-endian at `off` if it fits.
pub(crate) fn set_u64(buf: &mut [u8], off: usize, v: u64) {
    if let Some(d) = buf.get_mut(off..off.saturating_add(8)) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}
