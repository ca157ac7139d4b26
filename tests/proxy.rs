//! Black-box tests of the reverse proxy: what the upstream really receives
//! and what the client really gets back, through a gateway started
//! in-process on 127.0.0.1:0 against a recording upstream.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Every wait in these tests is bounded by this unless said otherwise.
const LIMIT: Duration = Duration::from_secs(20);

fn empty_req(method: &str, path: &str) -> http::request::Builder {
    req(method, path)
}

fn no_body() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// Sends `req` (any body type) over a new HTTP/1.1 connection and returns
/// the response head with its still-streaming body.
async fn send_streaming<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// A body of `chunks` chunks of `chunk` bytes each, made as it is sent and
/// with no declared length (so it goes out chunked).
fn generated_body(
    chunks: usize,
    chunk: usize,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let piece = Bytes::from(vec![b'u'; chunk]);
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let piece = piece.clone();
        async move { (i < chunks).then(|| (Ok(Frame::data(piece)), i + 1)) }
    });
    StreamBody::new(stream)
}

fn assert_json_detail(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    let detail = j["detail"].as_str().unwrap_or_else(|| panic!("{j}"));
    assert!(!detail.is_empty());
    assert_eq!(j.as_object().unwrap().len(), 1, "only detail: {j}");
}

// ------------------------------------------------------------ forwarding

#[tokio::test]
async fn proxies_and_echoes() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up.url())).await;
    let r = get(gw.addr, "/api/x?a=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["path"], "/api/x");
    assert_eq!(j["query"], "a=1");
    assert_eq!(up.last().headers["x-forwarded-for"], "127.0.0.1");
    assert!(r.header("x-upstream-hop").is_none());
    assert!(r.header("keep-alive").is_none());
}

#[tokio::test]
async fn method_path_query_and_body_are_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up.url())).await;
    for (i, method) in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .into_iter()
        .enumerate()
    {
        let body = "b".repeat(i * 7);
        let r = send(
            gw.addr,
            req(method, "/submit/a%20b/c?x=1&y=%2F&x=2")
                .header("content-type", "text/plain")
                .header("x-custom", "kept")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        let seen = up.last();
        assert_eq!(seen.method, method);
        assert_eq!(seen.path, "/submit/a%20b/c");
        assert_eq!(seen.query.as_deref(), Some("x=1&y=%2F&x=2"));
        assert_eq!(seen.body_len, body.len() as u64, "{method}");
        assert_eq!(seen.headers["x-custom"], "kept");
        assert_eq!(seen.headers["content-type"], "text/plain");
        if !body.is_empty() {
            // A declared length is passed on as such, not re-chunked.
            assert_eq!(seen.headers["content-length"], body.len().to_string());
            assert!(seen.headers.get("transfer-encoding").is_none());
        }
    }
    assert_eq!(up.count(), 6);

    // HEAD: the upstream sees HEAD and the client gets no body.
    let r = send(gw.addr, empty_req("HEAD", "/h").body(no_body()).unwrap()).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(up.last().method, "HEAD");
}

#[tokio::test]
async fn strip_prefix_removes_the_route_prefix_only_on_that_route() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[log]
access_log = false
[upstreams.app]
url = "{}"
[[routes]]
path = "/api/"
upstream = "app"
strip_prefix = true
[[routes]]
path = "/"
upstream = "app"
"#,
        up.url()
    ))
    .await;

    let cases = [
        ("/api/v1/users?page=2", "/v1/users", Some("page=2")),
        ("/api/", "/", None),
        ("/api", "/", None),
        ("/apix/y", "/apix/y", None),
        ("/other/api/z?q", "/other/api/z", Some("q")),
    ];
    for (sent, want_path, want_query) in cases {
        let r = get(gw.addr, sent).await;
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        let seen = up.last();
        assert_eq!(seen.path, want_path, "{sent}");
        assert_eq!(seen.query.as_deref(), want_query, "{sent}");
    }
}

