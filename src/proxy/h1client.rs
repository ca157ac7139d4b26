//! The pooled HTTP/1.1 client for bodiless GET and HEAD requests on the
//! general path (HTTP/2 clients, and HTTP/1.1 connections handed over by
//! the fast path). It uses the fast path's upstream pool (`pool`): the
//! request head is written from the prepared header map, the response
//! body is decoded as it streams, and the connection goes back to the pool
//! once the body has been read to its end. No connection task, no
//! channels.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::client::Stream;
use super::pool::Pool;
use super::ProxyError;
use crate::h1::{ChunkedScan, Decoded};
use crate::response::{Body, BoxError};

const MAX_HEAD: usize = 64 * 1024;
const READ: usize = 16 * 1024;

/// Sends a bodiless request; `parts` are ready to go (Host, forwarding and
/// identity headers set, hop-by-hop headers removed).
pub async fn send(
    pool: &Arc<Pool>,
    parts: &http::request::Parts,
    timeout: Duration,
    name: &str,
) -> Result<Response<Body>, ProxyError> {
    let head = request_head(parts);
    let is_head = parts.method == http::Method::HEAD;
    let upstream_err = |e: io::Error| ProxyError::Upstream {
        upstream: name.to_string(),
        source: e.into(),
    };
    let mut fresh_only = false;
    loop {
        let taken = if fresh_only {
            pool.connect().await
        } else {
            pool.take().await
        };
        let mut taken = taken.map_err(|e| ProxyError::Connect {
            upstream: name.to_string(),
            source: e.into(),
        })?;
        // A reused connection the server closed meanwhile: the request is
        // in memory, so it is sent again on a new one.
        let retry = taken.reused;
        if let Err(e) = taken.stream.write_all(&head).await {
            if retry {
                fresh_only = true;
                continue;
            }
            return Err(upstream_err(e));
        }
        let read = tokio::time::timeout(timeout, read_head(&mut taken.stream, is_head)).await;
        match read {
            Err(_) => {
                return Err(ProxyError::Timeout {
                    upstream: name.to_string(),
                    after: timeout,
                })
            }
            Ok(Ok(Some((resp, buf, decoder, reusable)))) => {
                let mut body = PooledBody {
                    conn: Some(taken.stream),
                    buf,
                    decoder,
                    reusable,
                    pool: pool.clone(),
                };
                if matches!(body.decoder, Decoder::Done) {
                    // No body (HEAD, 204, 304, length 0): the connection
                    // is free now.
                    body.finish();
                }
                return Ok(resp.map(|()| {
                    use http_body_util::BodyExt;
                    body.boxed_unsync()
                }));
            }
            Ok(Ok(None)) if retry => fresh_only = true,
            Ok(Ok(None)) => {
                return Err(upstream_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response",
                )))
            }
            Ok(Err(e)) => return Err(upstream_err(e)),
        }
    }
}

fn request_head(parts: &http::request::Parts) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(pq.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// How the rest of the response body is delimited.
enum Decoder {
    Length(u64),
    Chunked(ChunkedScan),
    UntilClose,
    Done,
}

type Head = (Response<()>, BytesMut, Decoder, bool);

/// Reads the final response head. `None`: the connection ended before any
/// byte of a response.
async fn read_head(stream: &mut Stream, is_head: bool) -> io::Result<Option<Head>> {
    let mut buf = BytesMut::with_capacity(READ);
    loop {
        if !buf.is_empty() {
            if let Some((len, parsed)) = parse(&buf, is_head)? {
                let rest = buf.split_off(len);
                match parsed {
                    // 1xx: skip it and read on.
                    None => buf = rest,
                    Some((resp, decoder, reusable)) => {
                        return Ok(Some((resp, rest, decoder, reusable)))
                    }
                }
                continue;
            }
            if buf.len() >= MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
        }
        buf.reserve(READ);
        match stream.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside the response head",
                ))
            }
            Ok(_) => {}
            Err(e)
                if buf.is_empty()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
}

type Parsed = Option<(Response<()>, Decoder, bool)>;

/// A complete head: its length, and the response (`None` for a 1xx).
fn parse(buf: &[u8], is_head: bool) -> io::Result<Option<(usize, Parsed)>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut headers = crate::h1::uninit_headers();
    let Some((len, code, resp)) = crate::h1::parse_response_head(buf, &mut headers)? else {
        return Ok(None);
    };
    if (100..200).contains(&code) {
        if code == 101 {
            return Err(bad(
                "upstream switched protocols without an upgrade request".into(),
            ));
        }
        return Ok(Some((len, None)));
    }
    let status = StatusCode::from_u16(code).map_err(|e| bad(e.to_string()))?;
    let facts = crate::h1::body_facts(resp.version, resp.headers)?;
    let mut reusable = facts.keep_alive;
    let mut map = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|e| bad(e.to_string()))?;
        map.append(name, value);
    }
    let decoder = if is_head || code == 204 || code == 304 {
        Decoder::Done
    } else if facts.chunked {
        // Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
        map.remove(http::header::CONTENT_LENGTH);
        Decoder::Chunked(ChunkedScan::default())
    } else if let Some(n) = facts.content_length {
        if n == 0 {
            Decoder::Done
        } else {
            Decoder::Length(n)
        }
    } else {
        reusable = false;
        Decoder::UntilClose
    };
    let mut out = Response::new(());
    *out.status_mut() = status;
    *out.headers_mut() = map;
    Ok(Some((len, Some((out, decoder, reusable)))))
}

/// A response body read from a pooled upstream connection.
struct PooledBody {
    conn: Option<Stream>,
    buf: BytesMut,
    decoder: Decoder,
    reusable: bool,
    pool: Arc<Pool>,
}

impl PooledBody {
    /// The body has been read to its end: the connection goes back to the
    /// pool when nothing is left over and the server keeps it open.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let Some(conn) = self.conn.take() {
            if self.reusable && self.buf.is_empty() {
                self.pool.put(conn);
            }
        }
    }

    /// The next piece of payload from `buf`, if it holds one.
    fn next_piece(&mut self) -> Result<Option<Bytes>, BoxError> {
        match &mut self.decoder {
            Decoder::Done => Ok(None),
            Decoder::Length(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                *left -= n as u64;
                let piece = self.buf.split_to(n).freeze();
                if *left == 0 {
                    self.finish();
                }
                Ok(Some(piece))
            }
            Decoder::Chunked(scan) => match scan.decode(&mut self.buf) {
                Ok(Decoded::Data(piece)) => Ok(Some(piece)),
                Ok(Decoded::End) => {
                    self.finish();
                    Ok(None)
                }
                Ok(Decoded::NeedMore) => Ok(None),
                Err(()) => Err("invalid chunked body from upstream".into()),
            },
            Decoder::UntilClose => {
                if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(self.buf.split().freeze()))
                }
            }
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.next_piece() {
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Some(piece)) if !piece.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(piece))))
                }
                Ok(_) => {}
            }
            if matches!(this.decoder, Decoder::Done) {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // Read into a zeroed piece of `buf`'s spare room.
            let start = this.buf.len();
            this.buf.resize(start + READ, 0);
            let mut rb = ReadBuf::new(&mut this.buf[start..]);
            let polled = Pin::new(conn).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.buf.truncate(start + n);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Ok(())) if n == 0 => {
                    this.conn = None;
                    if matches!(this.decoder, Decoder::UntilClose) {
                        this.decoder = Decoder::Done;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(
                        "upstream closed the connection inside the body".into(),
                    )));
                }
                Poll::Ready(Ok(())) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.decoder {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}
