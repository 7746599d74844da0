//! The link between a primary's and a secondary's `ferryd`.
//!
//! One TLS 1.3 connection per device stream, the primary connecting.  The
//! secondary presents a self-signed certificate made at start; the peers
//! authenticate each other with the group's pre-shared key bound to the
//! TLS session: each sends `HMAC-SHA256(key, "ferry-link-v1" || side ||
//! group || device_id || exporter)` where `exporter` is 32 bytes of the
//! session's keying material (RFC 8446 exporter, label
//! `EXPORTER-ferry-link`).  A man in the middle holds two sessions with two
//! different exporters and cannot produce either tag without the key.
//!
//! Frames: `len (u32 LE, of type and body) || type (u8) || body`.  See
//! `Documentation/protocol.rst`, "The link".

use std::io;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the link protocol: 2 has the question of room for a resync
/// ([`Frame::RoomAsk`], [`Frame::Room`]).  Both sites speak the same one: a
/// hello of another version is refused.
pub const VERSION: u16 = 2;
/// Largest frame accepted (a batch of records, compressed or not).
pub const FRAME_MAX: usize = 8 << 20;
/// Largest uncompressed batch.
pub const BATCH_MAX: usize = 4 << 20;
/// Length of an authentication tag.
pub const TAG_LEN: usize = 32;
/// Largest frame accepted before the peer is authenticated: the largest
/// hello (type, version, a group name of 255 bytes, device id, tag).
pub const HELLO_MAX: usize = 1 + 2 + 1 + 255 + 4 + TAG_LEN;
/// Longest `log_dir` an answer of room carries (longer: cut).
pub const LOG_DIR_MAX: usize = 4096;

/// Frame types.
pub mod ty {
    /// Primary -> secondary: who it is.
    pub const HELLO: u8 = 1;
    /// Secondary -> primary: accepted, and where to resume.
    pub const WELCOME: u8 = 2;
    /// Primary -> secondary: records.
    pub const RECORDS: u8 = 3;
    /// Secondary -> primary: records durable, intervals applied.
    pub const ACK: u8 = 4;
    /// Primary -> secondary: is there room for a resync of so many bytes?
    pub const ROOM_ASK: u8 = 5;
    /// Secondary -> primary: the answer, with its figures.
    pub const ROOM: u8 = 6;
}

/// Batch codecs.
pub mod codec {
    /// Records as they are.
    pub const NONE: u8 = 0;
    /// LZ4 block.
    pub const LZ4: u8 = 1;
}

/// A frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The primary's first frame.
    Hello {
        /// Protocol version.
        version: u16,
        /// Group name.
        group: String,
        /// The stream (device id).
        device: u32,
        /// The primary's tag.
        tag: [u8; TAG_LEN],
    },
    /// The secondary's answer.
    Welcome {
        /// The secondary's tag.
        tag: [u8; TAG_LEN],
        /// The first `dev_seq` the secondary does not hold: send from it.
        next: u64,
        /// The last interval applied.
        applied: u64,
    },
    /// Records back to back, maybe compressed.
    Records {
        /// [`codec`].
        codec: u8,
        /// The records' length before compression.
        raw_len: u32,
        /// The (compressed) records.
        data: Vec<u8>,
    },
    /// Every record of the stream up to `dev_seq` is durable.
    Ack {
        /// Cumulative.
        dev_seq: u64,
        /// The last interval applied.
        applied: u64,
    },
    /// Before a resync: has the secondary's `log_dir` room for `need`
    /// bytes of it (`crate::room::need`)?
    RoomAsk {
        /// The question's number, given back in the answer.
        ask: u64,
        /// Bytes the resync stages.
        need: u64,
    },
    /// The answer to [`Frame::RoomAsk`] `ask`: room or not (the
    /// secondary's decision, `crate::room::decide`), and its figures.
    Room {
        ask: u64,
        /// Room for the resync.
        ok: bool,
        /// The bytes asked for.
        need: u64,
        /// Bytes available in `log_dir`'s file system.
        available: u64,
        /// Bytes kept beyond a resync (`resync_reserve_mb`).
        reserve: u64,
        /// The secondary's `log_dir` (at most [`LOG_DIR_MAX`] bytes).
        log_dir: String,
    },
}

