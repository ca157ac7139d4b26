//! Upstream response heads: `wire::parse_response_head` and
//! `wire::body_facts` on arbitrary bytes, the body then scanned by its
//! framing as the proxy does.
#![no_main]

use gateway::fuzzing::{h1_response, Chunked, H1Response};
use libfuzzer_sys::fuzz_target;

fn has_header(head: &[u8], name: &str) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => resp
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let H1Response::Parsed {
        head_len,
        status,
        version,
        facts,
    } = h1_response(data)
    else {
        return;
    };
    assert!(head_len > 0 && head_len <= data.len());
    assert!((100..=999).contains(&status), "{status}");
    assert!(matches!(version, Some(0 | 1)), "{version:?}");
    let Ok(facts) = facts else {
        return;
    };
    // Transfer-Encoding wins: never both.
    assert!(
        !(facts.chunked && facts.content_length.is_some()),
        "{facts:?}"
    );
    let head = &data[..head_len];
    if facts.chunked {
        assert!(has_header(head, "transfer-encoding"));
    }
    if facts.content_length.is_some() {
        assert!(has_header(head, "content-length"));
    }
    // A coding other than chunked is read until close.
    if has_header(head, "transfer-encoding") && !facts.chunked {
        assert!(!facts.keep_alive, "{facts:?}");
    }
    if facts.chunked {
        let body = &data[head_len..];
        if let Ok(Some(end)) = Chunked::new().feed(body) {
            assert!(end <= body.len());
        }
    }
});
