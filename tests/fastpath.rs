//! Black-box tests of the HTTP/1.1 fast path (`src/h1.rs`): a real gateway
//! started in-process, raw upstreams that answer byte by byte what each
//! test scripts, and raw clients that write exactly the request bytes a
//! test wants and check the response bytes exactly.
//!
//! The fast path writes the client's header names upstream as they were
//! sent; the general path's clients send them lowercased. Requests carry
//! `X-Probe`, so `RawReq::fast()` tells which path a request took.
#![allow(clippy::unwrap_used)]
mod common;
use common::{tls_connect, Gateway, TestCa};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};

/// Every single read or write waits at most this long.
const LIMIT: Duration = Duration::from_secs(10);
/// A whole test takes at most this long.
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn bounded(f: impl Future<Output = ()>) {
    timeout(TEST_LIMIT, f).await.expect("test timed out");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn norm(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Reads once more into `buf`; `None` on EOF, error or timeout.
async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    match timeout(LIMIT, s.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Some(n)
        }
        _ => None,
    }
}

/// A complete chunked body at the start of `data`: (payload, bytes used);
/// `None` while incomplete. Panics on malformed chunking.
fn decode_chunked(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let end = find(&data[at..], b"\r\n")? + at;
        let line = std::str::from_utf8(&data[at..end]).expect("chunk size line");
        let hex = line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("size {line:?}"));
        at = end + 2;
        if size == 0 {
            // Trailer fields up to an empty line.
            loop {
                let e = find(&data[at..], b"\r\n")? + at;
                let empty = e == at;
                at = e + 2;
                if empty {
                    return Some((body, at));
                }
            }
        }
        if data.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&data[at..at + size]);
        assert_eq!(&data[at + size..at + size + 2], b"\r\n", "chunk data end");
        at += size + 2;
    }
}

/// `n` bytes of a pattern that makes shifted or lost bytes visible.
fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

// ---------------------------------------------------------------- upstream

/// One request as the raw upstream received it.
#[derive(Clone, Debug)]
struct RawReq {
    method: String,
    target: String,
    /// Header names exactly as sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Which upstream connection (in accept order) and which request on it.
    conn: usize,
    nth: usize,
}

impl RawReq {
    /// Values of `name`, compared case-insensitively with `_` as `-`.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| norm(n) == norm(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn one(&self, name: &str) -> &str {
        let v = self.all(name);
        assert_eq!(v.len(), 1, "{name} in {:?}", self.headers);
        v[0]
    }
    /// Came the fast way: the client's header name case was kept.
    fn fast(&self) -> bool {
        self.headers.iter().any(|(n, _)| n == "X-Probe")
    }
}

/// What the upstream does for a request, step by step.
enum Step {
    Write(Vec<u8>),
    Pause(u64),
    /// Drop the connection (without answering, if nothing was written).
    Close,
}

fn w(b: impl AsRef<[u8]>) -> Step {
    Step::Write(b.as_ref().to_vec())
}

/// A 200 with a Content-Length body naming the request.
fn ok(req: &RawReq) -> Vec<u8> {
    let body = format!("{} {} {}", req.method, req.target, req.body.len());
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Raw-Case: Yes\r\nX-Upstream-Conn: {}\r\n\r\n{body}",
        body.len(),
        req.conn
    )
    .into_bytes()
}

const CHUNKED_WIRE: &[u8] = b"5\r\nhello\r\n6;ext=1\r\n world\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n";

fn eof_body() -> Vec<u8> {
    [b"first;".as_slice(), &pattern(70_000, 3), b";last"].concat()
}

