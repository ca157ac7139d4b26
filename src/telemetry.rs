//! Logging: the tracing subscriber (text or JSON, RUST_LOG overrides the
//! level) and the access-log line, one per request, written when the
//! response body has been sent (so bytes and total time are final).

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Precedence: RUST_LOG > `[log] level`.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into files or Docker logs.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second init (tests start several servers) is not an error.
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// One request's facts, collected along the path and logged at the end.
#[derive(Debug)]
pub struct AccessRecord {
    pub peer: SocketAddr,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub request_id: String,
    pub start: Instant,
    /// Time until the upstream's response headers, for proxied requests.
    pub upstream_time: Option<Duration>,
    /// Why the gateway answered with an error, when it did.
    pub error: Option<String>,
}

impl AccessRecord {
    /// Writes the access-log line (target `access`, so RUST_LOG can filter it).
    pub fn log(&self, bytes: u64) {
        let total_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream_time.map(|d| d.as_secs_f64() * 1000.0);
        match &self.error {
            Some(err) if self.status >= 500 => tracing::warn!(
                target: "access",
                client = %self.peer.ip(),
                method = %self.method,
                path = %self.path,
                status = self.status,
                bytes,
                total_ms = format_args!("{total_ms:.3}"),
                upstream_ms = upstream_ms.map(|m| format!("{m:.3}")).as_deref().unwrap_or("-"),
                request_id = %self.request_id,
                error = %err,
                "request"
            ),
            _ => tracing::info!(
                target: "access",
                client = %self.peer.ip(),
                method = %self.method,
                path = %self.path,
                status = self.status,
                bytes,
                total_ms = format_args!("{total_ms:.3}"),
                upstream_ms = upstream_ms.map(|m| format!("{m:.3}")).as_deref().unwrap_or("-"),
                request_id = %self.request_id,
                "request"
            ),
        }
    }
}
