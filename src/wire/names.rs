//! Header names the gateway acts on, classified in one pass.

/// The hop-by-hop headers of RFC 9110 7.6.1 (and Proxy-Connection), which
/// every path removes in both directions.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Header names the request path and the proxy act on, told apart with at
/// most two comparisons per header (by length first), so that a request or
/// response head is classified in one pass.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    /// Keep-Alive, TE, Trailer, Proxy-Connection, Proxy-Authenticate,
    /// Proxy-Authorization: the other names of `HOP_BY_HOP`.
    OtherHopByHop,
    Expect,
    Authorization,
    Origin,
    AccessControlRequestMethod,
    XRequestId,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XRealIp,
    Date,
    StrictTransportSecurity,
    Other,
}

impl Name {
    /// Case-insensitive, as header names are. `name` is a parsed header
    /// name (token characters only).
    pub fn of(name: &[u8]) -> Name {
        let is = |s: &str| same_lower(name, s.as_bytes());
        let pick = |a: (&str, Name), b: (&str, Name)| {
            if is(a.0) {
                a.1
            } else if is(b.0) {
                b.1
            } else {
                Name::Other
            }
        };
        let none = ("", Name::Other);
        match name.len() {
            2 => pick(("te", Name::OtherHopByHop), none),
            4 => pick(("host", Name::Host), ("date", Name::Date)),
            6 => pick(("origin", Name::Origin), ("expect", Name::Expect)),
            7 => pick(("upgrade", Name::Upgrade), ("trailer", Name::OtherHopByHop)),
            9 => pick(("x-real-ip", Name::XRealIp), none),
            10 => pick(
                ("connection", Name::Connection),
                ("keep-alive", Name::OtherHopByHop),
            ),
            12 => pick(("x-request-id", Name::XRequestId), none),
            13 => pick(("authorization", Name::Authorization), none),
            14 => pick(("content-length", Name::ContentLength), none),
            15 => pick(("x-forwarded-for", Name::XForwardedFor), none),
            16 => pick(
                ("x-forwarded-host", Name::XForwardedHost),
                ("proxy-connection", Name::OtherHopByHop),
            ),
            17 => pick(
                ("transfer-encoding", Name::TransferEncoding),
                ("x-forwarded-proto", Name::XForwardedProto),
            ),
            18 => pick(("proxy-authenticate", Name::OtherHopByHop), none),
            19 => pick(("proxy-authorization", Name::OtherHopByHop), none),
            25 => pick(
                ("strict-transport-security", Name::StrictTransportSecurity),
                none,
            ),
            29 => pick(
                (
                    "access-control-request-method",
                    Name::AccessControlRequestMethod,
                ),
                none,
            ),
            _ => Name::Other,
        }
    }

    /// Like `of`, with `_` read as `-`: `Content_Length` is
    /// `ContentLength` here. Some servers (CGI/WSGI) fold `_` and `-` to
    /// the same variable, so such a spelling must never slip past a rule
    /// made for the real name.
    pub fn of_folded(name: &[u8]) -> Name {
        if !name.contains(&b'_') {
            return Name::of(name);
        }
        let mut buf = [0u8; 32];
        let Some(dst) = buf.get_mut(..name.len()) else {
            return Name::Other;
        };
        for (d, s) in dst.iter_mut().zip(name) {
            *d = if *s == b'_' { b'-' } else { *s };
        }
        Name::of(dst)
    }

    /// One of `HOP_BY_HOP`.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection | Name::TransferEncoding | Name::Upgrade | Name::OtherHopByHop
        )
    }

    /// Set by the gateway on the upstream request, whatever the client sent
    /// (X-Forwarded-*, X-Real-IP from a trusted proxy are kept).
    pub fn is_forwarding(self) -> bool {
        matches!(
            self,
            Name::Host
                | Name::XForwardedFor
                | Name::XForwardedProto
                | Name::XForwardedHost
                | Name::XRealIp
                | Name::XRequestId
        )
    }
}

/// Whether header name `name` is `lower` (lowercase letters and '-') in
/// any case, eight bytes at a time. ORing 0x20 lowercases a letter and
/// keeps '-'; the only other bytes it maps onto those (CR onto '-') are
/// not token characters.
fn same_lower(name: &[u8], lower: &[u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    let mut a = name.chunks_exact(8);
    let mut b = lower.chunks_exact(8);
    for (x, y) in a.by_ref().zip(b.by_ref()) {
        let (Ok(x), Ok(y)) = (<[u8; 8]>::try_from(x), <[u8; 8]>::try_from(y)) else {
            return false;
        };
        if u64::from_ne_bytes(x) | 0x2020_2020_2020_2020 != u64::from_ne_bytes(y) {
            return false;
        }
    }
    a.remainder()
        .iter()
        .zip(b.remainder())
        .all(|(x, y)| x | 0x20 == *y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified_in_any_case() {
        for n in HOP_BY_HOP {
            assert!(Name::of(n.as_bytes()).is_hop_by_hop(), "{n}");
            assert!(Name::of(n.to_uppercase().as_bytes()).is_hop_by_hop(), "{n}");
            let folded = n.replace('-', "_");
            assert!(
                Name::of_folded(folded.as_bytes()).is_hop_by_hop(),
                "{folded}"
            );
        }
        assert_eq!(Name::of_folded(b"Content_Length"), Name::ContentLength);
        assert_eq!(Name::of_folded(b"X_Forwarded_For"), Name::XForwardedFor);
        assert_eq!(Name::of_folded(b"Content_Type"), Name::Other);
        let named = [
            ("Host", Name::Host),
            ("content-LENGTH", Name::ContentLength),
            ("Expect", Name::Expect),
            ("Authorization", Name::Authorization),
            ("Origin", Name::Origin),
            (
                "Access-Control-Request-Method",
                Name::AccessControlRequestMethod,
            ),
            ("X-Request-Id", Name::XRequestId),
            ("X-Forwarded-For", Name::XForwardedFor),
            ("X-Forwarded-Proto", Name::XForwardedProto),
            ("X-Forwarded-Host", Name::XForwardedHost),
            ("X-Real-IP", Name::XRealIp),
            ("Date", Name::Date),
            ("Strict-Transport-Security", Name::StrictTransportSecurity),
        ];
        for (n, want) in named {
            assert_eq!(Name::of(n.as_bytes()), want, "{n}");
            assert!(!want.is_hop_by_hop());
        }
        for other in [
            "",
            "x",
            "hostx",
            "x-user-id",
            "content-type",
            "tex",
            "dates",
        ] {
            assert_eq!(Name::of(other.as_bytes()), Name::Other, "{other}");
        }
    }
}
