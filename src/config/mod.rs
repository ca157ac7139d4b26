//! Typed, validated configuration and `load(path)`.
//!
//! Loading goes file -> raw serde structs (`file.rs`, unknown keys refused)
//! -> typed structs (`validate.rs`). After `load` returns, no code parses a
//! string from the config again. Every error names the file, the line and
//! the key, e.g. `gateway.toml:14: routes[1].upstream: no upstream named "ap"`.

mod file;
mod validate;
pub mod values;

use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from; relative paths in it resolve against
    /// its folder.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub tls: Option<TlsConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes sorted by match order: longest prefix first.
    pub routes: Vec<RouteConfig>,
    pub log: LogConfig,
    /// Token verification (and, later, signing) keys; None: no edge auth.
    pub jwt: Option<JwtConfig>,
    pub identity: IdentityConfig,
    /// Token issuing; None: the gateway issues no tokens.
    pub tokens: Option<TokensConfig>,
    pub store: StoreConfig,
    /// The admin listener (/metrics, /readyz); None: none.
    pub admin: Option<AdminConfig>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub obtain_path: String,
    pub refresh_path: String,
    pub verify_path: String,
    pub blacklist_path: String,
    /// Where the public signing keys are published (asymmetric keys only).
    pub jwks_path: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub rotate_refresh: bool,
    pub blacklist_after_rotation: bool,
    /// A login's family ends this long after the login.
    pub session_max: Duration,
    /// Origins allowed to call the token routes from a browser ("*": any).
    pub cors_origins: Vec<String>,
    /// The kid of the [[jwt.keys]] entry that signs; None: the single key.
    pub signing_key: Option<String>,
    pub max_body_bytes: u64,
    pub credentials: CredentialsConfig,
    pub rate_limit: RateLimitConfig,
}

#[derive(Debug, Clone)]
pub enum CredentialsConfig {
    /// A TOML file of users, re-read on reload.
    UsersFile(PathBuf),
    /// POST {"username","password"} to the app, which owns the users.
    Upstream {
        upstream: String,
        path: String,
        timeout: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub per_user: u32,
    pub per_user_window: Duration,
    pub per_address: u32,
    pub per_address_window: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub purge_interval: Duration,
}

/// Where token state lives: one SQLite file (one gateway) or Redis
/// (shared by replicas).
#[derive(Clone)]
pub enum StoreBackend {
    Sqlite {
        path: PathBuf,
    },
    Redis {
        /// `redis://`, `rediss://` or `redis+unix://`; may hold a password.
        url: String,
        /// `[store] password`, resolved (`env:NAME` allowed).
        password: Option<String>,
        key_prefix: String,
        /// Connect and command deadline.
        timeout: Duration,
    },
}

// SECURITY: never print the password, in the field or in the URL.
impl fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreBackend::Sqlite { path } => write!(f, "sqlite {}", path.display()),
            StoreBackend::Redis { url, .. } => {
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
                    _ => url.clone(),
                };
                write!(f, "redis {shown}")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub redirect_http: bool,
    pub health_path: String,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// Bytes of request bodies all connections together may hold in
    /// memory while buffering them (`request_buffering`).
    pub request_buffer_budget: u64,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// After SIGTERM, /readyz answers 503 and listeners keep accepting for
    /// this long before they stop.
    pub drain_delay: Duration,
    /// Runtime worker threads; 0 means one per CPU.
    pub workers: usize,
    /// Peers whose X-Forwarded-* headers are believed and appended to.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Default certificate: the first one, served when SNI matches nothing.
    pub default: CertSource,
    /// More certificates, chosen by SNI server name (lowercase).
    pub sni: Vec<(String, CertSource)>,
    pub min_version: TlsVersion,
    pub hsts: Option<String>,
    /// `[tls.acme]`: certificates obtained and renewed from an ACME CA.
    pub acme: Option<AcmeConfig>,
    /// `self_signed = true` beside `[tls.acme]`: served for the ACME
    /// names while their first certificate is pending.
    pub acme_fallback_self_signed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Development only: a certificate for localhost made in memory.
    SelfSigned,
    /// The certificate `[tls.acme]` obtains (no `cert`/`key` given).
    Acme,
}

