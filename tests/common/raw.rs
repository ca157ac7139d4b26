//! Raw HTTP/1.x helpers shared by tests/request_path.rs and
//! tests/request_limits.rs: a raw recording upstream that notes every
//! request head the moment it arrives and every complete request with its
//! exact header names and body, raw clients that write exactly the bytes a
//! test wants, strict chunked decoding, request builders, the gateway
//! config those tests start from, and helpers for running the built binary.
//!
//! Every read and write has a timeout and every loop a bound.
#![allow(clippy::unwrap_used, dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};

use super::Gateway;

/// Every single read or write waits at most this long.
pub const LIMIT: Duration = Duration::from_secs(10);
/// The raw upstream gives up on a silent connection after this.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(30);

/// Runs `f`, failing the test when it takes longer than `limit`.
pub async fn bounded_within(limit: Duration, f: impl Future<Output = ()>) {
    timeout(limit, f).await.expect("test timed out");
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `n` bytes of a pattern that makes shifted or lost bytes visible.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub type Fields = Vec<(String, String)>;

pub fn parse_fields(hs: &[httparse::Header<'_>]) -> Fields {
    hs.iter()
        .map(|h| (h.name.to_string(), lossy(h.value)))
        .collect()
}

/// A chunked body at the start of `data`, read strictly (RFC 9112: CRLF
/// line ends, 1 to 16 hex digits): `Ok(None)` while incomplete, `Err` on
/// malformed framing; else (payload, trailer fields, bytes used).
#[allow(clippy::type_complexity)]
pub fn decode_chunked(data: &[u8]) -> Result<Option<(Vec<u8>, Fields, usize)>, String> {
    let mut at = 0usize;
    let mut body = Vec::new();
    for _ in 0..100_000 {
        let Some(lf) = find(&data[at..], b"\n") else {
            return Ok(None);
        };
        let end = at + lf;
        if end == at || data[end - 1] != b'\r' {
            return Err(format!(
                "bare LF in chunk line {:?}",
                lossy(&data[at..=end])
            ));
        }
        let line = &data[at..end - 1];
        let size_part = line.split(|&b| b == b';').next().unwrap();
        if size_part.is_empty()
            || size_part.len() > 16
            || !size_part.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(format!("bad chunk size line {:?}", lossy(line)));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_part).unwrap(), 16)
            .map_err(|e| format!("chunk size: {e}"))?;
        at = end + 1;
        if size == 0 {
            let mut trailers = Vec::new();
            for _ in 0..1000 {
                let Some(lf) = find(&data[at..], b"\n") else {
                    return Ok(None);
                };
                let e = at + lf;
                if e == at || data[e - 1] != b'\r' {
                    return Err("bare LF in the trailer section".into());
                }
                let line = &data[at..e - 1];
                at = e + 1;
                if line.is_empty() {
                    return Ok(Some((body, trailers, at)));
                }
                let text = lossy(line);
                let (n, v) = text.split_once(':').ok_or("trailer without ':'")?;
                trailers.push((n.to_string(), v.trim().to_string()));
            }
            return Err("too many trailer lines".into());
        }
        let data_end = at.checked_add(size).ok_or("chunk size overflows")?;
        if data.len() < data_end + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[at..data_end]);
        if &data[data_end..data_end + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at = data_end + 2;
    }
    Err("too many chunks".into())
}

// ---------------------------------------------------------------- upstream

/// One request as the raw upstream received it.
#[derive(Clone, Debug, Default)]
pub struct RawReq {
    pub method: String,
    pub target: String,
    /// Header names exactly as sent, in order.
    pub headers: Fields,
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Fields,
    /// Which upstream connection (in accept order) and which request on it.
    pub conn: usize,
    pub nth: usize,
}

impl RawReq {
    /// Values of `name` (ASCII case-insensitive; `_` is NOT `-` here).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn one(&self, name: &str) -> &str {
        let v = self.all(name);
        assert_eq!(v.len(), 1, "{name} in {:?}", self.headers);
        v[0]
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap()
    }
}

#[derive(Default)]
pub struct Record {
    /// Every request head, pushed when the head arrived (body or not).
    pub heads: Vec<RawReq>,
    /// Every request whose body arrived whole.
    pub done: Vec<RawReq>,
}

