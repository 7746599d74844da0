//! libFuzzer entry of `bodies/superblock_decode.rs` (which says what it checks); `cargo
//! test` replays the committed corpus through the same body
//! (`ferryd/tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../bodies/superblock_decode.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