/// The upstream's behaviour, by path.
fn script(req: &RawReq) -> Vec<Step> {
    let path = req.target.split('?').next().unwrap();
    let is_head = req.method == "HEAD";
    match path {
        "/chunked" => {
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Raw-Case: Yes\r\n\r\n";
            // In pieces, so that the scanner meets the chunk framing split.
            let (a, rest) = CHUNKED_WIRE.split_at(3);
            let (b, rest) = rest.split_at(17);
            let (c, d) = rest.split_at(rest.len() - 3);
            vec![
                w([head.as_slice(), a].concat()),
                Step::Pause(20),
                w(b),
                Step::Pause(20),
                w(c),
                Step::Pause(20),
                w(d),
            ]
        }
        "/eof" | "/eof11" => {
            let head: &[u8] = if path == "/eof" {
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
            };
            let body = eof_body();
            let (a, b) = body.split_at(30_000);
            vec![w(head), Step::Pause(20), w(a), Step::Pause(20), w(b), Step::Close]
        }
        "/big" => {
            let body = pattern(200_000, 11);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            vec![w([head.as_bytes(), &body].concat())]
        }
        "/head" | "/head-liar" => {
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Raw-Case: Yes\r\n\r\n";
            if is_head && path == "/head" {
                vec![w(head)]
            } else {
                vec![w([head.as_slice(), &[b'b'; 1234]].concat())]
            }
        }
        "/204" => vec![w("HTTP/1.1 204 No Content\r\nX-Raw-Case: Yes\r\n\r\n")],
        "/304" => vec![w(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 50\r\n\r\n",
        )],
        "/early" => vec![
            w("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"),
            Step::Pause(30),
            w("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"),
        ],
        "/conflict" => vec![w(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        )],
        "/extra" => vec![w("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA")],
        "/hop" => vec![w(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Up-Hop\r\nX-Up-Hop: s\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nStrict-Transport-Security: max-age=1\r\nX-Request-Id: from-upstream\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok",
        )],
        // Answers, then closes the idle keep-alive connection.
        "/then-close" => vec![w(ok(req)), Step::Pause(30), Step::Close],
        // Drops a connection's second request unanswered (the race of a
        // request arriving as the server closes an idle connection).
        "/drop-if-reused" if req.nth > 0 => vec![Step::Close],
        "/drop" => vec![Step::Close],
        // A response head with 81 fields: well inside what the general
        // path's clients accept (100).
        "/many" => {
            let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
            for i in 0..80 {
                head.push_str(&format!("Set-Cookie: c{i}=v{i}\r\n"));
            }
            vec![w(format!("{head}\r\nok"))]
        }
        _ => vec![w(ok(req))],
    }
}

/// A raw HTTP/1.1 upstream on 127.0.0.1 running `script`.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<RawReq>>>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(upstream_conn(stream, conn, s.clone()));
            }
        });
        RawUpstream {
            addr,
            accepted,
            seen,
        }
    }
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn seen(&self) -> Vec<RawReq> {
        self.seen.lock().unwrap().clone()
    }
    fn last(&self) -> RawReq {
        self.seen().pop().expect("upstream saw no request")
    }
}

async fn upstream_conn(mut s: TcpStream, conn: usize, seen: Arc<Mutex<Vec<RawReq>>>) {
    let mut buf = Vec::new();
    for nth in 0..1000 {
        let Some(mut req) = read_request(&mut s, &mut buf).await else {
            return;
        };
        req.conn = conn;
        req.nth = nth;
        seen.lock().unwrap().push(req.clone());
        for step in script(&req) {
            match step {
                Step::Write(b) => {
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Step::Pause(ms) => sleep(Duration::from_millis(ms)).await,
                Step::Close => return,
            }
        }
    }
}

async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawReq> {
    let (mut req, head_len) = loop {
        if !buf.is_empty() {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(buf).expect("request head") {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_string(), v)
                    })
                    .collect();
                let req = RawReq {
                    method: r.method.unwrap().to_string(),
                    target: r.path.unwrap().to_string(),
                    headers,
                    body: Vec::new(),
                    conn: 0,
                    nth: 0,
                };
                break (req, n);
            }
        }
        fill(s, buf).await?;
    };
    buf.drain(..head_len);
    let chunked = req
        .all("transfer-encoding")
        .iter()
        .any(|v| v.contains("chunked"));
    if chunked {
        loop {
            if let Some((body, used)) = decode_chunked(buf) {
                buf.drain(..used);
                req.body = body;
                break;
            }
            fill(s, buf).await?;
        }
    } else if let Some(n) = req.all("content-length").first() {
        let n: usize = n.trim().parse().unwrap();
        while buf.len() < n {
            fill(s, buf).await?;
        }
        req.body = buf.drain(..n).collect();
    }
    Some(req)
}

// ---------------------------------------------------------------- client

/// A response as the client received it.
#[derive(Debug)]
struct RawResp {
    status: u16,
    headers: Vec<(String, String)>,
    /// The payload (chunked bodies decoded).
    body: Vec<u8>,
    /// The body bytes as they came on the wire.
    wire: Vec<u8>,
}

impl RawResp {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn header(&self, name: &str) -> Option<&str> {
        let v = self.all(name);
        assert!(v.len() <= 1, "{name} repeated: {:?}", self.headers);
        v.first().copied()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }
}

