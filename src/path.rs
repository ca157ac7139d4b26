//! Request path normalisation: routes and policies are matched on the path
//! the application will see, and the upstream receives that same path.
//!
//! SECURITY: an app server decodes the path (gunicorn's PATH_INFO) and many
//! merge slashes; were routes matched on the raw target, `/%61dmin/x` or
//! `//admin/x` would pass a policy on `/admin/` anonymously. So, as nginx
//! matches locations on the decoded, normalised path:
//!
//! 1. `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded;
//!    every other escape is kept, its hex digits uppercased.
//! 2. Repeated slashes are merged.
//! 3. `%00` is refused; so is a path whose escapes do not decode to UTF-8
//!    (overlong forms such as `%C0%AF` for `/` are how old decoders were
//!    tricked into seeing separators and dots); `.`/`..` segments (in any spelling, `\` counted as
//!    a separator) are refused; an escape that is not `%` + two hex digits
//!    is refused.
//! 4. An encoded `/` or `\` (`%2F`, `%5C`), or a raw `\`, is kept as it is
//!    and reported:
//!    the handler refuses it unless the route matched on the decoded path
//!    opts in (`allow_encoded_slash`).
//!
//! Pure functions on `&str`, no I/O: the fuzz and unit tests call exactly
//! what the server calls.

use std::borrow::Cow;

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `.` or `..` segment, in any spelling.
    #[error("dot segment in the path")]
    DotSegment,
    /// `%00`.
    #[error("encoded NUL in the path")]
    Nul,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-escape in the path")]
    BadEscape,
    /// Escapes that do not decode to UTF-8 (`%C0%AF`, `%FF`).
    #[error("path is not UTF-8 once decoded")]
    NotUtf8,
    /// A request target that is not an absolute path (`*`, an authority).
    #[error("request target is not a path")]
    NotAPath,
    /// `%2F`, `%5C` or `\\` on a route without `allow_encoded_slash`.
    #[error("encoded slash in the path")]
    EncodedSlash,
}

/// A normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normal<'a> {
    /// The path routes match on and the upstream receives.
    pub path: Cow<'a, str>,
    /// The path holds `%2F` or `%5C`.
    pub encoded_slash: bool,
}

impl Normal<'_> {
    /// The path with `%2F` and `%5C` decoded to `/` and slashes merged:
    /// what an app that decodes them would route on.
    pub fn decoded_slashes(&self) -> String {
        let mut out = String::with_capacity(self.path.len());
        let b = self.path.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let slash = b[i] == b'/'
                || b[i] == b'\\'
                || (b[i] == b'%' && b.get(i + 1) == Some(&b'2') && b.get(i + 2) == Some(&b'F'))
                || (b[i] == b'%' && b.get(i + 1) == Some(&b'5') && b.get(i + 2) == Some(&b'C'));
            if slash {
                if !out.ends_with('/') {
                    out.push('/');
                }
                i += if b[i] == b'%' { 3 } else { 1 };
            } else {
                // Escapes and ASCII one byte at a time; a multi-byte
                // character is copied whole.
                let len = utf8_len(b[i]);
                out.push_str(self.path.get(i..i + len).unwrap_or(""));
                i += len.max(1);
            }
        }
        out
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// Normalises an origin-form path (no query). Borrows when nothing changes.
pub fn normalize(raw: &str) -> Result<Normal<'_>, PathError> {
    let b = raw.as_bytes();
    // An authority (CONNECT) or `*` is not a path any route serves.
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAPath);
    }
    // Most paths have no escape, no dot and no doubled slash.
    let simple = !b.iter().any(|&c| c == b'%' || c == b'.' || c == b'\\')
        && !b.windows(2).any(|w| w == b"//");
    if simple {
        return Ok(Normal {
            path: Cow::Borrowed(raw),
            encoded_slash: false,
        });
    }
    let mut out = String::with_capacity(raw.len());
    let mut encoded_slash = false;
    let mut high_escape = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).and_then(|h| hex(*h)),
                    b.get(i + 2).and_then(|l| hex(*l)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                if v == 0 {
                    return Err(PathError::Nul);
                }
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(v));
                } else {
                    encoded_slash |= v == b'/' || v == b'\\';
                    high_escape |= v >= 0x80;
                    out.push('%');
                    out.push(char::from(HEX[usize::from(hi)]));
                    out.push(char::from(HEX[usize::from(lo)]));
                }
                i += 3;
            }
            b'/' if out.ends_with('/') => i += 1,
            // A raw backslash is a separator to some apps: as `%5C`.
            b'\\' => {
                encoded_slash = true;
                out.push('\\');
                i += 1;
            }
            _ => {
                let len = utf8_len(c);
                out.push_str(raw.get(i..i + len).unwrap_or(""));
                i += len.max(1);
            }
        }
    }
    if has_dot_segment(&out) {
        return Err(PathError::DotSegment);
    }
    if high_escape && !decodes_to_utf8(&out) {
        return Err(PathError::NotUtf8);
    }
    Ok(Normal {
        path: Cow::Owned(out),
        encoded_slash,
    })
}

