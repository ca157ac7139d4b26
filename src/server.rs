//! Accepting connections and serving them: TLS handshake within the header
//! timeout, HTTP/1.1 and HTTP/2 (hyper-util auto), connection limits,
//! header-read and idle timeouts, graceful drain, and reload.
//!
//! The server never binds its own sockets: `start` takes bound listeners,
//! so tests bind 127.0.0.1:0 and read the address back.
//!
//! One file past 600 lines on purpose: a connection's life (accept, TLS,
//! raw HTTP/1.1 or hyper, drain, reload) reads top to bottom here; the
//! timeouts live in `watchdog`, the request path below `h1`/`handler`.
//!
//! Timeouts are kept by a per-connection watchdog rather than hyper's own
//! header timeout, because hyper starts that timer as soon as it waits for
//! the next request, which would cut idle keep-alive connections at the
//! header timeout. Here: from accept, and from the first byte of each later
//! request, the headers must arrive within `header_read_timeout`; a
//! connection with nothing in flight and no bytes read is closed after
//! `idle_timeout` (enforced by `watchdog`).

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::body::{Body, BoxError};
use crate::config::{self, Config};
use crate::handler::{self, AppState, ConnInfo, Deps};
use crate::telemetry::AccessRecord;
use crate::watchdog::{Activity, Watchdog};
use crate::{h1, tls};

/// The bound sockets the server serves.
pub struct Listeners {
    /// The main listener: TLS when the config has `[tls]`.
    pub main: TcpListener,
    /// The optional plain-HTTP listener (`http_listen`).
    pub http: Option<TcpListener>,
    /// The admin listener (`[admin] listen`): metrics and readiness.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses the config names.
    pub async fn bind(config: &Config) -> io::Result<Self> {
        let main = bind(config.server.listen).await?;
        let http = match config.server.http_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let admin = match &config.admin {
            Some(a) => Some(bind(a.listen).await?),
            None => None,
        };
        Ok(Listeners { main, http, admin })
    }
}

/// The accept queue: Rust's default of 128 overflows under a burst of new
/// connections (the kernel then resets them, or drops their SYNs and the
/// clients wait a second to retry). The kernel caps it at
/// `net.core.somaxconn` (4096 on current kernels).
const BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As every server: a restart may bind while old connections are
        // in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    State(#[from] handler::StateError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot read listener address")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("tls.acme: {0}")]
    Acme(String),
}

/// State shared by every connection; swapped whole on reload.
struct Shared {
    app: ArcSwap<AppState>,
    /// The store and revocation mirror, kept across reloads.
    deps: Deps,
    tls: ArcSwap<Option<TlsAcceptor>>,
    http: auto::Builder<TokioExecutor>,
    max_header_bytes: usize,
    /// Settings fixed at start (listeners and limits do not reload).
    header_read_timeout: Duration,
    idle_timeout: Duration,
    access_log: ArcSwap<bool>,
}

/// A running server: addresses, reload and shutdown.
pub struct ServerHandle {
    shared: Arc<Shared>,
    config_path: PathBuf,
    shutdown: watch::Sender<bool>,
    /// Closed when every accept loop and connection task has ended.
    done: mpsc::Receiver<()>,
    pub main_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    shutdown_grace: Duration,
    drain_delay: Duration,
    /// Set on SIGTERM: /readyz answers 503 from then on.
    draining: Arc<AtomicBool>,
}

