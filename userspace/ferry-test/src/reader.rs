//! `ferry-test read`: drains `/dev/ferry/<group>` like a replication
//! helper would (decodes and verifies every record, checks each device's
//! continuity and the log-before-data gate, applies writes to shadow
//! images, acknowledges, logs one line per record).

use super::*;

#[derive(clap::Args)]
pub(crate) struct ReadArgs {
    /// The group's name (its records are signed with its id).
    #[arg(long)]
    group: String,
    /// The character device (default /dev/ferry/<group>).
    #[arg(long)]
    dev: Option<PathBuf>,
    /// Per-record log.
    #[arg(long)]
    log: PathBuf,
    /// Write no per-record lines (benchmarks).
    #[arg(long)]
    quiet: bool,
    /// Check headers only (their checksum and signature), not payloads and
    /// tails: what a primary-side helper needs, which only forwards records
    /// (benchmarks).
    #[arg(long)]
    no_verify: bool,
    /// Apply writes of device ID to image PATH (`ID=PATH`), repeatable.
    #[arg(long, value_parser = parse_apply)]
    apply: Vec<(u32, PathBuf)>,
    /// Exit after this long without a record (and no acknowledgement due).
    #[arg(long, default_value_t = 3000)]
    idle_ms: u64,
    /// Do not exit for idleness before this file exists.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Exit after this long in all.
    #[arg(long, default_value_t = 600_000)]
    max_ms: u64,
    /// Delay before acknowledging a log record.
    #[arg(long, default_value_t = 0)]
    log_ack_delay_ms: u64,
    /// Delay before acknowledging any record (spool release).
    #[arg(long, default_value_t = 0)]
    ack_delay_ms: u64,
    /// Log the write ids of acknowledged records, durably and before the
    /// acknowledgement is sent, to `PATH:BYTE_OFFSET` (512-byte entries).
    #[arg(long, value_parser = parse_log_dev)]
    ack_log: Option<(PathBuf, u64)>,
    /// Never acknowledge anything (the spool fills).
    #[arg(long)]
    no_ack: bool,
    /// Stop after this many records (without acknowledging the last
    /// batch), to test redelivery.
    #[arg(long)]
    max_records: Option<u64>,
    /// Use poll(2) with this timeout between reads (else blocking reads
    /// with O_NONBLOCK polling every 10 ms).
    #[arg(long, default_value_t = true)]
    use_poll: bool,
    /// Read buffer size (bytes).
    #[arg(long, default_value_t = READ_BUF)]
    buf: usize,
}

fn parse_apply(s: &str) -> Result<(u32, PathBuf), String> {
    let (id, path) = s.split_once('=').ok_or("expected ID=PATH")?;
    Ok((id.parse().map_err(|e| format!("{e}"))?, PathBuf::from(path)))
}

pub(crate) fn parse_log_dev(s: &str) -> Result<(PathBuf, u64), String> {
    let (p, off) = s.rsplit_once(':').ok_or("expected PATH:BYTE_OFFSET")?;
    Ok((PathBuf::from(p), off.parse().map_err(|e| format!("{e}"))?))
}

/// What the reader knows of one device.
#[derive(Default)]
struct Dev {
    first_dev_seq: u64,
    last_dev_seq: u64,
    is_log: bool,
    /// Log records read, not yet log-acknowledged: (dev_seq, group_seq, due).
    unacked_log: VecDeque<(u64, u64, Instant)>,
    /// Records read and not yet acknowledged: (dev_seq, write id, due).
    ackq: VecDeque<(u64, Option<u64>, Instant)>,
    /// Highest dev_seq read and not yet acknowledged (spool release).
    ack_to: u64,
    acked: u64,
    image: Option<File>,
    records: u64,
    writes: u64,
    checkpoints: u64,
    cps: u64,
    flushes: u64,
}

