//! `ferryd --check`: whether a group's configuration is one `ferryd` can
//! run with, said in plain words, without starting anything or changing
//! any file.
//!
//! It reads the file as `ferryd` does ([`Config::parse`] and
//! [`Config::problems`]: keys, types, the group's name, the fields the
//! role needs, the addresses), reads the key as `ferryd` does
//! ([`Config::key`]: it exists, no permission for group or others, at
//! least 32 hexadecimal digits), and looks at the directories `ferryd`
//! creates or writes in (the secondary's `log_dir`, the primary's
//! `spool_dir` when the disk spool is on, the control socket's directory):
//! each must be a directory this user may write in, or be creatable (its
//! nearest existing ancestor a directory this user may write in).

use std::path::Path;

use nix::unistd::{access, AccessFlags};

use crate::config::{Config, Role};

/// What is wrong with the configuration at `path`, in plain words, each
/// naming the setting (empty: it is usable).
pub fn problems(path: &Path) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot read {}: {e}", path.display())],
    };
    let c = match Config::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            return vec![format!(
                "not a valid configuration: {}",
                e.to_string().trim()
            )]
        }
    };
    let mut p = c.problems();
    if let Err(e) = c.key() {
        p.push(format!("{e:#}"));
    }
    let mut dirs = vec![("control_socket's directory", c.control_socket())];
    match c.role {
        Role::Secondary => {
            if let Some(d) = &c.log_dir {
                dirs.push(("log_dir", d.clone()));
            }
        }
        Role::Primary if c.spool_after_mb > 0 => dirs.push(("spool_dir", c.spool_dir())),
        Role::Primary => {}
    }
    for (what, d) in dirs {
        let d = if what == "control_socket's directory" {
            match d.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => continue,
            }
        } else {
            d
        };
        if let Some(e) = dir_problem(&d) {
            p.push(format!("{what} {}: {e}", d.display()));
        }
    }
    p
}

/// Why `ferryd` could not create `dir` or write in it (`None`: it can).
pub fn dir_problem(dir: &Path) -> Option<String> {
    let writable = |d: &Path| access(d, AccessFlags::W_OK | AccessFlags::X_OK).is_ok();
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Some("exists and is not a directory".into()),
        Ok(_) if writable(dir) => return None,
        Ok(_) => return Some("not writable by this user".into()),
        Err(e) if !missing(&e) => return Some(e.to_string()),
        Err(_) => {}
    }
    let mut up = dir.parent();
    while let Some(a) = up {
        let a = if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        };
        match std::fs::metadata(a) {
            Ok(m) if !m.is_dir() => {
                return Some(format!(
                    "cannot be created: {} is not a directory",
                    a.display()
                ))
            }
            Ok(_) if writable(a) => return None,
            Ok(_) => {
                return Some(format!(
                    "cannot be created: {} is not writable by this user",
                    a.display()
                ))
            }
            Err(e) if !missing(&e) => {
                return Some(format!("cannot be created: {}: {e}", a.display()))
            }
            Err(_) => up = a.parent(),
        }
    }
    Some("cannot be created".into())
}

