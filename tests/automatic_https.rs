#![allow(clippy::unwrap_used)]
//! Automatic HTTPS against a real ACME server: Pebble (Let's Encrypt's
//! test CA, Debian's `pebble`), started on loopback with its validation
//! pointed at the gateway's ports. A certificate is obtained with
//! tls-alpn-01 and with http-01 and verified by a client that trusts
//! only Pebble's root; `gateway acme renew` swaps it while a long-lived
//! connection keeps working; a restart reuses the cache without an order;
//! with Pebble stopped the gateway keeps serving and retries.
//!
//! Skipped (with a note) where `pebble` is not installed; CI installs it.
mod common;
use common::bin::{free_port, Bin};
use common::pebble::Pebble;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const DOMAIN: &str = "gw.test";
const LIMIT: Duration = Duration::from_secs(240);

fn config(port: u16, pebble: &Pebble, challenge: &str, http_port: Option<u16>) -> String {
    config_with(port, pebble, challenge, http_port, "")
}

fn config_with(
    port: u16,
    pebble: &Pebble,
    challenge: &str,
    http_port: Option<u16>,
    acme_extra: &str,
) -> String {
    let http = http_port.map_or(String::new(), |p| {
        format!("http_listen = \"127.0.0.1:{p}\"\nredirect_http = true\n")
    });
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
{http}

[log]
access_log = false

[tls.acme]
domains = ["{DOMAIN}"]
contact = "mailto:ops@gw.test"
directory = "{directory}"
ca_file = "{ca}"
cache = "{{dir}}/acme"
challenge = "{challenge}"
{acme_extra}

[[routes]]
path = "/"
static = "{{dir}}"
"#,
        directory = pebble.directory_url(),
        ca = pebble.ca_file().display(),
    )
}

/// A TLS client that trusts only Pebble's current roots.
async fn connector(pebble: &Pebble) -> tokio_rustls::TlsConnector {
    let pem = pebble.issuing_roots_pem().await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every handshake a full one: a resumed session shows the certificate
    // of the session it resumes, not the one being served now.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn handshake(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(DOMAIN).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tls.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())
}

fn leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One request on an open connection: the status.
async fn get(s: &mut TlsStream<TcpStream>, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            return head[9..12].parse().unwrap();
        }
    }
}