/// `s` cut to at most `max` bytes, at a character's boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Frame {
    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        match self {
            Self::Hello {
                version,
                group,
                device,
                tag,
            } => {
                b.push(ty::HELLO);
                b.extend_from_slice(&version.to_le_bytes());
                b.push(group.len() as u8);
                b.extend_from_slice(group.as_bytes());
                b.extend_from_slice(&device.to_le_bytes());
                b.extend_from_slice(tag);
            }
            Self::Welcome { tag, next, applied } => {
                b.push(ty::WELCOME);
                b.extend_from_slice(tag);
                b.extend_from_slice(&next.to_le_bytes());
                b.extend_from_slice(&applied.to_le_bytes());
            }
            Self::Records {
                codec,
                raw_len,
                data,
            } => {
                b.push(ty::RECORDS);
                b.push(*codec);
                b.extend_from_slice(&raw_len.to_le_bytes());
                b.extend_from_slice(data);
            }
            Self::Ack { dev_seq, applied } => {
                b.push(ty::ACK);
                b.extend_from_slice(&dev_seq.to_le_bytes());
                b.extend_from_slice(&applied.to_le_bytes());
            }
            Self::RoomAsk { ask, need } => {
                b.push(ty::ROOM_ASK);
                b.extend_from_slice(&ask.to_le_bytes());
                b.extend_from_slice(&need.to_le_bytes());
            }
            Self::Room {
                ask,
                ok,
                need,
                available,
                reserve,
                log_dir,
            } => {
                b.push(ty::ROOM);
                b.extend_from_slice(&ask.to_le_bytes());
                b.push(u8::from(*ok));
                b.extend_from_slice(&need.to_le_bytes());
                b.extend_from_slice(&available.to_le_bytes());
                b.extend_from_slice(&reserve.to_le_bytes());
                let dir = clip(log_dir, LOG_DIR_MAX);
                b.extend_from_slice(&(dir.len() as u16).to_le_bytes());
                b.extend_from_slice(dir.as_bytes());
            }
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b
    }

    /// Decodes a frame body (type and what follows).
    pub fn decode(body: &[u8]) -> io::Result<Self> {
        let (&t, rest) = body.split_first().ok_or_else(|| bad("empty frame"))?;
        let u64_at = |b: &[u8], o: usize| -> io::Result<u64> {
            Ok(u64::from_le_bytes(
                b.get(o..o + 8)
                    .ok_or_else(|| bad("frame truncated"))?
                    .try_into()
                    .map_err(|_| bad("frame truncated"))?,
            ))
        };
        match t {
            ty::HELLO => {
                let version = u16::from_le_bytes(
                    rest.get(..2)
                        .ok_or_else(|| bad("hello truncated"))?
                        .try_into()
                        .map_err(|_| bad("hello truncated"))?,
                );
                let n = usize::from(*rest.get(2).ok_or_else(|| bad("hello truncated"))?);
                let group = rest.get(3..3 + n).ok_or_else(|| bad("hello truncated"))?;
                let group =
                    String::from_utf8(group.to_vec()).map_err(|_| bad("group not UTF-8"))?;
                let tail = &rest[3 + n..];
                if tail.len() != 4 + TAG_LEN {
                    return Err(bad("hello length"));
                }
                let device = u32::from_le_bytes(tail[..4].try_into().map_err(|_| bad("hello"))?);
                let mut tag = [0u8; TAG_LEN];
                tag.copy_from_slice(&tail[4..]);
                Ok(Self::Hello {
                    version,
                    group,
                    device,
                    tag,
                })
            }
            ty::WELCOME => {
                if rest.len() != TAG_LEN + 16 {
                    return Err(bad("welcome length"));
                }
                let mut tag = [0u8; TAG_LEN];
                tag.copy_from_slice(&rest[..TAG_LEN]);
                Ok(Self::Welcome {
                    tag,
                    next: u64_at(rest, TAG_LEN)?,
                    applied: u64_at(rest, TAG_LEN + 8)?,
                })
            }
            ty::RECORDS => {
                if rest.len() < 5 {
                    return Err(bad("records truncated"));
                }
                let raw_len =
                    u32::from_le_bytes(rest[1..5].try_into().map_err(|_| bad("records"))?);
                if raw_len as usize > BATCH_MAX {
                    return Err(bad("batch too large"));
                }
                Ok(Self::Records {
                    codec: rest[0],
                    raw_len,
                    data: rest[5..].to_vec(),
                })
            }
            ty::ACK => {
                if rest.len() != 16 {
                    return Err(bad("ack length"));
                }
                Ok(Self::Ack {
                    dev_seq: u64_at(rest, 0)?,
                    applied: u64_at(rest, 8)?,
                })
            }
            ty::ROOM_ASK => {
                if rest.len() != 16 {
                    return Err(bad("room question length"));
                }
                Ok(Self::RoomAsk {
                    ask: u64_at(rest, 0)?,
                    need: u64_at(rest, 8)?,
                })
            }
            ty::ROOM => {
                // ask, ok, need, available, reserve, the length of log_dir.
                const FIXED: usize = 8 + 1 + 8 + 8 + 8 + 2;
                let n = rest
                    .get(FIXED - 2..FIXED)
                    .map(|l| usize::from(u16::from_le_bytes([l[0], l[1]])))
                    .ok_or_else(|| bad("room answer truncated"))?;
                if n > LOG_DIR_MAX || rest.len() != FIXED + n {
                    return Err(bad("room answer length"));
                }
                let ok = match rest[8] {
                    0 => false,
                    1 => true,
                    _ => return Err(bad("room answer: neither yes nor no")),
                };
                let log_dir = std::str::from_utf8(&rest[FIXED..])
                    .map_err(|_| bad("log_dir not UTF-8"))?
                    .to_string();
                Ok(Self::Room {
                    ask: u64_at(rest, 0)?,
                    ok,
                    need: u64_at(rest, 9)?,
                    available: u64_at(rest, 17)?,
                    reserve: u64_at(rest, 25)?,
                    log_dir,
                })
            }
            _ => Err(bad("unknown frame type")),
        }
    }
}

