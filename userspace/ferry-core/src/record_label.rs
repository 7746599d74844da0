//! A consistency point's label and payload (`RecordKind::ConsistencyPoint`
//! records, [`super`]).

use super::*;

/// A consistency-point label: 1 to [`LABEL_MAX`] printable ASCII bytes
/// (`0x21..=0x7e`, no blanks), held without allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label {
    bytes: [u8; LABEL_MAX],
    len: u8,
}

impl Label {
    /// Validates and copies a label.
    pub fn new(src: &[u8]) -> Result<Self, RecordError> {
        if src.is_empty() || src.len() > LABEL_MAX || !src.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return Err(RecordError::BadLabel);
        }
        let mut bytes = [0u8; LABEL_MAX];
        bytes
            .get_mut(..src.len())
            .ok_or(RecordError::BadLabel)?
            .copy_from_slice(src);
        Ok(Self {
            bytes,
            len: u8::try_from(src.len()).map_err(|_| RecordError::BadLabel)?,
        })
    }

    /// The label's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The label as text (it is ASCII by construction).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Label({:?})", self.as_str())
    }
}

/// The payload of a consistency-point record: `cp_id` (u64), `first_dev_seq`
/// (u64, the first record of this stream the point closes; the point's own
/// `dev_seq` ends the set), then the label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsistencyPayload {
    /// Group-wide identifier of the point, increasing.
    pub cp_id: u64,
    /// First `dev_seq` of the set of records the point closes in its stream.
    pub first_dev_seq: u64,
    /// The operator's label.
    pub label: Label,
}

impl ConsistencyPayload {
    /// Encoded length (the record's `payload_len`).
    pub fn len(&self) -> u32 {
        u32::try_from(CP_FIXED_LEN + self.label.as_bytes().len()).unwrap_or(u32::MAX)
    }

    /// Never empty: the label has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Encodes into `out`, returning the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, RecordError> {
        let mut w = Writer::new(out);
        w.u64(self.cp_id).ok_or(RecordError::BufferTooSmall)?;
        w.u64(self.first_dev_seq)
            .ok_or(RecordError::BufferTooSmall)?;
        w.put(self.label.as_bytes())
            .ok_or(RecordError::BufferTooSmall)?;
        Ok(w.pos())
    }

    /// Decodes and validates a consistency-point payload.
    pub fn decode(buf: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(buf);
        let cp_id = r.u64().ok_or(RecordError::LengthMismatch)?;
        let first_dev_seq = r.u64().ok_or(RecordError::LengthMismatch)?;
        let rest = buf.get(CP_FIXED_LEN..).ok_or(RecordError::LengthMismatch)?;
        Ok(Self {
            cp_id,
            first_dev_seq,
            label: Label::new(rest)?,
        })
    }
}
