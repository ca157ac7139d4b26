//! The reverse proxy. `headers` holds the one set of upstream header
//! rules, `exchange` the one upstream exchange (pool, retry rule, request
//! buffering), `pool` one idle pool per server, `h1client` the response
//! side for the hyper executor. `forward` is that executor's proxy step:
//! buffer or stream the body, frame it for the upstream, exchange, and
//! hand back a streaming response (or join the two sides of an upgrade).
//!
//! This module does not know about authentication: the handler passes a
//! request head with the identity headers already in it.

pub mod buffer;
pub mod client;
pub mod exchange;
pub mod h1client;
pub mod headers;
pub mod pool;
pub mod upstream;

use http::header;
use http::{Request, Response};
use hyper::body::{Body as _, Incoming};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::body::{Body, BoxError};
use crate::wire::RequestError;
use exchange::{BodySource, Budget, ReqBody};
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
    #[error("no healthy server in the upstream")]
    NoHealthyServer,
    #[error("request_buffer_budget is spent")]
    BufferBudget,
    #[error(transparent)]
    Request(#[from] crate::wire::RequestError),
}

/// The upstream server that answered, on a proxied response (access log).
#[derive(Clone, Copy)]
pub struct UsedServer(pub &'static str);

/// A decided proxy request, for the hyper executor.
pub struct Outbound<'a> {
    /// Index of the server picked among the upstream's.
    pub server: usize,
    /// The upstream request line and fields, without framing fields and
    /// the blank line.
    pub head: Vec<u8>,
    /// An HTTP/1.1 upgrade (`Connection: upgrade` already in `head`).
    pub upgrade: bool,
    pub max_body_bytes: u64,
    pub budget: &'a Arc<Budget>,
}

/// Forwards `req` as `out` says and returns the upstream's response,
/// streaming. A body up to the upstream's `request_buffering` is received
/// whole first; a longer one streams (with its Content-Length, or chunked
/// when it has none).
pub async fn forward(
    up: &Upstream,
    out: Outbound<'_>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let name = &up.config.name;
    let timeout = up.config.timeout;
    let client_upgrade = out.upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| crate::wire::parse_length(v.as_bytes()));
    let mut head = out.head;
    let mut source = IncomingSource { body };
    let mut held = Vec::new();
    let mut charge = out.budget.charge();
    let whole = if http_body::Body::is_end_stream(&source.body) {
        true
    } else if declared.is_none_or(|n| n <= up.config.request_buffering) {
        exchange::buffer(
            &mut source,
            &mut held,
            up.config.request_buffering,
            &mut charge,
            timeout,
        )
        .await?
    } else {
        false
    };
    if held.len() as u64 > out.max_body_bytes {
        return Err(ProxyError::BodyTooLarge);
    }
    // The body is framed anew: its length in canonical form, or chunked.
    let chunked = !whole && declared.is_none();
    let length = if whole {
        Some(held.len() as u64)
    } else {
        declared
    };
    exchange::frame_request(&mut head, &parts.method, length, declared.is_some());
    let body = if whole {
        ReqBody::Whole(&held)
    } else {
        ReqBody::Stream {
            sent: &held,
            source: &mut source,
            chunked,
            limit: out.max_body_bytes,
        }
    };
    let mut timer = exchange::HeadTimer::default();
    let got = exchange::exchange(
        up,
        out.server,
        &parts.method,
        &head,
        body,
        out.upgrade,
        &mut timer,
    )
    .await
    .map_err(|f| f.error);
    crate::wire::spare::give(head);
    drop(charge);
    let got = got?;
    if got.status == 101 {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::Upstream {
                upstream: name.clone(),
                source: "upstream switched protocols without an upgrade request".into(),
            });
        };
        let (resp, upstream) = h1client::switched(got).map_err(|e| ProxyError::Upstream {
            upstream: name.clone(),
            source: e.into(),
        })?;
        tokio::spawn(join_upgraded(client_upgrade, upstream));
        return Ok(resp);
    }
    let is_head = parts.method == http::Method::HEAD;
    let Some(server) = up.servers().get(got.server) else {
        return Err(ProxyError::NoHealthyServer);
    };
    let (pool, used) = (server.pool.clone(), server.label);
    let mut resp = h1client::response(got, is_head, &pool).map_err(|e| {
        crate::metrics::upstream_error(name, used, "bad_response");
        ProxyError::Upstream {
            upstream: name.clone(),
            source: e.into(),
        }
    })?;
    resp.extensions_mut().insert(UsedServer(used));
    Ok(resp)
}

/// Copies bytes both ways between the client and the upstream once both
/// sides have switched protocols.
async fn join_upgraded(client: hyper::upgrade::OnUpgrade, mut upstream: h1client::Upgraded) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
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

/// A hyper request body as a `BodySource`: payload bytes, trailers
/// dropped (they are not forwarded on any path).
struct IncomingSource {
    body: Incoming,
}

impl BodySource for IncomingSource {
    fn poll_payload(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Result<bool, ProxyError>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(false)),
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "request body failed");
                    // hyper reports a malformed chunked body and a body cut
                    // short alike: the client's fault either way.
                    return Poll::Ready(Err(ProxyError::Request(if is_parse_error(&e) {
                        RequestError::BadChunkedBody
                    } else {
                        RequestError::BodyEndedEarly
                    })));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if !data.is_empty() {
                            out.extend_from_slice(data);
                            return Poll::Ready(Ok(true));
                        }
                    }
                }
            }
        }
    }
}

fn is_parse_error(e: &hyper::Error) -> bool {
    e.is_parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix() {
        assert_eq!(upstream_path("/api/v1/x", Some("/api/")).unwrap(), "/v1/x");
        assert_eq!(upstream_path("/api/v1/x", Some("/api")).unwrap(), "/v1/x");
        assert_eq!(upstream_path("/api", Some("/api/")).unwrap(), "/");
        assert_eq!(upstream_path("/api/v1/x", None).unwrap(), "/api/v1/x");
    }
}
