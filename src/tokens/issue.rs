//! Minting tokens in simplejwt's exact shape: header
//! `{"alg":"HS256","typ":"JWT"}` (plus `kid` with [[jwt.keys]]), claims
//! `token_type, exp, iat, jti (32 hex), user_id (a string)`, the user's
//! extra claims, then `sid` (the token family), `aud`, `iss`.

use base64::Engine;
use jsonwebtoken::EncodingKey;
use serde_json::{Map, Value};

use crate::auth::keys::{b64, to_jsonwebtoken};
use crate::config::{JwtAlg, JwtConfig, KeyMaterial, TokensConfig};

/// Claims a user's `claims` table may not override.
const RESERVED: &[&str] = &[
    "token_type",
    "exp",
    "iat",
    "jti",
    "sid",
    "iss",
    "aud",
    "nbf",
];

/// The key that signs, with its header pre-encoded.
pub struct Signer {
    alg: JwtAlg,
    key: EncodingKey,
    header_b64: String,
    pub kid: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("{origin}: cannot read {path}")]
    Read {
        origin: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: not a usable {alg} private key ({reason})")]
    BadKey {
        origin: String,
        alg: &'static str,
        reason: String,
    },
    #[error("no signing key: [tokens] needs [jwt] secret or private_key")]
    Missing,
    #[error("signing failed")]
    Sign,
}

impl Signer {
    pub fn new(jwt: &JwtConfig, tokens: &TokensConfig) -> Result<Signer, SignerError> {
        let spec = match &tokens.signing_key {
            Some(kid) => jwt
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str())),
            None => jwt.keys.first(),
        }
        .ok_or(SignerError::Missing)?;
        let alg = spec.algorithm;
        let key = match &spec.material {
            KeyMaterial::Secret(s) => EncodingKey::from_secret(s),
            KeyMaterial::PrivateKey(path) => {
                let pem = path.read().map_err(|source| SignerError::Read {
                    origin: spec.origin.clone(),
                    path: path.display(),
                    source,
                })?;
                let r = match alg {
                    JwtAlg::ES256 | JwtAlg::ES384 => EncodingKey::from_ec_pem(&pem),
                    JwtAlg::EdDSA => EncodingKey::from_ed_pem(&pem),
                    _ => EncodingKey::from_rsa_pem(&pem),
                };
                r.map_err(|e| SignerError::BadKey {
                    origin: spec.origin.clone(),
                    alg: alg.name(),
                    reason: e.to_string(),
                })?
            }
            KeyMaterial::PublicKey(_) | KeyMaterial::JwksFile(_) => {
                return Err(SignerError::Missing)
            }
        };
        // Asymmetric keys always carry a kid (JWKS verifiers pick by kid);
        // without one configured, the key's RFC 7638 thumbprint.
        let kid = match (&spec.kid, &spec.material) {
            (Some(k), _) => Some(k.clone()),
            (None, KeyMaterial::PrivateKey(_)) => super::jwks::jwk_for_spec(spec)
                .ok()
                .flatten()
                .and_then(|j| j.get("kid").and_then(Value::as_str).map(str::to_owned)),
            (None, _) => None,
        };
        // PyJWT writes header keys sorted: alg, kid, typ.
        let mut header = Map::new();
        header.insert("alg".into(), Value::String(alg.name().into()));
        if let Some(kid) = &kid {
            header.insert("kid".into(), Value::String(kid.clone()));
        }
        header.insert("typ".into(), Value::String("JWT".into()));
        let header_b64 = b64().encode(Value::Object(header).to_string());
        let signer = Signer {
            alg,
            key,
            header_b64,
            kid,
        };
        // Prove the key signs now rather than at the first login.
        signer.sign(&Map::new())?;
        Ok(signer)
    }

    pub fn alg(&self) -> JwtAlg {
        self.alg
    }

    /// The compact JWT for `claims`.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, SignerError> {
        let payload = serde_json::to_vec(claims).map_err(|_| SignerError::Sign)?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        b64().encode_string(&payload, &mut token);
        let sig =
            jsonwebtoken::crypto::sign(token.as_bytes(), &self.key, to_jsonwebtoken(self.alg))
                .map_err(|_| SignerError::Sign)?;
        token.push('.');
        token.push_str(&sig);
        Ok(token)
    }
}

/// A new `jti`: 32 lowercase hex characters, as simplejwt's uuid4().hex.
pub fn new_jti() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// What goes into one token.
pub struct Claims<'a> {
    pub token_type: &'static str,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub user_id_claim: &'a str,
    pub user_id: &'a str,
    pub extra: &'a Map<String, Value>,
    pub sid: Option<&'a str>,
    pub audience: &'a [String],
    pub issuer: Option<&'a str>,
}

impl Claims<'_> {
    /// The claims in simplejwt's order.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("token_type".into(), Value::String(self.token_type.into()));
        m.insert("exp".into(), Value::from(self.exp));
        m.insert("iat".into(), Value::from(self.iat));
        m.insert("jti".into(), Value::String(self.jti.clone()));
        m.insert(
            self.user_id_claim.into(),
            Value::String(self.user_id.into()),
        );
        for (k, v) in self.extra {
            if !RESERVED.contains(&k.as_str()) && k != self.user_id_claim {
                m.insert(k.clone(), v.clone());
            }
        }
        if let Some(sid) = self.sid {
            m.insert("sid".into(), Value::String(sid.into()));
        }
        match self.audience {
            [] => {}
            [one] => {
                m.insert("aud".into(), Value::String(one.clone()));
            }
            many => {
                m.insert("aud".into(), Value::from(many.to_vec()));
            }
        }
        if let Some(iss) = self.issuer {
            m.insert("iss".into(), Value::String(iss.into()));
        }
        m
    }
}

/// The user's extra claims carried by a refresh token (for delegated
/// credentials, where the user cannot be looked up again).
pub fn extra_claims(claims: &Map<String, Value>, user_id_claim: &str) -> Map<String, Value> {
    claims
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()) && k.as_str() != user_id_claim)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
