//! One upstream exchange for every path: take a pooled connection to the
//! server, write the request head and body, read the response head (1xx
//! skipped) within the upstream timeout, and the one retry rule.
//!
//! Both executors (the raw HTTP/1.1 one in `h1` and the hyper one in
//! `handler::general`) call `exchange`; they differ only in how they read
//! the client's body (`BodySource`) and relay the answer.
//!
//! Bodies up to `request_buffering` are received whole first (`buffer`).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use super::buffer::{buffer, Budget, Charge};
use super::client::Stream;
use super::upstream::Upstream;
use super::ProxyError;
use crate::clock::now_ms;
use crate::wire::{hex_len, spare};

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size for response heads.
const HEAD_READ: usize = 16 * 1024;
/// Largest piece of a streamed request body written at once.
const PIECE: usize = 64 * 1024;

/// A request body read from the client, piece by piece.
pub trait BodySource: Send {
    /// Appends the next payload bytes (not framed) to `out`. `Ok(false)`:
    /// the body has ended (nothing appended).
    fn poll_payload(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Result<bool, ProxyError>>;
}

/// How the request body reaches the upstream.
pub enum ReqBody<'a, S: ?Sized = NoSource> {
    /// Held whole in memory (or absent): it can be sent again.
    Whole(&'a [u8]),
    /// Streamed as it arrives: `sent` bytes were buffered first, the rest
    /// comes from `source`; `chunked` frames it for the upstream (a body of
    /// unknown length).
    Stream {
        sent: &'a [u8],
        source: &'a mut S,
        chunked: bool,
        /// Payload bytes the client may still send (`max_body_bytes`).
        limit: u64,
    },
}

/// The source of a `ReqBody::Whole`: there is nothing more to read.
pub struct NoSource;

impl BodySource for NoSource {
    fn poll_payload(
        &mut self,
        _: &mut Context<'_>,
        _: &mut Vec<u8>,
    ) -> Poll<Result<bool, ProxyError>> {
        Poll::Ready(Ok(false))
    }
}

impl<S: ?Sized> ReqBody<'_, S> {
    fn streamed(&self) -> bool {
        matches!(self, ReqBody::Stream { .. })
    }
}

/// A failure of the exchange.
#[derive(Debug)]
pub struct Failed {
    pub error: ProxyError,
    /// Part of the request body is still unread on the client connection:
    /// it must be closed after the answer.
    pub client_body_left: bool,
}

impl Failed {
    fn new(error: ProxyError, client_body_left: bool) -> Self {
        Failed {
            error,
            client_body_left,
        }
    }
}

/// The upstream's response head has arrived.
pub struct Exchanged {
    /// The server that answered (a connect failure moves to another).
    pub server: usize,
    pub stream: Stream,
    /// Bytes read: the final response head (`head_len` bytes) first, then
    /// whatever of the body came with it.
    pub buf: Vec<u8>,
    pub head_len: usize,
    pub status: u16,
}

/// Ends an upstream request head: the body's framing field, then the
/// blank line. `body`: its length, or `None` for chunked. A length goes in
/// canonical form (`0005` arrives as `5`); a bodiless request gets
/// `content-length: 0` only when the client declared one, or when its
/// method always carries a body.
pub fn frame_request(head: &mut Vec<u8>, method: &http::Method, body: Option<u64>, declared: bool) {
    match body {
        None => crate::wire::header(head, b"transfer-encoding", b"chunked"),
        Some(n) => {
            let bodied = matches!(
                *method,
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            );
            if n > 0 || declared || bodied {
                let mut b = itoa::Buffer::new();
                crate::wire::header(head, b"content-length", b.format(n).as_bytes());
            }
        }
    }
    head.extend_from_slice(b"\r\n");
}

/// The retry rule, the same on every path (RFC 9110 9.2.2): a request is
/// sent again, on a new connection, only when it failed on a reused pooled
/// connection (which the server may have closed meanwhile) and either no
/// byte of it was handed to that connection, or its method is idempotent
/// and its body is still in memory. A POST that was written is never sent
/// twice: the app may have performed it.
pub fn may_resend(reused: bool, written: bool, method: &http::Method, streamed: bool) -> bool {
    reused && (!written || (method.is_idempotent() && !streamed))
}

