//! Token route bodies: `tokens::request::fields` on JSON, form-urlencoded
//! and multipart bodies. The first byte picks the content type (4: the
//! next line of the input is the Content-Type, the rest the body).
#![no_main]

use bytes::Bytes;
use gateway::tokens::request::fields;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 2] = ["username", "password"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (content_type, body): (Option<String>, &[u8]) = match pick % 5 {
        0 => (None, rest),
        1 => (Some("application/json".into()), rest),
        2 => (
            Some("application/x-www-form-urlencoded; charset=utf-8".into()),
            rest,
        ),
        3 => (Some("multipart/form-data; boundary=XX".into()), rest),
        _ => {
            let nl = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let Ok(ct) = std::str::from_utf8(&rest[..nl]) else {
                return;
            };
            (Some(ct.to_string()), rest.get(nl + 1..).unwrap_or(&[]))
        }
    };
    let body = Bytes::copy_from_slice(body);
    if let Ok(values) = fields(content_type.as_deref(), &body, &NAMES) {
        assert_eq!(values.len(), NAMES.len());
        for v in &values {
            assert!(!v.is_empty() && v.trim() == v, "{v:?}");
        }
    }
});
