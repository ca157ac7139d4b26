//! Public keys as a JWKS (`GET /.well-known/jwks.json`), so simplejwt's
//! JWK_URL, or any other verifier, can check the tokens the gateway signs.
//! Keys without a configured kid get their RFC 7638 thumbprint as kid.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::auth::keys::b64;
use crate::config::{KeyMaterial, KeySpec};

pub use crate::auth::keys::public_jwk;

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
