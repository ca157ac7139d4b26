//! Verification keys: parsed once at load from secrets, PEM files, JWKS
//! files or a remote JWKS, each pinned to the algorithm(s) the
//! configuration names for it.
//!
//! SECURITY: the algorithm a token may use comes from here, never from the
//! token. A key is either an HMAC secret or a public key, so an HS256 token
//! "signed" with an RSA public key as its secret can never meet a key that
//! would accept it.

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use ring::signature::KeyPair;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{JwtAlg, KeyMaterial, KeySpec};

/// One verification key.
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The algorithms a token signed with this key may name (usually one).
    pub algs: Vec<JwtAlg>,
    pub material: Material,
}

pub enum Material {
    Hmac(ring::hmac::Key),
    Public(DecodingKey),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{origin}: cannot read {path}")]
    Read {
        origin: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {what}")]
    Invalid { origin: String, what: String },
}

/// The local key set: by kid, plus the one key used when tokens need no kid.
#[derive(Debug, Default)]
pub struct KeySet {
    pub by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Set when exactly one key was configured without a kid.
    pub only: Option<Arc<VerifyKey>>,
}

impl KeySet {
    pub fn load(specs: &[KeySpec]) -> Result<KeySet, KeyError> {
        let mut set = KeySet::default();
        for spec in specs {
            match &spec.material {
                KeyMaterial::JwksFile(path) => {
                    let text = read(path, &spec.origin)?;
                    let keys =
                        parse_jwks(&text, &[spec.algorithm]).map_err(|what| KeyError::Invalid {
                            origin: spec.origin.clone(),
                            what: format!("{}: {what}", path.display()),
                        })?;
                    for k in keys {
                        if let Some(kid) = &k.kid {
                            set.by_kid.insert(kid.clone(), Arc::new(k));
                        }
                    }
                }
                _ => {
                    let key = Arc::new(load_spec(spec)?);
                    match &spec.kid {
                        Some(kid) => {
                            set.by_kid.insert(kid.clone(), key);
                        }
                        None => set.only = Some(key),
                    }
                }
            }
        }
        Ok(set)
    }

    /// The keys that may have signed a token with this kid: the single
    /// kid-less key; else the key the kid names (an unknown kid: none); a
    /// token without a kid may be any of them.
    pub fn candidates<'a>(&'a self, kid: Option<&str>) -> Vec<&'a Arc<VerifyKey>> {
        if let Some(only) = &self.only {
            return vec![only];
        }
        match kid {
            Some(k) => self.by_kid.get(k).into_iter().collect(),
            None => self.by_kid.values().collect(),
        }
    }
}

fn read(path: &Path, origin: &str) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        origin: origin.to_string(),
        path: path.display().to_string(),
        source,
    })
}

fn load_spec(spec: &KeySpec) -> Result<VerifyKey, KeyError> {
    let alg = spec.algorithm;
    let invalid = |what: String| KeyError::Invalid {
        origin: spec.origin.clone(),
        what,
    };
    let material = match &spec.material {
        KeyMaterial::Secret(bytes) => Material::Hmac(hmac_key(alg, bytes)),
        KeyMaterial::PublicKey(path) => {
            let pem = read(path, &spec.origin)?;
            Material::Public(
                public_from_pem(alg, pem.as_bytes())
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?,
            )
        }
        KeyMaterial::PrivateKey(path) => {
            let pem = path.read().map_err(|source| KeyError::Read {
                origin: spec.origin.clone(),
                path: path.display(),
                source,
            })?;
            let pem = String::from_utf8_lossy(&pem);
            Material::Public(
                public_from_private_pem(alg, &pem)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?,
            )
        }
        KeyMaterial::JwksFile(_) => return Err(invalid("a JWKS file is loaded as a set".into())),
    };
    Ok(VerifyKey {
        kid: spec.kid.clone(),
        algs: vec![alg],
        material,
    })
}

pub fn hmac_key(alg: JwtAlg, secret: &[u8]) -> ring::hmac::Key {
    let a = match alg {
        JwtAlg::HS384 => ring::hmac::HMAC_SHA384,
        JwtAlg::HS512 => ring::hmac::HMAC_SHA512,
        _ => ring::hmac::HMAC_SHA256,
    };
    ring::hmac::Key::new(a, secret)
}

