//! Tests of [`super`] (table.rs): every option, every error message, the
//! table line reproduced.

use super::*;

fn run(line: &'static [&'static CStr]) -> Result<TableArgs<'static>, TableError> {
    parse(line)
}

#[test]
fn accepts_minimal_and_offset() {
    let t = run(&[c"/dev/vdb", c"/dev/vdc"]).unwrap();
    assert_eq!(t.data_dev, c"/dev/vdb");
    assert_eq!(t.meta_dev, c"/dev/vdc");
    assert_eq!(t.data_offset, 0);
    assert!(!t.data_offset_set);
    assert_eq!(t.mode, Mode::Passthrough);
    let t = run(&[c"8:16", c"8:32", c"0"]).unwrap();
    assert!(!t.data_offset_set);
    let t = run(&[c"a", c"b", c"2", c"data_offset", c"2048"]).unwrap();
    assert_eq!(t.data_offset, 2048);
    assert!(t.data_offset_set);
    assert!(t.has(Opt::DataOffset));
    assert!(!t.has(Opt::Group));
}

#[test]
fn accepts_replication_options() {
    let t = run(&[
        c"a",
        c"b",
        c"20",
        c"group",
        c"db1",
        c"device_id",
        c"3",
        c"role",
        c"log",
        c"chunk_kb",
        c"128",
        c"spool_mb",
        c"32",
        c"overflow",
        c"block",
        c"checkpoint_ms",
        c"250",
        c"mode",
        c"primary",
        c"block_timeout",
        c"3",
        c"resync_mbps",
        c"40",
    ])
    .unwrap();
    assert_eq!(t.mode, Mode::Primary);
    assert_eq!(t.group, Some(&b"db1"[..]));
    assert_eq!(t.device_id, 3);
    assert_eq!(t.role, Role::Log);
    assert_eq!(t.chunk_kb, 128);
    assert_eq!(t.chunk_sectors(), 256);
    assert_eq!(t.spool_mb, Some(32));
    assert_eq!(t.overflow, Some(Overflow::Block));
    assert_eq!(t.checkpoint_ms, Some(250));
    assert_eq!(t.block_timeout, Some(3));
    assert_eq!(t.resync_mbps, Some(40));
    // A group alone makes a primary with defaults.
    let t = run(&[c"a", c"b", c"2", c"group", c"g"]).unwrap();
    assert_eq!(t.mode, Mode::Primary);
    assert_eq!(t.role, Role::Data);
    assert_eq!(t.device_id, 0);
    assert_eq!(t.chunk_kb, DEFAULT_CHUNK_KB);
    assert_eq!(
        (t.spool_mb, t.overflow, t.checkpoint_ms, t.block_timeout),
        (None, None, None, None)
    );
    assert_eq!(t.resync_mbps, None);
    let t = run(&[c"a", c"b", c"4", c"group", c"g", c"resync_mbps", c"0"]).unwrap();
    assert_eq!(t.resync_mbps, Some(0));
    let t = run(&[c"a", c"b", c"4", c"group", c"g", c"resync_mbps", c"65536"]).unwrap();
    assert_eq!(t.resync_mbps, Some(65536));
    let t = run(&[c"a", c"b", c"4", c"group", c"g", c"checkpoint_ms", c"0"]).unwrap();
    assert_eq!(t.checkpoint_ms, Some(0));
    let t = run(&[c"a", c"b", c"4", c"mode", c"passthrough", c"chunk_kb", c"4"]).unwrap();
    assert_eq!(t.mode, Mode::Passthrough);
}

