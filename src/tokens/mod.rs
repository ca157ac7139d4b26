//! Token issuing at the edge, with djangorestframework-simplejwt's HTTP
//! contract: obtain, refresh, verify and blacklist, plus the JWKS of the
//! signing keys. Answered by the gateway, never proxied.
//!
//! Beyond simplejwt: every login starts a token family (`sid` claim);
//! refresh tokens are single use, and a replayed one revokes its whole
//! family, which the edge then refuses at once (OAuth 2.0 Security BCP).
//! Sessions end `session_max` after login. Failed logins are rate limited.

pub mod credentials;
pub mod endpoints;
mod errors;
pub mod issue;
pub mod jwks;
pub mod password;
pub mod rate_limit;
pub mod request;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::jwt::TokenProblem;
use crate::auth::Authenticator;
use crate::body::{self as response, Body};
use crate::config::{Config, CredentialsConfig, TokensConfig};
use crate::proxy::Upstream;
use crate::store::{RevokedFamilies, Store};

pub use crate::clock::unix_now;
use credentials::{Credentials, CredentialsError, Users};
use issue::Signer;

/// A token route failure, answered with simplejwt's (or DRF's) body.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("method {0} not allowed on a token route")]
    MethodNotAllowed(Method),
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    ParseError(String),
    #[error("{0}")]
    NonField(String),
    #[error("invalid fields")]
    Fields(Vec<(&'static str, &'static str)>),
    #[error("request body too large")]
    BodyTooLarge,
    #[error("wrong credentials")]
    BadCredentials,
    #[error("user inactive or removed since login")]
    InactiveForToken,
    #[error("{0}")]
    Token(TokenProblem),
    #[error("token is blacklisted (verify)")]
    VerifyBlacklisted,
    #[error("too many failed logins")]
    RateLimited { retry_after: u64 },
    #[error("credential service unavailable")]
    CredentialsUnavailable(#[source] CredentialsError),
    #[error("store failed")]
    Store(#[source] crate::store::StoreError),
    #[error("signing failed")]
    Sign(#[source] issue::SignerError),
    #[error("no JWKS: the signing key is symmetric")]
    NoJwks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Obtain,
    Refresh,
    Verify,
    Blacklist,
    Jwks,
}

/// Failure to set up token issuing from the config.
#[derive(Debug, thiserror::Error)]
pub enum TokenSetupError {
    #[error(transparent)]
    Signer(#[from] issue::SignerError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("{0}")]
    Jwks(String),
    #[error("tokens.credentials.upstream names an unknown upstream")]
    UnknownUpstream,
}

/// Everything the token routes need, built from one config.
pub struct TokenService {
    pub cfg: TokensConfig,
    signer: Signer,
    credentials: Credentials,
    store: Arc<dyn Store>,
    revoked: Arc<RevokedFamilies>,
    user_id_claim: String,
    audience: Vec<String>,
    issuer: Option<String>,
    jwks: Option<Bytes>,
}

impl TokenService {
    pub fn new(
        config: &Config,
        upstreams: &std::collections::BTreeMap<&str, Arc<Upstream>>,
        store: Arc<dyn Store>,
        revoked: Arc<RevokedFamilies>,
    ) -> Result<Option<TokenService>, TokenSetupError> {
        let (Some(cfg), Some(jwt)) = (&config.tokens, &config.jwt) else {
            return Ok(None);
        };
        let signer = Signer::new(jwt, cfg)?;
        let credentials = match &cfg.credentials {
            CredentialsConfig::UsersFile(path) => {
                let users = Users::load(path)?;
                if users.is_empty() {
                    tracing::warn!(users_file = %path.display(), "no users: nobody can log in until `gateway user add` creates some");
                }
                Credentials::File(Arc::new(users))
            }
            CredentialsConfig::Upstream {
                upstream,
                path,
                timeout,
            } => Credentials::Upstream {
                upstream: upstreams
                    .get(upstream.as_str())
                    .cloned()
                    .ok_or(TokenSetupError::UnknownUpstream)?,
                path: path.clone(),
                timeout: *timeout,
            },
        };
        let jwks = jwks::document(&jwt.keys)
            .map_err(TokenSetupError::Jwks)?
            .map(Bytes::from);
        Ok(Some(TokenService {
            cfg: cfg.clone(),
            signer,
            credentials,
            store,
            revoked,
            user_id_claim: jwt.user_id_claim.clone(),
            audience: jwt.audience.clone(),
            issuer: jwt.issuer.clone(),
            jwks,
        }))
    }

    /// The token endpoint at `path`, if any (exact match).
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        let c = &self.cfg;
        if path == c.obtain_path {
            Some(Endpoint::Obtain)
        } else if path == c.refresh_path {
            Some(Endpoint::Refresh)
        } else if path == c.verify_path {
            Some(Endpoint::Verify)
        } else if path == c.blacklist_path {
            Some(Endpoint::Blacklist)
        } else if path == c.jwks_path {
            Some(Endpoint::Jwks)
        } else {
            None
        }
    }

    /// Largest token-route body read (`tokens.max_body_bytes`).
    pub fn body_limit(&self) -> u64 {
        self.cfg.max_body_bytes
    }

    /// Answers a token route request. The body was read whole by the
    /// executor, up to `body_limit` (`None`: it was longer).
    pub async fn handle(
        &self,
        ep: Endpoint,
        req: Request<Option<Bytes>>,
        peer: IpAddr,
        auth: &Authenticator,
    ) -> Response<Body> {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let mut resp = if ep == Endpoint::Jwks {
            self.jwks_response(req.method())
        } else {
            match self.post(ep, req, peer, auth).await {
                Ok(r) => r,
                Err(e) => errors::error_response(&e, auth.scheme()),
            }
        };
        let h = resp.headers_mut();
        if ep != Endpoint::Jwks {
            // RFC 6749 5.1: token responses must not be cached.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            h.insert(header::VARY, HeaderValue::from_static("Accept, Origin"));
            h.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
        }
        if let Some(origin) = origin.filter(|o| self.origin_allowed(o)) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        resp
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        let Ok(o) = origin.to_str() else { return false };
        self.cfg
            .cors_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(o))
    }

    async fn post(
        &self,
        ep: Endpoint,
        req: Request<Option<Bytes>>,
        peer: IpAddr,
        auth: &Authenticator,
    ) -> Result<Response<Body>, TokenError> {
        match *req.method() {
            Method::POST => {}
            Method::OPTIONS => return Ok(self.options(&req, ep)),
            ref m => return Err(TokenError::MethodNotAllowed(m.clone())),
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = req.into_body().ok_or(TokenError::BodyTooLarge)?;
        let ct = content_type.as_deref();
        match ep {
            Endpoint::Obtain => self.obtain(ct, &body, peer).await,
            Endpoint::Refresh => self.refresh(ct, &body, auth).await,
            Endpoint::Verify => self.verify(ct, &body, auth).await,
            Endpoint::Blacklist => self.blacklist(ct, &body, auth).await,
            Endpoint::Jwks => Err(TokenError::NoJwks),
        }
    }

    /// CORS preflight (204) or DRF's metadata answer (200).
    fn options<B>(&self, req: &Request<B>, ep: Endpoint) -> Response<Body> {
        let h = req.headers();
        if h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            let mut resp = Response::new(response::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            if let Some(origin) = h.get(header::ORIGIN).filter(|o| self.origin_allowed(o)) {
                let rh = resp.headers_mut();
                rh.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                rh.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("POST, OPTIONS"),
                );
                rh.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    h.get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                        .cloned()
                        .unwrap_or_else(|| HeaderValue::from_static("content-type")),
                );
                rh.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                );
            }
            return resp;
        }
        let (name, description) = match ep {
            Endpoint::Obtain => ("Token Obtain Pair", "Takes a set of user credentials and returns an access and refresh JSON web token pair to prove the authentication of those credentials."),
            Endpoint::Refresh => ("Token Refresh", "Takes a refresh type JSON web token and returns an access type JSON web token if the refresh token is valid."),
            Endpoint::Verify => ("Token Verify", "Takes a token and indicates if it is valid.  This view provides no information about a token's fitness for a particular use."),
            Endpoint::Blacklist | Endpoint::Jwks => ("Token Blacklist", "Takes a token and blacklists it. Must be used with the `rest_framework_simplejwt.token_blacklist` app installed."),
        };
        let body = serde_json::json!({
            "name": name,
            "description": description,
            "renders": ["application/json"],
            "parses": ["application/json", "application/x-www-form-urlencoded", "multipart/form-data"],
        });
        response::json_response(StatusCode::OK, body.to_string())
    }

    fn jwks_response(&self, method: &Method) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            let mut r = response::json_detail(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("Method \"{method}\" not allowed."),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match &self.jwks {
            Some(doc) => {
                let mut r = Response::new(response::full(doc.clone()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=300"),
                );
                r
            }
            None => errors::error_response(&TokenError::NoJwks, "Bearer"),
        }
    }
}
