//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! One process-wide registry. Label values are bounded: routes and
//! upstreams by their config names, servers by their configured address,
//! methods from a fixed list, statuses by class; never raw paths or client
//! input. Hot-path labels are `&'static str` (config names interned once),
//! so counting a request allocates nothing.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Instant;

type Static2 = [(&'static str, &'static str); 2];
type Static3 = [(&'static str, &'static str); 3];
type Static1 = [(&'static str, &'static str); 1];
type Dynamic = Vec<(&'static str, String)>;
type Latency = Family<Static1, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

struct Metrics {
    registry: Registry,
    requests: Family<Static3, Counter>,
    request_seconds: Latency,
    upstream_seconds: Latency,
    upstream_errors: Family<Dynamic, Counter>,
    upstream_up: Family<Dynamic, Gauge>,
    auth: Family<Static1, Counter>,
    tokens: Family<Static1, Counter>,
    logins: Family<Static1, Counter>,
    connections: Family<Static2, Gauge>,
    tls_failures: Counter,
    jwks_fetches: Family<Dynamic, Counter>,
    jwks_age: Family<Dynamic, Gauge<f64, AtomicU64>>,
    store_errors: Counter,
    acme_orders: Family<Dynamic, Counter>,
    acme_expiry: Family<Dynamic, Gauge>,
    /// Issuer -> when its keys were last fetched, for the age gauge.
    jwks_fetched: Mutex<BTreeMap<String, Instant>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("gateway");
    let m = Metrics {
        requests: Family::default(),
        request_seconds: Family::new_with_constructor(latency as fn() -> Histogram),
        upstream_seconds: Family::new_with_constructor(latency as fn() -> Histogram),
        upstream_errors: Family::default(),
        upstream_up: Family::default(),
        auth: Family::default(),
        tokens: Family::default(),
        logins: Family::default(),
        connections: Family::default(),
        tls_failures: Counter::default(),
        jwks_fetches: Family::default(),
        jwks_age: Family::default(),
        store_errors: Counter::default(),
        acme_orders: Family::default(),
        acme_expiry: Family::default(),
        jwks_fetched: Mutex::new(BTreeMap::new()),
        registry: Registry::default(),
    };
    registry.register(
        "requests",
        "Requests answered, by route (config path), method and status class",
        m.requests.clone(),
    );
    registry.register(
        "request_duration_seconds",
        "Time from the request head until the response has been sent, by route",
        m.request_seconds.clone(),
    );
    registry.register(
        "upstream_duration_seconds",
        "Time until the upstream's response head, by upstream",
        m.upstream_seconds.clone(),
    );
    registry.register(
        "upstream_errors",
        "Upstream failures by upstream, server and kind (connect, timeout, reset, bad_response)",
        m.upstream_errors.clone(),
    );
    registry.register(
        "upstream_server_up",
        "1 when the server may be picked (passive and active health), else 0",
        m.upstream_up.clone(),
    );
    registry.register(
        "auth",
        "Edge authentication outcomes (ok, missing, invalid, expired, revoked, forbidden)",
        m.auth.clone(),
    );
    registry.register(
        "tokens",
        "Token routes: tokens issued (logins), refreshed, blacklisted",
        m.tokens.clone(),
    );
    registry.register(
        "logins",
        "Login outcomes (succeeded, failed, rate_limited)",
        m.logins.clone(),
    );
    registry.register(
        "open_connections",
        "Client connections open, by listener (main, http) and protocol",
        m.connections.clone(),
    );
    registry.register(
        "tls_handshake_failures",
        "TLS handshakes that failed or timed out",
        m.tls_failures.clone(),
    );
    registry.register(
        "jwks_fetches",
        "JWKS fetches of trusted issuers, by issuer and result (ok, error)",
        m.jwks_fetches.clone(),
    );
    registry.register(
        "jwks_age_seconds",
        "Seconds since the keys in use were fetched, by issuer",
        m.jwks_age.clone(),
    );
    registry.register(
        "store_errors",
        "Store operations that failed",
        m.store_errors.clone(),
    );
    registry.register(
        "acme_orders",
        "ACME certificate orders, by domain (the first named) and result (ok, error)",
        m.acme_orders.clone(),
    );
    registry.register(
        "acme_certificate_expiry_timestamp_seconds",
        "When the ACME certificate being served expires (Unix time), by domain",
        m.acme_expiry.clone(),
    );
    Metrics { registry, ..m }
});

static INTERNED: LazyLock<Mutex<HashSet<&'static str>>> =
    LazyLock::new(|| Mutex::new(HashSet::new()));

/// A config name as a `&'static str` label, stored once per distinct name
/// (route paths and upstream names: bounded by the configs ever loaded).
pub fn intern(name: &str) -> &'static str {
    let Ok(mut set) = INTERNED.lock() else {
        return "other";
    };
    if let Some(s) = set.get(name) {
        return s;
    }
    let s: &'static str = Box::leak(name.to_string().into_boxed_str());
    set.insert(s);
    s
}

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::PATCH => 4,
        http::Method::DELETE => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One route's request metrics, resolved once: counting a request touches
/// two atomics, with no label hashing or lock.
pub struct RouteMetrics {
    label: &'static str,
    counters: [OnceLock<Counter>; METHODS.len() * CLASSES.len()],
    latency: Histogram,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label)
    }
}

static ROUTES: LazyLock<Mutex<HashMap<&'static str, &'static RouteMetrics>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The metrics of the route labelled `name` (its config path, "tokens" or
/// "none"); made once per distinct name and kept for the process.
pub fn route(name: &str) -> &'static RouteMetrics {
    let label = intern(name);
    let Ok(mut map) = ROUTES.lock() else {
        // Poisoned: count under a fresh handle rather than not at all.
        return Box::leak(Box::new(new_route(label)));
    };
    map.entry(label)
        .or_insert_with(|| Box::leak(Box::new(new_route(label))))
}

