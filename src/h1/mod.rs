//! The raw HTTP/1.1 executor, where every HTTP/1.x connection starts.
//!
//! Each request head is read into one buffer and parsed in place
//! (httparse); `AppState::decide` decides what happens to it, as it does
//! for the hyper executor, and this module carries the decision out with
//! raw bytes: proxied requests on a pooled upstream connection in the
//! connection's own task (`proxy::exchange`, answers relayed by
//! `respond::relay`), static files (whole files with `sendfile(2)` on
//! plain TCP), token routes, health and every refusal. No header maps, no
//! per-request tasks or channels, no buffers kept while the connection
//! idles.
//!
//! What it declines, before deciding (so no decision is made twice):
//! HTTP/1.0, HTTP/2's preface, `Expect` uploads, upgrades,
//! CONNECT, absolute-form targets and bytes hyper would refuse in a target,
//! heads httparse refuses. The connection, with the bytes read so far, is
//! then handed to hyper and `handler::handle` for the rest of its life.
//!
//! SECURITY: a request's body is always consumed by its framing, also when
//! the gateway answers it itself: read and dropped up to `DISCARD_LIMIT`,
//! else the connection is closed after the answer. It is never parsed as
//! the next request.

mod body;
mod forward;
mod respond;

use bytes::Bytes;
use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::handler::{Action, AppState, ConnInfo, Decision, Framing, Head, RequestId, Step};
use crate::proxy::exchange::HeadTimer;
use crate::response::{self, GatewayError};
use crate::telemetry::{AccessRecord, RequestInfo};
use crate::watchdog::Activity;
use crate::wire::{spare, uninit_headers, Name, RequestError};
use body::Collected;
use respond::Reply;

/// Read size for request heads.
const HEAD_READ: usize = 4096;
/// A body of a request the gateway answers itself is read and dropped up
/// to this size; a longer one closes the connection after the answer.
const DISCARD_LIMIT: u64 = 64 * 1024;

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
    /// How long the rest of a discarded body may take.
    pub header_read_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// Serves requests on `io` until it closes or a request needs the general
/// path.
pub(crate) async fn serve<IO: ClientIo>(mut io: IO, env: Env<'_>) -> Outcome<IO> {
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
        // Read until the head is complete, then decide from the one parse.
        let state = env.app.load_full();
        let log = **env.access_log.load();
        let (step, head_len) = loop {
            if !buf.is_empty() {
                match parse_head(&state, env.conn, &buf, log) {
                    Parsed::Decided(step, n) => break (step, n),
                    Parsed::Partial => {}
                    Parsed::Declined { .. } | Parsed::Malformed => {
                        return Outcome::Handover { io, buffered: buf }
                    }
                }
            }
            if buf.len() >= env.max_header_bytes {
                // The head is over the limit, whatever its end would say.
                let id = RequestId::new(None);
                let resp =
                    response::error_response(&GatewayError::Request(RequestError::HeadTooLarge));
                let reply = Reply {
                    request_id: &id,
                    hsts: None,
                    close: true,
                };
                let _ = respond::write_response(&mut io, resp, &reply, false).await;
                let _ = io.shutdown().await;
                return Outcome::Closed;
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
        let (step, method, request, info) = step;
        let began = Instant::now();
        // Boxed: a token verification's state is large.
        let mut decision = match step {
            Step::Ready(d) => d,
            step @ Step::Verify(_) => Box::pin(step.resolve()).await,
        };
        env.activity.request_started();
        let start = log.then_some(began);
        let request_id = log.then(|| decision.request_id.as_str().to_string());
        let draining = *env.shutdown.borrow();
        let route = decision.route;
        let identity = decision.identity.take();
        // Boxed: the request's state is large, and an idle connection
        // should not carry it.
        let served = Box::pin(execute(
            &mut io, &state, &env, decision, &method, request, &mut buf, head_len, draining, log,
            &mut timer,
        ))
        .await;
        crate::handler::observe(route, &method, served.status, began);
        if let (Some(start), Some(request_id)) = (start, request_id) {
            AccessRecord {
                route,
                peer: env.conn.peer,
                method,
                info,
                status: served.status,
                request_id,
                start,
                upstream_time: served.upstream_time,
                upstream: served.upstream,
                user_id: identity.map(|i| i.user_id().to_string()),
                tls: env.conn.tls_version,
                error: served.error,
            }
            .log(served.bytes);
        } else {
            crate::telemetry::failed(&method, served.status, served.error.as_deref());
        }
        env.activity.request_finished();
        if !served.keep {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
        // Pipelined bytes of the next request, if any: its head is under
        // way, so the header timeout runs from now.
        if !buf.is_empty() {
            env.activity.head_buffered();
        }
    }
}

/// What the bytes read so far make of a request head.
// Returned and taken apart at once, as `decide`'s `Option<Decided>` is:
// boxing the decision would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed<'s> {
    /// A complete head, decided; its length.
    Decided(Decided<'s>, usize),
    /// Not complete yet.
    Partial,
    /// A complete head of `head_len` bytes declined before deciding (see
    /// the module doc): for the general path.
    Declined { head_len: usize },
    /// Malformed, too many headers, HTTP/2 preface: hyper answers (or
    /// speaks HTTP/2).
    Malformed,
}

/// Parses the head at the start of `buf` in place and decides on it: the
/// one parse and decision `serve` makes (the fuzz targets call it too).
#[inline]
pub(crate) fn parse_head<'s>(
    state: &'s AppState,
    conn: &ConnInfo,
    buf: &[u8],
    log: bool,
) -> Parsed<'s> {
    let mut headers = uninit_headers();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => match decide(state, conn, &req, n, log) {
            Some(step) => Parsed::Decided(step, n),
            None => Parsed::Declined { head_len: n },
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Malformed,
    }
}