/// Starts serving `listeners` with `config`. Must run inside a Tokio runtime.
pub async fn start(config: Config, listeners: Listeners) -> Result<ServerHandle, ServerError> {
    let deps = Deps::open(&config).await?;
    if let Some(acme) = config.tls.as_ref().and_then(|t| t.acme.as_ref()) {
        crate::acme::prepare(acme).map_err(|e| ServerError::Acme(e.to_string()))?;
    }
    let tls = match &config.tls {
        Some(t) => Some(TlsAcceptor::from(tls::server_config(
            t,
            deps.acme.as_ref().map(|a| &a.certs),
        )?)),
        None => None,
    };
    let s = &config.server;
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // Headers larger than this buffer are answered 431 by hyper.
        .max_buf_size(s.max_header_bytes.max(8192));
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
    let main_addr = listeners.main.local_addr()?;
    let http_addr = match &listeners.http {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let redirect_port = (s.redirect_http && tls.is_some()).then_some(s.listen.port());
    // With port 0 in the config (tests), redirect to the port really bound.
    let redirect_port = redirect_port.map(|p| if p == 0 { main_addr.port() } else { p });
    let limit = Arc::new(Semaphore::new(s.max_connections));
    tokio::spawn(crate::alloc::trim_after_bursts(
        limit.clone(),
        s.max_connections,
    ));
    let shutdown_grace = s.shutdown_grace;
    let drain_delay = s.drain_delay;
    let max_header_bytes = s.max_header_bytes.max(8192);
    let config_path = config.path.clone();
    let main_is_tls = tls.is_some();
    spawn_purge(&config, &deps);
    if let Some(acme) = deps.acme.clone() {
        tokio::spawn(acme.run());
    }
    if let Some(store) = deps.store.clone() {
        let mirror = deps.revoked.clone();
        // Revocations made by other replicas and by `gateway sessions
        // revoke` reach this process's mirror.
        tokio::spawn(async move { store.follow_revocations(mirror).await });
    }
    let shared = Arc::new(Shared {
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        access_log: ArcSwap::from_pointee(config.log.access_log),
        app: ArcSwap::from_pointee(started(AppState::new(config, &deps)?)),
        deps: deps.clone(),
        tls: ArcSwap::from_pointee(tls),
        http,
        max_header_bytes,
    });

    let draining = Arc::new(AtomicBool::new(false));
    let admin_addr = match listeners.admin {
        Some(l) => {
            let addr = l.local_addr()?;
            tokio::spawn(crate::admin::serve(l, readiness(&shared, &draining)));
            Some(addr)
        }
        None => None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel::<()>(1);
    tokio::spawn(accept_loop(
        listeners.main,
        shared.clone(),
        Mode {
            tls: main_is_tls,
            redirect_https_port: None,
            listener: "main",
        },
        limit.clone(),
        shutdown_rx.clone(),
        done_tx.clone(),
    ));
    if let Some(l) = listeners.http {
        tokio::spawn(accept_loop(
            l,
            shared.clone(),
            Mode {
                tls: false,
                redirect_https_port: redirect_port,
                listener: "http",
            },
            limit,
            shutdown_rx,
            done_tx,
        ));
    }
    match (http_addr, admin_addr) {
        (Some(h), Some(a)) => {
            tracing::info!(listen = %main_addr, tls = main_is_tls, http_listen = %h, admin_listen = %a, "gateway listening")
        }
        (Some(h), None) => {
            tracing::info!(listen = %main_addr, tls = main_is_tls, http_listen = %h, "gateway listening")
        }
        (None, Some(a)) => {
            tracing::info!(listen = %main_addr, tls = main_is_tls, admin_listen = %a, "gateway listening")
        }
        (None, None) => tracing::info!(listen = %main_addr, tls = main_is_tls, "gateway listening"),
    }
    Ok(ServerHandle {
        shared,
        config_path,
        shutdown: shutdown_tx,
        done: done_rx,
        main_addr,
        http_addr,
        admin_addr,
        shutdown_grace,
        drain_delay,
        draining,
    })
}

/// What /readyz checks: not draining, the store answers, and every
/// upstream requests need has a healthy server.
fn readiness(shared: &Arc<Shared>, draining: &Arc<AtomicBool>) -> crate::admin::Readiness {
    let (shared, draining) = (shared.clone(), draining.clone());
    Arc::new(move || {
        let (shared, draining) = (shared.clone(), draining.clone());
        Box::pin(async move {
            let mut reasons = Vec::new();
            if draining.load(Ordering::Acquire) {
                reasons.push("draining: shutting down".to_string());
            }
            if let Some(store) = &shared.deps.store {
                match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => reasons.push(format!("store: {}", crate::body::error_chain(&e))),
                    Err(_) => reasons.push("store: no answer within 2s".to_string()),
                }
            }
            reasons.extend(shared.app.load().unready_upstreams());
            reasons
        })
    })
}

impl ServerHandle {
    /// Re-reads the config file and swaps in the new routes, upstreams and
    /// certificates. An invalid config is refused; the old one keeps serving.
    pub fn reload(&self) -> Result<(), ServerError> {
        let config = config::load(&self.config_path)?;
        self.reload_with(config)
    }

    /// Swaps in `config` (listeners, workers and timeouts need a restart).
    pub fn reload_with(&self, config: Config) -> Result<(), ServerError> {
        let acme = self.shared.deps.acme.as_ref();
        let wanted = config.tls.as_ref().and_then(|t| t.acme.as_ref());
        if wanted.map(|a| &a.domains) != acme.map(|a| &a.certs.domains) {
            tracing::warn!(
                "changing [tls.acme] needs a restart; the running ACME manager keeps its domains"
            );
        }
        let tls = match &config.tls {
            Some(t) => Some(TlsAcceptor::from(tls::server_config(
                t,
                acme.map(|a| &a.certs),
            )?)),
            None => None,
        };
        let access_log = config.log.access_log;
        let app = started(AppState::new(config, &self.shared.deps)?);
        // Only switch TLS off/on if the listener kind stays the same.
        if tls.is_some() == self.shared.tls.load().is_some() {
            self.shared.tls.store(Arc::new(tls));
        } else {
            tracing::warn!(
                "adding or removing [tls] needs a restart; keeping the listener as it is"
            );
        }
        self.shared.access_log.store(Arc::new(access_log));
        self.shared.app.store(Arc::new(app));
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Starts draining: /readyz answers 503 from now on, while listeners
    /// keep accepting.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Stops accepting and asks every connection to finish what it has in
    /// flight and close.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every connection has closed, or `shutdown_grace` has
    /// passed since this was called. Returns whether the drain completed.
    pub async fn drain(mut self) -> bool {
        self.shutdown();
        tokio::time::timeout(self.shutdown_grace, self.done.recv())
            .await
            .is_ok()
    }
}

/// Runs until SIGTERM or SIGINT, reloading on SIGHUP, then drains.
pub async fn run_until_signalled(handle: ServerHandle) -> io::Result<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = handle.reload() {
                    tracing::error!("reload refused, still serving the previous configuration:\n{e}");
                }
            }
        }
    }
    handle.begin_drain();
    if !handle.drain_delay.is_zero() {
        tracing::info!(drain_delay = %humantime::format_duration(handle.drain_delay), "draining: /readyz answers 503, still accepting");
        // A second signal cuts the delay short.
        tokio::select! {
            _ = tokio::time::sleep(handle.drain_delay) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    tracing::info!(grace = %humantime::format_duration(handle.shutdown_grace), "shutting down: finishing requests in flight");
    let clean = handle.drain().await;
    if clean {
        tracing::info!("all connections closed");
    } else {
        tracing::warn!("shutdown grace expired with connections still open");
    }
    Ok(clean)
}

/// Deletes expired store rows and mirror entries every `purge_interval`.
fn spawn_purge(config: &Config, deps: &Deps) {
    let Some(store) = deps.store.clone() else {
        return;
    };
    let revoked = deps.revoked.clone();
    let every = config.store.purge_interval;
    // Failures are kept as long as the longest rate-limit window needs them.
    let keep_failures = config
        .tokens
        .as_ref()
        .map_or(Duration::from_secs(86400), |t| {
            t.rate_limit
                .per_user_window
                .max(t.rate_limit.per_address_window)
        });
    let keep = i64::try_from(keep_failures.as_secs()).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let now = crate::tokens::unix_now();
            revoked.purge(now);
            // Failures are logged by the store, once per outage.
            if let Ok(n @ 1..) = store.purge(now, now.saturating_sub(keep)).await {
                tracing::debug!(rows = n, "purged expired store rows");
            }
        }
    });
}

