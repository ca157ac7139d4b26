//! Header rules for proxied messages, one set for every path: the
//! upstream request head (`write_request_head`: hop-by-hop and
//! Connection-named headers, framing, Host, X-Forwarded-*, X-Real-IP,
//! X-Request-Id, identity, Authorization) and hop-by-hop removal from
//! response header maps (RFC 9110 7.6.1).

use http::header::{self, HeaderMap, HeaderName};
use std::net::IpAddr;

use crate::wire::header as line;
pub use crate::wire::{Name, HOP_BY_HOP};

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

/// The real client address: the peer, or, when the peer is a trusted proxy,
/// the rightmost X-Forwarded-For entry that is not itself a trusted proxy
/// (entries left of it could have been written by the client). `xff`: the
/// values of every X-Forwarded-For header, in order.
pub fn client_ip<'h>(
    peer: IpAddr,
    xff: impl Iterator<Item = &'h [u8]>,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = xff
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// `Forwarded` and every `X-Forwarded-*` (any case, `_` for `-`): from an
/// untrusted client none is passed on, not only those the gateway sets
/// (`X-Forwarded-Port`, `-Prefix`, `-Ssl` are believed by some frameworks).
fn forwarded_family(n: &[u8]) -> bool {
    const PREFIX: &[u8] = b"x-forwarded-";
    let folded = |a: u8, b: u8| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-');
    (n.len() > PREFIX.len() && n.iter().zip(PREFIX).all(|(&a, &b)| folded(a, b)))
        || n.eq_ignore_ascii_case(b"forwarded")
}

/// What the gateway knows about a request and its client, for the
/// upstream request head.
pub struct Forwarding<'a> {
    pub method: &'a http::Method,
    /// The path the upstream receives (normalised, prefix stripped).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The host the client asked for: an absolute-form target's or
    /// HTTP/2's authority, else the Host header.
    pub host: Option<&'a [u8]>,
    /// Send `host` as Host (else `server_host`).
    pub preserve_host: bool,
    /// The upstream server's own authority.
    pub server_host: &'a [u8],
    /// The client's address (canonical: IPv4 stays IPv4).
    pub peer_ip: &'a str,
    pub tls: bool,
    /// The peer is in `trusted_proxies`: its X-Forwarded-* values are
    /// believed (X-Forwarded-For appended to, the others kept).
    pub trusted: bool,
    /// Pass the client's Authorization header on.
    pub forward_token: bool,
    pub request_id: &'a [u8],
    /// An HTTP/1.1 upgrade: the `Upgrade` value to ask the upstream for.
    pub upgrade: Option<&'a [u8]>,
    /// Header names the request's Connection header lists (hop-by-hop
    /// for this message), found by the caller's scan of the fields.
    pub connection_named: &'a [&'a [u8]],
}

