//! The `ferry` table line:
//!
//! ```text
//! <start> <len> ferry <data_dev> <meta_dev> [<#opts> <opt>...]
//! ```
//!
//! Optional arguments (counted in `<#opts>`, each word counts):
//!
//! * `data_offset <sectors>`: first sector of the target on the data device
//!   (default 0).
//!
//! Parsing is pure: it needs no device and no kernel.  The kernel module
//! checks the devices the line names; every rejection has its own message,
//! which the module puts in `ti->error`.

use core::ffi::CStr;

/// The arguments of a table line, borrowed from the line.
#[derive(Debug, PartialEq, Eq)]
pub struct TableArgs<'a> {
    /// Data device: path or `major:minor`.
    pub data_dev: &'a CStr,
    /// Meta device: path or `major:minor`.
    pub meta_dev: &'a CStr,
    /// First sector of the target on the data device.
    pub data_offset: u64,
    /// Whether `data_offset` was given (so the table line reproduces it).
    pub data_offset_set: bool,
}

/// Why a table line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum TableError {
    NoArguments,
    MissingMetaDevice,
    BadOptionCount,
    OptionCountTooLarge,
    TooManyArguments,
    UnknownOption,
    MissingOptionValue,
    BadDataOffset,
    DuplicateOption,
}

impl TableError {
    /// The message for `ti->error` (and the administrator's kernel log).
    pub fn message(self) -> &'static CStr {
        match self {
            Self::NoArguments => c"Missing arguments: <data_dev> <meta_dev> [<#opts> <opt>...]",
            Self::MissingMetaDevice => c"Missing meta device",
            Self::BadOptionCount => c"Invalid optional argument count",
            Self::OptionCountTooLarge => c"Optional argument count exceeds the arguments given",
            Self::TooManyArguments => c"Too many arguments after the optional arguments",
            Self::UnknownOption => c"Unknown optional argument",
            Self::MissingOptionValue => c"Optional argument data_offset needs a value",
            Self::BadDataOffset => c"Invalid data_offset: expected a decimal number of sectors",
            Self::DuplicateOption => c"Optional argument given twice",
        }
    }
}

/// Parses a strictly decimal `u64`: digits only, no sign, no spaces, no
/// prefix, no overflow.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// Parses the arguments after the target name.
pub fn parse<'a>(args: &[&'a CStr]) -> Result<TableArgs<'a>, TableError> {
    let (data_dev, meta_dev) = match args {
        [] => return Err(TableError::NoArguments),
        [_] => return Err(TableError::MissingMetaDevice),
        [d, m, ..] => (*d, *m),
    };
    let mut t = TableArgs {
        data_dev,
        meta_dev,
        data_offset: 0,
        data_offset_set: false,
    };
    let rest = &args[2..];
    let Some((count, opts)) = rest.split_first() else {
        return Ok(t);
    };
    let count = parse_u64(count.to_bytes()).ok_or(TableError::BadOptionCount)?;
    let count = usize::try_from(count).map_err(|_| TableError::OptionCountTooLarge)?;
    if count > opts.len() {
        return Err(TableError::OptionCountTooLarge);
    }
    if count < opts.len() {
        return Err(TableError::TooManyArguments);
    }
    let mut it = opts.iter();
    while let Some(opt) = it.next() {
        match opt.to_bytes() {
            b"data_offset" => {
                if t.data_offset_set {
                    return Err(TableError::DuplicateOption);
                }
                let v = it.next().ok_or(TableError::MissingOptionValue)?;
                t.data_offset = parse_u64(v.to_bytes()).ok_or(TableError::BadDataOffset)?;
                t.data_offset_set = true;
            }
            _ => return Err(TableError::UnknownOption),
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
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
        let t = run(&[c"8:16", c"8:32", c"0"]).unwrap();
        assert!(!t.data_offset_set);
        let t = run(&[c"a", c"b", c"2", c"data_offset", c"2048"]).unwrap();
        assert_eq!(t.data_offset, 2048);
        assert!(t.data_offset_set);
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
            (&[c"a", c"b", c"1", c"data_offset"], MissingOptionValue),
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
        ];
        for (line, want) in cases {
            assert_eq!(run(line), Err(*want), "line {line:?}");
        }
    }

    #[test]
    fn messages_are_distinct() {
        use TableError::*;
        let all = [
            NoArguments,
            MissingMetaDevice,
            BadOptionCount,
            OptionCountTooLarge,
            TooManyArguments,
            UnknownOption,
            MissingOptionValue,
            BadDataOffset,
            DuplicateOption,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.message(), b.message());
            }
        }
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
}
