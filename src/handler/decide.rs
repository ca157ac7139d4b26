//! `AppState::decide`: steps 1-11 of the module doc on one request head,
//! from one scan of its fields, and the token verification that may end
//! it (`Pending::finish`).

use http::Response;
use std::borrow::Cow;
use std::net::IpAddr;

use super::state::Target;
use super::{
    acme_http01, health, redirect_to_https, Action, AppState, ConnInfo, Decision, Framing, Head,
    Pending, ProxyPlan, RequestId, Step,
};
use crate::auth::{identity, policy, AuthError, Identity};
use crate::config::AuthMode;
use crate::proxy::headers::{self as fwd, Forwarding, Name};
use crate::proxy::ProxyError;
use crate::response::{self, Body, GatewayError};
use crate::tokens::Endpoint;
use crate::wire::RequestError;
use http::header::HeaderValue;

/// The header facts the decision needs, from one pass over the fields.
#[derive(Default)]
struct Facts<'h> {
    hosts: usize,
    host: Option<&'h [u8]>,
    content_length: Option<u64>,
    bad_length: bool,
    transfer_encoding: bool,
    chunked_last: bool,
    close: bool,
    upgrade_token: bool,
    upgrade: Option<&'h [u8]>,
    request_id: Option<&'h [u8]>,
    origin: bool,
    cors_method: bool,
    authorization: Option<&'h [u8]>,
    authorizations: usize,
    /// Header names the Connection header lists (hop-by-hop).
    named: Vec<&'h [u8]>,
}

impl<'h> Facts<'h> {
    fn scan(headers: impl Iterator<Item = (&'h [u8], &'h [u8])>) -> Self {
        let mut f = Facts::default();
        for (n, v) in headers {
            match Name::of(n) {
                Name::Host => {
                    f.hosts += 1;
                    f.host.get_or_insert(v);
                }
                Name::ContentLength => match crate::wire::parse_length(v) {
                    Some(len) if f.content_length.is_none_or(|c| c == len) => {
                        f.content_length = Some(len)
                    }
                    _ => f.bad_length = true,
                },
                Name::TransferEncoding => {
                    f.transfer_encoding = true;
                    f.chunked_last = crate::wire::chunked_last(v);
                }
                Name::Connection => {
                    if crate::wire::names_headers(v) {
                        f.named.extend(crate::wire::tokens(v));
                    }
                    for t in crate::wire::tokens(v) {
                        if t.eq_ignore_ascii_case(b"close") {
                            f.close = true;
                        } else if t.eq_ignore_ascii_case(b"upgrade") {
                            f.upgrade_token = true;
                        }
                    }
                }
                Name::Upgrade => f.upgrade = Some(v),
                // The first valid one, on every path.
                Name::XRequestId if f.request_id.is_none() && RequestId::valid(v) => {
                    f.request_id = Some(v);
                }
                Name::Origin => f.origin = true,
                Name::AccessControlRequestMethod => f.cors_method = true,
                Name::Authorization => {
                    f.authorizations += 1;
                    f.authorization = Some(v);
                }
                _ => {}
            }
        }
        f
    }
}

