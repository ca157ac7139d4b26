//! The response side of an upstream exchange for the hyper executor: the
//! head the exchange read becomes a `Response` whose body is decoded as it
//! streams, and the connection goes back to its pool (the one idle pool
//! per server) once the body has been read to its end. No connection
//! task, no channels.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::client::Stream;
use super::exchange::Exchanged;
use super::pool::Pool;
use crate::body::{Body, BoxError};
use crate::wire::{ChunkedScan, Decoded};

const READ: usize = 16 * 1024;

/// The response the exchange read, as a hyper response whose body
/// streams from the upstream connection (returned to the pool at its end).
/// Hop-by-hop headers are removed; a malformed head or framing is an error.
pub fn response(got: Exchanged, is_head: bool, pool: &Arc<Pool>) -> io::Result<Response<Body>> {
    let Exchanged {
        stream,
        buf,
        head_len,
        ..
    } = got;
    let (mut resp, decoder, reusable) = parse(&buf[..head_len], is_head)?;
    crate::proxy::headers::remove_hop_by_hop(resp.headers_mut());
    let mut body = PooledBody {
        conn: Some(stream),
        buf: BytesMut::from(&buf[head_len..]),
        decoder,
        reusable,
        pool: pool.clone(),
    };
    crate::wire::spare::give(buf);
    // Check what came with the head now: a broken first chunk line is a
    // 502, not a response cut short.
    if let Decoder::Chunked(scan) = &body.decoder {
        let mut probe = scan.clone();
        if probe.feed(&body.buf).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "invalid chunked body from upstream",
            ));
        }
    }
    if matches!(body.decoder, Decoder::Done) {
        // No body (HEAD, 204, 304, length 0): the connection is free now.
        body.finish();
    }
    Ok(resp.map(|()| {
        use http_body_util::BodyExt;
        body.boxed_unsync()
    }))
}

/// A 101 answer: the response for the client and the upstream connection
/// (with any bytes that followed the head) to join with the client's.
pub fn switched(got: Exchanged) -> io::Result<(Response<Body>, Upgraded)> {
    let Exchanged {
        stream,
        buf,
        head_len,
        ..
    } = got;
    let mut headers = crate::wire::uninit_headers();
    let Some((_, _, parsed)) = crate::wire::parse_response_head(&buf[..head_len], &mut headers)?
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "incomplete head",
        ));
    };
    let mut resp = Response::new(crate::body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut upgrade = None;
    for h in parsed.headers.iter() {
        let name = crate::wire::Name::of(h.name.as_bytes());
        if name == crate::wire::Name::Upgrade {
            upgrade = HeaderValue::from_bytes(h.value).ok();
        }
        if name.is_hop_by_hop() {
            continue;
        }
        // Sec-WebSocket-Accept and the like answer the client's handshake.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    // SECURITY: the upstream must switch to what was asked (WebSocket)
    // and nothing else: an h2c tunnel would carry requests past every
    // check of the gateway.
    let Some(u) = upgrade.filter(|u| u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upstream switched to a protocol that was not asked for",
        ));
    };
    resp.headers_mut().insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    resp.headers_mut().insert(http::header::UPGRADE, u);
    let upgraded = Upgraded {
        stream,
        prefix: crate::wire::Replay::new(buf[head_len..].to_vec()),
    };
    Ok((resp, upgraded))
}

/// An upstream connection after a 101, bytes read with the head first.
pub struct Upgraded {
    stream: Stream,
    prefix: crate::wire::Replay,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.read_into(buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// How the rest of the response body is delimited.
enum Decoder {
    Length(u64),
    Chunked(ChunkedScan),
    UntilClose,
    Done,
}

/// Parses a complete final response head: the response, how its body is
/// delimited, and whether the connection can be reused after it.
fn parse(buf: &[u8], is_head: bool) -> io::Result<(Response<()>, Decoder, bool)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut headers = crate::wire::uninit_headers();
    let Some((_, code, resp)) = crate::wire::parse_response_head(buf, &mut headers)? else {
        return Err(bad("incomplete response head".into()));
    };
    let status = StatusCode::from_u16(code).map_err(|e| bad(e.to_string()))?;
    let facts = crate::wire::body_facts(resp.version, resp.headers)?;
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
    Ok((out, decoder, reusable))
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
