#![allow(clippy::unwrap_used)]
//! Faults (issue 14, item 3), against the built binary: an upstream that
//! resets, hangs, answers garbage or closes mid-body; the SQLite store's
//! file removed, held busy by another process, made read-only (immutable)
//! under the running gateway, on a full filesystem. For each: the answer clients get, the log line and the
//! metric, no panic, no lost revocation, and recovery without a restart.
//!
//! (Redis killed and restarted: tests/replicas.rs; a JWKS server down or
//! serving garbage: tests/edge_auth.rs `trusted_issuer_failed_fetch_*`;
//! invalid certificate files before SIGHUP: tests/tls.rs
//! `reload_swaps_certificates_and_refuses_broken_ones`; gunicorn killed
//! under load: tests/operations.rs.)
//!
//! The full filesystem case mounts a small tmpfs and the read-only case
//! uses `chattr +i`; both need root (CI runs as root) and a filesystem
//! that allows them; elsewhere they say so and pass.
mod common;
use common::bin::{free_port, Bin};
use common::raw::*;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::sleep;

const TEST_LIMIT: Duration = Duration::from_secs(120);

fn pw_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| gateway::tokens::password::hash("pw").unwrap())
}

/// Token routes on SQLite at `store_path`, `/api/` protected and proxied
/// to `upstream`, metrics on `admin`.
fn config(port: u16, admin: u16, upstream: &str, store_path: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[admin]
listen = "127.0.0.1:{admin}"

[log]
access_log = false

[upstreams.app]
url = "{upstream}"
timeout = "2s"

{jwt}

[store]
path = "{store_path}"

[[routes]]
path = "/api/"
upstream = "app"
auth = "required"

[[routes]]
path = "/open/"
upstream = "app"
auth = "none"

[tokens.credentials]
users_file = "{{dir}}/users.toml"
"#,
        jwt = jwt_section()
    )
}

async fn start_with_store(upstream: &str, store_path: &str) -> (Bin, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        format!(
            "[[user]]\nusername = \"alice\"\npassword = \"{}\"\nuser_id = 1\n",
            pw_hash()
        ),
    )
    .unwrap();
    let (port, admin) = (free_port(), free_port());
    let store_path = store_path.replace("{dir}", dir.path().to_str().unwrap());
    let toml = config(port, admin, upstream, &store_path);
    let bin = Bin::launch_in(dir, &toml, port, "info").await;
    (bin, format!("127.0.0.1:{admin}").parse().unwrap())
}

async fn exchange(addr: SocketAddr, req: &[u8]) -> RawResp {
    let mut c = Client::connect(addr).await;
    c.send(req).await;
    c.response_within(Duration::from_secs(15))
        .await
        .unwrap_or_else(|closed| panic!("no answer (closed: {closed})"))
}

