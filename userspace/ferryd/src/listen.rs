//! The secondary's listener: accepting connections, and authenticating the
//! primary on each.
//!
//! * An accept error (descriptors exhausted: `EMFILE`, `ENFILE`; a
//!   connection aborted before it was taken: `ECONNABORTED`; ...) never
//!   ends `ferryd`: it is logged, counted (`ferry_accept_errors_total`), and
//!   the listener waits a little (100 ms, doubling to 1 s while errors go
//!   on) before it accepts again.
//! * At most [`PENDING_MAX`] connections may be open and not authenticated
//!   yet; beyond, a new one is closed at once and counted (refused,
//!   `pending_limit`).
//! * A connection has [`AUTH_TIMEOUT`] for the whole authentication: the
//!   TLS handshake and the primary's hello.  Before authentication, a frame
//!   longer than the largest hello ([`link::HELLO_MAX`]) is refused on its
//!   length, not read.
//!
//! Every refusal is counted by reason (`ferry_auth_refused_total{reason}`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use ferryd::link::{self, Frame, Side};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

/// Connections open and not authenticated yet, at most.
pub(crate) const PENDING_MAX: usize = 16;
/// Time a connection has to authenticate (TLS handshake and hello).
pub(crate) const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait after an accept error: the first, and the most.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a peer was refused: the `reason` of `ferry_auth_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// [`PENDING_MAX`] connections were waiting for authentication.
    PendingLimit,
    /// Not authenticated within [`AUTH_TIMEOUT`].
    Timeout,
    /// The TLS handshake failed.
    Tls,
    /// The first frame could not be read (too long, malformed, or the
    /// connection ended).
    Hello,
    /// The first frame is not a hello.
    NotHello,
    /// Version, group or key do not match.
    Key,
    /// The device is not in the secondary's group.
    Device,
}

impl Refusal {
    /// Every reason, in the order of the metrics.
    pub(crate) const ALL: [Refusal; 7] = [
        Self::PendingLimit,
        Self::Timeout,
        Self::Tls,
        Self::Hello,
        Self::NotHello,
        Self::Key,
        Self::Device,
    ];

    /// The metrics label.
    pub(crate) fn reason(self) -> &'static str {
        ferryd::status::AUTH_REFUSAL_REASONS[self as usize]
    }
}

/// A refusal, and what to log about it.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) why: Refusal,
    msg: String,
}

impl Refused {
    pub(crate) fn new(why: Refusal, msg: impl Into<String>) -> Self {
        Self {
            why,
            msg: msg.into(),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused ({}): {}", self.why.reason(), self.msg)
    }
}

impl std::error::Error for Refused {}

/// The listener's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accept_errors: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl Counters {
    /// Counts a refusal.
    pub(crate) fn refuse(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    /// Accept errors so far.
    pub(crate) fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Relaxed)
    }

    /// Refusals by reason, every reason.
    pub(crate) fn refused(&self) -> Vec<(String, u64)> {
        Refusal::ALL
            .iter()
            .map(|&r| {
                (
                    r.reason().to_string(),
                    self.refused[r as usize].load(Relaxed),
                )
            })
            .collect()
    }
}

/// A place among the connections not authenticated yet; given up when
/// dropped.
pub(crate) struct Pending {
    _permit: OwnedSemaphorePermit,
}

/// A source of connections: the TCP listener, or a test's.
pub(crate) trait Source: Send {
    type Conn: Send + 'static;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Conn, SocketAddr)>> + Send;
}

impl Source for TcpListener {
    type Conn = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

/// The listener's limits (the constants above, shorter in tests).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) pending: usize,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pending: PENDING_MAX,
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
        }
    }
}

/// The wait after an accept error that follows a wait of `cur`.
pub(crate) fn next_backoff(cur: Duration, max: Duration) -> Duration {
    (cur * 2).min(max)
}

/// Accepts connections for ever; each is spawned as `serve(conn, peer,
/// pending)`, which drops `pending` once the peer is authenticated.  See
/// the module's documentation for errors and limits.
pub(crate) async fn accept_loop<S, F, Fut>(
    mut src: S,
    limits: Limits,
    counters: Arc<Counters>,
    serve: F,
) -> Infallible
where
    S: Source,
    F: Fn(S::Conn, SocketAddr, Pending) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let pending = Arc::new(Semaphore::new(limits.pending));
    let mut backoff = limits.backoff_min;
    loop {
        match src.accept().await {
            Ok((conn, peer)) => {
                backoff = limits.backoff_min;
                match pending.clone().try_acquire_owned() {
                    Ok(p) => {
                        tokio::spawn(serve(conn, peer, Pending { _permit: p }));
                    }
                    Err(_) => {
                        drop(conn);
                        counters.refuse(Refusal::PendingLimit);
                        warn!(
                            %peer,
                            "refused: {} connections are not authenticated yet",
                            limits.pending
                        );
                    }
                }
            }
            Err(e) => {
                counters.accept_errors.fetch_add(1, Relaxed);
                warn!("accept: {e}; accepting again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff, limits.backoff_max);
            }
        }
    }
}

/// A primary authenticated: its stream, the device its hello named (the
/// caller checks that it is a member), and the session's keying material.
pub(crate) struct Authenticated<IO> {
    pub(crate) tls: TlsStream<IO>,
    pub(crate) device: u32,
    pub(crate) ekm: [u8; 32],
}

/// Authenticates a primary on `io` within `timeout`: the TLS handshake,
/// then a hello (of at most [`link::HELLO_MAX`] bytes) of this protocol
/// version and `group`, tagged with `key` for this session.
pub(crate) async fn authenticate<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    key: &[u8],
    group: &str,
    timeout: Duration,
) -> Result<Authenticated<IO>, Refused>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let auth = async {
        let mut tls = acceptor
            .accept(io)
            .await
            .map_err(|e| Refused::new(Refusal::Tls, format!("TLS: {e}")))?;
        let mut ekm = [0u8; 32];
        tls.get_ref()
            .1
            .export_keying_material(&mut ekm, link::EXPORTER_LABEL, None)
            .map_err(|e| Refused::new(Refusal::Tls, format!("exporter: {e}")))?;
        let hello = link::read_frame_max(&mut tls, link::HELLO_MAX)
            .await
            .map_err(|e| Refused::new(Refusal::Hello, format!("no hello: {e}")))?;
        let Frame::Hello {
            version,
            group: g,
            device,
            tag,
        } = hello
        else {
            return Err(Refused::new(
                Refusal::NotHello,
                "first frame is not a hello",
            ));
        };
        if version != link::VERSION {
            return Err(Refused::new(
                Refusal::Key,
                format!(
                    "the primary speaks link protocol version {version}, this ferryd version {}: \
                     run ferryd of one version on both sites",
                    link::VERSION
                ),
            ));
        }
        if g != group || !link::tag_ok(key, Side::Primary, &g, device, &ekm, &tag) {
            return Err(Refused::new(
                Refusal::Key,
                format!("group {g:?} or key does not match"),
            ));
        }
        Ok(Authenticated { tls, device, ekm })
    };
    match tokio::time::timeout(timeout, auth).await {
        Ok(r) => r,
        Err(_) => Err(Refused::new(
            Refusal::Timeout,
            format!("not authenticated within {timeout:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;
    use tokio::io::{AsyncWriteExt, DuplexStream};
    use tokio::sync::{mpsc, oneshot};

    /// Each refusal's label is its own, in the order of the metrics.
    #[test]
    fn refusal_labels() {
        let got: Vec<_> = Refusal::ALL.iter().map(|r| r.reason()).collect();
        assert_eq!(
            got,
            [
                "pending_limit",
                "timeout",
                "tls",
                "hello",
                "not_hello",
                "key",
                "device"
            ]
        );
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    /// Connections (or errors) handed out as a test pushes them; the
    /// test gets, for each connection, what tells it that it was closed.
    struct Script {
        rx: mpsc::UnboundedReceiver<io::Result<u32>>,
        ends: Arc<Mutex<Vec<oneshot::Receiver<()>>>>,
    }

    /// A connection of the script (closed when dropped).
    struct Conn {
        id: u32,
        _open: oneshot::Sender<()>,
    }

    impl Source for Script {
        type Conn = Conn;

        async fn accept(&mut self) -> io::Result<(Conn, SocketAddr)> {
            match self.rx.recv().await {
                Some(Ok(id)) => {
                    let (tx, rx) = oneshot::channel();
                    self.ends.lock().unwrap().push(rx);
                    let conn = Conn { id, _open: tx };
                    Ok((conn, SocketAddr::from(([127, 0, 0, 1], 1))))
                }
                Some(Err(e)) => Err(e),
                None => std::future::pending().await,
            }
        }
    }

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = BACKOFF_MIN;
        let mut seen = vec![b];
        for _ in 0..5 {
            b = next_backoff(b, BACKOFF_MAX);
            seen.push(b);
        }
        let ms: Vec<_> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[tokio::test]
    async fn accept_errors_are_counted_waited_out_and_survived() {
        let (push, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let (served, mut got) = mpsc::unbounded_channel();
        let limits = Limits {
            pending: 4,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(40),
        };
        let start = Instant::now();
        for e in [
            emfile(),
            io::Error::from_raw_os_error(libc::ENFILE),
            io::Error::from_raw_os_error(libc::ECONNABORTED),
        ] {
            push.send(Err(e)).unwrap();
        }
        push.send(Ok(7)).unwrap();
        let src = Script {
            rx,
            ends: Arc::default(),
        };
        let c = counters.clone();
        let lp = tokio::spawn(async move {
            accept_loop(src, limits, c, move |conn: Conn, _, _p| {
                let served = served.clone();
                async move {
                    let _ = served.send(conn.id);
                }
            })
            .await
        });
        let first = tokio::time::timeout(Duration::from_secs(5), got.recv()).await;
        assert_eq!(first.ok().flatten(), Some(7), "the listener ended");
        // 20 + 40 + 40 ms of waits.
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(counters.accept_errors(), 3);
        // And it goes on.
        push.send(Err(emfile())).unwrap();
        push.send(Ok(8)).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), got.recv()).await;
        assert_eq!(next.ok().flatten(), Some(8));
        assert_eq!(counters.accept_errors(), 4);
        assert!(!lp.is_finished());
        lp.abort();
    }

    #[tokio::test]
    async fn connections_beyond_the_pending_limit_are_closed() {
        let (push, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let (served, mut got) = mpsc::unbounded_channel();
        let held: Arc<Mutex<Vec<(Conn, Pending)>>> = Arc::default();
        let limits = Limits {
            pending: 2,
            ..Limits::default()
        };
        let ends: Arc<Mutex<Vec<oneshot::Receiver<()>>>> = Arc::default();
        let src = Script {
            rx,
            ends: ends.clone(),
        };
        let (c, h) = (counters.clone(), held.clone());
        let lp = tokio::spawn(async move {
            accept_loop(src, limits, c, move |conn: Conn, _, p| {
                let (served, h) = (served.clone(), h.clone());
                async move {
                    let _ = served.send(conn.id);
                    // Never authenticates: keeps its place.
                    h.lock().unwrap().push((conn, p));
                }
            })
            .await
        });
        for id in 1..=3 {
            push.send(Ok(id)).unwrap();
        }
        let mut first = Vec::new();
        for _ in 0..2 {
            let id = tokio::time::timeout(Duration::from_secs(5), got.recv()).await;
            first.push(id.ok().flatten().unwrap());
        }
        first.sort();
        assert_eq!(first, [1, 2]);
        // The third is closed at once, and counted.
        let end3 = loop {
            let third = {
                let mut e = ends.lock().unwrap();
                if e.len() == 3 {
                    e.pop()
                } else {
                    None
                }
            };
            match third {
                Some(rx) => break rx,
                None => tokio::task::yield_now().await,
            }
        };
        assert!(tokio::time::timeout(Duration::from_secs(5), end3)
            .await
            .unwrap()
            .is_err());
        let refused = counters.refused();
        assert!(refused.contains(&("pending_limit".to_string(), 1)));
        assert!(got.try_recv().is_err());
        // One authenticates (gives up its place): a new one is served.
        held.lock().unwrap().pop();
        push.send(Ok(4)).unwrap();
        let id = tokio::time::timeout(Duration::from_secs(5), got.recv()).await;
        assert_eq!(id.ok().flatten(), Some(4));
        lp.abort();
    }

    const KEY: [u8; 32] = [3; 32];

    /// A client end (as a primary, or as something else) and the server
    /// end of an in-memory connection.
    fn pipe() -> (DuplexStream, DuplexStream) {
        tokio::io::duplex(64 << 10)
    }

    async fn tls_client(io: DuplexStream) -> tokio_rustls::client::TlsStream<DuplexStream> {
        let name = rustls::pki_types::ServerName::try_from("ferry")
            .unwrap()
            .to_owned();
        tokio_rustls::TlsConnector::from(link::client_config().unwrap())
            .connect(name, io)
            .await
            .unwrap()
    }

    async fn hello(c: &mut tokio_rustls::client::TlsStream<DuplexStream>, key: &[u8], group: &str) {
        let mut ekm = [0u8; 32];
        c.get_ref()
            .1
            .export_keying_material(&mut ekm, link::EXPORTER_LABEL, None)
            .unwrap();
        let f = Frame::Hello {
            version: link::VERSION,
            group: group.into(),
            device: 1,
            tag: link::tag(key, Side::Primary, group, 1, &ekm),
        };
        link::write_frame(c, &f).await.unwrap();
    }

    /// Runs `authenticate` against a client; returns its refusal.
    async fn refusal<C, Fut>(timeout: Duration, client: C) -> Option<Refusal>
    where
        C: FnOnce(DuplexStream) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let acceptor = TlsAcceptor::from(link::server_config().unwrap());
        let (c, s) = pipe();
        let client = tokio::spawn(client(c));
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            authenticate(&acceptor, s, &KEY, "g", timeout),
        )
        .await
        .expect("authentication neither done nor timed out");
        client.abort();
        match r {
            Ok(a) => {
                assert_eq!(a.device, 1);
                None
            }
            Err(e) => Some(e.why),
        }
    }

    #[tokio::test]
    async fn a_primary_with_the_key_is_authenticated() {
        let r = refusal(Duration::from_secs(10), |c| async move {
            let mut c = tls_client(c).await;
            hello(&mut c, &KEY, "g").await;
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(r, None);
    }

    #[tokio::test]
    async fn a_wrong_key_or_group_is_refused() {
        let r = refusal(Duration::from_secs(10), |c| async move {
            let mut c = tls_client(c).await;
            hello(&mut c, &[4; 32], "g").await;
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(r, Some(Refusal::Key));
        let r = refusal(Duration::from_secs(10), |c| async move {
            let mut c = tls_client(c).await;
            hello(&mut c, &KEY, "h").await;
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(r, Some(Refusal::Key));
    }

    /// A primary of another link protocol version (one without the
    /// question of room, say) is refused, and the reason names both
    /// versions.
    #[tokio::test]
    async fn another_link_version_is_refused_and_said() {
        let acceptor = TlsAcceptor::from(link::server_config().unwrap());
        let (c, s) = pipe();
        let client = tokio::spawn(async move {
            let mut c = tls_client(c).await;
            let mut ekm = [0u8; 32];
            c.get_ref()
                .1
                .export_keying_material(&mut ekm, link::EXPORTER_LABEL, None)
                .unwrap();
            let f = Frame::Hello {
                version: 1,
                group: "g".into(),
                device: 1,
                tag: link::tag(&KEY, Side::Primary, "g", 1, &ekm),
            };
            link::write_frame(&mut c, &f).await.unwrap();
            std::future::pending::<()>().await;
        });
        let r = authenticate(&acceptor, s, &KEY, "g", Duration::from_secs(10)).await;
        client.abort();
        let Err(e) = r else {
            panic!("a hello of version 1 was taken")
        };
        assert_eq!(e.why, Refusal::Key);
        assert_eq!(
            e.to_string(),
            format!(
                "refused (key): the primary speaks link protocol version 1, this ferryd version \
                 {}: run ferryd of one version on both sites",
                link::VERSION
            )
        );
    }

    #[tokio::test]
    async fn a_long_first_frame_is_refused_on_its_length() {
        let t = Instant::now();
        let r = refusal(Duration::from_secs(10), |c| async move {
            let mut c = tls_client(c).await;
            // Announces a 64 KiB frame and sends the type only: with the
            // full frame limit the listener would wait for the rest.
            let mut b = (64u32 << 10).to_le_bytes().to_vec();
            b.push(link::ty::HELLO);
            c.write_all(&b).await.unwrap();
            c.flush().await.unwrap();
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(r, Some(Refusal::Hello));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_silent_peer_is_dropped_after_the_timeout() {
        // Says nothing at all.
        let t = Instant::now();
        let r = refusal(Duration::from_millis(300), |c| async move {
            let _open = c;
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(r, Some(Refusal::Timeout));
        assert!(t.elapsed() < Duration::from_secs(5));
        // Completes TLS, then says nothing: the same time limit covers both.
        let r = refusal(Duration::from_millis(300), |c| async move {
            let _c = tls_client(c).await;
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(r, Some(Refusal::Timeout));
        // Not TLS at all.
        let r = refusal(Duration::from_secs(10), |mut c| async move {
            c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(r, Some(Refusal::Tls));
    }
}
