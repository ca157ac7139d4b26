//! Automatic HTTPS: certificates for `[tls.acme] domains` obtained and
//! renewed from an ACME CA (RFC 8555) with instant-acme, which does the
//! JWS and the order protocol; this module keeps the cache, answers the
//! challenges, schedules renewals and backs off.
//!
//! - At start a cached certificate that is still valid and covers every
//!   domain is served at once (a restart orders nothing); otherwise one is
//!   ordered in the background while handshakes for those names get the
//!   self-signed fallback (`self_signed = true`) or an alert.
//! - It is renewed `renew_before` its expiry (default 30 days, or a third
//!   of the lifetime when that is shorter) and swapped in place: open
//!   connections keep the one they shook hands with.
//! - A failed attempt is logged once, counted, and retried after 10 s,
//!   doubling to an hour (an hour at least when the CA says rateLimited);
//!   a certificate that is still valid is never taken down.
//! - `gateway acme renew` drops a marker file in the cache; the running
//!   gateway sees it within a second and renews now.
//!
//! Cache (`cache`, created 0700, files 0600): `account.json` (the account
//! key and URL, for the directory it was made on), `DOMAIN.crt.pem` and
//! `DOMAIN.key.pem` (DOMAIN: the first name), `renew` (the marker).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;

use crate::config::{AcmeChallenge, AcmeConfig};
use crate::tls::AcmeCerts;

