//! `ferry-test`: the guest-side tools of ferry's test suite.
//!
//! * `read`: drains `/dev/ferry/<group>` like a replication helper would:
//!   decodes and verifies every record (checksums, signatures, group),
//!   checks per-device continuity and the log-before-data gate, applies
//!   writes to shadow images, acknowledges (log acknowledgements possibly
//!   delayed), and writes one line per record to a log.
//! * `write`: dependent writes of self-describing 4 KiB blocks (each write
//!   is submitted after the previous one completed), round-robin over
//!   devices, with `O_DIRECT | O_DSYNC`.
//! * `check`: proves from the reader's log that every write of `write`
//!   appears exactly once, in group order, with its exact payload.
//! * `cmd`: sends a raw command (or several, separated by `+`, in one
//!   `write(2)`) and prints the errno it got.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

mod cmd;
mod durable;
mod reader;
mod replay;
mod sb_poke;
use cmd::{cmd, CmdArgs};
use durable::DurableLog;
use ferry_core::command::Command;
use ferry_core::record::{self, Flags, GroupKey, Label, RecordKind, HEADER_LEN};
use ferry_core::FastDigest;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use reader::{parse_log_dev, read, ReadArgs};

/// Size of a self-describing block.
const BLOCK: usize = 4096;
/// Magic of a self-describing block.
const BLOCK_MAGIC: &[u8; 8] = b"FERRYBLK";
/// Read buffer: the largest record (1 MiB payload) fits with room.
const READ_BUF: usize = 4 << 20;

#[derive(Parser)]
#[command(about = "ferry's guest-side test tools")]
struct Cli {
    #[command(subcommand)]
    tool: Tool,
}

#[derive(Subcommand)]
enum Tool {
    /// Drain, verify and acknowledge the records of a group.
    Read(ReadArgs),
    /// Dependent self-describing writes.
    Write(WriteArgs),
    /// Check a reader log against a writer log.
    Check(CheckArgs),
    /// After a crash: every completed write the reader did not acknowledge
    /// lies in a chunk marked on the meta device.
    CrashCheck(CrashCheckArgs),
    /// Send one command, or several (`+` between them) in one write(2);
    /// print "ok" or the errno.
    Cmd(CmdArgs),
    /// G1 on a secondary's devices: what they hold is the image of the
    /// writer's devices after a prefix of its (dependent) writes.
    PrefixCheck(PrefixCheckArgs),
    /// Connect to a secondary's ferryd as a primary would, with a given
    /// key; optionally send a corrupted record.  Prints what happened.
    LinkProbe(LinkProbeArgs),
    /// Rewrite one counter of a meta device's current superblock, with a
    /// valid checksum (a crafted superblock for the constructor's checks).
    SbPoke(sb_poke::SbPokeArgs),
    /// Power cuts that drop what was not flushed: G3 (primary) or G4
    /// (secondary) at every point of a dm-log-writes log (`replay.rs`).
    ReplayCheck(replay::ReplayCheckArgs),
}

#[derive(clap::Args)]
struct LinkProbeArgs {
    /// The secondary, host:port.
    #[arg(long)]
    peer: String,
    #[arg(long)]
    group: String,
    /// The key, hexadecimal.
    #[arg(long)]
    key: String,
    /// The stream (device id).
    #[arg(long, default_value_t = 0)]
    device: u32,
    /// After the welcome, send a batch with one record whose payload is
    /// damaged (signed for the group, dev_seq far ahead).
    #[arg(long)]
    corrupt: bool,
}

#[derive(clap::Args)]
struct PrefixCheckArgs {
    /// The devices, in the writer's `--dev` order, repeatable.
    #[arg(long, required = true)]
    dev: Vec<PathBuf>,
    /// The writer's `--blocks`.
    #[arg(long)]
    blocks: u64,
    /// The writer's `--seed`.
    #[arg(long)]
    seed: u64,
    /// The writer's `--sequential`.
    #[arg(long)]
    sequential: bool,
    /// Fail unless the prefix has at least this many writes.
    #[arg(long, default_value_t = 0)]
    min: u64,
    /// The write records the secondary applied to each device, in `--dev`
    /// order, comma-separated (ferryd's `applied_writes`): the prefix must
    /// then end exactly at the last of them, so that a secondary that lost
    /// (or invented) an applied write fails even when what it holds is a
    /// prefix.
    #[arg(long, value_delimiter = ',')]
    applied_writes: Vec<u64>,
}

