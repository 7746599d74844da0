//! The configuration's tests.

use super::*;

#[test]
fn parses_and_checks() {
    let c: Config = toml::from_str(
        "group = \"g\"\nrole = \"secondary\"\nkey_file = \"/k\"\nlisten = \"0.0.0.0:7789\"\nlog_dir = \"/var/lib/ferry/g\"\n",
    )
    .unwrap();
    c.check().unwrap();
    assert_eq!(c.device(), PathBuf::from("/dev/ferry/g"));
    assert_eq!(c.spool_dir(), PathBuf::from("/var/lib/ferry/g/spool"));
    assert_eq!(c.control_socket(), PathBuf::from("/run/ferry/g.sock"));
    assert_eq!((c.spool_after_mb, c.spool_max_mb), (16, 4096));
    assert_eq!(c.resync, Resync::Auto);
    assert_eq!(c.resync_reserve_mb, 64);
    // Without a key_file: the service's credential `key`.
    let cred: Config =
        toml::from_str("group = \"g\"\nrole = \"primary\"\npeer = \"h:1\"\n").unwrap();
    assert_eq!(cred.key_file, PathBuf::from("credential:key"));
    let bad: Config =
        toml::from_str("group = \"g\"\nrole = \"primary\"\nkey_file = \"/k\"\n").unwrap();
    assert!(bad.check().is_err());
    let other: Config = toml::from_str(
        "group = \"g\"\nrole = \"primary\"\npeer = \"h:1\"\nkey_file = \"/k\"\ncontrol_socket = \"/run/x/g.sock\"\n",
    )
    .unwrap();
    assert_eq!(other.control_socket(), PathBuf::from("/run/x/g.sock"));
    assert!(toml::from_str::<Config>("group = \"g\"\nrole = \"x\"\nkey_file = \"/k\"\n").is_err());
    assert!(parse_key("00112233445566778899aabbccddeeff").is_ok());
    assert!(parse_key("0011").is_err());
    assert!(parse_key("zz112233445566778899aabbccddeeff").is_err());
}

#[test]
fn resync_auto_or_manual() {
    let with = |v: &str| {
        Config::parse(&format!(
            "group = \"g\"\nrole = \"primary\"\npeer = \"h:1\"\nresync = {v}\n"
        ))
    };
    assert_eq!(with("\"auto\"").unwrap().resync, Resync::Auto);
    assert_eq!(with("\"manual\"").unwrap().resync, Resync::Manual);
    assert_eq!(Resync::Manual.to_string(), "manual");
    for bad in ["\"never\"", "\"Auto\"", "true", "1"] {
        let e = format!("{:#}", with(bad).unwrap_err());
        assert!(e.contains("resync"), "{bad}: {e}");
    }
    let e = format!("{:#}", with("\"never\"").unwrap_err());
    assert!(
        e.contains("unknown variant `never`, expected `auto` or `manual`"),
        "{e}"
    );
}

#[test]
fn initial_sync_full_or_none() {
    let base = "group = \"g\"\nrole = \"primary\"\npeer = \"h:1\"\n";
    assert_eq!(Config::parse(base).unwrap().initial_sync, InitialSync::Full);
    let with = |v: &str| Config::parse(&format!("{base}initial_sync = {v}\n"));
    assert_eq!(with("\"full\"").unwrap().initial_sync, InitialSync::Full);
    assert_eq!(with("\"none\"").unwrap().initial_sync, InitialSync::None);
    assert_eq!(InitialSync::None.to_string(), "none");
    assert_eq!(InitialSync::Full.to_string(), "full");
    for bad in ["\"clean\"", "\"Full\"", "false", "0"] {
        let e = format!("{:#}", with(bad).unwrap_err());
        assert!(e.contains("initial_sync"), "{bad}: {e}");
    }
    let e = format!("{:#}", with("\"clean\"").unwrap_err());
    assert!(
        e.contains("unknown variant `clean`, expected `full` or `none`"),
        "{e}"
    );
    // A secondary takes the key and ignores it, as the other primary
    // keys.
    let sec = Config::parse(
        "group = \"g\"\nrole = \"secondary\"\nlisten = \"0.0.0.0:1\"\nlog_dir = \"/l\"\ninitial_sync = \"none\"\nresync_reserve_mb = 0\n",
    )
    .unwrap();
    assert!(sec.problems().is_empty());
    assert_eq!(sec.resync_reserve_mb, 0);
}

#[test]
fn parse_key_refuses_non_ascii_and_signs() {
    // A multi-byte character across a digit pair: 32 bytes, even.
    let s = format!("{}é{}", "0".repeat(15), "0".repeat(15));
    assert_eq!(s.len(), 32);
    assert!(parse_key(&s).is_err());
    assert!(parse_key(&"é".repeat(16)).is_err());
    assert!(parse_key(&"€".repeat(16)).is_err());
    // `from_str_radix` would take "+f" for 15.
    assert!(parse_key(&format!("+f{}", "0".repeat(30))).is_err());
    assert_eq!(
        parse_key("00112233445566778899AaBbCcDdEeFf").unwrap(),
        [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff
        ]
    );
}