/// Writes the upstream request line and header fields into `out`, without
/// framing headers, identity headers or the blank line (the executor adds
/// those, as it knows the body). The one set of request header rules:
///
/// - SECURITY: identity headers the client sent (`is_identity`, any case,
///   `_` for `-`) are never passed on.
/// - Hop-by-hop headers, those the Connection header names, Expect and the
///   framing headers go (the body is framed anew for the upstream).
/// - SECURITY: a name that only becomes one of the names above, or a
///   forwarding name, once `_` is read as `-` (`Content_Length`,
///   `X_Forwarded_For`) is dropped: CGI/WSGI servers merge the two.
/// - SECURITY: X-Forwarded-For/-Proto/-Host and X-Real-IP are set by the
///   gateway; only a trusted proxy's values survive. X-Forwarded-For from
///   anyone else is replaced, not appended to, so an upstream reading its
///   first entry cannot be fooled.
/// - Host is the client's (`preserve_host`) or the server's; X-Request-Id
///   is the request's id.
pub fn write_request_head<'h>(
    out: &mut Vec<u8>,
    f: &Forwarding<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    is_identity: impl Fn(&[u8]) -> bool,
) {
    out.extend_from_slice(f.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(f.path.as_bytes());
    if let Some(q) = f.query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = match f.host {
        Some(h) if f.preserve_host => h,
        _ => f.server_host,
    };
    line(out, b"host", host);

    let named = f.connection_named;
    let mut prior_xff: Vec<&[u8]> = Vec::new();
    let (mut kept_proto, mut kept_host, mut kept_real_ip) = (false, false, false);
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (n, v) in headers {
        let name = Name::of(n);
        if name == Name::Other && n.contains(&b'_') && Name::of_folded(n) != Name::Other {
            continue;
        }
        if name.is_hop_by_hop()
            || matches!(name, Name::ContentLength | Name::Expect)
            || named.iter().any(|c| c.eq_ignore_ascii_case(n))
        {
            continue;
        }
        if f.trusted {
            if name == Name::XForwardedFor {
                let visible = v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
                let v = v.trim_ascii();
                if visible && !v.is_empty() {
                    prior_xff.push(v);
                }
                continue;
            }
            let kept = match name {
                Name::XForwardedProto => Some(&mut kept_proto),
                Name::XForwardedHost => Some(&mut kept_host),
                Name::XRealIp => Some(&mut kept_real_ip),
                _ => None,
            };
            if let Some(kept) = kept {
                *kept = true;
                line(out, n, v);
                continue;
            }
        }
        if name.is_forwarding()
            || (!f.forward_token && name == Name::Authorization)
            || is_identity(n)
            || (!f.trusted && forwarded_family(n))
        {
            continue;
        }
        // HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one
        // (RFC 9113 8.2.3).
        if n.eq_ignore_ascii_case(b"cookie") {
            cookies.push(v);
            continue;
        }
        line(out, n, v);
    }
    if !cookies.is_empty() {
        line(out, b"cookie", &cookies.join(&b"; "[..]));
    }
    if prior_xff.is_empty() {
        line(out, b"x-forwarded-for", f.peer_ip.as_bytes());
    } else {
        let mut chain = prior_xff.join(&b", "[..]);
        chain.extend_from_slice(b", ");
        chain.extend_from_slice(f.peer_ip.as_bytes());
        line(out, b"x-forwarded-for", &chain);
    }
    if !kept_proto {
        line(
            out,
            b"x-forwarded-proto",
            if f.tls { b"https" } else { b"http" },
        );
    }
    if !kept_host {
        if let Some(h) = f.host {
            line(out, b"x-forwarded-host", h);
        }
    }
    if !kept_real_ip {
        line(out, b"x-real-ip", f.peer_ip.as_bytes());
    }
    line(out, b"x-request-id", f.request_id);
    if let Some(u) = f.upgrade {
        line(out, b"connection", b"upgrade");
        line(out, b"upgrade", u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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

    fn head(pairs: &[(&str, &str)], trusted: bool) -> String {
        let f = Forwarding {
            method: &http::Method::GET,
            path: "/x",
            query: Some("a=1"),
            host: Some(b"example.com"),
            preserve_host: true,
            server_host: b"up:80",
            peer_ip: "10.1.2.3",
            tls: false,
            trusted,
            forward_token: false,
            request_id: b"rid",
            upgrade: None,
            connection_named: &[b"X-Secret"],
        };
        let mut out = Vec::new();
        let it = pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        write_request_head(&mut out, &f, it, |n| n.eq_ignore_ascii_case(b"x-user-id"));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn untrusted_forwarded_values_are_replaced() {
        let h = head(
            &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("x-real-ip", "6.6.6.6"),
                ("x-forwarded-host", "evil"),
                ("X_Forwarded_For", "6.6.6.6"),
                ("X-Forwarded-Port", "1"),
                ("x_forwarded_prefix", "/evil"),
                ("Forwarded", "for=6.6.6.6"),
                ("Host", "evil"),
                ("x-request-id", "evil"),
                ("Authorization", "Bearer x"),
                ("X-User-Id", "admin"),
                ("Accept", "*/*"),
            ],
            false,
        );
        assert_eq!(
            h,
            "GET /x?a=1 HTTP/1.1\r\nhost: example.com\r\nAccept: */*\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: example.com\r\nx-real-ip: 10.1.2.3\r\nx-request-id: rid\r\n"
        );
    }

    #[test]
    fn framing_and_hop_by_hop_names_go_in_every_spelling() {
        let h = head(
            &[
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "1"),
                ("Content-Length", "5"),
                ("Content_Length", "5"),
                ("Transfer_Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
                ("Keep_Alive", "1"),
                ("Proxy_Connection", "1"),
                ("TE", "trailers"),
                ("Expect", "100-continue"),
                ("Upgrade", "websocket"),
                ("X_Custom", "kept"),
            ],
            false,
        );
        assert!(h.contains("X_Custom: kept\r\n"), "{h}");
        for gone in [
            "Secret", "Length", "Encoding", "Keep", "Proxy", "TE:", "Expect", "Upgrade",
        ] {
            assert!(!h.contains(gone), "{gone} in {h}");
        }
    }

    #[test]
    fn trusted_forwarded_for_is_appended_to() {
        let h = head(
            &[
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
                ("x-forwarded-for", "3.3.3.3"),
                ("x-forwarded-proto", "https"),
            ],
            true,
        );
        assert!(
            h.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3\r\n"),
            "{h}"
        );
        assert!(h.contains("x-forwarded-proto: https\r\n") && !h.contains("proto: http\r\n"));
    }

    #[test]
    fn cookies_are_joined() {
        let h = head(&[("cookie", "a=1"), ("cookie", "b=2")], false);
        assert!(h.contains("cookie: a=1; b=2\r\n"), "{h}");
    }

    #[test]
    fn client_ip_behind_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = || std::iter::once(&b"6.6.6.6, 1.2.3.4, 10.0.0.7"[..]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), xff(), &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("8.8.8.8".parse().unwrap(), xff(), &trusted),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), std::iter::empty(), &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
