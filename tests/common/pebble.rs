//! A real Pebble (Let's Encrypt's test ACME CA, Debian's `pebble`) on
//! loopback for the automatic-HTTPS tests.
//!
//! Debian ships no certificate for Pebble's own HTTPS, so one is made here
//! (a CA and a leaf for 127.0.0.1/localhost; the gateway trusts the CA
//! with `ca_file`). Pebble's validation authority connects to the ports
//! given to `start` (`httpPort`, `tlsPort`) and resolves names through
//! `pebble-challtestsrv`, a DNS server that answers 127.0.0.1 for every
//! name, so test domains look like real ones (`gw.test`). Pebble makes a
//! new issuing root at every start: `issuing_roots_pem` fetches it from
//! the management interface.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bin::free_port;

pub struct Pebble {
    dir: tempfile::TempDir,
    port: u16,
    management: u16,
    dns: u16,
    pebble: Option<Child>,
    dns_server: Option<Child>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in [self.pebble.as_mut(), self.dns_server.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn installed() -> bool {
    Command::new("pebble")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Pebble {
    /// Pebble validating http-01 on `http_port` and tls-alpn-01 on
    /// `tls_port` of 127.0.0.1; None (with a note) when not installed.
    pub async fn start(http_port: u16, tls_port: u16) -> Option<Pebble> {
        if !installed() {
            eprintln!("pebble is not installed (apt-get install pebble): ACME test skipped");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Pebble's HTTPS: a CA (what the gateway trusts) and a leaf.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
        let (port, management, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let mut p = Pebble {
            dir,
            port,
            management,
            dns,
            pebble: None,
            dns_server: None,
        };
        let log = std::fs::File::create(p.dir.path().join("challtestsrv.log")).unwrap();
        p.dns_server = Some(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{}", free_port())])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        p.restart().await;
        Some(p)
    }

    /// Starts Pebble (again) on the same ports and config; waits for its
    /// directory.
    pub async fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pebble.log"))
            .unwrap();
        self.pebble = Some(
            Command::new("pebble")
                .arg("-config")
                .arg(self.dir.path().join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns)])
                // No random sleeps before validating, every nonce good,
                // every order validated afresh.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let t0 = Instant::now();
        loop {
            if let Ok(body) = self.get(self.port, "/dir").await {
                if body.contains("newOrder") {
                    return;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "pebble did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops Pebble (its DNS server stays): the CA is down.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA of Pebble's own HTTPS certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The root this run of Pebble issues under (PEM).
    pub async fn issuing_roots_pem(&self) -> String {
        self.get(self.management, "/roots/0").await.unwrap()
    }

    /// GET over HTTPS on 127.0.0.1:`port`, trusting `ca_file`: the body.
    async fn get(&self, port: u16, path: &str) -> Result<String, String> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(self.ca_file()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut s = tokio::time::timeout(Duration::from_secs(5), tls.connect(name, tcp))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).to_string();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no response")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(head.to_string());
        }
        Ok(body.to_string())
    }
}