/// A property over generated strings (proptest is not a dependency of
/// the workspace): any text gives a key or an error, never a panic, and
/// a key exactly when the text is an even number, at least 32, of
/// hexadecimal digits.
#[test]
fn parse_key_takes_any_string() {
    const CHARS: &[char] = &[
        '0',
        '7',
        '9',
        'a',
        'f',
        'A',
        'F',
        'g',
        'G',
        '+',
        '-',
        ' ',
        '\0',
        '\n',
        'é',
        'ß',
        '€',
        '\u{10348}',
        '\u{ff10}',
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let n = (next() % 80) as usize;
        let hexish = next() % 2 == 0;
        let s: String = (0..n)
            .map(|_| {
                let r = next() as usize;
                if hexish && r % 16 != 0 {
                    CHARS[r % 7]
                } else {
                    CHARS[r % CHARS.len()]
                }
            })
            .collect();
        let want = s.len() >= 32 && s.len() % 2 == 0 && s.chars().all(|c| c.is_ascii_hexdigit());
        match parse_key(&s) {
            Ok(k) => {
                assert!(want, "{s:?} taken");
                let back: String = k.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(back, s.to_ascii_lowercase());
            }
            Err(_) => assert!(!want, "{s:?} refused"),
        }
    }
}

#[test]
fn peer_addresses() {
    for ok in [
        "10.0.0.2:7789",
        "[fd00::2]:7789",
        "backup:7789",
        "backup.example.org:1",
        "b-1.example:65535",
    ] {
        assert!(check_host_port(ok).is_ok(), "{ok}");
    }
    for (bad, why) in [
        ("backup", "expected host:port"),
        ("backup:0", "port \"0\": expected a number from 1 to 65535"),
        ("backup:x", "port \"x\": expected a number from 1 to 65535"),
        (
            "backup:70000",
            "port \"70000\": expected a number from 1 to 65535",
        ),
        (
            ":7789",
            "host \"\": not a host name or an IP address (an IPv6 one in brackets)",
        ),
        (
            "fd00::2:7789",
            "host \"fd00::2\": not a host name or an IP address (an IPv6 one in brackets)",
        ),
        (
            "a..b:1",
            "host \"a..b\": not a host name or an IP address (an IPv6 one in brackets)",
        ),
        (
            "-a:1",
            "host \"-a\": not a host name or an IP address (an IPv6 one in brackets)",
        ),
    ] {
        assert_eq!(check_host_port(bad).unwrap_err().to_string(), why, "{bad}");
    }
    let c = Config::parse("group = \"g\"\nrole = \"primary\"\nkey_file = \"/k\"\npeer = \"h\"\n")
        .unwrap();
    assert_eq!(c.problems(), ["peer \"h\": expected host:port"]);
    // Every problem, not the first only.
    let c = Config::parse(
        "group = \"a b\"\nrole = \"secondary\"\nkey_file = \"/k\"\nstatus = \"0.0.0.0:1\"\n",
    )
    .unwrap();
    assert_eq!(
        c.problems(),
        [
            "group: 1 to 32 characters of [A-Za-z0-9_.-]",
            "a secondary needs `listen` and `log_dir`",
            "status must be a loopback address"
        ]
    );
}

#[test]
fn the_configurations_of_a_directory() {
    let d = std::env::temp_dir().join(format!("ferry-config-all-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("x.toml")).unwrap();
    for f in ["b.toml", "a.toml", "a.key", "c.toml~"] {
        std::fs::write(d.join(f), "").unwrap();
    }
    assert_eq!(all_in(&d).unwrap(), [d.join("a.toml"), d.join("b.toml")]);
    std::fs::remove_dir_all(&d).unwrap();
    assert!(all_in(&d).is_err());
}

#[test]
fn a_new_key_file_is_private() {
    let d = std::env::temp_dir().join(format!("ferry-config-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("g.key");
    let k = new_key().unwrap();
    assert_eq!(parse_key(&k).unwrap().len(), 32);
    write_key_file(&p, &k, false).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&p), 0o600);
    assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{k}\n"));
    let e = write_key_file(&p, &new_key().unwrap(), false).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        format!("{} exists: not replaced (--force replaces it)", p.display())
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let k2 = new_key().unwrap();
    assert_ne!(k, k2);
    write_key_file(&p, &k2, true).unwrap();
    assert_eq!(mode(&p), 0o600);
    let c = Config::parse(&format!(
        "group = \"g\"\nrole = \"primary\"\npeer = \"h:1\"\nkey_file = \"{}\"\n",
        p.display()
    ))
    .unwrap();
    assert_eq!(c.key().unwrap(), parse_key(&k2).unwrap());
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        1,
        "no temporary left"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

fn key_file(name: &str, mode: u32) -> Config {
    let p = std::env::temp_dir().join(format!("ferry-key-{name}-{}", std::process::id()));
    std::fs::write(&p, "00112233445566778899aabbccddeeff\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    toml::from_str(&format!(
        "group = \"g\"\nrole = \"primary\"\npeer = \"h:1\"\nkey_file = {:?}\n",
        p.display().to_string()
    ))
    .unwrap()
}

#[test]
fn key_file_must_be_private() {
    let c = key_file("private", 0o600);
    assert_eq!(c.key().unwrap().len(), 16);
    let _ = std::fs::remove_file(&c.key_file);
    let c = key_file("readonly", 0o400);
    assert_eq!(c.key().unwrap().len(), 16);
    let _ = std::fs::remove_file(&c.key_file);
    for (name, mode) in [
        ("world", 0o644),
        ("group", 0o640),
        ("gw", 0o620),
        ("ox", 0o601),
    ] {
        let c = key_file(name, mode);
        let e = format!("{:#}", c.key().unwrap_err());
        assert_eq!(
            e,
            format!(
                "key file {} is accessible by others (mode {mode:04o}): chmod 600 it",
                c.key_file.display()
            )
        );
        let _ = std::fs::remove_file(&c.key_file);
    }
}
