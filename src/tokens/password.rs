//! Password hashes: argon2id PHC strings (what `gateway hash-password`
//! writes), bcrypt, and Django's `pbkdf2_sha256$...` and `argon2$...`
//! formats, so users can be brought over from Django unchanged.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine;
use std::num::NonZeroU32;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("unrecognised password hash format (expected $argon2id$..., $2b$..., pbkdf2_sha256$... or argon2$...)")]
    UnknownFormat,
    #[error("malformed password hash")]
    Malformed,
    #[error("cannot hash the password")]
    Hash,
}

/// A new argon2id PHC string for `password` (argon2's default cost).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Hash)
}

/// Checks that `stored` is a hash this module can verify.
pub fn check_format(stored: &str) -> Result<(), PasswordError> {
    if let Some(django) = stored.strip_prefix("pbkdf2_sha256$") {
        let parts: Vec<&str> = django.split('$').collect();
        if parts.len() != 3 || parts[0].parse::<u32>().is_err() {
            return Err(PasswordError::Malformed);
        }
        return Ok(());
    }
    let phc = stored
        .strip_prefix("argon2")
        .filter(|r| r.starts_with("$argon2"))
        .unwrap_or(stored);
    if phc.starts_with("$argon2") {
        return PasswordHash::new(phc)
            .map(|_| ())
            .map_err(|_| PasswordError::Malformed);
    }
    if ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| stored.starts_with(p))
    {
        return Ok(());
    }
    Err(PasswordError::UnknownFormat)
}

/// What verifying against `stored` costs: the scheme and its cost
/// parameters (hashes of one shape take the same time to verify).
pub fn cost_shape(stored: &str) -> String {
    if let Some(django) = stored.strip_prefix("pbkdf2_sha256$") {
        return format!("pbkdf2_sha256${}", django.split('$').next().unwrap_or(""));
    }
    let phc = stored
        .strip_prefix("argon2")
        .filter(|r| r.starts_with("$argon2"))
        .unwrap_or(stored);
    if phc.starts_with("$argon2") {
        // `$id$v=19$m=..,t=..,p=..$salt$hash`: everything but the salt,
        // plus the output length, which argon2 also pays for.
        let parts: Vec<&str> = phc.split('$').collect();
        let n = parts.len();
        let out = parts.last().map_or(0, |h| h.len());
        return format!("{}#{out}", parts[..n.saturating_sub(2)].join("$"));
    }
    // bcrypt: `$2b$12$...`.
    stored.get(..7).unwrap_or(stored).to_string()
}

/// Whether `password` matches `stored`. Comparisons are constant-time.
pub fn verify(password: &str, stored: &str) -> bool {
    if let Some(django) = stored.strip_prefix("pbkdf2_sha256$") {
        return verify_django_pbkdf2(password, django);
    }
    // Django's Argon2PasswordHasher prefixes the PHC string with "argon2".
    let phc = stored
        .strip_prefix("argon2")
        .filter(|r| r.starts_with("$argon2"))
        .unwrap_or(stored);
    if phc.starts_with("$argon2") {
        return match PasswordHash::new(phc) {
            Ok(parsed) => Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        };
    }
    if stored.starts_with("$2") {
        return bcrypt::verify(password, stored).unwrap_or(false);
    }
    false
}

/// `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>` (Django's default).
fn verify_django_pbkdf2(password: &str, rest: &str) -> bool {
    let mut parts = rest.splitn(3, '$');
    let (Some(iter), Some(salt), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Some(iterations) = iter.parse::<u32>().ok().and_then(NonZeroU32::new) else {
        return false;
    };
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt.as_bytes(),
        password.as_bytes(),
        &expected,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("s3cret", &h));
        assert!(!verify("wrong", &h));
        assert!(check_format(&h).is_ok());
    }

    #[test]
    fn django_pbkdf2() {
        // Django 5.2: make_password("correct horse", salt="abcdefgh12345678", hasher="pbkdf2_sha256") with 1000 iterations.
        let derived = {
            let mut out = [0u8; 32];
            ring::pbkdf2::derive(
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                NonZeroU32::new(1000).unwrap(),
                b"abcdefgh12345678",
                b"correct horse",
                &mut out,
            );
            base64::engine::general_purpose::STANDARD.encode(out)
        };
        let stored = format!("pbkdf2_sha256$1000$abcdefgh12345678${derived}");
        assert!(verify("correct horse", &stored));
        assert!(!verify("correct horse!", &stored));
        assert!(check_format(&stored).is_ok());
    }

    #[test]
    fn cost_shapes_ignore_salt_and_hash() {
        let a = hash("one").unwrap();
        let b = hash("two").unwrap();
        assert_eq!(cost_shape(&a), cost_shape(&b));
        assert_eq!(cost_shape(&format!("argon2{a}")), cost_shape(&a));
        assert_eq!(
            cost_shape("pbkdf2_sha256$870000$salt1$aGFzaA=="),
            cost_shape("pbkdf2_sha256$870000$othersalt$b3RoZXI=")
        );
        assert_ne!(
            cost_shape("pbkdf2_sha256$870000$s$aA=="),
            cost_shape("pbkdf2_sha256$600000$s$aA==")
        );
        let b4 = bcrypt::hash("pw", 4).unwrap();
        assert_eq!(cost_shape(&b4), "$2b$04$");
    }

    #[test]
    fn bcrypt_and_unknown() {
        let h = bcrypt::hash("pw", 4).unwrap();
        assert!(verify("pw", &h));
        assert!(!verify("px", &h));
        assert!(matches!(
            check_format("md5$x$y"),
            Err(PasswordError::UnknownFormat)
        ));
        assert!(!verify("pw", "plaintext"));
    }
}
