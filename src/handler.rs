//! THE request path. `handle` reads top to bottom in this order:
//!
//! 1. Give the request an id (a valid client `X-Request-Id` is kept).
//! 2. SECURITY: strip every identity header the client sent (any case,
//!    `_` spellings too), before anything else reads the headers.
//! 3. Answer the health path, on every listener, never proxied.
//! 4. On the plain listener with `redirect_http`, answer 308 to https.
//! 5. SECURITY: refuse dot segments (`.`/`..`, also percent-encoded) so a
//!    path can never normalise out of the route that matched it.
//! 6. Route: the longest matching prefix, with its policy.
//! 7. Methods the route does not allow: 405 with Allow, before any auth.
//! 8. Authenticate (Bearer JWT) and authorise (required / optional / none
//!    and claim rules): 401 or 403. CORS preflights pass anonymously.
//! 9. Dispatch: static files, or the reverse proxy with the identity
//!    headers built from the verified claims.
//! 10. Errors become responses in `response`; every response gets the
//!     request id and, on TLS, the HSTS header. The access log line is
//!     written by the server once the body has been sent.

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::identity::{self, Strip};
use crate::auth::{policy, AuthError, AuthSetupError, Authenticator, Identity};
use crate::config::{AuthMode, Config, RoutePolicy, RouteTarget};
use crate::proxy::headers::Name;
use crate::proxy::{self, ForwardCtx, Upstream};
use crate::response::{self, Body, ErrorNote, GatewayError};
use crate::router::Router;
use crate::static_files::StaticFiles;
use crate::store::{RevokedFamilies, SqliteStore, Store, StoreError};
use crate::telemetry::AccessRecord;
use crate::tokens::{TokenService, TokenSetupError};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a request needs, built from one config. Replaced whole on
/// reload; requests in flight keep the state they started with.
pub struct AppState {
    pub config: Arc<Config>,
    router: Router,
    /// One per route, in the router's order.
    targets: Vec<Target>,
    pub(crate) hsts: Option<HeaderValue>,
    /// None when the config has no [jwt]: every route is then "none".
    auth: Option<Authenticator>,
    strip: Strip,
    /// The token routes, when the config has [tokens].
    tokens: Option<TokenService>,
}

/// State that outlives reloads: the store and the revocation mirror.
#[derive(Clone)]
pub struct Deps {
    pub store: Option<Arc<dyn Store>>,
    pub revoked: Arc<RevokedFamilies>,
}

impl Deps {
    /// Opens the store (when token issuing is configured) and loads the
    /// revoked families into the in-memory mirror.
    pub fn open(config: &Config) -> Result<Deps, StoreError> {
        let revoked = Arc::new(RevokedFamilies::new());
        if config.tokens.is_none() {
            return Ok(Deps {
                store: None,
                revoked,
            });
        }
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.store.path)?);
        let now = crate::tokens::unix_now();
        for (sid, until) in store.revoked_families(now)? {
            revoked.insert(&sid, until);
        }
        Ok(Deps {
            store: Some(store),
            revoked,
        })
    }

    /// For `gateway check`: an in-memory store, so checking writes nothing.
    pub fn in_memory() -> Result<Deps, StoreError> {
        Ok(Deps {
            store: Some(Arc::new(SqliteStore::open(std::path::Path::new(
                ":memory:",
            ))?)),
            revoked: Arc::new(RevokedFamilies::new()),
        })
    }
}

enum Target {
    // Boxed: a file server is much larger than an upstream reference.
    Static(Box<StaticFiles>),
    Upstream {
        upstream: Arc<Upstream>,
        strip_prefix: bool,
    },
}

/// Failure to build the runtime state from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("static root {path} cannot be opened")]
    StaticRoot {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("route {0} names an unknown upstream")]
    UnknownUpstream(String),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error(transparent)]
    Tokens(#[from] TokenSetupError),
    #[error("[tokens] needs the store, which is not open")]
    NoStore,
}