const FIRST_RETRY: Duration = Duration::from_secs(10);
/// The least time between two successful orders, whatever `renew_before`
/// says (one at least as long as the lifetime makes every certificate due
/// at once).
const MIN_SPACING: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// How long an order may take to become ready, and then to be issued.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the manager looks for the renew marker.
const TICK: Duration = Duration::from_secs(1);
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl AcmeError {
    fn rate_limited(&self) -> bool {
        matches!(self, AcmeError::Protocol(instant_acme::Error::Api(p))
            if p.r#type.as_deref().is_some_and(|t| t.ends_with(":rateLimited")))
    }
}

/// What the current certificate says about itself.
#[derive(Debug, Clone, Copy)]
pub struct CertDates {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

pub struct Acme {
    pub certs: Arc<AcmeCerts>,
    config: AcmeConfig,
    /// http-01: token -> key authorization, while an order runs.
    http_tokens: Mutex<HashMap<String, String>>,
    dates: Mutex<Option<CertDates>>,
}

impl Acme {
    /// The ACME state for `config`, with the cached certificate installed
    /// when it is valid and covers every domain.
    pub fn new(config: &AcmeConfig) -> Arc<Acme> {
        let acme = Arc::new(Acme {
            certs: Arc::new(AcmeCerts::new(config.domains.clone())),
            config: config.clone(),
            http_tokens: Mutex::new(HashMap::new()),
            dates: Mutex::new(None),
        });
        match cached(config) {
            Ok(Some((cert, dates))) => {
                tracing::info!(domains = ?config.domains, expires = %humantime::format_rfc3339_seconds(dates.not_after), "ACME certificate loaded from the cache");
                acme.serve(cert, dates);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ACME cache not usable; a certificate will be ordered")
            }
        }
        acme
    }

    pub fn challenge(&self) -> AcmeChallenge {
        self.config.challenge
    }

    /// The key authorization for an http-01 request path, when it is one.
    pub fn http01_answer(&self, path: &str) -> Option<Option<String>> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        Some(self.http_tokens.lock().ok()?.get(token).cloned())
    }

    fn serve(&self, cert: Arc<CertifiedKey>, dates: CertDates) {
        self.certs.install(cert);
        if let Ok(mut d) = self.dates.lock() {
            *d = Some(dates);
        }
        crate::metrics::acme_expiry(self.first(), unix(dates.not_after));
    }

    fn first(&self) -> &str {
        self.config.domains.first().map_or("", String::as_str)
    }

    /// When the current certificate is due (now when there is none).
    fn due(&self) -> SystemTime {
        let dates = self.dates.lock().ok().and_then(|d| *d);
        match dates {
            None => SystemTime::now(),
            Some(d) => renew_at(&self.config, d),
        }
    }

    /// Orders, renews and retries until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut failures = 0u32;
        let mut next = self.due();
        loop {
            while SystemTime::now() < next && !self.take_marker() {
                tokio::time::sleep(TICK).await;
            }
            tracing::info!(domains = ?self.config.domains, directory = %self.config.directory, challenge = self.config.challenge.name(), "ACME: ordering a certificate");
            match self.obtain().await {
                Ok(dates) => {
                    failures = 0;
                    crate::metrics::acme_order(self.first(), true);
                    tracing::info!(domains = ?self.config.domains, expires = %humantime::format_rfc3339_seconds(dates.not_after), renew_from = %humantime::format_rfc3339_seconds(renew_at(&self.config, dates)), "ACME certificate obtained and installed");
                    next = self.due().max(SystemTime::now() + MIN_SPACING);
                    if renew_at(&self.config, dates) <= SystemTime::now() {
                        tracing::warn!(renew_before = ?self.config.renew_before, "tls.acme.renew_before is at least the certificate's lifetime: it is renewed again every {}s", MIN_SPACING.as_secs());
                    }
                }
                Err(e) => {
                    failures += 1;
                    crate::metrics::acme_order(self.first(), false);
                    let mut delay = FIRST_RETRY
                        .saturating_mul(1 << failures.saturating_sub(1).min(16))
                        .min(MAX_RETRY);
                    if e.rate_limited() {
                        delay = MAX_RETRY;
                    }
                    // The CA's own Retry-After while an order was polled.
                    if let AcmeError::Protocol(instant_acme::Error::Timeout(Some(at))) = &e {
                        delay = delay.max(at.saturating_duration_since(std::time::Instant::now()));
                    }
                    let serving = self
                        .dates
                        .lock()
                        .ok()
                        .and_then(|d| *d)
                        .map(|d| humantime::format_rfc3339_seconds(d.not_after).to_string());
                    tracing::warn!(error = %crate::body::error_chain(&e), attempt = failures, retry_in = %humantime::format_duration(delay), serving_until = serving.as_deref().unwrap_or("none"), "ACME order failed; the certificate being served (if any) is kept");
                    next = SystemTime::now() + delay;
                }
            }
        }
    }

    /// Whether `gateway acme renew` asked for a renewal (and forgets it).
    fn take_marker(&self) -> bool {
        let marker = renew_marker(&self.config);
        if marker.exists() {
            let _ = std::fs::remove_file(&marker);
            tracing::info!("ACME: renewal asked for by `gateway acme renew`");
            return true;
        }
        false
    }

    /// One order, start to finish; the certificate is cached and served.
    async fn obtain(&self) -> Result<CertDates, AcmeError> {
        let ids: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let account = self.account().await?;
        let mut order = match account.new_order(&NewOrder::new(&ids)).await {
            // The CA no longer knows the cached account (a test CA that
            // restarted, an account deactivated elsewhere): a new one.
            Err(instant_acme::Error::Api(p))
                if p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
            {
                tracing::warn!(directory = %self.config.directory, "ACME: the CA does not know the cached account; creating a new one");
                let _ = std::fs::remove_file(self.config.cache.join("account.json"));
                self.account()
                    .await?
                    .new_order(&NewOrder::new(&ids))
                    .await?
            }
            other => other?,
        };
        // Challenge answers are withdrawn however this ends.
        let _cleanup = Cleanup(self);
        let kind = match self.config.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::Other(format!(
                        "authorization for {} is {other:?}",
                        a.identifier()
                    )))
                }
            }
            let name = a.identifier().to_string();
            let mut challenge = a.challenge(kind.clone()).ok_or_else(|| {
                AcmeError::Other(format!(
                    "the CA offers no {} challenge for {name}",
                    self.config.challenge.name()
                ))
            })?;
            let key_auth = challenge.key_authorization();
            match self.config.challenge {
                AcmeChallenge::TlsAlpn01 => {
                    let cert = alpn_challenge_cert(&name, key_auth.digest().as_ref())?;
                    self.certs.set_challenge(&name, Some(Arc::new(cert)));
                }
                AcmeChallenge::Http01 => {
                    if let Ok(mut t) = self.http_tokens.lock() {
                        t.insert(challenge.token.clone(), key_auth.as_str().to_string());
                    }
                }
            }
            challenge.set_ready().await?;
        }
        let policy = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        let status = order.poll_ready(&policy).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Other(format!(
                "the order is {status:?}: {}",
                why_invalid(&mut order).await
            )));
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&policy).await?;
        let cert = crate::tls::certified_from_pem(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| AcmeError::Other(format!("the CA's certificate: {e}")))?;
        let dates = dates_of(cert.cert.first().map_or(&[][..], |c| c.as_ref()))
            .map_err(AcmeError::Other)?;
        write_cache(&self.config, &chain_pem, &key_pem)?;
        self.serve(Arc::new(cert), dates);
        Ok(dates)
    }

    /// The cached account for this directory, or a new one (cached).
    async fn account(&self) -> Result<Account, AcmeError> {
        let builder = || match &self.config.ca_file {
            Some(pem) => Account::builder_with_root(pem),
            None => Account::builder(),
        };
        let path = self.config.cache.join("account.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(saved) = serde_json::from_str::<SavedAccount>(&text) {
                if saved.directory == self.config.directory {
                    return Ok(builder()?.from_credentials(saved.credentials).await?);
                }
            }
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let eab = self
            .config
            .eab
            .as_ref()
            .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                eab.as_ref(),
            )
            .await?;
        let saved = SavedAccount {
            directory: self.config.directory.clone(),
            credentials,
        };
        let text = serde_json::to_string(&saved).map_err(|e| AcmeError::Other(e.to_string()))?;
        write_private(&self.config.cache, "account.json", text.as_bytes())?;
        tracing::info!(directory = %self.config.directory, "ACME account created");
        Ok(account)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedAccount {
    directory: String,
    credentials: AccountCredentials,
}