#[derive(clap::Args)]
struct WriteArgs {
    /// Devices to write to, round-robin, repeatable.
    #[arg(long, required = true)]
    dev: Vec<PathBuf>,
    /// Number of writes.
    #[arg(long)]
    count: u64,
    /// Blocks (4 KiB) per device to spread the writes over.
    #[arg(long, default_value_t = 256)]
    blocks: u64,
    /// Seed of the block choice and content.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Completion log: one line `write_id device block` per write.
    #[arg(long)]
    log: PathBuf,
    /// Also log each completed write durably to `PATH:BYTE_OFFSET`
    /// (512-byte entries), after it completed.
    #[arg(long, value_parser = parse_log_dev)]
    log_dev: Option<(PathBuf, u64)>,
    /// Write blocks in order (block = id mod blocks) instead of at random.
    #[arg(long)]
    sequential: bool,
    /// Stop early, before the next write, once this file exists (the
    /// writes done are `1..n`, n printed at the end).
    #[arg(long)]
    stop_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CrashCheckArgs {
    /// The writer's durable log, `PATH:BYTE_OFFSET`.
    #[arg(long, value_parser = parse_log_dev)]
    writes: (PathBuf, u64),
    /// The reader's durable acknowledgement log, `PATH:BYTE_OFFSET`.
    #[arg(long, value_parser = parse_log_dev)]
    acks: (PathBuf, u64),
    /// The meta device.
    #[arg(long)]
    meta: PathBuf,
    /// Chunk size of the device, KiB.
    #[arg(long, default_value_t = 64)]
    chunk_kb: u64,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The writer's log.
    #[arg(long)]
    writes: PathBuf,
    /// The reader's log.
    #[arg(long)]
    records: PathBuf,
    /// Device ids of the writer's devices, in its `--dev` order.
    #[arg(long, value_delimiter = ',')]
    ids: Vec<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.tool {
        Tool::Read(a) => read(a),
        Tool::Write(a) => write(a),
        Tool::Check(a) => check(a),
        Tool::CrashCheck(a) => crash_check(a),
        Tool::Cmd(a) => cmd(a),
        Tool::PrefixCheck(a) => prefix_check(a),
        Tool::LinkProbe(a) => link_probe(a),
        Tool::SbPoke(a) => sb_poke::sb_poke(a),
        Tool::ReplayCheck(a) => replay::replay_check(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-test: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, String>;

fn io<T>(what: &str, r: std::io::Result<T>) -> Res<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn encode(c: &Command) -> Vec<u8> {
    let mut b = [0u8; ferry_core::command::COMMAND_MAX_LEN];
    let n = c.encode(&mut b).expect("command fits");
    b[..n].to_vec()
}

/// The write id of a self-describing block, if `p` is one.
fn block_write_id(p: &[u8]) -> Option<u64> {
    if p.len() != BLOCK || &p[..8] != BLOCK_MAGIC {
        return None;
    }
    let id = u64::from_le_bytes(p[8..16].try_into().ok()?);
    (p == make_block(
        id,
        u64::from_le_bytes(p[16..24].try_into().ok()?),
        u64::from_le_bytes(p[24..32].try_into().ok()?),
    )
    .as_slice())
    .then_some(id)
}

/// The content of write `id` to `block` with `seed`: a header and a
/// pattern derived from all three, so that any byte out of place shows.
fn make_block(id: u64, block: u64, seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(BLOCK_MAGIC);
    b[8..16].copy_from_slice(&id.to_le_bytes());
    b[16..24].copy_from_slice(&block.to_le_bytes());
    b[24..32].copy_from_slice(&seed.to_le_bytes());
    let mut x = id ^ block.rotate_left(17) ^ seed.rotate_left(41) ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in b[32..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = chunk.len();
        chunk.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    b
}

fn link_probe(a: LinkProbeArgs) -> Res<()> {
    use ferryd::link::{self, Frame, Side};
    let key = ferryd::config::parse_key(&a.key).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&a.peer)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = link::client_config().map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("ferry")
            .map_err(|e| e.to_string())?
            .to_owned();
        let mut s = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let mut ekm = [0u8; 32];
        s.get_ref()
            .1
            .export_keying_material(&mut ekm, link::EXPORTER_LABEL, None)
            .map_err(|e| e.to_string())?;
        let hello = Frame::Hello {
            version: link::VERSION,
            group: a.group.clone(),
            device: a.device,
            tag: link::tag(&key, Side::Primary, &a.group, a.device, &ekm),
        };
        link::write_frame(&mut s, &hello)
            .await
            .map_err(|e| e.to_string())?;
        let next =
            match tokio::time::timeout(Duration::from_secs(10), link::read_frame(&mut s)).await {
                Ok(Ok(Frame::Welcome { next, .. })) => next,
                Ok(Ok(f)) => return Err(format!("unexpected {f:?}")),
                Ok(Err(_)) | Err(_) => {
                    println!("probe|refused");
                    return Ok(());
                }
            };
        println!("probe|welcome|next={next}");
        if a.corrupt {
            let d = &FastDigest;
            let gid = record::group_id_of_name(d, a.group.as_bytes());
            let gkey = GroupKey::derive(d, gid, &[]).map_err(|e| format!("{e:?}"))?;
            let mut h = record::RecordHeader::new(RecordKind::Write);
            h.group_id = gid;
            h.device_id = a.device;
            h.payload_len = BLOCK as u32;
            h.dev_seq = next + 1_000_000;
            h.group_seq = u64::MAX / 2;
            h.timestamp_ns = u64::MAX / 2;
            h.epoch = u64::MAX / 2;
            h.nr_sectors = (BLOCK / 512) as u32;
            let mut out = vec![0u8; h.record_len()];
            record::encode_record(&h, &make_block(1, 0, 0), &gkey, d, &mut out)
                .map_err(|e| format!("{e:?}"))?;
            out[HEADER_LEN + 7] ^= 0x10;
            link::write_frame(&mut s, &link::pack(&out, true))
                .await
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(10), link::read_frame(&mut s)).await {
                Ok(Ok(Frame::Ack { .. })) => println!("probe|acked-corrupt"),
                _ => println!("probe|closed-after-corrupt"),
            }
        }
        Ok(())
    })
}

/// The writer's choice for write `id` (from 1): device index and block.
struct Choice {
    x: u64,
    devs: usize,
    blocks: u64,
    sequential: bool,
}

impl Choice {
    fn new(seed: u64, devs: usize, blocks: u64, sequential: bool) -> Self {
        Self {
            x: seed | 1,
            devs,
            blocks,
            sequential,
        }
    }

