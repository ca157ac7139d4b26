//! Identity headers: strip whatever the client sent, then set them from
//! verified claims (linkerd's set-or-strip pattern).
//!
//! SECURITY: stripping happens on every request, on every route, before
//! anything else reads the headers. Names are compared after folding case
//! and treating `_` as `-`, because gunicorn and Django merge `X_User_Id`
//! and `X-User-Id` into the same `HTTP_X_USER_ID` variable.

use base64::Engine;
use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::IdentityConfig;

/// The identity headers a request may not bring, normalised.
#[derive(Debug, Clone)]
pub struct Strip {
    names: Vec<String>,
}

impl Strip {
    pub fn new(cfg: &IdentityConfig) -> Self {
        let mut names: Vec<String> = cfg
            .headers
            .iter()
            .map(|(h, _)| normalise(h.as_str()))
            .collect();
        if let Some(h) = &cfg.claims_header {
            names.push(normalise(h.as_str()));
        }
        names.sort();
        names.dedup();
        Strip { names }
    }

    /// Whether header `name` (any case, `_` for `-`) is an identity
    /// header: such a header from the client is never passed on
    /// (`proxy::headers::write_request_head`).
    pub fn matches_bytes(&self, name: &[u8]) -> bool {
        self.names.iter().any(|s| same_name(s.as_bytes(), name))
    }
}

/// Whether header `name` (lowercase, as `http` stores names) equals the
/// normalised `wanted` once `_` is read as `-`.
fn same_name(wanted: &[u8], name: &[u8]) -> bool {
    wanted.len() == name.len()
        && wanted.iter().zip(name).all(|(&w, &n)| {
            w == if n == b'_' {
                b'-'
            } else {
                n.to_ascii_lowercase()
            }
        })
}

fn normalise(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b == b'_' {
                '-'
            } else {
                b.to_ascii_lowercase() as char
            }
        })
        .collect()
}

/// The identity headers to inject for verified `claims`. A header mapped
/// to `user_id_claim` (the `[jwt]` user-id claim) carries `user_id`, the id
/// the token was accepted for: a trusted issuer may take it from another
/// claim (its own `user_id_claim`, e.g. `sub`).
pub fn build(
    cfg: &IdentityConfig,
    claims: &Map<String, Value>,
    user_id_claim: &str,
    user_id: &str,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(cfg.headers.len() + 1);
    for (header, claim) in &cfg.headers {
        let text = if claim == user_id_claim {
            user_id.to_string()
        } else {
            let Some(v) = claims.get(claim) else { continue };
            let Some(text) = claim_text(v) else { continue };
            text
        };
        // from_bytes refuses control characters (no header injection).
        match HeaderValue::from_bytes(text.as_bytes()) {
            Ok(hv) => out.push((header.clone(), hv)),
            Err(_) => {
                tracing::debug!(header = %header, "claim value cannot be a header value; not set")
            }
        }
    }
    if let Some(h) = &cfg.claims_header {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        if let Ok(hv) = HeaderValue::from_str(&b64) {
            out.push((h.clone(), hv));
        }
    }
    out
}

/// A claim as header text: strings as they are, arrays joined with ",".
pub fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| match i {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        Value::Object(_) => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> IdentityConfig {
        IdentityConfig {
            headers: vec![
                (HeaderName::from_static("x-user-id"), "user_id".into()),
                (HeaderName::from_static("x-user-roles"), "roles".into()),
            ],
            claims_header: Some(HeaderName::from_static("x-auth-claims")),
            forward_token: true,
        }
    }

    #[test]
    fn strips_every_spelling() {
        let strip = Strip::new(&cfg());
        for n in [
            "x-user-id",
            "X-User-Id",
            "x_user_id",
            "X_USER-ROLES",
            "x-auth_claims",
        ] {
            assert!(strip.matches_bytes(n.as_bytes()), "{n}");
        }
        for n in ["x-user-idx", "x-user", "user-id", ""] {
            assert!(!strip.matches_bytes(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn builds_from_claims() {
        let claims = json!({"user_id": "42", "roles": ["staff", "ops"], "n": 1})
            .as_object()
            .unwrap()
            .clone();
        let out = build(&cfg(), &claims, "user_id", "42");
        assert_eq!(out[0].1, "42");
        assert_eq!(out[1].1, "staff,ops");
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(out[2].1.as_bytes())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&decoded).unwrap(),
            Value::Object(claims)
        );
    }

    #[test]
    fn control_characters_never_become_headers() {
        let claims = json!({"user_id": "1\r\nX-Evil: 1"})
            .as_object()
            .unwrap()
            .clone();
        assert!(build(&cfg(), &claims, "user_id", "1\r\nX-Evil: 1")
            .iter()
            .all(|(n, _)| n != "x-user-id"));
    }
}