/// Let's Encrypt's production directory, the default `directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// Answered on the main (TLS) listener.
    TlsAlpn01,
    /// Answered on `http_listen`.
    Http01,
}

impl AcmeChallenge {
    pub fn name(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Lowercase DNS names; the first names the cache files.
    pub domains: Vec<String>,
    pub contact: Vec<String>,
    pub directory: String,
    pub ca_file: Option<PathBuf>,
    pub cache: PathBuf,
    pub challenge: AcmeChallenge,
    /// None: 30 days, or a third of the lifetime when that is shorter.
    pub renew_before: Option<Duration>,
    /// External account binding: key id and the decoded HMAC key.
    pub eab: Option<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// One or more servers of the same application.
    pub servers: Vec<UpstreamAddr>,
    pub connect_timeout: Duration,
    /// Time allowed until the response headers arrive.
    pub timeout: Duration,
    pub preserve_host: bool,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// Bodies up to this size are received whole before the upstream is
    /// contacted (0: every body streams).
    pub request_buffering: u64,
    pub balance: Balance,
    /// Failures within `fail_timeout` that take a server out for
    /// `fail_timeout` (0: never taken out by failures).
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Active health checks; None: off.
    pub health_check: Option<HealthCheckConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a server back.
    pub healthy: u32,
    /// Consecutive failures that take it out.
    pub unhealthy: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// `http://host:port` (host may be a name; resolved at connect time).
    Tcp { authority: String },
    /// `unix:/path/to.sock`
    Unix { path: PathBuf },
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp { authority } => write!(f, "http://{authority}"),
            UpstreamAddr::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Path prefix, always starting with '/'.
    pub path: String,
    pub target: RouteTarget,
    pub policy: RoutePolicy,
}

/// Who may use a route.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub auth: AuthMode,
    /// Claim conditions, all of which must hold.
    pub require: Vec<ClaimRule>,
    /// Allowed methods; None allows all.
    pub methods: Option<Vec<http::Method>>,
    /// Paths with an encoded `/` or `\\` (`%2F`, `%5C`) are accepted on this
    /// route (matched on the decoded path) instead of refused with 400.
    pub allow_encoded_slash: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A valid token is needed.
    Required,
    /// A token is checked if present; without one the request is anonymous.
    Optional,
    /// The Authorization header is neither checked nor required.
    None,
}

/// At least one of `any_of` must be in the claim (an array, a
/// space-separated string such as `scope`, or a single value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub claim: String,
    pub any_of: Vec<String>,
}

/// JWT signature algorithms the gateway accepts (one pinned per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlg {
    pub const ALL: [JwtAlg; 12] = [
        JwtAlg::HS256,
        JwtAlg::HS384,
        JwtAlg::HS512,
        JwtAlg::RS256,
        JwtAlg::RS384,
        JwtAlg::RS512,
        JwtAlg::PS256,
        JwtAlg::PS384,
        JwtAlg::PS512,
        JwtAlg::ES256,
        JwtAlg::ES384,
        JwtAlg::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JwtAlg::HS256 => "HS256",
            JwtAlg::HS384 => "HS384",
            JwtAlg::HS512 => "HS512",
            JwtAlg::RS256 => "RS256",
            JwtAlg::RS384 => "RS384",
            JwtAlg::RS512 => "RS512",
            JwtAlg::PS256 => "PS256",
            JwtAlg::PS384 => "PS384",
            JwtAlg::PS512 => "PS512",
            JwtAlg::ES256 => "ES256",
            JwtAlg::ES384 => "ES384",
            JwtAlg::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(s: &str) -> Option<JwtAlg> {
        JwtAlg::ALL.into_iter().find(|a| a.name() == s)
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, JwtAlg::HS256 | JwtAlg::HS384 | JwtAlg::HS512)
    }
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Verification keys; with one entry and no kid, every token uses it.
    pub keys: Vec<KeySpec>,
    pub issuer: Option<String>,
    /// Empty: not checked.
    pub audience: Vec<String>,
    pub leeway: Duration,
    pub user_id_claim: String,
    /// Authorization schemes accepted (compared case-insensitively).
    pub header_types: Vec<String>,
    /// Verified-token cache entries; 0 turns the cache off.
    pub cache_size: usize,
    pub trusted_issuers: Vec<TrustedIssuer>,
}

