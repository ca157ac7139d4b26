//! TLS, black box: real handshakes against the gateway on 127.0.0.1:0 with
//! certificates from a test CA, HTTP/1.1 and HTTP/2 by ALPN, SNI, versions,
//! HSTS, key formats, reload, and the startup errors for bad files.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

use bytes::Bytes;
use gateway::config::{CertSource, TlsConfig, TlsVersion};
use http::Version;
use http_body_util::Full;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const HSTS: &str = "max-age=63072000";

fn tls_toml(tls: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
health_path = "/healthz"

[log]
access_log = false

{tls}

[[routes]]
path = "/"
static = "www"
"#
    )
}

fn www(dir: &Path) {
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/index.html"), "hello over tls\n").unwrap();
}

fn get_req(path: &str) -> http::Request<Full<Bytes>> {
    req("GET", path).body(Full::new(Bytes::new())).unwrap()
}

/// A gateway with one leaf for `names` (files leaf.crt / leaf.key).
async fn one_cert(ca: &TestCa, names: &[&str], extra_tls: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    www(dir.path());
    ca.write_leaf(dir.path(), "leaf", names);
    let tls = format!("[tls]\ncert = \"leaf.crt\"\nkey = \"leaf.key\"\n{extra_tls}");
    Gateway::start_in(dir, &tls_toml(&tls)).await
}

