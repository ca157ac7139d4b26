//! Raw structs -> typed `Config`. Every problem found is reported, each as
//! `FILE:LINE: KEY: what is wrong (what was expected)`.
//!
//! Long but flat on purpose: one function per config section, none calling
//! another's, so each section's rules and messages are read in one place;
//! a tenth of the file is tests.

use super::file::{
    RawAcme, RawAdmin, RawConfig, RawIdentity, RawJwt, RawKey, RawRoute, RawStore, RawTls,
    RawTokens, RawUpstream,
};
use super::values::SecretSource;
use super::*;
use std::ops::Range;
use toml::Spanned;

/// Collects problems with their location while validating.
struct Report<'a> {
    file: String,
    text: &'a str,
    problems: Vec<String>,
}

impl Report<'_> {
    /// The span of `key` ("server.redirect_http", "routes[2].path") in
    /// the file, or of the nearest table that holds it: problems found
    /// after deserializing (between sections) still name the key's line.
    fn locate(&self, key: &str) -> Option<Range<usize>> {
        let doc = toml_edit::ImDocument::parse(self.text).ok()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut best = None;
        for part in key.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let Some(next) = item.get(name) else { break };
            item = next;
            if let Some(i) = index {
                let Some(next) = item.get(i) else { break };
                item = next;
            }
            best = item.span().or(best);
            if let Some(t) = item.as_table() {
                // A [table]'s own span may be absent; its header is not.
                best = t.span().or(best);
            }
        }
        best
    }

    fn line_of(&self, span: Option<Range<usize>>) -> usize {
        match span {
            Some(r) => {
                self.text[..r.start.min(self.text.len())]
                    .matches('\n')
                    .count()
                    + 1
            }
            None => 1,
        }
    }

    fn at(&mut self, span: Option<Range<usize>>, key: &str, msg: impl fmt::Display) {
        let span = span.or_else(|| self.locate(key));
        let line = self.line_of(span);
        self.problems
            .push(format!("{}:{line}: {key}: {msg}", self.file));
    }

    fn spanned<T>(&mut self, v: &Spanned<T>, key: &str, msg: impl fmt::Display) {
        self.at(Some(v.span()), key, msg);
    }
}

pub(super) fn parse_and_validate(path: &Path, text: &str) -> Result<Config, Vec<String>> {
    let mut report = Report {
        file: path.display().to_string(),
        text,
        problems: Vec::new(),
    };
    let raw: RawConfig = match serde_path_to_error::deserialize(toml::Deserializer::new(text)) {
        Ok(raw) => raw,
        Err(e) => {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let key = if key == "." {
                "(top level)".to_string()
            } else {
                key
            };
            report.at(inner.span(), &key, plain(inner.message().trim()));
            return Err(report.problems);
        }
    };
    let config = validate(&mut report, path, raw);
    if report.problems.is_empty() {
        Ok(config)
    } else {
        Err(report.problems)
    }
}

/// serde's type errors in plain words: "invalid type: string \"x\",
/// expected usize" becomes "must be a whole number (got string \"x\")".
fn plain(msg: &str) -> String {
    let Some(rest) = msg.strip_prefix("invalid type: ") else {
        return msg.to_string();
    };
    let Some((got, expected)) = rest.rsplit_once(", expected ") else {
        return msg.to_string();
    };
    let want = match expected.trim() {
        "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "i32" => "must be a whole number",
        "a boolean" => "must be true or false",
        "a string" | "a borrowed string" | "string" => "must be a string (in quotes)",
        "a sequence" => "must be a list, e.g. [\"a\", \"b\"]",
        "a map" | "struct" => "must be a table",
        e if e.starts_with("struct ") => "must be a table",
        e if e.contains("integer or a string") => "must be a whole number or a string",
        _ => return msg.to_string(),
    };
    format!("{want} (got {got})")
}

fn validate(r: &mut Report, path: &Path, raw: RawConfig) -> Config {
    let base = base_dir_of(path).to_path_buf();
    let s = raw.server;

    let listen = match &s.listen {
        Some(v) => socket_addr(r, v, "server.listen"),
        None => default_listen(),
    };
    let http_listen = s
        .http_listen
        .as_ref()
        .map(|v| socket_addr(r, v, "server.http_listen"));
    let health_path = match s.health_path {
        Some(v) if !v.get_ref().starts_with('/') => {
            r.spanned(&v, "server.health_path", "must start with '/'");
            String::new()
        }
        Some(v) => v.into_inner(),
        None => "/healthz".to_string(),
    };
    let mut trusted_proxies = Vec::new();
    for (i, v) in s.trusted_proxies.unwrap_or_default().iter().enumerate() {
        let text = v.get_ref().trim();
        // A bare address is a /32 (or /128) network.
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => r.spanned(
                v,
                &format!("server.trusted_proxies[{i}]"),
                format!("invalid CIDR {text:?} (expected e.g. \"10.0.0.0/8\" or \"127.0.0.1\")"),
            ),
        }
    }
    let max_header_bytes = s.max_header_bytes.map_or(16 * 1024, |b| b.0);
    if max_header_bytes < 1024 {
        r.at(None, "server.max_header_bytes", "must be at least 1KiB");
    }
    let server = ServerConfig {
        listen,
        http_listen,
        redirect_http: s.redirect_http.unwrap_or(false),
        health_path,
        header_read_timeout: s
            .header_read_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
        idle_timeout: s.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        max_body_bytes: s.max_body_bytes.map_or(10 * 1024 * 1024, |b| b.0),
        request_buffer_budget: s.request_buffer_budget.map_or(64 * 1024 * 1024, |b| b.0),
        max_connections: s.max_connections.unwrap_or(10_000).max(1),
        shutdown_grace: s.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        drain_delay: s.drain_delay.map_or(Duration::ZERO, |d| d.0),
        workers: s.workers.unwrap_or(0),
        trusted_proxies,
    };
    if server.redirect_http && server.http_listen.is_none() {
        r.at(
            None,
            "server.redirect_http",
            "needs server.http_listen to be set",
        );
    }

    let tls = raw.tls.map(|t| validate_tls(r, &base, t));
    if tls
        .as_ref()
        .and_then(|t| t.acme.as_ref())
        .is_some_and(|a| a.challenge == AcmeChallenge::Http01)
        && server.http_listen.is_none()
    {
        r.at(
            None,
            "tls.acme.challenge",
            "http-01 is answered on server.http_listen, which is not set (the CA connects to port 80)",
        );
    }
    if server.redirect_http && tls.is_none() {
        r.at(
            None,
            "server.redirect_http",
            "needs a [tls] section (nothing to redirect to)",
        );
    }

    let mut upstreams = BTreeMap::new();
    for (name, u) in raw.upstreams {
        if let Some(up) = validate_upstream(r, &base, &name, u) {
            upstreams.insert(name, up);
        }
    }

    let jwt = raw.jwt.map(|j| validate_jwt(r, &base, j));
    let identity = validate_identity(r, raw.identity, jwt.as_ref());
    let tokens = raw
        .tokens
        .map(|t| validate_tokens(r, &base, t, jwt.as_ref(), &upstreams));
    let store = validate_store(r, &base, raw.store);
    let admin = validate_admin(r, raw.admin, &server);

    let mut routes = Vec::new();
    for (i, route) in raw.routes.into_iter().enumerate() {
        if let Some(rc) = validate_route(r, &base, &upstreams, jwt.is_some(), i, route) {
            if routes.iter().any(|o: &RouteConfig| o.path == rc.path) {
                r.at(
                    None,
                    &format!("routes[{i}].path"),
                    format!("duplicate route path {:?}", rc.path),
                );
            }
            routes.push(rc);
        }
    }
    // Longest prefix first; ties keep file order (stable sort).
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));

    let log = LogConfig {
        format: match raw.log.format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                "combined" => LogFormat::Combined,
                other => {
                    r.spanned(
                        &f,
                        "log.format",
                        format!("unknown format {other:?} (expected \"text\", \"json\" or \"combined\")"),
                    );
                    LogFormat::Text
                }
            },
        },
        access_log: raw.log.access_log.unwrap_or(true),
        level: raw.log.level.unwrap_or_else(|| "info".to_string()),
    };

    Config {
        path: path.to_path_buf(),
        server,
        tls,
        upstreams,
        routes,
        log,
        jwt,
        identity,
        tokens,
        store,
        admin,
    }
}

