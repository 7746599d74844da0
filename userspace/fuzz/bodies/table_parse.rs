//! Table-line parser: arbitrary words are either rejected with a typed
//! error or parse to arguments that the canonical writer reproduces: the
//! devices plus `write_options` parse back to the same arguments.

use ferry_core::table::{parse, Opt};
use std::ffi::{CStr, CString};

pub fn run(data: &[u8]) {
    // device-mapper splits the line on blanks; words never hold a NUL.
    let words: Vec<CString> = data
        .split(|b| b.is_ascii_whitespace() || *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| CString::new(w).unwrap())
        .collect();
    let args: Vec<&CStr> = words.iter().map(|w| w.as_c_str()).collect();
    if let Ok(t) = parse(&args) {
        assert_eq!(t.data_dev, args[0]);
        assert_eq!(t.meta_dev, args[1]);
        assert_eq!(t.data_offset_set, t.has(Opt::DataOffset));
        if !t.data_offset_set {
            assert_eq!(t.data_offset, 0);
        }
        let mut line = String::new();
        t.write_options(&mut line).unwrap();
        let again_words: Vec<CString> = line
            .split_whitespace()
            .map(|w| CString::new(w).unwrap())
            .collect();
        let mut again = vec![args[0], args[1]];
        again.extend(again_words.iter().map(|w| w.as_c_str()));
        assert_eq!(parse(&again).unwrap(), t, "{line}");
    }
}