/// The DER of the first certificate in a PEM file.
fn der_of(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// Connects with `server_name` as SNI and returns the leaf the server sent.
async fn peer_leaf(addr: SocketAddr, ca: &TestCa, server_name: &str) -> Vec<u8> {
    let tls = tls_connect(addr, ca.client_config(&[b"http/1.1"]), server_name)
        .await
        .unwrap_or_else(|e| panic!("handshake for {server_name}: {e}"));
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn http1_over_tls_by_alpn() {
    let ca = TestCa::new();
    let gw = one_cert(&ca, &["gateway.test"], "").await;
    let tls = tls_connect(gw.addr, ca.client_config(&[b"http/1.1"]), "gateway.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(tls);
    let r = send_tls(
        gw.addr,
        ca.client_config(&[b"http/1.1"]),
        "gateway.test",
        get_req("/index.html"),
    )
    .await;
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello over tls\n");
    // A client offering no ALPN at all still gets HTTP/1.1.
    let r = send_tls(
        gw.addr,
        ca.client_config(&[]),
        "gateway.test",
        get_req("/healthz"),
    )
    .await;
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.text(), "ok");
}

#[tokio::test]
async fn http2_over_tls_by_alpn() {
    let ca = TestCa::new();
    let gw = one_cert(&ca, &["gateway.test"], "").await;
    let tls = tls_connect(
        gw.addr,
        ca.client_config(&[b"h2", b"http/1.1"]),
        "gateway.test",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);
    let r = send_tls(
        gw.addr,
        ca.client_config(&[b"h2", b"http/1.1"]),
        "gateway.test",
        get_req("/index.html"),
    )
    .await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello over tls\n");
    let h = send_tls(
        gw.addr,
        ca.client_config(&[b"h2"]),
        "gateway.test",
        get_req("/healthz"),
    )
    .await;
    assert_eq!(h.version, Version::HTTP_2);
    assert_eq!((h.status.as_u16(), h.text().as_str()), (200, "ok"));
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_no_answer() {
    let ca = TestCa::new();
    let gw = one_cert(&ca, &["gateway.test"], "").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    assert!(!contains(&out, b"hello over tls"));
}

#[tokio::test]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    www(dir.path());
    let (main_crt, _) = ca.write_leaf(dir.path(), "main", &["main.test"]);
    let (api_crt, _) = ca.write_leaf(dir.path(), "api", &["api.test"]);
    let (img_crt, _) = ca.write_leaf(dir.path(), "img", &["img.test", "static.test"]);
    let tls = r#"
[tls]
cert = "main.crt"
key = "main.key"
hsts = "max-age=63072000"

[[tls.sni]]
server_name = "api.test"
cert = "api.crt"
key = "api.key"

[[tls.sni]]
server_name = "IMG.test"
cert = "img.crt"
key = "img.key"
"#;
    let gw = Gateway::start_in(dir, &tls_toml(tls)).await;
    let (main, api, img) = (der_of(&main_crt), der_of(&api_crt), der_of(&img_crt));
    assert_eq!(peer_leaf(gw.addr, &ca, "main.test").await, main);
    let got = peer_leaf(gw.addr, &ca, "api.test").await;
    assert_eq!(got, api);
    assert!(contains(&got, b"api.test"), "SAN/subject names api.test");
    assert!(!contains(&got, b"main.test"));
    // Names compare without regard to case, on both sides.
    assert_eq!(peer_leaf(gw.addr, &ca, "img.test").await, img);
    assert_eq!(peer_leaf(gw.addr, &ca, "IMG.TEST").await, img);
    // Unknown name: the first certificate (the client then refuses it
    // for the wrong name, which is the point; look at what was sent).
    let verifier = Arc::new(Capture::default());
    let mut cfg = rustls::ClientConfig::builder_with_provider(gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tls_connect(gw.addr, Arc::new(cfg.clone()), "unknown.test")
        .await
        .unwrap();
    assert_eq!(verifier.take(), main);
    // No SNI at all (a client connecting by IP address): the default too.
    tls_connect(gw.addr, Arc::new(cfg), "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(verifier.take(), main);
    // Each name's requests are served, over h2 as well.
    let r = send_tls(
        gw.addr,
        ca.client_config(&[b"h2"]),
        "api.test",
        get_req("/"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello over tls\n");
    assert_eq!(r.header("strict-transport-security"), Some(HSTS));
}

#[tokio::test]
async fn min_version_13_refuses_a_tls12_client() {
    let ca = TestCa::new();
    let gw = one_cert(&ca, &["gateway.test"], "min_version = \"1.3\"").await;
    let only12 = tls12_only_client(&ca);
    let err = tls_connect(gw.addr, only12, "gateway.test").await;
    assert!(err.is_err(), "a TLS 1.2-only client was accepted");
    // TLS 1.3 still works.
    let tls = tls_connect(gw.addr, ca.client_config(&[]), "gateway.test")
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn default_min_version_accepts_tls12_and_13() {
    let ca = TestCa::new();
    let gw = one_cert(&ca, &["gateway.test"], "").await;
    let tls = tls_connect(gw.addr, tls12_only_client(&ca), "gateway.test")
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let r = send_tls(
        gw.addr,
        tls12_only_client(&ca),
        "gateway.test",
        get_req("/healthz"),
    )
    .await;
    assert_eq!(r.text(), "ok");
    let tls = tls_connect(gw.addr, ca.client_config(&[]), "gateway.test")
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

fn tls12_only_client(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_cert.der().clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(gateway::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn hsts_on_tls_responses() {
    let ca = TestCa::new();
    let gw = one_cert(&ca, &["gateway.test"], &format!("hsts = \"{HSTS}\"")).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        for path in ["/", "/healthz", "/missing"] {
            let r = send_tls(
                gw.addr,
                ca.client_config(&[alpn]),
                "gateway.test",
                get_req(path),
            )
            .await;
            assert_eq!(
                r.header("strict-transport-security"),
                Some(HSTS),
                "{path} {:?}",
                r.version
            );
        }
    }
}

#[tokio::test]
async fn no_hsts_when_not_configured_or_on_plain_http() {
    let ca = TestCa::new();
    let gw = one_cert(&ca, &["gateway.test"], "").await;
    let r = send_tls(gw.addr, ca.client_config(&[]), "gateway.test", get_req("/")).await;
    assert_eq!(r.header("strict-transport-security"), None);
    // The plain second listener never sends it, even when configured.
    let dir = tempfile::tempdir().unwrap();
    www(dir.path());
    ca.write_leaf(dir.path(), "leaf", &["gateway.test"]);
    let toml = tls_toml(&format!(
        "[tls]\ncert = \"leaf.crt\"\nkey = \"leaf.key\"\nhsts = \"{HSTS}\""
    ))
    .replace(
        "health_path = \"/healthz\"",
        "health_path = \"/healthz\"\nhttp_listen = \"127.0.0.1:0\"\nredirect_http = false",
    );
    let gw = Gateway::start_in(dir, &toml).await;
    let plain = get(gw.http_addr.unwrap(), "/").await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("strict-transport-security"), None);
}

// ------------------------------------------------------ startup errors

fn files_config(cert: &Path, key: &Path) -> TlsConfig {
    TlsConfig {
        default: CertSource::Files {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        sni: vec![],
        min_version: TlsVersion::V1_2,
        hsts: None,
        acme: None,
        acme_fallback_self_signed: false,
    }
}

/// The whole error chain of a failed `server_config`, on one line.
fn tls_error(cfg: &TlsConfig) -> String {
    let err = gateway::tls::server_config(cfg, None).expect_err("server_config should fail");
    gateway::response::error_chain(&err)
}

#[test]
fn missing_cert_file_is_named() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = ca.write_leaf(dir.path(), "leaf", &["gateway.test"]);
    let missing = dir.path().join("nope.crt");
    let msg = tls_error(&files_config(&missing, &key));
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("cannot read"), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");
    let missing_key = dir.path().join("nope.key");
    let msg = tls_error(&files_config(&dir.path().join("leaf.crt"), &missing_key));
    assert!(msg.contains(&missing_key.display().to_string()), "{msg}");
}

#[test]
fn unparsable_pem_is_named() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = ca.write_leaf(dir.path(), "leaf", &["gateway.test"]);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let msg = tls_error(&files_config(&garbage, &key));
    assert!(msg.contains(&garbage.display().to_string()), "{msg}");
    assert!(msg.contains("no PEM certificate"), "{msg}");
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let msg = tls_error(&files_config(&broken, &key));
    assert!(msg.contains(&broken.display().to_string()), "{msg}");
    // Valid base64 that is no certificate at all.
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let msg = tls_error(&files_config(&junk, &key));
    assert!(msg.contains(&junk.display().to_string()), "{msg}");
    // A key file that holds no key (here: the certificate).
    let msg = tls_error(&files_config(&crt, &crt));
    assert!(msg.contains(&crt.display().to_string()), "{msg}");
    assert!(msg.contains("private key"), "{msg}");
    let msg = tls_error(&files_config(&crt, &garbage));
    assert!(msg.contains(&garbage.display().to_string()), "{msg}");
}

#[test]
fn key_that_does_not_match_the_cert_is_named() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (crt, _) = ca.write_leaf(dir.path(), "a", &["a.test"]);
    let (_, other_key) = ca.write_leaf(dir.path(), "b", &["b.test"]);
    let msg = tls_error(&files_config(&crt, &other_key));
    assert!(msg.contains("does not match"), "{msg}");
    assert!(msg.contains(&crt.display().to_string()), "{msg}");
    assert!(msg.contains(&other_key.display().to_string()), "{msg}");
    // An SNI entry is checked the same way.
    let (good_crt, good_key) = ca.write_leaf(dir.path(), "c", &["c.test"]);
    let mut cfg = files_config(&good_crt, &good_key);
    cfg.sni.push((
        "a.test".into(),
        CertSource::Files {
            cert: crt.clone(),
            key: other_key.clone(),
        },
    ));
    let msg = tls_error(&cfg);
    assert!(msg.contains(&crt.display().to_string()), "{msg}");
}

#[tokio::test]
async fn server_start_reports_tls_errors() {
    // The same errors through the public start path, before serving.
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    www(dir.path());
    ca.write_leaf(dir.path(), "a", &["a.test"]);
    ca.write_leaf(dir.path(), "b", &["b.test"]);
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, tls_toml("[tls]\ncert = \"a.crt\"\nkey = \"b.key\"")).unwrap();
    let config = gateway::config::load(&path).unwrap();
    let listeners = gateway::server::Listeners::bind(&config).await.unwrap();
    let err = match gateway::server::start(config, listeners).await {
        Ok(_) => panic!("started with a mismatched key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("b.key"), "{err}");
    assert!(err.contains("a.crt"), "{err}");
    assert!(err.contains("does not match"), "{err}");
}

// ------------------------------------------------------ key formats

fn openssl(args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .map(|o| {
            if !o.status.success() {
                eprintln!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            }
            o.status.success()
        })
        .unwrap_or(false)
}

/// Writes `{stem}.crt` signed by the CA for the key in `{stem}.key`
/// (any PEM format openssl reads); None without an openssl binary.
fn leaf_for_openssl_key(ca: &TestCa, dir: &Path, stem: &str, name: &str) -> Option<PathBuf> {
    let key = dir.join(format!("{stem}.key"));
    let p8 = dir.join(format!("{stem}.p8"));
    if !openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        key.to_str().unwrap(),
        "-out",
        p8.to_str().unwrap(),
    ]) {
        return None;
    }
    let kp = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&p8).unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.signed_by(&kp, &ca.issuer()).unwrap();
    let crt = dir.join(format!("{stem}.crt"));
    std::fs::write(&crt, cert.pem()).unwrap();
    Some(crt)
}

#[tokio::test]
async fn pkcs1_rsa_and_sec1_ec_keys_load() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    www(d);
    let rsa = d.join("rsa.key");
    let ec = d.join("ec.key");
    if !openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        rsa.to_str().unwrap(),
        "2048",
    ]) && !openssl(&["genrsa", "-out", rsa.to_str().unwrap(), "2048"])
    {
        eprintln!("SKIPPED: no usable openssl binary");
        return;
    }
    assert!(openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        ec.to_str().unwrap(),
    ]));
    let rsa_pem = std::fs::read_to_string(&rsa).unwrap();
    assert!(
        rsa_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{rsa_pem}"
    );
    let ec_pem = std::fs::read_to_string(&ec).unwrap();
    assert!(
        ec_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"),
        "{ec_pem}"
    );
    let rsa_crt = leaf_for_openssl_key(&ca, d, "rsa", "rsa.test").unwrap();
    let ec_crt = leaf_for_openssl_key(&ca, d, "ec", "ec.test").unwrap();
    // Ed25519 in PKCS#8, straight from rcgen.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let params = rcgen::CertificateParams::new(vec!["ed.test".to_string()]).unwrap();
    let ed_cert = params.signed_by(&ed, &ca.issuer()).unwrap();
    std::fs::write(d.join("ed.crt"), ed_cert.pem()).unwrap();
    std::fs::write(d.join("ed.key"), ed.serialize_pem()).unwrap();

    let tls = r#"
