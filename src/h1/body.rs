//! Request bodies on the raw HTTP/1.1 path, read by their framing: a
//! Content-Length body (`LengthBody`) or a chunked one decoded with the
//! strict scanner of `wire` (`ChunkedBody`: sizes of 1 to 16 hex digits,
//! CRLF only, trailers dropped). Bytes read past a chunked body's end
//! belong to the next request and go back to the connection's buffer.

use bytes::BytesMut;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::ReadBuf;

use super::ClientIo;
use crate::handler::Framing;
use crate::proxy::exchange::BodySource;
use crate::proxy::ProxyError;
use crate::wire::{ChunkedScan, Decoded, RequestError};

/// Read size for request bodies.
const BODY_READ: usize = 64 * 1024;

/// A request body being read from the client connection.
pub(super) enum ClientBody<'a, IO> {
    Length {
        io: &'a mut IO,
        /// Bytes of it still to read.
        left: u64,
    },
    Chunked {
        io: &'a mut IO,
        /// Read, not yet decoded (starts with what followed the head).
        pending: BytesMut,
        scan: ChunkedScan,
        done: bool,
    },
}

impl<'a, IO: ClientIo> ClientBody<'a, IO> {
    /// The body after the head; `buf` holds the bytes read after the head
    /// (a Content-Length body's buffered part was taken off by the
    /// caller; a chunked body takes all of `buf` and gives back what
    /// follows it with `finish`).
    pub(super) fn new(io: &'a mut IO, framing: Framing, left: u64, buf: &mut Vec<u8>) -> Self {
        match framing {
            Framing::Chunked => {
                let pending = BytesMut::from(&buf[..]);
                buf.clear();
                ClientBody::Chunked {
                    io,
                    pending,
                    scan: ChunkedScan::default(),
                    done: false,
                }
            }
            Framing::Length(_) | Framing::None => ClientBody::Length { io, left },
        }
    }

    /// Gives the bytes read past the body's end back to `buf`.
    pub(super) fn finish(self, buf: &mut Vec<u8>) {
        if let ClientBody::Chunked { pending, .. } = self {
            buf.extend_from_slice(&pending);
        }
    }
}

impl<IO: ClientIo> BodySource for ClientBody<'_, IO> {
    fn poll_payload(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Result<bool, ProxyError>> {
        let early = || ProxyError::Request(RequestError::BodyEndedEarly);
        match self {
            ClientBody::Length { io, left } => {
                if *left == 0 {
                    return Poll::Ready(Ok(false));
                }
                let want = usize::try_from(*left).unwrap_or(BODY_READ).min(BODY_READ);
                let start = out.len();
                out.resize(start + want, 0);
                let (polled, n) = poll_read_slice(&mut **io, cx, &mut out[start..]);
                out.truncate(start + n);
                match polled.map_ok(|()| n) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Err(early())),
                    Poll::Ready(Ok(n)) => {
                        *left -= n as u64;
                        Poll::Ready(Ok(true))
                    }
                }
            }
            ClientBody::Chunked {
                io,
                pending,
                scan,
                done,
            } => loop {
                if *done {
                    return Poll::Ready(Ok(false));
                }
                match scan.decode(pending) {
                    Err(()) => {
                        return Poll::Ready(Err(ProxyError::Request(RequestError::BadChunkedBody)))
                    }
                    Ok(Decoded::Data(piece)) => {
                        out.extend_from_slice(&piece);
                        return Poll::Ready(Ok(true));
                    }
                    Ok(Decoded::End) => {
                        *done = true;
                        return Poll::Ready(Ok(false));
                    }
                    Ok(Decoded::NeedMore) => {}
                }
                let start = pending.len();
                pending.resize(start + BODY_READ, 0);
                let (polled, n) = poll_read_slice(&mut **io, cx, &mut pending[start..]);
                pending.truncate(start + n);
                match polled.map_ok(|()| n) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(early())),
                    Poll::Ready(Ok(_)) => {}
                }
            },
        }
    }
}

/// One read into `dst`: the poll and how many bytes it filled.
fn poll_read_slice<IO: ClientIo>(
    io: &mut IO,
    cx: &mut Context<'_>,
    dst: &mut [u8],
) -> (Poll<std::io::Result<()>>, usize) {
    let mut rb = ReadBuf::new(dst);
    let polled = Pin::new(io).poll_read(cx, &mut rb);
    let n = rb.filled().len();
    (polled, n)
}

/// A body read whole, or why not.
pub(super) enum Collected {
    Whole(Vec<u8>),
    /// Longer than the limit: not read (Content-Length) or read in part
    /// (chunked); either way the connection must close after the answer.
    TooLong,
    /// It broke off, stalled for `timeout`, or its framing is malformed.
    Failed(ProxyError),
}

/// Reads a whole body of at most `limit` payload bytes within `timeout`
/// (all of it); `buf` holds the bytes read after the head and keeps those
/// after the body.
pub(super) async fn collect<IO: ClientIo>(
    io: &mut IO,
    buf: &mut Vec<u8>,
    framing: Framing,
    limit: u64,
    timeout: Duration,
) -> Collected {
    let mut out = Vec::new();
    let mut body = match framing {
        Framing::None => return Collected::Whole(out),
        Framing::Length(n) if n > limit => return Collected::TooLong,
        Framing::Length(n) => {
            let here = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
            out.extend(buf.drain(..here));
            ClientBody::new(io, framing, n - here as u64, buf)
        }
        Framing::Chunked => ClientBody::new(io, framing, 0, buf),
    };
    // SECURITY: one deadline for the whole body (nginx's lingering_time),
    // not one per read: a body dripped a byte at a time cannot hold the
    // connection and its answer back.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, poll_fn(|cx| body.poll_payload(cx, &mut out)));
        match read.await {
            Err(_) => return Collected::Failed(ProxyError::ClientBodyTimeout { after: timeout }),
            Ok(Err(e)) => return Collected::Failed(e),
            Ok(Ok(false)) => break,
            Ok(Ok(true)) if out.len() as u64 > limit => return Collected::TooLong,
            Ok(Ok(true)) => {}
        }
    }
    body.finish(buf);
    Collected::Whole(out)
}
