//! Raw serde structs mirroring the TOML file, one to one.
//!
//! Every table denies unknown fields so a typo is an error, not a silently
//! ignored key. Values that need parsing (durations, sizes, addresses) are
//! parsed while deserializing, so toml can still point at their line; the
//! cross-references (route -> upstream) keep their span with `Spanned`.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

use super::values::{ByteSize, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub log: RawLog,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub http_listen: Option<Spanned<String>>,
    pub redirect_http: Option<bool>,
    pub health_path: Option<Spanned<String>>,
    pub header_read_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub max_header_bytes: Option<ByteSize>,
    pub max_body_bytes: Option<ByteSize>,
    pub max_connections: Option<usize>,
    pub shutdown_grace: Option<HumanDuration>,
    pub workers: Option<usize>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub self_signed: Option<bool>,
    #[serde(default)]
    pub sni: Vec<RawSni>,
    pub min_version: Option<Spanned<String>>,
    pub hsts: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSni {
    pub server_name: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<Spanned<String>>,
    /// Several servers for one upstream, tried round robin.
    pub servers: Option<Vec<Spanned<String>>>,
    pub connect_timeout: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub preserve_host: Option<bool>,
    pub pool_idle_timeout: Option<HumanDuration>,
    pub pool_max_idle: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: Spanned<String>,
    #[serde(rename = "static")]
    pub static_dir: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub cache_control: Option<String>,
    pub fallback: Option<Spanned<String>>,
    pub strip_prefix: Option<bool>,
    pub precompressed: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
    pub access_log: Option<bool>,
    pub level: Option<String>,
}