[tls]
cert = "rsa.crt"
key = "rsa.key"
[[tls.sni]]
server_name = "ec.test"
cert = "ec.crt"
key = "ec.key"
[[tls.sni]]
server_name = "ed.test"
cert = "ed.crt"
key = "ed.key"
"#;
    let gw = Gateway::start_in(dir, &tls_toml(tls)).await;
    assert_eq!(peer_leaf(gw.addr, &ca, "rsa.test").await, der_of(&rsa_crt));
    assert_eq!(peer_leaf(gw.addr, &ca, "ec.test").await, der_of(&ec_crt));
    assert_eq!(
        peer_leaf(gw.addr, &ca, "ed.test").await,
        der_of(&gw.path("ed.crt"))
    );
    for (name, alpn) in [("rsa.test", &b"h2"[..]), ("ec.test", b"http/1.1")] {
        let r = send_tls(gw.addr, ca.client_config(&[alpn]), name, get_req("/")).await;
        assert_eq!(r.text(), "hello over tls\n", "{name}");
    }
    // And over TLS 1.2, where RSA and ECDSA sign differently.
    let tls = tls_connect(gw.addr, tls12_only_client(&ca), "rsa.test")
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        der_of(&rsa_crt)
    );
    tls_connect(gw.addr, tls12_only_client(&ca), "ec.test")
        .await
        .unwrap();
}

