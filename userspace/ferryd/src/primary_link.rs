//! The primary's side of the link: one task per device keeps a
//! connection to the secondary (reconnecting with backoff), authenticates
//! its stream, sends its queue from where the secondary says it stands,
//! and hands the acknowledgements that come back to the kernel
//! ([`super`] holds the queues and the reader of the character device);
//! it carries the questions of room before a resync, and their answers
//! (`primary_room.rs`).

use super::*;

/// Keeps device `d`'s link up, reconnecting with backoff.
/// Ends when the stop is set.
pub(super) async fn link_loop(s: Arc<Shared>, d: Arc<Dev>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        // Connecting, and between connections: waiting for the network.
        d.beat.waiting();
        match session(&s, &d).await {
            Ok(()) => {}
            Err(e) => warn!(device = d.id, "link: {e:#}"),
        }
        lock(&d.q).connected = false;
        s.room_link_closed(d.id);
        if s.stopping() {
            return;
        }
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(s.stop.subscribe()) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Resolves once the stop is set.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// One connection of device `d`'s stream, until it fails or the stop is
/// set (then between frames: a frame is never cut).
async fn session(s: &Arc<Shared>, d: &Arc<Dev>) -> Result<()> {
    let connected = tokio::select! {
        r = connect(s, d) => r?,
        // Nothing sent yet: given up at once.
        _ = stopped(s.stop.subscribe()) => return Ok(()),
    };
    let (tls, next) = connected;
    stream(s, d, tls, next).await
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Why a secondary closes a connection without a welcome.
const NO_WELCOME: &str = "no welcome: the secondary refused the hello (wrong key or group, or \
    a ferryd of another link protocol version there: its log says which)";

/// Connects and authenticates device `d`'s stream; returns the first
/// record the secondary wants.
async fn connect(s: &Arc<Shared>, d: &Arc<Dev>) -> Result<(Tls, u64)> {
    let peer = s.cfg.peer.clone().unwrap_or_default();
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&peer))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect {peer}"))?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("ferry")?.to_owned();
    let mut tls = tokio_rustls::TlsConnector::from(s.tls.clone())
        .connect(name, tcp)
        .await
        .context("TLS")?;
    let mut ekm = [0u8; 32];
    tls.get_ref()
        .1
        .export_keying_material(&mut ekm, link::EXPORTER_LABEL, None)
        .map_err(|e| anyhow::anyhow!("exporter: {e}"))?;
    let group = s.cfg.group.clone();
    link::write_frame(
        &mut tls,
        &Frame::Hello {
            version: link::VERSION,
            group: group.clone(),
            device: d.id,
            tag: link::tag(&s.key, Side::Primary, &group, d.id, &ekm),
        },
    )
    .await?;
    let welcome = tokio::time::timeout(Duration::from_secs(10), link::read_frame(&mut tls))
        .await
        .context(NO_WELCOME)?
        .context(NO_WELCOME)?;
    let Frame::Welcome { tag, next, applied } = welcome else {
        bail!("unexpected frame instead of welcome");
    };
    if !link::tag_ok(&s.key, Side::Secondary, &group, d.id, &ekm, &tag) {
        bail!("the secondary's tag does not verify: wrong key");
    }
    info!(device = d.id, next, applied, "connected");
    if resync::holds_nothing(next, applied) && !std::mem::replace(&mut lock(&d.q).fresh, true) {
        info!(
            device = d.id,
            "the secondary holds nothing of the stream (initial_sync = \"{}\")", s.cfg.initial_sync
        );
    }
    if next > 1 {
        s.acked(d, next - 1, applied)?;
    }
    Ok((tls, next))
}

