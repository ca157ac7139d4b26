//! The HTTP/1 wire codec every path shares: header-name classification,
//! head parsing into uninitialised slots, the framing facts of a message
//! (Content-Length, chunked, keep-alive), the chunked-body scanner, and
//! per-thread spare buffers. No I/O and no policy: `proxy` and the
//! raw HTTP/1.1 executor (`h1`) build on it; it builds on nothing.

mod chunked;
mod names;

pub(crate) use chunked::{ChunkedScan, Decoded};
pub use names::{Name, HOP_BY_HOP};

use std::io;

/// What is wrong with a request's head or body framing: the client's
/// fault, answered 400 (431 for the size) and the connection closed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request head exceeds max_header_bytes")]
    HeadTooLarge,
    #[error("invalid or conflicting content-length")]
    BadContentLength,
    #[error("transfer-encoding with content-length, or not chunked last")]
    BadTransferEncoding,
    #[error("HTTP/1.1 request without host")]
    MissingHost,
    #[error("more than one host header")]
    MultipleHosts,
    #[error("malformed chunked request body")]
    BadChunkedBody,
    #[error("request body ended early")]
    BodyEndedEarly,
}

/// Header fields per message parsed (hyper's limit too).
pub const MAX_HEADERS: usize = 100;

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
            // httparse takes any three digits; a status is 100-999 (RFC
            // 9110 15), and one outside would be relayed as a status line
            // no client reads alike.
            let status = resp
                .code
                .filter(|c| (100..=999).contains(c))
                .ok_or_else(|| bad("no valid status".into()))?;
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
        keep_alive: false,
        has_date: false,
        has_connection: false,
    };
    // Decided after every header is seen: the answer must not depend on
    // their order (a `Connection: keep-alive` after a Transfer-Encoding
    // that forces a close once re-opened the connection).
    let (mut transfer_encoding, mut close, mut keep_alive) = (false, false, false);
    for h in headers {
        match Name::of(h.name.as_bytes()) {
            Name::ContentLength => {
                // A response's length must be canonical: a peer that sends
                // `+5` or `0005` is read differently by someone.
                let v = parse_length(h.value)
                    .filter(|_| {
                        let t = h.value.trim_ascii();
                        t.len() == 1 || t.first() != Some(&b'0')
                    })
                    .ok_or_else(|| bad("invalid content-length"))?;
                if facts.content_length.is_some_and(|c| c != v) {
                    return Err(bad("conflicting content-length"));
                }
                facts.content_length = Some(v);
            }
            Name::TransferEncoding => {
                // Several fields are one list: the last one's last coding
                // is the final coding.
                transfer_encoding = true;
                facts.chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
            }
            Name::Connection => {
                facts.has_connection |= names_headers(h.value);
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
            Name::Date => facts.has_date = true,
            _ => {}
        }
    }
    facts.keep_alive = !close
        && match version {
            Some(1) => true,
            Some(0) => keep_alive,
            _ => false,
        }
        // Read until close when chunked is not the final coding (RFC 9112
        // 6.3); an HTTP/1.0 message with a Transfer-Encoding has faulty
        // framing and the connection is closed after it (6.1).
        && !(transfer_encoding && (!facts.chunked || version != Some(1)));
    if facts.chunked {
        facts.content_length = None;
    }
    Ok(facts)
}

/// Bytes read ahead of a hand-over (a connection's head, an upstream's
/// first bytes after a 101), given back to the reader first.
#[derive(Debug, Default)]
pub struct Replay {
    bytes: Vec<u8>,
    at: usize,
}

impl Replay {
    pub fn new(bytes: Vec<u8>) -> Self {
        Replay { bytes, at: 0 }
    }

    /// Copies what is left into `buf`; false when nothing was left. The
    /// bytes are freed once all are given back.
    pub fn read_into(&mut self, buf: &mut tokio::io::ReadBuf<'_>) -> bool {
        if self.at >= self.bytes.len() {
            return false;
        }
        let n = (self.bytes.len() - self.at).min(buf.remaining());
        buf.put_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        if self.at == self.bytes.len() {
            *self = Replay::default();
        }
        true
    }
}

/// A Content-Length value: one or more ASCII digits and nothing else (no
/// sign, no spaces inside, no list), as RFC 9110 8.6 has it. Rust's own
/// integer parse takes a leading `+`, which no peer may send.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether a request's Transfer-Encoding value ends in `chunked`, read as
/// hyper reads it (`is_chunked_`), so both executors frame a request
/// alike: header text (visible ASCII, space, tab) whose last
/// comma-separated element is `chunked`. An empty last element
/// (`chunked,`) or obs-text is not, and such a request is refused.
pub(crate) fn chunked_last(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        && v.rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
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

pub(crate) fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(code.format(status).as_bytes());
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("<none>");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[inline]
pub(crate) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
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

pub(crate) fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_status_is_100_to_999() {
        for (head, ok) in [
            (&b"HTTP/1.1 200 OK\r\n\r\n"[..], true),
            (b"HTTP/1.1 100 Continue\r\n\r\n", true),
            (b"HTTP/1.1 999 X\r\n\r\n", true),
            // Found by the h1_response_head fuzz target: httparse reads
            // `020` as status 20.
            (b"HTTP/1.1 020 nsf\r\n\r\n", false),
            (b"HTTP/1.1 099 X\r\n\r\n", false),
            (b"HTTP/1.1 000 X\r\n\r\n", false),
        ] {
            let mut headers = uninit_headers();
            let got = parse_response_head(head, &mut headers);
            assert_eq!(got.is_ok(), ok, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn response_keep_alive_does_not_depend_on_header_order() {
        let facts = |head: &[u8]| {
            let mut headers = uninit_headers();
            let (_, _, resp) = parse_response_head(head, &mut headers).unwrap().unwrap();
            body_facts(resp.version, resp.headers).unwrap()
        };
        // Found by the h1_response_head fuzz target.
        for head in [
            &b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunke)d\r\nConnection: keep-alive\r\n\r\n"[..],
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\n",
        ] {
            let f = facts(head);
            assert!(!f.keep_alive, "{:?}", String::from_utf8_lossy(head));
        }
        for head in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
        ] {
            let f = facts(head);
            assert!(f.keep_alive, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn request_chunked_last_as_hyper_reads_it() {
        for v in [
            &b"chunked"[..],
            b"CHUNKED",
            b"gzip, chunked",
            b"gzip,chunked ",
            b"gzip ,\tchunked",
        ] {
            assert!(chunked_last(v), "{:?}", String::from_utf8_lossy(v));
        }
        // Found by the h1_differential fuzz target: obs-text, and an
        // empty last element, which hyper does not read as chunked.
        for v in [
            &b"g\xffzip, chunked"[..],
            b"chunked,",
            b"chunked, ",
            b"chunked, gzip",
            b"",
            b"chunk",
            b"chunked\x7f",
        ] {
            assert!(!chunked_last(v), "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"5"), Some(5));
        assert_eq!(parse_length(b"0005"), Some(5));
        assert_eq!(parse_length(b" 12 "), Some(12));
        for bad in [
            &b"+5"[..],
            b"-5",
            b"",
            b"5 5",
            b"5,5",
            b"0x5",
            b"99999999999999999999999",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
