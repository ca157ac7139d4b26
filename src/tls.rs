//! rustls server configuration: certificates from PEM files (or a
//! development self-signed one), chosen by SNI with the first as default;
//! TLS 1.2 and 1.3; ALPN h2 and http/1.1.
//!
//! Built whole at start and on every reload: a reload swaps the acceptor,
//! connections already open keep the config they shook hands with.
//!
//! With `[tls.acme]` the resolver also reads an [`AcmeCerts`], which
//! outlives reloads and which the ACME manager (`crate::acme`) fills: the
//! current certificate for the ACME names, swapped in place for new
//! handshakes, and the tls-alpn-01 challenge certificates (RFC 8737),
//! served only to a client that offers nothing but `acme-tls/1`.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{CertSource, TlsConfig, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: cannot parse PEM certificate")]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "{path}: no usable private key found (expected a PKCS#8, PKCS#1 RSA or SEC1 EC key in PEM)"
    )]
    BadKey { path: PathBuf },
    #[error("{path}: unsupported private key type")]
    UnsupportedKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{key} does not match the certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot generate the self-signed development certificate")]
    SelfSigned(#[source] rcgen::Error),
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
}

impl TlsError {
    /// The file this error is about, so a caller can point at the config
    /// key that named it (for a mismatch: the key file).
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Read { path, .. }
            | TlsError::NoCertificate { path }
            | TlsError::BadCertificate { path, .. }
            | TlsError::BadKey { path }
            | TlsError::UnsupportedKey { path, .. } => Some(path),
            TlsError::KeyMismatch { key, .. } => Some(key),
            TlsError::SelfSigned(_) | TlsError::Config(_) => None,
        }
    }
}

/// The crypto provider everything TLS uses (ring: no C toolchain beyond cc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ALPN protocol of tls-alpn-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What the ACME manager provides to the resolver; outlives reloads.
#[derive(Debug)]
pub struct AcmeCerts {
    /// Lowercase names the ACME certificate covers.
    pub domains: Vec<String>,
    current: arc_swap::ArcSwapOption<CertifiedKey>,
    /// tls-alpn-01 challenge certificates by name, while an order runs.
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl AcmeCerts {
    pub fn new(domains: Vec<String>) -> Self {
        AcmeCerts {
            domains,
            current: arc_swap::ArcSwapOption::empty(),
            challenges: Mutex::new(HashMap::new()),
        }
    }

    /// New handshakes get `cert` from now on; open connections keep theirs.
    pub fn install(&self, cert: Arc<CertifiedKey>) {
        self.current.store(Some(cert));
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    pub fn set_challenge(&self, name: &str, cert: Option<Arc<CertifiedKey>>) {
        if let Ok(mut map) = self.challenges.lock() {
            match cert {
                Some(c) => map.insert(name.to_string(), c),
                None => map.remove(name),
            };
        }
    }

    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges.lock().ok()?.get(name).cloned()
    }

    fn covers(&self, name: &str) -> bool {
        self.domains.iter().any(|d| d == name)
    }
}

/// A certificate chain and key from PEM text (the ACME cache), checked to
/// match.
pub fn certified_from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the chain".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| "no private key".to_string())?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    // Only a proven mismatch refuses: webpki cannot parse a tls-alpn-01
    // certificate (its acmeIdentifier extension is critical) to compare.
    match certified.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("the key does not match the certificate".into())
        }
        _ => Ok(certified),
    }
}

/// Builds the rustls server config for `cfg`; `acme` when `[tls.acme]` is
/// configured.
pub fn server_config(
    cfg: &TlsConfig,
    acme: Option<&Arc<AcmeCerts>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    // With ACME as the default, there is no certificate to load: pending
    // names get the self-signed fallback when configured, else an alert.
    let default = match (&cfg.default, cfg.acme_fallback_self_signed) {
        (CertSource::Acme, false) => None,
        (CertSource::Acme, true) => Some(Arc::new(load_cert(&CertSource::SelfSigned, &provider)?)),
        (source, _) => Some(Arc::new(load_cert(source, &provider)?)),
    };
    let fallback = match (cfg.acme_fallback_self_signed, &cfg.default) {
        (true, CertSource::Acme) => default.clone(),
        (true, _) => Some(Arc::new(load_cert(&CertSource::SelfSigned, &provider)?)),
        (false, _) => None,
    };
    let mut by_name = HashMap::new();
    for (name, source) in &cfg.sni {
        by_name.insert(name.clone(), Arc::new(load_cert(source, &provider)?));
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            default,
            by_name,
            acme: acme.cloned(),
            fallback,
            acme_is_default: cfg.default == CertSource::Acme,
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme.is_some() {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(config))
}

fn load_cert(source: &CertSource, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let (chain, key, cert_path, key_path) = match source {
        CertSource::SelfSigned => {
            let generated = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ])
            .map_err(TlsError::SelfSigned)?;
            let key =
                PrivateKeyDer::try_from(generated.signing_key.serialize_der()).map_err(|_| {
                    TlsError::BadKey {
                        path: "<self-signed>".into(),
                    }
                })?;
            (
                vec![generated.cert.der().clone()],
                key,
                PathBuf::from("<self-signed>"),
                PathBuf::from("<self-signed>"),
            )
        }
        CertSource::Files { cert, key } => {
            let chain = read_chain(cert)?;
            let key_der = read_key(key)?;
            (chain, key_der, cert.clone(), key.clone())
        }
        CertSource::Acme => {
            return Err(TlsError::Config(rustls::Error::General(
                "the ACME certificate is not loaded from files".into(),
            )))
        }
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key_path.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(_) => Err(TlsError::KeyMismatch {
            cert: cert_path,
            key: key_path,
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate {
            path: path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::BadKey {
        path: path.to_path_buf(),
    })
}

/// Picks the certificate by SNI server name; the first configured one when
/// the name is unknown or absent (clients connecting by IP send none).
#[derive(Debug)]
struct SniResolver {
    /// None: ACME is the default and has nothing yet (an alert).
    default: Option<Arc<CertifiedKey>>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
    acme: Option<Arc<AcmeCerts>>,
    /// For ACME names while their certificate is pending (`self_signed`).
    fallback: Option<Arc<CertifiedKey>>,
    acme_is_default: bool,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        if let Some(acme) = &self.acme {
            // tls-alpn-01: the validator offers `acme-tls/1` alone, and
            // gets the challenge certificate or nothing (RFC 8737 3).
            let mut alpn = hello.alpn().into_iter().flatten();
            if alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none() {
                return acme.challenge(name.as_deref()?);
            }
            let covered = name.as_deref().is_some_and(|n| acme.covers(n));
            if covered
                || (self.acme_is_default
                    && name
                        .as_deref()
                        .is_none_or(|n| !self.by_name.contains_key(n)))
            {
                // Pending: the files' default (say certbot's, while
                // moving off it), else the self-signed fallback, else an
                // alert.
                return acme.current().or_else(|| {
                    if self.acme_is_default {
                        self.fallback.clone()
                    } else {
                        self.default.clone()
                    }
                });
            }
        }
        name.as_deref()
            .and_then(|n| self.by_name.get(n))
            .or(self.default.as_ref())
            .cloned()
    }
}
