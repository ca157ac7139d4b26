//! The HTTP/1.1 fast path for proxied requests.
//!
//! Most traffic through a front door is small API requests proxied to the
//! app. For those, this module reads the request head into one buffer,
//! parses it in place (httparse), runs the same request path as
//! `handler` (strip identity headers, route, methods, authenticate,
//! authorise), writes the upstream request head straight from the client's
//! bytes, and copies the upstream's answer back, in the connection's own
//! task, on a pooled upstream connection (`proxy::pool`). No header maps,
//! no per-request tasks or channels, and no buffers kept while the
//! connection idles.
//!
//! Static routes (the same file server; whole files with `sendfile(2)` on
//! plain TCP) and the health path are answered here too. Anything else
//! (token routes, redirects, requests that will be refused, chunked or
//! `Expect` uploads, upgrades, HTTP/1.0, HTTP/2, heads over the buffer) is
//! not handled here: the connection, with the bytes read so far, is handed
//! to hyper and the general path (`handler::handle`) for the rest of its
//! life.
//! A request is handed over before anything about it has been sent, so
//! both paths answer it the same way.

use http::header::HeaderValue;
use http::StatusCode;
use http_body_util::BodyExt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::handler::{AppState, ConnInfo, FastJob, FastRequest, Pending, Ready, RequestId};
use crate::proxy::client::Stream;
use crate::proxy::headers::Name;
use crate::proxy::{ProxyError, Upstream};
use crate::response::{self, ErrorNote, GatewayError};
use crate::server::{now_ms, Activity};
use crate::static_files::SendFile;
use crate::telemetry::AccessRecord;

/// Header fields per message the fast path parses (hyper's limit too);
/// a request with more goes the general way.
const MAX_HEADERS: usize = 100;
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size for request heads.
const HEAD_READ: usize = 4096;
/// Read size for bodies.
const BODY_READ: usize = 64 * 1024;

/// Room for a head's header fields, left uninitialised: httparse fills
/// what it parses (initialising all of them would cost more than parsing
/// a short head).
pub(crate) fn uninit_headers<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Per-thread spare buffers: requests borrow them and give them back, so
/// the fast path neither allocates per request nor keeps buffers on idle
/// connections.
pub(crate) mod spare {
    use std::cell::RefCell;

    /// Capacity of a pooled buffer.
    pub const SIZE: usize = 16 * 1024;
    const KEEP: usize = 256;

    thread_local! {
        static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Vec<u8> {
        POOL.with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(SIZE))
    }

    pub fn give(mut v: Vec<u8>) {
        if v.capacity() < SIZE || v.capacity() > 4 * SIZE {
            return;
        }
        v.clear();
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < KEEP {
                p.push(v);
            }
        });
    }
}

/// A client connection the fast path can serve.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when bytes (or the end) can be read: an idle connection waits
    /// here without a read buffer.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The plain TCP stream, for `sendfile(2)`.
    fn as_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl ClientIo for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn as_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Decrypted bytes may already be buffered: just read.
        Poll::Ready(Ok(()))
    }
}

/// How the fast path left a connection.
pub(crate) enum Outcome<IO> {
    /// Closed (by either side, or on shutdown).
    Closed,
    /// This request is for the general path: `buffered` holds the bytes
    /// read from `io` and not consumed.
    Handover { io: IO, buffered: Vec<u8> },
}

/// What the fast path needs from the server.
pub(crate) struct Env<'a> {
    pub app: &'a arc_swap::ArcSwap<AppState>,
    pub access_log: &'a arc_swap::ArcSwap<bool>,
    pub conn: &'a ConnInfo,
    pub activity: &'a Activity,
    pub max_header_bytes: usize,
    pub shutdown: watch::Receiver<bool>,
}

