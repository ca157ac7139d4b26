//! The HTTP/1 wire codec every path shares: header-name classification,
//! head parsing into uninitialised slots, the framing facts of a message
//! (Content-Length, chunked, keep-alive), the chunked-body scanner, and
//! per-thread spare buffers. No I/O and no policy: `proxy` and the
//! raw HTTP/1.1 executor (`h1`) build on it; it builds on nothing.

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
                let v = parse_length(h.value).ok_or_else(|| bad("invalid content-length"))?;
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

/// A Content-Length value: one or more ASCII digits and nothing else (no
/// sign, no spaces inside, no list), as RFC 9110 8.6 has it. Rust's own
/// integer parse takes a leading `+`, which no peer may send.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
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

pub(crate) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
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

/// Finds the end of a chunked body without decoding it (`feed`), or
/// decodes it (`decode`).
#[derive(Default, Clone)]
pub(crate) struct ChunkedScan {
    state: Chunk,
    size: u64,
    /// Hex digits of the size line so far: at least one (RFC 9112 7.1),
    /// at most 16 (a longer size line is refused, leading zeros or not).
    digits: u8,
    /// Payload bytes seen (chunk data, no framing): what the access log
    /// counts.
    pub payload: u64,
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
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.size >> 59 != 0 {
                            return Err(());
                        }
                        self.digits += 1;
                        if self.digits > 16 {
                            return Err(());
                        }
                        let d = (b as char).to_digit(16).ok_or(())?;
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Chunk::Ext,
                    b'\r' if self.digits > 0 => self.state = Chunk::SizeLf,
                    _ => return Err(()),
                },
                Chunk::Ext => match b {
                    b'\r' => self.state = Chunk::SizeLf,
                    // A bare LF (or any control byte) inside a chunk line
                    // is where parsers disagree: refused.
                    b'\t' => {}
                    0..=0x1f | 0x7f => return Err(()),
                    _ => {}
                },
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
                    self.payload += n as u64;
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
                    self.digits = 0;
                }
                Chunk::TrailerStart => {
                    self.state = if b == b'\r' {
                        Chunk::EndLf
                    } else {
                        Chunk::TrailerLine
                    };
                }
                Chunk::TrailerLine => match b {
                    b'\r' => self.state = Chunk::TrailerLf,
                    b'\t' => {}
                    0..=0x1f | 0x7f => return Err(()),
                    _ => {}
                },
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

/// The hop-by-hop headers of RFC 9110 7.6.1 (and Proxy-Connection), which
/// every path removes in both directions.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Header names the request path and the proxy act on, told apart with at
/// most two comparisons per header (by length first), so that a request or
/// response head is classified in one pass.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    /// Keep-Alive, TE, Trailer, Proxy-Connection, Proxy-Authenticate,
    /// Proxy-Authorization: the other names of `HOP_BY_HOP`.
    OtherHopByHop,
    Expect,
    Authorization,
    Origin,
    AccessControlRequestMethod,
    XRequestId,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XRealIp,
    Date,
    StrictTransportSecurity,
    Other,
}

impl Name {
    /// Case-insensitive, as header names are. `name` is a parsed header
    /// name (token characters only).
    pub fn of(name: &[u8]) -> Name {
        let is = |s: &str| same_lower(name, s.as_bytes());
        let pick = |a: (&str, Name), b: (&str, Name)| {
            if is(a.0) {
                a.1
            } else if is(b.0) {
                b.1
            } else {
                Name::Other
            }
        };
        let none = ("", Name::Other);
        match name.len() {
            2 => pick(("te", Name::OtherHopByHop), none),
            4 => pick(("host", Name::Host), ("date", Name::Date)),
            6 => pick(("origin", Name::Origin), ("expect", Name::Expect)),
            7 => pick(("upgrade", Name::Upgrade), ("trailer", Name::OtherHopByHop)),
            9 => pick(("x-real-ip", Name::XRealIp), none),
            10 => pick(
                ("connection", Name::Connection),
                ("keep-alive", Name::OtherHopByHop),
            ),
            12 => pick(("x-request-id", Name::XRequestId), none),
            13 => pick(("authorization", Name::Authorization), none),
            14 => pick(("content-length", Name::ContentLength), none),
            15 => pick(("x-forwarded-for", Name::XForwardedFor), none),
            16 => pick(
                ("x-forwarded-host", Name::XForwardedHost),
                ("proxy-connection", Name::OtherHopByHop),
            ),
            17 => pick(
                ("transfer-encoding", Name::TransferEncoding),
                ("x-forwarded-proto", Name::XForwardedProto),
            ),
            18 => pick(("proxy-authenticate", Name::OtherHopByHop), none),
            19 => pick(("proxy-authorization", Name::OtherHopByHop), none),
            25 => pick(
                ("strict-transport-security", Name::StrictTransportSecurity),
                none,
            ),
            29 => pick(
                (
                    "access-control-request-method",
                    Name::AccessControlRequestMethod,
                ),
                none,
            ),
            _ => Name::Other,
        }
    }

