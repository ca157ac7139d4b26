//! The hot-path mirror of revoked token families: the edge checks every
//! access token's `sid` here, never in the database.

use std::collections::HashMap;
use std::sync::RwLock;

/// Revoked family ids, each kept until the family could no longer have a
/// live token (then purged).
#[derive(Debug, Default)]
pub struct RevokedFamilies {
    families: RwLock<HashMap<String, i64>>,
}

impl RevokedFamilies {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_revoked(&self, sid: &str) -> bool {
        self.families
            .read()
            // Mostly empty: then nothing is hashed.
            .map(|m| !m.is_empty() && m.contains_key(sid))
            .unwrap_or(true)
    }

    /// Marks `sid` revoked until `until` (seconds since the epoch).
    pub fn insert(&self, sid: &str, until: i64) {
        if let Ok(mut m) = self.families.write() {
            m.insert(sid.to_string(), until);
        }
    }

    /// Drops entries whose tokens have all expired by `now`.
    pub fn purge(&self, now: i64) {
        if let Ok(mut m) = self.families.write() {
            m.retain(|_, until| *until > now);
        }
    }

    pub fn len(&self) -> usize {
        self.families.read().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