/// Reads one frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Frame> {
    read_frame_max(r, FRAME_MAX).await
}

/// Reads one frame of at most `max` bytes (type and body); a longer one
/// is an error before its body is read (or allocated).
pub async fn read_frame_max<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(bad("frame length"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Frame::decode(&body)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> io::Result<()> {
    w.write_all(&f.encode()).await?;
    w.flush().await
}

/// Packs records into a [`Frame::Records`].
pub fn pack(records: &[u8], lz4: bool) -> Frame {
    if lz4 {
        Frame::Records {
            codec: codec::LZ4,
            raw_len: records.len() as u32,
            data: lz4_flex::block::compress(records),
        }
    } else {
        Frame::Records {
            codec: codec::NONE,
            raw_len: records.len() as u32,
            data: records.to_vec(),
        }
    }
}

/// The records of a [`Frame::Records`].
pub fn unpack(codec: u8, raw_len: u32, data: Vec<u8>) -> io::Result<Vec<u8>> {
    match codec {
        codec::NONE if data.len() == raw_len as usize => Ok(data),
        codec::LZ4 => {
            let out = lz4_flex::block::decompress(&data, raw_len as usize)
                .map_err(|_| bad("lz4 batch does not decompress"))?;
            if out.len() != raw_len as usize {
                return Err(bad("lz4 batch length"));
            }
            Ok(out)
        }
        _ => Err(bad("bad batch codec or length")),
    }
}

/// Which side computes a tag.
#[derive(Clone, Copy)]
pub enum Side {
    /// The connecting primary.
    Primary,
    /// The accepting secondary.
    Secondary,
}

/// The HMAC of a tag, before finalisation.
fn mac(key: &[u8], side: Side, group: &str, device: u32, exporter: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"ferry-link-v1");
    m.update(&[match side {
        Side::Primary => b'P',
        Side::Secondary => b'S',
    }]);
    m.update(&[group.len() as u8]);
    m.update(group.as_bytes());
    m.update(&device.to_le_bytes());
    m.update(exporter);
    m
}

/// The authentication tag of `side` for a session with keying material
/// `exporter`.
pub fn tag(key: &[u8], side: Side, group: &str, device: u32, exporter: &[u8]) -> [u8; TAG_LEN] {
    mac(key, side, group, device, exporter)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a tag in constant time.
pub fn tag_ok(
    key: &[u8],
    side: Side,
    group: &str,
    device: u32,
    exporter: &[u8],
    got: &[u8],
) -> bool {
    mac(key, side, group, device, exporter)
        .verify_slice(got)
        .is_ok()
}

/// Label of the exporter the tags bind to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry-link";

fn crypto() -> Arc<CryptoProvider> {
    Arc::new(provider::default_provider())
}

/// The secondary's TLS configuration: a certificate made now.
pub fn server_config() -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let ck = rcgen::generate_simple_self_signed(vec!["ferry".to_string()])?;
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let c = rustls::ServerConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    Ok(Arc::new(c))
}

/// The primary's TLS configuration: the certificate is not what
/// authenticates the secondary (the key-bound tag is), but the handshake
/// signature is still checked.
pub fn client_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let c = rustls::ClientConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(KeyBound(crypto())))
        .with_no_client_auth();
    Ok(Arc::new(c))
}

