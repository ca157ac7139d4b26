//! JWTs: `auth::jwt::parse`, `verify_signature` against fixed HS256,
//! ES256 and RS256 keys, and `check_claims`; and `auth::keys::parse_jwks`
//! on the same text. Nothing may panic, and a signature only ever checks
//! out with an algorithm its key is pinned to.
#![no_main]

use std::sync::OnceLock;

use gateway::auth::jwt::{check_claims, parse, verify_signature, ClaimRules};
use gateway::auth::keys::{hmac_key, parse_jwks, Material, VerifyKey};
use gateway::config::JwtAlg;
use libfuzzer_sys::fuzz_target;

/// The HS256 secret the seed tokens are signed with.
const SECRET: &[u8] = b"fuzz-secret-key-0123456789abcdef";
/// The public halves of the seed tokens' ES256 (`ec1`) and RS256 (`rsa1`) keys.
const JWKS: &str = include_str!("jwt_keys.json");

fn keys() -> &'static [VerifyKey] {
    static KEYS: OnceLock<Vec<VerifyKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys = vec![VerifyKey {
            kid: None,
            algs: vec![JwtAlg::HS256],
            material: Material::Hmac(hmac_key(JwtAlg::HS256, SECRET)),
        }];
        let public = parse_jwks(JWKS, &[JwtAlg::ES256, JwtAlg::RS256]).expect("fixed JWKS");
        assert_eq!(public.len(), 2, "fixed JWKS keys");
        keys.extend(public);
        keys
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = keys();

    if let Ok(parsed) = parse(text) {
        for key in keys {
            if let Ok(alg) = verify_signature(&parsed, key) {
                assert!(key.algs.contains(&alg), "{alg:?} not pinned for {key:?}");
                assert_eq!(alg.name(), parsed.header.alg);
            }
        }
        let audience = vec!["api".to_string()];
        for rules in [
            ClaimRules {
                issuer: None,
                audience: &[],
                leeway: 0.0,
                token_type: Some("access"),
                type_required: true,
                jti_required: true,
            },
            ClaimRules {
                issuer: Some("fuzz"),
                audience: &audience,
                leeway: 30.0,
                token_type: None,
                type_required: false,
                jti_required: false,
            },
        ] {
            for now in [0.0, 1_750_000_000.0, f64::MAX] {
                let _ = check_claims(&parsed.claims, &rules, now);
            }
        }
    }

    if let Ok(found) = parse_jwks(text, &JwtAlg::ALL) {
        for k in &found {
            // JWKS keys are public keys with a kid, never HMAC secrets.
            assert!(k.kid.is_some());
            assert!(matches!(k.material, Material::Public(_)));
            assert!(!k.algs.is_empty() && k.algs.iter().all(|a| !a.is_hmac()));
        }
    }
});
