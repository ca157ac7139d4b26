//! The pooled HTTP/1.1 upstream client (`proxy::h1client`) as HTTP/2
//! clients see it: a real gateway with TLS (ALPN h2, served by hyper), a
//! real HTTP/2 client, and raw upstream servers on 127.0.0.1:0 that send
//! exact bytes, so every framing, status and connection rule of the
//! upstream's answer can be chosen byte by byte.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Every wait in these tests is bounded by this unless said otherwise.
const LIMIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------ gateway

/// A gateway with TLS in front of `upstream`, its upstream `timeout` set
/// to `upstream_timeout`; and the CA its certificate chains to.
async fn tls_gateway(upstream: &Raw, upstream_timeout: &str) -> (Gateway, TestCa) {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.write_leaf(dir.path(), "site", &["gateway.test", "localhost"]);
    let config = proxy_config(&format!("http://{}", upstream.addr))
        .replace(
            "[log]",
            "[tls]\ncert = \"{dir}/site.crt\"\nkey = \"{dir}/site.key\"\n\n[log]",
        )
        .replace(
            "timeout = \"2s\"",
            &format!("timeout = \"{upstream_timeout}\""),
        );
    assert!(config.contains(&format!("\ntimeout = \"{upstream_timeout}\"")));
    let gw = Gateway::start_in(dir, &config).await;
    (gw, ca)
}

// ------------------------------------------------------------ HTTP/2 client

/// One HTTP/2 connection to the gateway, over TLS, for many requests.
struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

/// A response as the HTTP/2 client got it. `body` is the error when the
/// stream was reset (or otherwise failed) before its end.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    version: Version,
    body: Result<Bytes, String>,
}

impl Got {
    fn body(&self) -> &Bytes {
        match &self.body {
            Ok(b) => b,
            Err(e) => panic!("status {}: the body failed: {e}", self.status),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(self.body()).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// A gateway error: `status`, a JSON body with only `detail`.
    fn assert_json_detail(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let j: serde_json::Value = serde_json::from_slice(self.body())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()));
        let detail = j["detail"].as_str().unwrap_or_else(|| panic!("{j}"));
        assert!(!detail.is_empty());
        assert_eq!(j.as_object().unwrap().len(), 1, "only detail: {j}");
    }
}

impl H2 {
    async fn connect(gw: &Gateway, ca: &TestCa) -> H2 {
        let tls = timeout(
            LIMIT,
            tls_connect(gw.addr, ca.client_config(&[b"h2"]), "gateway.test"),
        )
        .await
        .expect("TLS handshake timed out")
        .unwrap();
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the gateway did not pick h2"
        );
        let (sender, conn) = timeout(
            LIMIT,
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)),
        )
        .await
        .expect("HTTP/2 handshake timed out")
        .unwrap();
        tokio::spawn(conn);
        H2 { sender }
    }

    /// Sends a bodiless request; `Err` when the stream failed before any
    /// response head.
    async fn try_fetch(&mut self, method: &str, path: &str) -> Result<Got, String> {
        let req = Request::builder()
            .method(method)
            .uri(format!("https://gateway.test{path}"))
            .version(Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let run = async {
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| format!("{e:?}"));
            Ok(Got {
                status: parts.status,
                headers: parts.headers,
                version: parts.version,
                body,
            })
        };
        timeout(LIMIT, run)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no complete answer within {LIMIT:?}"))
    }

    async fn fetch(&mut self, method: &str, path: &str) -> Got {
        let got = self
            .try_fetch(method, path)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: the request failed: {e}"));
        assert_eq!(got.version, Version::HTTP_2);
        got
    }

    async fn get(&mut self, path: &str) -> Got {
        self.fetch("GET", path).await
    }
}

// ------------------------------------------------------------ raw upstream

/// A raw HTTP/1.1 upstream on 127.0.0.1:0.
struct Raw {
    addr: std::net::SocketAddr,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
    /// Connections whose handler has returned (the socket is closed).
    closed: Arc<AtomicUsize>,
    /// Every request head read, in order.
    heads: Arc<Mutex<Vec<String>>>,
}

impl Raw {
    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The request lines seen, e.g. "GET /x".
    fn request_lines(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| format!("{} {}", method_of(h), path_of(h)))
            .collect()
    }
}

