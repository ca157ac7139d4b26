//! Request ids: the client's valid `X-Request-Id` (the first one), else a
//! new version 4 UUID from the OS CSPRNG, held inline (no allocation per
//! request).

use http::header::HeaderValue;

/// A request's id: the client's valid X-Request-Id, else a new UUID, held
/// inline (the fast path makes one per request without allocating).
#[derive(Debug, Clone)]
pub enum RequestId {
    Made([u8; uuid::fmt::Hyphenated::LENGTH]),
    Client(HeaderValue),
}

impl RequestId {
    /// Whether a client's X-Request-Id is kept: 1 to 128 of
    /// `A-Za-z0-9._-` (nothing a log line or header could be bent by).
    pub fn valid(b: &[u8]) -> bool {
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    }

    /// The client's id when valid, else a new one.
    pub fn new(client: Option<&[u8]>) -> Self {
        if let Some(b) = client.filter(|b| Self::valid(b)) {
            if let Ok(v) = HeaderValue::from_bytes(b) {
                return RequestId::Client(v);
            }
        }
        // A version 4 UUID, hyphenated, lowercase.
        let mut b = random_16();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        // Where each byte's two digits go, around the hyphens.
        const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut out = [b'-'; uuid::fmt::Hyphenated::LENGTH];
        for (byte, at) in b.iter().zip(AT) {
            let [hi, lo] = HEX_PAIRS[usize::from(*byte)];
            out[at] = hi;
            out[at + 1] = lo;
        }
        RequestId::Made(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Made(b) => b,
            RequestId::Client(v) => v.as_bytes(),
        }
    }

    /// For the access log: ids are ASCII either way.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0x0f]];
        i += 1;
    }
    t
};

/// 16 unpredictable bytes without a syscall per request: the OS's CSPRNG,
/// read 4 KiB at a time per thread (one read per 256 ids). SECURITY: an id
/// seen reveals nothing of the next ones (the generator before this one
/// was invertible from a single output).
fn random_16() -> [u8; 16] {
    use ring::rand::SecureRandom;
    use std::cell::RefCell;
    const BATCH: usize = 4096;
    struct Pool {
        bytes: [u8; BATCH],
        used: usize,
        rng: ring::rand::SystemRandom,
    }
    thread_local! {
        static POOL: RefCell<Pool> = RefCell::new(Pool {
            bytes: [0; BATCH],
            used: BATCH,
            rng: ring::rand::SystemRandom::new(),
        });
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.used + 16 > BATCH {
            let Pool { bytes, rng, .. } = &mut *p;
            if rng.fill(bytes).is_err() {
                // No OS randomness (never seen on Linux): a fresh v4 UUID
                // from the uuid crate's own source rather than a repeat.
                return *uuid::Uuid::new_v4().as_bytes();
            }
            p.used = 0;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&p.bytes[p.used..p.used + 16]);
        // Each id's bytes are used once and not kept.
        let used = p.used;
        p.bytes[used..used + 16].fill(0);
        p.used += 16;
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_request_ids_are_v4_uuids() {
        for _ in 0..100 {
            let id = RequestId::new(None);
            let parsed = uuid::Uuid::parse_str(id.as_str()).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(parsed.hyphenated().to_string(), id.as_str());
        }
    }

    #[test]
    fn made_ids_are_unique_across_refills_and_threads() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(RequestId::new(None).as_str().to_string()));
        }
        let other: Vec<String> = std::thread::spawn(|| {
            (0..600)
                .map(|_| RequestId::new(None).as_str().to_string())
                .collect()
        })
        .join()
        .unwrap();
        for id in other {
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn client_ids_are_kept_when_valid() {
        assert_eq!(RequestId::new(Some(b"abc-1.2_3")).as_str(), "abc-1.2_3");
        assert_eq!(RequestId::new(Some(b"bad id")).as_str().len(), 36);
        assert_eq!(RequestId::new(Some(&[b'a'; 129])).as_str().len(), 36);
        assert_eq!(RequestId::new(Some(b"")).as_str().len(), 36);
    }
}
