//! Every error the request path can meet becomes a response here, in one
//! exhaustive match: a new error variant must be given a status.
//!
//! Who failed decides the status (as Pingora does): the client gets 4xx, a
//! broken or slow upstream 502/504, our own failures 500. Bodies are small
//! JSON objects `{"detail": "..."}` with no internal detail; the cause is
//! logged once, by the access log, from the response extensions.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

use crate::proxy::ProxyError;
use crate::static_files::StaticError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the gateway sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// A failure on the request path, tagged by the module that met it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches the request path")]
    NoRoute,
    #[error("request path is not valid")]
    BadPath,
    #[error(transparent)]
    Static(#[from] StaticError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Kept in the response extensions so the access log can record the cause.
#[derive(Debug, Clone)]
pub struct ErrorNote(pub String);

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::BadPath => StatusCode::BAD_REQUEST,
            GatewayError::Static(e) => match e {
                StaticError::NotFound => StatusCode::NOT_FOUND,
                StaticError::BadPath => StatusCode::BAD_REQUEST,
                StaticError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
                StaticError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            GatewayError::Proxy(e) => match e {
                ProxyError::Connect { .. } => StatusCode::BAD_GATEWAY,
                ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
                ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ProxyError::ClientBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
                ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            },
        }
    }

    /// What the client is told: short, and never internal detail.
    pub fn detail(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "Not found.",
            GatewayError::BadPath => "Bad request path.",
            GatewayError::Static(e) => match e {
                StaticError::NotFound => "Not found.",
                StaticError::BadPath => "Bad request path.",
                StaticError::MethodNotAllowed => "Method not allowed.",
                StaticError::Io(_) => "Internal server error.",
            },
            GatewayError::Proxy(e) => match e {
                ProxyError::Connect { .. } => "Bad gateway: the upstream server is unavailable.",
                ProxyError::Upstream { .. } => "Bad gateway: the upstream server failed.",
                ProxyError::Timeout { .. } => {
                    "Gateway timeout: the upstream server did not answer in time."
                }
                ProxyError::BodyTooLarge => "Request body too large.",
                ProxyError::ClientBodyTimeout { .. } => "Request body timed out.",
                ProxyError::BadRequest(_) => "Bad request.",
            },
        }
    }

    /// Whether this is our or the upstream's failure (logged at warn/error)
    /// rather than a client mistake (logged at debug).
    pub fn is_server_side(&self) -> bool {
        self.status().is_server_error()
    }
}

/// The response for `err`, with the error noted for the access log.
pub fn error_response(err: &GatewayError) -> Response<Body> {
    let mut resp = json_detail(err.status(), err.detail());
    if let GatewayError::Static(StaticError::MethodNotAllowed) = err {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp.extensions_mut().insert(ErrorNote(error_chain(err)));
    resp
}

/// `{"detail": "..."}` with the given status.
pub fn json_detail(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({ "detail": detail }).to_string();
    json_response(status, body)
}

pub fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The error and its sources on one line, for logs.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