fn public_from_pem(alg: JwtAlg, pem: &[u8]) -> Result<DecodingKey, String> {
    let r = match alg {
        JwtAlg::ES256 | JwtAlg::ES384 => DecodingKey::from_ec_pem(pem),
        JwtAlg::EdDSA => DecodingKey::from_ed_pem(pem),
        JwtAlg::HS256 | JwtAlg::HS384 | JwtAlg::HS512 => {
            return Err("HS* algorithms take a secret".into())
        }
        _ => DecodingKey::from_rsa_pem(pem),
    };
    r.map_err(|e| format!("not a PEM {} public key ({e})", family(alg)))
}

/// The public half of a private key, through its JWK (one derivation for
/// verification here and for the published JWKS).
fn public_from_private_pem(alg: JwtAlg, pem: &str) -> Result<DecodingKey, String> {
    let jwk = public_jwk(alg, pem.as_bytes())
        .map_err(|e| format!("not a usable {} private key ({e})", family(alg)))?;
    let jwk: Jwk = serde_json::from_value(Value::Object(jwk)).map_err(|e| e.to_string())?;
    DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())
}

/// The public JWK of a PKCS#8 private key PEM (PKCS#1 for RSA too).
pub fn public_jwk(alg: JwtAlg, pem: &[u8]) -> Result<Map<String, Value>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|_| "not a PEM private key".to_string())?;
    let rng = ring::rand::SystemRandom::new();
    let e = |e: ring::error::KeyRejected| e.to_string();
    let jwk = match (alg, &der) {
        (JwtAlg::ES256 | JwtAlg::ES384, PrivateKeyDer::Pkcs8(p)) => {
            let (a, crv, n) = if alg == JwtAlg::ES256 {
                (
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    "P-256",
                    32,
                )
            } else {
                (
                    &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    "P-384",
                    48,
                )
            };
            let kp = ring::signature::EcdsaKeyPair::from_pkcs8(a, p.secret_pkcs8_der(), &rng)
                .map_err(e)?;
            let point = kp.public_key().as_ref();
            if point.len() != 1 + 2 * n {
                return Err("unexpected EC point".into());
            }
            json!({"kty": "EC", "crv": crv, "x": b64().encode(&point[1..=n]), "y": b64().encode(&point[n + 1..])})
        }
        (JwtAlg::EdDSA, PrivateKeyDer::Pkcs8(p)) => {
            let kp =
                ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(p.secret_pkcs8_der())
                    .map_err(e)?;
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64().encode(kp.public_key().as_ref())})
        }
        (
            JwtAlg::RS256
            | JwtAlg::RS384
            | JwtAlg::RS512
            | JwtAlg::PS256
            | JwtAlg::PS384
            | JwtAlg::PS512,
            _,
        ) => {
            let kp = match &der {
                PrivateKeyDer::Pkcs8(p) => {
                    ring::signature::RsaKeyPair::from_pkcs8(p.secret_pkcs8_der())
                }
                PrivateKeyDer::Pkcs1(p) => {
                    ring::signature::RsaKeyPair::from_der(p.secret_pkcs1_der())
                }
                _ => return Err("expected a PKCS#8 or PKCS#1 RSA key".into()),
            }
            .map_err(e)?;
            let c: ring::rsa::PublicKeyComponents<Vec<u8>> = kp.public().into();
            json!({
                "kty": "RSA",
                "n": b64().encode(c.n.strip_prefix(&[0u8][..]).unwrap_or(&c.n)),
                "e": b64().encode(c.e.strip_prefix(&[0u8][..]).unwrap_or(&c.e)),
            })
        }
        _ => return Err(format!("expected a PKCS#8 key for {}", alg.name())),
    };
    match jwk {
        Value::Object(m) => Ok(m),
        _ => Err("internal: JWK is not an object".into()),
    }
}

