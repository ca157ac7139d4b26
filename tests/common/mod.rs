//! Shared test harness: a real gateway started in-process on 127.0.0.1:0,
//! a real upstream (a small hyper server that echoes what it received as
//! JSON and records it), a test CA made with rcgen, and raw hyper clients
//! for HTTP/1.1 and HTTP/2, plain or over TLS. `raw` holds the raw-socket
//! helpers (recording upstream, byte-exact client) of the request-path tests.
#![allow(clippy::unwrap_used, dead_code)]

pub mod bin;
pub mod gunicorn;
pub mod pebble;
pub mod raw;
pub mod redis;
pub mod venv;

use bytes::Bytes;
use gateway::server::{self, Listeners, ServerHandle};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- gateway

/// A gateway running in this process, with its config in a temp dir.
pub struct Gateway {
    pub handle: Option<ServerHandle>,
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Gateway {
    /// Starts a gateway on `toml`; `{dir}` in it is replaced by the temp
    /// dir's path. Listen addresses should be "127.0.0.1:0".
    pub async fn start(toml: &str) -> Gateway {
        Self::start_in(tempfile::tempdir().unwrap(), toml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> Gateway {
        let text = toml.replace("{dir}", dir.path().to_str().unwrap());
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = gateway::config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let listeners = Listeners::bind(&config).await.unwrap();
        let handle = server::start(config, listeners).await.unwrap();
        Gateway {
            addr: handle.main_addr,
            http_addr: handle.http_addr,
            handle: Some(handle),
            dir,
            config_path,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Rewrites the config file (with `{dir}` replaced) and reloads.
    pub fn rewrite_and_reload(&self, toml: &str) -> Result<(), String> {
        let text = toml.replace("{dir}", self.dir.path().to_str().unwrap());
        std::fs::write(&self.config_path, text).unwrap();
        self.handle
            .as_ref()
            .unwrap()
            .reload()
            .map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------- upstream

/// What the upstream received for one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body_len: u64,
}

/// A real HTTP/1.1 upstream. Paths:
/// - `/slow/<ms>`: waits before answering;
/// - `/bytes/<n>`: streams n bytes of 'x';
/// - `/status/<code>`: answers with that status;
/// - anything else: a JSON echo of method, path, query, headers, body length.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| echo(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    /// Starts one on a unix socket at `path`.
    pub async fn start_unix(path: &Path) -> Upstream {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| echo(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr: "127.0.0.1:0".parse().unwrap(),
            seen,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn echo(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, mut body) = req.into_parts();
    // Count the body without keeping it (uploads may be large).
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let path = parts.uri.path().to_string();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body_len,
    });
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        return Ok(r);
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; n]))));
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let entry = headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        if let serde_json::Value::Array(a) = entry {
            a.push(serde_json::Value::String(
                String::from_utf8_lossy(value.as_bytes()).into(),
            ));
        }
    }
    let body = serde_json::json!({
        "method": parts.method.as_str(),
        "path": path,
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body_len,
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    // Hop-by-hop headers the gateway must not pass back to the client.
    r.headers_mut()
        .insert("connection", "keep-alive, x-upstream-hop".parse().unwrap());
    r.headers_mut()
        .insert("x-upstream-hop", "secret".parse().unwrap());
    r.headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    r.headers_mut()
        .insert("proxy-authenticate", "Basic".parse().unwrap());
    Ok(r)
}

/// A WebSocket echo server (raw TCP + tungstenite handshake).
pub async fn ws_echo_upstream() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------- TLS

/// A test certificate authority and the PEM files of a leaf it signed.
pub struct TestCa {
    pub ca_cert: rcgen::Certificate,
    pub ca_key: rcgen::KeyPair,
    pub ca_params: rcgen::CertificateParams,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gateway test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        TestCa {
            ca_cert,
            ca_key,
            ca_params: params,
        }
    }

    /// The CA as an rcgen issuer, to sign leaves with.
    pub fn issuer(&self) -> rcgen::Issuer<'_, &rcgen::KeyPair> {
        rcgen::Issuer::from_params(&self.ca_params, &self.ca_key)
    }

    /// A leaf for `names`; returns (chain PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf for `names` into `dir` as `{stem}.crt` / `{stem}.key`.
    pub fn write_leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (c, k) = self.leaf(names);
        let cp = dir.join(format!("{stem}.crt"));
        let kp = dir.join(format!("{stem}.key"));
        std::fs::write(&cp, c).unwrap();
        std::fs::write(&kp, k).unwrap();
        (cp, kp)
    }

    /// A client config trusting only this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_cert.der().clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

// ---------------------------------------------------------------- clients

/// A collected response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub version: Version,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub fn req(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test")
}

/// GET `path` over plain HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(
        addr,
        req("GET", path).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

/// Sends one request over a new plain HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    collect(sender.send_request(req).await.unwrap()).await
}

/// Sends one request over TLS; HTTP/2 when the server picked h2 by ALPN.
pub async fn send_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    req: Request<Full<Bytes>>,
) -> Resp {
    let tls = tls_connect(addr, config, server_name).await.unwrap();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        // HTTP/2 wants an absolute URI (it becomes :scheme/:authority).
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or("/".into());
        parts.uri = format!("https://{server_name}{pq}").parse().unwrap();
        parts.version = Version::HTTP_2;
        parts.headers.remove("host");
        collect(
            sender
                .send_request(Request::from_parts(parts, body))
                .await
                .unwrap(),
        )
        .await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        collect(sender.send_request(req).await.unwrap()).await
    }
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

pub async fn collect(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Resp {
        status: parts.status,
        headers: parts.headers,
        version: parts.version,
        body,
    }
}

/// Polls `f` until it returns true, for at most `timeout`.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A minimal config proxying everything to `upstream_url`.
pub fn proxy_config(upstream_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[log]
access_log = false

[upstreams.app]
url = "{upstream_url}"
connect_timeout = "1s"
timeout = "2s"

[[routes]]
path = "/"
upstream = "app"
"#
    )
}