/// Serves requests on `io` until it closes or a request needs the general
/// path.
pub(crate) async fn serve<IO: ClientIo>(mut io: IO, env: Env<'_>) -> Outcome<IO> {
    let client_ip = env.conn.peer.ip().to_canonical().to_string();
    let mut buf: Vec<u8> = Vec::new();
    let mut timer = HeadTimer::default();
    // One wait for shutdown for the whole connection: registering a new
    // one per request would cost more than the rest of the idle wait.
    let mut stop_rx = env.shutdown.clone();
    let stop = stop_rx.changed();
    tokio::pin!(stop);
    loop {
        if buf.is_empty() {
            // Idle: hold no buffer while waiting for the next request.
            spare::give(std::mem::take(&mut buf));
            tokio::select! {
                biased;
                r = poll_fn(|cx| io.poll_readable(cx)) => {
                    if r.is_err() {
                        return Outcome::Closed;
                    }
                }
                _ = &mut stop => return Outcome::Closed,
            }
            if *env.shutdown.borrow() {
                return Outcome::Closed;
            }
        }
        // Read until the head is complete, then plan from the one parse.
        let state = env.app.load_full();
        let log = **env.access_log.load();
        let (planned, head_len) = loop {
            if !buf.is_empty() {
                let mut headers = uninit_headers();
                let mut req = httparse::Request::new(&mut []);
                match req.parse_with_uninit_headers(&buf, &mut headers) {
                    Ok(httparse::Status::Complete(n)) => {
                        break (plan(&state, env.conn, &client_ip, &req, log), n);
                    }
                    Ok(httparse::Status::Partial) => {}
                    // Malformed, too many headers, HTTP/2 preface: the
                    // general path answers (or speaks HTTP/2).
                    Err(_) => return Outcome::Handover { io, buffered: buf },
                }
            }
            if buf.len() >= env.max_header_bytes {
                return Outcome::Handover { io, buffered: buf };
            }
            if buf.capacity() == 0 {
                buf = spare::take();
            }
            buf.reserve(HEAD_READ);
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    return if buf.is_empty() {
                        Outcome::Closed
                    } else {
                        Outcome::Handover { io, buffered: buf }
                    };
                }
                Ok(_) => env.activity.on_read(),
            }
        };
        let planned = match planned {
            Some(Planned {
                pending,
                static_req,
                method,
                log_path,
            }) => match pending.ready() {
                Ready::Now(prepared) => into_plan(prepared, static_req, method, log_path),
                // Boxed: a token verification's state is large.
                Ready::Verify(pending) => {
                    Box::pin(async {
                        let prepared = state.finish_fast(pending).await?;
                        into_plan(prepared, static_req, method, log_path)
                    })
                    .await
                }
            },
            None => None,
        };
        let Some(mut plan) = planned else {
            return Outcome::Handover { io, buffered: buf };
        };
        env.activity.request_started();
        let start = log.then(Instant::now);
        let body_len = match &plan.job {
            Job::Proxy { body_len, .. } => *body_len,
            Job::Static { .. } | Job::Health => 0,
        };
        let body_here = usize::try_from(body_len)
            .unwrap_or(usize::MAX)
            .min(buf.len() - head_len);
        let body_rest = body_len - body_here as u64;
        let draining = *env.shutdown.borrow();
        let reply = Reply {
            request_id: &plan.request_id,
            hsts: if env.conn.tls {
                state.hsts.as_ref()
            } else {
                None
            },
            close: plan.close || draining,
        };
        let mut upstream_time = None;
        let job = std::mem::replace(&mut plan.job, Job::Health);
        let exchanged = match job {
            Job::Proxy {
                upstream,
                server,
                head,
                ..
            } => {
                // Boxed: the exchange's state is large, and an idle
                // connection should not carry it.
                Box::pin(exchange(
                    &mut io,
                    &upstream,
                    server,
                    plan.is_head,
                    head,
                    &buf[head_len..head_len + body_here],
                    body_rest,
                    &reply,
                    &mut timer,
                    log.then_some(&mut upstream_time),
                ))
                .await
            }
            Job::Static { route, req } => {
                let resp = Box::pin(state.serve_static_fast(route, *req)).await;
                Err(Answer::Local(resp))
            }
            Job::Health => Err(Answer::Local(crate::handler::health())),
        };
        let (status, bytes, error, keep) = match exchanged {
            Ok(done) => (done.status, done.bytes, None, done.client_ok),
            Err(answer) => {
                let (resp, client_body_left) = match answer {
                    Answer::Local(resp) => (resp, false),
                    Answer::Failed(Failed {
                        error,
                        client_body_left,
                    }) => {
                        let err = GatewayError::from(error);
                        if err.is_server_side() {
                            tracing::debug!(error = %response::error_chain(&err), "request failed");
                        }
                        (response::error_response(&err), client_body_left)
                    }
                };
                let close = reply.close || client_body_left;
                let reply = Reply { close, ..reply };
                // Boxed: static files and errors are the rarer answers here.
                match Box::pin(write_response(&mut io, resp, &reply, plan.is_head)).await {
                    Ok((status, bytes, note)) => (status, bytes, note, !close),
                    Err(_) => (500, 0, None, false),
                }
            }
        };
        if let Some(start) = start {
            AccessRecord {
                peer: env.conn.peer,
                method: plan.method.clone(),
                path: plan.log_path.clone(),
                status,
                request_id: plan.request_id.as_str().to_string(),
                start,
                upstream_time,
                error,
            }
            .log(bytes);
        }
        env.activity.request_finished();
        if !keep || reply.close {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
        // Keep pipelined bytes of the next request, if any: its head is
        // under way, so the header timeout runs from now.
        buf.drain(..head_len + body_here);
        if !buf.is_empty() {
            env.activity.head_buffered();
        }
    }
}

/// A request the fast path will answer.
struct Plan {
    job: Job,
    method: http::Method,
    /// HEAD: the answer has no body whatever its headers say.
    is_head: bool,
    /// The client asked to close after this request.
    close: bool,
    request_id: RequestId,
    /// The path for the access log (only filled when it is on).
    log_path: String,
}

