//! Writes valid records, commands and bitmaps as seed inputs for the fuzz
//! targets: `cargo run --example fuzz_seeds --features std -- ../fuzz/corpus`.

use std::fs;
use std::path::Path;

use ferry_core::bitmap::ChunkBitmap;
use ferry_core::command::{start_flags, Command};
use ferry_core::record::{
    encode_record, ConsistencyPayload, Flags, GroupKey, Label, RecordHeader, RecordKind,
};
use ferry_core::FastDigest;

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let dir = Path::new(&dir);
    let key = GroupKey::derive(&FastDigest, 0x6665_7272_7900_0001, b"fuzz").unwrap();
    let rec_dir = dir.join("record_decode");
    fs::create_dir_all(&rec_dir)?;
    let mut h = RecordHeader::new(RecordKind::Write);
    h.group_id = key.group_id;
    h.device_id = 1;
    h.dev_seq = 3;
    h.group_seq = 9;
    h.timestamp_ns = 1_000;
    h.epoch = 2;
    h.sector = 8;
    h.nr_sectors = 1;
    h.payload_len = 512;
    h.flags = Flags(Flags::LOG);
    let cp = ConsistencyPayload {
        cp_id: 4,
        first_dev_seq: 1,
        label: Label::new(b"seed").unwrap(),
    };
    let mut cpbuf = [0u8; 80];
    let cplen = cp.encode(&mut cpbuf).unwrap();
    let cases: [(RecordKind, u32, u32); 6] = [
        (RecordKind::Write, 1, 512),
        (RecordKind::Discard, 64, 0),
        (RecordKind::WriteZeroes, 8, 0),
        (RecordKind::Flush, 0, 0),
        (RecordKind::Checkpoint, 0, 0),
        (RecordKind::ConsistencyPoint, 0, cplen as u32),
    ];
    for (i, (kind, nr, plen)) in cases.into_iter().enumerate() {
        let mut h = h;
        h.kind = kind;
        h.nr_sectors = nr;
        h.payload_len = plen;
        if nr == 0 {
            h.sector = 0;
        }
        let payload: Vec<u8> = if kind == RecordKind::ConsistencyPoint {
            cpbuf[..cplen].to_vec()
        } else {
            (0..plen).map(|b| b as u8).collect()
        };
        let mut out = vec![0u8; h.record_len()];
        encode_record(&h, &payload, &key, &FastDigest, &mut out).unwrap();
        for mode in [0u8, 1] {
            let mut f = vec![mode];
            f.extend_from_slice(&out);
            fs::write(rec_dir.join(format!("seed-{i}-{mode}")), f)?;
        }
    }
    let cmd_dir = dir.join("command_decode");
    fs::create_dir_all(&cmd_dir)?;
    let cmds = [
        Command::AckLog {
            device: 1,
            dev_seq: 7,
        },
        Command::Ack {
            device: 2,
            dev_seq: 9,
        },
        Command::Applied { epoch: 3 },
        Command::InsertCheckpoint,
        Command::InsertConsistencyPoint {
            label: Label::new(b"pre-upgrade").unwrap(),
        },
        Command::Start {
            flags: start_flags::FULL_RESYNC,
        },
        Command::Stop,
    ];
    let mut all = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        let mut out = [0u8; 80];
        let n = c.encode(&mut out).unwrap();
        fs::write(cmd_dir.join(format!("seed-{i}")), &out[..n])?;
        all.extend_from_slice(&out[..n]);
    }
    fs::write(cmd_dir.join("seed-all"), all)?;
    let bm_dir = dir.join("bitmap_decode");
    fs::create_dir_all(&bm_dir)?;
    let mut words = [0u64; 3];
    let mut bm = ChunkBitmap::new(&mut words, 150).unwrap();
    bm.set_range(3, 70).unwrap();
    bm.set_range(149, 1).unwrap();
    let mut out = vec![0u8; bm.encoded_len()];
    bm.encode(4, &FastDigest, &mut out).unwrap();
    fs::write(bm_dir.join("seed-0"), out)?;
    Ok(())
}