impl AppState {
    pub fn new(config: Config, deps: &Deps) -> Result<Self, StateError> {
        let upstreams: BTreeMap<&str, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, u)| (name.as_str(), Arc::new(Upstream::new(u))))
            .collect();
        let router = Router::new(&config);
        let mut targets = Vec::new();
        for route in router.routes() {
            targets.push(match &route.target {
                RouteTarget::Static(s) => {
                    Target::Static(Box::new(StaticFiles::new(s).map_err(|source| {
                        StateError::StaticRoot {
                            path: s.root.display().to_string(),
                            source,
                        }
                    })?))
                }
                RouteTarget::Upstream(u) => Target::Upstream {
                    upstream: upstreams
                        .get(u.upstream.as_str())
                        .cloned()
                        .ok_or_else(|| StateError::UnknownUpstream(route.path.clone()))?,
                    strip_prefix: u.strip_prefix,
                },
            });
        }
        let hsts = config
            .tls
            .as_ref()
            .and_then(|t| t.hsts.as_deref())
            .and_then(|h| HeaderValue::from_str(h).ok());
        let auth = config
            .jwt
            .as_ref()
            .map(|j| Authenticator::new(j, deps.revoked.clone()))
            .transpose()?;
        let strip = Strip::new(&config.identity);
        let tokens = match (&config.tokens, &deps.store) {
            (None, _) => None,
            (Some(_), None) => return Err(StateError::NoStore),
            (Some(_), Some(store)) => {
                TokenService::new(&config, &upstreams, store.clone(), deps.revoked.clone())?
            }
        };
        Ok(AppState {
            config: Arc::new(config),
            router,
            targets,
            hsts,
            auth,
            strip,
            tokens,
        })
    }

    /// Starts background work (fetching trusted issuers' keys).
    pub fn start(&self) {
        if let Some(a) = &self.auth {
            a.start();
        }
    }

    pub fn authenticator(&self) -> Option<&Authenticator> {
        self.auth.as_ref()
    }
}

/// A request head parsed in place, for the HTTP/1.1 fast path (`crate::h1`).
pub(crate) struct FastRequest<'a, 'h> {
    pub method: &'a http::Method,
    /// The path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [httparse::Header<'h>],
    /// The client's address as text (canonical: IPv4 stays IPv4).
    pub peer_ip: &'a str,
}

/// What the fast path will do with a request.
pub(crate) enum FastJob {
    /// Proxy it: the upstream request head is built.
    Proxy {
        upstream: Arc<Upstream>,
        /// Index of the upstream server picked.
        server: usize,
        /// The request head to send upstream, ending with the blank line.
        head: Vec<u8>,
        /// The request body's Content-Length (0 without one).
        body_len: u64,
    },
    /// Serve it from the static route with this index.
    Static { route: usize },
    /// Answer the health path.
    Health,
}

/// A request the fast path may answer once its token checks out. Owns
/// everything it needs, so no parsed header outlives the synchronous part.
pub(crate) struct Pending<'s> {
    prepared: Prepared,
    /// A token still to verify (`finish_fast`); `None`: `prepared` is
    /// complete.
    auth: Option<FastAuth<'s>>,
}

impl<'s> Pending<'s> {
    pub(crate) fn is_static(&self) -> bool {
        matches!(self.prepared.job, FastJob::Static { .. })
    }

    /// The prepared request if nothing is left to await (no token, or a
    /// cached one), else `self` for `finish_fast`.
    pub(crate) fn ready(self) -> Ready<'s> {
        match self.auth {
            None => Ready::Now(self.prepared),
            Some(_) => Ready::Verify(self),
        }
    }
}

pub(crate) enum Ready<'s> {
    Now(Prepared),
    /// A token to verify first: `finish_fast`.
    Verify(Pending<'s>),
}

struct FastAuth<'s> {
    auth: &'s Authenticator,
    token: String,
    rules: &'s [crate::config::ClaimRule],
}

/// A request the fast path may answer.
pub(crate) struct Prepared {
    pub job: FastJob,
    /// The client sent `Connection: close`.
    pub close: bool,
    pub request_id: RequestId,
}