#[tokio::test]
async fn mismatched_sec1_key_is_refused() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = d.join("ec.key");
    if !openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        ec.to_str().unwrap(),
    ]) {
        eprintln!("SKIPPED: no usable openssl binary");
        return;
    }
    let (crt, _) = ca.write_leaf(d, "leaf", &["gateway.test"]);
    let msg = tls_error(&files_config(&crt, &ec));
    assert!(msg.contains("does not match"), "{msg}");
    assert!(msg.contains(&ec.display().to_string()), "{msg}");
}

// ------------------------------------------------------ self-signed, reload

#[tokio::test]
async fn self_signed_serves_localhost() {
    let dir = tempfile::tempdir().unwrap();
    www(dir.path());
    let gw = Gateway::start_in(dir, &tls_toml("[tls]\nself_signed = true")).await;
    let verifier = Arc::new(Capture::default());
    let mut cfg = rustls::ClientConfig::builder_with_provider(gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = Arc::new(cfg);
    let r = send_tls(gw.addr, cfg.clone(), "localhost", get_req("/")).await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.text(), "hello over tls\n");
    let leaf = verifier.take();
    assert!(
        contains(&leaf, b"localhost"),
        "self-signed leaf names localhost"
    );
    // A client that verifies against the web PKI refuses it.
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let strict = rustls::ClientConfig::builder_with_provider(gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(tls_connect(gw.addr, Arc::new(strict), "localhost")
        .await
        .is_err());
}

#[tokio::test]
async fn reload_swaps_certificates_and_refuses_broken_ones() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    www(dir.path());
    let (old_crt, _) = ca.write_leaf(dir.path(), "old", &["gateway.test"]);
    let (new_crt, _) = ca.write_leaf(dir.path(), "new", &["gateway.test"]);
    let toml = |stem: &str| {
        tls_toml(&format!(
            "[tls]\ncert = \"{stem}.crt\"\nkey = \"{stem}.key\""
        ))
    };
    let gw = Gateway::start_in(dir, &toml("old")).await;
    let old = der_of(&old_crt);
    assert_eq!(peer_leaf(gw.addr, &ca, "gateway.test").await, old);
    // A connection open across the reload keeps working.
    let open = tls_connect(gw.addr, ca.client_config(&[b"http/1.1"]), "gateway.test")
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(open))
            .await
            .unwrap();
    tokio::spawn(conn);

    gw.rewrite_and_reload(&toml("new")).unwrap();
    assert_eq!(
        peer_leaf(gw.addr, &ca, "gateway.test").await,
        der_of(&new_crt)
    );
    let r = collect(sender.send_request(get_req("/")).await.unwrap()).await;
    assert_eq!(r.text(), "hello over tls\n");

    // A key that does not match: refused, naming the file; the previous
    // certificate keeps serving.
    let bad = tls_toml("[tls]\ncert = \"new.crt\"\nkey = \"old.key\"");
    let err = gw.rewrite_and_reload(&bad).unwrap_err();
    assert!(err.contains("old.key"), "{err}");
    assert_eq!(
        peer_leaf(gw.addr, &ca, "gateway.test").await,
        der_of(&new_crt)
    );
}

/// Accepts any server certificate and keeps the leaf it was shown.
#[derive(Debug, Default)]
struct Capture(std::sync::Mutex<Vec<u8>>);

impl Capture {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = end_entity.to_vec();
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let p = gateway::tls::provider();
        rustls::crypto::verify_tls12_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let p = gateway::tls::provider();
        rustls::crypto::verify_tls13_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        gateway::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