/// A raw HTTP/1.1 client connection.
struct Client<S> {
    s: S,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    async fn connect(addr: SocketAddr) -> Self {
        let s = timeout(LIMIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client { s, buf: Vec::new() }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        timeout(LIMIT, self.s.write_all(bytes.as_ref()))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    async fn more(&mut self, what: &str) {
        if fill(&mut self.s, &mut self.buf).await.is_none() {
            panic!(
                "connection ended (or stalled) in {what}; have {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads one response; `head`: it answers a HEAD request.
    async fn response(&mut self, head: bool) -> RawResp {
        let (status, headers, n) = loop {
            if !self.buf.is_empty() {
                let mut hs = [httparse::EMPTY_HEADER; 256];
                let mut r = httparse::Response::new(&mut hs);
                let parsed = r.parse(&self.buf).unwrap_or_else(|e| {
                    panic!(
                        "bad response ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )
                });
                if let httparse::Status::Complete(n) = parsed {
                    let headers = r
                        .headers
                        .iter()
                        .map(|h| {
                            let v = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_string(), v)
                        })
                        .collect();
                    break (r.code.unwrap(), headers, n);
                }
            }
            self.more("a response head").await;
        };
        self.buf.drain(..n);
        let mut resp = RawResp {
            status,
            headers,
            body: Vec::new(),
            wire: Vec::new(),
        };
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
            return resp;
        }
        if resp.header("transfer-encoding").is_some() {
            assert!(resp.chunked(), "{:?}", resp.headers);
            assert!(
                resp.header("content-length").is_none(),
                "{:?}",
                resp.headers
            );
            loop {
                if let Some((body, used)) = decode_chunked(&self.buf) {
                    resp.body = body;
                    resp.wire = self.buf.drain(..used).collect();
                    return resp;
                }
                self.more("a chunked body").await;
            }
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                self.more("a Content-Length body").await;
            }
            resp.body = self.buf.drain(..len).collect();
        } else {
            // Close-delimited: read to the end.
            loop {
                let mut chunk = [0u8; 16 * 1024];
                let n = timeout(LIMIT, self.s.read(&mut chunk))
                    .await
                    .expect("close-delimited body stalled")
                    .expect("read");
                if n == 0 {
                    break;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        resp.wire = resp.body.clone();
        resp
    }

    /// The server closes: no more bytes, then EOF.
    async fn expect_eof(&mut self) {
        assert!(
            self.buf.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 4096];
        match timeout(LIMIT, self.s.read(&mut chunk)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => panic!(
                "expected EOF, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            other => panic!("expected EOF, got {other:?}"),
        }
    }
}

/// A GET as a plain HTTP/1.1 client would send it.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\nX-Probe: 1\r\n\r\n")
}

fn request(method: &str, path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: gateway.test\r\nX-Probe: 1\r\n{extra}");
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    [head.as_bytes(), body].concat()
}

/// The body the default upstream answer has for a request.
fn ok_body(method: &str, target: &str, body_len: usize) -> String {
    format!("{method} {target} {body_len}")
}

fn assert_ok(r: &RawResp, method: &str, target: &str) {
    assert_eq!(r.status, 200, "{method} {target}: {}", r.text());
    assert_eq!(r.text(), ok_body(method, target, 0));
}

// ---------------------------------------------------------------- gateway

fn config(upstream: SocketAddr, extra_server: &str, tls: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
health_path = "/healthz"
{extra_server}

[log]
access_log = false

{tls}

[identity]
headers = {{ "X-User-Id" = "user_id", "X-User-Roles" = "roles" }}
claims_header = "X-Auth-Claims"

[upstreams.app]
url = "http://{upstream}"
connect_timeout = "1s"
timeout = "3s"

[[routes]]
path = "/files/"
static = "{{dir}}/www"

[[routes]]
path = "/"
upstream = "app"
"#
    )
}

const FILE: &str = "static file body\n";

/// Past the static server's in-memory cache and one `sendfile` piece.
fn big_file() -> Vec<u8> {
    pattern(3 * 1024 * 1024 + 17, 1)
}

fn make_www(dir: &std::path::Path) {
    std::fs::create_dir(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/hello.txt"), FILE).unwrap();
    std::fs::write(dir.join("www/big.bin"), big_file()).unwrap();
}

async fn start_with(extra_server: &str) -> (RawUpstream, Gateway) {
    let up = RawUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    make_www(dir.path());
    let gw = Gateway::start_in(dir, &config(up.addr, extra_server, "")).await;
    (up, gw)
}

async fn start() -> (RawUpstream, Gateway) {
    start_with("").await
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        let all = [
            get("/p/1").into_bytes(),
            request("POST", "/p/2", "", b"abcde"),
            get("/p/3?q=1").into_bytes(),
        ]
        .concat();
        c.send(&all).await;
        assert_ok(&c.response(false).await, "GET", "/p/1");
        let r = c.response(false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), ok_body("POST", "/p/2", 5));
        assert_ok(&c.response(false).await, "GET", "/p/3?q=1");

        // Three GETs at once, then one more on the same connection.
        c.send([get("/a"), get("/b"), get("/c")].concat()).await;
        for p in ["/a", "/b", "/c"] {
            assert_ok(&c.response(false).await, "GET", p);
        }
        c.send(get("/d")).await;
        assert_ok(&c.response(false).await, "GET", "/d");

        let seen = up.seen();
        let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(
            targets,
            ["/p/1", "/p/2", "/p/3?q=1", "/a", "/b", "/c", "/d"]
        );
        assert_eq!(seen[1].body, b"abcde");
        assert!(seen.iter().all(RawReq::fast), "all on the fast path");
        assert_eq!(up.accepted(), 1, "one upstream connection");
    })
    .await;
}

#[tokio::test]
async fn handover_mid_connection_keeps_answering_in_order() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        c.send(get("/first")).await;
        assert_ok(&c.response(false).await, "GET", "/first");
        assert!(up.last().fast(), "the first request took the fast path");

        // The gateway's own answers (health path, static file) and a
        // chunked upload in absolute form, which the fast path hands over.
        c.send(get("/healthz")).await;
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));

