//! The proxy step on the raw HTTP/1.1 path: receive the body (whole when
//! it fits the upstream's `request_buffering`, so a slow client never
//! holds an app worker), frame it for the upstream, run the one upstream
//! exchange (`proxy::exchange`, with its retry rule), relay the answer.

use std::time::{Duration, Instant};

use super::body::ClientBody;
use super::respond::{self, Reply};
use super::{local, ClientIo, Served};
use crate::handler::{AppState, Framing};
use crate::proxy::exchange::{self, HeadTimer, NoSource, ReqBody};
use crate::proxy::{ProxyError, Upstream};
use crate::response::{self, GatewayError};
use crate::wire::spare;

/// Proxies a decided request. `buf` holds the bytes read after the head;
/// on return, only those of the requests after this one.
#[allow(clippy::too_many_arguments)]
pub(super) async fn proxy<IO: ClientIo>(
    io: &mut IO,
    up: &Upstream,
    server_index: usize,
    mut head: Vec<u8>,
    method: &http::Method,
    framing: Framing,
    log: bool,
    buf: &mut Vec<u8>,
    reply: Reply<'_>,
    state: &AppState,
    timer: &mut HeadTimer,
) -> Served {
    let timeout = up.config.timeout;
    let is_head = *method == http::Method::HEAD;
    let max = state.config.server.max_body_bytes;
    // The part of a Content-Length body read with the head.
    let (mut held, rest) = match framing {
        Framing::Length(n) => {
            let here = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
            let held: Vec<u8> = buf.drain(..here).collect();
            (held, n - here as u64)
        }
        Framing::None | Framing::Chunked => (Vec::new(), 0),
    };
    let mut charge = state.budget.charge();
    if let Err(e) = charge.add(held.len() as u64) {
        return failed(io, e, reply, is_head, true, None).await;
    }
    let mut source = ClientBody::new(&mut *io, framing, rest, buf);
    // Received whole when it fits the buffer (a chunked body: as far as
    // it goes), else streamed from here on.
    let whole = match framing {
        Framing::None => true,
        Framing::Length(_) if rest == 0 => true,
        Framing::Length(n) if n > up.config.request_buffering => false,
        Framing::Length(_) | Framing::Chunked => {
            let limit = up.config.request_buffering;
            match exchange::buffer(&mut source, &mut held, limit, &mut charge, timeout).await {
                Ok(whole) => whole,
                Err(e) => {
                    drop(source);
                    return failed(io, e, reply, is_head, true, None).await;
                }
            }
        }
    };
    if held.len() as u64 > max {
        drop(source);
        return failed(io, ProxyError::BodyTooLarge, reply, is_head, true, None).await;
    }
    let length = match framing {
        _ if whole => Some(held.len() as u64),
        Framing::Length(n) => Some(n),
        Framing::None | Framing::Chunked => None,
    };
    exchange::frame_request(&mut head, method, length, framing != Framing::None);
    // Timed only for the access log.
    let sent_at = log.then(Instant::now);
    let name = &up.config.name;
    let got = if whole {
        let body = ReqBody::<NoSource>::Whole(&held);
        exchange::exchange(up, server_index, method, &head, body, false, timer).await
    } else {
        let body = ReqBody::Stream {
            sent: &held,
            source: &mut source,
            chunked: length.is_none(),
            limit: max,
        };
        exchange::exchange(up, server_index, method, &head, body, false, timer).await
    };
    spare::give(head);
    // SECURITY: the buffered body goes with its charge, before the answer
    // is relayed (a client that never reads it must not hold it).
    drop(held);
    drop(charge);
    // Bytes read past a chunked body belong to the next request.
    source.finish(buf);
    let upstream_time = sent_at.map(|t| t.elapsed());
    let got = match got {
        Ok(g) => g,
        Err(f) => {
            return failed(
                io,
                f.error,
                reply,
                is_head,
                f.client_body_left,
                upstream_time,
            )
            .await
        }
    };
    let (pool, used) = match up.servers().get(got.server) {
        Some(s) => (s.pool.clone(), s.label),
        None => {
            let err = ProxyError::NoHealthyServer;
            return failed(io, err, reply, is_head, false, upstream_time).await;
        }
    };
    match respond::relay(io, got, is_head, &reply, &pool).await {
        Ok(done) => Served {
            status: done.status,
            bytes: done.bytes,
            error: None,
            upstream_time,
            upstream: Some(used),
            keep: done.client_ok && !reply.close,
        },
        Err(e) => {
            // A response head the parser refused (nothing was sent yet).
            if e.kind() == std::io::ErrorKind::InvalidData {
                crate::metrics::upstream_error(name, used, "bad_response");
            }
            let err = ProxyError::Upstream {
                upstream: name.clone(),
                source: e.into(),
            };
            failed(io, err, reply, is_head, false, upstream_time).await
        }
    }
}

/// Answers a failed proxy request with its error response.
async fn failed<IO: ClientIo>(
    io: &mut IO,
    error: ProxyError,
    reply: Reply<'_>,
    is_head: bool,
    client_body_left: bool,
    upstream_time: Option<Duration>,
) -> Served {
    let err = GatewayError::from(error);
    if err.is_server_side() {
        tracing::debug!(error = %response::error_chain(&err), "request failed");
    }
    let resp = response::error_response(&err);
    let mut served = local(io, resp, reply, is_head, !client_body_left).await;
    served.upstream_time = upstream_time;
    served
}