pub(crate) type Decided<'s> = (
    Step<'s>,
    http::Method,
    Option<http::Request<()>>,
    RequestInfo,
);

/// Decides on a parsed head. `None`: declined, for the general path (see
/// the module doc); nothing has been decided then.
fn decide<'s>(
    state: &'s AppState,
    conn: &ConnInfo,
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    log: bool,
) -> Option<Decided<'s>> {
    if req.version != Some(1) {
        return None;
    }
    let method = req.method?;
    let target = req.path?;
    if method == "CONNECT" || !target.starts_with('/') {
        return None;
    }
    let (path, query) = split_target(target)?;
    for h in req.headers.iter() {
        if matches!(Name::of(h.name.as_bytes()), Name::Expect | Name::Upgrade) {
            return None;
        }
    }
    // Standard methods are held inline: no allocation.
    let method = http::Method::from_bytes(method.as_bytes()).ok()?;
    let headers = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let step = state.decide(
        conn,
        Head {
            method: &method,
            version: http::Version::HTTP_11,
            path,
            query,
            authority: None,
            headers,
            head_len,
        },
    );
    // Static files and token routes take an `http::Request`: built now,
    // while the parsed fields are at hand.
    let needs_request = match &step {
        Step::Ready(d) => matches!(d.action, Action::Static { .. } | Action::Tokens { .. }),
        Step::Verify(p) => p.is_static(),
    };
    let request = if needs_request {
        let mut r = http::Request::new(());
        *r.method_mut() = method.clone();
        *r.uri_mut() = http::Uri::try_from(target).ok()?;
        let h = r.headers_mut();
        for header in req.headers.iter() {
            h.append(
                http::HeaderName::from_bytes(header.name.as_bytes()).ok()?,
                http::HeaderValue::from_bytes(header.value).ok()?,
            );
        }
        Some(r)
    } else {
        None
    };
    let info = if log {
        RequestInfo::gather(
            target,
            http::Version::HTTP_11,
            conn.peer.ip(),
            None,
            req.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
            &state.config.server.trusted_proxies,
        )
    } else {
        RequestInfo::default()
    };
    Some((step, method, request, info))
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

/// How a request was served, for the access log and the connection.
struct Served {
    status: u16,
    bytes: u64,
    error: Option<String>,
    upstream_time: Option<Duration>,
    /// The upstream server that answered.
    upstream: Option<&'static str>,
    /// The connection can carry another request.
    keep: bool,
}