/// Sends device `d`'s records from `next` and takes the acknowledgements.
/// On the stop: the frame being sent is finished, the acknowledgements of
/// what was sent are awaited briefly, and the connection is closed.
async fn stream(s: &Arc<Shared>, d: &Arc<Dev>, tls: Tls, next: u64) -> Result<()> {
    lock(&d.q).connected = true;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let lz4 = s.cfg.compress == Compress::Lz4;
    let receiver = async {
        loop {
            match link::read_frame(&mut rd).await? {
                Frame::Ack { dev_seq, applied } => s.acked(d, dev_seq, applied)?,
                Frame::Room {
                    ask,
                    ok,
                    need,
                    available,
                    reserve,
                    log_dir,
                } => s.room_answered(
                    ask,
                    ok,
                    ferryd::room::NoRoom {
                        need,
                        available,
                        reserve,
                        log_dir,
                    },
                ),
                other => bail!("unexpected frame {other:?}"),
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::pin!(receiver);
    // The last record sent, once the sender stopped.
    let sent: Result<u64> = {
        let sender = async {
            let mut cursor = next;
            loop {
                d.beat.progress();
                if s.stopping() {
                    return Ok(cursor - 1);
                }
                let notified = d.more.notified();
                // A question of room before a resync goes between batches.
                if let Some(f) = s.room_question(d.id) {
                    let wire = f.encode();
                    use tokio::io::AsyncWriteExt;
                    d.beat
                        .wait(async {
                            wr.write_all(&wire).await?;
                            wr.flush().await
                        })
                        .await?;
                    continue;
                }
                let parts = {
                    let q = lock(&d.q);
                    // What the secondary acknowledged (also what came on an
                    // older connection) is not sent again.
                    cursor = cursor.max(q.acked + 1);
                    if q.recs.front().is_some_and(|r| r.dev_seq > cursor) {
                        drop(q);
                        return Err(s.lost(d, cursor));
                    }
                    let mut parts = Vec::new();
                    let (mut size, mut last) = (0usize, 0);
                    for r in q.recs.iter().filter(|r| r.dev_seq >= cursor) {
                        if size > 0 && size + r.len as usize > BATCH_BYTES {
                            break;
                        }
                        parts.push(r.data.clone());
                        size += r.len as usize;
                        last = r.dev_seq;
                    }
                    (!parts.is_empty()).then_some((parts, size, last))
                };
                let batch = match parts {
                    None => None,
                    Some((parts, size, last)) => {
                        let disk = parts.iter().any(|p| matches!(p, Data::Disk(_)));
                        let b = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
                            let mut b = Vec::with_capacity(size);
                            for p in parts {
                                match p {
                                    Data::Mem(m) => b.extend_from_slice(&m),
                                    Data::Disk(od) => b.extend_from_slice(&od.read()?),
                                }
                            }
                            Ok(b)
                        })
                        .await?;
                        // (A segment that cannot be read ends the
                        // connection; the records stay on disk, and the
                        // next connection reads them again.)
                        match &b {
                            Ok(_) if disk => s.spool_went("read"),
                            Err(e) => s.spool_failed("read", e),
                            Ok(_) => {}
                        }
                        Some((b?, last))
                    }
                };
                let Some((b, last)) = batch else {
                    // Idle: an empty batch every second tells the secondary
                    // the link is alive (it drops a silent connection).
                    d.beat.waiting();
                    tokio::select! {
                        r = tokio::time::timeout(KEEPALIVE, notified) => if r.is_err() {
                            use tokio::io::AsyncWriteExt;
                            wr.write_all(&link::pack(&[], false).encode()).await?;
                            wr.flush().await?;
                        },
                        _ = stopped(s.stop.subscribe()) => {}
                    }
                    continue;
                };
                let f = link::pack(&b, lz4);
                let wire = f.encode();
                use tokio::io::AsyncWriteExt;
                d.beat
                    .wait(async {
                        wr.write_all(&wire).await?;
                        wr.flush().await
                    })
                    .await?;
                {
                    let mut q = lock(&d.q);
                    q.record_bytes += b.len() as u64;
                    q.wire_bytes += wire.len() as u64;
                }
                cursor = last + 1;
            }
        };
        tokio::pin!(sender);
        tokio::select! {
            r = &mut sender => r,
            r = &mut receiver => r.map(|()| 0),
        }
    };
    let sent = sent?;
    // Stopping: the acknowledgements of what was sent (the kernel frees
    // those records), for a short while; then the connection is closed.
    let acked = async {
        while lock(&d.q).acked < sent {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tokio::select! {
            _ = acked => {}
            _ = &mut receiver => {}
        }
    })
    .await;
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_millis(500), wr.shutdown()).await;
    info!(device = d.id, "link stopped");
    Ok(())
}
