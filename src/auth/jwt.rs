//! JWT parsing, signature check and claim checks, in simplejwt's terms.
//!
//! Steps: size and shape (three base64url segments, at most 8 KiB), header
//! and payload JSON, then the signature with the key's pinned algorithm,
//! then the claims (`exp` required; `nbf`/`iat` not in the future; `iss`
//! and `aud` when configured; `token_type`, when present, as expected).
//! Nothing here panics on hostile input: every failure is a `TokenProblem`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::keys::{b64_decode, to_jsonwebtoken, Material, VerifyKey};
use crate::config::JwtAlg;

/// Tokens longer than this are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused; `message` is simplejwt's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("Token is invalid")]
    Invalid,
    #[error("Token is expired")]
    Expired,
    #[error("Token has wrong type")]
    WrongType,
    #[error("Token has no type")]
    NoType,
    #[error("Token has no 'exp' claim")]
    NoExp,
    #[error("Token has no id")]
    NoId,
    #[error("Token is blacklisted")]
    Blacklisted,
}

impl TokenProblem {
    pub fn message(self) -> &'static str {
        match self {
            TokenProblem::Invalid => "Token is invalid",
            TokenProblem::Expired => "Token is expired",
            TokenProblem::WrongType => "Token has wrong type",
            TokenProblem::NoType => "Token has no type",
            TokenProblem::NoExp => "Token has no 'exp' claim",
            TokenProblem::NoId => "Token has no id",
            TokenProblem::Blacklisted => "Token is blacklisted",
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    /// Critical extensions: none are understood, so any makes it invalid.
    #[serde(default)]
    pub crit: Option<Value>,
}

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: &'a str,
}

pub fn parse(token: &str) -> Result<Parsed<'_>, TokenProblem> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenProblem::Invalid);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenProblem::Invalid);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenProblem::Invalid);
    }
    let header: Header = b64_decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenProblem::Invalid)?;
    if header.crit.is_some() {
        return Err(TokenProblem::Invalid);
    }
    let claims: Map<String, Value> = b64_decode(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenProblem::Invalid)?;
    Ok(Parsed {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
    })
}

/// Checks the signature with `key`.
///
/// SECURITY: the token's `alg` must be one the key is pinned to; `none`
/// and every algorithm of another family can never match.
pub fn verify_signature(p: &Parsed<'_>, key: &VerifyKey) -> Result<JwtAlg, TokenProblem> {
    let alg = JwtAlg::from_name(&p.header.alg)
        .filter(|a| key.algs.contains(a))
        .ok_or(TokenProblem::Invalid)?;
    let ok = match &key.material {
        Material::Hmac(k) => {
            if !alg.is_hmac() {
                return Err(TokenProblem::Invalid);
            }
            let sig = b64_decode(p.signature).ok_or(TokenProblem::Invalid)?;
            ring::hmac::verify(k, p.signing_input.as_bytes(), &sig).is_ok()
        }
        Material::Public(k) => {
            if alg.is_hmac() {
                return Err(TokenProblem::Invalid);
            }
            jsonwebtoken::crypto::verify(
                p.signature,
                p.signing_input.as_bytes(),
                k,
                to_jsonwebtoken(alg),
            )
            .unwrap_or(false)
        }
    };
    if ok {
        Ok(alg)
    } else {
        Err(TokenProblem::Invalid)
    }
}

/// What a token's claims must satisfy.
#[derive(Debug, Clone)]
pub struct ClaimRules<'a> {
    pub issuer: Option<&'a str>,
    /// Empty: `aud` not checked.
    pub audience: &'a [String],
    pub leeway: f64,
    /// `Some("access")`: a present `token_type` must equal it.
    pub token_type: Option<&'a str>,
    /// A missing `token_type` is refused (simplejwt's own tokens always have one).
    pub type_required: bool,
    pub jti_required: bool,
}