struct Cleanup<'a>(&'a Acme);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for d in &self.0.config.domains {
            self.0.certs.set_challenge(d, None);
        }
        if let Ok(mut t) = self.0.http_tokens.lock() {
            t.clear();
        }
    }
}

/// What the CA said about the authorizations of a failed order.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut why = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut a)) = authorizations.next().await {
        let name = a.identifier().to_string();
        if let Ok(state) = a.refresh().await {
            for c in &state.challenges {
                if let Some(e) = &c.error {
                    why.push(format!("{name}: {e}"));
                }
            }
        }
    }
    if why.is_empty() {
        "no detail from the CA".into()
    } else {
        why.join("; ")
    }
}

/// The tls-alpn-01 certificate for `name` (RFC 8737 3): self-signed, the
/// name as its only SAN, the key authorization's digest in the critical
/// acmeIdentifier extension.
fn alpn_challenge_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let err = |e: rcgen::Error| AcmeError::Other(format!("challenge certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    crate::tls::certified_from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .map_err(AcmeError::Other)
}

/// When a certificate with `dates` is due for renewal.
pub fn renew_at(config: &AcmeConfig, dates: CertDates) -> SystemTime {
    let lifetime = dates
        .not_after
        .duration_since(dates.not_before)
        .unwrap_or_default();
    let before = match config.renew_before {
        // Taken as written, even when a fresh certificate is then due at
        // once (renewals are spaced by MIN_SPACING; a warning says so).
        Some(d) => d,
        None => Duration::from_secs(30 * 86400).min(lifetime / 3),
    };
    dates
        .not_after
        .checked_sub(before)
        .unwrap_or(dates.not_before)
        .max(dates.not_before)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn cert_path(config: &AcmeConfig) -> PathBuf {
    config.cache.join(format!(
        "{}.crt.pem",
        config.domains.first().map_or("", String::as_str)
    ))
}

fn key_path(config: &AcmeConfig) -> PathBuf {
    config.cache.join(format!(
        "{}.key.pem",
        config.domains.first().map_or("", String::as_str)
    ))
}

pub fn renew_marker(config: &AcmeConfig) -> PathBuf {
    config.cache.join("renew")
}

/// The leaf's validity period, and that it names every domain.
fn dates_of(leaf_der: &[u8]) -> Result<CertDates, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let v = cert.validity();
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok(CertDates {
        not_before: at(v.not_before.timestamp()),
        not_after: at(v.not_after.timestamp()),
    })
}

fn names_of(leaf_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf_der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The cached certificate, when there is one that is still valid and
/// covers every domain.
pub fn cached(config: &AcmeConfig) -> Result<Option<(Arc<CertifiedKey>, CertDates)>, String> {
    let (cp, kp) = (cert_path(config), key_path(config));
    let (Ok(chain), Ok(key)) = (std::fs::read(&cp), std::fs::read(&kp)) else {
        return Ok(None);
    };
    let cert = crate::tls::certified_from_pem(&chain, &key)
        .map_err(|e| format!("{}: {e}", cp.display()))?;
    let leaf = cert.cert.first().map_or(&[][..], |c| c.as_ref());
    let dates = dates_of(leaf).map_err(|e| format!("{}: {e}", cp.display()))?;
    let names = names_of(leaf);
    if let Some(missing) = config.domains.iter().find(|d| !names.contains(d)) {
        return Err(format!("{} does not name {missing}", cp.display()));
    }
    if dates.not_after <= SystemTime::now() {
        return Err(format!("{} has expired", cp.display()));
    }
    Ok(Some((Arc::new(cert), dates)))
}

/// For `gateway check`: the cached certificate and its expiry, or pending.
pub fn describe(config: &AcmeConfig) -> String {
    match cached(config) {
        Ok(Some((_, dates))) => format!(
            "certificate cached, expires {} (renewal from {})",
            humantime::format_rfc3339_seconds(dates.not_after),
            humantime::format_rfc3339_seconds(renew_at(config, dates))
        ),
        Ok(None) => "pending: no certificate cached yet (ordered at start)".into(),
        Err(e) => format!("pending: {e} (a new one is ordered at start)"),
    }
}

fn create_cache(dir: &Path) -> Result<(), AcmeError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AcmeError::Cache {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `dir/name` with mode 0600, whole or not at all.
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), AcmeError> {
    create_cache(dir)?;
    let path = dir.join(name);
    crate::files::write_private(&path, bytes).map_err(|source| AcmeError::Cache { path, source })
}

fn write_cache(config: &AcmeConfig, chain_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
    let name = |p: PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    // The key first: a chain without its key is never left behind.
    write_private(&config.cache, &name(key_path(config)), key_pem.as_bytes())?;
    write_private(
        &config.cache,
        &name(cert_path(config)),
        chain_pem.as_bytes(),
    )
}

/// `gateway acme renew`: asks the running gateway to renew now.
pub fn request_renewal(config: &AcmeConfig) -> Result<PathBuf, AcmeError> {
    write_private(&config.cache, "renew", b"")?;
    Ok(renew_marker(config))
}

/// Makes the cache directory at start, so a bad path is found before the
/// first order.
pub fn prepare(config: &AcmeConfig) -> Result<(), AcmeError> {
    create_cache(&config.cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(renew_before: Option<Duration>) -> AcmeConfig {
        AcmeConfig {
            domains: vec!["gw.test".into()],
            contact: vec![],
            directory: crate::config::LETS_ENCRYPT.into(),
            ca_file: None,
            cache: PathBuf::from("acme"),
            challenge: AcmeChallenge::TlsAlpn01,
            renew_before,
            eab: None,
        }
    }

    #[test]
    fn renewal_is_30_days_before_or_a_third_of_a_short_lifetime() {
        let days = |n: u64| Duration::from_secs(n * 86400);
        let t0 = UNIX_EPOCH + days(1000);
        let lasting = |n: u64| CertDates {
            not_before: t0,
            not_after: t0 + days(n),
        };
        // Let's Encrypt's 90 days: 30 days before.
        assert_eq!(renew_at(&config(None), lasting(90)), t0 + days(60));
        // Six-day certificates: two days before.
        assert_eq!(renew_at(&config(None), lasting(6)), t0 + days(4));
        // As written, even past the lifetime (then due at once).
        assert_eq!(
            renew_at(&config(Some(days(10))), lasting(90)),
            t0 + days(80)
        );
        assert_eq!(renew_at(&config(Some(days(100))), lasting(90)), t0);
    }

    #[test]
    fn the_alpn_challenge_certificate_is_well_formed() {
        let digest = [7u8; 32];
        let cert = alpn_challenge_cert("gw.test", &digest).unwrap();
        let leaf = cert.cert[0].as_ref();
        assert_eq!(names_of(leaf), vec!["gw.test".to_string()]);
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        // OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
    }
}
