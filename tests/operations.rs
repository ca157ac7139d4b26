#![allow(clippy::unwrap_used)]
//! Operating the gateway: several app servers (one killed under load and
//! restarted), passive and active health, the admin listener's metrics
//! (parsed by Python's prometheus_client, a real Prometheus text parser)
//! and readiness, and the drain on SIGTERM with the real binary.

mod common;

use bytes::Bytes;
use common::{req, send, Gateway};
use http_body_util::Full;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An app server that answers every request with its name; killing it
/// closes its listener and every connection at once.
struct Backend {
    addr: SocketAddr,
    name: &'static str,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        Backend::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    async fn start_on(addr: SocketAddr, name: &'static str) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(name.as_bytes()),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name,
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restart(&mut self) {
        assert!(self.task.is_none());
        *self = Backend::start_on(self.addr, self.name).await;
    }
}

fn config(servers: &[String], upstream_extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[log]
access_log = false

[upstreams.app]
servers = [{}]
connect_timeout = "1s"
timeout = "5s"
{upstream_extra}

[[routes]]
path = "/"
upstream = "app"
"#,
        list.join(", ")
    )
}

async fn get(gw: &Gateway, path: &str) -> (u16, String) {
    let r = common::get(gw.addr, path).await;
    (r.status.as_u16(), r.text())
}

async fn post(gw: &Gateway, path: &str) -> (u16, String) {
    let r = send(
        gw.addr,
        req("POST", path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"x\":1}")))
            .unwrap(),
    )
    .await;
    (r.status.as_u16(), r.text())
}

fn admin(gw: &Gateway) -> SocketAddr {
    gw.handle.as_ref().unwrap().admin_addr.unwrap()
}

async fn scrape(gw: &Gateway) -> String {
    let r = common::get(admin(gw), "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    r.text()
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn eventually_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_dead_server_is_skipped_and_requests_go_to_a_live_one() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = Backend::start("live").await;
    let gw = Gateway::start(&config(&[format!("http://{dead}"), live.url()], "")).await;
    // A connect failure sends nothing: even a POST goes to another server.
    for i in 0..12 {
        let (status, body) = if i % 3 == 0 {
            post(&gw, "/x").await
        } else {
            get(&gw, "/x").await
        };
        assert_eq!((status, body.as_str()), (200, "live"), "request {i}");
    }
    let m = scrape(&gw).await;
    // max_fails = 1: one failure took it out for fail_timeout (10 s).
    let errors = format!(
        "gateway_upstream_errors_total{{upstream=\"app\",server=\"{dead}\",kind=\"connect\"}}"
    );
    assert_eq!(sample(&m, &errors), Some(1.0), "{m}");
    let r = common::get(admin(&gw), "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn no_healthy_server_is_503_and_not_ready() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead2 = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = Gateway::start(&config(
        &[format!("http://{dead}"), format!("http://{dead2}")],
        "",
    ))
    .await;
    // Both tried (the connect failure moves on), both taken out.
    let (status, _) = get(&gw, "/").await;
    assert_eq!(status, 502);
    // Now refused before any connect.
    let r = common::get(gw.addr, "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["detail"].as_str().unwrap().contains("no healthy"));
    let r = common::get(admin(&gw), "/readyz").await;
    assert_eq!(r.status, 503);
    let reasons = r.json()["reasons"].to_string();
    assert!(
        reasons.contains("upstream app: no healthy server"),
        "{reasons}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_taken_out_and_brought_back_by_health_checks() {
    let mut a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let hc = "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"500ms\", healthy = 2, unhealthy = 2 }";
    let gw = Gateway::start(&config(&[a.url(), b.url()], hc)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let (status, body) = get(&gw, "/").await;
        assert_eq!(status, 200);
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!((seen["a"], seen["b"]), (5, 5), "round robin");

    // Killed under load: GETs keep succeeding (a pooled connection found
    // closed is retried, a refused connect goes to the other server).
    a.kill().await;
    for i in 0..40 {
        let (status, body) = get(&gw, "/").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "b"),
            "request {i} after the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let up_a = format!(
        "gateway_upstream_server_up{{upstream=\"app\",server=\"{}\"}}",
        a.addr
    );
    assert!(
        eventually_async(Duration::from_secs(3), || async {
            sample(&scrape(&gw).await, &up_a) == Some(0.0)
        })
        .await,
        "the dead server is not reported down"
    );
    // Still ready: b is up.
    assert_eq!(common::get(admin(&gw), "/readyz").await.status, 200);

    a.restart().await;
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            sample(&scrape(&gw).await, &up_a) == Some(1.0)
        })
        .await,
        "the restarted server is not brought back"
    );
    // max_fails took it out for fail_timeout too; wait that out.
    let mut back = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !back && Instant::now() < deadline {
        let (status, body) = get(&gw, "/").await;
        assert_eq!(status, 200);
        back = body == "a";
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "requests never reached the restarted server");
}

