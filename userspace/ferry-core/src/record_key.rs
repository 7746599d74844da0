//! The keys that sign a group's records, and the group id derived from
//! its name.

use super::RecordError;
use crate::bytes::Writer;
use crate::digest::Digest;

const HEAD_DOMAIN: u64 = u64::from_le_bytes(*b"ferryHD1");
const TAIL_DOMAIN: u64 = u64::from_le_bytes(*b"ferryTL1");
const GROUP_ID_DOMAIN: u64 = u64::from_le_bytes(*b"ferryGID");

/// The id of the group named `name` (the `group` word of its table lines):
/// `xxh64(name, "ferryGID")`, the seed being those 8 ASCII bytes read as a
/// u64 LE.  Both sites derive it from the name they are configured with.
pub fn group_id_of_name<D: Digest + ?Sized>(digest: &D, name: &[u8]) -> u64 {
    digest.xxh64(GROUP_ID_DOMAIN, name)
}

/// Longest group secret [`GroupKey::derive`] accepts.
pub const SECRET_MAX: usize = 64;

/// The keys that sign one group's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupKey {
    /// Group the keys belong to; records of other groups are refused.
    pub group_id: u64,
    /// Seed of the head signature.
    pub head: u64,
    /// Seed of the tail signature.
    pub tail: u64,
}

impl GroupKey {
    /// Derives the keys from the group id and the group secret (at most
    /// [`SECRET_MAX`] bytes, possibly empty): with `m = group_id (u64 LE) ||
    /// secret`, `head = xxh64(m, "ferryHD1")` and `tail = xxh64(m,
    /// "ferryTL1")`, the seeds being those 8 ASCII bytes read as a u64 LE.
    pub fn derive<D: Digest + ?Sized>(
        digest: &D,
        group_id: u64,
        secret: &[u8],
    ) -> Result<Self, RecordError> {
        let mut m = [0u8; 8 + SECRET_MAX];
        let mut w = Writer::new(&mut m);
        w.u64(group_id).ok_or(RecordError::BufferTooSmall)?;
        w.put(secret).ok_or(RecordError::BufferTooSmall)?;
        let n = w.pos();
        let m = m.get(..n).ok_or(RecordError::BufferTooSmall)?;
        Ok(Self {
            group_id,
            head: digest.xxh64(HEAD_DOMAIN, m),
            tail: digest.xxh64(TAIL_DOMAIN, m),
        })
    }
}