/// One accepted upstream connection.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
    /// 0 for the first connection accepted, and so on.
    index: usize,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    /// Reads the next request head (the gateway's requests here have no
    /// body); `None` when the connection ended first.
    async fn request(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                let head = String::from_utf8_lossy(&head).into_owned();
                self.heads.lock().unwrap().push(head.clone());
                return Some(head);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Closes with a TCP reset instead of a FIN.
    fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }
}

fn method_of(head: &str) -> &str {
    head.split(' ').next().unwrap_or("")
}

fn path_of(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// An upstream running `handler` on each accepted connection.
async fn raw_upstream<F, Fut>(handler: F) -> Raw
where
    F: Fn(Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw = Raw {
        addr: listener.local_addr().unwrap(),
        conns: Arc::new(AtomicUsize::new(0)),
        closed: Arc::new(AtomicUsize::new(0)),
        heads: Arc::new(Mutex::new(Vec::new())),
    };
    let (conns, closed, heads) = (raw.conns.clone(), raw.closed.clone(), raw.heads.clone());
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let index = conns.fetch_add(1, Ordering::SeqCst);
            let peer = Peer {
                stream,
                buf: Vec::new(),
                index,
                heads: heads.clone(),
            };
            let fut = handler(peer);
            let closed = closed.clone();
            tokio::spawn(async move {
                fut.await;
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    raw
}

/// What a scripted upstream does for one request.
struct Script {
    /// Written one after the other, `gap` apart.
    writes: Vec<Vec<u8>>,
    gap: Duration,
    then: Then,
}

/// What the scripted upstream does once its answer is written.
enum Then {
    /// Reads the next request on the same connection.
    Next,
    /// Closes the connection (FIN).
    Close,
    /// Waits this long, then closes (an idle keep-alive timeout).
    CloseAfter(Duration),
    /// Closes the connection with a TCP reset.
    Reset,
    /// Keeps the connection open and never writes again.
    Hang,
}

impl Script {
    /// `bytes` in one write; the connection stays open for more requests.
    fn once(bytes: impl Into<Vec<u8>>) -> Script {
        Script {
            writes: vec![bytes.into()],
            gap: Duration::ZERO,
            then: Then::Next,
        }
    }

    /// `pieces` written `gap` apart.
    fn pieces(pieces: Vec<Vec<u8>>, gap: Duration) -> Script {
        Script {
            writes: pieces,
            gap,
            then: Then::Next,
        }
    }

    fn then(mut self, then: Then) -> Script {
        self.then = then;
        self
    }
}

/// `bytes` cut into pieces of `size`.
fn cut(bytes: &[u8], size: usize) -> Vec<Vec<u8>> {
    bytes.chunks(size).map(<[u8]>::to_vec).collect()
}

/// A keep-alive upstream answering each request with `reply(method, path)`.
async fn scripted<F>(reply: F) -> Raw
where
    F: Fn(&str, &str) -> Script + Send + Sync + 'static,
{
    let reply = Arc::new(reply);
    raw_upstream(move |mut peer| {
        let reply = reply.clone();
        async move {
            while let Some(head) = peer.request().await {
                let script = reply(method_of(&head), path_of(&head));
                for (i, w) in script.writes.iter().enumerate() {
                    if i > 0 && !script.gap.is_zero() {
                        tokio::time::sleep(script.gap).await;
                    }
                    if peer.send(w).await.is_err() {
                        return;
                    }
                }
                match script.then {
                    Then::Next => {}
                    Then::Close => return,
                    Then::CloseAfter(d) => {
                        tokio::time::sleep(d).await;
                        return;
                    }
                    Then::Reset => return peer.reset(),
                    Then::Hang => std::future::pending::<()>().await,
                }
            }
        }
    })
    .await
}

/// A 200 with a Content-Length body.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `n` bytes of a pattern that does not repeat every few bytes.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

// ------------------------------------------------------------ 1. chunked

/// A chunked answer with chunk extensions (quoted ones too), upper- and
/// lower-case hex sizes, an extension on the last chunk, and trailers.
fn chunked_answer() -> (Vec<u8>, Vec<u8>) {
    let alphabet: String = ('a'..='z').collect();
    let big = "x".repeat(300);
    let wire = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\
         Trailer: x-checksum\r\n\r\n\
         5;ext=1\r\nhello\r\n\
         7;a=b;c=\"d e\"\r\n, world\r\n\
         1A\r\n{alphabet}\r\n\
         12c\r\n{big}\r\n\
         0;last\r\nx-checksum: 42\r\nx-more: 1\r\n\r\n"
    );
    let payload = format!("hello, world{alphabet}{big}");
    (wire.into_bytes(), payload.into_bytes())
}

#[tokio::test]
async fn chunked_body_is_decoded_exactly() {
    let up = scripted(|_, path| {
        let (wire, _) = chunked_answer();
        match path {
            // Head, sizes, extensions, data and trailer cut anywhere.
            "/split" => Script::pieces(cut(&wire, 17), Duration::from_millis(3)),
            // Transfer-Encoding wins over a Content-Length beside it.
            "/with-length" => {
                let text = String::from_utf8(wire).unwrap();
                Script::once(text.replacen("\r\n\r\n", "\r\nContent-Length: 3\r\n\r\n", 1))
            }
            _ => Script::once(wire),
        }
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;
    let (_, payload) = chunked_answer();

    for path in ["/one", "/split", "/with-length", "/one"] {
        let r = h2.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.body(),
            &payload[..],
            "{path}: got {:?}",
            String::from_utf8_lossy(r.body())
        );
        assert_eq!(r.header("content-type"), Some("text/plain"));
        // Framing headers of the upstream hop do not reach the client.
        assert!(r.headers.get("transfer-encoding").is_none());
        assert!(r.headers.get("trailer").is_none());
        // No chunk-framing byte or trailer text leaked into the payload.
        assert!(!r.text().contains("x-checksum"));
        assert_ne!(r.header("content-length"), Some("3"), "{path}");
    }
    // Each body was read through its trailer to the very end, so the one
    // connection went back to the pool every time.
    assert_eq!(up.conns(), 1, "{:?}", up.request_lines());
}

// ------------------------------------------------------------ 2. read until close

#[tokio::test]
async fn close_delimited_body_arrives_whole() {
    let body = pattern(100_000);
    let b = body.clone();
    let up = scripted(move |_, path| {
        let head: &[u8] = match path {
            "/http10" => b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        };
        let mut writes = vec![head.to_vec()];
        writes.extend(cut(&b, 20_000));
        Script::pieces(writes, Duration::from_millis(10)).then(Then::Close)
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    for path in ["/http10", "/http11-close", "/http10"] {
        let r = h2.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body().len(), body.len(), "{path}");
        assert!(r.body() == &body[..], "{path}: the payload differs");
    }
    // A close-delimited connection is never reused.
    assert_eq!(up.conns(), 3);
}

// ------------------------------------------------------------ 3. Content-Length in pieces

#[tokio::test]
async fn content_length_body_in_delayed_pieces_arrives_whole() {
    let body = pattern(50_000);
    let b = body.clone();
    let up = scripted(move |_, _| {
        let mut writes = vec![
            b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
            b"ngth: 50000\r\nX-Split: yes\r\n\r\n".to_vec(),
        ];
        // 1 byte, then uneven pieces.
        writes.push(b[..1].to_vec());
        writes.extend(cut(&b[1..], 12_345));
        Script::pieces(writes, Duration::from_millis(25))
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    for _ in 0..2 {
        let r = h2.get("/slowly").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("50000"));
        assert_eq!(r.header("x-split"), Some("yes"));
        assert_eq!(r.body().len(), body.len());
        assert!(r.body() == &body[..], "the payload differs");
    }
    assert_eq!(up.conns(), 1, "the connection went back to the pool");
}

// ------------------------------------------------------------ 4. HEAD

#[tokio::test]
async fn head_passes_status_and_headers_without_a_body() {
    let up = scripted(|method, _| {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\
                    X-Custom: yes\r\nETag: \"v1\"\r\n\r\n";
        if method == "HEAD" {
            Script::once(head)
        } else {
            Script::once(format!("{head}{}", "b".repeat(1234)))
        }
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    let r = h2.fetch("HEAD", "/file").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1234"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert!(r.body().is_empty(), "{:?}", r.body());
    assert_eq!(up.request_lines(), ["HEAD /file"]);

    // The gateway did not wait for 1234 bytes after the HEAD answer, nor
    // take the next answer for them.
    let r = h2.get("/file").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b".repeat(1234));
    let r = h2.fetch("HEAD", "/file").await;
    assert_eq!(r.status, 200);
    assert!(r.body().is_empty());
}

// ------------------------------------------------------------ 5. 204 and 304

#[tokio::test]
async fn no_content_and_not_modified_pass_without_a_body() {
    let up = scripted(|_, path| match path {
        "/204" => Script::once("HTTP/1.1 204 No Content\r\nX-Deleted: 1\r\n\r\n"),
        "/304" => Script::once(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=60\r\n\r\n",
        ),
        // A 304 may carry the Content-Length of the representation.
        "/304-length" => Script::once(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nContent-Length: 1234\r\n\r\n",
        ),
        _ => Script::once(ok("after")),
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    let r = h2.get("/204").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-deleted"), Some("1"));
    assert!(r.body().is_empty());
    let r = h2.get("/after").await;
    assert_eq!(r.text(), "after");

    let r = h2.get("/304").await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert!(r.body().is_empty());
    let r = h2.get("/after").await;
    assert_eq!(r.text(), "after");

    let r = h2.get("/304-length").await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v2\""));
    assert!(r.body().is_empty());
    let r = h2.get("/after").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "after");
}

/// Answers without a body (HEAD, 204, 304, Content-Length: 0) end where
/// their head ends: the connection is as reusable as after any other
/// complete answer.
#[tokio::test]
async fn bodiless_answers_leave_the_connection_in_the_pool() {
    let up = scripted(|method, path| match (method, path) {
        ("HEAD", _) => Script::once("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        (_, "/204") => Script::once("HTTP/1.1 204 No Content\r\n\r\n"),
        (_, "/304") => Script::once("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
        (_, "/empty") => Script::once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        _ => Script::once(ok("hello")),
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    for (method, path, status) in [
        ("GET", "/a", 200),
        ("HEAD", "/a", 200),
        ("GET", "/204", 204),
        ("GET", "/304", 304),
        ("GET", "/empty", 200),
        ("GET", "/a", 200),
    ] {
        let r = h2.fetch(method, path).await;
        assert_eq!(r.status, status, "{method} {path}");
        assert_eq!(
            up.conns(),
            1,
            "{method} {path} used a new upstream connection: {:?}",
            up.request_lines()
        );
    }
}

// ------------------------------------------------------------ 6. pool reuse and retry

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let up = scripted(|_, path| match path {
        // Answers, then closes the idle connection (a keep-alive timeout).
        "/bye" => Script::once(ok("bye")).then(Then::CloseAfter(Duration::from_millis(50))),
        _ => Script::once(ok(path)),
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    for i in 0..20 {
        let path = format!("/n/{i}");
        let r = h2.get(&path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), path);
    }
    assert_eq!(up.heads().len(), 20);
    assert_eq!(up.conns(), 1, "20 requests, one upstream connection");

    // The upstream closes the pooled connection while it is idle.
    let r = h2.get("/bye").await;
    assert_eq!(r.text(), "bye");
    assert_eq!(up.conns(), 1);
    assert!(
        eventually(LIMIT, || up.closed() == 1).await,
        "the upstream did not close"
    );
    // Give the FIN time to arrive at the gateway's socket.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let r = h2.get("/after-close").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "/after-close");
    assert_eq!(up.conns(), 2);
    // And the new connection is pooled in turn.
    let r = h2.get("/again").await;
    assert_eq!(r.text(), "/again");
    assert_eq!(up.conns(), 2);
}

/// The upstream's first connection answers one request, then takes the
/// next one and closes without answering (the keep-alive race: the server
/// closed its idle connection just as the request went out), with a FIN
/// or a reset. The request is sent again on a new connection.
async fn retry_case(reset: bool) {
    let up = raw_upstream(move |mut peer| async move {
        while let Some(head) = peer.request().await {
            if peer.index == 0 && path_of(&head) != "/first" {
                if reset {
                    peer.reset();
                }
                return;
            }
            let _ = peer.send(&ok(path_of(&head))).await;
        }
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    let r = h2.get("/first").await;
    assert_eq!(r.text(), "/first");
    let r = h2.get("/second").await;
    assert_eq!(r.status, 200, "reset {reset}: {}", r.text());
    assert_eq!(r.text(), "/second");
    assert_eq!(
        up.request_lines(),
        ["GET /first", "GET /second", "GET /second"],
        "reset {reset}: sent once on the pooled connection, once on a new one"
    );
    assert_eq!(up.conns(), 2);
    let r = h2.get("/third").await;
    assert_eq!(r.text(), "/third");
    assert_eq!(up.conns(), 2);
}

#[tokio::test]
async fn a_pooled_connection_closed_under_the_request_is_retried_once() {
    retry_case(false).await;
    retry_case(true).await;
}

/// A new connection that closes without an answer is not retried: 502.
#[tokio::test]
async fn a_fresh_connection_closed_without_an_answer_is_502() {
    let up = raw_upstream(|mut peer| async move {
        let _ = peer.request().await;
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;
    let r = h2.get("/").await;
    r.assert_json_detail(502);
    assert_eq!(up.conns(), 1, "no retry on a fresh connection");
    assert_eq!(up.heads().len(), 1);
}

// ------------------------------------------------------------ 7. Connection: close

#[tokio::test]
async fn connection_close_and_http10_answers_are_not_reused() {
    // The upstream keeps every connection open and would answer a further
    // request on it: only the gateway's own rules decide reuse.
    let up = scripted(|_, path| match path {
        "/close" => {
            Script::once("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nclose")
        }
        "/close-mixed" => Script::once(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Keep-Alive, CLOSE\r\n\r\nmixed",
        ),
        "/http10" => Script::once("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nh10"),
        "/http10-keep-alive" => Script::once(
            "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nka!",
        ),
        _ => Script::once(ok(path)),
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    let r = h2.get("/close").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "close");
    assert!(r.headers.get("connection").is_none());
    assert_eq!(up.conns(), 1);

    let r = h2.get("/n").await;
    assert_eq!(r.text(), "/n");
    assert_eq!(up.conns(), 2, "Connection: close was honoured");

    // Taken from the pool (conn 2), then not given back.
    let r = h2.get("/close-mixed").await;
    assert_eq!(r.text(), "mixed");
    assert_eq!(up.conns(), 2);
    let r = h2.get("/n").await;
    assert_eq!(r.text(), "/n");
    assert_eq!(up.conns(), 3);

    // HTTP/1.0 without keep-alive: not reusable either.
    let r = h2.get("/http10").await;
    assert_eq!(r.text(), "h10");
    assert_eq!(up.conns(), 3);
    let r = h2.get("/n").await;
    assert_eq!(r.text(), "/n");
    assert_eq!(up.conns(), 4);

    // HTTP/1.0 with keep-alive: reused.
    let r = h2.get("/http10-keep-alive").await;
    assert_eq!(r.text(), "ka!");
    let r = h2.get("/n").await;
    assert_eq!(r.text(), "/n");
    assert_eq!(up.conns(), 4);
}

// ------------------------------------------------------------ 8. 1xx

#[tokio::test]
async fn informational_answers_are_skipped() {
    let up = scripted(|_, path| match path {
        "/hints" => Script::pieces(
            vec![
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: 1\r\n\r\nhello".to_vec(),
            ],
            Duration::from_millis(50),
        ),
        // Several, all in one write with the final answer.
        _ => Script::once(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmany",
        ),
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    let r = h2.get("/hints").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("x-final"), Some("1"));
    assert!(r.headers.get("link").is_none(), "the 103's headers leaked");

    let r = h2.get("/many").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "many");
    assert!(r.headers.get("link").is_none());
    assert_eq!(up.conns(), 1, "1xx answers do not spoil the connection");
}

// ------------------------------------------------------------ 9. malformed heads

#[tokio::test]
async fn malformed_answers_are_502_json() {
    let cases: &[(&str, &[u8])] = &[
        ("/bad-status", b"HTTP/1.1 abc\r\n\r\n"),
        ("/not-http", b"garbage\r\n\r\n"),
        (
            "/conflicting-length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "/negative-length",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        ),
        (
            "/listed-length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ),
        ("/bad-header", b"HTTP/1.1 200 OK\r\nNo Colon Here\r\n\r\n"),
        (
            "/unasked-switch",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ),
        ("/cut-head", b"HTTP/1.1 200 OK\r\nContent-Le"),
    ];
    let table: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(p, b)| (p.to_string(), b.to_vec()))
        .collect();
    let up = scripted(move |_, path| match table.iter().find(|(p, _)| p == path) {
        Some((_, bytes)) => Script::once(bytes.clone()).then(Then::Close),
        None => Script::once(ok("fine")),
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    for (path, _) in cases {
        let r = h2.get(path).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        r.assert_json_detail(502);
        // The gateway (and this HTTP/2 connection) carry on.
        let r = h2.get("/fine").await;
        assert_eq!(r.status, 200, "after {path}");
        assert_eq!(r.text(), "fine");
    }
}

// ------------------------------------------------------------ 10. timeout

#[tokio::test]
async fn an_upstream_that_never_answers_is_504_after_the_timeout() {
    let up = scripted(|_, path| match path {
        "/hang" => Script::pieces(vec![], Duration::ZERO).then(Then::Hang),
        // An informational answer does not count as the response head.
        "/hint-then-hang" => {
            Script::once("HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n").then(Then::Hang)
        }
        _ => Script::once(ok("fast")),
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "300ms").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    for path in ["/hang", "/hint-then-hang"] {
        let start = Instant::now();
        let r = timeout(Duration::from_secs(3), h2.get(path))
            .await
            .unwrap_or_else(|_| panic!("{path}: no 504 within 3s"));
        let took = start.elapsed();
        r.assert_json_detail(504);
        assert!(
            took >= Duration::from_millis(250),
            "{path}: 504 after only {took:?}"
        );
        assert!(
            took < Duration::from_millis(2000),
            "{path}: 504 after {took:?}"
        );
    }
    let r = h2.get("/fast").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "fast");
    assert_eq!(up.heads().len(), 3);
}

// ------------------------------------------------------------ 11. broken bodies

#[tokio::test]
async fn a_body_broken_off_is_an_error_not_a_short_body() {
    let up = scripted(|_, path| {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let long = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        let until_close = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        let part = pattern(40_000);
        let gap = Duration::from_millis(20);
        match path {
            "/length-fin" => Script::pieces(vec![long, part], gap).then(Then::Close),
            "/length-reset" => Script::pieces(vec![long, part], gap).then(Then::Reset),
            // Without a length HTTP/2 cannot tell a short body by itself:
            // only the gateway can.
            "/chunked-fin" => {
                Script::pieces(vec![chunked, b"5\r\nhello\r\n".to_vec()], gap).then(Then::Close)
            }
            "/chunked-reset" => {
                Script::pieces(vec![chunked, b"5\r\nhello\r\n".to_vec()], gap).then(Then::Reset)
            }
            "/chunked-mid-chunk" => {
                Script::pieces(vec![chunked, b"a\r\nhel".to_vec()], gap).then(Then::Close)
            }
            "/chunked-garbage" => {
                Script::pieces(vec![chunked, b"5\r\nhello\r\nzz\r\n".to_vec()], gap)
                    .then(Then::Hang)
            }
            "/until-close-reset" => Script::pieces(vec![until_close, part], gap).then(Then::Reset),
            _ => Script::once(ok("fine")),
        }
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;

    for path in [
        "/length-fin",
        "/length-reset",
        "/chunked-fin",
        "/chunked-reset",
        "/chunked-mid-chunk",
        "/chunked-garbage",
        "/until-close-reset",
    ] {
        match h2.try_fetch("GET", path).await {
            // Reset before the head: acceptable too.
            Err(_) => {}
            Ok(r) => match &r.body {
                Err(_) => assert_eq!(r.status, 200, "{path}"),
                Ok(b) => panic!(
                    "{path}: status {}, a body of {} bytes passed off as complete",
                    r.status,
                    b.len()
                ),
            },
        }
        // Only that stream failed: the HTTP/2 connection carries on.
        let r = h2.get("/fine").await;
        assert_eq!(r.status, 200, "after {path}");
        assert_eq!(r.text(), "fine");
    }
}

/// A chunk-size line with no digits is malformed (RFC 9112 7.1:
/// `chunk-size = 1*HEXDIG`); it must not be taken for the last chunk.
#[tokio::test]
async fn a_chunk_size_line_without_digits_is_not_the_end_of_the_body() {
    let up = scripted(|_, path| {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        match path {
            "/empty-size" => {
                Script::once(format!("{head}5\r\nhello\r\n\r\n\r\n")).then(Then::Close)
            }
            "/ext-only" => {
                Script::once(format!("{head}5\r\nhello\r\n;x=1\r\n\r\n")).then(Then::Close)
            }
            _ => Script::once(ok("fine")),
        }
    })
    .await;
    let (gw, ca) = tls_gateway(&up, "2s").await;
    let mut h2 = H2::connect(&gw, &ca).await;
    let mut passed_off = Vec::new();
    for path in ["/empty-size", "/ext-only"] {
        // Broken framing that arrives with the head is a 502; later, the
        // stream is broken off. Never a 200 with a whole-looking body.
        if let Ok(Got {
            status,
            body: Ok(b),
            ..
        }) = h2.try_fetch("GET", path).await
        {
            if status != 502 {
                passed_off.push(format!(
                    "{path}: {status} {:?}",
                    String::from_utf8_lossy(&b)
                ));
            }
        }
    }
    assert!(
        passed_off.is_empty(),
        "bodies passed off as complete: {passed_off:?}"
    );
}