#[derive(Debug)]
struct KeyBound(Arc<CryptoProvider>);

impl ServerCertVerifier for KeyBound {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello {
                version: VERSION,
                group: "g1".into(),
                device: 3,
                tag: [7; TAG_LEN],
            },
            Frame::Welcome {
                tag: [1; TAG_LEN],
                next: 42,
                applied: 9,
            },
            pack(b"records records records", true),
            pack(b"records", false),
            Frame::Ack {
                dev_seq: 5,
                applied: 2,
            },
            Frame::RoomAsk {
                ask: 3,
                need: 33_624_400,
            },
            Frame::Room {
                ask: 3,
                ok: false,
                need: 33_624_400,
                available: 7 << 20,
                reserve: 64 << 20,
                log_dir: "/var/lib/ferry/gr".into(),
            },
            Frame::Room {
                ask: u64::MAX,
                ok: true,
                need: 0,
                available: u64::MAX,
                reserve: 0,
                log_dir: String::new(),
            },
        ];
        for f in frames {
            let b = f.encode();
            assert_eq!(
                u32::from_le_bytes(b[..4].try_into().unwrap()) as usize,
                b.len() - 4
            );
            assert_eq!(Frame::decode(&b[4..]).unwrap(), f);
            for cut in 1..b.len() - 4 {
                let _ = Frame::decode(&b[4..4 + cut]);
            }
        }
        let Frame::Records {
            codec,
            raw_len,
            data,
        } = pack(b"abcabcabcabc", true)
        else {
            panic!()
        };
        assert_eq!(unpack(codec, raw_len, data).unwrap(), b"abcabcabcabc");
        assert!(unpack(codec::LZ4, 100, vec![1, 2, 3]).is_err());
        assert!(Frame::decode(&[99]).is_err());
    }

    /// The question of room and its answer: exact lengths, a yes or a
    /// no, a `log_dir` of UTF-8 within its bound; a long one is cut on
    /// the way out.
    #[test]
    fn malformed_room_frames_are_refused() {
        let ask = Frame::RoomAsk { ask: 1, need: 2 }.encode();
        assert_eq!(ask.len() - 4, 17);
        let mut long = ask[4..].to_vec();
        long.push(0);
        assert!(Frame::decode(&long).is_err());
        assert!(Frame::decode(&ask[4..ask.len() - 1]).is_err());
        let answer = |log_dir: &str| Frame::Room {
            ask: 1,
            ok: true,
            need: 2,
            available: 3,
            reserve: 4,
            log_dir: log_dir.into(),
        };
        let b = answer("/l").encode();
        let body = b[4..].to_vec();
        assert_eq!(Frame::decode(&body).unwrap(), answer("/l"));
        // Neither yes (1) nor no (0).
        let mut maybe = body.clone();
        maybe[9] = 2;
        let e = Frame::decode(&maybe).unwrap_err();
        assert!(e.to_string().contains("neither yes nor no"), "{e}");
        // A byte more, or less, than its log_dir's length says.
        let mut more = body.clone();
        more.push(b'x');
        assert!(Frame::decode(&more).is_err());
        assert!(Frame::decode(&body[..body.len() - 1]).is_err());
        // Cut before the length.
        assert!(Frame::decode(&body[..20]).is_err());
        // Not UTF-8.
        let mut bad = body.clone();
        let n = bad.len();
        bad[n - 1] = 0xff;
        assert!(Frame::decode(&bad).is_err());
        // A length beyond the bound, with as many bytes.
        let mut huge = body[..body.len() - 4].to_vec();
        huge.extend_from_slice(&((LOG_DIR_MAX + 1) as u16).to_le_bytes());
        huge.extend(std::iter::repeat_n(b'a', LOG_DIR_MAX + 1));
        assert!(Frame::decode(&huge).is_err());
        // A log_dir longer than the bound is cut (at a character).
        let long_dir = "é".repeat(LOG_DIR_MAX);
        let b = answer(&long_dir).encode();
        let Frame::Room { log_dir, .. } = Frame::decode(&b[4..]).unwrap() else {
            panic!()
        };
        assert_eq!(log_dir.len(), LOG_DIR_MAX);
        assert!(long_dir.starts_with(&log_dir));
    }

    #[tokio::test]
    async fn a_hello_is_small() {
        let hello = Frame::Hello {
            version: VERSION,
            group: "g".repeat(255),
            device: u32::MAX,
            tag: [9; TAG_LEN],
        };
        let b = hello.encode();
        assert_eq!(b.len() - 4, HELLO_MAX);
        assert_eq!(read_frame_max(&mut &b[..], HELLO_MAX).await.unwrap(), hello);
        // A frame one byte longer is refused on its length alone, with
        // nothing of its body sent.
        let len = ((HELLO_MAX + 1) as u32).to_le_bytes();
        let e = read_frame_max(&mut &len[..], HELLO_MAX).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // The full limit still takes a batch.
        let big = pack(&vec![7u8; 1 << 20], false).encode();
        assert!(read_frame(&mut &big[..]).await.is_ok());
        let len = ((FRAME_MAX + 1) as u32).to_le_bytes();
        assert!(read_frame(&mut &len[..]).await.is_err());
    }

    #[test]
    fn tags_bind_key_side_and_session() {
        let k = [5u8; 32];
        let t = tag(&k, Side::Primary, "g", 0, b"session");
        assert!(tag_ok(&k, Side::Primary, "g", 0, b"session", &t));
        assert!(!tag_ok(&[6u8; 32], Side::Primary, "g", 0, b"session", &t));
        assert!(!tag_ok(&k, Side::Secondary, "g", 0, b"session", &t));
        assert!(!tag_ok(&k, Side::Primary, "g", 1, b"session", &t));
        assert!(!tag_ok(&k, Side::Primary, "g", 0, b"other", &t));
    }
}
