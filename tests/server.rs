//! Black-box tests of the server: health, the http -> https redirect,
//! header limits, slow and idle clients, connection limits, graceful drain
//! and reload. Raw sockets where the behaviour is below HTTP.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

fn no_body() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// A config proxying `/` to `upstream_url`, with `extra` lines appended to
/// `[server]`.
fn config_with(upstream_url: &str, extra: &str) -> String {
    proxy_config(upstream_url).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{extra}"),
    )
}

/// A TLS config (certificate files from `ca` written into `dir`).
fn tls_config(ca: &TestCa, dir: &std::path::Path, upstream_url: &str, extra: &str) -> String {
    ca.write_leaf(dir, "site", &["gateway.test", "localhost"]);
    config_with(upstream_url, extra).replace(
        "[log]",
        "[tls]\ncert = \"{dir}/site.crt\"\nkey = \"{dir}/site.key\"\n\n[log]",
    )
}

/// An HTTP/1.1 connection kept open across requests; the join handle ends
/// when the server closes the connection.
async fn keep_alive(addr: SocketAddr) -> (SendRequest<Full<Bytes>>, JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

async fn send_on(sender: &mut SendRequest<Full<Bytes>>, path: &str) -> Resp {
    timeout(LIMIT, sender.ready()).await.unwrap().unwrap();
    let resp = timeout(
        LIMIT,
        sender.send_request(req("GET", path).body(no_body()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    collect(resp).await
}

/// Reads from `stream` until the peer closes it (EOF or reset) or `within`
/// passes. Returns what was read and whether it was closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

// ------------------------------------------------------------ health

#[tokio::test]
async fn health_answers_on_every_listener_and_is_never_proxied() {
    let up = Upstream::start().await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(
        &ca,
        dir.path(),
        &up.url(),
        "http_listen = \"127.0.0.1:0\"\nhealth_path = \"/health/live\"",
    );
    let gw = Gateway::start_in(dir, &config).await;

    // Plain listener, HTTP/1.1.
    let r = get(gw.http_addr.unwrap(), "/health/live").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    // TLS listener, HTTP/1.1 and HTTP/2.
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let r = send_tls(
            gw.addr,
            ca.client_config(&[alpn]),
            "gateway.test",
            req("GET", "/health/live").body(no_body()).unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "ok");
        if alpn == b"h2" {
            assert_eq!(r.version, Version::HTTP_2);
        }
    }
    // Health never reaches the upstream, even with a query.
    let r = get(gw.http_addr.unwrap(), "/health/live?probe=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    assert_eq!(up.count(), 0);

    // Other paths do reach it (so the count above could have moved).
    let r = get(gw.http_addr.unwrap(), "/health/livex").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn health_answers_when_the_upstream_is_down() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let gw = Gateway::start(&proxy_config(&format!("http://{dead}"))).await;
    let r = get(gw.addr, "/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    assert_eq!(get(gw.addr, "/app").await.status, 502);
}

// ------------------------------------------------------------ redirect

#[tokio::test]
async fn plain_listener_redirects_to_https_except_health() {
    let up = Upstream::start().await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(
        &ca,
        dir.path(),
        &up.url(),
        "http_listen = \"127.0.0.1:0\"\nredirect_http = true",
    );
    let gw = Gateway::start_in(dir, &config).await;
    let http = gw.http_addr.unwrap();
    let port = gw.addr.port();

    let cases = [
        (
            "gateway.test",
            "/some/path?q=1&r=%20",
            "/some/path?q=1&r=%20",
        ),
        ("gateway.test:8080", "/", "/"),
        ("example.org", "/a", "/a"),
    ];
    for (host, path, want) in cases {
        for method in ["GET", "POST", "HEAD"] {
            let r = send(
                http,
                Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", host)
                    .body(no_body())
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, 308, "{method} {host}{path}");
            let host_only = host.split(':').next().unwrap();
            assert_eq!(
                r.header("location"),
                Some(format!("https://{host_only}:{port}{want}").as_str()),
                "{method} {host}{path}"
            );
        }
    }
    assert_eq!(up.count(), 0, "redirected requests are not proxied");

    // Health is answered on the plain listener, not redirected.
    let r = get(http, "/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");

    // The TLS listener serves normally.
    let r = send_tls(
        gw.addr,
        ca.client_config(&[b"http/1.1"]),
        "gateway.test",
        req("GET", "/some/path").body(no_body()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().path, "/some/path");
}

#[tokio::test]
async fn without_redirect_the_plain_listener_proxies() {
    let up = Upstream::start().await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(&ca, dir.path(), &up.url(), "http_listen = \"127.0.0.1:0\"");
    let gw = Gateway::start_in(dir, &config).await;
    let r = get(gw.http_addr.unwrap(), "/p").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-forwarded-proto"], "http");
}

// ------------------------------------------------------------ header limits

#[tokio::test]
async fn oversized_headers_are_431() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config_with(&up.url(), "max_header_bytes = \"8KiB\"")).await;

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let big = "a".repeat(20 * 1024);
    let head = format!("GET /big HTTP/1.1\r\nHost: gateway.test\r\nX-Big: {big}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, LIMIT).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
    assert!(closed);
    assert_eq!(up.count(), 0);

    // A request under the limit still passes.
    let r = send(
        gw.addr,
        req("GET", "/ok")
            .header("x-medium", "b".repeat(4 * 1024))
            .body(no_body())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-medium"].len(), 4096);
}

// ------------------------------------------------------------ slow and idle clients

#[tokio::test]
async fn slowloris_is_cut_off_after_header_read_timeout() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config_with(
        &up.url(),
        "header_read_timeout = \"300ms\"\nidle_timeout = \"10s\"",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: gateway.test\r\n")
        .await
        .unwrap();
    // Dribble one header line every 50ms: each byte is progress, but the
    // whole head is due 300ms after accept.
    let (mut rd, mut wr) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    let mut i = 0;
    while !reader.is_finished() && start.elapsed() < Duration::from_secs(5) {
        if wr
            .write_all(format!("X-Drip-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = timeout(Duration::from_secs(5), reader)
        .await
        .expect("connection still open while dribbling")
        .unwrap();
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "closed only after {elapsed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn silent_client_is_cut_off() {
    let gw = Gateway::start(&proxy_config("http://127.0.0.1:9").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nheader_read_timeout = \"300ms\"\nidle_timeout = \"10s\"",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "a silent connection was kept open");
    assert!(got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"));
}

#[tokio::test]
async fn silent_tls_client_is_cut_off() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(
        &ca,
        dir.path(),
        "http://127.0.0.1:9",
        "header_read_timeout = \"300ms\"\nidle_timeout = \"10s\"",
    );
    let gw = Gateway::start_in(dir, &config).await;
    // No handshake at all.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "a silent TLS connection was kept open");
    // A handshake, then nothing.
    let tls = tls_connect(gw.addr, ca.client_config(&[b"http/1.1"]), "gateway.test")
        .await
        .unwrap();
    let (mut tcp, _) = tls.into_inner();
    let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
    assert!(closed, "a silent TLS session was kept open");
}

#[tokio::test]
async fn idle_keep_alive_outlives_header_timeout_but_not_idle_timeout() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config_with(
        &up.url(),
        "header_read_timeout = \"300ms\"\nidle_timeout = \"1s\"",
    ))
    .await;
    let (mut sender, closed) = keep_alive(gw.addr).await;
    let r = send_on(&mut sender, "/first").await;
    assert_eq!(r.status, 200);

    // Idle for twice the header timeout: still open and usable.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!closed.is_finished(), "closed at the header timeout");
    let r = send_on(&mut sender, "/second").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/second");

    // Then idle past idle_timeout: closed.
    let after_second = Instant::now();
    timeout(Duration::from_secs(4), closed)
        .await
        .expect("idle connection was not closed")
        .unwrap();
    assert!(
        after_second.elapsed() >= Duration::from_millis(700),
        "closed after {:?}, before idle_timeout",
        after_second.elapsed()
    );
}

#[tokio::test]
async fn idle_http2_connection_outlives_header_timeout() {
    let up = Upstream::start().await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(
        &ca,
        dir.path(),
        &up.url(),
        "header_read_timeout = \"300ms\"\nidle_timeout = \"5s\"",
    );
    let gw = Gateway::start_in(dir, &config).await;
    let tls = tls_connect(gw.addr, ca.client_config(&[b"h2"]), "gateway.test")
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
    });
    for i in 0..3 {
        let r = timeout(
            LIMIT,
            sender.send_request(
                Request::get(format!("https://gateway.test/h2/{i}"))
                    .body(Full::new(Bytes::from(vec![b'z'; 100_000])))
                    .unwrap(),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        let r = collect(r).await;
        assert_eq!(r.status, 200);
        assert_eq!(up.last().body_len, 100_000);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!closed.is_finished(), "h2 connection closed while idle");
    }
}

// ------------------------------------------------------------ connection limit

#[tokio::test]
async fn max_connections_holds_back_the_next_connection() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config_with(&up.url(), "max_connections = 2")).await;

    let (mut a, a_task) = keep_alive(gw.addr).await;
    let (mut b, _b_task) = keep_alive(gw.addr).await;
    assert_eq!(send_on(&mut a, "/a").await.status, 200);
    assert_eq!(send_on(&mut b, "/b").await.status, 200);

    // The third is accepted by the kernel but not served.
    let third = tokio::spawn(async move {
        let (mut c, _c_task) = keep_alive(gw.addr).await;
        let r = send_on(&mut c, "/c").await;
        (r, gw)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served");
    assert_eq!(up.count(), 2);

    // Closing one lets it in.
    drop(a);
    let _ = timeout(LIMIT, a_task).await.unwrap();
    let (r, _gw) = timeout(LIMIT, third).await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/c");

    // The limit is on connections, not requests: b still works.
    assert_eq!(send_on(&mut b, "/b2").await.status, 200);
}

// ------------------------------------------------------------ shutdown

#[tokio::test]
async fn graceful_drain_finishes_in_flight_requests() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(&config_with(&up.url(), "shutdown_grace = \"10s\"")).await;
    let addr = gw.addr;

    // An idle keep-alive connection is closed by the drain.
    let (mut idle, idle_closed) = keep_alive(addr).await;
    assert_eq!(send_on(&mut idle, "/warm").await.status, 200);

    let in_flight = tokio::spawn(async move { get(addr, "/slow/800").await });
    assert!(
        eventually(LIMIT, || up.count() == 2).await,
        "slow request never reached the upstream"
    );

    let handle = gw.handle.take().unwrap();
    let drain = tokio::spawn(handle.drain());

    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "new connections still accepted while draining");
    timeout(LIMIT, idle_closed)
        .await
        .expect("idle connection kept open during drain")
        .unwrap();
    assert!(!in_flight.is_finished() || up.count() == 2);

    let r = timeout(LIMIT, in_flight).await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/slow/800");
    assert!(timeout(LIMIT, drain).await.unwrap().unwrap());
}

#[tokio::test]
async fn drain_gives_up_after_shutdown_grace() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(
        &config_with(&up.url(), "shutdown_grace = \"300ms\"")
            .replace("timeout = \"2s\"", "timeout = \"10s\""),
    )
    .await;
    let addr = gw.addr;
    let _in_flight = tokio::spawn(async move { get(addr, "/slow/5000").await });
    assert!(eventually(LIMIT, || up.count() == 1).await);
    let handle = gw.handle.take().unwrap();
    let clean = timeout(Duration::from_secs(3), handle.drain())
        .await
        .expect("drain did not respect shutdown_grace");
    assert!(!clean);
}

// ------------------------------------------------------------ reload

#[tokio::test]
async fn reload_applies_a_new_route_and_refuses_an_invalid_config() {
    let old = Upstream::start().await;
    let new = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&old.url())).await;

    // A keep-alive connection opened before the reload survives it.
    let (mut conn, conn_closed) = keep_alive(gw.addr).await;
    assert_eq!(send_on(&mut conn, "/new/x").await.status, 200);
    assert_eq!(old.count(), 1);

    let two_routes = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[log]
access_log = false
[upstreams.app]
url = "{}"
[upstreams.fresh]
url = "{}"
[[routes]]
path = "/new/"
upstream = "fresh"
strip_prefix = true
[[routes]]
path = "/"
upstream = "app"
"#,
        old.url(),
        new.url()
    );
    gw.rewrite_and_reload(&two_routes).unwrap();
    let r = get(gw.addr, "/new/x?y=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(new.count(), 1);
    assert_eq!(new.last().path, "/x");
    assert_eq!(new.last().query.as_deref(), Some("y=1"));
    assert_eq!(get(gw.addr, "/other").await.status, 200);
    assert_eq!(old.last().path, "/other");
    // The old connection now sees the new routes too.
    assert_eq!(send_on(&mut conn, "/new/z").await.status, 200);
    assert_eq!(new.last().path, "/z");

    // Invalid: a typo'd key, and a route to an unknown upstream.
    let typo = two_routes.replace("strip_prefix", "strip_prefx");
    assert!(gw.rewrite_and_reload(&typo).is_err());
    let unknown = two_routes.replace("upstream = \"fresh\"", "upstream = \"nope\"");
    let err = gw.rewrite_and_reload(&unknown).unwrap_err();
    assert!(err.contains("nope"), "{err}");
    assert!(gw.rewrite_and_reload("this is [not toml").is_err());

    // The previous config keeps serving.
    let r = get(gw.addr, "/new/still?k=v").await;
    assert_eq!(r.status, 200);
    assert_eq!(new.count(), 3);
    assert_eq!(new.last().path, "/still");
    assert!(!conn_closed.is_finished());
    assert_eq!(send_on(&mut conn, "/new/w").await.status, 200);
    assert_eq!(new.last().path, "/w");
}

// ------------------------------------------------------------ timeouts and long requests

#[tokio::test]
async fn a_slow_second_request_head_is_cut_off_too() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config_with(
        &up.url(),
        "header_read_timeout = \"300ms\"\nidle_timeout = \"10s\"",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = timeout(LIMIT, s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle a while (allowed), then start a head and dribble it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    s.write_all(b"GET /two HTTP/1.1\r\nHost: gateway.test\r\n")
        .await
        .unwrap();
    let mut closed = false;
    let mut answer = Vec::new();
    for i in 0..60 {
        if s.write_all(format!("X-Drip-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        match timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    assert!(closed, "a dribbled second head was not cut off");
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(2), "closed after {elapsed:?}");
    // Cut off by the timer, not refused as malformed.
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed after {elapsed:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_request_in_flight_is_not_cut_by_the_idle_timeout() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &config_with(
            &up.url(),
            "header_read_timeout = \"300ms\"\nidle_timeout = \"500ms\"",
        )
        .replace("timeout = \"2s\"", "timeout = \"5s\""),
    )
    .await;
    let r = timeout(LIMIT, get(gw.addr, "/slow/1200")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/slow/1200");
}

#[tokio::test]
async fn a_websocket_outlives_idle_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = ws_echo_upstream().await;
    let gw = Gateway::start(&config_with(
        &format!("http://{ws}"),
        "header_read_timeout = \"300ms\"\nidle_timeout = \"500ms\"",
    ))
    .await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut socket, _) = timeout(
        LIMIT,
        tokio_tungstenite::client_async("ws://gateway.test/ws", stream),
    )
    .await
    .unwrap()
    .unwrap();
    for i in 0..2 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let text = format!("still here {i}");
        socket.send(Message::text(text.clone())).await.unwrap();
        let back = timeout(LIMIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(text));
    }
}

#[tokio::test]
async fn drain_finishes_an_http2_request_in_flight() {
    let up = Upstream::start().await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(&ca, dir.path(), &up.url(), "shutdown_grace = \"10s\"");
    let mut gw = Gateway::start_in(dir, &config).await;
    let addr = gw.addr;
    let client = ca.client_config(&[b"h2"]);
    let in_flight = tokio::spawn(async move {
        send_tls(
            addr,
            client,
            "gateway.test",
            req("GET", "/slow/800").body(no_body()).unwrap(),
        )
        .await
    });
    assert!(eventually(LIMIT, || up.count() == 1).await);
    let drain = tokio::spawn(gw.handle.take().unwrap().drain());
    let r = timeout(LIMIT, in_flight).await.unwrap().unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(timeout(LIMIT, drain).await.unwrap().unwrap());
    assert!(TcpStream::connect(addr).await.is_err());
}