fn token_path(r: &mut Report, v: Option<Spanned<String>>, key: &str, default: &str) -> String {
    match v {
        None => default.to_string(),
        Some(p) if !p.get_ref().starts_with('/') => {
            r.spanned(&p, key, "must start with '/'");
            default.to_string()
        }
        Some(p) => p.into_inner(),
    }
}

fn validate_store(r: &mut Report, base: &Path, raw: Option<RawStore>) -> StoreConfig {
    let raw = raw.unwrap_or_default();
    let purge_interval = raw.purge_interval.map_or(Duration::from_secs(600), |d| d.0);
    let Some(url) = raw.url else {
        for (v, key) in [
            (&raw.password, "store.password"),
            (&raw.key_prefix, "store.key_prefix"),
        ] {
            if let Some(v) = v {
                r.spanned(v, key, "only with store.url (Redis)");
            }
        }
        return StoreConfig {
            backend: StoreBackend::Sqlite {
                path: raw
                    .path
                    .as_ref()
                    .map_or_else(|| base.join("gateway.db"), |p| resolve(base, p.get_ref())),
            },
            purge_interval,
        };
    };
    if let Some(p) = &raw.path {
        r.spanned(
            p,
            "store.path",
            "set either path (SQLite) or url (Redis), not both",
        );
    }
    let text = url.get_ref();
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| text.starts_with(s));
    if !scheme_ok {
        r.spanned(
            &url,
            "store.url",
            "must start with redis://, rediss:// (TLS) or redis+unix:// (e.g. \"redis://127.0.0.1:6379/0\")",
        );
    } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(text.as_str()) {
        r.spanned(&url, "store.url", format!("not a Redis URL: {e}"));
    }
    let password =
        raw.password
            .as_ref()
            .and_then(|p| match SecretSource::parse(p.get_ref()).resolve(base) {
                Ok(v) => Some(v),
                Err(e) => {
                    r.spanned(p, "store.password", e);
                    None
                }
            });
    let key_prefix = match raw.key_prefix {
        Some(p)
            if p.get_ref()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control()) =>
        {
            r.spanned(
                &p,
                "store.key_prefix",
                "must not contain spaces or control characters",
            );
            String::new()
        }
        Some(p) => p.into_inner(),
        None => "gateway:".to_string(),
    };
    StoreConfig {
        backend: StoreBackend::Redis {
            url: url.into_inner(),
            password,
            key_prefix,
            timeout: raw.timeout.map_or(Duration::from_secs(2), |d| d.0),
        },
        purge_interval,
    }
}

fn validate_credentials(
    r: &mut Report,
    base: &Path,
    credentials: Option<super::file::RawCredentials>,
    upstreams: &BTreeMap<String, UpstreamConfig>,
) -> CredentialsConfig {
    let t_credentials = credentials;
    match t_credentials {
        None => CredentialsConfig::UsersFile(base.join("users.toml")),
        Some(c) => match (c.users_file, c.upstream) {
            (Some(f), Some(u)) => {
                r.spanned(
                    &u,
                    "tokens.credentials.upstream",
                    "use either users_file or upstream, not both",
                );
                CredentialsConfig::UsersFile(resolve(base, f.get_ref()))
            }
            (Some(f), None) => CredentialsConfig::UsersFile(resolve(base, f.get_ref())),
            (None, Some(u)) => {
                if !upstreams.contains_key(u.get_ref()) {
                    let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                    r.spanned(
                        &u,
                        "tokens.credentials.upstream",
                        format!(
                            "no upstream named {:?} (known: {})",
                            u.get_ref(),
                            known.join(", ")
                        ),
                    );
                }
                let path = match c.path {
                    Some(p) if p.get_ref().starts_with('/') => p.into_inner(),
                    Some(p) => {
                        r.spanned(&p, "tokens.credentials.path", "must start with '/'");
                        String::new()
                    }
                    None => "/internal/authenticate".to_string(),
                };
                CredentialsConfig::Upstream {
                    upstream: u.into_inner(),
                    path,
                    timeout: c.timeout.map_or(Duration::from_secs(5), |d| d.0),
                }
            }
            (None, None) => {
                if let Some(p) = c.path.as_ref() {
                    r.spanned(
                        p,
                        "tokens.credentials.path",
                        "only applies with tokens.credentials.upstream",
                    );
                } else if c.timeout.is_some() {
                    r.at(
                        None,
                        "tokens.credentials.timeout",
                        "only applies with tokens.credentials.upstream",
                    );
                }
                CredentialsConfig::UsersFile(base.join("users.toml"))
            }
        },
    }
}