async fn login(addr: SocketAddr) -> RawResp {
    let body = json!({"username": "alice", "password": "pw"}).to_string();
    let req = format!(
        "POST /api/token/ HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, req.as_bytes()).await
}

async fn api(addr: SocketAddr, access: &str) -> u16 {
    let req = format!("GET /api/me HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {access}\r\n\r\n");
    exchange(addr, req.as_bytes()).await.status
}

/// A counter's value summed over its labels, from /metrics.
async fn metric(admin: SocketAddr, name: &str, label: &str) -> f64 {
    let r = exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
    r.text()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (at most 5 s) for the revocation of `token` to be followed.
async fn refused_within_5s(addr: SocketAddr, token: &str) {
    let t0 = Instant::now();
    while api(addr, token).await != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "revocation not followed"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// Logs in until it works or 10 s have passed: the last answer.
async fn login_within_10s(addr: SocketAddr) -> RawResp {
    let t0 = Instant::now();
    let mut r = login(addr).await;
    while r.status != 200 && t0.elapsed() < Duration::from_secs(10) {
        sleep(Duration::from_millis(300)).await;
        r = login(addr).await;
    }
    r
}

fn json_of(r: &RawResp) -> Value {
    serde_json::from_str(&r.text()).unwrap_or_else(|_| panic!("not JSON: {}", r.text()))
}

// ================================================================ the store file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_file_removed_is_written_back_and_no_revocation_is_lost() {
    bounded_within(TEST_LIMIT, async {
        let up = RawUpstream::start().await;
        let (mut bin, _) = start_with_store(&up.url(), "{dir}/state/gateway.db").await;
        let r = login(bin.addr).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let first = json_of(&r)["access"].as_str().unwrap().to_string();

        // `rm -rf state/` under the running gateway.
        std::fs::remove_dir_all(bin.dir.path().join("state")).unwrap();
        assert!(
            bin.logged("store file was removed", Duration::from_secs(5))
                .await,
            "no log line; log: {}",
            bin.log()
        );
        assert!(bin.dir.path().join("state/gateway.db").exists());

        // A session made after, and both revoked from another process.
        let r = login(bin.addr).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let second = json_of(&r)["access"].as_str().unwrap().to_string();
        let (ok, out) = bin.command(&["sessions", "revoke", "--user-id", "1"]);
        assert!(ok, "{out}");
        assert!(out.contains('2'), "both sessions revoked: {out}");
        refused_within_5s(bin.addr, &second).await;
        // Killed and started again: what was revoked stays revoked.
        bin.restart("info").await;
        assert_eq!(api(bin.addr, &first).await, 401);
        assert_eq!(api(bin.addr, &second).await, 401);
        assert!(!bin.log().contains("panicked"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_store_is_503_then_recovers_without_a_restart() {
    bounded_within(TEST_LIMIT, async {
        let up = RawUpstream::start().await;
        let (mut bin, admin) = start_with_store(&up.url(), "{dir}/gateway.db").await;
        let r = login(bin.addr).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let access = json_of(&r)["access"].as_str().unwrap().to_string();
        let errors_before = metric(admin, "gateway_store_errors_total", "").await;

        // Another process holds the write lock past the 5 s busy timeout.
        let path = bin.dir.path().join("gateway.db");
        let holder = std::thread::spawn(move || {
            let c = rusqlite::Connection::open(path).unwrap();
            c.execute_batch("BEGIN EXCLUSIVE").unwrap();
            std::thread::sleep(Duration::from_secs(8));
            c.execute_batch("COMMIT").unwrap();
        });
        sleep(Duration::from_millis(300)).await;
        let r = login(bin.addr).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(
            json_of(&r),
            json!({"detail": "Token store unavailable. Try again later."})
        );
        // The edge does not need the store: tokens keep working.
        assert_eq!(api(bin.addr, &access).await, 200);
        assert!(
            bin.logged("store unavailable", Duration::from_secs(2))
                .await
        );
        assert!(metric(admin, "gateway_store_errors_total", "").await > errors_before);

        holder.join().unwrap();
        let r = login(bin.addr).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            bin.logged("store reachable again", Duration::from_secs(2))
                .await
        );
        assert!(bin.alive());
    })
    .await;
}

/// Mounts a tmpfs of `kib` at `dir`; false where mounting is not allowed.
fn mount_tmpfs(dir: &std::path::Path, kib: u64) -> bool {
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_filesystem_is_503_and_loses_nothing() {
    bounded_within(TEST_LIMIT, async {
        let mnt = tempfile::tempdir().unwrap();
        if !mount_tmpfs(mnt.path(), 1024) {
            eprintln!(
                "faults: cannot mount a tmpfs here (not root?): the full filesystem case skipped"
            );
            return;
        }
        let _unmount = Unmount(mnt.path().to_path_buf());
        let up = RawUpstream::start().await;
        let store = mnt.path().join("gateway.db");
        let (mut bin, admin) = start_with_store(&up.url(), store.to_str().unwrap()).await;
        let errors_before = metric(admin, "gateway_store_errors_total", "").await;
        let r = login(bin.addr).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let access = json_of(&r)["access"].as_str().unwrap().to_string();

        // Full: a file takes every block that is left.
        let filler = mnt.path().join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let block = vec![0u8; 64 * 1024];
            for _ in 0..64 {
                if f.write_all(&block).is_err() {
                    break;
                }
            }
            let _ = f.sync_all();
        }
        let mut answers = Vec::new();
        for _ in 0..40 {
            let r = login(bin.addr).await;
            assert!(
                r.status == 200 || r.status == 503,
                "disk full: {} {}",
                r.status,
                r.text()
            );
            answers.push(r.status);
        }
        // A revocation on a full disk either lands or says it did not.
        let (revoked, out) = bin.command(&["sessions", "revoke", "--user-id", "1"]);
        println!("faults: disk full: logins {answers:?}; revoke: {revoked} {out}");
        if answers.contains(&503) {
            assert!(metric(admin, "gateway_store_errors_total", "").await > errors_before);
        }
        std::fs::remove_file(&filler).unwrap();
        let r = login_within_10s(bin.addr).await;
        assert_eq!(
            r.status,
            200,
            "no recovery after space came back: {}",
            r.text()
        );
        if !revoked {
            let (ok, out) = bin.command(&["sessions", "revoke", "--user-id", "1"]);
            assert!(ok, "{out}");
        }
        refused_within_5s(bin.addr, &access).await;

        // Nothing lost: after a restart the revoked token stays refused.
        bin.restart("info").await;
        assert_eq!(api(bin.addr, &access).await, 401);
        assert!(!bin.log().contains("panicked"), "{}", bin.log());
    })
    .await;
}

/// `chattr +i` or `-i` on each of `files`; false where the filesystem has
/// no immutable flag. Immutable refuses writes even to a root process, and
/// even through descriptors opened before: the store made read-only under
/// a running gateway.
fn immutable(files: &[std::path::PathBuf], on: bool) -> bool {
    files.iter().all(|f| {
        std::process::Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .arg(f)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

struct Mutable(Vec<std::path::PathBuf>);

impl Drop for Mutable {
    fn drop(&mut self) {
        immutable(&self.0, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_read_only_is_503_then_recovers_and_loses_nothing() {
    bounded_within(TEST_LIMIT, async {
        let up = RawUpstream::start().await;
        let (mut bin, admin) = start_with_store(&up.url(), "{dir}/gateway.db").await;
        let r = login(bin.addr).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let access = json_of(&r)["access"].as_str().unwrap().to_string();
        let (ok, out) = bin.command(&["sessions", "revoke", "--user-id", "1"]);
        assert!(ok, "{out}");
        refused_within_5s(bin.addr, &access).await;
        let errors_before = metric(admin, "gateway_store_errors_total", "").await;

        let dir = bin.dir.path().to_path_buf();
        let files: Vec<_> = ["gateway.db", "gateway.db-wal"]
            .iter()
            .map(|f| dir.join(f))
            .collect();
        let _guard = Mutable(files.clone());
        if !immutable(&files, true) {
            eprintln!("faults: no chattr +i on this filesystem: the read-only store case skipped");
            return;
        }
        let r = login(bin.addr).await;
        assert_eq!(r.status, 503, "read-only store: {}", r.text());
        assert_eq!(
            json_of(&r),
            json!({"detail": "Token store unavailable. Try again later."})
        );
        // Revoked stays revoked while the store cannot be written.
        assert_eq!(api(bin.addr, &access).await, 401);
        assert!(metric(admin, "gateway_store_errors_total", "").await > errors_before);
        assert!(
            bin.logged("store unavailable", Duration::from_secs(2))
                .await
        );

        assert!(immutable(&files, false));
        let r = login_within_10s(bin.addr).await;
        assert_eq!(r.status, 200, "no recovery once writable: {}", r.text());
        let fresh = json_of(&r)["access"].as_str().unwrap().to_string();
        assert!(
            bin.logged("store reachable again", Duration::from_secs(2))
                .await
        );

        bin.restart("info").await;
        assert_eq!(api(bin.addr, &access).await, 401);
        assert_eq!(api(bin.addr, &fresh).await, 200);
        assert!(!bin.log().contains("panicked"), "{}", bin.log());
    })
    .await;
}

// ================================================================ upstream faults

/// An upstream that misbehaves by path: `/api/reset` (RST after the head),
/// `/open/garbage` (not HTTP), `/open/midcl` and `/open/midchunk` (a body
/// cut short), `/open/hang` (never answers); anything else 200 "ok".
async fn faulty_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request per connection is enough here.
                    if find(&buf, b"\r\n\r\n").is_some() {
                        break;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                match path.as_str() {
                    "/open/reset" => {
                        #[allow(deprecated)]
                        // tokio deprecates it for its blocking close; wanted here
                        let _ = s.set_linger(Some(Duration::ZERO));
                        drop(s);
                    }
                    "/open/garbage" => {
                        let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await;
                    }
                    "/open/midcl" => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                            .await;
                        let _ = s.write_all(&[b'x'; 1000]).await;
                    }
                    "/open/midchunk" => {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n",
                            )
                            .await;
                        let _ = s.write_all(&[b'x'; 1000]).await;
                        let _ = s.write_all(b"\r\n3e8\r\nxx").await;
                    }
                    "/open/hang" => sleep(Duration::from_secs(30)).await,
                    _ => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_get_clear_answers_on_http1_and_http2() {
    bounded_within(TEST_LIMIT, async {
        let up = faulty_upstream().await;
        let (mut bin, admin) = start_with_store(&format!("http://{up}"), "{dir}/gateway.db").await;
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: a\r\n\r\n");

        // Before any body byte: the gateway answers, JSON.
        for (path, status) in [
            ("/open/reset", 502),
            ("/open/garbage", 502),
            ("/open/hang", 504),
        ] {
            let r = exchange(bin.addr, get(path).as_bytes()).await;
            assert_eq!(r.status, status, "{path}: {}", r.text());
            assert_json_detail(&r, path);
        }
        // After the head was passed on: the client's body ends short and
        // the connection closes; it is never a complete response.
        for path in ["/open/midcl", "/open/midchunk"] {
            let mut c = Client::connect(bin.addr).await;
            c.send(get(path).as_bytes()).await;
            let head = c.head().await.expect("no head");
            assert_eq!(head.status, 200);
            let (rest, closed) = c.rest_within(Duration::from_secs(10)).await;
            assert!(closed, "{path}: the connection stayed open");
            if path == "/open/midcl" {
                assert!(rest.len() < 100_000, "{path}: a complete body");
            } else {
                assert!(find(&rest, b"0\r\n\r\n").is_none(), "{path}: a last chunk");
            }
        }
        // The same over HTTP/2: errors as answers, cut bodies as stream
        // errors, never as clean ends.
        let tcp = TcpStream::connect(bin.addr).await.unwrap();
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for (path, want) in [
            ("/open/reset", Some(502)),
            ("/open/garbage", Some(502)),
            ("/open/midcl", None),
            ("/open/midchunk", None),
        ] {
            let req = http::Request::get(format!("http://a{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = h2.send_request(req).await;
            use http_body_util::BodyExt;
            match want {
                Some(s) => assert_eq!(resp.unwrap().status(), s, "h2 {path}"),
                // The reset may overtake the head: either way the client
                // never sees a complete response.
                None => match resp {
                    Err(e) => assert!(format!("{e:?}").contains("Reset"), "h2 {path}: {e:?}"),
                    Ok(resp) => {
                        assert_eq!(resp.status(), 200);
                        let body = resp.into_body().collect().await;
                        assert!(body.is_err(), "h2 {path}: a cut body ended cleanly");
                    }
                },
            }
        }
        // Counted by kind, and the gateway is still serving.
        for kind in ["reset", "bad_response", "timeout"] {
            let n = metric(
                admin,
                "gateway_upstream_errors_total",
                &format!("kind=\"{kind}\""),
            )
            .await;
            assert!(n >= 1.0, "no {kind} counted");
        }
        let r = exchange(bin.addr, get("/open/fine").as_bytes()).await;
        assert_eq!(r.status, 200);
        assert!(bin.alive());
        let log = bin.log();
        assert!(!log.contains("panicked"), "{log}");
        assert!(log.contains("upstream"), "no upstream error logged: {log}");
    })
    .await;
}