/// A raw HTTP/1.1 upstream. It answers by path:
/// - `/close`: reads the whole request, then closes without answering
///   (a gunicorn worker killed by its `--timeout`);
/// - `/plus5`: a response with `Content-Length: +5`;
/// - `/barelf`: a chunked response, in one write, whose first chunk line
///   ends in a bare LF;
/// - `/big/<n>`: 200 with a body of n bytes, written 64 KiB at a time
///   (`big_written` counts the answers written out whole);
/// - `/cl0005`: a response with `Content-Length: 0005`;
/// - `/ws101`: `101` with `Upgrade: websocket`, then echoes bytes;
/// - `/h2c101`: `101` with `Upgrade: h2c`, then echoes bytes;
/// - anything else: 200 with the body `METHOD TARGET BODY_LEN` and
///   `X-Upstream-Conn: N`.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub big_written: Arc<AtomicUsize>,
    pub rec: Arc<Mutex<Record>>,
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let big_written = Arc::new(AtomicUsize::new(0));
        let rec = Arc::new(Mutex::new(Record::default()));
        let (a, b, r) = (accepted.clone(), big_written.clone(), rec.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(upstream_conn(stream, conn, r.clone(), b.clone()));
            }
        });
        RawUpstream {
            addr,
            accepted,
            big_written,
            rec,
        }
    }
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// How many request heads arrived.
    pub fn heads(&self) -> usize {
        self.rec.lock().unwrap().heads.len()
    }
    /// The targets of every head that arrived.
    pub fn targets(&self) -> Vec<String> {
        let rec = self.rec.lock().unwrap();
        rec.heads.iter().map(|r| r.target.clone()).collect()
    }
    pub fn done(&self) -> Vec<RawReq> {
        self.rec.lock().unwrap().done.clone()
    }
    pub fn last(&self) -> RawReq {
        self.done().pop().expect("upstream saw no complete request")
    }
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    pub fn big_written(&self) -> usize {
        self.big_written.load(Ordering::SeqCst)
    }
}

/// Reads once more into `buf`; `None` on EOF, error or `limit` passing.
pub async fn fill_within(s: &mut TcpStream, buf: &mut Vec<u8>, limit: Duration) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    match timeout(limit, s.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Some(n)
        }
        _ => None,
    }
}

