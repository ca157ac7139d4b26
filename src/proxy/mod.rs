//! The reverse proxy: forwards a request to an upstream server and streams
//! both bodies, never buffering either whole.
//!
//! Steps of `forward`, in order: refuse a declared body over the limit;
//! note an HTTP/1.1 upgrade; rewrite the URI (strip the route prefix);
//! remove hop-by-hop headers; set Host, X-Forwarded-*, X-Real-IP,
//! X-Request-Id and the identity headers the handler computed; send, with
//! the upstream timeout counted from the last progress of the request body
//! (a steady upload is never cut off, a stalled one is); remove hop-by-hop
//! headers from the response; for a 101 answer, join the two upgraded
//! connections.
//!
//! This module does not know about authentication: the handler passes the
//! identity headers to inject, ready made.

pub mod client;
pub mod h1client;
pub mod headers;
pub mod pool;
pub mod upstream;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

use crate::response::{Body, BoxError};
pub use upstream::Upstream;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to upstream {upstream}")]
    Connect {
        upstream: String,
        #[source]
        source: BoxError,
    },
    #[error("upstream {upstream} failed")]
    Upstream {
        upstream: String,
        #[source]
        source: BoxError,
    },
    #[error("upstream {upstream} sent no response headers within {after:?}")]
    Timeout { upstream: String, after: Duration },
    #[error("request body exceeds max_body_bytes")]
    BodyTooLarge,
    #[error("client sent no request body data within {after:?}")]
    ClientBodyTimeout { after: Duration },
    #[error("request cannot be forwarded: {0}")]
    BadRequest(&'static str),
}

/// What the handler knows about this request that the proxy needs.
pub struct ForwardCtx<'a> {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer is in `trusted_proxies`.
    pub trusted: bool,
    pub request_id: &'a HeaderValue,
    /// Identity headers to set, computed from verified claims.
    pub inject: &'a [(HeaderName, HeaderValue)],
    /// The route prefix to remove from the path, when `strip_prefix`.
    pub strip_prefix: Option<&'a str>,
    pub max_body_bytes: u64,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Forwards `req` to `up` and returns the upstream's response, streaming.
pub async fn forward(
    up: &Upstream,
    mut req: Request<Incoming>,
    ctx: ForwardCtx<'_>,
) -> Result<Response<Body>, ProxyError> {
    let name = &up.config.name;
    let Some(server) = up.pick() else {
        return Err(ProxyError::BadRequest("upstream has no servers"));
    };

    // A declared length over the limit is refused before any byte is read.
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > ctx.max_body_bytes {
            return Err(ProxyError::BodyTooLarge);
        }
    }

    let client_version = req.version();
    let upgrade = if client_version == Version::HTTP_11 {
        headers::upgrade_request(req.headers())
    } else {
        None
    };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    // The client's Host (HTTP/2 carries it in :authority).
    let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    parts.uri = upstream_uri(&parts.uri, ctx.strip_prefix, &server.authority)?;
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    headers::remove_hop_by_hop(h);
    if let Some(u) = &upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u.clone());
    }
    let host = if up.config.preserve_host {
        client_host.clone().unwrap_or_else(|| server.host.clone())
    } else {
        server.host.clone()
    };
    h.insert(header::HOST, host);
    headers::set_forwarded(
        h,
        &headers::ClientFacts {
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d;
            // the app wants the address the client really has.
            ip: ctx.peer.ip().to_canonical(),
            tls: ctx.tls,
            trusted: ctx.trusted,
            host: client_host.as_ref(),
        },
    );
    h.insert(&X_REQUEST_ID, ctx.request_id.clone());
    for (name, value) in ctx.inject {
        h.append(name, value.clone());
    }

    // Bodiless GET and HEAD (what HTTP/2 clients send most) take the
    // pooled client: no connection task, no channels.
    if upgrade.is_none()
        && http_body::Body::is_end_stream(&body)
        && (parts.method == http::Method::GET || parts.method == http::Method::HEAD)
    {
        let mut resp = h1client::send(&server.pool, &parts, up.config.timeout, name).await?;
        headers::remove_hop_by_hop(resp.headers_mut());
        *resp.version_mut() = client_version;
        return Ok(resp);
    }

    let progress = Arc::new(BodyProgress::new(http_body::Body::is_end_stream(&body)));
    let body = LimitedBody {
        inner: body,
        remaining: ctx.max_body_bytes,
        progress: progress.clone(),
    }
    .boxed_unsync();
    let upstream_req = Request::from_parts(parts, body);

    // `timeout` runs from the last sign of progress: while the body is
    // being sent each chunk restarts it, so a slow but steady upload is
    // never cut off, and once the body is done the upstream has `timeout`
    // to send its response headers.
    let sent = tokio::select! {
        r = server.client.request(upstream_req) => r,
        stalled = progress.stalled(up.config.timeout) => {
            return Err(match stalled {
                Stall::Client => ProxyError::ClientBodyTimeout { after: up.config.timeout },
                Stall::Upstream => ProxyError::Timeout {
                    upstream: name.clone(),
                    after: up.config.timeout,
                },
            });
        }
    };
    let mut resp = match sent {
        Err(e) => {
            if progress.exceeded.load(Ordering::Acquire) {
                return Err(ProxyError::BodyTooLarge);
            }
            return Err(if e.is_connect() {
                ProxyError::Connect {
                    upstream: name.clone(),
                    source: e.into(),
                }
            } else {
                ProxyError::Upstream {
                    upstream: name.clone(),
                    source: e.into(),
                }
            });
        }
        Ok(resp) => resp,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::Upstream {
                upstream: name.clone(),
                source: "upstream switched protocols without an upgrade request".into(),
            });
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let proto = resp.headers().get(header::UPGRADE).cloned();
        headers::remove_hop_by_hop(resp.headers_mut());
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = proto {
            resp.headers_mut().insert(header::UPGRADE, p);
        }
        tokio::spawn(join_upgraded(client_upgrade, upstream_upgrade));
        return Ok(resp.map(|_| crate::response::empty()));
    }

    headers::remove_hop_by_hop(resp.headers_mut());
    // The client hears the protocol it spoke, whatever the upstream spoke.
    *resp.version_mut() = client_version;
    Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()))
}