/// One configured key, not yet parsed (auth parses it at load).
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub kid: Option<String>,
    pub algorithm: JwtAlg,
    pub material: KeyMaterial,
    /// `FILE:LINE: KEY` of the entry, for error messages.
    pub origin: String,
}

#[derive(Clone)]
pub enum KeyMaterial {
    /// HMAC secret bytes.
    Secret(Vec<u8>),
    /// PEM public key file.
    PublicKey(PathBuf),
    /// PEM private key (verifies with its public half; signs tokens).
    PrivateKey(PemSource),
    /// A JWKS document on disk; each key's kid selects it.
    JwksFile(PathBuf),
}

// SECURITY: never print key material.
impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Secret(_) => f.write_str("Secret(<redacted>)"),
            KeyMaterial::PublicKey(p) => write!(f, "PublicKey({})", p.display()),
            KeyMaterial::PrivateKey(p) => write!(f, "PrivateKey({})", p.display()),
            KeyMaterial::JwksFile(p) => write!(f, "JwksFile({})", p.display()),
        }
    }
}

/// Where a private key's PEM comes from: a file (read at each load), or an
/// environment variable holding the PEM itself (`env:NAME`).
#[derive(Clone)]
pub enum PemSource {
    File(PathBuf),
    Env { name: String, pem: Vec<u8> },
}

impl PemSource {
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            PemSource::File(p) => std::fs::read(p),
            PemSource::Env { pem, .. } => Ok(pem.clone()),
        }
    }

    /// Where it comes from, for messages (never the key itself).
    pub fn display(&self) -> String {
        match self {
            PemSource::File(p) => p.display().to_string(),
            PemSource::Env { name, .. } => format!("env:{name}"),
        }
    }
}

/// An external identity provider whose tokens are accepted.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub issuer: String,
    /// https only.
    pub jwks_url: http::Uri,
    pub audience: Vec<String>,
    pub algorithms: Vec<JwtAlg>,
    pub jwks_refresh: Duration,
    pub ca_file: Option<PathBuf>,
    pub user_id_claim: String,
}

/// Identity headers injected for the upstream.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// (header name, claim), header names lowercase.
    pub headers: Vec<(http::HeaderName, String)>,
    /// All verified claims as base64url JSON.
    pub claims_header: Option<http::HeaderName>,
    /// Keep the Authorization header for the upstream.
    pub forward_token: bool,
}

#[derive(Debug, Clone)]
pub enum RouteTarget {
    Static(StaticRoute),
    Upstream(UpstreamRoute),
}

#[derive(Debug, Clone)]
pub struct StaticRoute {
    /// Absolute (resolved against the config file's folder).
    pub root: PathBuf,
    pub cache_control: Option<String>,
    /// Single-page apps: a file under `root` answered for unknown paths.
    pub fallback: Option<String>,
    /// Serve `.br`/`.gz` siblings when the client accepts them.
    pub precompressed: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamRoute {
    pub upstream: String,
    /// Remove the route prefix before forwarding.
    pub strip_prefix: bool,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub access_log: bool,
    /// Default level filter when RUST_LOG is not set.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    /// Access lines in nginx's combined format on stdout; the rest as text.
    Combined,
}

/// A configuration that could not be loaded. Its `Display` is the whole
/// report: one line per problem, each naming file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .problems.join("\n"))]
    Invalid { problems: Vec<String> },
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(path, &text)
}

/// Parses and validates config text as if read from `path`.
pub fn load_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
    validate::parse_and_validate(path, text).map_err(|problems| ConfigError::Invalid { problems })
}

impl Config {
    /// The folder relative paths in the file resolve against.
    pub fn base_dir(&self) -> &Path {
        base_dir_of(&self.path)
    }
}

pub(crate) fn base_dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
