//! `sb-poke`: rewrites one counter of a meta device's current superblock
//! with a valid checksum, so that a test can hand the constructor a
//! crafted superblock.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use ferry_core::meta::{slot_sector, Superblock, SLOT_LEN};
use ferry_core::FastDigest;

use crate::{io, Res};

#[derive(clap::Args)]
pub(crate) struct SbPokeArgs {
    /// The meta device.
    #[arg(long)]
    dev: PathBuf,
    /// generation, acked_dev_seq, group_seq or epoch.
    #[arg(long)]
    field: String,
    #[arg(long)]
    value: u64,
}

pub(crate) fn sb_poke(a: SbPokeArgs) -> Res<()> {
    let d = &FastDigest;
    let f = io(
        "open meta device",
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_SYNC)
            .open(&a.dev),
    )?;
    // An aligned buffer for O_DIRECT, one slot.
    let mut raw = vec![0u8; 2 * SLOT_LEN];
    let off = raw.as_ptr().align_offset(SLOT_LEN);
    let buf = &mut raw[off..off + SLOT_LEN];
    let mut best: Option<(u64, Superblock)> = None;
    for k in 0..2 {
        io("read", f.read_exact_at(buf, slot_sector(k) * 512))?;
        if let Ok(sb) = Superblock::decode(d, buf) {
            if best.is_none_or(|(_, b)| sb.generation > b.generation) {
                best = Some((k, sb));
            }
        }
    }
    let (k, mut sb) = best.ok_or("sb|FAIL|no valid superblock")?;
    let n = &mut sb.numbers;
    *match a.field.as_str() {
        "generation" => &mut sb.generation,
        "acked_dev_seq" => &mut sb.acked_dev_seq,
        "group_seq" => &mut n.group_seq,
        "epoch" => &mut n.epoch,
        other => return Err(format!("sb|FAIL|unknown field {other}")),
    } = a.value;
    buf.fill(0);
    sb.encode(d, buf).map_err(|e| e.to_string())?;
    io("write", f.write_all_at(buf, slot_sector(k) * 512))?;
    println!("sb|ok|slot={k}|{}={}", a.field, a.value);
    Ok(())
}