pub(crate) fn read(a: ReadArgs) -> Res<()> {
    let d = FastDigest;
    let gid = record::group_id_of_name(&d, a.group.as_bytes());
    let key = GroupKey::derive(&d, gid, &[]).map_err(|e| format!("{e:?}"))?;
    let path = a
        .dev
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/dev/ferry/{}", a.group)));
    let mut f = io(
        "open",
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path),
    )?;
    let mut log = io("log", File::create(&a.log))?;
    let mut devs: BTreeMap<u32, Dev> = BTreeMap::new();
    for (id, p) in &a.apply {
        let img = io(
            "image",
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p),
        )?;
        devs.entry(*id).or_default().image = Some(img);
    }
    let mut ack_log = match &a.ack_log {
        Some((p, off)) => Some(DurableLog::open(p, *off)?),
        None => None,
    };
    let mut buf = vec![0u8; a.buf];
    let start = Instant::now();
    let mut last_record = Instant::now();
    let mut total = 0u64;
    let log_delay = Duration::from_millis(a.log_ack_delay_ms);
    loop {
        if start.elapsed() > Duration::from_millis(a.max_ms) {
            return Err("time limit".into());
        }
        let n = match f.read(&mut buf) {
            Ok(0) => {
                writeln!(log, "eof").ok();
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => return Err(format!("read: {e}")),
        };
        let mut off = 0;
        while off < n {
            let bad = |e| format!("record at byte {off} of a {n}-byte read: {e:?}");
            let rec = if a.no_verify {
                let dh = record::decode_header(&buf[off..n], &key, &d).map_err(bad)?;
                let len = dh.header.record_len();
                let payload = buf
                    .get(off + HEADER_LEN..off + len - record::TAIL_LEN)
                    .ok_or_else(|| format!("record at byte {off} truncated"))?;
                record::Record {
                    header: dh.header,
                    payload,
                    head_sig: dh.head_sig,
                    len,
                }
            } else {
                record::decode_record(&buf[off..n], &key, &d).map_err(bad)?
            };
            let h = rec.header;
            let dev = devs.entry(h.device_id).or_default();
            // A session starts at the first unacknowledged record, then
            // every device's stream is contiguous.
            if dev.first_dev_seq == 0 {
                dev.first_dev_seq = h.dev_seq;
                dev.last_dev_seq = h.dev_seq - 1;
            }
            if h.dev_seq != dev.last_dev_seq + 1 {
                return Err(format!(
                    "device {}: dev_seq {} after {} (not contiguous)",
                    h.device_id, h.dev_seq, dev.last_dev_seq
                ));
            }
            dev.last_dev_seq = h.dev_seq;
            dev.records += 1;
            let is_log = h.flags.has(Flags::LOG);
            dev.is_log = is_log;
            // The gate, seen from the reader: every log record read before
            // with a lower group order is acknowledged already (markers
            // excepted: they hold nothing back).
            if !is_log {
                for (id, o) in devs.iter() {
                    if let Some(&(s, g, _)) =
                        o.unacked_log.iter().find(|(_, g, _)| *g < h.group_seq)
                    {
                        return Err(format!(
                            "gate: data record g={} (device {}) released before log record g={} (device {id}, dev_seq {s}) was acknowledged",
                            h.group_seq, h.device_id, g
                        ));
                    }
                }
            }
            let dev = devs.get_mut(&h.device_id).expect("present");
            if is_log && ferry_core::gate::holds_data_back(h.kind) {
                dev.unacked_log
                    .push_back((h.dev_seq, h.group_seq, Instant::now() + log_delay));
            }
            dev.ack_to = h.dev_seq;
            let wid = if h.kind == RecordKind::Write {
                block_write_id(rec.payload)
            } else {
                None
            };
            dev.ackq.push_back((
                h.dev_seq,
                wid,
                Instant::now() + Duration::from_millis(a.ack_delay_ms),
            ));
            let mut extra = String::new();
            match h.kind {
                RecordKind::Write => {
                    dev.writes += 1;
                    if let Some(img) = &dev.image {
                        io("apply", img.write_all_at(rec.payload, h.sector * 512))?;
                    }
                    // The log line's fields: not computed when no line is
                    // written (`--quiet`, as make bench's reader).
                    if !a.quiet {
                        let crc = ferry_core::digest::crc32c(&d, rec.payload);
                        extra = format!(" crc={crc:08x}");
                        if let Some(id) = block_write_id(rec.payload) {
                            extra += &format!(" wid={id}");
                        }
                    }
                }
                RecordKind::WriteZeroes => {
                    if let Some(img) = &dev.image {
                        let z = vec![0u8; h.nr_sectors as usize * 512];
                        io("apply", img.write_all_at(&z, h.sector * 512))?;
                    }
                }
                RecordKind::Checkpoint => dev.checkpoints += 1,
                RecordKind::Flush => dev.flushes += 1,
                RecordKind::ConsistencyPoint => {
                    dev.cps += 1;
                    if let Some(cp) = rec.consistency() {
                        extra = format!(
                            " cp_id={} first={} label={}",
                            cp.cp_id,
                            cp.first_dev_seq,
                            cp.label.as_str()
                        );
                    }
                }
                RecordKind::Discard => {}
            }
            if !a.quiet {
                writeln!(
                log,
                "rec kind={:?} dev={} role={} dev_seq={} group_seq={} epoch={} ts={} sector={} nr={} flags={:#x}{}",
                h.kind,
                h.device_id,
                if is_log { "log" } else { "data" },
                h.dev_seq,
                h.group_seq,
                h.epoch,
                h.timestamp_ns,
                h.sector,
                h.nr_sectors,
                h.flags.0,
                extra
            )
            .ok();
            }
            off += rec.len;
            total += 1;
            last_record = Instant::now();
            if a.max_records.is_some_and(|m| total >= m) {
                log.flush().ok();
                println!("reader|records={total}|stopped=max_records");
                return Ok(());
            }
        }
        if !a.no_ack {
            send_acks(&mut f, &mut devs, &mut log, ack_log.as_mut())?;
        }
        let pending = devs
            .values()
            .any(|d| !d.unacked_log.is_empty() || !d.ackq.is_empty() || d.ack_to > d.acked);
        if n == 0 {
            let stop = a.stop_file.as_ref().is_none_or(|p| p.exists());
            if stop
                && last_record.elapsed() > Duration::from_millis(a.idle_ms)
                && (a.no_ack || !pending)
            {
                break;
            }
            if a.use_poll && !pending {
                let fds = &mut [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
                io(
                    "poll",
                    poll(fds, PollTimeout::from(100u16)).map_err(std::io::Error::from),
                )?;
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    log.flush().ok();
    for (id, dv) in &devs {
        if let Some(img) = &dv.image {
            io("sync", img.sync_all())?;
        }
        println!(
            "reader|dev={id}|log={}|records={}|writes={}|checkpoints={}|cps={}|flushes={}|first_dev_seq={}|last_dev_seq={}",
            dv.is_log, dv.records, dv.writes, dv.checkpoints, dv.cps, dv.flushes, dv.first_dev_seq, dv.last_dev_seq
        );
    }
    println!("reader|records={total}");
    Ok(())
}

/// Writes the acknowledgements that are due: log acknowledgements after
/// their delay, then spool acknowledgements of the records whose delay
/// passed (for a log device, only of what is log-acknowledged).  The write
/// ids acknowledged go to `ack_log` first, durably.
fn send_acks(
    f: &mut File,
    devs: &mut BTreeMap<u32, Dev>,
    log: &mut File,
    mut ack_log: Option<&mut DurableLog>,
) -> Res<()> {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut wids = Vec::new();
    for (&id, dv) in devs.iter_mut() {
        let mut log_to = None;
        while dv
            .unacked_log
            .front()
            .is_some_and(|&(_, _, due)| due <= now)
        {
            log_to = dv.unacked_log.pop_front().map(|(s, _, _)| s);
        }
        if let Some(s) = log_to {
            out.extend(encode(&Command::AckLog {
                device: id,
                dev_seq: s,
            }));
            writeln!(log, "acklog dev={id} dev_seq={s}").ok();
        }
        let limit = match dv.unacked_log.front() {
            Some(&(s, _, _)) => s - 1,
            None => u64::MAX,
        };
        let mut to = dv.acked;
        while let Some(&(s, wid, due)) = dv.ackq.front() {
            if due > now || s > limit {
                break;
            }
            dv.ackq.pop_front();
            to = s;
            wids.extend(wid);
        }
        if to > dv.acked {
            out.extend(encode(&Command::Ack {
                device: id,
                dev_seq: to,
            }));
            dv.acked = to;
        }
    }
    if let Some(l) = ack_log.as_mut() {
        let lines: Vec<String> = wids.iter().map(|w| format!("A {w}")).collect();
        l.append(&lines)?;
    }
    if !out.is_empty() {
        io("write acks", f.write_all(&out))?;
    }
    Ok(())
}
