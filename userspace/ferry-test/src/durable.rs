//! A durable log of 512-byte entries on a block device: what the writer
//! wrote and the reader acknowledged, read back after a power cut.

use super::*;

/// An append-only log of 512-byte entries on a block device, each written
/// durably (`O_DIRECT | O_DSYNC`); an empty entry ends it.
pub(crate) struct DurableLog {
    f: File,
    at: u64,
    buf: Vec<u8>,
}

impl DurableLog {
    pub(crate) fn open(p: &PathBuf, off: u64) -> Res<Self> {
        let f = io(
            "open log device",
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(p),
        )?;
        Ok(Self {
            f,
            at: off,
            buf: Vec::new(),
        })
    }

    pub(crate) fn append(&mut self, lines: &[String]) -> Res<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let n = lines.len() * 512;
        self.buf.resize(n + BLOCK, 0);
        let off = self.buf.as_ptr().align_offset(BLOCK);
        let area = &mut self.buf[off..off + n];
        area.fill(0);
        for (i, l) in lines.iter().enumerate() {
            let b = &l.as_bytes()[..l.len().min(511)];
            area[i * 512..i * 512 + b.len()].copy_from_slice(b);
        }
        io("log write", self.f.write_all_at(area, self.at))?;
        self.at += n as u64;
        Ok(())
    }

    /// The entries from `off` up to the first empty one.
    pub(crate) fn read_all(p: &PathBuf, off: u64) -> Res<Vec<String>> {
        let f = io("open log", File::open(p))?;
        let mut out = Vec::new();
        let mut at = off;
        let mut sector = [0u8; 512];
        loop {
            io("read log", f.read_exact_at(&mut sector, at))?;
            let end = sector.iter().position(|&c| c == 0).unwrap_or(512);
            if end == 0 {
                return Ok(out);
            }
            out.push(String::from_utf8_lossy(&sector[..end]).into_owned());
            at += 512;
        }
    }
}