/// Copies bytes both ways between the client and the upstream once both
/// sides have switched protocols.
async fn join_upgraded(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

/// The URI sent upstream: the path (minus the route prefix when stripping)
/// and the query. The client wants it absolute; it sends origin-form.
fn upstream_uri(
    uri: &Uri,
    strip: Option<&str>,
    authority: &http::uri::Authority,
) -> Result<Uri, ProxyError> {
    let path = upstream_path(uri.path(), strip)?;
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| ProxyError::BadRequest("invalid request target"))
}

/// The path sent upstream: minus the route prefix when stripping.
pub(crate) fn upstream_path<'p>(path: &'p str, strip: Option<&str>) -> Result<&'p str, ProxyError> {
    Ok(match strip {
        Some(prefix) => {
            let prefix = prefix.trim_end_matches('/');
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            if rest.starts_with('/') {
                rest
            } else if rest.is_empty() {
                "/"
            } else {
                // Cannot happen: the router matched on a segment boundary.
                return Err(ProxyError::BadRequest("path outside the route prefix"));
            }
        }
        None => path,
    })
}

/// Who stopped making progress when the upstream timeout ran out.
enum Stall {
    /// The client stopped sending a body it had announced.
    Client,
    /// The upstream did not take the body or did not answer.
    Upstream,
}

/// How far the request body has got, shared between the body (which
/// records progress) and `forward` (which enforces the timeout).
struct BodyProgress {
    start: Instant,
    /// Milliseconds after `start` of the last chunk (or of the end).
    last_ms: AtomicU64,
    /// The whole body has been handed to the upstream client.
    finished: AtomicBool,
    /// The last poll of the client's body was pending: we are waiting on
    /// the client, not on the upstream.
    waiting_on_client: AtomicBool,
    /// The body passed `max_body_bytes`.
    exceeded: AtomicBool,
}

impl BodyProgress {
    fn new(finished: bool) -> Self {
        BodyProgress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            finished: AtomicBool::new(finished),
            waiting_on_client: AtomicBool::new(false),
            exceeded: AtomicBool::new(false),
        }
    }

    fn advanced(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
    }

    /// Resolves once `timeout` has passed without progress.
    async fn stalled(&self, timeout: Duration) -> Stall {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Acquire));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                let client = !self.finished.load(Ordering::Acquire)
                    && self.waiting_on_client.load(Ordering::Acquire);
                return if client {
                    Stall::Client
                } else {
                    Stall::Upstream
                };
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// The request body, cut off with an error once it passes the limit, so
    /// a chunked upload cannot exceed `max_body_bytes` either. It records
    /// its progress for the upstream timeout.
    struct LimitedBody {
        #[pin]
        inner: Incoming,
        remaining: u64,
        progress: Arc<BodyProgress>,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds max_body_bytes")]
struct TooLarge;

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let progress = &**this.progress;
        progress
            .waiting_on_client
            .store(polled.is_pending(), Ordering::Release);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        progress.exceeded.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                    *this.remaining -= n;
                }
                if this.inner.is_end_stream() {
                    progress.finished.store(true, Ordering::Release);
                }
                progress.advanced();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                progress.finished.store(true, Ordering::Release);
                progress.advanced();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_query() {
        let a = http::uri::Authority::from_static("up:80");
        let u: Uri = "/api/v1/x?a=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&u, Some("/api/"), &a).unwrap(),
            "http://up:80/v1/x?a=1"
        );
        assert_eq!(
            upstream_uri(&u, Some("/api"), &a).unwrap(),
            "http://up:80/v1/x?a=1"
        );
        assert_eq!(
            upstream_uri(&"/api".parse().unwrap(), Some("/api/"), &a).unwrap(),
            "http://up:80/"
        );
        assert_eq!(
            upstream_uri(&u, None, &a).unwrap(),
            "http://up:80/api/v1/x?a=1"
        );
    }
}
