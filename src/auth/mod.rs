//! Edge authentication: find the Bearer token, verify it with the pinned
//! algorithm and the key its `kid` (or `iss`) selects, and turn it into an
//! `Identity`. Route policy (`policy`) and identity headers (`identity`)
//! live beside it.
//!
//! Steps of `Authenticator::authenticate`: read the Authorization header
//! (exactly one; scheme from `header_types`, case-insensitive) -> cached?
//! -> parse -> pick the key (a trusted issuer's JWKS when `iss` names one,
//! else the local keys, by kid) -> signature -> claims -> user id.

pub mod cache;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod policy;
pub mod remote;

use http::header::{self, HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use std::sync::Arc;

use crate::config::JwtConfig;
use crate::store::RevokedFamilies;
use cache::TokenCache;
use jwt::{ClaimRules, TokenProblem};
use keys::KeySet;
use remote::RemoteIssuer;

/// Who the verified token says the caller is. Cheap to clone: a cached
/// token hands out the same one on every request.
#[derive(Debug, Clone)]
pub struct Identity(Arc<Verified>);

#[derive(Debug)]
struct Verified {
    claims: Map<String, Value>,
    user_id: String,
    /// The latest of `iat` and `nbf`: the token is refused before it
    /// (less the leeway).
    not_before: f64,
    /// The token family, checked against revocations on every use.
    sid: Option<String>,
    /// The identity header lines for the upstream request, made on first
    /// use by the state whose authenticator verified the token.
    rendered: std::sync::OnceLock<Box<[u8]>>,
}

impl Identity {
    fn new(claims: Map<String, Value>, user_id: String) -> Self {
        let number = |name: &str| claims.get(name).and_then(Value::as_f64);
        let not_before = match (number("iat"), number("nbf")) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(f64::NEG_INFINITY),
        };
        let sid = claims.get("sid").and_then(Value::as_str).map(str::to_owned);
        Identity(Arc::new(Verified {
            claims,
            user_id,
            not_before,
            sid,
            rendered: std::sync::OnceLock::new(),
        }))
    }

    #[cfg(test)]
    pub(crate) fn for_tests(user_id: &str) -> Self {
        Identity::new(Map::new(), user_id.to_string())
    }

    pub fn claims(&self) -> &Map<String, Value> {
        &self.0.claims
    }

    pub fn user_id(&self) -> &str {
        &self.0.user_id
    }

    /// The identity header lines, rendered by `render` the first time.
    pub fn rendered(&self, render: impl FnOnce(&Identity) -> Vec<u8>) -> &[u8] {
        self.0
            .rendered
            .get_or_init(|| render(self).into_boxed_slice())
    }
}

/// Why a request is not authenticated (or not authorised).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials were provided")]
    NoCredentials,
    #[error("Authorization header must contain two space-delimited values")]
    BadHeader,
    #[error("token refused: {0}")]
    InvalidToken(TokenProblem),
    #[error("token contains no user id claim")]
    NoUserId,
    #[error("claims do not satisfy the route's require rules")]
    Forbidden,
}

/// Failure to set up verification from the config.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("jwt.trusted_issuers: {0}")]
    Remote(#[from] remote::FetchError),
}

pub struct Authenticator {
    keys: KeySet,
    remote: Vec<Arc<RemoteIssuer>>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: f64,
    user_id_claim: String,
    header_types: Vec<String>,
    /// Verified tokens: a hit skips decoding, the signature check and the
    /// JSON parse.
    cache: Option<TokenCache>,
    /// Revoked token families (`sid`), mirrored in memory.
    revoked: Arc<RevokedFamilies>,
}