impl AppState {
    /// The request path of `dispatch` for the fast path, same steps in the
    /// same order, for requests that end at the proxy. `None` when anything
    /// else may happen (health, redirect, bad path, token route, static
    /// route, 404, 405, 401, 403, 413, preflight, upgrade, chunked or
    /// `Expect` bodies): the general path answers those.
    pub(crate) fn prepare_fast(
        &self,
        conn: &ConnInfo,
        req: &FastRequest<'_, '_>,
    ) -> Option<Pending<'_>> {
        let server = &self.config.server;
        let mut host = None;
        let mut hosts = 0;
        let mut content_length = None;
        let mut client_request_id = None;
        let mut close = false;
        let mut cors = 0;
        let mut has_connection = false;
        let mut authorization = None;
        let mut authorizations = 0;
        for h in req.headers {
            match Name::of(h.name.as_bytes()) {
                Name::Host => {
                    hosts += 1;
                    host = Some(h.value);
                }
                Name::ContentLength => {
                    if content_length.is_some()
                        || h.value.is_empty()
                        || !h.value.iter().all(u8::is_ascii_digit)
                    {
                        return None;
                    }
                    content_length = Some(std::str::from_utf8(h.value).ok()?.parse::<u64>().ok()?);
                }
                Name::TransferEncoding | Name::Expect | Name::Upgrade => return None,
                Name::Connection => {
                    has_connection |= crate::h1::names_headers(h.value);
                    for t in h.value.split(|b| *b == b',') {
                        let t = t.trim_ascii();
                        if t.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if t.eq_ignore_ascii_case(b"upgrade") {
                            return None;
                        }
                    }
                }
                Name::XRequestId => client_request_id = Some(h.value),
                Name::Origin | Name::AccessControlRequestMethod => cors += 1,
                Name::Authorization => {
                    authorizations += 1;
                    authorization = Some(h.value);
                }
                _ => {}
            }
        }
        if hosts > 1 {
            return None;
        }
        // Steps 3-5: health, redirect, dot segments.
        if req.path == server.health_path {
            return Some(Pending {
                prepared: Prepared {
                    job: FastJob::Health,
                    close,
                    request_id: RequestId::new(client_request_id),
                },
                auth: None,
            });
        }
        if conn.redirect_https_port.is_some() || has_dot_segment(req.path) {
            return None;
        }
        if self
            .tokens
            .as_ref()
            .is_some_and(|t| t.endpoint(req.path).is_some())
        {
            return None;
        }
        // Step 6: route.
        let (index, route) = self.router.route(req.path)?;
        let target = &self.targets[index];
        // Step 7: methods (a CORS preflight goes the general way).
        let method = req.method;
        if (*method == http::Method::OPTIONS && cors > 0)
            || !policy::method_allowed(&route.policy, method)
        {
            return None;
        }
        if content_length.unwrap_or(0) > server.max_body_bytes {
            return None;
        }
        let peer = conn.peer.ip().to_canonical();
        // A trusted proxy's X-Forwarded-* values are believed (as
        // `proxy::headers::set_forwarded` does).
        let trusted = server.trusted_proxies.iter().any(|n| n.contains(&peer));
        // Step 8: the credentials; a token the cache holds is settled here,
        // any other is verified in `finish_fast`.
        let auth = match (&route.policy.auth, &self.auth) {
            (AuthMode::None, _) | (_, None) => Ok(None),
            (mode, Some(auth)) => {
                let token = match (authorization, authorizations) {
                    (Some(v), 1) => match auth.bearer_quick_bytes(v) {
                        Some(t) => Some(t),
                        None => auth.bearer_in(std::iter::once(v)).ok()?.map(str::as_bytes),
                    },
                    (None, _) => None,
                    (Some(_), _) => return None,
                };
                match token {
                    None if *mode != AuthMode::Optional => return None,
                    None => Ok(None),
                    // A cached token is settled here, without an await.
                    Some(t) => match auth.cached(t) {
                        Some(Ok(id))
                            if policy::claims_satisfy(&route.policy.require, id.claims()) =>
                        {
                            Ok(Some(id))
                        }
                        Some(_) => return None,
                        None => Err(FastAuth {
                            auth,
                            token: std::str::from_utf8(t).ok()?.to_owned(),
                            rules: &route.policy.require,
                        }),
                    },
                }
            }
        };
        // Ok: the identity is known (or there is none); Err: still to verify.
        let (identity, auth) = match auth {
            Ok(identity) => (identity, None),
            Err(pending) => (None, Some(pending)),
        };
        let request_id = RequestId::new(client_request_id);
        let (upstream, strip_prefix) = match target {
            Target::Static(_) if content_length.unwrap_or(0) > 0 => return None,
            Target::Static(_) => {
                return Some(Pending {
                    prepared: Prepared {
                        job: FastJob::Static { route: index },
                        close,
                        request_id,
                    },
                    auth,
                })
            }
            Target::Upstream {
                upstream,
                strip_prefix,
            } => (upstream, strip_prefix),
        };
        let server_index = upstream.pick_index()?;
        let picked = &upstream.servers()[server_index];

