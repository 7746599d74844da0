//! Table-line parser: arbitrary words are either rejected with a typed
//! error or parse to arguments consistent with the words.
#![no_main]

use ferry_core::table::parse;
use libfuzzer_sys::fuzz_target;
use std::ffi::{CStr, CString};

fuzz_target!(|data: &[u8]| {
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
        // Options follow the two devices and the count.
        let opts = args.get(3..).unwrap_or(&[]);
        assert_eq!(t.data_offset_set, opts.iter().any(|a| a.to_bytes() == b"data_offset"));
        if !t.data_offset_set {
            assert_eq!(t.data_offset, 0);
        }
    }
});