fn host_config(upstream_url: &str, preserve: bool) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[log]
access_log = false
[upstreams.app]
url = "{upstream_url}"
preserve_host = {preserve}
[[routes]]
path = "/"
upstream = "app"
"#
    )
}

#[tokio::test]
async fn preserve_host_true_forwards_the_client_host() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&host_config(&up.url(), true)).await;
    let r = send(
        gw.addr,
        Request::get("/")
            .header("host", "www.example.org:8443")
            .body(no_body())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
    assert_eq!(seen.headers["host"], "www.example.org:8443");
    assert_eq!(seen.headers["x-forwarded-host"], "www.example.org:8443");
}

#[tokio::test]
async fn preserve_host_false_sends_the_upstream_host() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&host_config(&up.url(), false)).await;
    let r = get(gw.addr, "/").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
    assert_eq!(seen.headers["host"], up.addr.to_string());
    // The client's Host is still known to the app.
    assert_eq!(seen.headers["x-forwarded-host"], "gateway.test");
}

#[tokio::test]
async fn unix_socket_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start_unix(&dir.path().join("app.sock")).await;
    let gw = Gateway::start_in(dir, &proxy_config("unix:{dir}/app.sock")).await;
    for i in 0..3 {
        let r = send(
            gw.addr,
            req("POST", &format!("/over/unix?n={i}"))
                .body(Full::new(Bytes::from_static(b"0123456789")))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["path"], "/over/unix");
    }
    assert_eq!(up.count(), 3);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.query.as_deref(), Some("n=2"));
    assert_eq!(seen.body_len, 10);
    assert_eq!(seen.headers["host"], "gateway.test");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

// ------------------------------------------------------------ hop-by-hop

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up.url())).await;
    let r = send(
        gw.addr,
        req("GET", "/hop")
            .header("connection", "keep-alive, X-Conn-Named")
            .header("connection", "x-other-named")
            .header("x-conn-named", "1")
            .header("x-other-named", "2")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("upgrade", "h2c")
            .header("proxy-connection", "keep-alive")
            .header("proxy-authorization", "Basic dXNlcjpwYXNz")
            .header("proxy-authenticate", "Basic")
            .header("x-end-to-end", "stays")
            .body(no_body())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    for name in [
        "x-conn-named",
        "x-other-named",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    // Connection may be set by the gateway's own client, but never carries
    // the client's tokens.
    for v in seen.headers.get_all("connection") {
        let v = v.to_str().unwrap().to_ascii_lowercase();
        assert!(!v.contains("named"), "client Connection leaked: {v}");
    }
    assert_eq!(seen.headers["x-end-to-end"], "stays");
}

/// An upstream that answers every request with a set of hop-by-hop
/// headers next to one end-to-end header.
async fn hop_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    let r = Response::builder()
                        .header("connection", "keep-alive, x-named-one")
                        .header("connection", "X-Named-Two")
                        .header("x-named-one", "1")
                        .header("x-named-two", "2")
                        .header("keep-alive", "timeout=5, max=100")
                        .header("te", "trailers")
                        .header("trailer", "x-checksum")
                        .header("upgrade", "h2c")
                        .header("proxy-connection", "keep-alive")
                        .header("proxy-authenticate", "Basic realm=\"up\"")
                        .header("proxy-authorization", "Basic eDp5")
                        .header("x-end-to-end", "stays")
                        .body(Full::new(Bytes::from_static(b"hop body")))
                        .unwrap();
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    let up = hop_upstream().await;
    let gw = Gateway::start(&proxy_config(&format!("http://{up}"))).await;
    let r = get(gw.addr, "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, "hop body");
    for name in [
        "x-named-one",
        "x-named-two",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        assert!(
            r.headers.get(name).is_none(),
            "{name} reached the client: {:?}",
            r.headers
        );
    }
    for v in r.headers.get_all("connection") {
        let v = v.to_str().unwrap().to_ascii_lowercase();
        assert!(!v.contains("named"), "upstream Connection leaked: {v}");
    }
    assert_eq!(r.header("x-end-to-end"), Some("stays"));

    // The echo upstream's hop-by-hop headers are dropped as well.
    let echo = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&echo.url())).await;
    let r = get(gw.addr, "/").await;
    assert_eq!(r.status, 200);
    for name in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(r.headers.get(name).is_none(), "{name}: {:?}", r.headers);
    }
    assert_eq!(r.header("content-type"), Some("application/json"));
}

