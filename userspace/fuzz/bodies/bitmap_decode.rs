//! On-disk bitmap decoder: arbitrary bytes are rejected or decode to a
//! bitmap that re-encodes to the same bytes.

use ferry_core::bitmap::{decode_bitmap, words_for, ChunkBitmap};
use ferry_core::FastDigest;

pub fn run(data: &[u8]) {
    let mut words = [0u64; 64];
    if let Ok(h) = decode_bitmap(data, &FastDigest, &mut words) {
        let n = words_for(h.nbits) as usize;
        let bm = ChunkBitmap::new(&mut words[..n], h.nbits).unwrap();
        let mut out = vec![0u8; bm.encoded_len()];
        let len = bm.encode(h.chunk_shift, &FastDigest, &mut out).unwrap();
        assert_eq!(&out[..len], &data[..len]);
        let total: u64 = bm.runs().map(|(_, l)| l).sum();
        assert_eq!(total, bm.count());
    }
}
