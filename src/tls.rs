//! rustls server configuration: certificates from PEM files (or a
//! development self-signed one), chosen by SNI with the first as default;
//! TLS 1.2 and 1.3; ALPN h2 and http/1.1.
//!
//! Built whole at start and on every reload: a reload swaps the acceptor,
//! connections already open keep the config they shook hands with.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Builds the rustls server config for `cfg`.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let default = Arc::new(load_cert(&cfg.default, &provider)?);
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
        .with_cert_resolver(Arc::new(SniResolver { default, by_name }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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
                PrivateKeyDer::try_from(generated.key_pair.serialize_der()).map_err(|_| {
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
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()))
            .unwrap_or(&self.default);
        Some(chosen.clone())
    }
}