fn started(app: AppState) -> AppState {
    app.start();
    app
}

#[derive(Clone, Copy)]
struct Mode {
    tls: bool,
    redirect_https_port: Option<u16>,
    /// The listener's name in metrics: "main" or "http".
    listener: &'static str,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mode: Mode,
    limit: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        // Past max_connections, stop accepting until one closes (the
        // kernel backlog holds the rest), as nginx does.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let done = done.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, shared, mode, shutdown).await;
            drop(permit);
            drop(done);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mode: Mode,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new(
        shared.header_read_timeout,
        shared.idle_timeout,
    ));
    let mut conn_info = ConnInfo::new(peer, mode.tls, mode.redirect_https_port);
    let mut open = crate::metrics::Connection::open(mode.listener, "http/1.1");
    if mode.tls {
        let acceptor = shared.tls.load_full();
        let Some(acceptor) = acceptor.as_ref().clone() else {
            return;
        };
        // The handshake counts against the header timeout (slowloris).
        let tls = match tokio::time::timeout(
            shared.header_read_timeout,
            Box::pin(acceptor.accept(stream)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                crate::metrics::tls_handshake_failed();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                crate::metrics::tls_handshake_failed();
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        // tls-alpn-01 validation: the handshake was the answer; nothing
        // more is exchanged (RFC 8737 3).
        if tls.get_ref().1.alpn_protocol() == Some(tls::ACME_TLS_ALPN) {
            return;
        }
        conn_info.tls_version = match tls.get_ref().1.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
            _ => None,
        };
        let conn_info = Arc::new(conn_info);
        // HTTP/2 goes to hyper; HTTP/1.1 starts on the fast path.
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            open.set_protocol("h2");
            let io = Tracked::new(tls, activity.clone(), Vec::new());
            let watchdog =
                Watchdog::start(&activity, shared.header_read_timeout, shared.idle_timeout);
            Box::pin(drive(io, shared, conn_info, activity, shutdown, watchdog)).await;
        } else {
            Box::pin(drive_h1(tls, shared, conn_info, activity, shutdown)).await;
        }
    } else {
        drive_h1(stream, shared, Arc::new(conn_info), activity, shutdown).await;
    }
}

