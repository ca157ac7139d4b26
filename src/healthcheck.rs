//! `gateway healthcheck`: a tiny HTTP/1.1 probe of the health endpoint, so
//! an image needs no curl. Against a loopback address the TLS certificate is
//! not verified (it is our own listener; its name rarely matches 127.0.0.1).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

/// Where to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid URL {0:?} (expected http(s)://HOST[:PORT]/PATH)")]
    BadUrl(String),
    #[error("cannot reach {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("TLS failed")]
    Tls(#[source] rustls::Error),
    #[error("no HTTP status line in the answer")]
    BadAnswer,
}

impl Target {
    /// The listener to probe from a config: the plain listener when there is
    /// one (the health path is exempt from redirects), else the main one.
    pub fn from_config(c: &Config) -> Target {
        let (addr, https) = match c.server.http_listen {
            Some(a) => (a, false),
            None => (c.server.listen, c.tls.is_some()),
        };
        let ip = match addr.ip() {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Target {
            https,
            host: ip.to_string(),
            port: addr.port(),
            path: c.server.health_path.clone(),
        }
    }

    pub fn from_url(url: &str) -> Result<Target, ProbeError> {
        let bad = || ProbeError::BadUrl(url.to_string());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri.host().ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Target {
            https,
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string()),
        })
    }
}

/// Fetches the target and returns the HTTP status code.
pub fn probe(t: &Target, timeout: Duration) -> Result<u16, ProbeError> {
    let (mut tcp, addr) = connect(t, timeout)?;
    tcp.set_read_timeout(Some(timeout)).ok();
    tcp.set_write_timeout(Some(timeout)).ok();
    let host_header = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: gateway-healthcheck\r\nConnection: close\r\n\r\n",
        t.path, host_header, t.port
    );
    let mut answer = Vec::new();
    if t.https {
        let config = client_config(addr.ip().is_loopback());
        let name =
            ServerName::try_from(t.host.clone()).map_err(|_| ProbeError::BadUrl(t.host.clone()))?;
        let conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(ProbeError::Tls)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(request.as_bytes())
            .map_err(|e| ProbeError::Connect(addr.to_string(), e))?;
        read_head(&mut tls, &mut answer);
    } else {
        tcp.write_all(request.as_bytes())
            .map_err(|e| ProbeError::Connect(addr.to_string(), e))?;
        read_head(&mut tcp, &mut answer);
    }
    parse_status(&answer).ok_or(ProbeError::BadAnswer)
}

/// Connects to the first address of the host that answers: `localhost`
/// may resolve to ::1 first while the gateway listens on IPv4 only.
fn connect(t: &Target, timeout: Duration) -> Result<(TcpStream, SocketAddr), ProbeError> {
    let addrs: Vec<SocketAddr> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| ProbeError::Connect(t.host.clone(), e))?
        .collect();
    let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => return Ok((tcp, addr)),
            Err(e) => last = e,
        }
    }
    Err(ProbeError::Connect(format!("{}:{}", t.host, t.port), last))
}

/// Reads until the status line is in (or the peer stops).
fn read_head(r: &mut impl Read, out: &mut Vec<u8>) {
    let mut buf = [0u8; 1024];
    while !out.windows(2).any(|w| w == b"\r\n") && out.len() < 8192 {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn parse_status(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The probe's client: no certificate verification against loopback (our
/// own listener), Mozilla's roots elsewhere.
pub fn client_config(loopback: bool) -> ClientConfig {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| ClientConfig::builder());
    if loopback {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    }
}

/// Accepts any certificate: only used against our own loopback listener.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::from_url("https://127.0.0.1:8443/healthz").unwrap();
        assert_eq!(
            t,
            Target {
                https: true,
                host: "127.0.0.1".into(),
                port: 8443,
                path: "/healthz".into()
            }
        );
        assert_eq!(Target::from_url("http://[::1]/h").unwrap().host, "::1");
        assert!(Target::from_url("ftp://x/").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"garbage"), None);
    }
}
