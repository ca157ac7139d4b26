//! Logging: the tracing subscriber (text or JSON, RUST_LOG overrides the
//! level) and the access-log line, one per request, written when the
//! response body has been sent (so bytes and total time are final).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

use crate::wire::Name;

/// `[log] format = "combined"`: access lines go to stdout in nginx's format.
static COMBINED: AtomicBool = AtomicBool::new(false);

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
    COMBINED.store(cfg.format == LogFormat::Combined, Ordering::Relaxed);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text | LogFormat::Combined => builder.try_init(),
    };
}

/// What the access log says about a request, read from its head only when
/// the log is on; both executors gather it with this one function.
#[derive(Debug, Default)]
pub struct RequestInfo {
    /// The target as the client sent it (path and query).
    pub target: String,
    pub version: &'static str,
    /// The real client: through `trusted_proxies`, the first address of
    /// `X-Forwarded-For` they vouch for; else the TCP peer.
    pub client: Option<IpAddr>,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
}

impl RequestInfo {
    pub fn gather<'h>(
        target: &str,
        version: http::Version,
        peer: IpAddr,
        authority: Option<&[u8]>,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
        trusted: &[ipnet::IpNet],
    ) -> RequestInfo {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let first = |want: &[u8]| {
            headers
                .clone()
                .find(|(n, _)| n.eq_ignore_ascii_case(want))
                .map(|(_, v)| text(v))
        };
        let xff = headers
            .clone()
            .filter(|(n, _)| Name::of(n) == Name::XForwardedFor)
            .map(|(_, v)| v);
        RequestInfo {
            target: target.to_string(),
            version: match version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                _ => "HTTP/1.1",
            },
            client: Some(crate::proxy::headers::client_ip(
                peer.to_canonical(),
                xff,
                trusted,
            )),
            host: authority.map(text).or_else(|| first(b"host")),
            user_agent: first(b"user-agent"),
            referer: first(b"referer"),
        }
    }
}

/// One request's facts, collected along the path and logged at the end.
#[derive(Debug)]
pub struct AccessRecord {
    /// The route's metrics: every request is counted there when it ends,
    /// logged or not.
    pub route: &'static crate::metrics::RouteMetrics,
    pub peer: SocketAddr,
    pub method: http::Method,
    pub info: RequestInfo,
    pub status: u16,
    pub request_id: String,
    pub start: Instant,
    /// Time until the upstream's response headers, for proxied requests.
    pub upstream_time: Option<Duration>,
    /// The upstream server that answered (`host:port` or `unix:/path`).
    pub upstream: Option<&'static str>,
    /// The authenticated user, when the route checked a token.
    pub user_id: Option<String>,
    /// The TLS version of the connection, when it has one.
    pub tls: Option<&'static str>,
    /// Why the gateway answered with an error, when it did.
    pub error: Option<String>,
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl AccessRecord {
    /// Writes the access-log line (target `access`, so RUST_LOG can filter
    /// it; or stdout in nginx's combined format). Numbers are numbers;
    /// absent values are left out.
    pub fn log(&self, bytes: u64) {
        if COMBINED.load(Ordering::Relaxed) {
            // The combined line has no room for the cause: stderr has it.
            failed(&self.method, self.status, self.error.as_deref());
            return self.combined(bytes);
        }
        let total_ms = ms(self.start.elapsed());
        let upstream_ms = self.upstream_time.map(ms);
        let client = self.info.client.unwrap_or(self.peer.ip());
        let i = &self.info;
        macro_rules! line {
            ($level:ident $(, $k:ident = $v:expr)*) => {
                tracing::$level!(
                    target: "access",
                    client = %client,
                    peer = %self.peer.ip(),
                    method = %self.method,
                    path = %i.target,
                    status = self.status,
                    bytes,
                    total_ms,
                    upstream_ms,
                    upstream = self.upstream,
                    user_id = self.user_id.as_deref(),
                    user_agent = i.user_agent.as_deref(),
                    host = i.host.as_deref(),
                    request_id = %self.request_id,
                    tls = self.tls,
                    $($k = $v,)*
                    "request"
                )
            };
        }
        match &self.error {
            Some(err) if self.status >= 500 => line!(warn, error = err.as_str()),
            _ => line!(info),
        }
    }

    /// `$remote_addr - $remote_user [$time_local] "$request" $status
    /// $body_bytes_sent "$http_referer" "$http_user_agent"`.
    fn combined(&self, bytes: u64) {
        let i = &self.info;
        let client = i.client.unwrap_or(self.peer.ip());
        let quote = |s: Option<&str>| match s {
            Some(s) => s.replace('\\', "\\\\").replace('"', "\\\""),
            None => "-".to_string(),
        };
        let line = format!(
            "{client} - {} [{}] \"{} {} {}\" {} {bytes} \"{}\" \"{}\"\n",
            self.user_id.as_deref().unwrap_or("-"),
            time_local(std::time::SystemTime::now()),
            self.method,
            quote(Some(&i.target)),
            i.version,
            self.status,
            quote(i.referer.as_deref()),
            quote(i.user_agent.as_deref()),
        );
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// A request the gateway failed (5xx with a cause: upstream unreachable,
/// store unavailable) is logged even with the access log off or in the
/// combined format, as nginx's error log would: an operator must see why.
pub fn failed(method: &http::Method, status: u16, error: Option<&str>) {
    if let Some(error) = error.filter(|_| status >= 500) {
        tracing::warn!(%method, status, error, "request failed");
    }
}

/// nginx's `$time_local` in UTC: `03/Dec/2026:18:10:00 +0000`.
fn time_local(t: std::time::SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_local_is_nginx_format() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_321_400);
        assert_eq!(time_local(t), "03/Dec/2026:18:10:00 +0000");
        assert_eq!(
            time_local(std::time::UNIX_EPOCH),
            "01/Jan/1970:00:00:00 +0000"
        );
    }
}