enum Job {
    /// Proxy, with the upstream request head ready.
    Proxy {
        upstream: Arc<Upstream>,
        /// Index of the server picked (round robin) among the upstream's.
        server: usize,
        /// The request head for the upstream, body not included.
        head: Vec<u8>,
        body_len: u64,
    },
    /// Serve from the static route with this index.
    Static {
        route: usize,
        // Boxed: it would make every plan (and each connection's state)
        // larger.
        req: Box<http::Request<()>>,
    },
    /// Answer the health path.
    Health,
}

/// The synchronous part of planning: the parsed head's facts, owned, so
/// the header array is not kept across an await (it would sit in every
/// connection's state).
struct Planned<'s> {
    pending: Pending<'s>,
    /// For a static route: the request as the file server takes it.
    static_req: Option<Box<http::Request<()>>>,
    method: http::Method,
    log_path: String,
}

/// Runs the request path up to the proxy on a parsed head. `None`: this
/// request is for the general path.
fn plan<'s>(
    state: &'s AppState,
    conn: &ConnInfo,
    client_ip: &str,
    req: &httparse::Request<'_, '_>,
    log: bool,
) -> Option<Planned<'s>> {
    if req.version != Some(1) {
        return None;
    }
    let method = req.method?;
    let target = req.path?;
    if method == "CONNECT" || !target.starts_with('/') {
        return None;
    }
    let (path, query) = split_target(target)?;
    // Standard methods are held inline: no allocation.
    let method = http::Method::from_bytes(method.as_bytes()).ok()?;
    let fast = FastRequest {
        method: &method,
        path,
        query,
        headers: req.headers,
        peer_ip: client_ip,
    };
    let pending = state.prepare_fast(conn, &fast)?;
    let static_req = if pending.is_static() {
        let mut r = http::Request::new(());
        *r.method_mut() = method.clone();
        *r.uri_mut() = http::Uri::try_from(target).ok()?;
        let h = r.headers_mut();
        for header in req.headers.iter() {
            h.append(
                http::HeaderName::from_bytes(header.name.as_bytes()).ok()?,
                HeaderValue::from_bytes(header.value).ok()?,
            );
        }
        Some(Box::new(r))
    } else {
        None
    };
    Some(Planned {
        pending,
        static_req,
        method,
        log_path: if log { path.to_string() } else { String::new() },
    })
}

/// Splits an origin-form request target into path and query when each of
/// its bytes is one `http::uri::PathAndQuery` takes as it is (what hyper
/// validates with), without copying it. `None` for anything else (a
/// fragment, bytes it would refuse): the general path decides those, so
/// both paths accept the same targets.
fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    let b = target.as_bytes();
    let q = b.iter().position(|&c| c == b'?').unwrap_or(b.len());
    let path_ok =
        |c: u8| matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E);
    let query_ok = |c: u8| matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E);
    if !b[..q].iter().all(|&c| path_ok(c)) {
        return None;
    }
    match target.get(q + 1..) {
        None => Some((target, None)),
        Some(query) if query.bytes().all(query_ok) => Some((&target[..q], Some(query))),
        Some(_) => None,
    }
}

/// The plan for a prepared request.
fn into_plan(
    prepared: crate::handler::Prepared,
    static_req: Option<Box<http::Request<()>>>,
    method: http::Method,
    log_path: String,
) -> Option<Plan> {
    let job = match prepared.job {
        FastJob::Proxy {
            upstream,
            server,
            head,
            body_len,
        } => Job::Proxy {
            upstream,
            server,
            head,
            body_len,
        },
        FastJob::Static { route } => Job::Static {
            route,
            req: static_req?,
        },
        FastJob::Health => Job::Health,
    };
    Some(Plan {
        job,
        is_head: method == http::Method::HEAD,
        method,
        close: prepared.close,
        request_id: prepared.request_id,
        log_path,
    })
}

/// How every response on this connection is finished.
struct Reply<'a> {
    request_id: &'a RequestId,
    hsts: Option<&'a HeaderValue>,
    /// Send `connection: close` and close after the response.
    close: bool,
}

struct Done {
    status: u16,
    /// Body bytes sent to the client.
    bytes: u64,
    /// The client connection can carry another request.
    client_ok: bool,
}

/// A response the gateway makes itself, to be written whole.
enum Answer {
    /// A static file's (or its error) response.
    Local(http::Response<crate::response::Body>),
    /// The proxy failed before anything was sent to the client.
    Failed(Failed),
}

/// A failure before anything was sent to the client.
struct Failed {
    error: ProxyError,
    /// Part of the request body is still unread on the client connection.
    client_body_left: bool,
}