fn validate_tokens(
    r: &mut Report,
    base: &Path,
    t: RawTokens,
    jwt: Option<&JwtConfig>,
    upstreams: &BTreeMap<String, UpstreamConfig>,
) -> TokensConfig {
    let Some(jwt) = jwt else {
        r.at(None, "tokens", "needs a [jwt] section with the signing key");
        return default_tokens(base);
    };
    // The signing key: named by kid, or the single key; it must be able to sign.
    let signer = match &t.signing_key {
        Some(kid) => {
            let found = jwt
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.get_ref().as_str()));
            if found.is_none() {
                let known: Vec<&str> = jwt.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                r.spanned(
                    kid,
                    "tokens.signing_key",
                    format!(
                        "no [[jwt.keys]] entry with kid {:?} (known: {})",
                        kid.get_ref(),
                        known.join(", ")
                    ),
                );
            }
            found
        }
        None => {
            if jwt.keys.len() > 1 || jwt.keys.iter().any(|k| k.kid.is_some()) {
                r.at(
                    None,
                    "tokens.signing_key",
                    "missing: with [[jwt.keys]], name the kid that signs",
                );
                None
            } else {
                jwt.keys.first()
            }
        }
    };
    if let Some(k) = signer {
        if !matches!(
            k.material,
            KeyMaterial::Secret(_) | KeyMaterial::PrivateKey(_)
        ) {
            r.problems.push(format!(
                "{}: cannot sign tokens: use secret (HS*) or private_key",
                k.origin
            ));
        }
    } else if t.signing_key.is_none() && jwt.keys.is_empty() && r.problems.is_empty() {
        // (A key already reported as broken is not reported again here.)
        r.at(
            None,
            "tokens",
            "needs a signing key in [jwt] (secret or private_key)",
        );
    }
    let credentials = validate_credentials(r, base, t.credentials, upstreams);
    if let CredentialsConfig::UsersFile(path) = &credentials {
        if !path.exists() {
            r.at(
                None,
                "tokens.credentials.users_file",
                format!(
                    "{} does not exist (create it with `gateway user add NAME --users-file {}`)",
                    path.display(),
                    path.display()
                ),
            );
        }
    }
    let rl = t.rate_limit;
    let rate_limit = RateLimitConfig {
        per_user: rl.as_ref().and_then(|l| l.per_user).unwrap_or(5),
        per_user_window: rl
            .as_ref()
            .and_then(|l| l.per_user_window)
            .map_or(Duration::from_secs(900), |d| d.0),
        per_address: rl.as_ref().and_then(|l| l.per_address).unwrap_or(20),
        per_address_window: rl
            .as_ref()
            .and_then(|l| l.per_address_window)
            .map_or(Duration::from_secs(60), |d| d.0),
    };
    let access_ttl = t.access_ttl.map_or(Duration::from_secs(300), |d| d.0);
    let refresh_ttl = t.refresh_ttl.map_or(Duration::from_secs(86400), |d| d.0);
    if access_ttl.is_zero() {
        r.at(None, "tokens.access_ttl", "must be longer than zero");
    }
    if refresh_ttl.is_zero() {
        r.at(None, "tokens.refresh_ttl", "must be longer than zero");
    }
    if !refresh_ttl.is_zero() && access_ttl > refresh_ttl {
        r.at(
            None,
            "tokens.access_ttl",
            format!(
                "{} is longer than tokens.refresh_ttl ({}): an access token would outlive the refresh token that renews it",
                humantime::format_duration(access_ttl),
                humantime::format_duration(refresh_ttl)
            ),
        );
    }
    TokensConfig {
        obtain_path: token_path(r, t.obtain_path, "tokens.obtain_path", "/api/token/"),
        refresh_path: token_path(
            r,
            t.refresh_path,
            "tokens.refresh_path",
            "/api/token/refresh/",
        ),
        verify_path: token_path(r, t.verify_path, "tokens.verify_path", "/api/token/verify/"),
        blacklist_path: token_path(
            r,
            t.blacklist_path,
            "tokens.blacklist_path",
            "/api/token/blacklist/",
        ),
        jwks_path: token_path(r, t.jwks_path, "tokens.jwks_path", "/.well-known/jwks.json"),
        access_ttl,
        refresh_ttl,
        rotate_refresh: t.rotate_refresh.unwrap_or(true),
        blacklist_after_rotation: t.blacklist_after_rotation.unwrap_or(true),
        session_max: t
            .session_max
            .map_or(Duration::from_secs(30 * 86400), |d| d.0),
        cors_origins: t.cors_origins.unwrap_or_default(),
        signing_key: t.signing_key.map(|k| k.into_inner()),
        max_body_bytes: t.max_body_bytes.map_or(64 * 1024, |b| b.0),
        credentials,
        rate_limit,
    }
}

fn default_tokens(base: &Path) -> TokensConfig {
    TokensConfig::defaults(base)
}

