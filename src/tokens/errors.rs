//! Token route failures as responses, with simplejwt's (and DRF's) exact
//! bodies: one exhaustive match, as `response` has for the rest.

use http::{header, HeaderValue, Response, StatusCode};

use super::TokenError;
use crate::body::{error_chain, json_response, Body, ErrorNote};

/// Token route failures, with simplejwt's (and DRF's) exact bodies.
pub fn error_response(err: &TokenError, scheme: &str) -> Response<Body> {
    use serde_json::json;
    let (status, body) = match err {
        TokenError::MethodNotAllowed(m) => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"detail": format!("Method \"{m}\" not allowed.")}),
        ),
        TokenError::UnsupportedMediaType(ct) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({"detail": format!("Unsupported media type \"{ct}\" in request.")}),
        ),
        TokenError::ParseError(msg) => (StatusCode::BAD_REQUEST, json!({"detail": msg})),
        TokenError::NonField(msg) => (StatusCode::BAD_REQUEST, json!({"non_field_errors": [msg]})),
        TokenError::Fields(list) => {
            let mut m = serde_json::Map::new();
            for (field, msg) in list {
                m.insert((*field).to_string(), json!([msg]));
            }
            (StatusCode::BAD_REQUEST, serde_json::Value::Object(m))
        }
        TokenError::BodyTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"detail": "Request body too large."}),
        ),
        TokenError::BadCredentials => (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "No active account found with the given credentials"}),
        ),
        TokenError::InactiveForToken => (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "No active account found for the given token."}),
        ),
        TokenError::Token(problem) => (
            StatusCode::UNAUTHORIZED,
            json!({"detail": problem.message(), "code": "token_not_valid"}),
        ),
        TokenError::VerifyBlacklisted => (
            StatusCode::BAD_REQUEST,
            json!({"non_field_errors": ["Token is blacklisted"]}),
        ),
        TokenError::RateLimited { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"detail": format!("Too many failed login attempts. Try again in {retry_after} seconds.")}),
        ),
        TokenError::CredentialsUnavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"detail": "Authentication service unavailable. Try again later."}),
        ),
        // Never a token without its record: the store answers first.
        TokenError::Store(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"detail": "Token store unavailable. Try again later."}),
        ),
        TokenError::Sign(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"detail": "Internal server error."}),
        ),
        TokenError::NoJwks => (StatusCode::NOT_FOUND, json!({"detail": "Not found."})),
    };
    let mut resp = json_response(status, body.to_string());
    if status == StatusCode::UNAUTHORIZED {
        if let Ok(v) = HeaderValue::from_str(&format!("{scheme} realm=\"api\"")) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    if let TokenError::RateLimited { retry_after } = err {
        if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    // Store failures are logged by the store, once per outage.
    if status.is_server_error() && !matches!(err, TokenError::Store(_)) {
        tracing::error!(error = %error_chain(err), "token route failed");
    }
    resp.extensions_mut().insert(ErrorNote(error_chain(err)));
    resp
}