// ------------------------------------------------------------ forwarding headers

fn spoofing_request(path: &str) -> Request<Full<Bytes>> {
    req("GET", path)
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-for", "7.7.7.7, 8.8.8.8")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-real-ip", "6.6.6.6")
        .body(no_body())
        .unwrap()
}

fn one(seen: &Seen, name: &str) -> String {
    let all: Vec<_> = seen.headers.get_all(name).iter().collect();
    assert_eq!(all.len(), 1, "{name}: {all:?}");
    all[0].to_str().unwrap().to_string()
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up.url())).await;
    let r = send(gw.addr, spoofing_request("/xff")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(one(&seen, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&seen, "x-forwarded-proto"), "http");
    assert_eq!(one(&seen, "x-forwarded-host"), "gateway.test");
    assert_eq!(one(&seen, "x-real-ip"), "127.0.0.1");

    // Without any client value the same headers are set.
    let r = get(gw.addr, "/plain").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(one(&seen, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&seen, "x-forwarded-proto"), "http");
    assert_eq!(one(&seen, "x-real-ip"), "127.0.0.1");
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept_and_appended_to() {
    let up = Upstream::start().await;
    let config = proxy_config(&up.url()).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let gw = Gateway::start(&config).await;
    let r = send(gw.addr, spoofing_request("/xff")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        one(&seen, "x-forwarded-for"),
        "6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1"
    );
    assert_eq!(one(&seen, "x-forwarded-proto"), "https");
    assert_eq!(one(&seen, "x-forwarded-host"), "evil.example");
    assert_eq!(one(&seen, "x-real-ip"), "6.6.6.6");

    // A trusted peer that sent none gets the gateway's own values.
    let r = get(gw.addr, "/plain").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(one(&seen, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&seen, "x-forwarded-proto"), "http");
    assert_eq!(one(&seen, "x-forwarded-host"), "gateway.test");
    assert_eq!(one(&seen, "x-real-ip"), "127.0.0.1");
}

#[tokio::test]
async fn a_trusted_network_that_does_not_contain_the_peer_is_not_trusted() {
    let up = Upstream::start().await;
    let config = proxy_config(&up.url()).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.2/32\"]",
    );
    let gw = Gateway::start(&config).await;
    let r = send(gw.addr, spoofing_request("/xff")).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(one(&seen, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&seen, "x-forwarded-proto"), "http");
    assert_eq!(one(&seen, "x-real-ip"), "127.0.0.1");
}

// ------------------------------------------------------------ request id

#[tokio::test]
async fn a_valid_request_id_is_kept_and_echoed() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up.url())).await;
    let max = "a".repeat(128);
    for id in ["abc-1.2_3", "Z", max.as_str()] {
        let r = send(
            gw.addr,
            req("GET", "/id")
                .header("x-request-id", id)
                .body(no_body())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-request-id"), Some(id));
        assert_eq!(one(&up.last(), "x-request-id"), id);
    }
}

#[tokio::test]
async fn an_invalid_or_missing_request_id_is_replaced_by_a_uuid() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up.url())).await;
    let too_long = "a".repeat(129);
    let mut ids = Vec::new();
    for bad in [
        Some("has space"),
        Some(""),
        Some(too_long.as_str()),
        Some("semi;colon"),
        Some("slash/x"),
        None,
    ] {
        let mut b = req("GET", "/id");
        if let Some(v) = bad {
            b = b.header("x-request-id", v);
        }
        let r = send(gw.addr, b.body(no_body()).unwrap()).await;
        assert_eq!(r.status, 200);
        let echoed = r.header("x-request-id").unwrap().to_string();
        assert!(
            uuid::Uuid::parse_str(&echoed).is_ok(),
            "{bad:?} -> {echoed:?}"
        );
        assert_eq!(one(&up.last(), "x-request-id"), echoed, "{bad:?}");
        ids.push(echoed);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "ids must be fresh: {ids:?}");
}

