//! The fuzz targets' committed corpora replayed through the targets' own
//! bodies (`fuzz/bodies/`), so that every input a fuzzing run found
//! interesting is checked again by `cargo test`, in seconds and without
//! the fuzzer runtime.  A body asserts its target's property and panics
//! on a violation.

use std::path::Path;

/// One body and its replay test per target (`#[path]` takes a literal
/// only, so each path is spelled out).
macro_rules! corpus {
    ($($name:ident => $path:literal),* $(,)?) => {
        $(
            #[path = $path]
            mod $name;
        )*
        mod replays {
            $(
                #[test]
                fn $name() {
                    super::replay(stringify!($name), super::$name::run);
                }
            )*
        }
    };
}

corpus!(
    bitmap_decode => "../../fuzz/bodies/bitmap_decode.rs",
    command_decode => "../../fuzz/bodies/command_decode.rs",
    link_frame => "../../fuzz/bodies/link_frame.rs",
    record_decode => "../../fuzz/bodies/record_decode.rs",
    superblock_decode => "../../fuzz/bodies/superblock_decode.rs",
    table_parse => "../../fuzz/bodies/table_parse.rs",
);

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
