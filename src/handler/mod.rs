//! THE request path: one decision per request, whichever executor runs it.
//!
//! `AppState::decide` reads a request head and returns what to do with it;
//! two executors carry the decision out and differ only in framing: the
//! raw HTTP/1.1 one (`crate::h1`) and the hyper one (`general::handle`:
//! HTTP/2, upgrades, chunked uploads, HTTP/1.0, anything the raw one
//! declines before deciding). The steps, in order:
//!
//! 1. Give the request an id (the first valid client `X-Request-Id` is
//!    kept).
//! 2. SECURITY: identity headers the client sent are never read and never
//!    passed on (`proxy::headers::write_request_head`; any case, `_`
//!    spellings too).
//! 3. Refuse what RFC 9112 refuses: a head over `max_header_bytes` (431);
//!    an invalid or doubled Content-Length, Content-Length with
//!    Transfer-Encoding, a coding other than chunked last, HTTP/1.1 without
//!    Host or with two (400).
//! 4. Answer the health path, on every listener, never proxied.
//! 5. On the plain listener with `redirect_http`, answer 308 to https.
//! 6. SECURITY: normalise the path (`crate::path`): routes and policies
//!    see the path the app will see, and the upstream receives it.
//! 7. Token routes are answered by `tokens`, never proxied.
//! 8. Route: the longest matching prefix, with its policy; an encoded
//!    slash only where the route allows it.
//! 9. Methods the route does not allow: 405 with Allow, before any auth.
//!    CORS preflights pass anonymously. A declared body over
//!    `max_body_bytes`: 413.
//! 10. Authenticate (Bearer JWT, verified once) and authorise (required /
//!     optional / none and claim rules): 401 or 403.
//! 11. Dispatch: static files, or the reverse proxy with the upstream head
//!     built once, identity headers from the verified claims.
//!
//! Every response gets the request id and, on TLS, the HSTS header; errors
//! become responses in `response`; the access-log line is written by the
//! executor once the body has been sent.

mod decide;
mod general;
mod request_id;
mod state;

pub use general::handle;
pub(crate) use request_id::RequestId;
pub use state::{open_store, AppState, Deps, StateError};

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::auth::{AuthError, Authenticator};
use crate::config::ClaimRule;
use crate::proxy::Upstream;
use crate::response::{self, Body, GatewayError};
use crate::tokens::Endpoint;
use crate::wire::RequestError;

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// Set on the plain listener when `redirect_http`: the https port.
    pub redirect_https_port: Option<u16>,
    /// The peer's address as the upstream sees it (canonical: an IPv4
    /// client on a dual-stack listener stays IPv4), made once.
    pub peer_ip: String,
    /// The negotiated TLS version ("TLSv1.3"), for the access log.
    pub tls_version: Option<&'static str>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, redirect_https_port: Option<u16>) -> Self {
        ConnInfo {
            peer,
            tls,
            redirect_https_port,
            peer_ip: peer.ip().to_canonical().to_string(),
            tls_version: None,
        }
    }
}

/// A request head as either executor sees it.
pub(crate) struct Head<'a, I> {
    pub method: &'a http::Method,
    pub version: http::Version,
    /// The path as received (origin-form, or an absolute-form's path).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// An absolute-form target's or HTTP/2's authority.
    pub authority: Option<&'a [u8]>,
    /// Every header field, in order, as (name, value).
    pub headers: I,
    /// Bytes of the head (request line and fields).
    pub head_len: usize,
}

/// What a head says about its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    Length(u64),
    Chunked,
}

/// What to do with a request.
pub(crate) enum Action {
    /// Answer it here with this response (health, redirect, refusals).
    /// Boxed: the rarer outcome should not make every decision larger.
    Answer(Box<Response<Body>>),
    /// Serve it from the static route with this index.
    Static { route: usize },
    /// Hand it to the token routes; `client` is the real client address
    /// (for login limits).
    Tokens { endpoint: Endpoint, client: IpAddr },
    /// Proxy it.
    Proxy(ProxyPlan),
}

/// How to proxy a request.
pub(crate) struct ProxyPlan {
    pub upstream: Arc<Upstream>,
    /// Index of the server picked among the upstream's.
    pub server: usize,
    /// The upstream request line and fields: no framing fields, no blank
    /// line (the executor adds them, as it knows the body).
    pub head: Vec<u8>,
    /// An HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`).
    pub upgrade: bool,
}

/// The decision on one request.
pub(crate) struct Decision {
    pub action: Action,
    pub request_id: RequestId,
    /// The client sent `Connection: close`, or the answer must close.
    pub close: bool,
    pub framing: Framing,
    /// The normalised path when it differs from the received one (static
    /// routes serve it).
    pub path: Option<String>,
    /// The route's metrics label: its config path, "tokens", or "none".
    pub route: &'static crate::metrics::RouteMetrics,
    /// The verified identity (shared, not copied), for the access log.
    pub identity: Option<crate::auth::Identity>,
}

/// Counts a request in the metrics (`route`: the decision's); both
/// executors call it once the response has been sent (or abandoned).
pub(crate) fn observe(
    route: &crate::metrics::RouteMetrics,
    method: &http::Method,
    status: u16,
    start: std::time::Instant,
) {
    crate::metrics::request(route, method, status, start.elapsed().as_secs_f64());
}

/// A decision, or the token still to verify before there is one.
pub(crate) enum Step<'s> {
    Ready(Decision),
    Verify(Pending<'s>),
}

impl Step<'_> {
    /// The decision, verifying a token first if needed.
    pub(crate) async fn resolve(self) -> Decision {
        match self {
            Step::Ready(d) => d,
            Step::Verify(p) => p.finish().await,
        }
    }
}

/// A decision waiting on a token the cache did not hold.
pub(crate) struct Pending<'s> {
    state: &'s AppState,
    decision: Decision,
    auth: &'s Authenticator,
    token: String,
    /// The full parse of the header failed: its error wins over the
    /// verification's (simplejwt's exact answer for a malformed header).
    header_error: Option<AuthError>,
    rules: &'s [ClaimRule],
}

pub(crate) fn health() -> Response<Body> {
    let mut resp = Response::new(response::full("ok"));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The key authorization for an ACME http-01 token (RFC 8555 8.3), or
/// 404 for a token no order is waiting on.
pub(crate) fn acme_http01(key_authorization: Option<String>) -> Response<Body> {
    match key_authorization {
        Some(k) => {
            let mut resp = Response::new(response::full(k));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        None => response::error_response(&crate::response::GatewayError::NoRoute),
    }
}

/// 308 to the same host and path on https (the port shown unless 443).
fn redirect_to_https(
    host: Option<&[u8]>,
    path: &str,
    query: Option<&str>,
    port: u16,
) -> Response<Body> {
    let host = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return response::error_response(&GatewayError::Request(RequestError::MissingHost));
    };
    let host = host.host();
    let q = query.map(|q| format!("?{q}")).unwrap_or_default();
    let location = if port == 443 {
        format!("https://{host}{path}{q}")
    } else {
        format!("https://{host}:{port}{path}{q}")
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