    fn next(&mut self, id: u64) -> (usize, u64) {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        let di = ((id - 1) as usize) % self.devs;
        let block = if self.sequential {
            (id - 1) % self.blocks
        } else {
            self.x % self.blocks
        };
        (di, block)
    }
}

fn prefix_check(a: PrefixCheckArgs) -> Res<()> {
    // What each block holds: a write id, nothing (zeroes), or something
    // else (torn or foreign: a failure in itself).
    let mut found = vec![vec![None; a.blocks as usize]; a.dev.len()];
    let mut top = 0u64;
    let mut buf = vec![0u8; BLOCK];
    for (di, p) in a.dev.iter().enumerate() {
        let f = io("open device", File::open(p))?;
        for b in 0..a.blocks {
            io("read", f.read_exact_at(&mut buf, b * BLOCK as u64))?;
            if buf.iter().all(|&c| c == 0) {
                continue;
            }
            let id = block_write_id(&buf).ok_or_else(|| {
                format!(
                    "prefix|FAIL|{}: block {b} is neither zero nor a whole self-describing block",
                    p.display()
                )
            })?;
            found[di][b as usize] = Some(id);
            top = top.max(id);
        }
    }
    // The image after writes 1..=top.
    let mut want = vec![vec![None; a.blocks as usize]; a.dev.len()];
    let mut c = Choice::new(a.seed, a.dev.len(), a.blocks, a.sequential);
    for id in 1..=top {
        let (di, b) = c.next(id);
        want[di][b as usize] = Some(id);
    }
    let mut bad = Vec::new();
    for di in 0..a.dev.len() {
        for b in 0..a.blocks as usize {
            if found[di][b] != want[di][b] {
                bad.push(format!(
                    "dev {di} block {b}: holds {:?}, the prefix to {top} has {:?}",
                    found[di][b], want[di][b]
                ));
            }
        }
    }
    if !bad.is_empty() {
        for l in bad.iter().take(10) {
            println!("prefix|differs|{l}");
        }
        return Err(format!(
            "prefix|FAIL|{} blocks differ from the image after writes 1..={top}: not a prefix of the completion order",
            bad.len()
        ));
    }
    if top < a.min {
        return Err(format!(
            "prefix|FAIL|prefix of {top} writes, expected at least {}",
            a.min
        ));
    }
    if !a.applied_writes.is_empty() {
        if a.applied_writes.len() != a.dev.len() {
            return Err(format!(
                "prefix|FAIL|{} applied counts for {} devices",
                a.applied_writes.len(),
                a.dev.len()
            ));
        }
        // Writes go round-robin over the devices (`Choice`), and each is
        // submitted after the one before completed: the k-th write of
        // device d is write (k - 1) * devs + d + 1, and the image ends at
        // the last write applied to any device.
        let devs = a.dev.len() as u64;
        let expect = (0..devs)
            .zip(&a.applied_writes)
            .filter(|(_, &k)| k > 0)
            .map(|(d, &k)| (k - 1) * devs + d + 1)
            .max()
            .unwrap_or(0);
        if top != expect {
            return Err(format!(
                "prefix|FAIL|prefix of {top} writes, but the secondary applied {:?} writes to the devices: the prefix must end at write {expect}",
                a.applied_writes
            ));
        }
    }
    let written = want.iter().flatten().filter(|w| w.is_some()).count();
    println!("prefix|PASS|writes={top}|blocks_written={written}");
    Ok(())
}

fn write(a: WriteArgs) -> Res<()> {
    let mut files = Vec::new();
    for p in &a.dev {
        files.push(io(
            "open device",
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(p),
        )?);
    }
    let mut log = io("log", File::create(&a.log))?;
    let mut dlog = match &a.log_dev {
        Some((p, off)) => Some(DurableLog::open(p, *off)?),
        None => None,
    };
    // An aligned buffer for O_DIRECT.
    let mut raw = vec![0u8; 2 * BLOCK];
    let off = raw.as_ptr().align_offset(BLOCK);
    let mut choice = Choice::new(a.seed, files.len(), a.blocks, a.sequential);
    let mut done = 0;
    for id in 1..=a.count {
        if a.stop_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        let (di, block) = choice.next(id);
        let data = make_block(id, block, a.seed);
        raw[off..off + BLOCK].copy_from_slice(&data);
        io(
            "write",
            files[di].write_all_at(&raw[off..off + BLOCK], block * BLOCK as u64),
        )?;
        writeln!(log, "{id} {di} {block}").map_err(|e| e.to_string())?;
        if let Some(d) = dlog.as_mut() {
            d.append(&[format!("W {id} {di} {block}")])?;
        }
        done = id;
    }
    println!("writer|writes={done}");
    Ok(())
}

fn check(a: CheckArgs) -> Res<()> {
    let wl = BufReader::new(io("writes", File::open(&a.writes))?);
    let mut want = Vec::new();
    for line in wl.lines() {
        let line = line.map_err(|e| e.to_string())?;
        let v: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
        if let [id, di, block] = v[..] {
            let dev = *a.ids.get(di as usize).ok_or("device index beyond --ids")?;
            want.push((id, dev, block));
        }
    }
    let rl = BufReader::new(io("records", File::open(&a.records))?);
    // (group_seq, write_id, dev, sector)
    let mut got = Vec::new();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for line in rl.lines() {
        let line = line.map_err(|e| e.to_string())?;
        if !line.starts_with("rec kind=Write") {
            continue;
        }
        let kv: HashMap<&str, &str> = line.split(' ').filter_map(|w| w.split_once('=')).collect();
        let num = |k: &str| -> Res<u64> {
            kv.get(k)
                .ok_or(format!("no {k} in {line}"))?
                .parse()
                .map_err(|e| format!("{k}: {e}"))
        };
        let Some(wid) = kv.get("wid") else { continue };
        let wid: u64 = wid.parse().map_err(|e| format!("wid: {e}"))?;
        *seen.entry(wid).or_default() += 1;
        got.push((num("group_seq")?, wid, num("dev")? as u32, num("sector")?));
    }
    got.sort_unstable();
    if let Some((w, n)) = seen.iter().find(|(_, n)| **n > 1) {
        return Err(format!("write {w} shipped {n} times"));
    }
    if got.len() != want.len() {
        return Err(format!(
            "{} writes completed, {} shipped (first missing: {:?})",
            want.len(),
            got.len(),
            want.iter().find(|(id, _, _)| !seen.contains_key(id))
        ));
    }
    for (i, ((_, wid, dev, sector), (id, wdev, block))) in got.iter().zip(&want).enumerate() {
        if wid != id || dev != wdev || *sector != block * (BLOCK as u64 / 512) {
            return Err(format!(
                "position {i} in group order: write {wid} (device {dev}, sector {sector}); the completion order has write {id} (device {wdev}, block {block})"
            ));
        }
    }
    println!("check|writes={}|in_group_order=yes", want.len());
    Ok(())
}

fn crash_check(a: CrashCheckArgs) -> Res<()> {
    let writes = DurableLog::read_all(&a.writes.0, a.writes.1)?;
    let acks = DurableLog::read_all(&a.acks.0, a.acks.1)?;
    let acked: std::collections::HashSet<u64> = acks
        .iter()
        .filter_map(|l| l.strip_prefix("A ")?.parse().ok())
        .collect();
    // The bitmap: one 4 KiB page per 32768 chunks, from sector 2048.
    let meta = io(
        "open meta",
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&a.meta),
    )?;
    let chunk_blocks = a.chunk_kb * 1024 / BLOCK as u64;
    let mut unacked = 0u64;
    let mut chunks_written = std::collections::HashSet::new();
    let mut pages: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut raw = vec![0u8; 2 * BLOCK];
    let off = raw.as_ptr().align_offset(BLOCK);
    for l in &writes {
        let v: Vec<u64> = l
            .split(' ')
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        let [id, _dev, block] = v[..] else {
            return Err(format!("bad write log entry {l:?}"));
        };
        let chunk = block / chunk_blocks;
        chunks_written.insert(chunk);
        if acked.contains(&id) {
            continue;
        }
        unacked += 1;
        let page = chunk / (BLOCK as u64 * 8);
        if let std::collections::hash_map::Entry::Vacant(e) = pages.entry(page) {
            let buf = &mut raw[off..off + BLOCK];
            io(
                "read bitmap",
                meta.read_exact_at(buf, (2048 + page * 8) * 512),
            )?;
            e.insert(buf.to_vec());
        }
        let bit = chunk % (BLOCK as u64 * 8);
        if pages[&page][(bit / 8) as usize] & (1 << (bit % 8)) == 0 {
            return Err(format!(
                "G3: write {id} (block {block}, chunk {chunk}) completed, was not acknowledged, and its chunk is not marked"
            ));
        }
    }
    if writes.is_empty() || unacked == 0 {
        return Err(format!(
            "nothing to check: {} writes logged, {} unacknowledged",
            writes.len(),
            unacked
        ));
    }
    println!(
        "crash|writes={}|acked={}|unacked={}|chunks_written={}",
        writes.len(),
        acked.len(),
        unacked,
        chunks_written.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::encode_batch;
    use ferry_core::Digest;

    #[test]
    fn blocks_describe_themselves() {
        let b = make_block(7, 3, 1);
        assert_eq!(block_write_id(&b), Some(7));
        let mut c = b.clone();
        c[100] ^= 1;
        assert_eq!(block_write_id(&c), None);
        assert_ne!(make_block(7, 3, 1), make_block(8, 3, 1));
    }

    #[test]
    fn several_commands_go_in_one_write() {
        let w = ["ack", "0", "5", "+", "stop", "+", "raw", "00"];
        let b = encode_batch(&w).unwrap();
        let mut cmds = ferry_core::command::Commands::new(&b);
        assert_eq!(
            cmds.next(),
            Some(Ok(Command::Ack {
                device: 0,
                dev_seq: 5
            }))
        );
        assert_eq!(cmds.next(), Some(Ok(Command::Stop)));
        assert!(matches!(cmds.next(), Some(Err(_))), "the raw byte");
        assert_eq!(b.len(), 24 + 8 + 1);
        assert!(encode_batch(&["ack", "0", "+"]).is_err());
    }

    #[test]
    fn digest_is_the_fast_one() {
        assert_eq!(
            FastDigest.crc32c(!0, b"abc"),
            ferry_core::SoftDigest.crc32c(!0, b"abc")
        );
    }
}
