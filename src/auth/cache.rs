//! A bounded cache of verified tokens, so a repeated token skips decoding,
//! its signature check, the JSON parse and the claim checks that do not
//! depend on the time (a hit hands out the same `Identity`). Matched on the whole token
//! (SECURITY: matching on the signature alone would let a forged payload
//! ride on a valid signature); only the bucket is chosen by a keyed mix of
//! the token's last bytes (its signature, unforgeable for anything cached),
//! so a lookup does not hash the whole token. An entry is dropped at the token's `exp`, and
//! remembers which key-set generation verified it, so keys revoked by a
//! JWKS refresh stop working even for cached tokens.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

use super::Identity;

pub struct TokenCache {
    entries: Mutex<HashMap<u64, Entry, BuildHasherDefault<SlotHasher>>>,
    capacity: usize,
    /// Per-process key of the slot mix.
    key: u64,
}

/// Slots are mixed already: the map takes them as they are.
#[derive(Default)]
struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Entry {
    token: Box<str>,
    identity: Identity,
    exp: f64,
    /// (source, generation) of the key set that verified it.
    stamp: (usize, u64),
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            entries: Mutex::new(HashMap::with_capacity_and_hasher(
                capacity.min(1024),
                BuildHasherDefault::default(),
            )),
            capacity,
            key: RandomState::new().hash_one(0u64),
        }
    }

    /// A keyed multiply-xorshift mix of the last 16 bytes: a verified
    /// token's signature bytes cannot be chosen, so a cheap mix spreads
    /// them as well as a keyed hash would.
    fn slot(&self, token: &[u8]) -> u64 {
        let b = token;
        let mut h = self.key;
        for chunk in b[b.len().saturating_sub(16)..].chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h ^= h >> 32;
        }
        h
    }

    /// The cached identity if the token was verified by the key set
    /// `stamp` names and has not expired.
    pub fn get(
        &self,
        token: &[u8],
        now: f64,
        generation_of: impl Fn(usize) -> u64,
    ) -> Option<Identity> {
        let slot = self.slot(token);
        let mut map = self.entries.lock().ok()?;
        let hit = map.get(&slot)?;
        if hit.token.as_bytes() != token {
            return None;
        }
        if hit.exp <= now || hit.stamp.1 != generation_of(hit.stamp.0) {
            map.remove(&slot);
            return None;
        }
        Some(hit.identity.clone())
    }

    pub fn insert(&self, token: &str, identity: Identity, exp: f64, stamp: (usize, u64), now: f64) {
        let slot = self.slot(token.as_bytes());
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
                identity,
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
        let claims = Identity::for_tests("1");
        c.insert("a", claims.clone(), 100.0, (0, 1), 10.0);
        assert!(c.get(b"a", 50.0, |_| 1).is_some());
        assert!(
            c.get(b"a", 50.0, |_| 2).is_none(),
            "a new key generation must re-verify"
        );
        c.insert("a", claims.clone(), 100.0, (0, 1), 10.0);
        assert!(c.get(b"a", 100.0, |_| 1).is_none(), "expired at exp");
        c.insert("b", claims.clone(), 100.0, (0, 1), 10.0);
        c.insert("c", claims.clone(), 100.0, (0, 1), 10.0);
        c.insert("d", claims, 100.0, (0, 1), 10.0);
        assert!(c.len() <= 2);
    }
}
