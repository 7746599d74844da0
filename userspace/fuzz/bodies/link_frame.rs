//! The link's frame decoder and batch unpacking (what a secondary reads
//! from the network after TLS): never panics; a decoded frame encodes back
//! to the same bytes; an unpacked batch has the length it announced.

use ferryd::link::{unpack, Frame};

pub fn run(data: &[u8]) {
    if let Ok(f) = Frame::decode(data) {
        let enc = f.encode();
        assert_eq!(&enc[4..], data, "re-encoding differs");
        if let Frame::Records {
            codec,
            raw_len,
            data,
        } = f
        {
            if let Ok(out) = unpack(codec, raw_len, data) {
                assert_eq!(out.len(), raw_len as usize);
            }
        }
    }
}
