//! An upstream: one or more servers of the same application, each with its
//! own connection pool and health, picked round robin or by fewest
//! requests in flight among the healthy ones.
//!
//! Health, nginx's way: `max_fails` failures (connect errors, timeouts,
//! broken responses) within `fail_timeout` take a server out for
//! `fail_timeout` (passive); with `health_check`, a probe every `interval`
//! takes it out after `unhealthy` failed probes in a row and brings it
//! back after `healthy` good ones (active). A server is picked only when
//! both say it is up.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::pool::Pool;
use crate::clock::now_ms;
use crate::config::{Balance, UpstreamAddr, UpstreamConfig};

pub struct Upstream {
    pub config: UpstreamConfig,
    /// The name as a metrics label.
    pub label: &'static str,
    /// Time to the response head, resolved once.
    pub latency: prometheus_client::metrics::histogram::Histogram,
    servers: Vec<Server>,
    next: AtomicUsize,
}

pub struct Server {
    pub addr: UpstreamAddr,
    /// Idle connections, for every path: one pool per server.
    pub pool: Arc<Pool>,
    /// The Host header sent when `preserve_host = false`.
    pub host: http::HeaderValue,
    /// `host:port` or `unix:/path`, for logs and metrics.
    pub label: &'static str,
    health: Health,
}

#[derive(Default)]
struct Health {
    /// Requests sent and waiting for their response head (least_conn).
    in_flight: AtomicUsize,
    /// Passive: failures counted since `fails_since`.
    fails: AtomicU32,
    fails_since: AtomicU64,
    /// Passive: out until this time (clock::now_ms).
    down_until: AtomicU64,
    /// Active: the last probes' verdict (true until a probe says otherwise).
    probed_down: AtomicBool,
}

impl Server {
    /// Whether the server may be picked now.
    pub fn is_up(&self) -> bool {
        !self.health.probed_down.load(Ordering::Relaxed)
            && now_ms() >= self.health.down_until.load(Ordering::Relaxed)
    }

    /// A request to it failed (connect, timeout, broken response).
    pub fn failed(&self, up: &UpstreamConfig) {
        // As nginx: a lone server is never taken out by failures (there is
        // nowhere else to send its requests).
        if up.max_fails == 0 || up.servers.len() < 2 {
            return;
        }
        let now = now_ms();
        let window = u64::try_from(up.fail_timeout.as_millis()).unwrap_or(u64::MAX);
        let h = &self.health;
        if now.saturating_sub(h.fails_since.load(Ordering::Relaxed)) > window {
            h.fails.store(0, Ordering::Relaxed);
            h.fails_since.store(now, Ordering::Relaxed);
        }
        if h.fails.fetch_add(1, Ordering::Relaxed) + 1 >= up.max_fails {
            h.fails.store(0, Ordering::Relaxed);
            if h.down_until
                .swap(now.saturating_add(window), Ordering::Relaxed)
                < now
            {
                tracing::warn!(upstream = %up.name, server = %self.label, fail_timeout = %humantime::format_duration(up.fail_timeout), "upstream server taken out after failures");
            }
        }
    }