/// Waits (bounded) until a verified handshake works; its leaf.
async fn served(tls: &tokio_rustls::TlsConnector, addr: SocketAddr, within: Duration) -> Vec<u8> {
    let t0 = Instant::now();
    loop {
        match handshake(tls, addr).await {
            Ok(mut s) => {
                assert_eq!(get(&mut s, "/healthz").await, 200);
                return leaf(&s);
            }
            Err(e) => assert!(
                t0.elapsed() < within,
                "no verified certificate within {within:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

async fn bounded(f: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_renewal_restart_and_the_ca_down() {
    bounded(async {
        let port = free_port();
        let Some(mut pebble) = Pebble::start(free_port(), port).await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut bin = Bin::launch_in(
            dir,
            &config(port, &pebble, "tls-alpn-01", None),
            port,
            "info",
        )
        .await;
        let tls = connector(&pebble).await;
        let first = served(&tls, bin.addr, Duration::from_secs(60)).await;

        // The cache: 0700, its files 0600.
        let cache = bin.dir.path().join("acme");
        assert_eq!(mode(&cache), 0o700);
        for f in ["account.json", "gw.test.crt.pem", "gw.test.key.pem"] {
            assert_eq!(mode(&cache.join(f)), 0o600, "{f}");
        }
        let (ok, out) = bin.command(&["check"]);
        assert!(ok, "{out}");
        assert!(out.contains("certificate cached, expires"), "{out}");

        // A forced renewal swaps the certificate; a connection opened
        // before keeps working on the old one.
        let mut long = handshake(&tls, bin.addr).await.unwrap();
        assert_eq!(get(&mut long, "/healthz").await, 200);
        let (ok, out) = bin.command(&["acme", "renew"]);
        assert!(ok, "{out}");
        let t0 = Instant::now();
        let second = loop {
            let l = served(&tls, bin.addr, Duration::from_secs(5)).await;
            if l != first {
                break l;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "not renewed: {}",
                bin.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(get(&mut long, "/healthz").await, 200);
        assert_eq!(leaf(&long), first);

        // A restart with the CA down: the cached certificate at once, no
        // order.
        pebble.stop();
        let orders = bin.log().matches("ACME: ordering").count();
        bin.restart("info").await;
        assert_eq!(served(&tls, bin.addr, Duration::from_secs(5)).await, second);
        assert!(bin.log().contains("ACME certificate loaded from the cache"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(bin.log().matches("ACME: ordering").count(), orders);

        // Renewing with the CA down fails, is logged, and the certificate
        // being served stays; once the CA is back the retry succeeds.
        let (ok, out) = bin.command(&["acme", "renew"]);
        assert!(ok, "{out}");
        assert!(
            bin.logged("ACME order failed", Duration::from_secs(30))
                .await,
            "{}",
            bin.log()
        );
        assert_eq!(served(&tls, bin.addr, Duration::from_secs(5)).await, second);
        pebble.restart().await;
        let tls = connector(&pebble).await; // a new root per Pebble start
        served(&tls, bin.addr, Duration::from_secs(60)).await;
        assert!(bin.alive());
        assert!(!bin.log().contains("panicked"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_is_answered_before_the_redirect() {
    bounded(async {
        let (port, http_port) = (free_port(), free_port());
        let Some(pebble) = Pebble::start(http_port, free_port()).await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // renew_before longer than Pebble's five-year certificates: due
        // at once, renewed every 30 s.
        let bin = Bin::launch_in(
            dir,
            &config_with(
                port,
                &pebble,
                "http-01",
                Some(http_port),
                "renew_before = \"3650d\"",
            ),
            port,
            "info",
        )
        .await;
        let tls = connector(&pebble).await;
        let first = served(&tls, bin.addr, Duration::from_secs(60)).await;
        let t0 = Instant::now();
        while served(&tls, bin.addr, Duration::from_secs(5)).await == first {
            assert!(t0.elapsed() < Duration::from_secs(60), "not renewed: {}", bin.log());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(bin.log().contains("renewed again every 30s"));
        // An unknown token is 404, not a redirect; other paths redirect.
        let mut c = TcpStream::connect(("127.0.0.1", http_port)).await.unwrap();
        c.write_all(b"GET /.well-known/acme-challenge/nope HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        let mut c = TcpStream::connect(("127.0.0.1", http_port)).await.unwrap();
        c.write_all(b"GET /x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    })
    .await;
}

#[test]
fn the_section_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let load = |acme: &str| {
        let text = format!("[server]\nlisten = \"127.0.0.1:8443\"\n[tls.acme]\n{acme}\n");
        gateway::config::load_str(&dir.path().join("gateway.toml"), &text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(load("").contains("tls.acme.domains"));
    assert!(load("domains = [\"*.example.com\"]").contains("dns-01"));
    assert!(load("domains = [\"exa mple.com\"]").contains("tls.acme.domains[0]"));
    assert!(
        load("domains = [\"example.com\"]\ndirectory = \"http://ca.test/dir\"")
            .contains("tls.acme.directory")
    );
    assert!(load("domains = [\"example.com\"]\nchallenge = \"http-01\"").contains("http_listen"));
    assert!(
        load("domains = [\"example.com\"]\nchallenge = \"dns-01\"").contains("tls.acme.challenge")
    );
    assert!(load("domains = [\"example.com\"]\neab_kid = \"k\"").contains("eab_hmac_key"));
    assert!(load("domains = [\"example.com\"]\ncontact = \"ops@example.com\"").contains("mailto:"));
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    assert!(load("domains = [\"example.com\"]\ncache = \"a-file/acme\"").contains("tls.acme.cache"));
    assert_eq!(load("domains = [\"example.com\", \"www.example.com\"]\ncontact = \"mailto:ops@example.com\""), "");
}