impl AppState {
    /// Steps 1-11 of the module doc on a request head: what to do with it.
    /// Synchronous unless a token must be verified (`Step::Verify`).
    pub(crate) fn decide<'s, 'h, I>(&'s self, conn: &ConnInfo, head: Head<'h, I>) -> Step<'s>
    where
        I: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
    {
        let server = &self.config.server;
        let f = Facts::scan(head.headers.clone());
        let mut decision = Decision {
            action: Action::Static { route: 0 },
            request_id: RequestId::new(f.request_id),
            close: f.close,
            framing: match (f.transfer_encoding, f.content_length) {
                (true, _) => Framing::Chunked,
                (false, Some(n)) => Framing::Length(n),
                (false, None) => Framing::None,
            },
            path: None,
            route: crate::metrics::route_none(),
            identity: None,
        };
        let refuse = |mut d: Decision, err: GatewayError| {
            d.action = Action::Answer(Box::new(response::error_response(&err)));
            Step::Ready(d)
        };
        let bad = |d: Decision, e: RequestError| {
            let mut d = d;
            // SECURITY: after a framing error the rest of the connection
            // cannot be read safely: nothing more is read, not even the
            // body, and the connection closes after the answer.
            d.close = true;
            d.framing = Framing::None;
            refuse(d, GatewayError::Request(e))
        };
        // Step 3: what RFC 9112 refuses.
        if head.head_len > server.max_header_bytes {
            return bad(decision, RequestError::HeadTooLarge);
        }
        if f.bad_length {
            return bad(decision, RequestError::BadContentLength);
        }
        if f.transfer_encoding && (f.content_length.is_some() || !f.chunked_last) {
            return bad(decision, RequestError::BadTransferEncoding);
        }
        if head.version == http::Version::HTTP_11 {
            if f.hosts > 1 {
                return bad(decision, RequestError::MultipleHosts);
            }
            if f.hosts == 0 && head.authority.is_none() {
                return bad(decision, RequestError::MissingHost);
            }
        }
        // An absolute-form target's authority wins over Host (RFC 9112 3.2.2).
        let host = head.authority.or(f.host);
        // Steps 4-5: health, redirect.
        if head.path == server.health_path {
            decision.action = Action::Answer(Box::new(health()));
            return Step::Ready(decision);
        }
        // ACME http-01 validation, before the redirect: the CA asks on
        // plain port 80 and follows no redirect to a name not yet served.
        if let Some(answer) = self
            .acme_http
            .as_ref()
            .and_then(|a| a.http01_answer(head.path))
        {
            decision.action = Action::Answer(Box::new(acme_http01(answer)));
            return Step::Ready(decision);
        }
        if let Some(port) = conn.redirect_https_port {
            decision.action = Action::Answer(Box::new(redirect_to_https(
                host, head.path, head.query, port,
            )));
            return Step::Ready(decision);
        }
        // Step 6: the path the app will see.
        let normal = match crate::path::normalize(head.path) {
            Ok(n) => n,
            Err(e) => return refuse(decision, GatewayError::Path(e)),
        };
        if let Cow::Owned(p) = &normal.path {
            decision.path = Some(p.clone());
        }
        let path: &str = &normal.path;
        // Step 7: token routes.
        if let (Some(tokens), Some(_)) = (&self.tokens, &self.auth) {
            if let Some(endpoint) = tokens.endpoint(path) {
                // Login rate limits count the real client, also behind a
                // trusted proxy.
                let xff = head
                    .headers
                    .clone()
                    .filter(|(n, _)| Name::of(n) == Name::XForwardedFor)
                    .map(|(_, v)| v);
                let client =
                    fwd::client_ip(conn.peer.ip().to_canonical(), xff, &server.trusted_proxies);
                decision.action = Action::Tokens { endpoint, client };
                decision.route = crate::metrics::route_tokens();
                return Step::Ready(decision);
            }
        }
        // Step 8: route, on the normalised path.
        let routed = if normal.encoded_slash {
            // SECURITY: an app that decodes `%2F` sees the decoded path, so
            // the route (and policy) is the decoded path's, and it must opt
            // in.
            match self.router.route(&normal.decoded_slashes()) {
                Some((i, r)) if r.policy.allow_encoded_slash => Some((i, r)),
                _ => {
                    return refuse(
                        decision,
                        GatewayError::Path(crate::path::PathError::EncodedSlash),
                    )
                }
            }
        } else {
            self.router.route(path)
        };
        let Some((index, route)) = routed else {
            return refuse(decision, GatewayError::NoRoute);
        };
        decision.route = self
            .route_metrics
            .get(index)
            .copied()
            .unwrap_or_else(crate::metrics::route_none);
        // Step 9: methods, preflight, declared size.
        let preflight = *head.method == http::Method::OPTIONS && f.origin && f.cors_method;
        if !preflight && !policy::method_allowed(&route.policy, head.method) {
            return refuse(
                decision,
                GatewayError::MethodNotAllowed {
                    method: head.method.clone(),
                    allow: policy::allow_header(&route.policy),
                },
            );
        }
        if f.content_length.unwrap_or(0) > server.max_body_bytes {
            decision.close = true;
            return refuse(decision, GatewayError::Proxy(ProxyError::BodyTooLarge));
        }
        // Step 11's target, prepared before the token is checked so a
        // verification only has to seal it.
        decision.action = match &self.targets[index] {
            Target::Static(_) => Action::Static { route: index },
            Target::Upstream {
                upstream,
                strip_prefix,
            } => {
                let Some(server_index) = upstream.pick_index() else {
                    return refuse(decision, GatewayError::Proxy(ProxyError::NoHealthyServer));
                };
                let picked = &upstream.servers()[server_index];
                let up_path = match crate::proxy::upstream_path(
                    path,
                    strip_prefix.then_some(route.path.as_str()),
                ) {
                    Ok(p) => p,
                    Err(e) => return refuse(decision, GatewayError::Proxy(e)),
                };
                // SECURITY: only WebSocket is tunnelled. Another protocol
                // (h2c above all) would let the client speak to the app
                // past every later check; such a request is proxied as a
                // plain one (Upgrade is hop-by-hop and goes).
                let upgrade = (head.version == http::Version::HTTP_11 && f.upgrade_token)
                    .then_some(f.upgrade)
                    .flatten()
                    .filter(|u| u.trim_ascii().eq_ignore_ascii_case(b"websocket"));
                let mut out = crate::wire::spare::take();
                fwd::write_request_head(
                    &mut out,
                    &Forwarding {
                        method: head.method,
                        path: up_path,
                        query: head.query,
                        host,
                        preserve_host: upstream.config.preserve_host,
                        server_host: picked.host.as_bytes(),
                        peer_ip: &conn.peer_ip,
                        tls: conn.tls,
                        trusted: server
                            .trusted_proxies
                            .iter()
                            .any(|n| n.contains(&conn.peer.ip().to_canonical())),
                        forward_token: self.config.identity.forward_token,
                        request_id: decision.request_id.as_bytes(),
                        upgrade,
                        connection_named: &f.named,
                    },
                    head.headers.clone(),
                    |n| self.strip.matches_bytes(n),
                );
                Action::Proxy(ProxyPlan {
                    upstream: upstream.clone(),
                    server: server_index,
                    head: out,
                    upgrade: upgrade.is_some(),
                })
            }
        };
        // Step 10: credentials.
        let auth = match (&route.policy.auth, &self.auth) {
            (AuthMode::None, _) | (_, None) => None,
            _ if preflight => None,
            (mode, Some(auth)) => Some((*mode, auth)),
        };
        let Some((mode, auth)) = auth else {
            self.settle(&mut decision, Ok(None));
            return Step::Ready(decision);
        };
        let fail = |err: AuthError| {
            crate::metrics::auth(auth_outcome(&err));
            GatewayError::Auth {
                err,
                scheme: auth.scheme().to_string(),
            }
        };
        let value = match (f.authorization, f.authorizations) {
            (None, _) if mode == AuthMode::Optional => {
                self.settle(&mut decision, Ok(None));
                return Step::Ready(decision);
            }
            (None, _) => return refuse(decision, fail(AuthError::NoCredentials)),
            // SECURITY: two headers could be read differently upstream.
            (Some(_), 2..) => return refuse(decision, fail(AuthError::BadHeader)),
            (Some(v), _) => v,
        };
        // The common shape (`Bearer <token>`) is taken without the byte
        // checks; the full parse decides the rest, and its error wins if
        // the token then fails.
        let (token, quick) = match auth.bearer_quick_bytes(value) {
            Some(t) => (t, true),
            None => match auth.bearer_in(std::iter::once(value)) {
                Ok(Some(t)) => (t.as_bytes(), false),
                Ok(None) if mode == AuthMode::Optional => {
                    self.settle(&mut decision, Ok(None));
                    return Step::Ready(decision);
                }
                Ok(None) => return refuse(decision, fail(AuthError::NoCredentials)),
                Err(e) => return refuse(decision, fail(e)),
            },
        };
        if let Some(hit) = auth.cached(token) {
            let outcome = hit.and_then(|id| {
                if policy::claims_satisfy(&route.policy.require, id.claims()) {
                    Ok(Some(id))
                } else {
                    Err(AuthError::Forbidden)
                }
            });
            self.settle(&mut decision, outcome);
            return Step::Ready(decision);
        }
        let header_error = if quick {
            auth.bearer_in(std::iter::once(value)).err()
        } else {
            None
        };
        let Ok(token) = std::str::from_utf8(token) else {
            return refuse(decision, fail(header_error.unwrap_or(AuthError::BadHeader)));
        };
        Step::Verify(Pending {
            state: self,
            decision,
            auth,
            token: token.to_owned(),
            header_error,
            rules: &route.policy.require,
        })
    }