#[tokio::test]
async fn least_conn_prefers_the_idle_server() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let gw = Gateway::start(&config(&[a.url(), b.url()], "balance = \"least_conn\"")).await;
    // Sequential requests leave both idle: ties go round robin.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let (status, body) = get(&gw, "/").await;
        assert_eq!(status, 200);
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// The metrics parsed by a real Prometheus text parser, and the counters
/// checked against the requests sent.
#[tokio::test]
async fn metrics_parse_and_count_the_requests_sent() {
    let app = Backend::start("app").await;
    // Labels of their own: the registry is per process, and `cargo test`
    // runs this file's tests in one process.
    let toml = config(&[app.url()], "")
        .replace("[upstreams.app]", "[upstreams.counted]")
        .replace("upstream = \"app\"", "upstream = \"counted\"")
        .replace("path = \"/\"", "path = \"/counted/\"");
    let gw = Gateway::start(&toml).await;
    for _ in 0..7 {
        assert_eq!(get(&gw, "/counted/a").await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(post(&gw, "/counted/b").await.0, 200);
    }
    // HTTP/2 (hyper's path) counts the same way.
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let r = h2
        .send_request(
            req("GET", &format!("http://{}/counted/c", gw.addr))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Counted when the response has been sent whole.
    let _ = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap();
    drop(h2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = scrape(&gw).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        key = s.name + json.dumps(s.labels, sort_keys=True)
        out[key] = s.value
print(json.dumps(out))
"#;
    let python = common::venv::venv_python();
    let parsed = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "the Prometheus parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let samples: HashMap<String, f64> = serde_json::from_slice(&parsed.stdout).unwrap();
    let get_sample = |name: &str, labels: &str| samples.get(&format!("{name}{labels}")).copied();
    assert_eq!(
        get_sample(
            "gateway_requests_total",
            r#"{"method": "GET", "route": "/counted/", "status": "2xx"}"#
        ),
        Some(8.0),
        "{samples:?}"
    );
    assert_eq!(
        get_sample(
            "gateway_requests_total",
            r#"{"method": "POST", "route": "/counted/", "status": "2xx"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        get_sample(
            "gateway_request_duration_seconds_count",
            r#"{"route": "/counted/"}"#
        ),
        Some(11.0)
    );
    assert_eq!(
        get_sample(
            "gateway_upstream_duration_seconds_count",
            r#"{"upstream": "counted"}"#
        ),
        Some(11.0)
    );
    let up = format!(r#"{{"server": "{}", "upstream": "counted"}}"#, app.addr);
    assert_eq!(get_sample("gateway_upstream_server_up", &up), Some(1.0));
    assert!(samples
        .keys()
        .any(|k| k.starts_with("gateway_open_connections")));
}

#[tokio::test]
async fn a_lone_server_is_never_taken_out_by_failures() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = Gateway::start(&config(&[format!("http://{dead}")], "")).await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "/").await.0, 502);
    }
    // With active checks, a lone server that fails them is out.
    let hc = "health_check = { path = \"/\", interval = \"100ms\", unhealthy = 1 }";
    let gw = Gateway::start(&config(&[format!("http://{dead}")], hc)).await;
    assert!(
        eventually_async(Duration::from_secs(3), || async {
            common::get(admin(&gw), "/readyz").await.status == 503
        })
        .await
    );
    assert_eq!(get(&gw, "/").await.0, 503);
}

#[tokio::test]
async fn the_admin_listener_may_not_be_a_public_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[admin]\nlisten = \"0.0.0.0:8080\"\n",
    )
    .unwrap();
    let e = gateway::config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains(":5: admin.listen: must not be a public listen address"),
        "{e}"
    );
}