pub async fn upstream_conn(
    mut s: TcpStream,
    conn: usize,
    rec: Arc<Mutex<Record>>,
    big_written: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    for nth in 0..10_000 {
        // The head.
        let (mut req, head_len) = 'head: {
            for _ in 0..100_000 {
                if !buf.is_empty() {
                    let mut hs = [httparse::EMPTY_HEADER; 128];
                    let mut r = httparse::Request::new(&mut hs);
                    match r.parse(&buf) {
                        Ok(httparse::Status::Complete(n)) => {
                            let req = RawReq {
                                method: r.method.unwrap().to_string(),
                                target: r.path.unwrap().to_string(),
                                headers: parse_fields(r.headers),
                                conn,
                                nth,
                                ..RawReq::default()
                            };
                            break 'head (req, n);
                        }
                        Ok(httparse::Status::Partial) => {}
                        Err(_) => return,
                    }
                }
                if fill_within(&mut s, &mut buf, UPSTREAM_IDLE).await.is_none() {
                    return;
                }
            }
            return;
        };
        buf.drain(..head_len);
        rec.lock().unwrap().heads.push(req.clone());

        // The body, by the framing the gateway chose.
        let chunked = req
            .all("transfer-encoding")
            .last()
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            let mut got = None;
            for _ in 0..100_000 {
                match decode_chunked(&buf) {
                    Ok(Some(b)) => {
                        got = Some(b);
                        break;
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
                if fill_within(&mut s, &mut buf, UPSTREAM_IDLE).await.is_none() {
                    return;
                }
            }
            let Some((body, trailers, used)) = got else {
                return;
            };
            buf.drain(..used);
            req.body = body;
            req.trailers = trailers;
        } else if let Some(n) = req.all("content-length").first() {
            let Ok(n) = n.trim().parse::<usize>() else {
                return;
            };
            for _ in 0..100_000 {
                if buf.len() >= n {
                    break;
                }
                if fill_within(&mut s, &mut buf, UPSTREAM_IDLE).await.is_none() {
                    return;
                }
            }
            if buf.len() < n {
                return;
            }
            req.body = buf.drain(..n).collect();
        }
        rec.lock().unwrap().done.push(req.clone());

        let path = req.path().to_string();
        if let Some(n) = path.strip_prefix("/big/") {
            let n: usize = n.parse().unwrap();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            if !matches!(
                timeout(LIMIT, s.write_all(head.as_bytes())).await,
                Ok(Ok(()))
            ) {
                return;
            }
            let piece = vec![b'x'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(piece.len());
                let write = timeout(UPSTREAM_IDLE, s.write_all(&piece[..k])).await;
                if !matches!(write, Ok(Ok(()))) {
                    return;
                }
                left -= k;
            }
            big_written.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let switch_to = match path.as_str() {
            "/ws101" => Some("websocket"),
            "/h2c101" => Some("h2c"),
            _ => None,
        };
        if let Some(proto) = switch_to {
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            );
            if !matches!(
                timeout(LIMIT, s.write_all(head.as_bytes())).await,
                Ok(Ok(()))
            ) {
                return;
            }
            // Whatever was read past the head, then everything else, echoed.
            if !buf.is_empty() && timeout(LIMIT, s.write_all(&buf)).await.is_err() {
                return;
            }
            let mut chunk = [0u8; 4096];
            for _ in 0..10_000 {
                match timeout(UPSTREAM_IDLE, s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => {
                        if timeout(LIMIT, s.write_all(&chunk[..n])).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
            return;
        }
        let answer: Vec<u8> = match path.as_str() {
            "/close" => return,
            "/plus5" => b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello".to_vec(),
            "/barelf" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"
                    .to_vec()
            }
            "/cl0005" => b"HTTP/1.1 200 OK\r\nContent-Length: 0005\r\n\r\nhello".to_vec(),
            _ => {
                let body = format!("{} {} {}", req.method, req.target, req.body.len());
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Upstream-Conn: {conn}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
        };
        if timeout(LIMIT, s.write_all(&answer)).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- client

/// A response as the client received it.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Fields,
    /// The payload (a chunked body decoded).
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let v: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(v.len() <= 1, "{name} repeated: {:?}", self.headers);
        v.first().copied()
    }
    pub fn text(&self) -> String {
        lossy(&self.body)
    }
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

/// The gateway's own error bodies: JSON with a "detail" key.
pub fn assert_json_detail(r: &RawResp, what: &str) {
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {:?}", r.text()));
    assert!(
        v.get("detail").is_some(),
        "{what}: no \"detail\" in {}",
        r.text()
    );
}

/// A raw HTTP/1.x client connection.
pub struct Client {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = timeout(LIMIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Client { s, buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        timeout(LIMIT, self.s.write_all(bytes.as_ref()))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Writes, reporting instead of failing when the gateway has closed
    /// or stopped reading.
    pub async fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        matches!(
            timeout(LIMIT, self.s.write_all(bytes.as_ref())).await,
            Ok(Ok(()))
        )
    }

    /// Reads once more; `None` on EOF, error (a reset counts as the end)
    /// or timeout.
    pub async fn fill(&mut self) -> Option<usize> {
        fill_within(&mut self.s, &mut self.buf, LIMIT).await
    }

    /// Parses a complete response head at the start of the buffer.
    pub fn parse_head(&mut self) -> Option<RawResp> {
        if self.buf.is_empty() {
            return None;
        }
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Response::new(&mut hs);
        let parsed = r
            .parse(&self.buf)
            .unwrap_or_else(|e| panic!("bad response ({e}): {:?}", lossy(&self.buf)));
        let httparse::Status::Complete(n) = parsed else {
            return None;
        };
        let resp = RawResp {
            status: r.code.unwrap(),
            headers: parse_fields(r.headers),
            body: Vec::new(),
        };
        self.buf.drain(..n);
        Some(resp)
    }

    /// A complete final (or 101) response head at the start of the
    /// buffer; interim answers before it are dropped.
    pub fn parse_final(&mut self) -> Option<RawResp> {
        for _ in 0..100 {
            let resp = self.parse_head()?;
            if !(100..200).contains(&resp.status) || resp.status == 101 {
                return Some(resp);
            }
        }
        None
    }

    /// The next response head (interim answers other than 101 skipped);
    /// `None` if the connection ended (or stalled) first.
    pub async fn head(&mut self) -> Option<RawResp> {
        for _ in 0..10_000 {
            if let Some(resp) = self.parse_final() {
                return Some(resp);
            }
            self.fill().await?;
        }
        None
    }

    /// The body of `r` (not a HEAD answer).
    pub async fn body(&mut self, r: &mut RawResp) {
        if r.status == 204 || r.status == 304 || r.status == 101 {
            return;
        }
        if r.header("transfer-encoding").is_some() {
            for _ in 0..100_000 {
                match decode_chunked(&self.buf) {
                    Ok(Some((body, _, used))) => {
                        self.buf.drain(..used);
                        r.body = body;
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => panic!(
                        "status {}: malformed chunked body from the gateway: {e}",
                        r.status
                    ),
                }
                if self.fill().await.is_none() {
                    panic!(
                        "status {}: connection ended (or stalled) in a chunked body; have {:?}",
                        r.status,
                        lossy(&self.buf)
                    );
                }
            }
        } else if let Some(len) = r.header("content-length") {
            let len: usize = len
                .parse()
                .unwrap_or_else(|_| panic!("gateway sent Content-Length {len:?}"));
            for _ in 0..100_000 {
                if self.buf.len() >= len {
                    break;
                }
                if self.fill().await.is_none() {
                    panic!(
                        "status {}: connection ended (or stalled) in a {len}-byte body; have {}",
                        r.status,
                        self.buf.len()
                    );
                }
            }
            r.body = self.buf.drain(..len).collect();
        } else {
            // Close-delimited.
            for _ in 0..100_000 {
                if self.fill().await.is_none() {
                    break;
                }
            }
            r.body = std::mem::take(&mut self.buf);
        }
    }

    pub async fn response(&mut self) -> RawResp {
        let Some(mut r) = self.head().await else {
            panic!(
                "connection ended (or stalled) before a response; have {:?}",
                lossy(&self.buf)
            );
        };
        self.body(&mut r).await;
        r
    }

    /// The next response within `within`: `Ok(response)`, `Err(true)` when
    /// the connection ended first, `Err(false)` when `within` passed.
    pub async fn response_within(&mut self, within: Duration) -> Result<RawResp, bool> {
        match timeout(within, self.head()).await {
            Ok(Some(mut r)) => {
                timeout(LIMIT, self.body(&mut r))
                    .await
                    .expect("response body stalled");
                Ok(r)
            }
            Ok(None) => Err(true),
            Err(_) => Err(false),
        }
    }

    /// Reads whatever else arrives within `within`: (bytes, closed), where
    /// closed means EOF (or a reset) came before `within` passed.
    pub async fn rest_within(&mut self, within: Duration) -> (Vec<u8>, bool) {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 16 * 1024];
        for _ in 0..100_000 {
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => return (std::mem::take(&mut self.buf), false),
                Ok(Ok(0)) | Ok(Err(_)) => return (std::mem::take(&mut self.buf), true),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        (std::mem::take(&mut self.buf), false)
    }

    /// Writes `piece` every `every` until the gateway answers (a whole
    /// response head) or closes the connection, for at most `within`.
    /// `(elapsed, the answer if one came, bytes dripped)`; panics when
    /// `within` passes first.
    pub async fn drip_until_answered(
        &mut self,
        piece: &[u8],
        every: Duration,
        within: Duration,
    ) -> (Duration, Option<RawResp>, usize) {
        let t0 = Instant::now();
        let mut chunk = [0u8; 16 * 1024];
        let mut dripped = 0;
        for _ in 0..10_000 {
            assert!(
                t0.elapsed() < within,
                "neither answered nor closed after {:?} ({dripped} bytes dripped); have {:?}",
                t0.elapsed(),
                lossy(&self.buf)
            );
            if !self.try_send(piece).await {
                return (t0.elapsed(), self.parse_final(), dripped);
            }
            dripped += piece.len();
            match timeout(every, self.s.read(&mut chunk)).await {
                Err(_) => {}
                Ok(Ok(0)) | Ok(Err(_)) => return (t0.elapsed(), self.parse_final(), dripped),
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if let Some(r) = self.parse_final() {
                        return (t0.elapsed(), Some(r), dripped);
                    }
                }
            }
        }
        panic!("drip loop ran out");
    }

    /// How long until the gateway closes the connection, if it does so
    /// within `within`; the bytes that came first must be empty or a 408.
    pub async fn closed_after(&mut self, within: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let (extra, closed) = self.rest_within(within).await;
        assert!(
            extra.is_empty() || extra.starts_with(b"HTTP/1.1 408"),
            "bytes on an idle connection: {:?}",
            lossy(&extra)
        );
        closed.then(|| t0.elapsed())
    }
}

/// One request on a new connection, one response.
pub async fn exchange(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> RawResp {
    let mut c = Client::connect(addr).await;
    c.send(bytes).await;
    c.response().await
}

pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
}

pub fn get_with(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n{extra}\r\n")
}

/// The same GET in HTTP/1.0, which the gateway hands to hyper.
pub fn get10_with(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: gateway.test\r\n{extra}\r\n")
}

pub fn post(path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

pub fn method_with_body(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

/// A chunked request whose body is `wire` as given (framing included).
pub fn chunked(method: &str, path: &str, extra: &str, wire: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway.test\r\n{extra}Transfer-Encoding: chunked\r\n\r\n{wire}"
    )
}

/// `payload` as one chunk plus the last chunk.
pub fn one_chunk(payload: &str) -> String {
    format!("{:x}\r\n{payload}\r\n0\r\n\r\n", payload.len())
}

/// The default upstream answer's body.
pub fn ok_body(method: &str, target: &str, len: usize) -> String {
    format!("{method} {target} {len}")
}

pub fn assert_proxied(r: &RawResp, method: &str, target: &str, len: usize) {
    assert_eq!(r.status, 200, "{method} {target}: {}", r.text());
    assert_eq!(r.text(), ok_body(method, target, len));
}

// ---------------------------------------------------------------- gateway

/// The body of `{dir}/www/hello.txt`, which every gateway started here has.
pub const FILE: &str = "static file body\n";

pub const PROXY_ALL: &str = "[[routes]]\npath = \"/\"\nupstream = \"app\"\n";

/// The HS256 secret of the `[jwt]` section and of [`token`].
pub const SECRET: &str = "raw-request-tests-hs256-secret-at-least-32-bytes!!";

pub fn jwt_section() -> String {
    format!("[jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n")
}

/// A valid simplejwt-shaped access token for user 42.
pub fn token() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now = since.as_secs();
    let claims = serde_json::json!({
        "token_type": "access",
        "exp": now + 300,
        "iat": now,
        "jti": format!("{:032x}", since.as_nanos()),
        "user_id": "42",
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn bearer() -> String {
    format!("Authorization: Bearer {}\r\n", token())
}

/// The config: `server` lines go into `[server]`, `upstream` lines into
/// `[upstreams.app]` (a `timeout` there replaces the default 5s), `rest`
/// holds `[jwt]`, `[tokens]` and the routes.
pub fn config(upstream_url: &str, server: &str, upstream: &str, rest: &str) -> String {
    let timeout_line = if upstream
        .lines()
        .any(|l| l.trim_start().starts_with("timeout "))
    {
        ""
    } else {
        "timeout = \"5s\""
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
health_path = "/healthz"
{server}

[log]
access_log = false

[upstreams.app]
url = "{upstream_url}"
connect_timeout = "1s"
{timeout_line}
{upstream}

{rest}
"#
    )
}

/// A gateway on [`config`], in a temp dir that holds `www/hello.txt`.
pub async fn start_gateway(
    upstream_url: &str,
    server: &str,
    upstream: &str,
    rest: &str,
) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/hello.txt"), FILE).unwrap();
    // For configs with [tokens]: a users file with no users.
    std::fs::write(dir.path().join("users.toml"), "").unwrap();
    Gateway::start_in(dir, &config(upstream_url, server, upstream, rest)).await
}

/// A [`RawUpstream`] and a gateway proxying to it.
pub async fn start(server: &str, upstream: &str, rest: &str) -> (RawUpstream, Gateway) {
    let up = RawUpstream::start().await;
    let gw = start_gateway(&up.url(), server, upstream, rest).await;
    (up, gw)
}

// ---------------------------------------------------------------- binary

pub const BIN: &str = env!("CARGO_BIN_EXE_gateway");

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A child process killed (and reaped) on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The built gateway binary serving a config from a temp dir of its own;
/// killed and reaped on drop.
pub struct Binary {
    pub child: Killed,
    pub pid: u32,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Binary {
    /// Starts the binary on `config`, whose "127.0.0.1:0" becomes a free
    /// port, and waits (100 tries, 100 ms apart) until it accepts
    /// connections.
    pub async fn start(config: &str) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("gateway.toml"),
            config.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
        )
        .unwrap();
        let child = Killed(
            Command::new(BIN)
                .args(["serve", "--config", "gateway.toml"])
                .current_dir(dir.path())
                .env_remove("GATEWAY_CONFIG")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut listening = false;
        for _ in 0..100 {
            if let Ok(Ok(mut s)) = timeout(LIMIT, TcpStream::connect(addr)).await {
                let _ = s.shutdown().await;
                listening = true;
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
        assert!(listening, "the gateway binary did not start listening");
        Binary {
            child,
            pid,
            addr,
            dir,
        }
    }
}