/// Serves an HTTP/1.x connection on the fast path (`crate::h1`) until a
/// request needs the general path, then hands the connection to hyper.
async fn drive_h1<IO: h1::ClientIo>(
    io: IO,
    shared: Arc<Shared>,
    conn_info: Arc<ConnInfo>,
    activity: Arc<Activity>,
    shutdown: watch::Receiver<bool>,
) {
    let mut watchdog = Watchdog::start(&activity, shared.header_read_timeout, shared.idle_timeout);
    let env = h1::Env {
        app: &shared.app,
        access_log: &shared.access_log,
        conn: &conn_info,
        activity: &activity,
        max_header_bytes: shared.max_header_bytes,
        header_read_timeout: shared.header_read_timeout,
        shutdown: shutdown.clone(),
    };
    let outcome = tokio::select! {
        o = h1::serve(io, env) => o,
        why = watchdog.fired() => {
            tracing::debug!(reason = why, "closing connection");
            return;
        }
    };
    if let h1::Outcome::Handover { io, buffered } = outcome {
        let io = Tracked::new(io, activity.clone(), buffered);
        // Boxed: hyper's connection state is large, and only connections
        // handed over need it.
        Box::pin(drive(
            io,
            shared.clone(),
            conn_info.clone(),
            activity.clone(),
            shutdown,
            watchdog,
        ))
        .await;
    }
}

async fn drive<IO>(
    io: Tracked<IO>,
    shared: Arc<Shared>,
    conn_info: Arc<ConnInfo>,
    activity: Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
    mut watchdog: Watchdog,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let activity = activity.clone();
            let conn_info = conn_info.clone();
            async move {
                activity.request_started();
                let app = shared.app.load_full();
                let log = **shared.access_log.load();
                let (resp, record) = handler::handle(app, &conn_info, req, log).await;
                let finish = Finish {
                    record,
                    log,
                    bytes: 0,
                    activity,
                };
                Ok::<_, Infallible>(resp.map(|inner| Done { inner, finish }))
            }
        })
    };
    let conn = shared
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut draining = *shutdown.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            why = watchdog.fired() => {
                tracing::debug!(reason = why, "closing connection");
                return;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The connection's IO, noting reads for the watchdog.
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
    /// Bytes the fast path read before handing the connection over: read
    /// first.
    prefix: crate::wire::Replay,
}

impl<IO> Tracked<IO> {
    fn new(inner: IO, activity: Arc<Activity>, prefix: Vec<u8>) -> Self {
        Tracked {
            inner,
            activity,
            prefix: crate::wire::Replay::new(prefix),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.read_into(buf) {
            this.activity.on_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.on_read();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that, once sent or dropped, writes the access-log line
/// and tells the watchdog the request is done.
struct Done {
    inner: Body,
    finish: Finish,
}

struct Finish {
    record: AccessRecord,
    log: bool,
    bytes: u64,
    activity: Arc<Activity>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let r = &self.record;
        handler::observe(r.route, &r.method, r.status, r.start);
        if self.log {
            r.log(self.bytes);
        } else {
            crate::telemetry::failed(&r.method, r.status, r.error.as_deref());
        }
        self.activity.request_finished();
    }
}

impl http_body::Body for Done {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if let Some(d) = frame.data_ref() {
                this.finish.bytes += d.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("main_addr", &self.main_addr)
            .field("http_addr", &self.http_addr)
            .finish()
    }
}