/// SIGTERM with drain_delay: /readyz answers 503 at once, new connections
/// are still served during the delay, then the listener closes.
#[test]
fn sigterm_turns_readiness_off_then_drains() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, admin_port) = (free(), free());
    std::fs::create_dir(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "hello").unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_delay = \"2s\"\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[[routes]]\npath = \"/\"\nstatic = \"site\"\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--config", "gateway.toml"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = |p: u16, path: &str| -> Option<u16> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", p)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.get(9..12)?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(admin_port, "/readyz") != Some(200) {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(port, "/index.html"), Some(200));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status(admin_port, "/readyz"),
        Some(503),
        "not unready on SIGTERM"
    );
    // A client that keeps sending during drain_delay is served.
    for _ in 0..5 {
        assert_eq!(status(port, "/index.html"), Some(200));
        std::thread::sleep(Duration::from_millis(100));
    }
    let exited = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    assert!(exited, "did not exit after drain_delay");
    assert_eq!(
        status(port, "/index.html"),
        None,
        "still accepting after the drain"
    );
}

/// A real gunicorn and a test server behind one upstream: gunicorn killed
/// (workers and all) under load, requests keep succeeding; restarted, the
/// health checks bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_killed_under_load_and_restarted() {
    let Some(mut g) = common::gunicorn::gunicorn().await else {
        return;
    };
    let other = Backend::start("other").await;
    let hc = "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"1s\", healthy = 1, unhealthy = 1 }";
    let gw = Gateway::start(&config(&[g.url(), other.url()], hc)).await;
    let from_gunicorn = |body: &str| body.starts_with("GET /");
    let mut saw = false;
    for _ in 0..6 {
        let (status, body) = get(&gw, "/x").await;
        assert_eq!(status, 200);
        saw |= from_gunicorn(&body);
    }
    assert!(saw, "gunicorn got no request");
    let load = {
        let addr = gw.addr;
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..60 {
                statuses.push(common::get(addr, "/x").await.status.as_u16());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::block_in_place(|| g.kill());
    let statuses = load.await.unwrap();
    // A GET cut mid-answer on a fresh connection is not re-sent (the retry
    // rule): at most the one in flight at the kill may fail.
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert!(
        failed <= 1 && statuses.iter().all(|s| *s == 200 || *s == 502),
        "{statuses:?}"
    );
    tokio::task::block_in_place(|| g.restart());
    let mut back = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !back && Instant::now() < deadline {
        let (status, body) = get(&gw, "/x").await;
        assert_eq!(status, 200);
        back = from_gunicorn(&body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        back,
        "the restarted gunicorn got no request:\n{}",
        g.log_text()
    );
}

/// An upstream that answers garbage: 502, counted as a bad response of
/// that server, on the raw HTTP/1.1 path and on hyper's (HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_answer_is_a_bad_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 2OO OK\r\nx: y\r\n\r\n").await;
            });
        }
    });
    let gw = Gateway::start(&config(&[format!("http://{addr}")], "")).await;
    assert_eq!(get(&gw, "/").await.0, 502);
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let r = h2
        .send_request(
            req("GET", &format!("http://{}/", gw.addr))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let m = scrape(&gw).await;
    let key = format!(
        "gateway_upstream_errors_total{{upstream=\"app\",server=\"{addr}\",kind=\"bad_response\"}}"
    );
    assert_eq!(sample(&m, &key), Some(2.0), "{m}");
}

/// An upstream that writes a stray, unsolicited response on a connection
/// after answering: the idle pooled connection holding it is discarded, so
/// the stray answer is never served to a later request, on the raw
/// HTTP/1.1 path or on hyper's (HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_upstream_response_is_never_served() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let body = format!("conn{n}");
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
                // Unasked for, once the connection sits idle in the pool.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTRAY")
                    .await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let gw = Gateway::start(&config(&[format!("http://{addr}")], "")).await;
    for i in 0..3 {
        let (status, body) = get(&gw, "/").await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("conn{i}"), "request {i} got another answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let r = h2
        .send_request(
            req("GET", &format!("http://{}/", gw.addr))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "conn3", "HTTP/2 got another answer");
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}
