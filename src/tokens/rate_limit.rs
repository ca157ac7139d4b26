//! Brute-force protection: login attempts counted per username and per
//! client address in the store. An attempt is reserved atomically before
//! the password is checked, so however many guesses are in flight (on one
//! replica or several sharing Redis), at most `per_user` passwords are
//! verified per username per window. A failed login keeps its slot; a
//! successful one gives its slot back and clears the username's count.

use std::net::IpAddr;

use super::{unix_now, TokenError};
use crate::config::RateLimitConfig;
use crate::store::{Attempt, Limit, Store};

pub const USER: &str = "user";
pub const ADDRESS: &str = "address";

/// A reserved attempt, to be settled by `succeeded` (or left counted).
pub struct Reservation {
    id: String,
    address: String,
}

/// Reserves one attempt against both counters, or refuses it with 429.
pub async fn reserve(
    store: &dyn Store,
    cfg: &RateLimitConfig,
    username: &str,
    addr: IpAddr,
) -> Result<Reservation, TokenError> {
    let address = addr.to_string();
    let mut limits = Vec::with_capacity(2);
    if cfg.per_user > 0 {
        limits.push(Limit {
            kind: USER,
            key: username.to_string(),
            limit: cfg.per_user,
            window: secs(cfg.per_user_window),
        });
    }
    if cfg.per_address > 0 {
        limits.push(Limit {
            kind: ADDRESS,
            key: address.clone(),
            limit: cfg.per_address,
            window: secs(cfg.per_address_window),
        });
    }
    let id = super::issue::new_jti();
    if !limits.is_empty() {
        match store
            .reserve_attempt(&limits, &id, unix_now())
            .await
            .map_err(TokenError::Store)?
        {
            Attempt::Reserved => {}
            Attempt::Refused { retry_after } => {
                return Err(TokenError::RateLimited { retry_after })
            }
        }
    }
    Ok(Reservation { id, address })
}

/// A successful login: its attempt was not a failure, and the username's
/// earlier failures are forgiven.
pub async fn succeeded(
    store: &dyn Store,
    cfg: &RateLimitConfig,
    username: &str,
    r: Reservation,
) -> Result<(), TokenError> {
    if cfg.per_address > 0 {
        store
            .release_attempt(ADDRESS, &r.address, &r.id)
            .await
            .map_err(TokenError::Store)?;
    }
    if cfg.per_user > 0 {
        store
            .clear_failures(USER, username)
            .await
            .map_err(TokenError::Store)?;
    }
    Ok(())
}

pub fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The password could not be checked at all (credential service down):
/// the attempt does not count.
pub async fn release(
    store: &dyn Store,
    cfg: &RateLimitConfig,
    username: &str,
    r: Reservation,
) -> Result<(), TokenError> {
    if cfg.per_user > 0 {
        store
            .release_attempt(USER, username, &r.id)
            .await
            .map_err(TokenError::Store)?;
    }
    if cfg.per_address > 0 {
        store
            .release_attempt(ADDRESS, &r.address, &r.id)
            .await
            .map_err(TokenError::Store)?;
    }
    Ok(())
}