/// A path that is not there, or below one that is not a directory.
fn missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// `ferryd --check`: prints `ok`, or each problem on a line of standard
/// error; returns the exit code (0 or 1).
pub fn run(path: &Path) -> u8 {
    let p = problems(path);
    if p.is_empty() {
        println!("{}: ok", path.display());
        return 0;
    }
    for l in &p {
        eprintln!("{}: {l}", path.display());
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    const KEY: &str = "00112233445566778899aabbccddeeff\n";

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A configuration in `d`: `body` after `group` and a key file of
    /// `mode` holding `key`.
    fn config(d: &Path, body: &str, key: &str, mode: u32) -> PathBuf {
        let k = d.join("g.key");
        std::fs::write(&k, key).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
        let p = d.join("g.toml");
        std::fs::write(
            &p,
            format!(
                "group = \"g\"\nkey_file = \"{}\"\ncontrol_socket = \"{}/run/g.sock\"\n{body}",
                k.display(),
                d.display()
            ),
        )
        .unwrap();
        p
    }

    #[test]
    fn a_good_secondary_and_primary() {
        let d = dir("good");
        let sec = format!(
            "role = \"secondary\"\nlisten = \"0.0.0.0:7789\"\nlog_dir = \"{}/log/g\"\n",
            d.display()
        );
        let p = config(&d, &sec, KEY, 0o600);
        assert_eq!(problems(&p), Vec::<String>::new());
        assert_eq!(run(&p), 0);
        let pri = format!(
            "role = \"primary\"\npeer = \"backup.example:7789\"\nspool_dir = \"{}/spool\"\n",
            d.display()
        );
        let p = config(&d, &pri, KEY, 0o400);
        assert_eq!(problems(&p), Vec::<String>::new());
        // Nothing was created.
        assert!(!d.join("log").exists() && !d.join("spool").exists() && !d.join("run").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_problem_is_said() {
        let d = dir("bad");
        std::fs::write(d.join("file"), "").unwrap();
        let body = format!(
            "role = \"secondary\"\nlisten = \"0.0.0.0:7789\"\nlog_dir = \"{}/file/log\"\nstatus = \"10.0.0.1:9789\"\n",
            d.display()
        );
        let p = config(&d, &body, KEY, 0o644);
        let got = problems(&p);
        let k = d.join("g.key");
        assert_eq!(
            got,
            [
                "status must be a loopback address".to_string(),
                format!(
                    "key file {} is accessible by others (mode 0644): chmod 600 it",
                    k.display()
                ),
                format!(
                    "log_dir {}/file/log: cannot be created: {}/file is not a directory",
                    d.display(),
                    d.display()
                ),
            ]
        );
        assert_eq!(run(&p), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn role_fields_keys_and_addresses() {
        let d = dir("fields");
        let p = config(
            &d,
            "role = \"primary\"\nspool_after_mb = 0\n",
            "0011\n",
            0o600,
        );
        let k = d.join("g.key");
        assert_eq!(
            problems(&p),
            [
                "a primary needs `peer`".to_string(),
                format!(
                    "key file {}: expected at least 32 hexadecimal digits, an even number",
                    k.display()
                ),
            ]
        );
        let p = config(
            &d,
            "role = \"primary\"\npeer = \"host\"\nspool_after_mb = 0\n",
            KEY,
            0o600,
        );
        assert_eq!(problems(&p), ["peer \"host\": expected host:port"]);
        let p = config(
            &d,
            "role = \"secondary\"\nlisten = \"nowhere\"\n",
            KEY,
            0o600,
        );
        let got = problems(&p);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("not a valid configuration: "), "{got:?}");
        assert!(got[0].contains("listen"), "{got:?}");
        std::fs::remove_file(&k).unwrap();
        let p = d.join("g.toml");
        let got = problems(&p);
        assert!(got[0].starts_with("not a valid configuration"), "{got:?}");
        let missing = d.join("none.toml");
        assert_eq!(
            problems(&missing)[0],
            format!(
                "cannot read {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_key_file() {
        let d = dir("nokey");
        let body = "role = \"primary\"\npeer = \"[::1]:7789\"\nspool_after_mb = 0\n";
        let p = config(&d, body, KEY, 0o600);
        std::fs::remove_file(d.join("g.key")).unwrap();
        let got = problems(&p);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(&format!(
                "cannot read key file {}: ",
                d.join("g.key").display()
            )),
            "{got:?}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn directories() {
        let d = dir("dirs");
        assert_eq!(dir_problem(&d), None);
        assert_eq!(dir_problem(&d.join("a/b/c")), None);
        std::fs::write(d.join("f"), "").unwrap();
        assert_eq!(
            dir_problem(&d.join("f")).as_deref(),
            Some("exists and is not a directory")
        );
        if !nix::unistd::geteuid().is_root() {
            let ro = d.join("ro");
            std::fs::create_dir(&ro).unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
            assert_eq!(
                dir_problem(&ro).as_deref(),
                Some("not writable by this user")
            );
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
