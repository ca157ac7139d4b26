//! Header rules for proxied messages: hop-by-hop removal (RFC 9110 7.6.1)
//! and the X-Forwarded-* / X-Real-IP set.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that describe one connection, never the message, plus any the
/// Connection header names. Removed in both directions.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are hop-by-hop too (collect first: we are
    // about to mutate the map).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

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

/// Header names the proxy paths act on, told apart with at most two
/// comparisons per header (by length first), so that a request or
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

/// The `Upgrade` value when this is an HTTP/1.1 upgrade request
/// (`Connection: upgrade` plus `Upgrade: ...`).
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// The real client address: the peer, or, when the peer is a trusted proxy,
/// the rightmost X-Forwarded-For entry that is not itself a trusted proxy
/// (entries left of it could have been written by the client).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// What the gateway knows about the client, for the forwarding headers.
pub struct ClientFacts<'a> {
    pub ip: IpAddr,
    pub tls: bool,
    /// The peer is a trusted proxy: its X-Forwarded-* values are believed.
    pub trusted: bool,
    /// The Host the client asked for.
    pub host: Option<&'a HeaderValue>,
}

/// Sets X-Forwarded-For/-Proto/-Host and X-Real-IP.
///
/// SECURITY: a client can write any of these; only a trusted proxy's values
/// survive. X-Forwarded-For from anyone else is replaced, not appended to,
/// so an upstream reading its first entry cannot be fooled.
pub fn set_forwarded(headers: &mut HeaderMap, facts: &ClientFacts) {
    let ip = facts.ip.to_string();
    let xff = if facts.trusted {
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if prior.is_empty() {
            ip.clone()
        } else {
            format!("{}, {ip}", prior.join(", "))
        }
    } else {
        ip.clone()
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    let keep = |h: &HeaderMap, n: &HeaderName| facts.trusted && h.contains_key(n);
    if !keep(headers, &X_FORWARDED_PROTO) {
        headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if facts.tls { "https" } else { "http" }),
        );
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        match facts.host {
            Some(h) => {
                headers.insert(&X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if !keep(headers, &X_REAL_IP) {
        if let Ok(v) = HeaderValue::from_str(&ip) {
            headers.insert(&X_REAL_IP, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn names_are_classified_in_any_case() {
        for n in HOP_BY_HOP {
            assert!(Name::of(n.as_bytes()).is_hop_by_hop(), "{n}");
            assert!(Name::of(n.to_uppercase().as_bytes()).is_hop_by_hop(), "{n}");
        }
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

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("x-keep", "yes"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn untrusted_forwarded_values_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-host", "evil"),
        ]);
        let host = HeaderValue::from_static("example.com");
        set_forwarded(
            &mut h,
            &ClientFacts {
                ip: "10.1.2.3".parse().unwrap(),
                tls: false,
                trusted: false,
                host: Some(&host),
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn trusted_forwarded_for_is_appended_to() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut h,
            &ClientFacts {
                ip: "10.0.0.1".parse().unwrap(),
                tls: false,
                trusted: true,
                host: None,
            },
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn client_ip_behind_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = map(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("8.8.8.8".parse().unwrap(), &h, &trusted),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &HeaderMap::new(), &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn upgrade_detection() {
        assert!(upgrade_request(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ]))
        .is_some());
        assert!(upgrade_request(&map(&[("upgrade", "websocket")])).is_none());
    }
}