        // Step 9: the upstream request, as `proxy::forward` builds it.
        let path =
            crate::proxy::upstream_path(req.path, strip_prefix.then_some(route.path.as_str()))
                .ok()?;
        let mut head = crate::h1::spare::take();
        head.extend_from_slice(req.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(path.as_bytes());
        if let Some(q) = req.query {
            head.push(b'?');
            head.extend_from_slice(q.as_bytes());
        }
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let up_host = match host {
            Some(h) if upstream.config.preserve_host => h,
            _ => picked.host.as_bytes(),
        };
        crate::h1::header(&mut head, b"host", up_host);
        let named = if has_connection {
            crate::h1::connection_named(req.headers)
        } else {
            Vec::new()
        };
        let forward_token = self.config.identity.forward_token;
        let mut prior_xff: Vec<&str> = Vec::new();
        let (mut kept_proto, mut kept_host, mut kept_real_ip) = (false, false, false);
        for h in req.headers {
            let n = h.name;
            let name = Name::of(n.as_bytes());
            if name.is_hop_by_hop() || named.iter().any(|c| c.eq_ignore_ascii_case(n.as_bytes())) {
                continue;
            }
            if trusted {
                if name == Name::XForwardedFor {
                    let visible = h
                        .value
                        .iter()
                        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
                    if let (true, Ok(v)) = (visible, std::str::from_utf8(h.value)) {
                        let v = v.trim();
                        if !v.is_empty() {
                            prior_xff.push(v);
                        }
                    }
                    continue;
                }
                let kept = match name {
                    Name::XForwardedProto => Some(&mut kept_proto),
                    Name::XForwardedHost => Some(&mut kept_host),
                    Name::XRealIp => Some(&mut kept_real_ip),
                    _ => None,
                };
                if let Some(kept) = kept {
                    *kept = true;
                    crate::h1::header(&mut head, n.as_bytes(), h.value);
                    continue;
                }
            }
            if name.is_forwarding()
                || (!forward_token && name == Name::Authorization)
                || self.strip.matches(n)
            {
                continue;
            }
            crate::h1::header(&mut head, n.as_bytes(), h.value);
        }
        if prior_xff.is_empty() {
            crate::h1::header(&mut head, b"x-forwarded-for", req.peer_ip.as_bytes());
        } else {
            let chain = format!("{}, {}", prior_xff.join(", "), req.peer_ip);
            crate::h1::header(&mut head, b"x-forwarded-for", chain.as_bytes());
        }
        if !kept_proto {
            crate::h1::header(
                &mut head,
                b"x-forwarded-proto",
                if conn.tls { b"https" } else { b"http" },
            );
        }
        if !kept_host {
            if let Some(h) = host {
                crate::h1::header(&mut head, b"x-forwarded-host", h);
            }
        }
        if !kept_real_ip {
            crate::h1::header(&mut head, b"x-real-ip", req.peer_ip.as_bytes());
        }
        crate::h1::header(&mut head, b"x-request-id", request_id.as_bytes());
        let mut prepared = Prepared {
            job: FastJob::Proxy {
                upstream: upstream.clone(),
                server: server_index,
                head,
                body_len: content_length.unwrap_or(0),
            },
            close,
            request_id,
        };
        if auth.is_none() {
            self.seal(&mut prepared, identity.as_ref());
        }
        Some(Pending { prepared, auth })
    }

