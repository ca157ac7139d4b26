//! Persistent state behind one interface: token families (one per login)
//! and their revocation, outstanding refresh tokens, login attempts. Two
//! implementations: `sqlite` (one file, the default) and `redis` (shared
//! by several replicas). `memory` is the hot-path mirror of revocations
//! the edge reads on every request; each store keeps it in step
//! (`follow_revocations`), including with revocations made elsewhere.
//!
//! Every check-and-change is one atomic operation in the store (single
//! use of a refresh token, reserving a login attempt), never a read then a
//! write from the gateway: replicas and concurrent requests race there.

pub mod memory;
pub mod redis;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use self::redis::RedisStore;
pub use memory::RevokedFamilies;
pub use sqlite::SqliteStore;

/// One login's token family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub sid: String,
    pub user_id: String,
    pub created_at: i64,
    /// The session ends here however often it is refreshed (session_max).
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// What marking a refresh token used found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshUse {
    /// First use: the caller may rotate it.
    Fresh,
    /// Used (rotated or blacklisted) before: a replay.
    AlreadyUsed,
    /// Not issued through this store (e.g. minted by simplejwt).
    Unknown,
}

/// One login-attempt counter: failures of `kind` ("user" or "address")
/// for `key`, at most `limit` within the last `window` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub kind: &'static str,
    pub key: String,
    pub limit: u32,
    pub window: i64,
}

/// The answer to reserving a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Counted as a failure until released.
    Reserved,
    /// A counter is at its limit: retry after this many seconds (>= 1).
    Refused { retry_after: u64 },
}

/// A counter with failures in its window (`gateway lockouts list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCount {
    pub kind: String,
    pub key: String,
    pub count: u32,
    /// The oldest counted failure.
    pub oldest: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {0}: {1}")]
    Open(String, String),
    #[error("store query failed")]
    Db(#[source] rusqlite::Error),
    #[error("store schema version {found} is newer than this gateway knows ({known})")]
    NewerSchema { found: i64, known: i64 },
    #[error("store lock poisoned")]
    Poisoned,
    #[error("store task failed")]
    Join,
    #[error("redis command failed")]
    Redis(#[source] ::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("redis unreachable; revocation mirror not yet resynced")]
    NotSynced,
    #[error("Redis unreachable (the last connect failed; retrying shortly)")]
    Unreachable,
    #[error("lost the connection to Redis (revocation channel)")]
    ChannelLost,
}

/// A store call's future; times are seconds since the epoch.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

pub trait Store: Send + Sync {
    fn create_family<'a>(&'a self, family: &'a Family) -> StoreFuture<'a, ()>;
    fn family<'a>(&'a self, sid: &'a str) -> StoreFuture<'a, Option<Family>>;
    /// The user's families that have not ended by `now`, revoked or not.
    fn sessions<'a>(&'a self, user_id: &'a str, now: i64) -> StoreFuture<'a, Vec<Family>>;
    /// Marks the family revoked and tells every replica; returns its expiry
    /// (None: unknown family).
    fn revoke_family<'a>(
        &'a self,
        sid: &'a str,
        at: i64,
        reason: &'a str,
    ) -> StoreFuture<'a, Option<i64>>;
    fn record_refresh<'a>(
        &'a self,
        jti: &'a str,
        sid: &'a str,
        user_id: &'a str,
        issued_at: i64,
        expires_at: i64,
    ) -> StoreFuture<'a, ()>;
    /// Atomically marks a refresh token used.
    fn use_refresh<'a>(&'a self, jti: &'a str, at: i64) -> StoreFuture<'a, RefreshUse>;
    fn is_used<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, bool>;
    /// The family a refresh token was recorded under (None: unknown jti).
    fn refresh_family<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, Option<String>>;
    /// Revoked families that could still have live tokens at `now`, with
    /// their expiry.
    fn revoked_families(&self, now: i64) -> StoreFuture<'_, Vec<(String, i64)>>;
    /// Atomically, all or nothing: unless a counter is at its limit, counts
    /// one attempt under `id` in every counter of `limits`.
    fn reserve_attempt<'a>(
        &'a self,
        limits: &'a [Limit],
        id: &'a str,
        now: i64,
    ) -> StoreFuture<'a, Attempt>;
    /// Takes back the attempt `id` from the counter (a login that succeeded).
    fn release_attempt<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, ()>;
    /// Counters of `kind` with failures after `since`.
    fn failure_counts<'a>(
        &'a self,
        kind: &'a str,
        since: i64,
    ) -> StoreFuture<'a, Vec<FailureCount>>;
    /// Forgets every failure of the counter; returns how many there were.
    fn clear_failures<'a>(&'a self, kind: &'a str, key: &'a str) -> StoreFuture<'a, u64>;
    /// Deletes expired records; returns how many.
    fn purge(&self, now: i64, failures_before: i64) -> StoreFuture<'_, usize>;
    /// Runs for as long as the process: puts revocations made by any
    /// replica or command into `mirror`, within about a second.
    fn follow_revocations(&self, mirror: Arc<RevokedFamilies>) -> StoreFuture<'_, ()>;
    /// Whether the store answers (readiness).
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// The store's name for logs and summaries.
    fn describe(&self) -> String;
}

/// Revokes every live family of `user_id`; returns the families revoked
/// with their expiry (`gateway sessions revoke --user-id`).
pub async fn revoke_user(
    store: &dyn Store,
    user_id: &str,
    at: i64,
    reason: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut revoked = Vec::new();
    for f in store.sessions(user_id, at).await? {
        if f.revoked_at.is_none() {
            if let Some(exp) = store.revoke_family(&f.sid, at, reason).await? {
                revoked.push((f.sid, exp));
            }
        }
    }
    Ok(revoked)
}

/// Logs a store outage once when it starts and once when it ends, however
/// many requests fail in between.
#[derive(Debug, Default)]
pub struct Outage {
    down: AtomicBool,
}

impl Outage {
    pub fn observe<T>(&self, name: &str, r: &Result<T, StoreError>) {
        match r {
            Ok(_) => {
                if self.down.swap(false, Ordering::AcqRel) {
                    tracing::warn!(store = name, "store reachable again");
                }
            }
            // Not every error is an outage: a bad row is not, but it is
            // rare enough to log like one.
            Err(e) => {
                crate::metrics::store_error();
                if !self.down.swap(true, Ordering::AcqRel) {
                    tracing::error!(store = name, error = %crate::body::error_chain(e), "store unavailable: token routes answer 503 until it is back");
                }
            }
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }
}