    /// A response head arrived: the failure count starts over.
    pub fn succeeded(&self) {
        if self.health.fails.load(Ordering::Relaxed) != 0 {
            self.health.fails.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.health.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }
}

pub struct InFlight<'a>(&'a Server);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.health.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let servers = config
            .servers
            .iter()
            .map(|addr| Server {
                addr: addr.clone(),
                pool: Arc::new(Pool::new(addr, config)),
                host: match addr {
                    UpstreamAddr::Tcp { authority } => http::HeaderValue::from_str(authority)
                        .unwrap_or_else(|_| http::HeaderValue::from_static("localhost")),
                    UpstreamAddr::Unix { .. } => http::HeaderValue::from_static("localhost"),
                },
                label: crate::metrics::intern(&match addr {
                    UpstreamAddr::Tcp { authority } => authority.clone(),
                    UpstreamAddr::Unix { path } => format!("unix:{}", path.display()),
                }),
                health: Health::default(),
            })
            .collect();
        Upstream {
            label: crate::metrics::intern(&config.name),
            latency: crate::metrics::upstream_latency(crate::metrics::intern(&config.name)),
            config: config.clone(),
            servers,
            next: AtomicUsize::new(0),
        }
    }

    /// The server for the next request among the healthy ones (None: no
    /// server is up).
    pub fn pick_index(&self) -> Option<usize> {
        self.pick_other(&[])
    }

    /// As `pick_index`, skipping the servers in `tried` (a retry after a
    /// connect failure goes to another server).
    pub fn pick_other(&self, tried: &[usize]) -> Option<usize> {
        let n = self.servers.len();
        if n == 1 {
            return (tried.is_empty() && self.servers[0].is_up()).then_some(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| !tried.contains(i) && self.servers[*i].is_up());
        match self.config.balance {
            Balance::RoundRobin => candidates.into_iter().next(),
            // Ties go round robin (the order starts at a rotating server).
            Balance::LeastConn => {
                candidates.min_by_key(|i| self.servers[*i].health.in_flight.load(Ordering::Relaxed))
            }
        }
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Whether any server is up (readiness).
    pub fn any_up(&self) -> bool {
        self.servers.iter().any(Server::is_up)
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .finish()
    }
}

/// Probes every server of `up` while it is in use (the task ends when the
/// upstream is dropped, e.g. replaced by a reload).
pub fn spawn_health_checks(up: &Arc<Upstream>) {
    let Some(hc) = up.config.health_check.clone() else {
        return;
    };
    for i in 0..up.servers.len() {
        let weak: Weak<Upstream> = Arc::downgrade(up);
        let hc = hc.clone();
        tokio::spawn(async move {
            let (mut good, mut bad) = (0u32, 0u32);
            let mut tick = tokio::time::interval(hc.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(up) = weak.upgrade() else { return };
                let server = &up.servers[i];
                let ok = probe(server, &hc.path, hc.timeout).await;
                let h = &server.health;
                if ok {
                    (good, bad) = (good.saturating_add(1), 0);
                    if good >= hc.healthy {
                        // Probes that pass are evidence enough: they also end
                        // a passive time-out.
                        let was_out = now_ms() < h.down_until.swap(0, Ordering::Relaxed);
                        if h.probed_down.swap(false, Ordering::Relaxed) || was_out {
                            tracing::info!(upstream = %up.config.name, server = %server.label, "upstream server healthy again");
                        }
                    }
                } else {
                    (good, bad) = (0, bad.saturating_add(1));
                    if bad >= hc.unhealthy && !h.probed_down.swap(true, Ordering::Relaxed) {
                        tracing::warn!(upstream = %up.config.name, server = %server.label, path = %hc.path, "upstream server failed its health checks: taken out");
                    }
                }
                crate::metrics::upstream_health(&up.config.name, server.label, server.is_up());
            }
        });
    }
}

/// One `GET path` on a new connection: healthy on a 2xx or 3xx answer
/// within `timeout`.
async fn probe(server: &Server, path: &str, timeout: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut conn = server.pool.connect().await.ok()?.stream;
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: gateway-health-check\r\nconnection: close\r\n\r\n",
            server.host.to_str().unwrap_or("localhost")
        );
        conn.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        // The status line's first 12 bytes: "HTTP/1.1 200".
        while got < 12 {
            let n = conn.read(&mut buf[got..]).await.ok()?;
            if n == 0 {
                return None;
            }
            got += n;
        }
        let status = std::str::from_utf8(&buf[9..12]).ok()?.parse::<u16>().ok()?;
        Some(buf.starts_with(b"HTTP/1.") && (200..400).contains(&status))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}