/// Sends one request to the upstream's server `first` and reads the final
/// response head. `head` is the whole request head, blank line included.
/// A server that cannot be connected to is marked failed and the request
/// goes to another healthy one: nothing of it was sent.
pub async fn exchange<S: BodySource + ?Sized>(
    up: &Upstream,
    first: usize,
    method: &http::Method,
    head: &[u8],
    mut body: ReqBody<'_, S>,
    upgrade: bool,
    timer: &mut HeadTimer,
) -> Result<Exchanged, Failed> {
    let (name, timeout) = (up.config.name.as_str(), up.config.timeout);
    let began = std::time::Instant::now();
    let mut index = first;
    // Servers that refused a connection (allocates only on failure).
    let mut tried: Vec<usize> = Vec::new();
    let mut fresh_only = false;
    loop {
        let Some(server) = up.servers().get(index) else {
            return Err(Failed::new(ProxyError::NoHealthyServer, body.streamed()));
        };
        let _in_flight = server.start();
        let taken = if fresh_only {
            server.pool.connect().await
        } else {
            server.pool.take().await
        };
        let mut taken = match taken {
            Ok(t) => t,
            Err(e) => {
                server.failed(&up.config);
                crate::metrics::upstream_error(name, server.label, "connect");
                tried.push(index);
                if let Some(next) = up.pick_other(&tried) {
                    tracing::debug!(upstream = name, server = %server.label, error = %e, "connect failed: trying another server");
                    index = next;
                    fresh_only = false;
                    continue;
                }
                return Err(Failed::new(
                    ProxyError::Connect {
                        upstream: name.to_string(),
                        source: e.into(),
                    },
                    body.streamed(),
                ));
            }
        };
        let streamed = body.streamed();
        // Head and a body held in memory go out in one write.
        let first: &[u8] = match &body {
            ReqBody::Whole(b) | ReqBody::Stream { sent: b, .. } => b,
        };
        let (write, written) = if first.is_empty() {
            write_counted(&mut taken.stream, head).await
        } else {
            let mut both = spare::take();
            both.extend_from_slice(head);
            if let ReqBody::Stream { chunked: true, .. } = body {
                chunk_frame(&mut both, first);
            } else {
                both.extend_from_slice(first);
            }
            let r = write_counted(&mut taken.stream, &both).await;
            spare::give(both);
            r
        };
        if let Err(e) = write {
            // Only a request of which no byte left is certainly unseen.
            if may_resend(taken.reused, written > 0, method, streamed) {
                fresh_only = true;
                continue;
            }
            server.failed(&up.config);
            crate::metrics::upstream_error(name, server.label, "reset");
            return Err(Failed::new(upstream_err(name, e), body.streamed()));
        }
        if let ReqBody::Stream {
            source,
            chunked,
            limit,
            sent,
        } = &mut body
        {
            let limit = limit.saturating_sub(sent.len() as u64);
            pump(
                &mut taken.stream,
                &mut **source,
                *chunked,
                limit,
                timeout,
                name,
            )
            .await?;
        }
        match read_head(&mut taken.stream, timeout, upgrade, timer).await {
            Ok((buf, head_len, status)) => {
                server.succeeded();
                up.latency.observe(began.elapsed().as_secs_f64());
                return Ok(Exchanged {
                    server: index,
                    stream: taken.stream,
                    buf,
                    head_len,
                    status,
                });
            }
            Err(HeadError::Closed) if may_resend(taken.reused, true, method, streamed) => {
                fresh_only = true;
            }
            Err(HeadError::Closed) => {
                server.failed(&up.config);
                crate::metrics::upstream_error(name, server.label, "reset");
                return Err(Failed::new(
                    upstream_err(
                        name,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before the response",
                        ),
                    ),
                    false,
                ));
            }
            Err(HeadError::Io(e)) => {
                server.failed(&up.config);
                let kind = if e.kind() == io::ErrorKind::InvalidData {
                    "bad_response"
                } else {
                    "reset"
                };
                crate::metrics::upstream_error(name, server.label, kind);
                return Err(Failed::new(upstream_err(name, e), false));
            }
            Err(HeadError::Timeout) => {
                server.failed(&up.config);
                crate::metrics::upstream_error(name, server.label, "timeout");
                return Err(Failed::new(
                    ProxyError::Timeout {
                        upstream: name.to_string(),
                        after: timeout,
                    },
                    false,
                ));
            }
        }
    }
}

/// `write_all`, also saying how many bytes were handed to the connection
/// before an error.
async fn write_counted(stream: &mut Stream, mut data: &[u8]) -> (io::Result<()>, usize) {
    let mut written = 0;
    while !data.is_empty() {
        match stream.write(data).await {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), written),
            Ok(n) => {
                written += n;
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), written),
        }
    }
    (Ok(()), written)
}

fn upstream_err(name: &str, e: io::Error) -> ProxyError {
    ProxyError::Upstream {
        upstream: name.to_string(),
        source: e.into(),
    }
}

