//! Every error the request path can meet becomes a response here, in one
//! exhaustive match: a new error variant must be given a status.
//!
//! Who failed decides the status (as Pingora does): the client gets 4xx, a
//! broken or slow upstream 502/504, our own failures 500. Bodies are small
//! JSON objects `{"detail": "..."}` with no internal detail; the cause is
//! logged once, by the access log, from the response extensions.

use http::{header, HeaderValue, Response, StatusCode};

pub use crate::body::{
    empty, error_chain, full, json_detail, json_response, Body, BoxError, ErrorNote,
};

use crate::auth::jwt::TokenProblem;
use crate::auth::AuthError;
use crate::proxy::ProxyError;
use crate::static_files::StaticError;
use crate::wire::RequestError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches the request path")]
    NoRoute,
    #[error(transparent)]
    Path(#[from] crate::path::PathError),
    #[error(transparent)]
    Request(#[from] crate::wire::RequestError),
    #[error(transparent)]
    Static(#[from] StaticError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("{err}")]
    Auth {
        err: AuthError,
        /// The scheme to name in WWW-Authenticate (first of header_types).
        scheme: String,
    },
    #[error("method {method} not allowed on this route")]
    MethodNotAllowed { method: http::Method, allow: String },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::Path(_) => StatusCode::BAD_REQUEST,
            GatewayError::Request(e) => request_status(e),
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
                ProxyError::BufferBudget | ProxyError::NoHealthyServer => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                ProxyError::Request(e) => request_status(e),
            },
            GatewayError::Auth { err, .. } => match err {
                AuthError::NoCredentials
                | AuthError::BadHeader
                | AuthError::InvalidToken(_)
                | AuthError::NoUserId => StatusCode::UNAUTHORIZED,
                AuthError::Forbidden => StatusCode::FORBIDDEN,
            },
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// What the client is told: short, and never internal detail.
    pub fn detail(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "Not found.",
            GatewayError::Path(_) => "Bad request path.",
            GatewayError::Request(e) => request_detail(e),
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
                ProxyError::NoHealthyServer => "Service unavailable: no healthy upstream server.",
                ProxyError::BufferBudget => {
                    "Service unavailable: too many request bodies are being received."
                }
                ProxyError::Request(e) => request_detail(e),
            },
            GatewayError::Auth { err, .. } => match err {
                AuthError::NoCredentials => "Authentication credentials were not provided.",
                AuthError::BadHeader => {
                    "Authorization header must contain two space-delimited values"
                }
                AuthError::InvalidToken(_) => "Given token not valid for any token type",
                AuthError::NoUserId => "Token contained no recognizable user identification",
                AuthError::Forbidden => "You do not have permission to perform this action.",
            },
            GatewayError::MethodNotAllowed { .. } => "Method not allowed.",
        }
    }

    /// Whether this is our or the upstream's failure (logged at warn/error)
    /// rather than a client mistake (logged at debug).
    pub fn is_server_side(&self) -> bool {
        self.status().is_server_error()
    }
}

fn request_status(e: &RequestError) -> StatusCode {
    match e {
        RequestError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        RequestError::BadContentLength
        | RequestError::BadTransferEncoding
        | RequestError::MissingHost
        | RequestError::MultipleHosts
        | RequestError::BadChunkedBody
        | RequestError::BodyEndedEarly => StatusCode::BAD_REQUEST,
    }
}

fn request_detail(e: &RequestError) -> &'static str {
    match e {
        RequestError::HeadTooLarge => "Request header fields too large.",
        RequestError::BadContentLength => "Bad request: invalid Content-Length.",
        RequestError::BadTransferEncoding => "Bad request: invalid Transfer-Encoding.",
        RequestError::MissingHost => "Missing Host header.",
        RequestError::MultipleHosts => "Bad request: more than one Host header.",
        RequestError::BadChunkedBody => "Bad request: malformed chunked body.",
        RequestError::BodyEndedEarly => "Bad request: the body ended early.",
    }
}

/// The response for `err`, with the error noted for the access log.
pub fn error_response(err: &GatewayError) -> Response<Body> {
    let mut resp = match err {
        GatewayError::Auth { err, scheme } => auth_response(err, scheme),
        GatewayError::MethodNotAllowed { method, allow } => {
            // DRF's wording, so API clients see the same body as before.
            let mut r = json_detail(err.status(), &format!("Method \"{method}\" not allowed."));
            if let Ok(v) = HeaderValue::from_str(allow) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            r
        }
        _ => json_detail(err.status(), err.detail()),
    };
    if let GatewayError::Static(StaticError::MethodNotAllowed) = err {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp.extensions_mut().insert(ErrorNote(error_chain(err)));
    resp
}

/// simplejwt's bodies for authentication failures, with an RFC 6750
/// challenge (simplejwt clients read the JSON; the challenge adds the
/// reason for everyone else).
fn auth_response(err: &AuthError, scheme: &str) -> Response<Body> {
    let (status, body, challenge) = match err {
        AuthError::NoCredentials => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"detail": "Authentication credentials were not provided."}),
            format!("{scheme} realm=\"api\""),
        ),
        AuthError::BadHeader => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({
                "detail": "Authorization header must contain two space-delimited values",
                "code": "bad_authorization_header",
            }),
            format!("{scheme} realm=\"api\""),
        ),
        AuthError::InvalidToken(problem) => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({
                "detail": "Given token not valid for any token type",
                "code": "token_not_valid",
                "messages": [{
                    "token_class": "AccessToken",
                    "token_type": "access",
                    "message": problem.message(),
                }],
            }),
            invalid_token_challenge(scheme, *problem),
        ),
        AuthError::NoUserId => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({
                "detail": "Token contained no recognizable user identification",
                "code": "token_not_valid",
            }),
            format!("{scheme} realm=\"api\", error=\"invalid_token\", error_description=\"Token contained no recognizable user identification\""),
        ),
        AuthError::Forbidden => (
            StatusCode::FORBIDDEN,
            serde_json::json!({"detail": "You do not have permission to perform this action."}),
            format!("{scheme} realm=\"api\", error=\"insufficient_scope\""),
        ),
    };
    let mut resp = json_response(status, body.to_string());
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn invalid_token_challenge(scheme: &str, problem: TokenProblem) -> String {
    format!(
        "{scheme} realm=\"api\", error=\"invalid_token\", error_description=\"{}\"",
        problem.message().replace('"', "'")
    )
}