impl TokensConfig {
    /// Every [tokens] key at its default.
    pub fn defaults(base: &Path) -> TokensConfig {
        TokensConfig {
            obtain_path: "/api/token/".into(),
            refresh_path: "/api/token/refresh/".into(),
            verify_path: "/api/token/verify/".into(),
            blacklist_path: "/api/token/blacklist/".into(),
            jwks_path: "/.well-known/jwks.json".into(),
            access_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(86400),
            rotate_refresh: true,
            blacklist_after_rotation: true,
            session_max: Duration::from_secs(30 * 86400),
            cors_origins: vec![],
            signing_key: None,
            max_body_bytes: 64 * 1024,
            credentials: CredentialsConfig::UsersFile(base.join("users.toml")),
            rate_limit: RateLimitConfig {
                per_user: 5,
                per_user_window: Duration::from_secs(900),
                per_address: 20,
                per_address_window: Duration::from_secs(60),
            },
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}

fn socket_addr(r: &mut Report, v: &Spanned<String>, key: &str) -> SocketAddr {
    match v.get_ref().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            r.spanned(
                v,
                key,
                format!(
                    "invalid address {:?} (expected IP:PORT, e.g. \"0.0.0.0:8443\")",
                    v.get_ref()
                ),
            );
            default_listen()
        }
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn validate_tls(r: &mut Report, base: &Path, t: RawTls) -> TlsConfig {
    let self_signed = t.self_signed.unwrap_or(false);
    let acme = t.acme.map(|a| validate_acme(r, base, a));
    let default = match (t.cert, t.key, self_signed) {
        (Some(c), Some(k), false) => CertSource::Files {
            cert: resolve(base, c.get_ref()),
            key: resolve(base, k.get_ref()),
        },
        // Without cert/key the ACME certificate is the default; with
        // self_signed beside it, the fallback while it is pending.
        (None, None, _) if acme.is_some() => CertSource::Acme,
        (None, None, true) => CertSource::SelfSigned,
        (Some(c), _, true) => {
            r.spanned(
                &c,
                "tls.cert",
                "set either cert/key or self_signed = true, not both",
            );
            CertSource::SelfSigned
        }
        (Some(c), None, false) => {
            r.spanned(&c, "tls.key", "missing: tls.cert needs tls.key");
            CertSource::SelfSigned
        }
        (None, Some(k), _) => {
            r.spanned(&k, "tls.cert", "missing: tls.key needs tls.cert");
            CertSource::SelfSigned
        }
        (None, None, false) => {
            r.at(
                None,
                "tls.cert",
                "missing: [tls] needs cert and key, a [tls.acme] section, or self_signed = true for development",
            );
            CertSource::SelfSigned
        }
    };
    let mut sni = Vec::new();
    for (i, s) in t.sni.into_iter().enumerate() {
        let name = s.server_name.get_ref().trim().to_ascii_lowercase();
        if name.is_empty() {
            r.spanned(
                &s.server_name,
                &format!("tls.sni[{i}].server_name"),
                "must not be empty",
            );
        }
        sni.push((
            name,
            CertSource::Files {
                cert: resolve(base, s.cert.get_ref()),
                key: resolve(base, s.key.get_ref()),
            },
        ));
    }
    let min_version = match t.min_version {
        None => TlsVersion::V1_2,
        Some(v) => match v.get_ref().as_str() {
            "1.2" => TlsVersion::V1_2,
            "1.3" => TlsVersion::V1_3,
            other => {
                r.spanned(
                    &v,
                    "tls.min_version",
                    format!("unsupported version {other:?} (expected \"1.2\" or \"1.3\")"),
                );
                TlsVersion::V1_2
            }
        },
    };
    if let Some(a) = &acme {
        for (i, (name, _)) in sni.iter().enumerate() {
            if a.domains.contains(name) {
                r.at(
                    None,
                    &format!("tls.sni[{i}].server_name"),
                    format!("{name:?} is also in tls.acme.domains: one certificate per name"),
                );
            }
        }
    }
    TlsConfig {
        acme_fallback_self_signed: acme.is_some() && self_signed,
        default,
        sni,
        min_version,
        hsts: t.hsts.filter(|h| !h.trim().is_empty()),
        acme,
    }
}

/// A DNS name an ACME CA can validate with http-01 or tls-alpn-01: LDH
/// labels of 1-63 characters, 253 at most, no wildcard.
fn acme_domain_error(name: &str) -> Option<String> {
    if name.starts_with("*.") {
        return Some(
            "a wildcard needs the dns-01 challenge, which the gateway does not answer".into(),
        );
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Some("an IP address, not a DNS name".into());
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Some("not a DNS name (1 to 253 characters)".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Some(format!(
                "{label:?} is not a DNS label (a-z, 0-9 and '-', 1 to 63 characters; IDNs in punycode)"
            ));
        }
    }
    None
}

/// Whether `dir` (or, when it does not exist yet, its nearest existing
/// parent) takes a new file.
fn writable_dir(dir: &Path) -> Result<(), String> {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => return Ok(()),
        }
    }
    if !at.is_dir() {
        return Err(format!("{} is not a directory", at.display()));
    }
    // access(2), not a probe file: loading a config writes nothing.
    rustix::fs::access(
        at,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .map_err(|e| format!("{} is not writable: {e}", at.display()))
}

fn validate_acme(r: &mut Report, base: &Path, a: RawAcme) -> AcmeConfig {
    let mut domains: Vec<String> = Vec::new();
    match &a.domains {
        None => r.at(
            None,
            "tls.acme.domains",
            "missing: the names to certify, e.g. [\"example.com\", \"www.example.com\"]",
        ),
        Some(list) if list.is_empty() => {
            r.at(None, "tls.acme.domains", "must name at least one domain")
        }
        Some(list) => {
            for (i, d) in list.iter().enumerate() {
                let name = d.get_ref().trim().to_ascii_lowercase();
                let key = format!("tls.acme.domains[{i}]");
                if let Some(e) = acme_domain_error(&name) {
                    r.spanned(d, &key, format!("{:?}: {e}", d.get_ref()));
                } else if domains.contains(&name) {
                    r.spanned(d, &key, format!("{name:?} is listed twice"));
                } else {
                    domains.push(name);
                }
            }
        }
    }
    let mut contact = Vec::new();
    for c in a.contact.map(|c| c.into_vec()).unwrap_or_default() {
        let v = c.trim();
        if v.strip_prefix("mailto:")
            .is_some_and(|m| m.contains('@') && !m.contains(','))
        {
            contact.push(v.to_string());
        } else {
            r.at(
                None,
                "tls.acme.contact",
                format!("{v:?} is not a contact (expected \"mailto:ops@example.com\")"),
            );
        }
    }
    let directory = match &a.directory {
        None => LETS_ENCRYPT.to_string(),
        Some(d) => match d.get_ref().trim() {
            "letsencrypt" => LETS_ENCRYPT.to_string(),
            "letsencrypt-staging" => {
                "https://acme-staging-v02.api.letsencrypt.org/directory".to_string()
            }
            url if url.starts_with("https://")
                && url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some()) =>
            {
                url.to_string()
            }
            other => {
                r.spanned(
                    d,
                    "tls.acme.directory",
                    format!("{other:?} is not an https:// URL (or \"letsencrypt\", \"letsencrypt-staging\")"),
                );
                String::new()
            }
        },
    };
    let ca_file = a.ca_file.as_ref().map(|c| {
        let path = resolve(base, c.get_ref());
        match std::fs::read(&path) {
            Err(e) => r.spanned(
                c,
                "tls.acme.ca_file",
                format!("cannot read {}: {e}", path.display()),
            ),
            Ok(pem) => {
                use rustls_pki_types::pem::PemObject;
                let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .count();
                if certs == 0 {
                    r.spanned(
                        c,
                        "tls.acme.ca_file",
                        format!("{}: no PEM certificate in it", path.display()),
                    );
                }
            }
        }
        path
    });
    let cache = resolve(
        base,
        a.cache.as_ref().map_or("acme", |c| c.get_ref().as_str()),
    );
    if let Err(e) = writable_dir(&cache) {
        match &a.cache {
            Some(c) => r.spanned(c, "tls.acme.cache", e),
            None => r.at(
                None,
                "tls.acme.cache",
                format!("(default \"acme\" next to the config) {e}"),
            ),
        }
    }
    let challenge = match a.challenge.as_ref().map(|c| (c, c.get_ref().as_str())) {
        None | Some((_, "tls-alpn-01")) => AcmeChallenge::TlsAlpn01,
        Some((_, "http-01")) => AcmeChallenge::Http01,
        Some((c, other)) => {
            r.spanned(
                c,
                "tls.acme.challenge",
                format!("{other:?} is not a challenge the gateway answers (\"tls-alpn-01\" or \"http-01\")"),
            );
            AcmeChallenge::TlsAlpn01
        }
    };
    let renew_before = a.renew_before.map(|d| d.0);
    if renew_before.is_some_and(|d| d.is_zero()) {
        r.at(None, "tls.acme.renew_before", "must be more than 0s");
    }
    let eab = match (&a.eab_kid, &a.eab_hmac_key) {
        (None, None) => None,
        (Some(kid), Some(key)) => match SecretSource::parse(key.get_ref()).resolve(base) {
            Err(e) => {
                r.spanned(key, "tls.acme.eab_hmac_key", e);
                None
            }
            Ok(text) => {
                let t = text.trim().trim_end_matches('=');
                match data_encoding::BASE64URL_NOPAD
                    .decode(t.as_bytes())
                    .or_else(|_| data_encoding::BASE64_NOPAD.decode(t.as_bytes()))
                {
                    Ok(bytes) if !bytes.is_empty() => Some((kid.get_ref().clone(), bytes)),
                    _ => {
                        r.spanned(
                            key,
                            "tls.acme.eab_hmac_key",
                            "not a base64url key (as the CA gives it)",
                        );
                        None
                    }
                }
            }
        },
        (Some(k), None) => {
            r.spanned(
                k,
                "tls.acme.eab_hmac_key",
                "missing: eab_kid needs eab_hmac_key",
            );
            None
        }
        (None, Some(k)) => {
            r.spanned(k, "tls.acme.eab_kid", "missing: eab_hmac_key needs eab_kid");
            None
        }
    };
    AcmeConfig {
        domains,
        contact,
        directory,
        ca_file,
        cache,
        challenge,
        renew_before,
        eab,
    }
}