/// Checks the claims at time `now` (seconds since the epoch).
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
    now: f64,
) -> Result<(), TokenProblem> {
    let number = |name: &str| -> Result<Option<f64>, TokenProblem> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(TokenProblem::Invalid),
        }
    };
    // PyJWT's order: exp, then iat, then nbf, then aud and iss.
    let exp = number("exp")?;
    if let Some(exp) = exp {
        if exp <= now - rules.leeway {
            return Err(TokenProblem::Expired);
        }
    }
    if let Some(iat) = number("iat")? {
        if iat > now + rules.leeway {
            return Err(TokenProblem::Invalid);
        }
    }
    if let Some(nbf) = number("nbf")? {
        if nbf > now + rules.leeway {
            return Err(TokenProblem::Invalid);
        }
    }
    if !rules.audience.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rules.audience.iter().any(|x| x == a),
            Some(Value::Array(list)) => list.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| rules.audience.iter().any(|x| x == a))
            }),
            _ => false,
        };
        if !ok {
            return Err(TokenProblem::Invalid);
        }
    }
    if let Some(iss) = rules.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(iss) {
            return Err(TokenProblem::Invalid);
        }
    }
    for name in ["jti", "sub"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(TokenProblem::Invalid);
        }
    }
    if exp.is_none() {
        return Err(TokenProblem::NoExp);
    }
    if rules.jti_required && !claims.contains_key("jti") {
        return Err(TokenProblem::NoId);
    }
    if let Some(expected) = rules.token_type {
        match claims.get("token_type") {
            None if rules.type_required => return Err(TokenProblem::NoType),
            None => {}
            Some(Value::String(t)) if t == expected => {}
            Some(_) => return Err(TokenProblem::WrongType),
        }
    }
    Ok(())
}

/// Seconds since the epoch, as a float (PyJWT compares floats too).
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> ClaimRules<'static> {
        ClaimRules {
            issuer: None,
            audience: &[],
            leeway: 0.0,
            token_type: Some("access"),
            type_required: false,
            jti_required: false,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn malformed_tokens_never_panic() {
        for t in [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            "e30.e30.",
            &"a".repeat(9000),
        ] {
            assert_eq!(parse(t).err(), Some(TokenProblem::Invalid), "{t:.20}");
        }
        // Valid base64 but not JSON objects.
        assert!(parse("WzFd.WzFd.c2ln").is_err());
    }

    #[test]
    fn exp_is_required_and_exact() {
        let r = rules();
        assert_eq!(
            check_claims(&claims(json!({})), &r, 100.0),
            Err(TokenProblem::NoExp)
        );
        assert_eq!(
            check_claims(&claims(json!({"exp": 100})), &r, 100.0),
            Err(TokenProblem::Expired)
        );
        assert_eq!(
            check_claims(&claims(json!({"exp": 101})), &r, 100.0),
            Ok(())
        );
        assert_eq!(
            check_claims(&claims(json!({"exp": "101"})), &r, 100.0),
            Err(TokenProblem::Invalid)
        );
    }

    #[test]
    fn future_iat_and_nbf_and_types() {
        let r = rules();
        assert_eq!(
            check_claims(&claims(json!({"exp": 200, "iat": 150})), &r, 100.0),
            Err(TokenProblem::Invalid)
        );
        assert_eq!(
            check_claims(&claims(json!({"exp": 200, "nbf": 150})), &r, 100.0),
            Err(TokenProblem::Invalid)
        );
        let lenient = ClaimRules {
            leeway: 60.0,
            ..rules()
        };
        assert_eq!(
            check_claims(&claims(json!({"exp": 200, "iat": 150})), &lenient, 100.0),
            Ok(())
        );
        assert_eq!(
            check_claims(
                &claims(json!({"exp": 200, "token_type": "refresh"})),
                &r,
                100.0
            ),
            Err(TokenProblem::WrongType)
        );
        assert_eq!(
            check_claims(&claims(json!({"exp": 200, "jti": 5})), &r, 100.0),
            Err(TokenProblem::Invalid)
        );
    }

    #[test]
    fn audience_and_issuer() {
        let aud = vec!["api".to_string()];
        let r = ClaimRules {
            issuer: Some("me"),
            audience: &aud,
            ..rules()
        };
        assert_eq!(
            check_claims(
                &claims(json!({"exp": 200, "iss": "me", "aud": ["x", "api"]})),
                &r,
                100.0
            ),
            Ok(())
        );
        assert_eq!(
            check_claims(
                &claims(json!({"exp": 200, "iss": "me", "aud": "x"})),
                &r,
                100.0
            ),
            Err(TokenProblem::Invalid)
        );
        assert_eq!(
            check_claims(
                &claims(json!({"exp": 200, "iss": "you", "aud": "api"})),
                &r,
                100.0
            ),
            Err(TokenProblem::Invalid)
        );
        assert_eq!(
            check_claims(&claims(json!({"exp": 200, "aud": "api"})), &r, 100.0),
            Err(TokenProblem::Invalid)
        );
    }
}