/// Carries a decision out. On return `buf` holds only bytes of the
/// requests after this one.
#[allow(clippy::too_many_arguments)]
async fn execute<IO: ClientIo>(
    io: &mut IO,
    state: &AppState,
    env: &Env<'_>,
    decision: Decision,
    method: &http::Method,
    request: Option<http::Request<()>>,
    buf: &mut Vec<u8>,
    head_len: usize,
    draining: bool,
    log: bool,
    timer: &mut HeadTimer,
) -> Served {
    let Decision {
        action,
        request_id,
        close,
        framing,
        path,
        route: _,
        identity: _,
    } = decision;
    buf.drain(..head_len);
    let reply = Reply {
        request_id: &request_id,
        hsts: if env.conn.tls {
            state.hsts.as_ref()
        } else {
            None
        },
        close: close || draining,
    };
    let is_head = *method == http::Method::HEAD;
    match action {
        Action::Proxy(plan) => {
            let served = forward::proxy(
                io,
                &plan.upstream,
                plan.server,
                plan.head,
                method,
                framing,
                log,
                buf,
                reply,
                state,
                timer,
            )
            .await;
            served
        }
        Action::Answer(resp) => {
            let kept = discard_body(io, buf, framing, env.header_read_timeout).await;
            local(io, *resp, reply, is_head, kept).await
        }
        Action::Static { route } => {
            let kept = discard_body(io, buf, framing, env.header_read_timeout).await;
            let mut req = request.unwrap_or_default();
            if let Some(p) = &path {
                let pq = match req.uri().query() {
                    Some(q) => format!("{p}?{q}"),
                    None => p.clone(),
                };
                if let Ok(uri) = http::Uri::try_from(pq) {
                    *req.uri_mut() = uri;
                }
            }
            // Boxed, as every rarer branch here: the future of a proxied
            // request (the common one) stays small enough for the
            // allocator's fast path.
            let resp = Box::pin(state.serve_static(route, req)).await;
            return local(io, resp, reply, is_head, kept).await;
        }
        Action::Tokens { endpoint, client } => {
            let limit = state.token_body_limit();
            let timeout = env.header_read_timeout;
            let (body, kept) = match Box::pin(body::collect(io, buf, framing, limit, timeout)).await
            {
                Collected::Whole(b) => (Some(Bytes::from(b)), true),
                Collected::TooLong => (None, false),
                Collected::Failed(e) => {
                    let resp = response::error_response(&GatewayError::from(e));
                    return local(io, resp, reply, is_head, false).await;
                }
            };
            let (parts, ()) = request.unwrap_or_default().into_parts();
            let req = http::Request::from_parts(parts, body);
            let resp = Box::pin(state.token_route(endpoint, req, client)).await;
            local(io, resp, reply, is_head, kept).await
        }
    }
}

/// Writes a response the gateway made. `kept`: the request's body was
/// consumed, so the connection can carry another request.
async fn local<IO: ClientIo>(
    io: &mut IO,
    resp: http::Response<crate::response::Body>,
    reply: Reply<'_>,
    is_head: bool,
    kept: bool,
) -> Served {
    let reply = Reply {
        close: reply.close || !kept,
        ..reply
    };
    // A client that went away is logged with the status it was answered
    // with, as on the hyper path.
    let status = resp.status().as_u16();
    match Box::pin(respond::write_response(io, resp, &reply, is_head)).await {
        Ok((status, bytes, error)) => Served {
            status,
            bytes,
            error,
            upstream_time: None,
            upstream: None,
            keep: !reply.close,
        },
        Err(_) => Served {
            status,
            bytes: 0,
            error: None,
            upstream_time: None,
            upstream: None,
            keep: false,
        },
    }
}

/// Consumes the body of a request the gateway answers itself: read and
/// dropped when it is at most `DISCARD_LIMIT`. `false`: it was not
/// consumed (too long, broken, or it did not arrive in time), so the
/// connection must close after the answer.
async fn discard_body<IO: ClientIo>(
    io: &mut IO,
    buf: &mut Vec<u8>,
    framing: Framing,
    timeout: Duration,
) -> bool {
    if framing == Framing::None {
        return true;
    }
    matches!(
        Box::pin(body::collect(io, buf, framing, DISCARD_LIMIT, timeout)).await,
        Collected::Whole(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