/// Sends the request upstream and the answer back.
#[allow(clippy::too_many_arguments)]
async fn exchange<IO: ClientIo>(
    io: &mut IO,
    up: &Upstream,
    server: usize,
    is_head: bool,
    up_head: Vec<u8>,
    body_here: &[u8],
    body_rest: u64,
    reply: &Reply<'_>,
    timer: &mut HeadTimer,
    upstream_time: Option<&mut Option<std::time::Duration>>,
) -> Result<Done, Answer> {
    let name = &up.config.name;
    let fail = |error: ProxyError, left: bool| {
        Answer::Failed(Failed {
            error,
            client_body_left: left,
        })
    };
    let Some(server) = up.servers().get(server) else {
        return Err(fail(
            ProxyError::BadRequest("upstream has no servers"),
            body_rest > 0,
        ));
    };
    let mut first = up_head;
    first.extend_from_slice(body_here);
    let sent_at = upstream_time.is_some().then(Instant::now);
    // A reused connection may have been closed by the server meanwhile: a
    // request held whole in memory is then sent again on a new one.
    let mut fresh_only = false;
    let mut out = spare::take();
    let (mut stream, ubuf, head) = loop {
        let taken = if fresh_only {
            server.pool.connect().await
        } else {
            server.pool.take().await
        };
        let mut taken = match taken {
            Ok(t) => t,
            Err(e) => {
                return Err(fail(
                    ProxyError::Connect {
                        upstream: name.clone(),
                        source: e.into(),
                    },
                    body_rest > 0,
                ))
            }
        };
        let retry = taken.reused && body_rest == 0;
        if let Err(e) = taken.stream.write_all(&first).await {
            if retry {
                fresh_only = true;
                continue;
            }
            return Err(fail(upstream_err(name, e), body_rest > 0));
        }
        if body_rest > 0 {
            send_body(io, &mut taken.stream, body_rest, up)
                .await
                .map_err(Answer::Failed)?;
        }
        match read_head(&mut taken.stream, up, is_head, reply, &mut out, timer).await {
            Ok((ubuf, head)) => break (taken.stream, ubuf, head),
            Err(HeadError::Closed) if retry => {
                fresh_only = true;
                continue;
            }
            Err(HeadError::Closed) => {
                return Err(fail(
                    upstream_err(
                        name,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before the response",
                        ),
                    ),
                    false,
                ))
            }
            Err(HeadError::Io(e)) => return Err(fail(upstream_err(name, e), false)),
            Err(HeadError::Timeout) => {
                return Err(fail(
                    ProxyError::Timeout {
                        upstream: name.clone(),
                        after: up.config.timeout,
                    },
                    false,
                ))
            }
        }
    };
    if let (Some(t), Some(at)) = (upstream_time, sent_at) {
        *t = Some(at.elapsed());
    }

    spare::give(first);
    let mut reusable = head.keep_alive;
    let mut body = Forward {
        framing: head.framing,
        sent: 0,
        done: false,
        broken: false,
    };
    let extra = body.take(&ubuf[head.len..], &mut out);
    if extra {
        reusable = false;
    }
    if io.write_all(&out).await.is_err() {
        return Ok(Done {
            status: head.status,
            bytes: body.sent,
            client_ok: false,
        });
    }
    spare::give(out);
    spare::give(ubuf);
    let mut client_ok = true;
    if !body.done {
        let mut chunk = Vec::with_capacity(BODY_READ);
        let mut framed = Vec::new();
        while !body.done {
            chunk.clear();
            match stream.read_buf(&mut chunk).await {
                Ok(0) => {
                    if matches!(body.framing, Framing::UntilClose) {
                        framed.clear();
                        framed.extend_from_slice(b"0\r\n\r\n");
                        body.done = true;
                        if io.write_all(&framed).await.is_err() {
                            client_ok = false;
                        }
                    } else {
                        // The upstream broke off mid-body: so must we, or the
                        // client would take a short body for a whole one.
                        client_ok = false;
                    }
                    reusable = false;
                    break;
                }
                Ok(_) => {
                    framed.clear();
                    if body.take(&chunk, &mut framed) {
                        reusable = false;
                    }
                    if io.write_all(&framed).await.is_err() {
                        client_ok = false;
                        reusable = false;
                        break;
                    }
                }
                Err(_) => {
                    client_ok = false;
                    reusable = false;
                    break;
                }
            }
        }
    }
    if body.broken {
        client_ok = false;
        reusable = false;
    }
    if reusable && body.done && !matches!(body.framing, Framing::UntilClose) {
        server.pool.put(stream);
    }
    Ok(Done {
        status: head.status,
        bytes: body.sent,
        client_ok,
    })
}

fn upstream_err(name: &str, e: io::Error) -> ProxyError {
    ProxyError::Upstream {
        upstream: name.to_string(),
        source: e.into(),
    }
}

