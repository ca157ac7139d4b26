//! A bounded cache of verified tokens, so a repeated token skips decoding,
//! its signature check and the JSON parse. Matched on the whole token
//! (SECURITY: matching on the signature alone would let a forged payload
//! ride on a valid signature); only the bucket is chosen by a keyed hash of
//! the token's last bytes (its signature, unforgeable for anything cached),
//! so a lookup does not hash the whole token. An entry is dropped at the token's `exp`, and
//! remembers which key-set generation verified it, so keys revoked by a
//! JWKS refresh stop working even for cached tokens.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

pub struct TokenCache {
    entries: Mutex<HashMap<u64, Entry>>,
    capacity: usize,
    keys: RandomState,
}

struct Entry {
    token: Box<str>,
    claims: Arc<Map<String, Value>>,
    exp: f64,
    /// (source, generation) of the key set that verified it.
    stamp: (usize, u64),
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            entries: Mutex::new(HashMap::with_capacity(capacity.min(1024))),
            capacity,
            keys: RandomState::new(),
        }
    }

    fn slot(&self, token: &str) -> u64 {
        let b = token.as_bytes();
        self.keys.hash_one(&b[b.len().saturating_sub(32)..])
    }

    /// The cached claims if the token was verified by the key set `stamp`
    /// names and has not expired.
    pub fn get(
        &self,
        token: &str,
        now: f64,
        generation_of: impl Fn(usize) -> u64,
    ) -> Option<Arc<Map<String, Value>>> {
        let slot = self.slot(token);
        let mut map = self.entries.lock().ok()?;
        let hit = map.get(&slot)?;
        if *hit.token != *token {
            return None;
        }
        if hit.exp <= now || hit.stamp.1 != generation_of(hit.stamp.0) {
            map.remove(&slot);
            return None;
        }
        Some(hit.claims.clone())
    }

    pub fn insert(
        &self,
        token: &str,
        claims: Arc<Map<String, Value>>,
        exp: f64,
        stamp: (usize, u64),
        now: f64,
    ) {
        let slot = self.slot(token);
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= self.capacity {
            map.retain(|_, e| e.exp > now);
            if map.len() >= self.capacity {
                // Still full of live tokens: start over rather than grow.
                map.clear();
            }
        }
        // A colliding slot is simply taken over: this is a cache.
        map.insert(
            slot,
            Entry {
                token: token.into(),
                claims,
                exp,
                stamp,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_stamp_and_bound() {
        let c = TokenCache::new(2);
        let claims = Arc::new(Map::new());
        c.insert("a", claims.clone(), 100.0, (0, 1), 10.0);
        assert!(c.get("a", 50.0, |_| 1).is_some());
        assert!(
            c.get("a", 50.0, |_| 2).is_none(),
            "a new key generation must re-verify"
        );
        c.insert("a", claims.clone(), 100.0, (0, 1), 10.0);
        assert!(c.get("a", 100.0, |_| 1).is_none(), "expired at exp");
        c.insert("b", claims.clone(), 100.0, (0, 1), 10.0);
        c.insert("c", claims.clone(), 100.0, (0, 1), 10.0);
        c.insert("d", claims, 100.0, (0, 1), 10.0);
        assert!(c.len() <= 2);
    }
}