fn family(alg: JwtAlg) -> &'static str {
    match alg {
        JwtAlg::ES256 | JwtAlg::ES384 => "EC",
        JwtAlg::EdDSA => "Ed25519",
        JwtAlg::HS256 | JwtAlg::HS384 | JwtAlg::HS512 => "HMAC",
        _ => "RSA",
    }
}

/// Parses a JWKS document into keys allowed for `allowed` algorithms.
/// Keys without a kid, for encryption, of unknown types, or whose `alg`
/// is not allowed are skipped; a document that is not a JWKS, or leaves no
/// usable key, is an error: for a provider's set, a glitch that publishes
/// garbage must not replace the last good keys with none.
pub fn parse_jwks(text: &str, allowed: &[JwtAlg]) -> Result<Vec<VerifyKey>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| format!("not a JWKS document ({e})"))?;
    let mut out = Vec::new();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let fits: Vec<JwtAlg> = match jwk.common.key_algorithm {
            Some(ka) => key_alg(ka)
                .filter(|a| allowed.contains(a))
                .into_iter()
                .collect(),
            None => allowed
                .iter()
                .copied()
                .filter(|a| jwk_fits(&jwk, *a))
                .collect(),
        };
        if fits.is_empty() || !fits.iter().all(|a| jwk_fits(&jwk, *a)) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(VerifyKey {
            kid: Some(kid),
            algs: fits,
            material: Material::Public(key),
        });
    }
    if out.is_empty() {
        let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
        return Err(format!("no usable {} key with a kid", names.join("/")));
    }
    Ok(out)
}

fn key_alg(ka: KeyAlgorithm) -> Option<JwtAlg> {
    Some(match ka {
        KeyAlgorithm::ES256 => JwtAlg::ES256,
        KeyAlgorithm::ES384 => JwtAlg::ES384,
        KeyAlgorithm::RS256 => JwtAlg::RS256,
        KeyAlgorithm::RS384 => JwtAlg::RS384,
        KeyAlgorithm::RS512 => JwtAlg::RS512,
        KeyAlgorithm::PS256 => JwtAlg::PS256,
        KeyAlgorithm::PS384 => JwtAlg::PS384,
        KeyAlgorithm::PS512 => JwtAlg::PS512,
        KeyAlgorithm::EdDSA => JwtAlg::EdDSA,
        // SECURITY: symmetric or encryption algorithms never come from a JWKS.
        KeyAlgorithm::HS256
        | KeyAlgorithm::HS384
        | KeyAlgorithm::HS512
        | KeyAlgorithm::RSA1_5
        | KeyAlgorithm::RSA_OAEP
        | KeyAlgorithm::RSA_OAEP_256 => return None,
    })
}

/// Whether the JWK's key type and curve suit `alg`.
fn jwk_fits(jwk: &Jwk, alg: JwtAlg) -> bool {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            JwtAlg::RS256
                | JwtAlg::RS384
                | JwtAlg::RS512
                | JwtAlg::PS256
                | JwtAlg::PS384
                | JwtAlg::PS512
        ),
        AlgorithmParameters::EllipticCurve(p) => matches!(
            (&p.curve, alg),
            (EllipticCurve::P256, JwtAlg::ES256) | (EllipticCurve::P384, JwtAlg::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(p) => {
            p.curve == EllipticCurve::Ed25519 && alg == JwtAlg::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => false,
    }
}

/// base64url without padding, as JWTs use.
pub fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// Decodes a base64url segment (a trailing '=' is tolerated, as PyJWT does).
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    b64().decode(s.trim_end_matches('=')).ok()
}

pub fn to_jsonwebtoken(alg: JwtAlg) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as A;
    match alg {
        JwtAlg::HS256 => A::HS256,
        JwtAlg::HS384 => A::HS384,
        JwtAlg::HS512 => A::HS512,
        JwtAlg::RS256 => A::RS256,
        JwtAlg::RS384 => A::RS384,
        JwtAlg::RS512 => A::RS512,
        JwtAlg::PS256 => A::PS256,
        JwtAlg::PS384 => A::PS384,
        JwtAlg::PS512 => A::PS512,
        JwtAlg::ES256 => A::ES256,
        JwtAlg::ES384 => A::ES384,
        JwtAlg::EdDSA => A::EdDSA,
    }
}
