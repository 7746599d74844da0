//! The fuzz targets' committed corpora replayed through the targets' own
//! bodies (`fuzz/bodies/`), so that every input a fuzzing run found
//! interesting is checked again by `cargo test`, in seconds and without
//! the fuzzer runtime.  A body asserts its target's property and panics
//! on a violation.

use std::path::Path;

#[path = "../../fuzz/bodies/bitmap_decode.rs"]
mod bitmap_decode;

#[test]
fn corpus_bitmap_decode() {
    replay("bitmap_decode", bitmap_decode::run);
}

#[path = "../../fuzz/bodies/command_decode.rs"]
mod command_decode;

#[test]
fn corpus_command_decode() {
    replay("command_decode", command_decode::run);
}

#[path = "../../fuzz/bodies/link_frame.rs"]
mod link_frame;

#[test]
fn corpus_link_frame() {
    replay("link_frame", link_frame::run);
}

#[path = "../../fuzz/bodies/record_decode.rs"]
mod record_decode;

#[test]
fn corpus_record_decode() {
    replay("record_decode", record_decode::run);
}

#[path = "../../fuzz/bodies/superblock_decode.rs"]
mod superblock_decode;

#[test]
fn corpus_superblock_decode() {
    replay("superblock_decode", superblock_decode::run);
}

#[path = "../../fuzz/bodies/table_parse.rs"]
mod table_parse;

#[test]
fn corpus_table_parse() {
    replay("table_parse", table_parse::run);
}

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{target}: input {} fails", p.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus");
}