    /// Step 8, second half, for the fast path: verifies a token the cache
    /// did not hold, and the claim rules. `None`: refused, the general path
    /// answers.
    pub(crate) async fn finish_fast(&self, pending: Pending<'_>) -> Option<Prepared> {
        let Pending { mut prepared, auth } = pending;
        let identity = match auth {
            None => None,
            Some(FastAuth { auth, token, rules }) => {
                let id = auth.verify_access(&token).await.ok()?;
                if !policy::claims_satisfy(rules, id.claims()) {
                    return None;
                }
                Some(id)
            }
        };
        self.seal(&mut prepared, identity.as_ref());
        Some(prepared)
    }

    /// Ends the upstream request head: the identity headers (rendered once
    /// per cached token), then the blank line.
    fn seal(&self, prepared: &mut Prepared, identity: Option<&Identity>) {
        let FastJob::Proxy { head, .. } = &mut prepared.job else {
            return;
        };
        if let Some(id) = identity {
            head.extend_from_slice(id.rendered(|id| {
                let mut lines = Vec::new();
                for (name, value) in self.identity_headers(id) {
                    crate::h1::header(&mut lines, name.as_str().as_bytes(), value.as_bytes());
                }
                lines
            }));
        }
        head.extend_from_slice(b"\r\n");
    }

    /// The identity headers for a verified token.
    fn identity_headers(&self, id: &Identity) -> Vec<(http::HeaderName, HeaderValue)> {
        identity::build(
            &self.config.identity,
            id.claims(),
            self.config
                .jwt
                .as_ref()
                .map_or("user_id", |j| j.user_id_claim.as_str()),
            id.user_id(),
        )
    }

    /// Step 9 for a static route on the fast path (`prepare_fast` said
    /// `FastJob::Static`): the same file server and error answers as
    /// `dispatch`.
    pub(crate) async fn serve_static_fast(&self, route: usize, req: Request<()>) -> Response<Body> {
        let (Some(Target::Static(files)), Some(r)) =
            (self.targets.get(route), self.router.routes().get(route))
        else {
            return response::error_response(&GatewayError::NoRoute);
        };
        match files.serve(req, &r.path).await {
            Ok(resp) => resp,
            Err(e) => response::error_response(&GatewayError::from(e)),
        }
    }
}

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// Set on the plain listener when `redirect_http`: the https port.
    pub redirect_https_port: Option<u16>,
}

