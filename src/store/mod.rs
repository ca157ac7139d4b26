//! Persistent state behind a small interface: token families (one per
//! login) and their revocation, outstanding refresh tokens, login-failure
//! counters. SQLite now (`sqlite`), a shared store later behind the same
//! trait; `memory` is the hot-path mirror the edge reads on every request.

pub mod memory;
pub mod sqlite;

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
}

/// Times are seconds since the epoch. Calls block; run them on the
/// blocking pool from async code.
pub trait Store: Send + Sync {
    fn create_family(&self, family: &Family) -> Result<(), StoreError>;
    fn family(&self, sid: &str) -> Result<Option<Family>, StoreError>;
    /// Marks the family revoked; returns its expiry (None: unknown family).
    fn revoke_family(&self, sid: &str, at: i64, reason: &str) -> Result<Option<i64>, StoreError>;
    fn record_refresh(
        &self,
        jti: &str,
        sid: &str,
        user_id: &str,
        issued_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError>;
    /// Atomically marks a refresh token used.
    fn use_refresh(&self, jti: &str, at: i64) -> Result<RefreshUse, StoreError>;
    fn is_used(&self, jti: &str) -> Result<bool, StoreError>;
    /// The family a refresh token was recorded under (None: unknown jti).
    fn refresh_family(&self, jti: &str) -> Result<Option<String>, StoreError>;
    /// Revoked families that could still have live tokens at `now`.
    fn revoked_families(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError>;
    fn record_failure(&self, kind: &str, key: &str, at: i64) -> Result<(), StoreError>;
    /// Failures after `since`: (count, earliest time).
    fn failures_since(
        &self,
        kind: &str,
        key: &str,
        since: i64,
    ) -> Result<(u32, Option<i64>), StoreError>;
    fn clear_failures(&self, kind: &str, key: &str) -> Result<(), StoreError>;
    /// Deletes expired rows; returns how many.
    fn purge(&self, now: i64, failures_before: i64) -> Result<usize, StoreError>;
}