        c.send(
            "POST http://gateway.test/upload HTTP/1.1\r\nHost: gateway.test\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        )
        .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), ok_body("POST", "/upload", 7));
        assert_eq!(up.last().body, b"abcdefg");
        assert!(!up.last().fast(), "an absolute-form target goes the general way");

        c.send(get("/files/hello.txt")).await;
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, FILE));

        c.send(get("/last")).await;
        assert_ok(&c.response(false).await, "GET", "/last");
        let seen = up.seen();
        let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(targets, ["/first", "/upload", "/last"]);
        // Handed over for the rest of the connection.
        assert!(!seen[2].fast());
    })
    .await;
}

#[tokio::test]
async fn handover_with_pipelined_bytes_already_read() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        // The fast path reads all of these at once and hands the chunked
        // upload over: the rest of its buffer must reach the general path
        // intact.
        c.send(
            [
                get("/one"),
                "POST http://gateway.test/up HTTP/1.1\r\nHost: gateway.test\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n".to_string(),
                get("/two"),
                get("/healthz"),
                get("/files/hello.txt"),
                get("/three"),
            ]
            .concat(),
        )
        .await;
        assert_ok(&c.response(false).await, "GET", "/one");
        let r = c.response(false).await;
        assert_eq!((r.status, r.text()), (200, ok_body("POST", "/up", 2)));
        assert_ok(&c.response(false).await, "GET", "/two");
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, FILE));
        assert_ok(&c.response(false).await, "GET", "/three");
        let seen = up.seen();
        let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(targets, ["/one", "/up", "/two", "/three"]);
        assert_eq!(seen[1].body, b"xy");
        assert!(seen[0].fast(), "the first request took the fast path");
        assert!(!seen[1].fast(), "the absolute-form upload was handed over");
    })
    .await;
}

#[tokio::test]
async fn static_files_are_served_inline_between_proxied_requests() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        c.send(
            [
                get("/a"),
                get("/files/hello.txt"),
                get("/files/big.bin"),
                get("/b"),
            ]
            .concat(),
        )
        .await;
        assert_ok(&c.response(false).await, "GET", "/a");
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, FILE));
        let r = c.response(false).await;
        assert_eq!(r.status, 200);
        let len = big_file().len().to_string();
        assert_eq!(r.header("content-length"), Some(len.as_str()));
        assert!(r.body == big_file(), "large static file differs");
        let etag = r.header("etag").unwrap().to_string();
        assert_ok(&c.response(false).await, "GET", "/b");

        // HEAD, a range and a matching If-None-Match: exact bodies or none.
        c.send(
            [
                request("HEAD", "/files/big.bin", "", b""),
                request("GET", "/files/big.bin", "Range: bytes=100-199\r\n", b""),
                request(
                    "GET",
                    "/files/big.bin",
                    &format!("If-None-Match: {etag}\r\n"),
                    b"",
                ),
                get("/c").into_bytes(),
            ]
            .concat(),
        )
        .await;
        let r = c.response(true).await;
        assert_eq!(
            (r.status, r.header("content-length")),
            (200, Some(len.as_str()))
        );
        let r = c.response(false).await;
        assert_eq!(r.status, 206);
        assert!(r.body == big_file()[100..200]);
        let r = c.response(false).await;
        assert_eq!(r.status, 304);
        assert_ok(&c.response(false).await, "GET", "/c");
        assert!(c.buf.is_empty());
        // No handover: the proxied requests all took the fast path.
        assert!(up.seen().iter().all(RawReq::fast));
    })
    .await;
}