#[test]
fn rejects_each_bad_line_with_its_error() {
    use TableError::*;
    let cases: &[(&'static [&'static CStr], TableError)] = &[
        (&[], NoArguments),
        (&[c"a"], MissingMetaDevice),
        (&[c"a", c"b", c"x"], BadOptionCount),
        (&[c"a", c"b", c"-1"], BadOptionCount),
        (&[c"a", c"b", c"2", c"data_offset"], OptionCountTooLarge),
        (&[c"a", c"b", c"99999999999999999999999"], BadOptionCount),
        (&[c"a", c"b", c"0", c"extra"], TooManyArguments),
        (&[c"a", c"b", c"1", c"bogus"], UnknownOption),
        (
            &[c"a", c"b", c"1", c"data_offset"],
            MissingOptionValue(Opt::DataOffset),
        ),
        (
            &[c"a", c"b", c"1", c"group"],
            MissingOptionValue(Opt::Group),
        ),
        (&[c"a", c"b", c"2", c"data_offset", c"12x"], BadDataOffset),
        (
            &[c"a", c"b", c"2", c"data_offset", c"18446744073709551616"],
            BadDataOffset,
        ),
        (&[c"a", c"b", c"2", c"data_offset", c"+1"], BadDataOffset),
        (
            &[c"a", c"b", c"4", c"data_offset", c"1", c"data_offset", c"2"],
            DuplicateOption,
        ),
        (&[c"a", c"b", c"2", c"mode", c"tertiary"], BadMode),
        (&[c"a", c"b", c"2", c"group", c"-x"], BadGroup),
        (&[c"a", c"b", c"2", c"group", c"a/b"], BadGroup),
        (&[c"a", c"b", c"2", c"group", c".."], BadGroup),
        (
            &[
                c"a",
                c"b",
                c"2",
                c"group",
                c"abcdefghijklmnopqrstuvwxyz0123456",
            ],
            BadGroup,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"device_id", c"32"],
            BadDeviceId,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"role", c"wal"],
            BadRole,
        ),
        (&[c"a", c"b", c"2", c"chunk_kb", c"48"], BadChunkKb),
        (&[c"a", c"b", c"2", c"chunk_kb", c"2"], BadChunkKb),
        (&[c"a", c"b", c"2", c"chunk_kb", c"131072"], BadChunkKb),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"spool_mb", c"0"],
            BadSpoolMb,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"spool_mb", c"16385"],
            BadSpoolMb,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"overflow", c"drop"],
            BadOverflow,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"checkpoint_ms", c"5"],
            BadCheckpointMs,
        ),
        (
            &[
                c"a",
                c"b",
                c"4",
                c"group",
                c"g",
                c"checkpoint_ms",
                c"4294967296",
            ],
            BadCheckpointMs,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"block_timeout", c"0"],
            BadBlockTimeout,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"block_timeout", c"3601"],
            BadBlockTimeout,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"block_timeout", c"1.5"],
            BadBlockTimeout,
        ),
        (
            &[
                c"a",
                c"b",
                c"4",
                c"group",
                c"g",
                c"block_timeout",
                c"4294967297",
            ],
            BadBlockTimeout,
        ),
        (
            &[c"a", c"b", c"1", c"block_timeout"],
            MissingOptionValue(Opt::BlockTimeout),
        ),
        (
            &[c"a", c"b", c"2", c"block_timeout", c"5"],
            PrimaryNeedsGroup,
        ),
        (
            &[
                c"a",
                c"b",
                c"4",
                c"mode",
                c"passthrough",
                c"block_timeout",
                c"5",
            ],
            PassthroughWithGroupOptions,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"resync_mbps", c"65537"],
            BadResyncMbps,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"resync_mbps", c"-1"],
            BadResyncMbps,
        ),
        (
            &[c"a", c"b", c"4", c"group", c"g", c"resync_mbps", c"2.5"],
            BadResyncMbps,
        ),
        (
            &[c"a", c"b", c"1", c"resync_mbps"],
            MissingOptionValue(Opt::ResyncMbps),
        ),
        (&[c"a", c"b", c"2", c"resync_mbps", c"5"], PrimaryNeedsGroup),
        (
            &[
                c"a",
                c"b",
                c"4",
                c"mode",
                c"passthrough",
                c"resync_mbps",
                c"5",
            ],
            PassthroughWithGroupOptions,
        ),
        (&[c"a", c"b", c"2", c"mode", c"primary"], PrimaryNeedsGroup),
        (
            &[c"a", c"b", c"2", c"mode", c"secondary"],
            PrimaryNeedsGroup,
        ),
        (&[c"a", c"b", c"2", c"role", c"log"], PrimaryNeedsGroup),
        (
            &[c"a", c"b", c"4", c"mode", c"passthrough", c"group", c"g"],
            PassthroughWithGroupOptions,
        ),
    ];
    for (line, want) in cases {
        assert_eq!(run(line), Err(*want), "line {line:?}");
    }
}

#[test]
fn messages_are_distinct() {
    use TableError::*;
    let mut all = std::vec![
        NoArguments,
        MissingMetaDevice,
        BadOptionCount,
        OptionCountTooLarge,
        TooManyArguments,
        UnknownOption,
        BadDataOffset,
        DuplicateOption,
        BadMode,
        BadGroup,
        BadDeviceId,
        BadRole,
        BadChunkKb,
        BadSpoolMb,
        BadOverflow,
        BadCheckpointMs,
        BadBlockTimeout,
        BadResyncMbps,
        PrimaryNeedsGroup,
        PassthroughWithGroupOptions,
    ];
    all.extend(Opt::ALL.map(MissingOptionValue));
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a.message(), b.message());
        }
    }
}

#[test]
fn options_are_reproduced() {
    use std::ffi::CString;
    let lines: &[&[&CStr]] = &[
        &[c"a", c"b"],
        &[c"a", c"b", c"0"],
        &[c"a", c"b", c"2", c"data_offset", c"8"],
        &[
            c"a",
            c"b",
            c"16",
            c"resync_mbps",
            c"12",
            c"block_timeout",
            c"3600",
            c"checkpoint_ms",
            c"0",
            c"role",
            c"log",
            c"group",
            c"g-1",
            c"overflow",
            c"bitmap",
            c"spool_mb",
            c"7",
            c"device_id",
            c"2",
        ],
    ];
    for line in lines {
        let t = parse(line).unwrap();
        let mut s = std::string::String::new();
        t.write_options(&mut s).unwrap();
        let words: std::vec::Vec<CString> = s
            .split_whitespace()
            .map(|w| CString::new(w).unwrap())
            .collect();
        let mut again: std::vec::Vec<&CStr> = std::vec![line[0], line[1]];
        again.extend(words.iter().map(|w| w.as_c_str()));
        assert_eq!(parse(&again).unwrap(), t, "{s}");
    }
}

#[test]
fn option_names_round_trip() {
    for o in Opt::ALL {
        assert_eq!(Opt::from_word(o.name().as_bytes()), Some(o));
    }
    let bits: u16 = Opt::ALL.iter().map(|o| o.bit()).sum();
    assert_eq!(bits.count_ones(), 11);
}

#[test]
fn parse_u64_is_strict() {
    assert_eq!(parse_u64(b"0"), Some(0));
    assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
    for bad in [
        &b""[..],
        b" 1",
        b"1 ",
        b"0x10",
        b"1e3",
        b"-0",
        b"18446744073709551616",
    ] {
        assert_eq!(parse_u64(bad), None, "{bad:?}");
    }
}
