//! Request paths: `path::normalize` and `path::has_dot_segment`, with the
//! invariants the module promises for a path it accepts: it starts with
//! `/`, has no doubled slash, no `.`/`..` segment in any spelling, no
//! `%00`, only well-formed uppercase escapes and none of an unreserved
//! character; normalising it again changes nothing; `encoded_slash` says
//! whether it holds `%2F`, `%5C` or `\`.
#![no_main]

use gateway::path::{has_dot_segment, normalize, PathError};
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let dotted = has_dot_segment(raw);
    let normal = match normalize(raw) {
        Ok(n) => n,
        Err(e) => {
            assert_eq!(e == PathError::NotAPath, !raw.starts_with('/'), "{raw:?}");
            return;
        }
    };
    // A dot segment in the raw path is never let through.
    assert!(!dotted, "{raw:?} has a dot segment but normalised");
    let p: &str = &normal.path;
    if let Cow::Borrowed(b) = &normal.path {
        assert_eq!(*b, raw);
    }
    assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
    assert!(!p.contains("//"), "{raw:?} -> {p:?}");
    assert!(!has_dot_segment(p), "{raw:?} -> {p:?}");
    for seg in p.split(['/', '\\']) {
        assert!(seg != "." && seg != "..", "{raw:?} -> {p:?}");
    }
    assert!(
        !p.contains("/../") && !p.contains("/./"),
        "{raw:?} -> {p:?}"
    );
    assert!(
        !p.ends_with("/..") && !p.ends_with("/."),
        "{raw:?} -> {p:?}"
    );
    let b = p.as_bytes();
    for (i, _) in p.match_indices('%') {
        let (Some(hi), Some(lo)) = (b.get(i + 1), b.get(i + 2)) else {
            panic!("{raw:?} -> {p:?}: cut escape");
        };
        assert!(
            hi.is_ascii_hexdigit()
                && lo.is_ascii_hexdigit()
                && !hi.is_ascii_lowercase()
                && !lo.is_ascii_lowercase(),
            "{raw:?} -> {p:?}: escape"
        );
        let v = hex(*hi).unwrap() << 4 | hex(*lo).unwrap();
        assert!(v != 0, "{raw:?} -> {p:?}: %00");
        assert!(!unreserved(v), "{raw:?} -> {p:?}: unreserved escape kept");
    }
    let slashy = p.contains("%2F") || p.contains("%5C") || p.contains('\\');
    assert_eq!(normal.encoded_slash, slashy, "{raw:?} -> {p:?}");
    // Idempotent.
    let again = normalize(p).unwrap_or_else(|e| panic!("{raw:?} -> {p:?} -> {e:?}"));
    assert_eq!(&*again.path, p, "{raw:?}");
    assert_eq!(again.encoded_slash, normal.encoded_slash);
    // What an app that decodes slashes would route on.
    let decoded = normal.decoded_slashes();
    assert!(decoded.starts_with('/'), "{raw:?} -> {decoded:?}");
    assert!(!decoded.contains("//"), "{raw:?} -> {decoded:?}");
    assert!(!has_dot_segment(&decoded), "{raw:?} -> {decoded:?}");
    if !normal.encoded_slash {
        assert_eq!(decoded, p);
    }
});
