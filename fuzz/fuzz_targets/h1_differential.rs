//! Differential: the gateway's own HTTP/1.1 request framing (`h1` fast
//! path: httparse in place, `AppState::decide`) against a reference:
//! httparse's plain parse plus Content-Length / Transfer-Encoding read as
//! hyper 1.x reads them for a request (`proto::h1::role::Server::parse`:
//! digits only, differing lengths refused, a Transfer-Encoding whose last
//! comma-separated element is not `chunked` refused), and, stricter than
//! hyper (which drops the length), Content-Length with Transfer-Encoding
//! refused.
//!
//! It panics where the gateway ACCEPTS a request (reads the bytes after
//! the head by some framing) whose framing or head length differs from the
//! reference's, or which the reference refuses. Being stricter is fine:
//! a refusal that closes the connection without reading on is never a
//! disagreement.
#![no_main]

use gateway::fuzzing::{h1_request, BodyFraming, H1Decision, H1Request};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Reference {
    /// Not a complete HTTP/1.1 head.
    NoHead,
    /// A head whose framing is refused.
    Refused(&'static str),
    Framed {
        head_len: usize,
        framing: BodyFraming,
    },
}

/// hyper's `from_digits`: ASCII digits only, no overflow.
fn digits(v: &str) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.bytes().try_fold(0u64, |n, d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// hyper's `content_length_parse` for a request: the value's bytes, as
/// httparse left them, are all digits.
fn content_length(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok().and_then(digits)
}

/// hyper's `is_chunked_`: the value is header text (`HeaderValue::to_str`:
/// visible ASCII, space and tab) and its last comma-separated element is
/// `chunked`.
fn is_chunked(v: &[u8]) -> bool {
    let text = v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    text && std::str::from_utf8(v).is_ok_and(|v| {
        v.rsplit(',')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
    })
}

fn reference(data: &[u8]) -> Reference {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Reference::NoHead,
    };
    if req.version != Some(1) {
        return Reference::NoHead;
    }
    let mut cl: Option<u64> = None;
    let mut te = false;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            chunked = is_chunked(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = content_length(h.value) else {
                return Reference::Refused("invalid content-length");
            };
            if cl.is_some_and(|c| c != n) {
                return Reference::Refused("differing content-lengths");
            }
            cl = Some(n);
        }
    }
    if te && cl.is_some() {
        return Reference::Refused("content-length with transfer-encoding");
    }
    if te && !chunked {
        return Reference::Refused("transfer-encoding not ending in chunked");
    }
    let framing = match (chunked, cl) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(n)) => BodyFraming::Length(n),
        (false, None) => BodyFraming::None,
    };
    Reference::Framed { head_len, framing }
}

/// The gateway refuses the request and reads nothing after its head.
fn refused_without_reading(d: &H1Decision) -> bool {
    d.answer.is_some() && d.close && d.framing == BodyFraming::None
}

fuzz_target!(|data: &[u8]| {
    let H1Request::Decided(d) = h1_request(data) else {
        // Not decided by the fast path: hyper's own parser reads it.
        return;
    };
    if refused_without_reading(&d) {
        return;
    }
    match reference(data) {
        Reference::Framed { head_len, framing } => {
            if d.head_len != head_len || d.framing != framing {
                panic!(
                    "framing differs: gateway {d:?}, reference head {head_len} {framing:?}\n{:?}",
                    String::from_utf8_lossy(data)
                );
            }
        }
        other => panic!(
            "gateway accepts what the reference refuses: gateway {d:?}, reference {other:?}\n{:?}",
            String::from_utf8_lossy(data)
        ),
    }
});
