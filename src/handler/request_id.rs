//! Request ids: the client's valid `X-Request-Id` (the first one), else a
//! new version 4 UUID, held inline (no allocation per request).

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

/// 16 unpredictable bytes without a syscall per request: a per-thread
/// SplitMix64 stream seeded once from the OS (request ids need to be unique
/// and hard to guess, not secret).
fn random_16() -> [u8; 16] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(u64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([7; 8]),
        ));
    }
    fn next(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    STATE.with(|state| {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&next(state).to_le_bytes());
        out[8..].copy_from_slice(&next(state).to_le_bytes());
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
    fn client_ids_are_kept_when_valid() {
        assert_eq!(RequestId::new(Some(b"abc-1.2_3")).as_str(), "abc-1.2_3");
        assert_eq!(RequestId::new(Some(b"bad id")).as_str().len(), 36);
        assert_eq!(RequestId::new(Some(&[b'a'; 129])).as_str().len(), 36);
        assert_eq!(RequestId::new(Some(b"")).as_str().len(), 36);
    }
}