/// Copies the rest of a Content-Length request body from the client to
/// the upstream, each read within the upstream timeout.
async fn send_body<IO: ClientIo>(
    io: &mut IO,
    stream: &mut Stream,
    mut rest: u64,
    up: &Upstream,
) -> Result<(), Failed> {
    let timeout = up.config.timeout;
    let mut chunk = vec![0u8; usize::try_from(rest).unwrap_or(BODY_READ).min(BODY_READ)];
    while rest > 0 {
        let want = usize::try_from(rest).unwrap_or(BODY_READ).min(chunk.len());
        let read = tokio::time::timeout(timeout, io.read(&mut chunk[..want]));
        let n = match read.await {
            Err(_) => {
                return Err(Failed {
                    error: ProxyError::ClientBodyTimeout { after: timeout },
                    client_body_left: true,
                })
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(Failed {
                    error: ProxyError::BadRequest("request body ended early"),
                    client_body_left: true,
                })
            }
            Ok(Ok(n)) => n,
        };
        rest -= n as u64;
        let write = tokio::time::timeout(timeout, stream.write_all(&chunk[..n]));
        match write.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Failed {
                    error: upstream_err(&up.config.name, e),
                    client_body_left: rest > 0,
                })
            }
            Err(_) => {
                return Err(Failed {
                    error: ProxyError::Timeout {
                        upstream: up.config.name.clone(),
                        after: timeout,
                    },
                    client_body_left: rest > 0,
                })
            }
        }
    }
    Ok(())
}

/// The parts of an upstream response head the fast path acts on.
struct ResponseHead {
    /// Length of the head in the buffer.
    len: usize,
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

enum HeadError {
    /// The connection ended before a byte of the response.
    Closed,
    Io(io::Error),
    Timeout,
}

/// Reads the upstream's final response head (1xx answers are skipped)
/// within the upstream timeout. Returns the buffer, head first.
async fn read_head(
    stream: &mut Stream,
    up: &Upstream,
    is_head: bool,
    reply: &Reply<'_>,
    out: &mut Vec<u8>,
    timer: &mut HeadTimer,
) -> Result<(Vec<u8>, ResponseHead), HeadError> {
    let timeout_ms = u64::try_from(up.config.timeout.as_millis()).unwrap_or(u64::MAX);
    let deadline = now_ms().saturating_add(timeout_ms);
    let mut ubuf = spare::take();
    let mut got_any = false;
    loop {
        if !ubuf.is_empty() {
            match parse_response(&ubuf, is_head, reply, out) {
                Ok(Some(head)) if (100..200).contains(&head.status) => {
                    if head.status == 101 {
                        return Err(HeadError::Io(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "upstream switched protocols without an upgrade request",
                        )));
                    }
                    ubuf.drain(..head.len);
                    continue;
                }
                Ok(Some(head)) => return Ok((ubuf, head)),
                Ok(None) => {}
                Err(e) => return Err(HeadError::Io(e)),
            }
            if ubuf.len() >= MAX_RESPONSE_HEAD {
                return Err(HeadError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                )));
            }
        }
        ubuf.reserve(HEAD_READ * 4);
        match timer.within(deadline, stream.read_buf(&mut ubuf)).await {
            None => return Err(HeadError::Timeout),
            Some(Ok(0)) if !got_any => return Err(HeadError::Closed),
            Some(Ok(0)) => {
                return Err(HeadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside the response head",
                )))
            }
            Some(Ok(_)) => got_any = true,
            Some(Err(e))
                if !got_any
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Err(HeadError::Closed)
            }
            Some(Err(e)) => return Err(HeadError::Io(e)),
        }
    }
}

/// The upstream timeouts of a connection's requests, on one timer: a
/// request only names its deadline, and the timer is moved when it fires
/// before that deadline (or is set past it), so a request costs no
/// timer-wheel insertion and removal.
#[derive(Default)]
struct HeadTimer {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the timer is set to fire (`now_ms` clock).
    armed: u64,
}

impl HeadTimer {
    /// `fut`'s output, or `None` once `deadline` (`now_ms` clock) passes.
    async fn within<F: Future>(&mut self, deadline: u64, fut: F) -> Option<F::Output> {
        let HeadTimer { sleep, armed } = self;
        let arm = |sleep: &mut Option<Pin<Box<tokio::time::Sleep>>>, armed: &mut u64| {
            let wait = Duration::from_millis(deadline.saturating_sub(now_ms()));
            let at = tokio::time::Instant::now() + wait;
            match sleep {
                Some(s) => s.as_mut().reset(at),
                None => *sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            *armed = deadline;
        };
        if sleep.is_none() || *armed > deadline {
            arm(sleep, armed);
        }
        tokio::pin!(fut);
        loop {
            let s = sleep.as_mut()?;
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                () = s.as_mut() => {
                    if now_ms() >= deadline {
                        return None;
                    }
                    // An earlier request's deadline (or a fire while idle).
                    arm(sleep, armed);
                }
            }
        }
    }
}

