//! The hyper executor: carries decisions out for HTTP/2, HTTP/1.0, upgrades,
//! `Expect: 100-continue` and every HTTP/1.1 connection the raw executor
//! (`crate::h1`) handed over. The decision is `AppState::decide`'s, the
//! same as on the raw path; only the framing differs.

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;

use super::{Action, AppState, ConnInfo, Head};
use crate::proxy::{self, Outbound};
use crate::response::{self, Body, ErrorNote, GatewayError};
use crate::telemetry::{AccessRecord, RequestInfo};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Handles one request; returns the response and its access-log record.
pub async fn handle(
    state: Arc<AppState>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    log: bool,
) -> (Response<Body>, AccessRecord) {
    let start = Instant::now();
    let step = {
        let uri = req.uri();
        // The header map's iterator cannot be cloned; the decision walks
        // the fields more than once.
        let fields: Vec<(&[u8], &[u8])> = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect();
        let head = Head {
            method: req.method(),
            version: req.version(),
            path: uri.path(),
            query: uri.query(),
            authority: uri.authority().map(|a| a.as_str().as_bytes()),
            headers: fields.iter().copied(),
            head_len: head_len(&req),
        };
        state.decide(conn, head)
    };
    let decision = step.resolve().await;
    let mut record = AccessRecord {
        route: decision.route,
        peer: conn.peer,
        method: req.method().clone(),
        // Only paid for when the access log is on.
        info: if log {
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let fields: Vec<(&[u8], &[u8])> = req
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
                .collect();
            RequestInfo::gather(
                target,
                req.version(),
                conn.peer.ip(),
                req.uri().authority().map(|a| a.as_str().as_bytes()),
                fields.iter().copied(),
                &state.config.server.trusted_proxies,
            )
        } else {
            RequestInfo::default()
        },
        status: 0,
        request_id: if log {
            decision.request_id.as_str().to_string()
        } else {
            String::new()
        },
        start,
        upstream_time: None,
        upstream: None,
        user_id: if log {
            decision.identity.as_ref().map(|i| i.user_id().to_string())
        } else {
            None
        },
        tls: conn.tls_version,
        error: None,
    };
    let version = req.version();
    let is_head = req.method() == http::Method::HEAD;
    // A body left half read: the connection cannot carry another request.
    let mut stalled = false;
    let mut resp = match decision.action {
        Action::Answer(resp) => *resp,
        Action::Static { route } => {
            // The body, if any, is left to hyper (it drains or closes).
            let (parts, _body) = req.into_parts();
            let mut req = Request::from_parts(parts, ());
            if let Some(p) = &decision.path {
                // The file server sees the normalised path too.
                let pq = match req.uri().query() {
                    Some(q) => format!("{p}?{q}"),
                    None => p.clone(),
                };
                if let Ok(uri) = http::Uri::try_from(pq) {
                    *req.uri_mut() = uri;
                }
            }
            state.serve_static(route, req).await
        }
        Action::Tokens { endpoint, client } => {
            let (parts, body) = req.into_parts();
            // SECURITY: the whole body within header_read_timeout; no
            // watchdog runs while a request is in flight.
            let within = state.config.server.header_read_timeout;
            let read = read_limited(body, state.token_body_limit());
            match tokio::time::timeout(within, read).await {
                Ok(body) => {
                    state
                        .token_route(endpoint, Request::from_parts(parts, body), client)
                        .await
                }
                Err(_) => {
                    stalled = true;
                    response::error_response(&GatewayError::Proxy(
                        crate::proxy::ProxyError::ClientBodyTimeout { after: within },
                    ))
                }
            }
        }
        Action::Proxy(plan) => {
            let sent = Instant::now();
            let out = Outbound {
                server: plan.server,
                head: plan.head,
                upgrade: plan.upgrade,
                max_body_bytes: state.config.server.max_body_bytes,
                budget: &state.budget,
            };
            let r = proxy::forward(&plan.upstream, out, req).await;
            record.upstream_time = Some(sent.elapsed());
            match r {
                Ok(resp) => resp,
                Err(e) => {
                    let e = GatewayError::from(e);
                    if e.is_server_side() {
                        tracing::debug!(error = %response::error_chain(&e), "request failed");
                    }
                    response::error_response(&e)
                }
            }
        }
    };
    // A HEAD answer has no body, whatever the file server or upstream
    // made (HTTP/2 would reset the stream on DATA frames).
    if is_head {
        resp = resp.map(|_| response::empty());
    }
    if let Some(note) = resp.extensions_mut().remove::<ErrorNote>() {
        record.error = Some(note.0);
    }
    if let Some(used) = resp.extensions_mut().remove::<proxy::UsedServer>() {
        record.upstream = Some(used.0);
    }
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_bytes(decision.request_id.as_bytes()) {
        h.insert(&X_REQUEST_ID, v);
    }
    if conn.tls {
        if let Some(hsts) = &state.hsts {
            h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
    // After a framing error the rest of the connection cannot be trusted.
    if (decision.close || stalled) && version < http::Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    record.status = resp.status().as_u16();
    (resp, record)
}

/// A whole body of at most `limit` bytes; `None` when longer (or broken).
async fn read_limited(mut body: Incoming, limit: u64) -> Option<bytes::Bytes> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if (out.len() + data.len()) as u64 > limit {
                return None;
            }
            out.extend_from_slice(&data);
        }
    }
    Some(out.into())
}

/// The size of the request head as sent: the request line and each field
/// with its separators (HTTP/2 fields counted as HTTP/1.1 lines, as
/// `max_header_bytes` is documented).
fn head_len<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    req.headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
        + 2
}