    /// Like `of`, with `_` read as `-`: `Content_Length` is
    /// `ContentLength` here. Some servers (CGI/WSGI) fold `_` and `-` to
    /// the same variable, so such a spelling must never slip past a rule
    /// made for the real name.
    pub fn of_folded(name: &[u8]) -> Name {
        if !name.contains(&b'_') {
            return Name::of(name);
        }
        let mut buf = [0u8; 32];
        let Some(dst) = buf.get_mut(..name.len()) else {
            return Name::Other;
        };
        for (d, s) in dst.iter_mut().zip(name) {
            *d = if *s == b'_' { b'-' } else { *s };
        }
        Name::of(dst)
    }

    /// One of `HOP_BY_HOP`.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection | Name::TransferEncoding | Name::Upgrade | Name::OtherHopByHop
        )
    }

    /// Set by the gateway on the upstream request, whatever the client sent
    /// (X-Forwarded-*, X-Real-IP from a trusted proxy are kept).
    pub fn is_forwarding(self) -> bool {
        matches!(
            self,
            Name::Host
                | Name::XForwardedFor
                | Name::XForwardedProto
                | Name::XForwardedHost
                | Name::XRealIp
                | Name::XRequestId
        )
    }
}

/// Whether header name `name` is `lower` (lowercase letters and '-') in
/// any case, eight bytes at a time. ORing 0x20 lowercases a letter and
/// keeps '-'; the only other bytes it maps onto those (CR onto '-') are
/// not token characters.
fn same_lower(name: &[u8], lower: &[u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    let mut a = name.chunks_exact(8);
    let mut b = lower.chunks_exact(8);
    for (x, y) in a.by_ref().zip(b.by_ref()) {
        let (Ok(x), Ok(y)) = (<[u8; 8]>::try_from(x), <[u8; 8]>::try_from(y)) else {
            return false;
        };
        if u64::from_ne_bytes(x) | 0x2020_2020_2020_2020 != u64::from_ne_bytes(y) {
            return false;
        }
    }
    a.remainder()
        .iter()
        .zip(b.remainder())
        .all(|(x, y)| x | 0x20 == *y)
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
        for bad in [
            &b"\r\n"[..],
            b"5\r\nhello\r\n;x=1\r\n",
            b"zz\r\n",
            b"1\r\nab\r\n",
            b"fffffffffffffffffff\r\n",
            b"000000000000000005\r\n",
            b" 5\r\n",
            b"0x5\r\n",
            b"-5\r\n",
            b"5\nhello\r\n",
            b"5\r\nhello\n",
            b"5;a\nb\r\n",
            b"0\r\nx: 1\nz\r\n",
        ] {
            assert!(
                ChunkedScan::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
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

    #[test]
    fn names_are_classified_in_any_case() {
        for n in HOP_BY_HOP {
            assert!(Name::of(n.as_bytes()).is_hop_by_hop(), "{n}");
            assert!(Name::of(n.to_uppercase().as_bytes()).is_hop_by_hop(), "{n}");
            let folded = n.replace('-', "_");
            assert!(
                Name::of_folded(folded.as_bytes()).is_hop_by_hop(),
                "{folded}"
            );
        }
        assert_eq!(Name::of_folded(b"Content_Length"), Name::ContentLength);
        assert_eq!(Name::of_folded(b"X_Forwarded_For"), Name::XForwardedFor);
        assert_eq!(Name::of_folded(b"Content_Type"), Name::Other);
        let named = [
            ("Host", Name::Host),
            ("content-LENGTH", Name::ContentLength),
            ("Expect", Name::Expect),
            ("Authorization", Name::Authorization),
            ("Origin", Name::Origin),
            (
                "Access-Control-Request-Method",
                Name::AccessControlRequestMethod,
            ),
            ("X-Request-Id", Name::XRequestId),
            ("X-Forwarded-For", Name::XForwardedFor),
            ("X-Forwarded-Proto", Name::XForwardedProto),
            ("X-Forwarded-Host", Name::XForwardedHost),
            ("X-Real-IP", Name::XRealIp),
            ("Date", Name::Date),
            ("Strict-Transport-Security", Name::StrictTransportSecurity),
        ];
        for (n, want) in named {
            assert_eq!(Name::of(n.as_bytes()), want, "{n}");
            assert!(!want.is_hop_by_hop());
        }
        for other in [
            "",
            "x",
            "hostx",
            "x-user-id",
            "content-type",
            "tex",
            "dates",
        ] {
            assert_eq!(Name::of(other.as_bytes()), Name::Other, "{other}");
        }
    }
}