#[tokio::test]
async fn content_length_bodies_are_passed_exactly() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        c.send(get("/cl")).await;
        let r = c.response(false).await;
        let want = ok_body("GET", "/cl", 0);
        assert_eq!(r.text(), want);
        assert_eq!(
            r.header("content-length"),
            Some(want.len().to_string().as_str())
        );
        assert!(r.header("transfer-encoding").is_none());
        // The upstream's header name case is kept: the fast path answered.
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n == "X-Raw-Case" && v == "Yes"));
        assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
        assert!(r.header("date").is_some());

        // A large body, read in many pieces.
        c.send(get("/big")).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200);
        assert!(r.body == pattern(200_000, 11), "200 KB body differs");

        // Bytes after the declared length are not passed on.
        c.send(get("/extra")).await;
        let r = c.response(false).await;
        assert_eq!(r.text(), "hello");
        c.send(get("/after")).await;
        assert_ok(&c.response(false).await, "GET", "/after");
        // The connection with stray bytes was not reused.
        assert_eq!(up.accepted(), 2);
    })
    .await;
}

#[tokio::test]
async fn chunked_upstream_bodies_pass_verbatim_with_trailers() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        for _ in 0..2 {
            c.send(get("/chunked")).await;
            let r = c.response(false).await;
            assert_eq!(r.status, 200);
            assert!(r.chunked());
            assert_eq!(r.wire, CHUNKED_WIRE, "chunked body passed through as is");
            assert_eq!(r.text(), "hello worldabcdefghijklmnopqrstuvwxyz");
            c.send(get("/next")).await;
            assert_ok(&c.response(false).await, "GET", "/next");
        }
        // The end of the chunked body was found: the connection was reused.
        assert_eq!(up.accepted(), 1);
    })
    .await;
}

#[tokio::test]
async fn close_delimited_upstream_bodies_are_rechunked() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        for (i, path) in ["/eof", "/eof11"].into_iter().enumerate() {
            c.send(get(path)).await;
            let r = c.response(false).await;
            assert_eq!(r.status, 200, "{path}");
            assert!(r.chunked(), "{path}: {:?}", r.headers);
            assert!(r.header("connection").is_none(), "{path}: {:?}", r.headers);
            assert_eq!(r.header("content-type"), Some("text/plain"));
            assert!(r.body == eof_body(), "{path}: body differs");
            // And the client connection carries on.
            c.send(get("/after")).await;
            let r = c.response(false).await;
            assert_ok(&r, "GET", "/after");
            // /eof's connection ends with its body; /eof11 takes the
            // pooled one /after used, and ends it too.
            assert_eq!(up.accepted(), i + 2, "{path}");
        }
    })
    .await;
}

#[tokio::test]
async fn head_204_and_304_have_no_body() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        // Each answer is followed by a GET in the same write: stray body
        // bytes would show up as a broken next response.
        c.send([request("HEAD", "/head", "", b""), get("/n1").into_bytes()].concat())
            .await;
        let r = c.response(true).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("1234"));
        assert_ok(&c.response(false).await, "GET", "/n1");
        // The upstream sent no body for HEAD: its connection was reusable.
        assert_eq!(up.accepted(), 1);

        // An upstream that wrongly sends a body for HEAD: none is passed on.
        c.send(
            [
                request("HEAD", "/head-liar", "", b""),
                get("/n2").into_bytes(),
            ]
            .concat(),
        )
        .await;
        let r = c.response(true).await;
        assert_eq!((r.status, r.header("content-length")), (200, Some("1234")));
        assert_ok(&c.response(false).await, "GET", "/n2");

        c.send([get("/204"), get("/n3")].concat()).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 204);
        assert!(r.header("content-length").is_none() && r.header("transfer-encoding").is_none());
        assert_ok(&c.response(false).await, "GET", "/n3");

        c.send([get("/304"), get("/n4")].concat()).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 304);
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert!(r.header("transfer-encoding").is_none());
        assert_ok(&c.response(false).await, "GET", "/n4");
        assert!(c.buf.is_empty(), "stray bytes: {:?}", c.buf);
        assert!(up.seen().iter().all(RawReq::fast));
    })
    .await;
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        for i in 0..20 {
            let p = format!("/seq/{i}");
            c.send(get(&p)).await;
            assert_ok(&c.response(false).await, "GET", &p);
        }
        assert_eq!(up.accepted(), 1, "20 requests, one upstream connection");
        assert!(up.seen().iter().all(|r| r.conn == 0));
    })
    .await;
}

