//! The raw HTTP/1.1 executor's request-head parse and decision
//! (`h1::parse_head`: httparse in place, then `AppState::decide`), on
//! arbitrary bytes; each decided request's body is consumed by its
//! framing (chunked bodies with the real scanner) and the next pipelined
//! request decided in turn, as `h1::serve` does.
#![no_main]

use gateway::fuzzing::{h1_request, BodyFraming, Chunked, H1Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        let d = match h1_request(rest) {
            H1Request::Decided(d) => d,
            H1Request::Declined { head_len } => {
                assert!(head_len > 0 && head_len <= rest.len());
                return;
            }
            H1Request::Partial | H1Request::Malformed => return,
        };
        assert!(d.head_len > 0 && d.head_len <= rest.len(), "{d:?}");
        if let Some(status) = d.answer {
            assert!((100..600).contains(&status), "{d:?}");
            // A framing refusal reads nothing more and closes.
            if status == 431 {
                assert!(d.close && d.framing == BodyFraming::None, "{d:?}");
            }
        }
        if d.proxied {
            assert!(d.answer.is_none(), "{d:?}");
        }
        let body = &rest[d.head_len..];
        let used = match d.framing {
            BodyFraming::None => 0,
            BodyFraming::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= body.len() => n,
                _ => return,
            },
            BodyFraming::Chunked => {
                let mut scan = Chunked::new();
                match scan.feed(body) {
                    Ok(Some(end)) => {
                        assert!(end <= body.len());
                        end
                    }
                    Ok(None) | Err(()) => return,
                }
            }
        };
        if d.close {
            return;
        }
        rest = &body[used..];
    }
});