/// Handles one request; returns the response and its access-log record.
pub async fn handle(
    state: Arc<AppState>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    log: bool,
) -> (Response<Body>, AccessRecord) {
    let start = Instant::now();
    let request_id = request_id(req.headers());
    let mut record = AccessRecord {
        peer: conn.peer,
        method: req.method().clone(),
        // Only paid for when the access log is on.
        path: if log {
            req.uri().path().to_string()
        } else {
            String::new()
        },
        status: 0,
        request_id: if log {
            request_id.to_str().unwrap_or("-").to_string()
        } else {
            String::new()
        },
        start,
        upstream_time: None,
        error: None,
    };

    let mut resp = dispatch(&state, conn, req, &request_id, &mut record).await;

    if let Some(note) = resp.extensions_mut().remove::<ErrorNote>() {
        record.error = Some(note.0);
    }
    let h = resp.headers_mut();
    h.insert(&X_REQUEST_ID, request_id);
    if conn.tls {
        if let Some(hsts) = &state.hsts {
            h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
    record.status = resp.status().as_u16();
    (resp, record)
}

async fn dispatch(
    state: &AppState,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
    record: &mut AccessRecord,
) -> Response<Body> {
    let server = &state.config.server;
    let stripped = state.strip.apply(req.headers_mut());
    if stripped > 0 {
        tracing::debug!(stripped, "removed client-sent identity headers");
    }
    if req.uri().path() == server.health_path {
        return health();
    }
    if let Some(port) = conn.redirect_https_port {
        return redirect_to_https(&req, port);
    }
    if has_dot_segment(req.uri().path()) {
        return response::error_response(&GatewayError::BadPath);
    }
    // Token routes are answered here, never proxied.
    if let (Some(tokens), Some(auth)) = (&state.tokens, &state.auth) {
        if let Some(ep) = tokens.endpoint(req.uri().path()) {
            // Login rate limits count the real client, also behind a trusted proxy.
            let client = crate::proxy::headers::client_ip(
                conn.peer.ip().to_canonical(),
                req.headers(),
                &server.trusted_proxies,
            );
            return tokens.handle(ep, req, client, auth).await;
        }
    }
    let Some((index, route)) = state.router.route(req.uri().path()) else {
        return response::error_response(&GatewayError::NoRoute);
    };
    let identity = match authorize(state, &route.policy, &req).await {
        Ok(identity) => identity,
        Err(e) => return response::error_response(&e),
    };
    let inject = match &identity {
        Some(id) => state.identity_headers(id),
        None => Vec::new(),
    };
    if !state.config.identity.forward_token {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    let result = match &state.targets[index] {
        Target::Static(files) => files
            .serve(req, &route.path)
            .await
            .map_err(GatewayError::from),
        Target::Upstream {
            upstream,
            strip_prefix,
        } => {
            let peer_ip = conn.peer.ip().to_canonical();
            let ctx = ForwardCtx {
                peer: conn.peer,
                tls: conn.tls,
                trusted: server.trusted_proxies.iter().any(|n| n.contains(&peer_ip)),
                request_id,
                inject: &inject,
                strip_prefix: strip_prefix.then_some(route.path.as_str()),
                max_body_bytes: server.max_body_bytes,
            };
            let sent = Instant::now();
            let r = proxy::forward(upstream, req, ctx).await;
            record.upstream_time = Some(sent.elapsed());
            r.map_err(GatewayError::from)
        }
    };
    match result {
        Ok(resp) => resp,
        Err(e) => {
            if e.is_server_side() {
                tracing::debug!(error = %response::error_chain(&e), "request failed");
            }
            response::error_response(&e)
        }
    }
}

/// Steps 7 and 8: the route's methods, then its auth mode and claim rules.
async fn authorize(
    state: &AppState,
    policy: &RoutePolicy,
    req: &Request<Incoming>,
) -> Result<Option<Identity>, GatewayError> {
    // Browsers send CORS preflights without credentials: they pass
    // anonymously (identity headers already stripped) so the app can
    // answer them.
    if is_preflight(req) {
        return Ok(None);
    }
    if !policy::method_allowed(policy, req.method()) {
        return Err(GatewayError::MethodNotAllowed {
            method: req.method().clone(),
            allow: policy::allow_header(policy),
        });
    }
    if policy.auth == AuthMode::None {
        return Ok(None);
    }
    let Some(auth) = &state.auth else {
        // Config validation refuses auth modes without [jwt].
        return Ok(None);
    };
    let fail = |err: AuthError| GatewayError::Auth {
        err,
        scheme: auth.scheme().to_string(),
    };
    // The common shape (`Bearer <token>`) is taken without the byte checks
    // when the token verifies; anything else gets the full parse and its
    // exact error.
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    if let (Some(v), None) = (values.next(), values.next()) {
        if let Some(token) = auth.bearer_quick(v.as_bytes()) {
            if let Ok(identity) = auth.verify_access(token).await {
                if !policy::claims_satisfy(&policy.require, identity.claims()) {
                    return Err(fail(AuthError::Forbidden));
                }
                return Ok(Some(identity));
            }
        }
    }
    let identity = match auth.bearer(req.headers()).map_err(fail)? {
        Some(token) => auth.verify_access(token).await.map_err(fail)?,
        None if policy.auth == AuthMode::Optional => return Ok(None),
        None => return Err(fail(AuthError::NoCredentials)),
    };
    if !policy::claims_satisfy(&policy.require, identity.claims()) {
        return Err(fail(AuthError::Forbidden));
    }
    Ok(Some(identity))
}

fn is_preflight(req: &Request<Incoming>) -> bool {
    req.method() == http::Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

pub(crate) fn health() -> Response<Body> {
    let mut resp = Response::new(response::full("ok"));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 308 to the same host and path on https (the port shown unless 443).
fn redirect_to_https(req: &Request<Incoming>, port: u16) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return response::json_detail(StatusCode::BAD_REQUEST, "Missing Host header.");
    };
    let host = host.host();
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut resp = Response::new(response::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => response::json_detail(StatusCode::BAD_REQUEST, "Bad request."),
    }
}

/// A valid client X-Request-Id (1 to 128 of `A-Za-z0-9._-`), else a new UUID.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    request_id_from(headers.get(&X_REQUEST_ID).map(HeaderValue::as_bytes))
}

fn request_id_from(client: Option<&[u8]>) -> HeaderValue {
    RequestId::new(client).into_header()
}

/// A request's id: the client's valid X-Request-Id, else a new UUID, held
/// inline (the fast path makes one per request without allocating).
#[derive(Debug, Clone)]
pub(crate) enum RequestId {
    Made([u8; uuid::fmt::Hyphenated::LENGTH]),
    Client(HeaderValue),
}

impl RequestId {
    pub(crate) fn new(client: Option<&[u8]>) -> Self {
        if let Some(b) = client {
            if !b.is_empty()
                && b.len() <= 128
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
            {
                if let Ok(v) = HeaderValue::from_bytes(b) {
                    return RequestId::Client(v);
                }
            }
        }
        // A version 4 UUID, hyphenated, lowercase.
        let mut b = random_16();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        // Where each byte's two digits go, around the hyphens.
        const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut out = [b'-'; uuid::fmt::Hyphenated::LENGTH];
        for (byte, at) in b.iter().zip(AT) {
            let [hi, lo] = HEX_PAIRS[usize::from(*byte)];
            out[at] = hi;
            out[at + 1] = lo;
        }
        RequestId::Made(out)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Made(b) => b,
            RequestId::Client(v) => v.as_bytes(),
        }
    }

    /// For the access log: ids are ASCII either way.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    pub(crate) fn into_header(self) -> HeaderValue {
        match self {
            RequestId::Made(b) => {
                HeaderValue::from_bytes(&b).unwrap_or_else(|_| HeaderValue::from_static("-"))
            }
            RequestId::Client(v) => v,
        }
    }
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0x0f]];
        i += 1;
    }
    t
};