fn chunk_frame(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    out.extend_from_slice(hex_len(data.len(), &mut hex));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Copies the rest of a streamed body to the upstream, each client read
/// and upstream write within `timeout` (a steady upload is never cut off,
/// a stalled one is).
async fn pump<S: BodySource + ?Sized>(
    stream: &mut Stream,
    source: &mut S,
    chunked: bool,
    mut limit: u64,
    timeout: Duration,
    name: &str,
) -> Result<(), Failed> {
    let mut piece = Vec::with_capacity(PIECE);
    let mut framed = Vec::new();
    loop {
        piece.clear();
        let read = tokio::time::timeout(timeout, poll_fn(|cx| source.poll_payload(cx, &mut piece)));
        let more = match read.await {
            Err(_) => {
                return Err(Failed::new(
                    ProxyError::ClientBodyTimeout { after: timeout },
                    true,
                ))
            }
            Ok(Err(e)) => return Err(Failed::new(e, true)),
            Ok(Ok(more)) => more,
        };
        let n = piece.len() as u64;
        if n > limit {
            return Err(Failed::new(ProxyError::BodyTooLarge, true));
        }
        limit -= n;
        let out: &[u8] = if chunked {
            framed.clear();
            chunk_frame(&mut framed, &piece);
            if !more {
                framed.extend_from_slice(b"0\r\n\r\n");
            }
            &framed
        } else {
            &piece
        };
        if !out.is_empty() {
            match tokio::time::timeout(timeout, stream.write_all(out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(Failed::new(
                        ProxyError::Upstream {
                            upstream: name.to_string(),
                            source: e.into(),
                        },
                        more,
                    ))
                }
                Err(_) => {
                    return Err(Failed::new(
                        ProxyError::Timeout {
                            upstream: name.to_string(),
                            after: timeout,
                        },
                        more,
                    ))
                }
            }
        }
        if !more {
            return Ok(());
        }
    }
}

enum HeadError {
    /// The connection ended before a byte of the response.
    Closed,
    Io(io::Error),
    Timeout,
}

/// Reads the upstream's final response head (1xx answers skipped; a 101
/// only when an upgrade was asked for) within `timeout`. Returns the
/// buffer (head first), the head's length and the status.
async fn read_head(
    stream: &mut Stream,
    timeout: Duration,
    upgrade: bool,
    timer: &mut HeadTimer,
) -> Result<(Vec<u8>, usize, u16), HeadError> {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let deadline = now_ms().saturating_add(timeout_ms);
    let mut buf = spare::take();
    let mut got_any = false;
    loop {
        if let Some(len) = head_end(&buf) {
            let status = status_of(&buf).ok_or_else(|| invalid("invalid response status line"))?;
            match status {
                101 if upgrade => return Ok((buf, len, status)),
                101 => {
                    return Err(invalid(
                        "upstream switched protocols without an upgrade request",
                    ))
                }
                100..=199 => {
                    buf.drain(..len);
                    continue;
                }
                _ => return Ok((buf, len, status)),
            }
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(invalid("response head too large"));
        }
        buf.reserve(HEAD_READ);
        match timer.within(deadline, stream.read_buf(&mut buf)).await {
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

fn invalid(what: &str) -> HeadError {
    HeadError::Io(io::Error::new(io::ErrorKind::InvalidData, what.to_string()))
}

/// The length of the head at the start of `buf`, once it is complete: the
/// first blank line, CRLF or bare LF (bare LF line ends are left to the
/// parser to judge). SIMD searches with finders built once: this runs on
/// every read of every response head.
fn head_end(buf: &[u8]) -> Option<usize> {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static CRLF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\r\n"));
    static LF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));
    match CRLF.find(buf).map(|i| i + 3) {
        // A bare-LF blank line can only come first inside that head.
        Some(end) => Some(LF.find(&buf[..end]).map_or(end, |i| i + 2)),
        None => LF.find(buf).map(|i| i + 2),
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn status_of(buf: &[u8]) -> Option<u16> {
    let code = buf.get(9..12)?;
    if !buf.starts_with(b"HTTP/1.") || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

/// The upstream timeouts of a connection's requests, on one timer: a
/// request only names its deadline, and the timer is moved when it fires
/// before that deadline (or is set past it), so a request costs no
/// timer-wheel insertion and removal.
#[derive(Default)]
pub struct HeadTimer {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the timer is set to fire (`now_ms` clock).
    armed: u64,
}

impl HeadTimer {
    /// `fut`'s output, or `None` once `deadline` (`now_ms` clock) passes.
    pub async fn within<F: Future>(&mut self, deadline: u64, fut: F) -> Option<F::Output> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn retry_rule() {
        // Nothing written on a reused connection: always safe.
        assert!(may_resend(true, false, &Method::POST, true));
        // Written: only idempotent methods with the body in memory.
        assert!(may_resend(true, true, &Method::GET, false));
        assert!(may_resend(true, true, &Method::PUT, false));
        assert!(!may_resend(true, true, &Method::PUT, true));
        assert!(!may_resend(true, true, &Method::POST, false));
        assert!(!may_resend(true, true, &Method::PATCH, false));
        assert!(!may_resend(
            true,
            true,
            &Method::from_bytes(b"LOCK").unwrap(),
            false
        ));
        // A fresh connection that failed is not retried.
        assert!(!may_resend(false, false, &Method::GET, false));
    }

    #[test]
    fn heads_are_found() {
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\n\nbody"), Some(17));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"HTTP/1.1 200 OK\nA: b\r\n\r\nx"), Some(24));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\n\nx"), Some(23));
        assert_eq!(status_of(b"HTTP/1.1 103 Early"), Some(103));
        assert_eq!(status_of(b"HTTP/2 200"), None);
    }
}
