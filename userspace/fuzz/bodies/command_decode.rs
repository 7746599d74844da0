//! Character-device command decoder: arbitrary bytes are either rejected
//! with a typed error or decode to commands that re-encode to the same bytes.

use ferry_core::command::{Command, Commands, COMMAND_MAX_LEN};

pub fn run(data: &[u8]) {
    let mut at = 0;
    for c in Commands::new(data) {
        let Ok(c) = c else { break };
        let mut out = [0u8; COMMAND_MAX_LEN];
        let n = c.encode(&mut out).unwrap();
        assert_eq!(&out[..n], &data[at..at + n]);
        assert_eq!(Command::decode(&out[..n]), Ok((c, n)));
        at += n;
    }
}
