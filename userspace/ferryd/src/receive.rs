//! The secondary's receiving side: one authenticated connection per
//! stream, each batch verified (G5), appended and fsynced to the remote
//! log, taken into the stream's window and the rendezvous, and
//! acknowledged; a question of room for a resync answered
//! (`secondary_room.rs`).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ferry_core::record::{self, ConsistencyPayload, RecordHeader, RecordKind};
use ferry_core::select::WindowError;
use ferry_core::FastDigest;
use ferryd::link::{self, Frame, Side};
use tokio::net::TcpStream;
use tracing::{error, info, warn};

use super::{advance_points, class_of, lock, reason, received, stamp, Loc, Sec, State, SILENCE};
use crate::listen::{self, Refusal};

impl State {
    /// Takes record `h` of stream `idx`, durable in the remote log at
    /// `loc`, into the stream's window, and its marker into the
    /// rendezvous; `cp`: the consistency point it carries.  Refused when
    /// the window has no room for it (it is sent again).
    pub(super) fn hold(
        &mut self,
        idx: usize,
        h: &RecordHeader,
        loc: Loc,
        cp: Option<ConsistencyPayload>,
    ) -> Result<(), WindowError> {
        self.windows[idx].insert(h.dev_seq, received(h, loc))?;
        let device = h.device_id;
        if self.g2.durable(class_of(h), h.kind, h.group_seq) {
            warn!(
                device,
                dev_seq = h.dev_seq,
                group_seq = h.group_seq,
                "G2 broken: a log record became durable after a data record of a later group order"
            );
        }
        if let Some(cp) = cp {
            self.points.found(device, h.dev_seq, cp);
        }
        if h.kind == RecordKind::Checkpoint {
            if let Err(e) = self.rendezvous.marker(device, h.epoch, stamp(h)) {
                warn!(device, epoch = h.epoch, "checkpoint marker: {e}");
            }
            self.markers.insert((h.epoch, idx), h.dev_seq);
        }
        Ok(())
    }
}

/// Decrements a stream's connection count when a connection ends.
struct Connected<'a>(&'a Sec, usize);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        if let Some(s) = st.streams.get_mut(self.1) {
            s.connected = s.connected.saturating_sub(1);
        }
    }
}