    /// Ends step 10: an identity seals the upstream head with the identity
    /// header lines (rendered once per cached token); a refusal replaces
    /// the action.
    fn settle(&self, decision: &mut Decision, outcome: Result<Option<Identity>, AuthError>) {
        match outcome {
            Err(err) => {
                crate::metrics::auth(auth_outcome(&err));
                let scheme = self.auth.as_ref().map_or("Bearer", |a| a.scheme());
                if let Action::Proxy(plan) = &mut decision.action {
                    crate::wire::spare::give(std::mem::take(&mut plan.head));
                }
                let err = GatewayError::Auth {
                    err,
                    scheme: scheme.to_string(),
                };
                decision.action = Action::Answer(Box::new(response::error_response(&err)));
            }
            Ok(Some(id)) => {
                crate::metrics::auth("ok");
                decision.identity = Some(id.clone());
                if let Action::Proxy(plan) = &mut decision.action {
                    plan.head.extend_from_slice(id.rendered(|id| {
                        let mut lines = Vec::new();
                        for (name, value) in self.identity_headers(id) {
                            crate::wire::header(
                                &mut lines,
                                name.as_str().as_bytes(),
                                value.as_bytes(),
                            );
                        }
                        lines
                    }));
                }
            }
            Ok(None) => {}
        }
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

    /// Step 11 for a static route: the file server, or its error answer.
    pub(crate) async fn serve_static(
        &self,
        route: usize,
        req: http::Request<()>,
    ) -> Response<Body> {
        let files = match self.targets.get(route) {
            Some(Target::Static(files)) => files,
            _ => return response::error_response(&GatewayError::NoRoute),
        };
        let Some(r) = self.router.routes().get(route) else {
            return response::error_response(&GatewayError::NoRoute);
        };
        match files.serve(req, &r.path).await {
            Ok(resp) => resp,
            Err(e) => response::error_response(&GatewayError::from(e)),
        }
    }

    /// Largest body a token route reads (0 without token routes).
    pub(crate) fn token_body_limit(&self) -> u64 {
        self.tokens.as_ref().map_or(0, |t| t.body_limit())
    }

    /// Answers a token route (a decision said `Action::Tokens`); `req`'s
    /// body was read whole, `None` when over `token_body_limit`.
    pub(crate) async fn token_route(
        &self,
        endpoint: Endpoint,
        req: http::Request<Option<bytes::Bytes>>,
        client: IpAddr,
    ) -> Response<Body> {
        let (Some(tokens), Some(auth)) = (self.tokens.as_ref(), self.auth.as_ref()) else {
            return response::error_response(&GatewayError::NoRoute);
        };
        tokens.handle(endpoint, req, client, auth).await
    }
}

impl Pending<'_> {
    /// The decision, once the token checks out, is to serve a static file.
    pub(crate) fn is_static(&self) -> bool {
        matches!(self.decision.action, Action::Static { .. })
    }

    /// Verifies the token (once) and the claim rules; seals the upstream
    /// head or turns the decision into the refusal.
    pub(crate) async fn finish(self) -> Decision {
        let Pending {
            state,
            mut decision,
            auth,
            token,
            header_error,
            rules,
        } = self;
        let verified = auth.verify_access(&token).await;
        let outcome = match (verified, header_error) {
            (Ok(id), _) if policy::claims_satisfy(rules, id.claims()) => Ok(Some(id)),
            (Ok(_), _) => Err(AuthError::Forbidden),
            (Err(_), Some(e)) | (Err(e), None) => Err(e),
        };
        state.settle(&mut decision, outcome);
        decision
    }
}

/// The metrics label of an edge authentication failure.
fn auth_outcome(err: &AuthError) -> &'static str {
    use crate::auth::jwt::TokenProblem;
    match err {
        AuthError::NoCredentials => "missing",
        AuthError::Forbidden => "forbidden",
        AuthError::InvalidToken(TokenProblem::Expired) => "expired",
        AuthError::InvalidToken(TokenProblem::Blacklisted) => "revoked",
        AuthError::InvalidToken(_) | AuthError::BadHeader | AuthError::NoUserId => "invalid",
    }
}
