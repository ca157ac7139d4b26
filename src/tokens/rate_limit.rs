//! Brute-force protection: failed logins counted per username and per
//! client address in the store. Once a count reaches its limit, further
//! attempts in the window get 429 with Retry-After, whatever the password
//! (a correct one does not lift an active lock).

use std::net::IpAddr;
use std::sync::Arc;

use super::{blocking, unix_now, TokenError};
use crate::config::RateLimitConfig;
use crate::store::Store;

const USER: &str = "user";
const ADDRESS: &str = "address";

/// Refuses the attempt if either counter is at its limit.
pub async fn check(
    store: &Arc<dyn Store>,
    cfg: &RateLimitConfig,
    username: &str,
    addr: IpAddr,
) -> Result<(), TokenError> {
    let now = unix_now();
    let user_window = secs(cfg.per_user_window);
    let addr_window = secs(cfg.per_address_window);
    let (u, a) = (username.to_string(), addr.to_string());
    let (user, address) = blocking(store, move |s| {
        Ok((
            s.failures_since(USER, &u, now - user_window)?,
            s.failures_since(ADDRESS, &a, now - addr_window)?,
        ))
    })
    .await
    .map_err(TokenError::Store)?;
    let mut retry_after = 0;
    if cfg.per_user > 0 && user.0 >= cfg.per_user {
        retry_after = retry_after.max(until(user.1, user_window, now));
    }
    if cfg.per_address > 0 && address.0 >= cfg.per_address {
        retry_after = retry_after.max(until(address.1, addr_window, now));
    }
    if retry_after > 0 {
        return Err(TokenError::RateLimited { retry_after });
    }
    Ok(())
}

/// Counts a failed login against both the username and the address.
pub async fn failed(
    store: &Arc<dyn Store>,
    username: &str,
    addr: IpAddr,
) -> Result<(), TokenError> {
    let now = unix_now();
    let (u, a) = (username.to_string(), addr.to_string());
    blocking(store, move |s| {
        s.record_failure(USER, &u, now)?;
        s.record_failure(ADDRESS, &a, now)
    })
    .await
    .map_err(TokenError::Store)
}

/// A successful login clears the username's failures.
pub async fn succeeded(store: &Arc<dyn Store>, username: &str) -> Result<(), TokenError> {
    let u = username.to_string();
    blocking(store, move |s| s.clear_failures(USER, &u))
        .await
        .map_err(TokenError::Store)
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Whole seconds until the oldest failure in the window leaves it (>= 1).
fn until(oldest: Option<i64>, window: i64, now: i64) -> u64 {
    let left = oldest.map_or(window, |t| t + window - now);
    u64::try_from(left.max(1)).unwrap_or(1)
}