/// 16 unpredictable bytes without a syscall per request: a per-thread
/// SplitMix64 stream seeded once from the OS (request ids need to be unique
/// and hard to guess, not secret).
fn random_16() -> [u8; 16] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(u64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([7; 8]),
        ));
    }
    fn next(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    STATE.with(|state| {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&next(state).to_le_bytes());
        out[8..].copy_from_slice(&next(state).to_le_bytes());
        out
    })
}

/// The current time as an HTTP date, formatted once per second per thread.
pub(crate) fn with_http_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        f(d.1.as_bytes())
    })
}

/// Whether any segment of the path, percent-decoded, is `.` or `..`.
pub fn has_dot_segment(path: &str) -> bool {
    // Without a dot or an escape there is none (most paths).
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    decoded
        .split(['/', '\\'])
        .any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_in_any_spelling() {
        assert!(has_dot_segment("/a/../b"));
        assert!(has_dot_segment("/a/%2e%2E/b"));
        assert!(has_dot_segment("/a/.%2e%2fb"));
        assert!(has_dot_segment("/a/..%5cb"));
        assert!(has_dot_segment("/./a"));
        assert!(!has_dot_segment("/a/..b/c.d"));
        assert!(!has_dot_segment("/"));
    }

    #[test]
    fn made_request_ids_are_v4_uuids() {
        for _ in 0..100 {
            let id = RequestId::new(None);
            let parsed = uuid::Uuid::parse_str(id.as_str()).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(parsed.hyphenated().to_string(), id.as_str());
        }
    }

    #[test]
    fn request_ids() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-1.2_3"));
        assert_eq!(request_id(&h), "abc-1.2_3");
        h.insert("x-request-id", HeaderValue::from_static("bad id"));
        assert_eq!(request_id(&h).len(), 36);
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"a".repeat(129)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 36);
    }
}