#[tokio::test]
async fn upstream_closing_an_idle_connection_is_not_a_502() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        for i in 0..3 {
            // The upstream answers, then closes the connection while it
            // idles in the pool.
            c.send(get("/then-close")).await;
            assert_ok(&c.response(false).await, "GET", "/then-close");
            sleep(Duration::from_millis(200)).await;
            assert_eq!(up.accepted(), i + 1);
        }
        c.send(get("/fine")).await;
        assert_ok(&c.response(false).await, "GET", "/fine");
    })
    .await;
}

#[tokio::test]
async fn idempotent_request_dropped_on_a_reused_connection_is_retried_once() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        c.send(get("/warm")).await;
        assert_ok(&c.response(false).await, "GET", "/warm");
        // Sent on the pooled connection, which drops it unanswered: sent
        // again on a new one.
        c.send(get("/drop-if-reused")).await;
        assert_ok(&c.response(false).await, "GET", "/drop-if-reused");
        let seen = up.seen();
        let tries: Vec<(usize, usize)> = seen
            .iter()
            .filter(|r| r.target == "/drop-if-reused")
            .map(|r| (r.conn, r.nth))
            .collect();
        assert_eq!(tries, [(0, 1), (1, 0)]);

        // A PUT held in memory is idempotent: sent again byte for byte.
        c.send(get("/warm")).await;
        assert_ok(&c.response(false).await, "GET", "/warm");
        c.send(request("PUT", "/drop-if-reused", "", b"payload"))
            .await;
        let r = c.response(false).await;
        assert_eq!(r.text(), ok_body("PUT", "/drop-if-reused", 7));
        assert_eq!(up.last().body, b"payload");

        // A POST that was written is never sent twice (the app may have
        // performed it): 502, and the upstream saw it once.
        c.send(get("/warm")).await;
        assert_ok(&c.response(false).await, "GET", "/warm");
        let before = up.seen().len();
        c.send(request("POST", "/drop-if-reused", "", b"payload"))
            .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 502, "{}", r.text());
        let posts = up.seen()[before..]
            .iter()
            .filter(|r| r.target == "/drop-if-reused")
            .count();
        assert_eq!(posts, 1, "the POST reached the upstream once");
        let mut c = Client::connect(gw.addr).await;

        // An upstream that drops every request: one retry at most, then 502.
        let before = up.accepted();
        c.send(get("/drop")).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(up.accepted() - before <= 2, "bounded retries");
        c.send(get("/ok")).await;
        assert_ok(&c.response(false).await, "GET", "/ok");
    })
    .await;
}

#[tokio::test]
async fn informational_responses_are_skipped() {
    bounded(async {
        let (_up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        c.send(get("/early")).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "1xx passed on: {:?}", r.headers);
        assert_eq!(r.text(), "final");
        assert!(r.header("link").is_none(), "103's fields are not merged");
        c.send(get("/after")).await;
        assert_ok(&c.response(false).await, "GET", "/after");
    })
    .await;
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_exactly() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        let body = pattern(300 * 1024, 5);
        let all = request(
            "POST",
            "/upload",
            "Content-Type: application/octet-stream\r\n",
            &body,
        );
        let head_len = all.len() - body.len();
        // The head with a little body, then pieces, the last with a
        // pipelined GET behind it.
        let (first, rest) = all.split_at(head_len + 1000);
        c.send(first).await;
        for piece in rest[..rest.len() - 500].chunks(64 * 1024 - 7) {
            sleep(Duration::from_millis(5)).await;
            c.send(piece).await;
        }
        let tail = [&rest[rest.len() - 500..], get("/after").as_bytes()].concat();
        c.send(tail).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), ok_body("POST", "/upload", body.len()));
        assert_ok(&c.response(false).await, "GET", "/after");

        let seen = up.seen();
        let up_req = &seen[0];
        assert!(up_req.fast());
        assert_eq!(up_req.one("content-length"), body.len().to_string());
        assert!(up_req.all("transfer-encoding").is_empty());
        assert_eq!(up_req.one("content-type"), "application/octet-stream");
        assert!(up_req.body == body, "upload differs");
        assert_eq!(seen[1].target, "/after");
    })
    .await;
}