fn new_route(label: &'static str) -> RouteMetrics {
    RouteMetrics {
        label,
        counters: std::array::from_fn(|_| OnceLock::new()),
        latency: METRICS
            .request_seconds
            .get_or_create(&[("route", label)])
            .clone(),
    }
}

/// One request, once its response has been sent.
pub fn request(route: &RouteMetrics, method: &http::Method, status: u16, seconds: f64) {
    let (m, c) = (method_index(method), class_index(status));
    route.counters[m * CLASSES.len() + c]
        .get_or_init(|| {
            METRICS
                .requests
                .get_or_create(&[
                    ("route", route.label),
                    ("method", METHODS[m]),
                    ("status", CLASSES[c]),
                ])
                .clone()
        })
        .inc();
    route.latency.observe(seconds);
}

/// An upstream's latency histogram, resolved once per upstream.
pub fn upstream_latency(upstream: &'static str) -> Histogram {
    METRICS
        .upstream_seconds
        .get_or_create(&[("upstream", upstream)])
        .clone()
}

/// `kind`: connect, timeout, reset or bad_response.
pub fn upstream_error(upstream: &str, server: &str, kind: &'static str) {
    METRICS
        .upstream_errors
        .get_or_create(&vec![
            ("upstream", upstream.to_string()),
            ("server", server.to_string()),
            ("kind", kind.to_string()),
        ])
        .inc();
}

pub fn upstream_health(upstream: &str, server: &str, up: bool) {
    METRICS
        .upstream_up
        .get_or_create(&vec![
            ("upstream", upstream.to_string()),
            ("server", server.to_string()),
        ])
        .set(i64::from(up));
}

const OUTCOMES: [&str; 6] = [
    "ok",
    "missing",
    "invalid",
    "expired",
    "revoked",
    "forbidden",
];

/// `outcome`: ok, missing, invalid, expired, revoked, forbidden.
pub fn auth(outcome: &'static str) {
    static HANDLES: LazyLock<Vec<Counter>> = LazyLock::new(|| {
        OUTCOMES
            .iter()
            .map(|o| METRICS.auth.get_or_create(&[("outcome", *o)]).clone())
            .collect()
    });
    match OUTCOMES.iter().position(|o| *o == outcome) {
        Some(i) => {
            HANDLES[i].inc();
        }
        None => {
            METRICS.auth.get_or_create(&[("outcome", outcome)]).inc();
        }
    }
}

/// `event`: issued, refreshed, blacklisted.
pub fn tokens(event: &'static str) {
    METRICS.tokens.get_or_create(&[("event", event)]).inc();
}

/// `outcome`: succeeded, failed, rate_limited.
pub fn login(outcome: &'static str) {
    METRICS.logins.get_or_create(&[("outcome", outcome)]).inc();
}

/// Counts an open connection until the guard drops; `protocol` may be
/// refined once known (`set_protocol`).
pub struct Connection {
    listener: &'static str,
    protocol: &'static str,
}

impl Connection {
    pub fn open(listener: &'static str, protocol: &'static str) -> Connection {
        METRICS
            .connections
            .get_or_create(&[("listener", listener), ("protocol", protocol)])
            .inc();
        Connection { listener, protocol }
    }

    pub fn set_protocol(&mut self, protocol: &'static str) {
        if protocol != self.protocol {
            let c = &METRICS.connections;
            c.get_or_create(&[("listener", self.listener), ("protocol", self.protocol)])
                .dec();
            c.get_or_create(&[("listener", self.listener), ("protocol", protocol)])
                .inc();
            self.protocol = protocol;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        METRICS
            .connections
            .get_or_create(&[("listener", self.listener), ("protocol", self.protocol)])
            .dec();
    }
}

pub fn tls_handshake_failed() {
    METRICS.tls_failures.inc();
}

pub fn jwks_fetch(issuer: &str, ok: bool) {
    let m = &*METRICS;
    m.jwks_fetches
        .get_or_create(&vec![
            ("issuer", issuer.to_string()),
            ("result", if ok { "ok" } else { "error" }.to_string()),
        ])
        .inc();
    if ok {
        if let Ok(mut t) = m.jwks_fetched.lock() {
            t.insert(issuer.to_string(), Instant::now());
        }
    }
}

pub fn store_error() {
    METRICS.store_errors.inc();
}

pub fn acme_order(domain: &str, ok: bool) {
    METRICS
        .acme_orders
        .get_or_create(&vec![
            ("domain", domain.to_string()),
            ("result", if ok { "ok" } else { "error" }.to_string()),
        ])
        .inc();
}

pub fn acme_expiry(domain: &str, unix: i64) {
    METRICS
        .acme_expiry
        .get_or_create(&vec![("domain", domain.to_string())])
        .set(unix);
}

/// The text exposition (OpenMetrics, which Prometheus scrapes).
pub fn render() -> String {
    let m = &*METRICS;
    if let Ok(t) = m.jwks_fetched.lock() {
        for (issuer, at) in t.iter() {
            m.jwks_age
                .get_or_create(&vec![("issuer", issuer.clone())])
                .set(at.elapsed().as_secs_f64());
        }
    }
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &m.registry);
    out
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Requests that matched no route (and those answered before routing).
pub fn route_none() -> &'static RouteMetrics {
    static NONE: LazyLock<&'static RouteMetrics> = LazyLock::new(|| route("none"));
    &NONE
}

/// The token routes.
pub fn route_tokens() -> &'static RouteMetrics {
    static TOKENS: LazyLock<&'static RouteMetrics> = LazyLock::new(|| route("tokens"));
    &TOKENS
}