impl Authenticator {
    /// Parses every key now: a bad key fails the load, naming the key.
    pub fn new(cfg: &JwtConfig, revoked: Arc<RevokedFamilies>) -> Result<Self, AuthSetupError> {
        let keys = KeySet::load(&cfg.keys)?;
        let remote = cfg
            .trusted_issuers
            .iter()
            .map(|t| RemoteIssuer::new(t.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Authenticator {
            keys,
            remote,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway.as_secs_f64(),
            user_id_claim: cfg.user_id_claim.clone(),
            header_types: cfg.header_types.clone(),
            cache: (cfg.cache_size > 0).then(|| TokenCache::new(cfg.cache_size)),
            revoked,
        })
    }

    /// Starts fetching the trusted issuers' JWKS (needs a Tokio runtime).
    pub fn start(&self) {
        for r in &self.remote {
            r.spawn_refresher();
        }
    }

    /// The scheme named in `WWW-Authenticate` (the first header type).
    pub fn scheme(&self) -> &str {
        self.header_types.first().map_or("Bearer", String::as_str)
    }

    /// The token from the Authorization header, if the request has one in
    /// an accepted scheme.
    pub fn bearer<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h str>, AuthError> {
        self.bearer_in(
            headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .map(HeaderValue::as_bytes),
        )
    }

    /// The token of an Authorization value of exactly the shape
    /// `<scheme> <token>`, without checking the token's bytes: for the fast
    /// path, which then needs `verify_access` to succeed. A token that
    /// verifies (or matches a cached verified one) is base64url and dots
    /// only, so `bearer_in` would have returned the same token; anything
    /// else goes the general way, where `bearer_in` decides.
    pub fn bearer_quick<'h>(&self, value: &'h [u8]) -> Option<&'h str> {
        std::str::from_utf8(self.bearer_quick_bytes(value)?).ok()
    }

    /// `bearer_quick` before the UTF-8 check, which a cache hit (a whole
    /// match with a verified token) makes needless.
    pub fn bearer_quick_bytes<'h>(&self, value: &'h [u8]) -> Option<&'h [u8]> {
        self.header_types.iter().find_map(|t| {
            let t = t.as_bytes();
            let rest = value.get(t.len() + 1..)?;
            if !value[..t.len()].eq_ignore_ascii_case(t)
                || value[t.len()] != b' '
                || rest.is_empty()
            {
                return None;
            }
            Some(rest)
        })
    }

    /// `bearer` over the raw values of every Authorization header.
    pub fn bearer_in<'h>(
        &self,
        mut all: impl Iterator<Item = &'h [u8]>,
    ) -> Result<Option<&'h str>, AuthError> {
        let Some(value) = all.next() else {
            return Ok(None);
        };
        if all.next().is_some() {
            // SECURITY: two headers could be read differently upstream.
            return Err(AuthError::BadHeader);
        }
        // Visible ASCII only, as `HeaderValue::to_str` accepts.
        if !value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err(AuthError::BadHeader);
        }
        let text = std::str::from_utf8(value).map_err(|_| AuthError::BadHeader)?;
        let is_ws = |b: u8| b == b' ' || b == b'\t';
        let text = text.trim_matches([' ', '\t']);
        let (scheme, token) = match text.bytes().position(is_ws) {
            Some(i) => (&text[..i], text[i..].trim_start_matches([' ', '\t'])),
            None => (text, ""),
        };
        if scheme.is_empty() {
            return Ok(None);
        }
        // RFC 7235: schemes are case-insensitive. Other schemes (Basic, ...)
        // are not ours: treated as no credentials, as simplejwt does.
        if !self
            .header_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(scheme))
        {
            return Ok(None);
        }
        if token.is_empty() || token.bytes().any(is_ws) {
            return Err(AuthError::BadHeader);
        }
        Ok(Some(token))
    }

    /// Verifies an access token.
    pub async fn verify_access(&self, token: &str) -> Result<Identity, AuthError> {
        if let Some(hit) = self.cached(token.as_bytes()) {
            return hit;
        }
        let now = jwt::now();
        let parsed = jwt::parse(token).map_err(AuthError::InvalidToken)?;
        let iss = parsed.claims.get("iss").and_then(Value::as_str);
        let remote_idx =
            iss.and_then(|iss| self.remote.iter().position(|r| r.config.issuer == iss));
        let (key, source) = match remote_idx {
            Some(i) => {
                let r = &self.remote[i];
                let kid = parsed
                    .header
                    .kid
                    .as_deref()
                    .ok_or(AuthError::InvalidToken(TokenProblem::Invalid))?;
                // SECURITY: the generation is read before the key, so a
                // refresh in between can only make the cache entry stale,
                // never stamp a revoked key with the new set's generation.
                let seen = r.generation();
                let (key, generation) = match r.key(kid) {
                    Some(k) => (k, seen),
                    // A rotated-in key: refetch once (rate limited) and look again.
                    None if Box::pin(r.refetch_for_unknown_kid(seen)).await => {
                        let generation = r.generation();
                        let k = r
                            .key(kid)
                            .ok_or(AuthError::InvalidToken(TokenProblem::Invalid))?;
                        (k, generation)
                    }
                    None => return Err(AuthError::InvalidToken(TokenProblem::Invalid)),
                };
                (key, (i + 1, generation))
            }
            None => (
                self.local_key(&parsed).map_err(AuthError::InvalidToken)?,
                (0, 0),
            ),
        };
        if source.0 != 0 {
            jwt::verify_signature(&parsed, &key).map_err(AuthError::InvalidToken)?;
        }
        let claims = parsed.claims;
        let (rules, uid_claim) = self.rules_for(&claims);
        jwt::check_claims(&claims, &rules, now).map_err(AuthError::InvalidToken)?;
        self.check_revoked(claims.get("sid").and_then(Value::as_str))?;
        let user_id = user_id_of(&claims, uid_claim)?;
        let exp = claims.get("exp").and_then(Value::as_f64);
        let identity = Identity::new(claims, user_id);
        if let (Some(cache), Some(exp)) = (&self.cache, exp) {
            cache.insert(token, identity.clone(), exp, source, now);
        }
        Ok(identity)
    }

    /// The answer for a token the cache holds, without awaiting anything:
    /// only the checks that depend on the time (the cache drops a token at
    /// its `exp`) and on revocations are made again.
    pub fn cached(&self, token: &[u8]) -> Option<Result<Identity, AuthError>> {
        let cache = self.cache.as_ref()?;
        let now = jwt::now();
        let identity = cache.get(token, now, |source| self.generation(source))?;
        if identity.0.not_before > now + self.leeway {
            // Only a clock stepped back gets here: it passed when cached.
            return Some(Err(AuthError::InvalidToken(TokenProblem::Invalid)));
        }
        Some(
            self.check_revoked(identity.0.sid.as_deref())
                .map(|()| identity),
        )
    }

    fn generation(&self, source: usize) -> u64 {
        match source.checked_sub(1).and_then(|i| self.remote.get(i)) {
            Some(r) => r.generation(),
            None => 0,
        }
    }

    /// The claim rules and user-id claim that apply to an access token
    /// with these claims (a trusted issuer's own, or the local ones).
    fn rules_for(&self, claims: &Map<String, Value>) -> (ClaimRules<'_>, &str) {
        let iss = claims.get("iss").and_then(Value::as_str);
        let (issuer, audience, uid) =
            match iss.and_then(|iss| self.remote.iter().find(|r| r.config.issuer == iss)) {
                Some(r) => (
                    Some(r.config.issuer.as_str()),
                    r.config.audience.as_slice(),
                    r.config.user_id_claim.as_str(),
                ),
                None => (
                    self.issuer.as_deref(),
                    self.audience.as_slice(),
                    self.user_id_claim.as_str(),
                ),
            };
        let rules = ClaimRules {
            issuer,
            audience,
            leeway: self.leeway,
            token_type: Some("access"),
            type_required: false,
            jti_required: false,
        };
        (rules, uid)
    }

    /// Verifies a token the gateway (or simplejwt sharing its key) issued,
    /// with the local keys only: the token routes' check. `token_type`
    /// None accepts any type (the verify endpoint).
    pub fn verify_issued(
        &self,
        token: &str,
        token_type: Option<&str>,
    ) -> Result<Map<String, Value>, TokenProblem> {
        let parsed = jwt::parse(token)?;
        self.local_key(&parsed)?;
        let rules = ClaimRules {
            issuer: self.issuer.as_deref(),
            audience: &self.audience,
            leeway: self.leeway,
            token_type,
            type_required: token_type.is_some(),
            jti_required: true,
        };
        jwt::check_claims(&parsed.claims, &rules, jwt::now())?;
        Ok(parsed.claims)
    }

    /// The local key that verifies this token's signature. A kid picks its
    /// key; a token without one (simplejwt sets none) is tried against each
    /// configured key, every one still pinned to its own algorithm.
    fn local_key(&self, parsed: &jwt::Parsed<'_>) -> Result<Arc<keys::VerifyKey>, TokenProblem> {
        for key in self.keys.candidates(parsed.header.kid.as_deref()) {
            if jwt::verify_signature(parsed, key).is_ok() {
                return Ok(key.clone());
            }
        }
        Err(TokenProblem::Invalid)
    }

    pub fn user_id_claim(&self) -> &str {
        &self.user_id_claim
    }

    /// Number of cached verified tokens (for tests and metrics).
    pub fn cached_tokens(&self) -> usize {
        self.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// SECURITY: a logout or a detected refresh-token theft revokes the
    /// whole family at once, not when its access tokens expire.
    fn check_revoked(&self, sid: Option<&str>) -> Result<(), AuthError> {
        match sid {
            Some(sid) if self.revoked.is_revoked(sid) => {
                Err(AuthError::InvalidToken(TokenProblem::Blacklisted))
            }
            _ => Ok(()),
        }
    }
}

fn user_id_of(claims: &Map<String, Value>, uid_claim: &str) -> Result<String, AuthError> {
    match claims.get(uid_claim) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(AuthError::NoUserId),
    }
}
