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
    pub jwt: Option<RawJwt>,
    pub identity: Option<RawIdentity>,
    pub tokens: Option<RawTokens>,
    pub store: Option<RawStore>,
    pub admin: Option<RawAdmin>,
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
    pub request_buffer_budget: Option<ByteSize>,
    pub max_connections: Option<usize>,
    pub shutdown_grace: Option<HumanDuration>,
    pub drain_delay: Option<HumanDuration>,
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
    pub acme: Option<RawAcme>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub domains: Option<Vec<Spanned<String>>>,
    pub contact: Option<OneOrMany>,
    pub directory: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub cache: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub renew_before: Option<HumanDuration>,
    pub eab_kid: Option<Spanned<String>>,
    pub eab_hmac_key: Option<Spanned<String>>,
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
    pub request_buffering: Option<ByteSize>,
    pub balance: Option<Spanned<String>>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<HumanDuration>,
    pub health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<Spanned<String>>,
    pub interval: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub healthy: Option<u32>,
    pub unhealthy: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
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
    pub allow_encoded_slash: Option<bool>,
    pub precompressed: Option<bool>,
    pub auth: Option<Spanned<String>>,
    pub require: Option<Spanned<BTreeMap<String, OneOrMany>>>,
    pub methods: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
    pub access_log: Option<bool>,
    pub level: Option<String>,
}

/// A string or a list of strings (`audience = "a"` or `audience = ["a", "b"]`).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub algorithm: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub public_key: Option<Spanned<String>>,
    pub private_key: Option<Spanned<String>>,
    pub jwks_file: Option<Spanned<String>>,
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany>,
    pub leeway: Option<HumanDuration>,
    pub user_id_claim: Option<String>,
    pub header_types: Option<Spanned<Vec<String>>>,
    pub cache_size: Option<usize>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub trusted_issuers: Vec<RawTrustedIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub kid: Spanned<String>,
    pub algorithm: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub public_key: Option<Spanned<String>>,
    pub private_key: Option<Spanned<String>>,
    pub jwks_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedIssuer {
    pub issuer: Spanned<String>,
    pub jwks_url: Spanned<String>,
    pub audience: Option<OneOrMany>,
    pub algorithms: Option<Vec<Spanned<String>>>,
    pub jwks_refresh: Option<HumanDuration>,
    pub ca_file: Option<Spanned<String>>,
    pub user_id_claim: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub claims_header: Option<Spanned<String>>,
    pub forward_token: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    pub obtain_path: Option<Spanned<String>>,
    pub refresh_path: Option<Spanned<String>>,
    pub verify_path: Option<Spanned<String>>,
    pub blacklist_path: Option<Spanned<String>>,
    pub jwks_path: Option<Spanned<String>>,
    pub access_ttl: Option<HumanDuration>,
    pub refresh_ttl: Option<HumanDuration>,
    pub rotate_refresh: Option<bool>,
    pub blacklist_after_rotation: Option<bool>,
    pub session_max: Option<HumanDuration>,
    pub cors_origins: Option<Vec<String>>,
    pub signing_key: Option<Spanned<String>>,
    pub max_body_bytes: Option<ByteSize>,
    pub credentials: Option<RawCredentials>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    pub users_file: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_user: Option<u32>,
    pub per_user_window: Option<HumanDuration>,
    pub per_address: Option<u32>,
    pub per_address_window: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub path: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub timeout: Option<HumanDuration>,
    pub purge_interval: Option<HumanDuration>,
}
