//! Token and key helpers for the edge-auth tests: tokens in simplejwt's
//! shape signed with any algorithm (or not at all), keys made with rcgen or
//! the `openssl` CLI, JWKS documents, a raw HTTP/1.1 client that sends
//! header names exactly as written, and a local HTTPS JWKS server whose
//! document the test can swap.
#![allow(clippy::unwrap_used, dead_code)]

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::TestCa;

/// The HS256 secret of simplejwt.md's interop run.
pub const SECRET: &str = "shared-hs256-secret-at-least-32-bytes-long!!";

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// simplejwt's access-token claims for user "42".
pub fn access_claims() -> Value {
    let now = now();
    json!({
        "token_type": "access",
        "exp": now + 300,
        "iat": now,
        "jti": uuid::Uuid::new_v4().simple().to_string(),
        "user_id": "42",
    })
}

/// `access_claims()` with `extra` merged in (a `null` value removes the claim).
pub fn claims_with(extra: Value) -> Value {
    let mut c = access_claims();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// simplejwt's header for `alg`, with an optional kid.
pub fn header(alg: &str, kid: Option<&str>) -> Value {
    let mut h = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        h["kid"] = json!(kid);
    }
    h
}

/// header.payload, as a JWT's signing input.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// Signs `header.claims` with `key` using `alg` (whatever the header says).
pub fn sign_with(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = signing_input(header, claims);
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

/// A token whose header names `alg` and which is signed with `alg`.
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    sign_with(&header(alg_name(alg), kid), claims, key, alg)
}

/// An HS256 token with the shared secret, simplejwt's shape.
pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
    }
}

// ---------------------------------------------------------------- keys

/// A private key (PKCS#8 PEM) and its public key (SPKI PEM).
#[derive(Clone)]
pub struct Pair {
    pub private_pem: String,
    pub public_pem: String,
    /// For EC keys: the uncompressed point 0x04 || x || y.
    pub raw_public: Vec<u8>,
}

impl Pair {
    pub fn encoding_key(&self, alg: Algorithm) -> EncodingKey {
        let pem = self.private_pem.as_bytes();
        match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(pem).unwrap(),
        }
    }
}

pub fn ec_p256() -> Pair {
    rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256)
}

pub fn ec_p384() -> Pair {
    rcgen_pair(&rcgen::PKCS_ECDSA_P384_SHA384)
}

pub fn ed25519() -> Pair {
    rcgen_pair(&rcgen::PKCS_ED25519)
}

fn rcgen_pair(alg: &'static rcgen::SignatureAlgorithm) -> Pair {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    Pair {
        private_pem: kp.serialize_pem(),
        public_pem: kp.public_key_pem(),
        raw_public: kp.public_key_raw().to_vec(),
    }
}

/// A 2048-bit RSA key made once per test binary with the openssl CLI.
pub fn rsa() -> Pair {
    static KEY: OnceLock<Pair> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("rsa.pem");
        let ok = std::process::Command::new("openssl")
            .stderr(std::process::Stdio::null())
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl genpkey failed");
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl pkey -pubout failed");
        Pair {
            private_pem: std::fs::read_to_string(&key).unwrap(),
            public_pem: String::from_utf8(out.stdout).unwrap(),
            raw_public: Vec::new(),
        }
    })
    .clone()
}

/// A JWKS document holding EC P-256 public keys, as (kid, pair).
pub fn ec_jwks(keys: &[(&str, &Pair)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, pair)| {
            let raw = &pair.raw_public;
            assert_eq!(raw.len(), 65, "expected an uncompressed P-256 point");
            json!({
                "kty": "EC",
                "crv": "P-256",
                "x": b64(&raw[1..33]),
                "y": b64(&raw[33..65]),
                "kid": kid,
                "alg": "ES256",
                "use": "sig",
            })
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

// ---------------------------------------------------------------- raw HTTP

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub head: String,
}

/// Sends `head` (request line and headers, CRLF-separated, without the
/// final blank line) byte for byte, so header names keep their case and
/// underscores; reads until the server closes. Bounded by 10 s.
pub async fn raw(addr: SocketAddr, head: &str) -> RawResp {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("{head}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("raw request timed out");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    RawResp { status, head }
}

// ---------------------------------------------------------------- JWKS server

/// A local HTTPS server answering every GET with `doc` (or `status`).
pub struct JwksServer {
    pub addr: SocketAddr,
    pub doc: Arc<Mutex<String>>,
    /// Status to answer with (200 serves `doc`).
    pub status: Arc<AtomicU16>,
    /// Connections served to the end: the client has read the answer.
    pub fetches: Arc<AtomicUsize>,
    /// Milliseconds to wait before answering (a slow provider).
    pub delay_ms: Arc<AtomicU64>,
}

impl JwksServer {
    /// Starts on 127.0.0.1:0 with a leaf for "localhost" signed by `ca`.
    pub async fn start(ca: &TestCa, doc: String) -> JwksServer {
        use rustls_pki_types::pem::PemObject;
        let (cert_pem, key_pem) = ca.leaf(&["localhost"]);
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = JwksServer {
            addr,
            doc: Arc::new(Mutex::new(doc)),
            status: Arc::new(AtomicU16::new(200)),
            fetches: Arc::new(AtomicUsize::new(0)),
            delay_ms: Arc::new(AtomicU64::new(0)),
        };
        let (doc, status, fetches, delay) = (
            server.doc.clone(),
            server.status.clone(),
            server.fetches.clone(),
            server.delay_ms.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, doc, status, fetches, delay) = (
                    acceptor.clone(),
                    doc.clone(),
                    status.clone(),
                    fetches.clone(),
                    delay.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req| {
                        let body = doc.lock().unwrap().clone();
                        let code = status.load(Ordering::SeqCst);
                        let wait = Duration::from_millis(delay.load(Ordering::SeqCst));
                        async move {
                            tokio::time::sleep(wait).await;
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                    fetches.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/jwks.json", self.addr.port())
    }

    pub fn set(&self, doc: String) {
        *self.doc.lock().unwrap() = doc;
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}
