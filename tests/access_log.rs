#![allow(clippy::unwrap_used)]
//! The access log as a log pipeline reads it: the real binary with
//! `[log] format = "json"` (and `"combined"`), requests over the raw
//! HTTP/1.1 path, HTTP/1.0 and HTTP/2 (hyper's path), static, proxied and
//! authenticated, one from a trusted proxy; every line parsed and every
//! field's type checked.

mod common;

use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const SECRET: &str = "access-log-test-secret-at-least-32-bytes!";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Served {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            o.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

fn serve(format: &str, upstream: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Whether the route's prefix is part of the file path or not.
    std::fs::create_dir_all(dir.path().join("site/static")).unwrap();
    std::fs::write(dir.path().join("site/static/a.txt"), "hello").unwrap();
    std::fs::write(dir.path().join("site/a.txt"), "hello").unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
trusted_proxies = ["127.0.0.1"]

[log]
format = "{format}"

[jwt]
algorithm = "HS256"
secret = "{SECRET}"

[upstreams.app]
url = "{upstream}"

[[routes]]
path = "/static/"
static = "site"

[[routes]]
path = "/api/"
upstream = "app"
auth = "required"
"#
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "gateway.toml"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = pipe(child.stdout.take().unwrap());
    let stderr = pipe(child.stderr.take().unwrap());
    let s = Served {
        child,
        stdout,
        stderr,
        port,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not start: {}",
            s.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    s
}

/// Sends raw bytes, reads to the end (the requests say `close`).
fn raw(port: u16, bytes: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn token(dir: &std::path::Path) -> String {
    let out = Command::new(BIN)
        .args(["token", "--config", "gateway.toml", "--user-id", "42"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn access_lines(text: &str, n: usize) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_have_typed_fields() {
    let up = common::Upstream::start().await;
    let s = serve("json", &up.url());
    let tok = token(s.dir.path());
    let p = s.port;
    let r = raw(p, "GET /static/a.txt HTTP/1.1\r\nhost: shop.example\r\nuser-agent: probe/1.0\r\nx-forwarded-for: 203.0.113.9\r\nconnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = raw(p, &format!("GET /api/x?q=1 HTTP/1.1\r\nhost: shop.example\r\nauthorization: Bearer {tok}\r\nconnection: close\r\n\r\n"));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = raw(p, "GET /static/a.txt HTTP/1.0\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"),
        "{r}"
    );
    let r = raw(
        p,
        "GET /api/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // HTTP/2 (prior knowledge), hyper's path.
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", p))
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = h2
        .send_request(
            http::Request::get(format!("http://h2.example:{p}/api/y"))
                .header("authorization", format!("Bearer {tok}"))
                .header("user-agent", "h2-probe")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(h2);

    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = access_lines(&s.stderr.lock().unwrap(), 5);
        if lines.len() == 5 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 5, "{}", s.stderr.lock().unwrap());
    for l in &lines {
        assert!(l["status"].is_u64(), "{l}");
        assert!(l["bytes"].is_u64(), "{l}");
        assert!(l["total_ms"].is_f64() || l["total_ms"].is_u64(), "{l}");
        assert!(l["peer"].is_string() && l["client"].is_string(), "{l}");
        assert!(l["request_id"].is_string(), "{l}");
        assert!(l.get("tls").is_none(), "plain listener: {l}");
        for v in l.as_object().unwrap().values() {
            assert_ne!(v, "-", "placeholder for an absent value: {l}");
        }
    }
    let (stat, api, old, anon, h2l) = (&lines[0], &lines[1], &lines[2], &lines[3], &lines[4]);
    assert_eq!(stat["client"], "203.0.113.9", "{stat}");
    assert_eq!(stat["peer"], "127.0.0.1");
    assert_eq!(stat["host"], "shop.example");
    assert_eq!(stat["user_agent"], "probe/1.0");
    assert_eq!(stat["status"], 200);
    assert_eq!(stat["bytes"], 5);
    assert!(stat.get("upstream_ms").is_none() && stat.get("upstream").is_none());
    assert!(stat.get("user_id").is_none());
    assert_eq!(api["path"], "/api/x?q=1");
    assert_eq!(api["user_id"], "42");
    assert!(
        api["upstream_ms"].is_f64() || api["upstream_ms"].is_u64(),
        "{api}"
    );
    assert_eq!(api["upstream"], up.addr.to_string());
    assert_eq!(old["path"], "/static/a.txt");
    assert_eq!(anon["status"], 401);
    assert!(anon.get("user_id").is_none());
    assert_eq!(h2l["user_id"], "42");
    assert_eq!(h2l["host"], format!("h2.example:{p}"));
    assert_eq!(h2l["user_agent"], "h2-probe");
    assert_eq!(h2l["upstream"], up.addr.to_string());
    // Startup lines carry no Rust debug values either.
    let all = s.stderr.lock().unwrap().clone();
    assert!(!all.contains("None") && !all.contains("Some("), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_format_is_nginx_combined() {
    let up = common::Upstream::start().await;
    let s = serve("combined", &up.url());
    let tok = token(s.dir.path());
    raw(s.port, "GET /static/a.txt?x=1 HTTP/1.1\r\nhost: a\r\nreferer: https://ref.example/\r\nuser-agent: probe \"quoted\"\r\nconnection: close\r\n\r\n");
    raw(s.port, &format!("POST /api/p HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {tok}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let out = loop {
        let out = s.stdout.lock().unwrap().clone();
        if out.lines().count() >= 2 || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    // $remote_addr - $remote_user [$time_local] "$request" $status
    // $body_bytes_sent "$http_referer" "$http_user_agent"
    let shape = |l: &str| -> Option<(String, String, String, String, String, String, String)> {
        let (addr, rest) = l.split_once(" - ")?;
        let (user, rest) = rest.split_once(" [")?;
        let (time, rest) = rest.split_once("] \"")?;
        let (request, rest) = rest.split_once("\" ")?;
        let mut it = rest.splitn(3, ' ');
        let status = it.next()?.to_string();
        let bytes = it.next()?.to_string();
        let quoted = it.next()?;
        Some((
            addr.into(),
            user.into(),
            time.into(),
            request.into(),
            status,
            bytes,
            quoted.into(),
        ))
    };
    let (addr, user, time, request, status, bytes, tail) = shape(lines[0]).unwrap();
    assert_eq!((addr.as_str(), user.as_str()), ("127.0.0.1", "-"));
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    assert_eq!(request, "GET /static/a.txt?x=1 HTTP/1.1");
    assert_eq!((status.as_str(), bytes.as_str()), ("200", "5"));
    assert_eq!(tail, r#""https://ref.example/" "probe \"quoted\"""#);
    let (_, user, _, request, status, _, tail) = shape(lines[1]).unwrap();
    assert_eq!(user, "42");
    assert_eq!(request, "POST /api/p HTTP/1.1");
    assert_eq!(status, "200");
    assert_eq!(tail, r#""-" "-""#);
}