fn upstream_addr(r: &mut Report, v: &Spanned<String>, key: &str) -> Option<UpstreamAddr> {
    let s = v.get_ref().trim();
    if let Some(path) = s.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            r.spanned(
                v,
                key,
                "unix: needs a socket path, e.g. \"unix:/run/gunicorn.sock\"",
            );
            return None;
        }
        return Some(UpstreamAddr::Unix {
            path: PathBuf::from(path),
        });
    }
    let Some(rest) = s.strip_prefix("http://") else {
        r.spanned(v, key, format!("unsupported upstream URL {s:?} (expected \"http://HOST:PORT\" or \"unix:/path.sock\")"));
        return None;
    };
    let authority = rest.trim_end_matches('/');
    match authority.parse::<http::uri::Authority>() {
        Ok(a) if !a.host().is_empty() && !authority.contains('/') && !authority.contains('@') => {
            let authority = if a.port().is_some() {
                a.as_str().to_string()
            } else {
                format!("{}:80", a.as_str())
            };
            Some(UpstreamAddr::Tcp { authority })
        }
        _ => {
            r.spanned(
                v,
                key,
                format!("invalid upstream URL {s:?} (expected \"http://HOST:PORT\" with no path)"),
            );
            None
        }
    }
}

fn validate_upstream(
    r: &mut Report,
    base: &Path,
    name: &str,
    u: RawUpstream,
) -> Option<UpstreamConfig> {
    let key = format!("upstreams.{name}");
    let mut servers = Vec::new();
    if let Some(url) = &u.url {
        servers.extend(upstream_addr(r, url, &format!("{key}.url")));
    }
    for (i, s) in u.servers.iter().flatten().enumerate() {
        servers.extend(upstream_addr(r, s, &format!("{key}.servers[{i}]")));
    }
    if u.url.is_none() && u.servers.as_ref().is_none_or(|s| s.is_empty()) {
        r.at(
            None,
            &format!("{key}.url"),
            "missing: an upstream needs url (or servers)",
        );
        return None;
    }
    // Unix socket paths given relative resolve like every other path.
    for s in &mut servers {
        if let UpstreamAddr::Unix { path } = s {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
    Some(UpstreamConfig {
        name: name.to_string(),
        servers,
        connect_timeout: u.connect_timeout.map_or(Duration::from_secs(2), |d| d.0),
        timeout: u.timeout.map_or(Duration::from_secs(60), |d| d.0),
        preserve_host: u.preserve_host.unwrap_or(true),
        pool_idle_timeout: u.pool_idle_timeout.map_or(Duration::from_secs(90), |d| d.0),
        pool_max_idle: u.pool_max_idle.unwrap_or(256),
        request_buffering: u.request_buffering.map_or(1024 * 1024, |b| b.0),
        balance: match &u.balance {
            None => Balance::RoundRobin,
            Some(b) => match b.get_ref().as_str() {
                "round_robin" => Balance::RoundRobin,
                "least_conn" => Balance::LeastConn,
                other => {
                    r.spanned(
                        b,
                        &format!("{key}.balance"),
                        format!("unknown balance {other:?} (expected \"round_robin\" or \"least_conn\")"),
                    );
                    Balance::RoundRobin
                }
            },
        },
        max_fails: u.max_fails.unwrap_or(1),
        fail_timeout: u.fail_timeout.map_or(Duration::from_secs(10), |d| d.0),
        health_check: u.health_check.map(|h| {
            let path = match h.path {
                Some(p) if p.get_ref().starts_with('/') => p.into_inner(),
                Some(p) => {
                    r.spanned(&p, &format!("{key}.health_check.path"), "must start with /");
                    "/".to_string()
                }
                None => "/healthz".to_string(),
            };
            HealthCheckConfig {
                path,
                interval: h
                    .interval
                    .map_or(Duration::from_secs(5), |d| d.0)
                    .max(Duration::from_millis(100)),
                timeout: h.timeout.map_or(Duration::from_secs(2), |d| d.0),
                healthy: h.healthy.unwrap_or(2).max(1),
                unhealthy: h.unhealthy.unwrap_or(2).max(1),
            }
        }),
    })
}

fn validate_admin(
    r: &mut Report,
    raw: Option<RawAdmin>,
    server: &ServerConfig,
) -> Option<AdminConfig> {
    let listen = raw?.listen?;
    let addr = match listen.get_ref().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            r.spanned(
                &listen,
                "admin.listen",
                "invalid address (expected e.g. \"127.0.0.1:9901\")",
            );
            return None;
        }
    };
    // SECURITY: metrics and readiness are for the operator, not the public.
    let clash = |other: SocketAddr| {
        addr.port() != 0
            && addr.port() == other.port()
            && (addr.ip() == other.ip()
                || addr.ip().is_unspecified()
                || other.ip().is_unspecified())
    };
    if clash(server.listen) || server.http_listen.is_some_and(clash) {
        r.spanned(
            &listen,
            "admin.listen",
            "must not be a public listen address (server.listen, server.http_listen)",
        );
        return None;
    }
    Some(AdminConfig { listen: addr })
}