#[tokio::test]
async fn gateway_errors_carry_the_request_id_too() {
    let gw = Gateway::start(&proxy_config(&format!("http://{}", dead_addr().await))).await;
    let r = send(
        gw.addr,
        req("GET", "/")
            .header("x-request-id", "trace-me")
            .body(no_body())
            .unwrap(),
    )
    .await;
    assert_json_detail(&r, 502);
    assert_eq!(r.header("x-request-id"), Some("trace-me"));
}

// ------------------------------------------------------------ upstream failures

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn upstream_down_is_502_json() {
    let gw = Gateway::start(&proxy_config(&format!("http://{}", dead_addr().await))).await;
    let r = timeout(LIMIT, get(gw.addr, "/anything")).await.unwrap();
    assert_json_detail(&r, 502);

    // And a unix socket that does not exist.
    let gw = Gateway::start(&proxy_config("unix:{dir}/nobody.sock")).await;
    let r = timeout(LIMIT, get(gw.addr, "/anything")).await.unwrap();
    assert_json_detail(&r, 502);
}

/// An upstream that accepts and then closes without answering.
#[tokio::test]
async fn upstream_closing_without_an_answer_is_502_json() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let gw = Gateway::start(&proxy_config(&format!("http://{addr}"))).await;
    let r = timeout(LIMIT, get(gw.addr, "/")).await.unwrap();
    assert_json_detail(&r, 502);
}

#[tokio::test]
async fn slow_upstream_is_504_json() {
    let up = Upstream::start().await;
    let config = proxy_config(&up.url()).replace("timeout = \"2s\"", "timeout = \"300ms\"");
    let gw = Gateway::start(&config).await;
    // The upstream answers after 2s; the gateway must give up long before.
    let r = timeout(Duration::from_millis(1500), get(gw.addr, "/slow/2000"))
        .await
        .expect("no 504 before the upstream answered");
    assert_json_detail(&r, 504);
    assert_eq!(up.count(), 1, "the request did reach the upstream");

    // A fast request on the same gateway still works.
    let r = get(gw.addr, "/slow/10").await;
    assert_eq!(r.status, 200);
}

// ------------------------------------------------------------ body limits

fn limited_config(upstream_url: &str, max_body: &str) -> String {
    proxy_config(upstream_url).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\nmax_body_bytes = \"{max_body}\""),
    )
}

#[tokio::test]
async fn oversized_body_with_content_length_is_413() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&limited_config(&up.url(), "1KiB")).await;
    let r = send(
        gw.addr,
        req("POST", "/upload")
            .body(Full::new(Bytes::from(vec![b'a'; 2048])))
            .unwrap(),
    )
    .await;
    assert_json_detail(&r, 413);
    assert_eq!(up.count(), 0, "a declared oversize body is never forwarded");

    // Exactly at the limit passes.
    let r = send(
        gw.addr,
        req("POST", "/upload")
            .body(Full::new(Bytes::from(vec![b'a'; 1024])))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body_len, 1024);
}

#[tokio::test]
async fn oversized_chunked_body_is_413() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&limited_config(&up.url(), "1KiB")).await;
    // 8 chunks of 512 bytes, no Content-Length: the limit is found while
    // streaming.
    let resp = timeout(
        LIMIT,
        send_streaming(
            gw.addr,
            req("POST", "/upload").body(generated_body(8, 512)).unwrap(),
        ),
    )
    .await
    .unwrap();
    let r = collect(resp).await;
    assert_json_detail(&r, 413);
    for s in up.seen.lock().unwrap().iter() {
        assert!(s.body_len <= 1024, "upstream got {} bytes", s.body_len);
    }

    // A chunked body under the limit is forwarded whole.
    let resp = timeout(
        LIMIT,
        send_streaming(
            gw.addr,
            req("POST", "/small").body(generated_body(2, 500)).unwrap(),
        ),
    )
    .await
    .unwrap();
    let r = collect(resp).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().path, "/small");
    assert_eq!(up.last().body_len, 1000);
}

