//! A guard against buffering regressions that needs no timing: the real
//! binary proxies a 256 MiB upload and a 128 MiB download, and its peak RSS
//! (VmHWM) must not grow by anything near the body sizes.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
/// Far below either body size: streaming keeps a few buffers per request.
const CEILING_KIB: u64 = 32 * 1024;

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn large_bodies_stream_through_without_buffering() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_body_bytes = \"1GiB\"\n[log]\naccess_log = false\n\
             [upstreams.app]\nurl = \"{}\"\ntimeout = \"60s\"\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
            up.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "gateway.toml"])
        .current_dir(dir.path())
        .env_remove("GATEWAY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ready = eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    assert!(ready, "gateway did not start");
    // Warm up: pools, buffers and the runtime exist before the baseline.
    assert_eq!(get(addr, "/warm").await.status, 200);
    let baseline = vm_hwm_kib(pid);

    // 256 MiB up, in 64 KiB chunks made as they are sent.
    let chunks = 4096;
    let piece = Bytes::from(vec![b'u'; 64 * 1024]);
    let body = StreamBody::new(futures_util::stream::unfold(0usize, move |i| {
        let piece = piece.clone();
        async move { (i < chunks).then(|| (Ok::<_, Infallible>(Frame::data(piece)), i + 1)) }
    }));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let upload = req("POST", "/upload").body(body).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), sender.send_request(upload))
        .await
        .expect("upload took over 2 minutes")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&echo).unwrap();
    assert_eq!(echo["body_len"], 256 * 1024 * 1024);
    let after_upload = vm_hwm_kib(pid);

    // 128 MiB down, read as it arrives.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: u64 = 128 * 1024 * 1024;
    let download = req("GET", &format!("/bytes/{n}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(download).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.unwrap().data_ref() {
                got += d.len() as u64;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("download took over 2 minutes");
    assert_eq!(got, n);
    let after_download = vm_hwm_kib(pid);

    let _ = child.kill();
    let _ = child.wait();
    assert!(
        after_upload.saturating_sub(baseline) < CEILING_KIB,
        "upload raised peak RSS from {baseline} KiB to {after_upload} KiB"
    );
    assert!(
        after_download.saturating_sub(baseline) < CEILING_KIB,
        "download raised peak RSS from {baseline} KiB to {after_download} KiB"
    );
}

/// Each login verifies an argon2 hash in 19 MiB of memory. glibc used to
/// keep those blocks in its arenas once its dynamic mmap threshold had
/// risen: RSS grew by ~12 MB per login (1.5 GB after 250, found by the
/// soak). With the threshold fixed they are unmapped when freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_give_their_argon2_memory_back() {
    use common::bin::{free_port, Bin};
    let dir = tempfile::tempdir().unwrap();
    let hash = gateway::tokens::password::hash("pw").unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        format!("[[user]]\nusername = \"u\"\npassword = \"{hash}\"\nuser_id = 1\n"),
    )
    .unwrap();
    let port = free_port();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\naccess_log = false\n{}\n\
         [store]\npath = \"{{dir}}/gateway.db\"\n\
         [tokens.credentials]\nusers_file = \"{{dir}}/users.toml\"\n\
         [tokens.rate_limit]\nper_address = 0\n",
        common::raw::jwt_section()
    );
    let bin = Bin::launch_in(dir, &toml, port, "warn").await;
    let addr = bin.addr;
    let login = move || async move {
        let body = r#"{"username":"u","password":"pw"}"#;
        let req = format!(
            "POST /api/token/ HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut c = common::raw::Client::connect(addr).await;
        c.send(req).await;
        assert_eq!(c.response().await.status, 200);
    };
    login().await;
    let base = bin.rss_kib();
    for _ in 0..15 {
        let rounds: Vec<_> = (0..4).map(|_| tokio::spawn(login())).collect();
        for r in rounds {
            r.await.unwrap();
        }
    }
    let after = bin.rss_kib();
    assert!(
        after < base + 24 * 1024,
        "60 logins: RSS {base} -> {after} KiB"
    );
}