/// Parses an upstream response head in `buf`; for a final answer, also
/// writes the client's response head into `out`: the status and the
/// end-to-end headers, then the gateway's own.
fn parse_response(
    buf: &[u8],
    is_head: bool,
    reply: &Reply<'_>,
    out: &mut Vec<u8>,
) -> io::Result<Option<ResponseHead>> {
    let mut headers = uninit_headers();
    let Some((len, status, resp)) = parse_response_head(buf, &mut headers)? else {
        return Ok(None);
    };
    let mut head = ResponseHead {
        len,
        status,
        framing: Framing::Empty,
        keep_alive: resp.version == Some(1),
    };
    if (100..200).contains(&status) {
        return Ok(Some(head));
    }
    let BodyFacts {
        content_length,
        chunked,
        keep_alive,
        has_date,
        has_connection,
    } = body_facts(resp.version, resp.headers)?;
    head.keep_alive = keep_alive;
    head.framing = if is_head || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked(ChunkedScan::default())
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let rechunk = matches!(head.framing, Framing::UntilClose | Framing::Chunked(_));

    status_line(out, status);
    let named = if has_connection {
        connection_named(resp.headers)
    } else {
        Vec::new()
    };
    for h in resp.headers.iter() {
        let skip = match Name::of(h.name.as_bytes()) {
            Name::XRequestId => true,
            Name::StrictTransportSecurity => reply.hsts.is_some(),
            Name::ContentLength => rechunk,
            name => name.is_hop_by_hop(),
        };
        if skip
            || named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()))
        {
            continue;
        }
        header(out, h.name.as_bytes(), h.value);
    }
    if rechunk {
        header(out, b"transfer-encoding", b"chunked");
    }
    finish_head(out, reply, has_date);
    Ok(Some(head))
}

/// Parses a response head into `headers`: `None` while it is incomplete,
/// else its length, status and the parsed response.
pub(crate) fn parse_response_head<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> io::Result<Option<(usize, u16, httparse::Response<'h, 'b>)>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, headers)
    {
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.ok_or_else(|| bad("no status".into()))?;
            Ok(Some((len, status, resp)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(bad(format!("invalid response head: {e}"))),
    }
}

/// What a response head says about its body and its connection.
pub(crate) struct BodyFacts {
    /// `None` also when chunked: Transfer-Encoding wins (RFC 9112 6.3).
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
    pub has_date: bool,
    /// A Connection header names headers (`names_headers`).
    pub has_connection: bool,
}

/// Reads the framing headers of a response head: conflicting lengths are
/// an error; chunked only counts as the last coding, and any other coding
/// is read until close (RFC 9112 6.3).
pub(crate) fn body_facts(
    version: Option<u8>,
    headers: &[httparse::Header<'_>],
) -> io::Result<BodyFacts> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut facts = BodyFacts {
        content_length: None,
        chunked: false,
        keep_alive: version == Some(1),
        has_date: false,
        has_connection: false,
    };
    for h in headers {
        match Name::of(h.name.as_bytes()) {
            Name::ContentLength => {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| bad("invalid content-length"))?;
                if facts.content_length.is_some_and(|c| c != v) {
                    return Err(bad("conflicting content-length"));
                }
                facts.content_length = Some(v);
            }
            Name::TransferEncoding => {
                facts.chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
                if !facts.chunked {
                    facts.keep_alive = false;
                }
            }
            Name::Connection => {
                facts.has_connection |= names_headers(h.value);
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        facts.keep_alive = false;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && version == Some(0) {
                        facts.keep_alive = true;
                    }
                }
            }
            Name::Date => facts.has_date = true,
            _ => {}
        }
    }
    if facts.chunked {
        facts.content_length = None;
    }
    Ok(facts)
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(trim).filter(|t| !t.is_empty())
}

fn last_token(v: &[u8]) -> &[u8] {
    tokens(v).last().unwrap_or(b"")
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(code.format(status).as_bytes());
    out.push(b' ');
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("<none>");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The gateway's own response headers and the blank line.
fn finish_head(out: &mut Vec<u8>, reply: &Reply<'_>, has_date: bool) {
    header(out, b"x-request-id", reply.request_id.as_bytes());
    if let Some(h) = reply.hsts {
        header(out, b"strict-transport-security", h.as_bytes());
    }
    if !has_date {
        crate::handler::with_http_date(|d| header(out, b"date", d));
    }
    if reply.close {
        header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a Connection value names a header that is not hop-by-hop
/// anyway (anything but `keep-alive`): only then is `connection_named`
/// worth a pass.
pub(crate) fn names_headers(connection: &[u8]) -> bool {
    if connection.eq_ignore_ascii_case(b"keep-alive") {
        return false;
    }
    tokens(connection).any(|t| !t.eq_ignore_ascii_case(b"keep-alive"))
}

/// Header names listed in Connection (hop-by-hop for this message).
pub(crate) fn connection_named<'h>(headers: &[httparse::Header<'h>]) -> Vec<&'h [u8]> {
    let mut named = Vec::new();
    for h in headers {
        if Name::of(h.name.as_bytes()) == Name::Connection {
            named.extend(tokens(h.value));
        }
    }
    named
}