#[tokio::test]
async fn large_streamed_upload_reaches_the_upstream_whole() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &limited_config(&up.url(), "100MiB").replace("timeout = \"2s\"", "timeout = \"60s\""),
    )
    .await;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 256; // 64 MiB
    let resp = timeout(
        Duration::from_secs(120),
        send_streaming(
            gw.addr,
            req("PUT", "/big")
                .body(generated_body(CHUNKS, CHUNK))
                .unwrap(),
        ),
    )
    .await
    .expect("upload did not finish in time");
    let r = collect(resp).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.path, "/big");
    assert_eq!(seen.body_len, (CHUNK * CHUNKS) as u64);
    assert_eq!(r.json()["body_len"], (CHUNK * CHUNKS) as u64);
}

#[tokio::test]
async fn large_download_streams() {
    let up = Upstream::start().await;
    let gw =
        Gateway::start(&proxy_config(&up.url()).replace("timeout = \"2s\"", "timeout = \"60s\""))
            .await;
    const N: u64 = 32 * 1024 * 1024;
    let resp = timeout(
        LIMIT,
        send_streaming(
            gw.addr,
            req("GET", &format!("/bytes/{N}")).body(no_body()).unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], N.to_string());
    // Count frame by frame: the body arrives in many pieces, never as one.
    let mut body = resp.into_body();
    let mut total = 0u64;
    let mut frames = 0u32;
    while let Some(frame) = timeout(LIMIT, body.frame()).await.unwrap() {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            assert!(d.iter().all(|&b| b == b'x'));
            total += d.len() as u64;
            frames += 1;
        }
    }
    assert_eq!(total, N);
    assert!(frames > 1, "body came in {frames} frame(s)");
}

// ------------------------------------------------------------ upgrades

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let ws = ws_echo_upstream().await;
    let gw = Gateway::start(&proxy_config(&format!("http://{ws}"))).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut socket, resp) = timeout(
        LIMIT,
        tokio_tungstenite::client_async("ws://gateway.test/chat?room=1", stream),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers()["upgrade"]
        .to_str()
        .unwrap()
        .eq_ignore_ascii_case("websocket"));

    for i in 0..5 {
        let text = format!("hello {i}");
        socket.send(Message::text(text.clone())).await.unwrap();
        let back = timeout(LIMIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(text));
    }
    let blob = vec![7u8; 100_000];
    socket.send(Message::binary(blob.clone())).await.unwrap();
    let back = timeout(LIMIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::binary(blob));
    socket.close(None).await.unwrap();
}

// ------------------------------------------------------------ HTTP/2 over TLS