#[tokio::test]
async fn hop_by_hop_identity_and_forwarding_headers_are_replaced() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        let extra = "Connection: keep-alive, x-secret\r\n\
                     X-SECRET: 1\r\n\
                     Keep-Alive: timeout=5\r\n\
                     TE: trailers\r\n\
                     Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
                     Proxy-Connection: keep-alive\r\n\
                     X-User-Id: 666\r\n\
                     X_User_Id: 667\r\n\
                     x-user-id: 668\r\n\
                     X-User_Roles: admin\r\n\
                     X_AUTH_CLAIMS: eyJ1c2VyX2lkIjoiNjY2In0\r\n\
                     X-Forwarded-For: 6.6.6.6\r\n\
                     X-Forwarded-Proto: https\r\n\
                     X-Real-IP: 6.6.6.6\r\n\
                     Authorization: Bearer not-checked\r\n\
                     X-Kept: kept\r\n";
        c.send(request("GET", "/hop", extra, b"")).await;
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        // Hop-by-hop response headers are not passed back either.
        for h in ["x-up-hop", "keep-alive", "proxy-authenticate", "connection"] {
            assert!(r.header(h).is_none(), "{h} in {:?}", r.headers);
        }
        assert_eq!(r.header("x-kept"), Some("k"));
        assert_eq!(r.header("date"), Some("Mon, 01 Jan 2024 00:00:00 GMT"));
        let id = r.header("x-request-id").unwrap();
        assert!(id != "from-upstream" && !id.is_empty());

        let seen = up.last();
        assert!(seen.fast(), "took the fast path: {:?}", seen.headers);
        for h in [
            "x-secret",
            "connection",
            "keep-alive",
            "te",
            "proxy-authorization",
            "proxy-connection",
            "x-user-id",
            "x-user-roles",
            "x-auth-claims",
        ] {
            assert!(seen.all(h).is_empty(), "{h} forwarded: {:?}", seen.headers);
        }
        assert_eq!(seen.one("x-forwarded-for"), "127.0.0.1");
        assert_eq!(seen.one("x-real-ip"), "127.0.0.1");
        assert_eq!(seen.one("x-forwarded-proto"), "http");
        assert_eq!(seen.one("x-forwarded-host"), "gateway.test");
        assert_eq!(seen.one("host"), "gateway.test");
        assert_eq!(seen.one("x-kept"), "kept");
        assert_eq!(seen.one("authorization"), "Bearer not-checked");
        assert_eq!(seen.one("x-request-id"), id);
    })
    .await;
}