/// Writes a response the gateway made itself (a static file or an
/// error), streaming its body; a whole large file on plain TCP goes out
/// with `sendfile(2)`. Returns the status, body bytes sent and the error
/// note for the access log. An error means the connection must close.
async fn write_response<IO: ClientIo>(
    io: &mut IO,
    mut resp: http::Response<crate::response::Body>,
    reply: &Reply<'_>,
    is_head: bool,
) -> io::Result<(u16, u64, Option<String>)> {
    use http_body::Body as _;
    let note = resp.extensions_mut().remove::<ErrorNote>().map(|n| n.0);
    let sendfile = resp.extensions_mut().remove::<SendFile>();
    let (parts, mut body) = resp.into_parts();
    let status = parts.status.as_u16();
    let no_body = is_head || status == 204 || status == 304 || status < 200;
    let declared = parts.headers.contains_key(http::header::CONTENT_LENGTH);
    let exact = body.size_hint().exact();
    let mut out = spare::take();
    status_line(&mut out, status);
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name.as_str() == "x-request-id" {
            continue;
        }
        has_date |= name == http::header::DATE;
        header(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    let chunked = !no_body && !declared && exact.is_none();
    if !declared && !no_body {
        match exact {
            Some(n) => {
                let mut len = itoa::Buffer::new();
                header(&mut out, b"content-length", len.format(n).as_bytes());
            }
            None => header(&mut out, b"transfer-encoding", b"chunked"),
        }
    }
    finish_head(&mut out, reply, has_date);
    if no_body {
        io.write_all(&out).await?;
        spare::give(out);
        return Ok((status, 0, note));
    }
    if let (Some(file), Some(tcp)) = (&sendfile, io.as_tcp()) {
        drop(body);
        io_write_more(tcp, &out).await?;
        spare::give(out);
        let sent = send_file(tcp, file).await?;
        return Ok((status, sent, note));
    }
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut hex = [0u8; 16];
            out.extend_from_slice(hex_len(data.len(), &mut hex));
            out.extend_from_slice(b"\r\n");
        }
        if data.len() <= spare::SIZE {
            out.extend_from_slice(&data);
        } else {
            io.write_all(&out).await?;
            out.clear();
            io.write_all(&data).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        sent += data.len() as u64;
        if !out.is_empty() {
            io.write_all(&out).await?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(&out).await?;
    }
    spare::give(out);
    Ok((status, sent, note))
}

/// Writes all of `data` on a plain TCP stream with `MSG_MORE`: the head
/// waits for the file that follows, so they leave in full segments (what
/// nginx's tcp_nopush does, without two `setsockopt` calls).
async fn io_write_more(tcp: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        tcp.writable().await?;
        let r = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::net::send(tcp, data, rustix::net::SendFlags::MORE).map_err(io::Error::from)
        });
        match r {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Largest piece handed to one `sendfile` call; other connections get a
/// turn between pieces.
const SENDFILE_PIECE: u64 = 1024 * 1024;

/// Sends a whole file with `sendfile(2)`: no copy through user space.
async fn send_file(tcp: &TcpStream, file: &SendFile) -> io::Result<u64> {
    let mut offset = 0u64;
    while offset < file.len {
        let want = usize::try_from((file.len - offset).min(SENDFILE_PIECE)).unwrap_or(1 << 20);
        tcp.writable().await?;
        let r = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::fs::sendfile(tcp, &*file.file, Some(&mut offset), want).map_err(io::Error::from)
        });
        match r {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "static file shrank while being sent",
                ))
            }
            Ok(_) => tokio::task::yield_now().await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(offset)
}

/// How the response body is delimited.
enum Framing {
    Empty,
    Length(u64),
    /// Passed through as it is, scanned for its end.
    Chunked(ChunkedScan),
    /// No length: read to the upstream's close, sent chunked.
    UntilClose,
}

/// Forwards body bytes to the client, noticing where the body ends.
struct Forward {
    framing: Framing,
    /// Body bytes (payload) sent so far.
    sent: u64,
    done: bool,
    /// The upstream's framing was invalid: the client connection must be
    /// closed after what was sent.
    broken: bool,
}

impl Forward {
    /// Appends the body part of `data` to `out`, framed for the client.
    /// Returns true when bytes follow the end of the body (the upstream
    /// connection cannot be reused).
    fn take(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        match &mut self.framing {
            Framing::Empty => {
                self.done = true;
                !data.is_empty()
            }
            Framing::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                out.extend_from_slice(&data[..n]);
                *left -= n as u64;
                self.sent += n as u64;
                self.done = *left == 0;
                data.len() > n
            }
            Framing::Chunked(scan) => match scan.feed(data) {
                Ok(Some(end)) => {
                    out.extend_from_slice(&data[..end]);
                    self.sent += end as u64;
                    self.done = true;
                    data.len() > end
                }
                Ok(None) => {
                    out.extend_from_slice(data);
                    self.sent += data.len() as u64;
                    false
                }
                Err(()) => {
                    // Malformed chunking: stop here; the client sees a
                    // broken-off body, never a made-up end.
                    self.done = true;
                    self.broken = true;
                    true
                }
            },
            Framing::UntilClose => {
                if !data.is_empty() {
                    let mut hex = [0u8; 16];
                    let hex = hex_len(data.len(), &mut hex);
                    out.extend_from_slice(hex);
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                    self.sent += data.len() as u64;
                }
                false
            }
        }
    }
}

fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Finds the end of a chunked body without decoding it (`feed`), or
/// decodes it (`decode`).
#[derive(Default)]
pub(crate) struct ChunkedScan {
    state: Chunk,
    size: u64,
    /// The size line has at least one hex digit (RFC 9112 7.1).
    digits: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

/// A step of decoding a chunked body.
pub(crate) enum Decoded {
    Data(bytes::Bytes),
    End,
    NeedMore,
}

impl ChunkedScan {
    /// Takes the next payload piece (or the end) off the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Decoded, ()> {
        use bytes::Buf;
        loop {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            if self.state == Chunk::Data {
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            // Framing bytes, one at a time.
            let end = self.feed(&buf[..1])?;
            buf.advance(1);
            if end.is_some() {
                return Ok(Decoded::End);
            }
        }
    }

    /// Scans `data`; `Some(n)`: the body ends after `data[..n]`.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.size >> 59 != 0 {
                            return Err(());
                        }
                        self.digits = true;
                        let d = (b as char).to_digit(16).ok_or(())?;
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' | b' ' | b'\t' if self.digits => self.state = Chunk::Ext,
                    b'\r' if self.digits => self.state = Chunk::SizeLf,
                    _ => return Err(()),
                },
                Chunk::Ext => {
                    if b == b'\r' {
                        self.state = Chunk::SizeLf;
                    }
                }
                Chunk::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = if self.size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data
                    };
                }
                Chunk::Data => {
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::Size;
                    self.digits = false;
                }
                Chunk::TrailerStart => {
                    self.state = if b == b'\r' {
                        Chunk::EndLf
                    } else {
                        Chunk::TrailerLine
                    };
                }
                Chunk::TrailerLine => {
                    if b == b'\r' {
                        self.state = Chunk::TrailerLf;
                    }
                }
                Chunk::TrailerLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::TrailerStart;
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_end_is_found_across_pieces() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut scan = ChunkedScan::default();
            let (a, b) = body.split_at(split);
            let end = match scan.feed(a).unwrap() {
                Some(n) => n,
                None => split + scan.feed(b).unwrap().expect("end in second part"),
            };
            assert_eq!(&body[end..], b"NEXT", "split at {split}");
        }
    }

    #[test]
    fn malformed_chunking_is_refused() {
        assert!(
            ChunkedScan::default().feed(b"\r\n").is_err(),
            "a size needs a digit"
        );
        assert!(ChunkedScan::default()
            .feed(b"5\r\nhello\r\n;x=1\r\n")
            .is_err());
        assert!(ChunkedScan::default().feed(b"zz\r\n").is_err());
        assert!(ChunkedScan::default().feed(b"1\r\nab\r\n").is_err());
        assert!(ChunkedScan::default()
            .feed(b"fffffffffffffffffff\r\n")
            .is_err());
    }

    #[test]
    fn close_delimited_bodies_are_rechunked() {
        let mut f = Forward {
            framing: Framing::UntilClose,
            sent: 0,
            done: false,
            broken: false,
        };
        let mut out = Vec::new();
        f.take(&[b'x'; 26], &mut out);
        assert_eq!(out, [b"1a\r\n".as_slice(), &[b'x'; 26], b"\r\n"].concat());
    }

    #[test]
    fn split_target_agrees_with_http() {
        for t in ["/", "/api/x", "/a?b=1&c=%20", "/a?", "/a/b.c?d=e?f"] {
            assert!(split_target(t).is_some(), "{t}");
        }
        for c in 0x20u8..0x7f {
            let c = c as char;
            for t in [format!("/a{c}b"), format!("/a?x{c}y")] {
                if let Some((path, query)) = split_target(&t) {
                    let pq = http::uri::PathAndQuery::try_from(t.as_str())
                        .unwrap_or_else(|e| panic!("{t:?}: split, but http says {e}"));
                    assert_eq!((pq.path(), pq.query()), (path, query), "{t:?}");
                }
            }
        }
        assert!(split_target("/a#f").is_none());
        assert!(split_target("/a?b#f").is_none());
    }

    fn parse(raw: &[u8]) -> io::Result<Option<(ResponseHead, String)>> {
        let id = RequestId::Client(HeaderValue::from_static("rid"));
        let reply = Reply {
            request_id: &id,
            hsts: None,
            close: false,
        };
        let mut out = Vec::new();
        let head = parse_response(raw, false, &reply, &mut out)?;
        Ok(head.map(|h| (h, String::from_utf8(out).unwrap())))
    }

    #[test]
    fn response_heads() {
        let (h, out) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Request-Id: up\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Length(5)) && h.keep_alive);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\nx-request-id: rid\r\n\r\n"
        );
        let (h, out) = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(_)));
        assert!(!out.contains("Content-Length") && out.contains("transfer-encoding: chunked"));
        let (h, _) = parse(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive && matches!(h.framing, Framing::UntilClose));
        let (h, out) = parse(b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.status == 103 && out.is_empty());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
    }
}