/// Whether `path` with every `%XX` decoded is valid UTF-8 (Rust's decoder
/// refuses overlong forms and surrogates).
fn decodes_to_utf8(path: &str) -> bool {
    std::str::from_utf8(&percent_encoding::percent_decode_str(path).collect::<Vec<u8>>()).is_ok()
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether any segment of the path, percent-decoded, is `.` or `..`
/// (`/` and `\` both count as separators).
pub fn has_dot_segment(path: &str) -> bool {
    // Without a dot or an escape there is none (most paths).
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded
        .split(['/', '\\'])
        .any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(|n| n.path.into_owned())
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(norm("/%61dmin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/a%7Eb%2d%5F").unwrap(), "/a~b-_");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/q%3fx").unwrap(), "/q%3Fx");
    }

    #[test]
    fn escapes_must_decode_to_utf8() {
        // Overlong `/` and `.`, a lone continuation byte, a surrogate.
        for p in [
            "/%C0%AFadmin",
            "/api/%c0%ae%c0%ae/x",
            "/%FF",
            "/a%80",
            "/%ED%A0%80",
        ] {
            assert_eq!(norm(p), Err(PathError::NotUtf8), "{p}");
        }
        // Real UTF-8, escaped or not, passes untouched.
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/café/%E2%82%AC").unwrap(), "/café/%E2%82%AC");
    }

    #[test]
    fn slashes_are_merged() {
        assert_eq!(norm("//admin//x///").unwrap(), "/admin/x/");
        assert_eq!(norm("/%2F").unwrap(), "/%2F");
        assert!(matches!(
            normalize("/plain/path"),
            Ok(Normal {
                path: Cow::Borrowed(_),
                ..
            })
        ));
    }

    #[test]
    fn encoded_slashes_are_reported_and_decoded_for_matching() {
        let n = normalize("/admin%2fx").unwrap();
        assert!(n.encoded_slash);
        assert_eq!(n.path, "/admin%2Fx");
        assert_eq!(n.decoded_slashes(), "/admin/x");
        let n = normalize("/%5cadmin%5C%2F/x").unwrap();
        assert_eq!(n.decoded_slashes(), "/admin/x");
        assert!(!normalize("/a%2Bb").unwrap().encoded_slash);
    }

    #[test]
    fn backslashes_count_as_encoded_slashes() {
        let n = normalize("/admin\\x").unwrap();
        assert!(n.encoded_slash);
        assert_eq!(n.decoded_slashes(), "/admin/x");
        assert!(normalize("/\\admin/x").unwrap().encoded_slash);
    }

    #[test]
    fn refused_forms() {
        assert_eq!(norm(""), Err(PathError::NotAPath));
        assert_eq!(norm("*"), Err(PathError::NotAPath));
        assert_eq!(norm("example.com:443"), Err(PathError::NotAPath));
        for p in [
            "/a/../b",
            "/a/%2e%2E/b",
            "/./a",
            "/a/.",
            "/a%2f..%2fb",
            "/a\\..\\b",
            "/%2e",
        ] {
            assert_eq!(norm(p), Err(PathError::DotSegment), "{p}");
        }
        assert_eq!(norm("/a%00b"), Err(PathError::Nul));
        for p in ["/a%", "/a%4", "/a%zz", "/%%30"] {
            assert_eq!(norm(p), Err(PathError::BadEscape), "{p}");
        }
        assert!(norm("/a/..b/c.d").is_ok());
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/%61/%2f/%c3%a9//x", "/a%20b//c", "/%7e/"] {
            let once = norm(p).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn multibyte_characters_survive() {
        assert_eq!(norm("/é//ü%41").unwrap(), "/é/üA");
        assert_eq!(normalize("/é%2Fü").unwrap().decoded_slashes(), "/é/ü");
    }
}
