//! `ferry-test cmd`: commands written to a group's character device as a
//! helper would, the errno that refused them printed (`cmd|ok|N` or
//! `cmd|errno|E`), for the tests of bad input.

use super::*;

#[derive(clap::Args)]
pub(crate) struct CmdArgs {
    /// The character device.
    #[arg(long)]
    dev: PathBuf,
    /// Keep the device open and send after reading this many bytes (to
    /// have shipped records).
    #[arg(long, default_value_t = 0)]
    read_first: usize,
    /// The group (signs `record`).
    #[arg(long, default_value = "")]
    group: String,
    /// ack-log DEV SEQ | ack DEV SEQ | applied EPOCH | checkpoint |
    /// cp LABEL | start | start-full | stop | raw HEX | apply-begin EPOCH |
    /// apply-end EPOCH | state (a secondary's) |
    /// record EPOCH DEV SEQ BLOCK [corrupt|header-only] (a 4 KiB write of
    /// the self-describing block SEQ at BLOCK); commands (not `state` or
    /// `record`) separated by `+` go in one write, e.g. `ack 0 5 + ack 0 9`
    #[arg(trailing_var_arg = true, required = true)]
    words: Vec<String>,
}

pub(crate) fn cmd(a: CmdArgs) -> Res<()> {
    let mut f = io(
        "open",
        OpenOptions::new().read(true).write(true).open(&a.dev),
    )
    .map_err(|e| {
        // Report the errno name for the EBUSY test.
        println!("open|{e}");
        e
    })?;
    if a.read_first > 0 {
        let mut buf = vec![0u8; a.read_first.max(HEADER_LEN)];
        io("read", f.read(&mut buf))?;
    }
    let w: Vec<&str> = a.words.iter().map(String::as_str).collect();
    let num = |s: &str| -> Res<u64> { s.parse().map_err(|e| format!("{s}: {e}")) };
    let bytes = match w[..] {
        _ if w.contains(&"+") => encode_batch(&w)?,
        ["state"] => {
            // The mark, the members, each device id's length.
            let mut b = [0u8; 512];
            match f.read(&mut b) {
                Ok(n) => {
                    let m = ferry_core::checkpoint::ApplyMark::decode(&b[..32.min(n)], &FastDigest)
                        .map_err(|e| format!("{e:?}"))?;
                    let members = u64::from_le_bytes(b[32..40].try_into().unwrap_or_default());
                    let sizes: Vec<String> = b[40..n.max(40)]
                        .chunks_exact(8)
                        .enumerate()
                        .filter_map(|(i, c)| {
                            let len = u64::from_le_bytes(c.try_into().unwrap_or_default());
                            (len > 0).then(|| format!("{i}:{len}"))
                        })
                        .collect();
                    let state = match m.state {
                        ferry_core::checkpoint::ApplyState::Idle => "idle|0".to_string(),
                        ferry_core::checkpoint::ApplyState::InProgress { epoch } => {
                            format!("applying|{epoch}")
                        }
                    };
                    println!(
                        "state|{state}|applied={}|members={members:#x}|sizes={}|len={n}",
                        m.applied,
                        sizes.join(",")
                    );
                }
                Err(e) => println!("state|errno|{}", e.raw_os_error().unwrap_or(0)),
            }
            return Ok(());
        }
        ["record", e, dev, sq, blk, ref rest @ ..] => {
            let (seq, block) = (num(sq)?, num(blk)?);
            let d = &FastDigest;
            let gid = record::group_id_of_name(d, a.group.as_bytes());
            let key = GroupKey::derive(d, gid, &[]).map_err(|e| format!("{e:?}"))?;
            let mut h = record::RecordHeader::new(RecordKind::Write);
            h.group_id = gid;
            h.device_id = num(dev)? as u32;
            h.payload_len = BLOCK as u32;
            h.dev_seq = seq;
            h.group_seq = seq;
            h.timestamp_ns = seq;
            h.epoch = num(e)?;
            h.sector = block * (BLOCK as u64 / 512);
            h.nr_sectors = (BLOCK / 512) as u32;
            let payload = make_block(seq, block, 0);
            let mut out = vec![0u8; h.record_len()];
            record::encode_record(&h, &payload, &key, &FastDigest, &mut out)
                .map_err(|e| format!("{e:?}"))?;
            match rest {
                ["corrupt"] => out[HEADER_LEN + 100] ^= 1,
                ["header-only"] => out.truncate(HEADER_LEN),
                _ => {}
            }
            out
        }
        _ => encode_words(&w)?,
    };
    match f.write(&bytes) {
        Ok(n) => println!("cmd|ok|{n}"),
        Err(e) => println!("cmd|errno|{}", e.raw_os_error().unwrap_or(0)),
    }
    Ok(())
}

/// Encodes several commands of `ferry-test cmd`, separated by `+`, back to
/// back: one `write(2)`.
pub(crate) fn encode_batch(w: &[&str]) -> Res<Vec<u8>> {
    let mut b = Vec::new();
    for one in w.split(|&x| x == "+") {
        b.extend(encode_words(one)?);
    }
    Ok(b)
}

/// Encodes one command of `ferry-test cmd` (`ack-log DEV SEQ`, `ack DEV
/// SEQ`, `spooled DEV SEQ`, `applied EPOCH`, `checkpoint`, `cp LABEL`,
/// `start`, `stop`, `apply-begin EPOCH`, `apply-end EPOCH`, `raw HEX`).
fn encode_words(w: &[&str]) -> Res<Vec<u8>> {
    let num = |s: &str| -> Res<u64> { s.parse().map_err(|e| format!("{s}: {e}")) };
    Ok(match w[..] {
        ["ack-log", d, s] => encode(&Command::AckLog {
            device: num(d)? as u32,
            dev_seq: num(s)?,
        }),
        ["ack", d, s] => encode(&Command::Ack {
            device: num(d)? as u32,
            dev_seq: num(s)?,
        }),
        ["spooled", d, s] => encode(&Command::Spooled {
            device: num(d)? as u32,
            dev_seq: num(s)?,
        }),
        ["applied", e] => encode(&Command::Applied { epoch: num(e)? }),
        ["checkpoint"] => encode(&Command::InsertCheckpoint),
        ["cp", l] => encode(&Command::InsertConsistencyPoint {
            label: Label::new(l.as_bytes()).map_err(|e| format!("{e:?}"))?,
        }),
        ["start"] => encode(&Command::Start { flags: 0 }),
        ["start-full"] => encode(&Command::Start {
            flags: ferry_core::command::start_flags::FULL_RESYNC,
        }),
        ["stop"] => encode(&Command::Stop),
        ["apply-begin", e] => encode(&Command::ApplyBegin { epoch: num(e)? }),
        ["apply-end", e] => encode(&Command::ApplyEnd { epoch: num(e)? }),
        ["raw", hex] => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Res<Vec<u8>>>()?,
        _ => return Err(format!("unknown command {w:?}")),
    })
}
