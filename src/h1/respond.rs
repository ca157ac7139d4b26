//! Writing answers on the raw HTTP/1.1 path: the client's response head
//! from an upstream head (`parse_response`: end-to-end fields, the
//! gateway's own after them), the upstream body relayed by its framing
//! (`Forward`), and responses the gateway makes itself (`write_response`,
//! whole files with `sendfile(2)` on plain TCP).

use http::header::HeaderValue;
use http_body_util::BodyExt;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ClientIo;
use crate::handler::RequestId;
use crate::proxy::exchange::Exchanged;
use crate::proxy::pool::Pool;
use crate::response::ErrorNote;
use crate::static_files::SendFile;
use crate::wire::{
    body_facts, connection_named, header, hex_len, parse_response_head, spare, status_line,
    uninit_headers, BodyFacts, ChunkedScan, Name,
};

/// How every response on this connection is finished.
pub(super) struct Reply<'a> {
    pub request_id: &'a RequestId,
    pub hsts: Option<&'a HeaderValue>,
    /// Send `connection: close` and close after the response.
    pub close: bool,
}

/// The parts of an upstream response head the fast path acts on.
pub(super) struct ResponseHead {
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

/// Parses an upstream response head in `buf`; for a final answer, also
/// writes the client's response head into `out`: the status and the
/// end-to-end headers, then the gateway's own.
pub(super) fn parse_response(
    buf: &[u8],
    is_head: bool,
    reply: &Reply<'_>,
    out: &mut Vec<u8>,
) -> io::Result<Option<ResponseHead>> {
    let mut headers = uninit_headers();
    let Some((_, status, resp)) = parse_response_head(buf, &mut headers)? else {
        return Ok(None);
    };
    let mut head = ResponseHead {
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

/// The gateway's own response headers and the blank line.
fn finish_head(out: &mut Vec<u8>, reply: &Reply<'_>, has_date: bool) {
    header(out, b"x-request-id", reply.request_id.as_bytes());
    if let Some(h) = reply.hsts {
        header(out, b"strict-transport-security", h.as_bytes());
    }
    if !has_date {
        crate::clock::with_http_date(|d| header(out, b"date", d));
    }
    if reply.close {
        header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a response the gateway made itself (a static file or an
/// error), streaming its body; a whole large file on plain TCP goes out
/// with `sendfile(2)`. Returns the status, body bytes sent and the error
/// note for the access log. An error means the connection must close.
pub(super) async fn write_response<IO: ClientIo>(
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

/// A relayed answer.
pub(super) struct Done {
    pub status: u16,
    /// Body payload bytes sent to the client.
    pub bytes: u64,
    /// The client connection can carry another request.
    pub client_ok: bool,
}

/// Relays the upstream's answer to the client: head, then body by its
/// framing; the upstream connection goes back to its pool when the body
/// was read to its end and nothing followed it. An error means nothing
/// was sent to the client yet (a bad head or a bad first chunk line: the
/// caller answers 502; the upstream connection is dropped).
pub(super) async fn relay<IO: ClientIo>(
    io: &mut IO,
    got: Exchanged,
    is_head: bool,
    reply: &Reply<'_>,
    pool: &Arc<Pool>,
) -> io::Result<Done> {
    let Exchanged {
        mut stream,
        buf,
        head_len,
        ..
    } = got;
    let mut out = spare::take();
    let head = match parse_response(&buf[..head_len], is_head, reply, &mut out)? {
        Some(h) => h,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "incomplete response head",
            ))
        }
    };
    let mut reusable = head.keep_alive;
    let mut body = Forward {
        framing: head.framing,
        sent: 0,
        done: false,
        broken: false,
    };
    if body.take(&buf[head_len..], &mut out) {
        reusable = false;
    }
    spare::give(buf);
    if body.broken {
        spare::give(out);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid chunked body from upstream",
        ));
    }
    if io.write_all(&out).await.is_err() {
        return Ok(Done {
            status: head.status,
            bytes: body.sent,
            client_ok: false,
        });
    }
    spare::give(out);
    let mut client_ok = true;
    if !body.done {
        let mut chunk = Vec::with_capacity(BODY_READ);
        let mut framed = Vec::new();
        while !body.done {
            chunk.clear();
            match stream.read_buf(&mut chunk).await {
                Ok(0) => {
                    if matches!(body.framing, Framing::UntilClose) {
                        body.done = true;
                        if io.write_all(b"0\r\n\r\n").await.is_err() {
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
        pool.put(stream);
    }
    Ok(Done {
        status: head.status,
        bytes: body.sent,
        client_ok,
    })
}

/// Read size for upstream bodies.
const BODY_READ: usize = 64 * 1024;

/// How the response body is delimited.
pub(super) enum Framing {
    Empty,
    Length(u64),
    /// Passed through as it is, scanned for its end.
    Chunked(ChunkedScan),
    /// No length: read to the upstream's close, sent chunked.
    UntilClose,
}

/// Forwards body bytes to the client, noticing where the body ends.
pub(super) struct Forward {
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
                    self.sent = scan.payload;
                    self.done = true;
                    data.len() > end
                }
                Ok(None) => {
                    out.extend_from_slice(data);
                    self.sent = scan.payload;
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn signed_lengths_are_refused() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n").is_err());
    }
}
