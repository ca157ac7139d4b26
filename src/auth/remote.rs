//! External identity providers (`[[jwt.trusted_issuers]]`): their JWKS is
//! fetched over https at start and cached; refreshed every `jwks_refresh`;
//! an unknown `kid` triggers one refetch, at most once per 30 s per issuer.
//! A failed fetch keeps the last good set and is logged.

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::keys::{parse_jwks, VerifyKey};
use crate::config::TrustedIssuer;

/// Unknown-kid refetches are at most this frequent.
const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub struct RemoteIssuer {
    pub config: TrustedIssuer,
    keys: ArcSwap<HashMap<String, Arc<VerifyKey>>>,
    /// Bumped on every change of the key set (the token cache checks it).
    generation: AtomicU64,
    last_kid_refetch: Mutex<Option<Instant>>,
    tls: Arc<rustls::ClientConfig>,
    /// Serialises fetches so a burst of unknown kids makes one request.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}: cannot read ca_file")]
    CaFile(String, #[source] std::io::Error),
    #[error("{0}: no certificate in ca_file")]
    NoCa(String),
    #[error("connect to {0} failed")]
    Connect(String, #[source] std::io::Error),
    #[error("TLS with {0} failed")]
    Tls(String, #[source] std::io::Error),
    #[error("HTTP to {0} failed")]
    Http(String, #[source] hyper::Error),
    #[error("{0} answered {1}")]
    Status(String, u16),
    #[error("{0}: body too large or unreadable")]
    Body(String),
    #[error("{0}: {1}")]
    Jwks(String, String),
    #[error("{0}: timed out")]
    Timeout(String),
}

impl RemoteIssuer {
    pub fn new(config: TrustedIssuer) -> Result<Self, FetchError> {
        let tls = client_config(&config)?;
        Ok(RemoteIssuer {
            config,
            keys: ArcSwap::from_pointee(HashMap::new()),
            generation: AtomicU64::new(0),
            last_kid_refetch: Mutex::new(None),
            tls,
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.load().get(kid).cloned()
    }

    /// Fetches now; on failure keeps the current set.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let _one = self.fetching.lock().await;
        self.fetch_and_store().await
    }

    /// The fetch itself; the caller holds `fetching`.
    async fn fetch_and_store(&self) -> Result<usize, FetchError> {
        let r = self.fetch_and_store_once().await;
        crate::metrics::jwks_fetch(&self.config.issuer, r.is_ok());
        r
    }

    async fn fetch_and_store_once(&self) -> Result<usize, FetchError> {
        let text = fetch(&self.config.jwks_url, &self.tls).await?;
        let keys = parse_jwks(&text, &self.config.algorithms)
            .map_err(|e| FetchError::Jwks(self.config.jwks_url.to_string(), e))?;
        let map: HashMap<String, Arc<VerifyKey>> = keys
            .into_iter()
            .filter_map(|k| k.kid.clone().map(|kid| (kid, Arc::new(k))))
            .collect();
        let n = map.len();
        self.keys.store(Arc::new(map));
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(issuer = %self.config.issuer, keys = n, "JWKS fetched");
        Ok(n)
    }

    /// For an unknown kid, looked up in the set of generation `seen`:
    /// whether the set may now hold it (look again). Waits for a fetch in
    /// flight (the first one at start, or another request's refetch) and
    /// reuses its result; otherwise refetches, unless one was done in the
    /// last 30 s. Without the wait, a burst of tokens with a rotated-in kid
    /// would all be refused but the one that started the refetch.
    pub async fn refetch_for_unknown_kid(&self, seen: u64) -> bool {
        let _one = self.fetching.lock().await;
        if self.generation() != seen {
            return true;
        }
        {
            let Ok(mut last) = self.last_kid_refetch.lock() else {
                return false;
            };
            if last.is_some_and(|t| t.elapsed() < KID_REFETCH_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.fetch_and_store().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %crate::body::error_chain(&e), "JWKS refetch failed; keeping the last good set");
                false
            }
        }
    }

    /// Fetches now and then every `jwks_refresh` until the issuer is
    /// dropped (a reload replaces it).
    pub fn spawn_refresher(self: &Arc<Self>) {
        let weak: Weak<RemoteIssuer> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let every = me.config.jwks_refresh;
                if let Err(e) = me.refresh().await {
                    tracing::error!(issuer = %me.config.issuer, error = %crate::body::error_chain(&e), "JWKS fetch failed; keeping the last good set");
                }
                drop(me);
                tokio::time::sleep(every).await;
            }
        });
    }
}

fn client_config(cfg: &TrustedIssuer) -> Result<Arc<rustls::ClientConfig>, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let name = path.display().to_string();
            let pem = std::fs::read(path).map_err(|e| FetchError::CaFile(name.clone(), e))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(FetchError::NoCa(name));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                // No system store (minimal images): fall back to Mozilla's roots.
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Jwks(cfg.jwks_url.to_string(), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GET an https URL and return its body as text.
async fn fetch(url: &http::Uri, tls: &Arc<rustls::ClientConfig>) -> Result<String, FetchError> {
    let name = url.to_string();
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url, tls, &name))
        .await
        .map_err(|_| FetchError::Timeout(name.clone()))?
}

async fn fetch_inner(
    url: &http::Uri,
    tls: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<String, FetchError> {
    let host = url
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| FetchError::Connect(name.to_string(), e))?;
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|_| FetchError::Jwks(name.to_string(), "invalid host name".into()))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| FetchError::Tls(name.to_string(), e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| FetchError::Http(name.to_string(), e))?;
    tokio::spawn(conn);
    let authority = url.authority().map_or(host.clone(), |a| a.to_string());
    let req = http::Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "gateway")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Jwks(name.to_string(), e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| FetchError::Http(name.to_string(), e))?;
    if !resp.status().is_success() {
        return Err(FetchError::Status(name.to_string(), resp.status().as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|_| FetchError::Body(name.to_string()))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| FetchError::Body(name.to_string()))
}