/// Serves one connection: authenticates the primary (it holds `pending`
/// until then), then receives its stream.
pub(super) async fn serve(
    s: &Arc<Sec>,
    tls: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    pending: listen::Pending,
) -> Result<()> {
    let group = &s.cfg.group;
    let listen::Authenticated {
        mut tls,
        device,
        ekm,
    } = match listen::authenticate(&tls, tcp, &s.key, group, listen::AUTH_TIMEOUT).await {
        Ok(a) => a,
        Err(r) => {
            s.listen.refuse(r.why);
            return Err(r.into());
        }
    };
    let (idx, next, applied, gen) = {
        let mut st = lock(&s.state);
        if st.release {
            bail!("released: not accepting");
        }
        let Some(i) = st.streams.iter().position(|x| x.id == device) else {
            s.listen.refuse(Refusal::Device);
            bail!("refused: device {device} is not in the secondary group");
        };
        st.streams[i].connected += 1;
        // The newest connection of a stream serves it (a primary that
        // reconnected after a cut while the old connection lingers).
        st.streams[i].conn_gen += 1;
        (
            i,
            st.windows[i].run_end() + 1,
            st.applied,
            st.streams[i].conn_gen,
        )
    };
    // Authenticated: its place among the pending connections is free.
    drop(pending);
    let _c = Connected(s, idx);
    if let Some(why) = lock(&s.logs[idx]).stopped() {
        error!(device, "refused: the stream's remote log is stopped: {why}");
        bail!("the remote log of device {device} is stopped: {why}");
    }
    link::write_frame(
        &mut tls,
        &Frame::Welcome {
            tag: link::tag(&s.key, Side::Secondary, group, device, &ekm),
            next,
            applied,
        },
    )
    .await?;
    info!(device, next, "stream connected");
    loop {
        // The primary sends at least an empty batch every second.
        let f = tokio::time::timeout(SILENCE, link::read_frame(&mut tls))
            .await
            .context("the primary went silent")??;
        if lock(&s.state).streams[idx].conn_gen != gen {
            info!(device, "connection replaced by a newer one of the stream");
            bail!("device {device}: replaced by a newer connection");
        }
        let (codec, raw_len, data) = match f {
            Frame::Records {
                codec,
                raw_len,
                data,
            } => (codec, raw_len, data),
            // Before a resync: room for it in log_dir?
            Frame::RoomAsk { ask, need } => {
                let answer = s.room_answer(device, ask, need);
                link::write_frame(&mut tls, &answer).await?;
                continue;
            }
            _ => bail!("unexpected frame"),
        };
        let wire = data.len() as u64 + 10;
        let raw = u64::from(raw_len);
        let recs = match link::unpack(codec, raw_len, data) {
            Ok(r) => r,
            Err(e) => {
                s.rejected.count("batch");
                return Err(e.into());
            }
        };
        // Verify everything first (G5); a bad record closes the connection
        // and the primary sends again from what is acknowledged.
        let mut parsed = Vec::new();
        let mut off = 0;
        while off < recs.len() {
            let r = match record::decode_record(&recs[off..], &s.gkey, &FastDigest) {
                Ok(r) => r,
                Err(e) => {
                    s.rejected.count(reason(&e));
                    bail!("record rejected: {e}");
                }
            };
            if r.header.device_id != device {
                s.rejected.count("wrong_stream");
                bail!("record of device {} on stream {device}", r.header.device_id);
            }
            parsed.push((r.header, off, r.len, r.consistency()));
            off += r.len;
        }
        let fresh: Vec<_> = {
            let st = lock(&s.state);
            let w = &st.windows[idx];
            parsed
                .into_iter()
                .filter(|(h, _, _, _)| h.dev_seq >= w.next() && w.get(h.dev_seq).is_none())
                .collect()
        };
        // Durable in the remote log before anything is acknowledged; a
        // failed append is rolled back and ends the connection, nothing of
        // the batch acknowledged.
        let s2 = s.clone();
        let located = tokio::task::spawn_blocking(move || -> Result<Vec<_>> {
            let parts: Vec<&[u8]> = fresh
                .iter()
                .map(|&(_, o, len, _)| &recs[o..o + len])
                .collect();
            let at = lock(&s2.logs[idx]).append(&parts)?;
            Ok(fresh
                .into_iter()
                .zip(at)
                .map(|((h, _, len, cp), off)| {
                    (
                        h,
                        Loc {
                            off,
                            len: len as u32,
                            flags: h.flags.0,
                        },
                        cp,
                    )
                })
                .collect())
        })
        .await??;
        let (run_end, applied, full) = {
            let mut st = lock(&s.state);
            let mut full = false;
            for (h, loc, cp) in &located {
                if let Err(e) = st.hold(idx, h, *loc, *cp) {
                    full = true;
                    warn!(device, dev_seq = h.dev_seq, "not taken: {e:?}");
                    break;
                }
            }
            let st = &mut *st;
            for _ in 0..advance_points(&mut st.points, &st.streams, &st.windows) {
                s.rejected.count("consistency_point");
            }
            let sst = &mut st.streams[idx];
            sst.record_bytes += raw;
            sst.wire_bytes += wire;
            (st.windows[idx].run_end(), st.applied, full)
        };
        s.more.notify_one();
        link::write_frame(
            &mut tls,
            &Frame::Ack {
                dev_seq: run_end,
                applied,
            },
        )
        .await?;
        if full {
            bail!("stream window full: the primary will send again");
        }
    }
}
