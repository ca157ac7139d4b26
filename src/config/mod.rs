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
    pub max_connections: usize,
    pub shutdown_grace: Duration,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Development only: a certificate for localhost made in memory.
    SelfSigned,
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
}

/// A configuration that could not be loaded. Its `Display` is the whole
/// report: one line per problem, each naming file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
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