fn validate_route(
    r: &mut Report,
    base: &Path,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    has_jwt: bool,
    i: usize,
    route: RawRoute,
) -> Option<RouteConfig> {
    let key = format!("routes[{i}]");
    let policy = validate_policy(r, &route, has_jwt, &key);
    let path = route.path.get_ref().clone();
    if !path.starts_with('/') {
        r.spanned(
            &route.path,
            &format!("{key}.path"),
            format!("must start with '/' (got {path:?})"),
        );
    }
    let target = match (&route.static_dir, &route.upstream) {
        (Some(dir), None) => {
            let root = resolve(base, dir.get_ref());
            if !root.is_dir() {
                r.spanned(
                    dir,
                    &format!("{key}.static"),
                    format!("not a directory: {}", root.display()),
                );
            }
            if route.strip_prefix.is_some() {
                r.spanned(
                    &route.path,
                    &format!("{key}.strip_prefix"),
                    "only applies to upstream routes",
                );
            }
            let fallback = route.fallback.map(|f| {
                let name = f.get_ref().trim_start_matches('/').to_string();
                if name.split('/').any(|c| c == ".." || c.is_empty()) {
                    r.spanned(
                        &f,
                        &format!("{key}.fallback"),
                        "must be a file path inside the static root",
                    );
                } else if !root.join(&name).is_file() {
                    r.spanned(
                        &f,
                        &format!("{key}.fallback"),
                        format!("no such file: {}", root.join(&name).display()),
                    );
                }
                name
            });
            RouteTarget::Static(StaticRoute {
                root,
                cache_control: route.cache_control,
                fallback,
                precompressed: route.precompressed.unwrap_or(true),
            })
        }
        (None, Some(up)) => {
            if !upstreams.contains_key(up.get_ref()) {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                r.spanned(
                    up,
                    &format!("{key}.upstream"),
                    format!(
                        "no upstream named {:?} (known: {})",
                        up.get_ref(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            if route.fallback.is_some()
                || route.cache_control.is_some()
                || route.precompressed.is_some()
            {
                r.spanned(
                    up,
                    &key,
                    "fallback, cache_control and precompressed only apply to static routes",
                );
            }
            RouteTarget::Upstream(UpstreamRoute {
                upstream: up.get_ref().clone(),
                strip_prefix: route.strip_prefix.unwrap_or(false),
            })
        }
        (Some(dir), Some(_)) => {
            r.spanned(dir, &key, "a route has either static or upstream, not both");
            return None;
        }
        (None, None) => {
            r.spanned(
                &route.path,
                &key,
                "a route needs static = \"DIR\" or upstream = \"NAME\"",
            );
            return None;
        }
    };
    Some(RouteConfig {
        path,
        target,
        policy,
    })
}

fn validate_policy(r: &mut Report, route: &RawRoute, has_jwt: bool, key: &str) -> RoutePolicy {
    // Without [jwt] there is nothing to check tokens with: the gateway is a
    // plain front door and routes default to "none".
    let default = if route.upstream.is_some() && has_jwt {
        AuthMode::Required
    } else {
        AuthMode::None
    };
    let auth = match &route.auth {
        None => default,
        Some(v) => {
            match v.get_ref().as_str() {
                "required" => AuthMode::Required,
                "optional" => AuthMode::Optional,
                "none" => AuthMode::None,
                other => {
                    r.spanned(v, &format!("{key}.auth"), format!("unknown mode {other:?} (expected \"required\", \"optional\" or \"none\")"));
                    default
                }
            }
        }
    };
    if auth != AuthMode::None && !has_jwt {
        if let Some(v) = &route.auth {
            r.spanned(
                v,
                &format!("{key}.auth"),
                "needs a [jwt] section to verify tokens with",
            );
        }
    }
    let mut require = Vec::new();
    if let Some(req) = &route.require {
        if auth == AuthMode::None {
            r.spanned(
                req,
                &format!("{key}.require"),
                "claim conditions need auth = \"required\" or \"optional\"",
            );
        }
        for (claim, values) in req.get_ref() {
            let any_of = values.clone().into_vec();
            if any_of.is_empty() {
                r.spanned(
                    req,
                    &format!("{key}.require.{claim}"),
                    "needs at least one value",
                );
            }
            require.push(ClaimRule {
                claim: claim.clone(),
                any_of,
            });
        }
    }
    let methods = route.methods.as_ref().map(|ms| {
        let mut out = Vec::new();
        for (j, m) in ms.iter().enumerate() {
            let name = m.get_ref().trim().to_ascii_uppercase();
            const KNOWN: [&str; 9] = [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
            ];
            match http::Method::from_bytes(name.as_bytes()) {
                Ok(method) if KNOWN.contains(&name.as_str()) => out.push(method),
                _ => r.spanned(
                    m,
                    &format!("{key}.methods[{j}]"),
                    format!(
                        "unknown HTTP method {:?} (expected one of {})",
                        m.get_ref(),
                        KNOWN.join(", ")
                    ),
                ),
            }
        }
        out
    });
    RoutePolicy {
        auth,
        require,
        methods,
        allow_encoded_slash: route.allow_encoded_slash.unwrap_or(false),
    }
}

fn algorithm(r: &mut Report, v: &Spanned<String>, key: &str) -> JwtAlg {
    JwtAlg::from_name(v.get_ref()).unwrap_or_else(|| {
        let known: Vec<&str> = JwtAlg::ALL.iter().map(|a| a.name()).collect();
        r.spanned(
            v,
            key,
            format!(
                "unsupported algorithm {:?} (expected one of {})",
                v.get_ref(),
                known.join(", ")
            ),
        );
        JwtAlg::HS256
    })
}

/// The key material of a `[jwt]` or `[[jwt.keys]]` entry: exactly one of
/// secret, public_key, private_key, jwks_file.
/// The four ways to give a key, as written in one table.
struct KeyFields<'a> {
    secret: &'a Option<Spanned<String>>,
    public_key: &'a Option<Spanned<String>>,
    private_key: &'a Option<Spanned<String>>,
    jwks_file: &'a Option<Spanned<String>>,
}

fn key_material(
    r: &mut Report,
    base: &Path,
    key: &str,
    anchor: Option<Range<usize>>,
    f: KeyFields<'_>,
) -> Option<(KeyMaterial, String)> {
    let given: Vec<(&str, &Spanned<String>)> = [
        ("secret", f.secret),
        ("public_key", f.public_key),
        ("private_key", f.private_key),
        ("jwks_file", f.jwks_file),
    ]
    .into_iter()
    .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
    .collect();
    match given.as_slice() {
        [] => {
            r.at(
                anchor,
                key,
                "needs one of secret, public_key, private_key or jwks_file",
            );
            None
        }
        [(name, v)] => {
            let origin = format!("{}:{}: {key}.{name}", r.file, r.line_of(Some(v.span())));
            let material = match *name {
                "secret" => match SecretSource::parse(v.get_ref()).resolve(base) {
                    Ok(s) if s.is_empty() => {
                        r.spanned(v, &format!("{key}.secret"), "is empty");
                        return None;
                    }
                    Ok(s) => KeyMaterial::Secret(s.into_bytes()),
                    Err(e) => {
                        r.spanned(v, &format!("{key}.secret"), e);
                        return None;
                    }
                },
                "public_key" => KeyMaterial::PublicKey(resolve_file(base, v.get_ref())),
                "private_key" => match v.get_ref().strip_prefix("env:") {
                    Some(name) => match std::env::var(name) {
                        Ok(pem) => KeyMaterial::PrivateKey(PemSource::Env {
                            name: name.to_string(),
                            pem: pem.into_bytes(),
                        }),
                        Err(_) => {
                            r.spanned(
                                v,
                                &format!("{key}.private_key"),
                                format!("environment variable {name} is not set"),
                            );
                            return None;
                        }
                    },
                    None => {
                        KeyMaterial::PrivateKey(PemSource::File(resolve_file(base, v.get_ref())))
                    }
                },
                _ => KeyMaterial::JwksFile(resolve_file(base, v.get_ref())),
            };
            Some((material, origin))
        }
        [_, (second, v), ..] => {
            r.spanned(
                v,
                &format!("{key}.{second}"),
                "give only one of secret, public_key, private_key or jwks_file",
            );
            None
        }
    }
}

/// `file:PATH` is accepted for key files too, like any secret-bearing value.
fn resolve_file(base: &Path, v: &str) -> PathBuf {
    resolve(base, v.strip_prefix("file:").unwrap_or(v))
}

fn validate_jwt(r: &mut Report, base: &Path, j: RawJwt) -> JwtConfig {
    let mut keys = Vec::new();
    let single = j.secret.is_some()
        || j.public_key.is_some()
        || j.private_key.is_some()
        || j.jwks_file.is_some();
    let top_alg = j
        .algorithm
        .as_ref()
        .map(|a| algorithm(r, a, "jwt.algorithm"));
    if single {
        if !j.keys.is_empty() {
            r.at(
                None,
                "jwt.keys",
                "use either the single key in [jwt] or [[jwt.keys]], not both",
            );
        }
        let anchor = j.algorithm.as_ref().map(|a| a.span());
        if let Some((material, origin)) = key_material(
            r,
            base,
            "jwt",
            anchor,
            KeyFields {
                secret: &j.secret,
                public_key: &j.public_key,
                private_key: &j.private_key,
                jwks_file: &j.jwks_file,
            },
        ) {
            let alg = top_alg.unwrap_or(JwtAlg::HS256);
            check_alg_fits(r, &material, alg, &origin);
            keys.push(KeySpec {
                kid: None,
                algorithm: alg,
                material,
                origin,
            });
        }
    } else {
        for (i, k) in j.keys.iter().enumerate() {
            keys.extend(validate_key(r, base, i, k, top_alg));
        }
        let mut seen = std::collections::HashSet::new();
        for k in &keys {
            if let Some(kid) = &k.kid {
                if !seen.insert(kid.clone()) {
                    r.at(None, "jwt.keys", format!("duplicate kid {kid:?}"));
                }
            }
        }
    }
    if keys.is_empty() && j.trusted_issuers.is_empty() && r.problems.is_empty() {
        r.at(None, "jwt", "needs a key (secret, public_key, private_key, jwks_file or [[jwt.keys]]) or [[jwt.trusted_issuers]]");
    }
    let header_types = match j.header_types {
        Some(h)
            if h.get_ref().is_empty()
                || h.get_ref()
                    .iter()
                    .any(|t| t.trim().is_empty() || t.contains(char::is_whitespace)) =>
        {
            r.spanned(
                &h,
                "jwt.header_types",
                "needs one or more schemes without spaces, e.g. [\"Bearer\"]",
            );
            vec!["Bearer".to_string()]
        }
        Some(h) => h.into_inner(),
        None => vec!["Bearer".to_string()],
    };
    let user_id_claim = j.user_id_claim.unwrap_or_else(|| "user_id".to_string());
    let mut trusted_issuers = Vec::new();
    for (i, t) in j.trusted_issuers.into_iter().enumerate() {
        let key = format!("jwt.trusted_issuers[{i}]");
        let url = t.jwks_url.get_ref();
        let jwks_url = match url.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => u,
            Ok(u) if u.scheme_str() == Some("http") => {
                r.spanned(
                    &t.jwks_url,
                    &format!("{key}.jwks_url"),
                    "must use https (keys fetched over plain http could be swapped in transit)",
                );
                continue;
            }
            _ => {
                r.spanned(
                    &t.jwks_url,
                    &format!("{key}.jwks_url"),
                    format!("invalid URL {url:?} (expected https://HOST/PATH)"),
                );
                continue;
            }
        };
        let algorithms = match &t.algorithms {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(n, a)| algorithm(r, a, &format!("{key}.algorithms[{n}]")))
                .collect(),
            Some(_) => {
                r.spanned(&t.issuer, &format!("{key}.algorithms"), "must not be empty");
                vec![]
            }
            None => vec![JwtAlg::RS256],
        };
        if algorithms.iter().any(|a: &JwtAlg| a.is_hmac()) {
            r.spanned(
                &t.issuer,
                &format!("{key}.algorithms"),
                "HMAC algorithms cannot be used with a JWKS of public keys",
            );
        }
        trusted_issuers.push(TrustedIssuer {
            issuer: t.issuer.into_inner(),
            jwks_url,
            audience: t.audience.map(|a| a.into_vec()).unwrap_or_default(),
            algorithms,
            jwks_refresh: t.jwks_refresh.map_or(Duration::from_secs(600), |d| d.0),
            ca_file: t.ca_file.map(|c| resolve(base, c.get_ref())),
            user_id_claim: t.user_id_claim.unwrap_or_else(|| user_id_claim.clone()),
        });
    }
    JwtConfig {
        keys,
        issuer: j.issuer,
        audience: j.audience.map(|a| a.into_vec()).unwrap_or_default(),
        leeway: j.leeway.map_or(Duration::ZERO, |d| d.0),
        user_id_claim,
        header_types,
        cache_size: j.cache_size.unwrap_or(10_000),
        trusted_issuers,
    }
}

fn check_alg_fits(r: &mut Report, material: &KeyMaterial, alg: JwtAlg, origin: &str) {
    let secret = matches!(material, KeyMaterial::Secret(_));
    if secret != alg.is_hmac() {
        let what = if secret {
            "a secret needs an HS* algorithm"
        } else {
            "an HS* algorithm needs a secret, not a key file"
        };
        r.problems
            .push(format!("{origin}: {what} (algorithm is {})", alg.name()));
    }
}

fn validate_key(
    r: &mut Report,
    base: &Path,
    i: usize,
    k: &RawKey,
    top_alg: Option<JwtAlg>,
) -> Option<KeySpec> {
    let key = format!("jwt.keys[{i}]");
    let alg = match &k.algorithm {
        Some(a) => algorithm(r, a, &format!("{key}.algorithm")),
        None => match top_alg {
            Some(a) => a,
            None => {
                r.spanned(
                    &k.kid,
                    &format!("{key}.algorithm"),
                    "missing (or set jwt.algorithm for all keys)",
                );
                return None;
            }
        },
    };
    if k.kid.get_ref().is_empty() {
        r.spanned(&k.kid, &format!("{key}.kid"), "must not be empty");
    }
    let (material, origin) = key_material(
        r,
        base,
        &key,
        Some(k.kid.span()),
        KeyFields {
            secret: &k.secret,
            public_key: &k.public_key,
            private_key: &k.private_key,
            jwks_file: &k.jwks_file,
        },
    )?;
    check_alg_fits(r, &material, alg, &origin);
    Some(KeySpec {
        kid: Some(k.kid.get_ref().clone()),
        algorithm: alg,
        material,
        origin,
    })
}

fn validate_identity(
    r: &mut Report,
    raw: Option<RawIdentity>,
    jwt: Option<&JwtConfig>,
) -> IdentityConfig {
    let user_id_claim = jwt.map_or("user_id", |j| j.user_id_claim.as_str());
    let default_headers = || {
        vec![(
            http::HeaderName::from_static("x-user-id"),
            user_id_claim.to_string(),
        )]
    };
    let Some(raw) = raw else {
        return IdentityConfig {
            headers: default_headers(),
            claims_header: None,
            forward_token: true,
        };
    };
    let header_name =
        |r: &mut Report, name: &str, span: Range<usize>, key: &str| -> Option<http::HeaderName> {
            match http::HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    r.at(Some(span), key, format!("invalid header name {name:?}"));
                    None
                }
            }
        };
    let headers = match raw.headers {
        None => default_headers(),
        Some(h) => {
            let span = h.span();
            let mut out = Vec::new();
            for (name, claim) in h.into_inner() {
                if let Some(hn) =
                    header_name(r, &name, span.clone(), &format!("identity.headers.{name}"))
                {
                    out.push((hn, claim));
                }
            }
            out
        }
    };
    let claims_header = raw.claims_header.and_then(|c| {
        let span = c.span();
        header_name(r, c.get_ref(), span, "identity.claims_header")
    });
    IdentityConfig {
        headers,
        claims_header,
        forward_token: raw.forward_token.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, Vec<String>> {
        parse_and_validate(Path::new("gw.toml"), text)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load("[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(c.server.health_path, "/healthz");
        assert_eq!(c.server.max_header_bytes, 16 * 1024);
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert!(c.tls.is_none());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = load("[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n").unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("gw.toml:3: server"), "{}", e[0]);
        assert!(e[0].contains("unknown field `lisen`"), "{}", e[0]);
    }

    #[test]
    fn bad_duration_names_line_and_key() {
        let e = load("[server]\n\nidle_timeout = \"forever\"\n").unwrap_err();
        assert!(
            e[0].starts_with("gw.toml:3: server.idle_timeout: invalid duration"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn unknown_upstream_is_reported_with_known_names() {
        let text = "[upstreams.app]\nurl = \"http://127.0.0.1:8000\"\n\n[[routes]]\npath = \"/\"\nupstream = \"ap\"\n";
        let e = load(text).unwrap_err();
        assert_eq!(
            e,
            vec![
                "gw.toml:6: routes[0].upstream: no upstream named \"ap\" (known: app)".to_string()
            ]
        );
    }

    #[test]
    fn store_is_sqlite_or_redis_never_both() {
        let c = load("[store]\nurl = \"redis://:pw@127.0.0.1:6379/2\"\n").unwrap();
        match &c.store.backend {
            StoreBackend::Redis {
                key_prefix,
                timeout,
                ..
            } => {
                assert_eq!(key_prefix, "gateway:");
                assert_eq!(*timeout, Duration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
        // The password is never shown.
        assert_eq!(
            format!("{:?}", c.store.backend),
            "redis redis://***@127.0.0.1:6379/2"
        );
        let e = load("[store]\nurl = \"redis://h/0\"\npath = \"g.db\"\n").unwrap_err();
        assert_eq!(
            e,
            vec!["gw.toml:3: store.path: set either path (SQLite) or url (Redis), not both"]
        );
        let e = load("[store]\n\nurl = \"http://h:6379\"\n").unwrap_err();
        assert!(
            e[0].starts_with("gw.toml:3: store.url: must start with redis://"),
            "{e:?}"
        );
        let e = load("[store]\npassword = \"x\"\n").unwrap_err();
        assert_eq!(
            e,
            vec!["gw.toml:2: store.password: only with store.url (Redis)"]
        );
        let e = load("[store]\nurl = \"redis://h/0\"\npassword = \"env:GATEWAY_TEST_UNSET_PW\"\n")
            .unwrap_err();
        assert!(
            e[0].starts_with(
                "gw.toml:3: store.password: environment variable GATEWAY_TEST_UNSET_PW"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn cross_section_problems_name_the_keys_line() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nredirect_http = true\n\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n\n[[routes]]\npath = \"/a/\"\nupstream = \"app\"\n\n[[routes]]\npath = \"/a/\"\nupstream = \"app\"\nmethods = [\"GTE\"]\n";
        let e = load(text).unwrap_err();
        assert!(
            e.contains(
                &"gw.toml:4: server.redirect_http: needs a [tls] section (nothing to redirect to)"
                    .to_string()
            ),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|p| p.starts_with("gw.toml:14: routes[1].path: duplicate route path")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|p| p
                    .starts_with("gw.toml:16: routes[1].methods[0]: unknown HTTP method \"GTE\"")),
            "{e:?}"
        );
    }

    #[test]
    fn token_lifetimes_are_checked_at_their_keys() {
        let jwt =
            "[jwt]\nalgorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef0123\"\n";
        let e = load(&format!(
            "{jwt}[tokens]\naccess_ttl = \"2h\"\nrefresh_ttl = \"1h\"\n"
        ))
        .unwrap_err();
        assert!(
            e.iter().any(|p| p
                .starts_with("gw.toml:5: tokens.access_ttl: 2h is longer than tokens.refresh_ttl")),
            "{e:?}"
        );
        let e = load(&format!("{jwt}[tokens]\nrefresh_ttl = \"0s\"\n")).unwrap_err();
        assert!(
            e.iter()
                .any(|p| p == "gw.toml:5: tokens.refresh_ttl: must be longer than zero"),
            "{e:?}"
        );
        let e = load(&format!("{jwt}[tokens]\naccess_ttl = \"5M\"\n")).unwrap_err();
        assert!(
            e[0].starts_with("gw.toml:5: tokens.access_ttl: invalid duration \"5M\""),
            "{e:?}"
        );
        // And the users file that is not there.
        assert!(
            e.len() == 1 || e.iter().any(|p| p.contains("users_file")),
            "{e:?}"
        );
        let e = load(&format!("{jwt}[tokens]\n")).unwrap_err();
        assert!(
            e.iter()
                .any(|p| p.contains("tokens.credentials.users_file:")
                    && p.contains("does not exist")),
            "{e:?}"
        );
    }

    #[test]
    fn type_errors_speak_plainly() {
        let e = load("[server]\nmax_connections = \"many\"\n").unwrap_err();
        assert_eq!(
            e,
            vec!["gw.toml:2: server.max_connections: must be a whole number (got string \"many\")"]
        );
        let e = load("[server]\ntrusted_proxies = \"10.0.0.0/8\"\n").unwrap_err();
        assert!(
            e[0].starts_with("gw.toml:2: server.trusted_proxies: must be a list"),
            "{e:?}"
        );
        let e = load("[server]\nredirect_http = \"yes\"\n").unwrap_err();
        assert!(e[0].contains("must be true or false"), "{e:?}");
    }

    #[test]
    fn every_problem_is_reported() {
        let text =
            "[server]\nlisten = \"nope\"\ntrusted_proxies = [\"x\"]\n[log]\nformat = \"xml\"\n";
        let e = load(text).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn routes_sorted_longest_prefix_first() {
        let text = "[upstreams.app]\nurl = \"unix:/tmp/x.sock\"\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n[[routes]]\npath = \"/api/\"\nupstream = \"app\"\nstrip_prefix = true\n";
        let c = load(text).unwrap();
        assert_eq!(c.routes[0].path, "/api/");
        assert_eq!(
            c.upstreams["app"].servers[0],
            UpstreamAddr::Unix {
                path: "/tmp/x.sock".into()
            }
        );
    }

    #[test]
    fn upstream_url_forms() {
        let e = load("[upstreams.a]\nurl = \"https://x\"\n").unwrap_err();
        assert!(e[0].contains("upstreams.a.url"), "{e:?}");
        let c = load("[upstreams.a]\nurl = \"http://localhost\"\n").unwrap();
        assert_eq!(
            c.upstreams["a"].servers[0],
            UpstreamAddr::Tcp {
                authority: "localhost:80".into()
            }
        );
    }
}