#[tokio::test]
async fn forwarding_headers_over_http2_and_tls() {
    let up = Upstream::start().await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.write_leaf(dir.path(), "site", &["gateway.test", "localhost"]);
    let config = proxy_config(&up.url()).replace(
        "[log]",
        "[tls]\ncert = \"{dir}/site.crt\"\nkey = \"{dir}/site.key\"\n\n[log]",
    );
    let gw = Gateway::start_in(dir, &config).await;

    let r = send_tls(
        gw.addr,
        ca.client_config(&[b"h2"]),
        "gateway.test",
        req("POST", "/h2/path?x=1")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", "evil.example")
            .header("x-real-ip", "6.6.6.6")
            .header("x-request-id", "h2-req")
            .body(Full::new(Bytes::from_static(b"h2 body")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("h2-req"));
    // HTTP/2 forbids connection-specific headers in responses.
    assert!(r.headers.get("connection").is_none());
    assert!(r.headers.get("keep-alive").is_none());
    assert!(r.headers.get("x-upstream-hop").is_none());

    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/h2/path");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    assert_eq!(seen.body_len, 7);
    assert_eq!(one(&seen, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&seen, "x-forwarded-proto"), "https");
    assert_eq!(one(&seen, "x-forwarded-host"), "gateway.test");
    assert_eq!(one(&seen, "x-real-ip"), "127.0.0.1");
    assert_eq!(one(&seen, "x-request-id"), "h2-req");
    // preserve_host: the :authority becomes the upstream's Host.
    assert_eq!(one(&seen, "host"), "gateway.test");

    // HTTP/1.1 over TLS says https too.
    let r = send_tls(
        gw.addr,
        ca.client_config(&[b"http/1.1"]),
        "gateway.test",
        req("GET", "/h1").body(no_body()).unwrap(),
    )
    .await;
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(one(&seen, "x-forwarded-proto"), "https");
    assert_eq!(one(&seen, "x-forwarded-for"), "127.0.0.1");
}

// ------------------------------------------------------------ slow clients on the proxy path

/// A body of `chunks` chunks of `chunk` bytes, one every `gap`.
fn paced_body(
    chunks: usize,
    chunk: usize,
    gap: Duration,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let piece = Bytes::from(vec![b'p'; chunk]);
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let piece = piece.clone();
        async move {
            if i >= chunks {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            Some((Ok(Frame::data(piece)), i + 1))
        }
    });
    StreamBody::new(stream)
}

#[tokio::test]
async fn an_upload_slower_than_the_upstream_timeout_still_gets_through() {
    let up = Upstream::start().await;
    let config = proxy_config(&up.url()).replace("timeout = \"2s\"", "timeout = \"500ms\"");
    let gw = Gateway::start(&config).await;
    // 8 chunks 150ms apart: 1s+ of upload, never 500ms without progress.
    let resp = timeout(
        LIMIT,
        send_streaming(
            gw.addr,
            req("POST", "/paced")
                .body(paced_body(8, 1000, Duration::from_millis(150)))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let r = collect(resp).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body_len, 8000);
}

#[tokio::test]
async fn a_stalled_request_body_is_not_held_forever() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let config = proxy_config(&up.url()).replace("timeout = \"2s\"", "timeout = \"500ms\"");
    let gw = Gateway::start(&config).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /stall HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    // Then nothing: the gateway must answer (or close) on its own.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let answered = timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "stalled upload held open");
    // The client is at fault: 408, not a 504 that blames the upstream.
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up.url())).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /expect HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 100"), "{text:?}");
    s.write_all(&[b'e'; 5000]).await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&got).contains("\"body_len\":5000") {
                break;
            }
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert_eq!(up.last().body_len, 5000);
}

#[tokio::test]
async fn an_ipv4_client_on_a_dual_stack_listener_is_named_by_its_ipv4_address() {
    let up = Upstream::start().await;
    let config = proxy_config(&up.url()).replace("127.0.0.1:0", "[::]:0");
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("no IPv6 here; skipping");
        return;
    }
    let gw = Gateway::start(&config).await;
    let v4: SocketAddr = format!("127.0.0.1:{}", gw.addr.port()).parse().unwrap();
    let Ok(Ok(_)) = timeout(LIMIT, TcpStream::connect(v4)).await else {
        eprintln!("listener is IPv6-only here; skipping");
        return;
    };
    let r = get(v4, "/who").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
}

#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_is_504() {
    // Accepts, never reads, never answers: the upload backs up in the
    // upstream's socket, and the gateway must blame the upstream.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            h.lock().unwrap().push(s);
        }
    });
    let config = limited_config(&format!("http://{addr}"), "100MiB")
        .replace("timeout = \"2s\"", "timeout = \"500ms\"");
    let gw = Gateway::start(&config).await;
    let resp = timeout(
        LIMIT,
        send_streaming(
            gw.addr,
            req("POST", "/sink")
                .body(generated_body(64, 256 * 1024))
                .unwrap(),
        ),
    )
    .await
    .expect("no answer while the upstream is stuck");
    let r = collect(resp).await;
    assert_json_detail(&r, 504);
    assert_eq!(held.lock().unwrap().len(), 1);
}
