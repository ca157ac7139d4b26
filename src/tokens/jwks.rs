//! Public keys as a JWKS (`GET /.well-known/jwks.json`), so simplejwt's
//! JWK_URL, or any other verifier, can check the tokens the gateway signs.
//! Keys without a configured kid get their RFC 7638 thumbprint as kid.

use base64::Engine;
use ring::signature::KeyPair;
use serde_json::{json, Map, Value};

use crate::auth::keys::b64;
use crate::config::{JwtAlg, KeyMaterial, KeySpec};

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

/// RFC 7638: SHA-256 over the required members in lexicographic order.
pub fn thumbprint(jwk: &Map<String, Value>) -> String {
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("RSA") => &["e", "kty", "n"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => &["kty"],
    };
    let mut canonical = Map::new();
    for m in members {
        if let Some(v) = jwk.get(*m) {
            canonical.insert((*m).to_string(), v.clone());
        }
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        Value::Object(canonical).to_string().as_bytes(),
    );
    b64().encode(digest.as_ref())
}

/// The full public JWK of a private-key spec, with kid, alg and use.
pub fn jwk_for_spec(spec: &KeySpec) -> Result<Option<Map<String, Value>>, String> {
    let KeyMaterial::PrivateKey(path) = &spec.material else {
        return Ok(None);
    };
    let pem = path
        .read()
        .map_err(|e| format!("{}: cannot read {}: {e}", spec.origin, path.display()))?;
    let mut jwk = public_jwk(spec.algorithm, &pem)
        .map_err(|e| format!("{}: {}: {e}", spec.origin, path.display()))?;
    let kid = spec.kid.clone().unwrap_or_else(|| thumbprint(&jwk));
    jwk.insert("kid".into(), Value::String(kid));
    jwk.insert("alg".into(), Value::String(spec.algorithm.name().into()));
    jwk.insert("use".into(), Value::String("sig".into()));
    Ok(Some(jwk))
}

/// The JWKS document for every key the gateway can sign with or was given
/// as a JWKS file; None when there is no public key to publish (HMAC only).
pub fn document(specs: &[KeySpec]) -> Result<Option<String>, String> {
    let mut keys = Vec::new();
    for spec in specs {
        match &spec.material {
            KeyMaterial::PrivateKey(_) => keys.extend(jwk_for_spec(spec)?.map(Value::Object)),
            KeyMaterial::JwksFile(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", spec.origin))?;
                let doc: Value =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", spec.origin))?;
                if let Some(list) = doc.get("keys").and_then(Value::as_array) {
                    // SECURITY: only public members; a JWKS file with a
                    // private "d" (or symmetric "k") is never published.
                    keys.extend(
                        list.iter()
                            .filter(|k| k.get("d").is_none() && k.get("k").is_none())
                            .cloned(),
                    );
                }
            }
            KeyMaterial::Secret(_) | KeyMaterial::PublicKey(_) => {}
        }
    }
    if keys.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({ "keys": keys }).to_string()))
}