#[tokio::test]
async fn connection_close_is_honoured() {
    bounded(async {
        let (up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        c.send(get("/warm")).await;
        assert_ok(&c.response(false).await, "GET", "/warm");
        c.send(request("GET", "/bye", "Connection: close\r\n", b""))
            .await;
        let r = c.response(false).await;
        assert_ok(&r, "GET", "/bye");
        assert_eq!(r.header("connection"), Some("close"));
        c.expect_eof().await;
        assert!(up.last().fast());

        // A request pipelined behind the closing one is not answered.
        let mut c = Client::connect(gw.addr).await;
        c.send(
            [
                request("GET", "/bye2", "Connection: close\r\n", b""),
                get("/never").into_bytes(),
            ]
            .concat(),
        )
        .await;
        let r = c.response(false).await;
        assert_ok(&r, "GET", "/bye2");
        assert_eq!(r.header("connection"), Some("close"));
        c.expect_eof().await;
        assert!(up.seen().iter().all(|r| r.target != "/never"));
    })
    .await;
}

#[tokio::test]
async fn conflicting_upstream_content_lengths_are_a_502() {
    bounded(async {
        let (_up, gw) = start().await;
        let mut c = Client::connect(gw.addr).await;
        c.send(get("/conflict")).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(j["detail"].as_str().is_some_and(|d| !d.is_empty()), "{j}");
        assert!(!r.text().contains("hello"));
        // The client connection is still usable.
        c.send(get("/after")).await;
        assert_ok(&c.response(false).await, "GET", "/after");
    })
    .await;
}

#[tokio::test]
async fn tls_http11_takes_the_fast_path_with_hsts() {
    bounded(async {
        let up = RawUpstream::start().await;
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        make_www(dir.path());
        ca.write_leaf(dir.path(), "leaf", &["gateway.test"]);
        let tls = "[tls]\ncert = \"leaf.crt\"\nkey = \"leaf.key\"\nhsts = \"max-age=63072000\"";
        let gw = Gateway::start_in(dir, &config(up.addr, "", tls)).await;
        let s = timeout(
            LIMIT,
            tls_connect(gw.addr, ca.client_config(&[b"http/1.1"]), "gateway.test"),
        )
        .await
        .unwrap()
        .unwrap();
        let mut c = Client { s, buf: Vec::new() };
        c.send([get("/t1"), get("/hop"), get("/t3")].concat()).await;
        assert_ok(&c.response(false).await, "GET", "/t1");
        let r = c.response(false).await;
        assert_eq!(r.text(), "ok");
        assert_eq!(
            r.all("strict-transport-security"),
            ["max-age=63072000"],
            "the gateway's HSTS replaces the upstream's"
        );
        assert_ok(&c.response(false).await, "GET", "/t3");
        c.send(get("/chunked")).await;
        assert_eq!(c.response(false).await.wire, CHUNKED_WIRE);
        // A large static file, streamed (no sendfile through TLS).
        c.send([get("/files/big.bin"), get("/t4")].concat()).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200);
        assert!(r.body == big_file(), "static file differs over TLS");
        assert_ok(&c.response(false).await, "GET", "/t4");
        let seen = up.seen();
        assert!(seen.iter().all(RawReq::fast));
        assert_eq!(seen[0].one("x-forwarded-proto"), "https");
        assert_eq!(up.accepted(), 1);
    })
    .await;
}

#[tokio::test]
async fn later_request_heads_are_held_to_the_header_timeout() {
    bounded(async {
        let (_up, gw) = start_with("header_read_timeout = \"1s\"\nidle_timeout = \"5s\"").await;
        let mut c = Client::connect(gw.addr).await;
        c.send(get("/a")).await;
        assert_ok(&c.response(false).await, "GET", "/a");
        // Idling longer than the header timeout is fine...
        sleep(Duration::from_millis(1500)).await;
        c.send(get("/b")).await;
        assert_ok(&c.response(false).await, "GET", "/b");
        // ...a head that stalls half-way is not.
        let t = std::time::Instant::now();
        c.send("GET /c HTTP/1.1\r\nHo").await;
        c.expect_eof().await;
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(800), "closed early: {took:?}");
        assert!(
            took < Duration::from_millis(3500),
            "not the header timeout: {took:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn pipelined_partial_head_is_held_to_the_header_timeout() {
    bounded(async {
        let (_up, gw) = start_with("header_read_timeout = \"1s\"\nidle_timeout = \"5s\"").await;
        let mut c = Client::connect(gw.addr).await;
        let t = std::time::Instant::now();
        c.send(get("/a") + "GET /c HTTP/1.1\r\nHo").await;
        assert_ok(&c.response(false).await, "GET", "/a");
        c.expect_eof().await;
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(3500),
            "not the header timeout: {took:?}"
        );
    })
    .await;
}

/// GETs `path` the general way (an HTTP/1.0 request is handed over), then
/// the fast way; returns both answers.
async fn both_ways(gw: &Gateway, path: &str) -> (RawResp, RawResp) {
    let mut c = Client::connect(gw.addr).await;
    c.send(format!("GET {path} HTTP/1.0\r\nHost: gateway.test\r\n\r\n"))
        .await;
    let general = c.response(false).await;
    let mut c = Client::connect(gw.addr).await;
    c.send(get(path)).await;
    (general, c.response(false).await)
}

#[tokio::test]
async fn upstream_responses_with_many_fields_pass_as_on_the_general_path() {
    bounded(async {
        let (_up, gw) = start().await;
        let (general, fast) = both_ways(&gw, "/many").await;
        assert_eq!((general.status, general.all("set-cookie").len()), (200, 80));
        assert_eq!(fast.status, 200, "{}", fast.text());
        assert_eq!(fast.all("set-cookie").len(), 80);
        assert_eq!(fast.text(), "ok");
    })
    .await;
}
