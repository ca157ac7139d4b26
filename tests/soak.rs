#![allow(clippy::unwrap_used)]
//! Soak (issue 14, item 4): the built binary under a mixed load for
//! `SOAK_SECS` seconds (default 600), then checked.
//!
//! Run it with `soak/run.sh [SECONDS]` (a release build) or
//! `SOAK_SECS=60 cargo test --test soak -- --ignored --nocapture`. It is
//! ignored by a plain `cargo test`: CI runs it for a minute.
//!
//! Load, from `WORKERS` keep-alive connections: logins (and wrong
//! passwords), refreshes (rotating, single use), logouts (blacklist),
//! protected requests with valid, revoked, forged, expired, unsigned and
//! missing tokens (each also carrying a forged `X-User-Id`), public
//! proxied requests and static files; beside it, `gateway sessions
//! revoke` of a random user every few seconds and a reload (SIGHUP) every
//! minute (a tenth of the run when shorter).
//!
//! Checked during and after:
//! - no request succeeded without a valid token on the protected route:
//!   every bad token got 401, and the upstream saw every protected request
//!   with exactly one `X-User-Id` of a real user, never the forged one;
//! - every revoked token is refused (during the run once the revocation
//!   has had a second to be followed, and all of them again at the end);
//! - no 5xx and no dropped connection;
//! - resident memory and open descriptors back to the baseline within a
//!   minute.
//!
//! One `soak:` line prints the figures (docs/security.md quotes it).
//! Everything listens on 127.0.0.1 and every loop is bounded by the
//! deadline.
mod common;
use common::bin::{free_port, Bin};
use common::raw::*;

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::time::sleep;

const WORKERS: usize = 8;
const USERS: u64 = 20;
/// A revocation made through `gateway sessions revoke` (another process)
/// is followed within a second; this much is allowed before a revoked
/// token that still passes counts as a violation.
const FOLLOW: Duration = Duration::from_millis(1500);
const SETTLE: Duration = Duration::from_secs(60);
const RSS_SLACK_KIB: u64 = 16 * 1024;
const FD_SLACK: usize = 16;
/// Sessions a worker keeps; older ones are forgotten (revoked ones are
/// kept for the final check, up to `KEEP_REVOKED`).
const SESSIONS_PER_WORKER: usize = 24;
const KEEP_REVOKED: usize = 3000;
const FORGED_ID: &str = "999";
const WRONG_KEY: &str = "not-the-gateway-secret-not-the-gateway-secret";

fn soak_secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
}

// ---------------------------------------------------------------- counters

#[derive(Default)]
struct Counts {
    logins: AtomicU64,
    wrong_passwords: AtomicU64,
    refreshes: AtomicU64,
    logouts: AtomicU64,
    protected_ok: AtomicU64,
    expired_ok: AtomicU64,
    revoked_refused: AtomicU64,
    bad_refused: AtomicU64,
    public: AtomicU64,
    statics: AtomicU64,
    cli_revokes: AtomicU64,
    reloads: AtomicU64,
    /// Anything the gateway must never do: a revoked or bad token served,
    /// a 5xx, a dropped connection, a wrong answer.
    violations: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

struct Shared {
    counts: Counts,
    /// Revocations in flight hold it for writing: a login or refresh
    /// (read) is then wholly before or wholly after one.
    revoking: tokio::sync::RwLock<()>,
    sessions: Vec<Mutex<Vec<Session>>>,
    revoked: Mutex<VecDeque<Session>>,
    notes: Mutex<Vec<String>>,
}

impl Shared {
    fn violation(&self, what: String) {
        inc(&self.counts.violations);
        let mut n = self.notes.lock().unwrap();
        if n.len() < 20 {
            n.push(what);
        }
    }
}

#[derive(Clone)]
struct Session {
    user: u64,
    access: String,
    access_until: Instant,
    refresh: String,
    revoked_at: Option<Instant>,
}

// ---------------------------------------------------------------- the upstream

#[derive(Default)]
struct Seen {
    protected: AtomicU64,
    public: AtomicU64,
    bad_identity: AtomicU64,
}

/// Answers 200 to everything; checks the identity header on every request
/// it sees: exactly one real user id on `/api/`, none on `/open/`.
async fn upstream(seen: Arc<Seen>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let seen = seen.clone();
                    async move {
                        let ids: Vec<_> = req.headers().get_all("x-user-id").iter().collect();
                        let ok = if req.uri().path().starts_with("/api/") {
                            inc(&seen.protected);
                            ids.len() == 1
                                && ids[0]
                                    .to_str()
                                    .ok()
                                    .and_then(|v| v.parse::<u64>().ok())
                                    .is_some_and(|v| (1..=USERS).contains(&v))
                        } else {
                            inc(&seen.public);
                            ids.is_empty()
                        };
                        if !ok {
                            inc(&seen.bad_identity);
                        }
                        let body: http_body_util::Full<bytes::Bytes> =
                            http_body_util::Full::new(bytes::Bytes::from_static(b"upstream ok"));
                        Ok::<_, Infallible>(http::Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------- the gateway

const STATIC_BODY: &str = "static file body, the same every time\n";

fn config(port: u16, admin: u16, upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[admin]
listen = "127.0.0.1:{admin}"

[log]
access_log = false

[upstreams.app]
url = "http://{upstream}"
timeout = "5s"

{jwt}

[store]
path = "{{dir}}/gateway.db"

[tokens.credentials]
users_file = "{{dir}}/users.toml"

[tokens.rate_limit]
per_address = 0

[[routes]]
path = "/api/"
upstream = "app"
auth = "required"

[[routes]]
path = "/static/"
static = "{{dir}}/www"

[[routes]]
path = "/open/"
upstream = "app"
auth = "none"
"#,
        jwt = jwt_section()
    )
}

async fn start(upstream: SocketAddr) -> Bin {
    let dir = tempfile::tempdir().unwrap();
    let hash = gateway::tokens::password::hash("pw").unwrap();
    let mut users = String::new();
    for id in 1..=USERS {
        users.push_str(&format!(
            "[[user]]\nusername = \"user{id}\"\npassword = \"{hash}\"\nuser_id = {id}\n\n"
        ));
    }
    users.push_str(&format!(
        "[[user]]\nusername = \"mallory\"\npassword = \"{hash}\"\nuser_id = 500\n"
    ));
    std::fs::write(dir.path().join("users.toml"), users).unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    for i in 0..10 {
        std::fs::write(dir.path().join(format!("www/f{i}.txt")), STATIC_BODY).unwrap();
    }
    let (port, admin) = (free_port(), free_port());
    Bin::launch_in(dir, &config(port, admin, upstream), port, "warn").await
}

// ---------------------------------------------------------------- requests

struct Conn {
    addr: SocketAddr,
    c: Option<Client>,
}

impl Conn {
    /// One exchange; `None` (a violation, noted by the caller) when the
    /// connection failed or stalled.
    async fn call(&mut self, req: &str) -> Option<RawResp> {
        if self.c.is_none() {
            self.c = Some(Client::connect(self.addr).await);
        }
        let c = self.c.as_mut()?;
        if !c.try_send(req).await {
            self.c = None;
            return None;
        }
        match c.response_within(Duration::from_secs(10)).await {
            Ok(r) => {
                if r.closes() {
                    self.c = None;
                }
                Some(r)
            }
            Err(_) => {
                self.c = None;
                None
            }
        }
    }
}

fn post(path: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn api(token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET /api/items HTTP/1.1\r\nHost: soak\r\n{auth}X-User-Id: {FORGED_ID}\r\n\r\n")
}

fn json_of(r: &RawResp) -> Option<Value> {
    serde_json::from_str(&r.text()).ok()
}

/// Tokens that must never pass: none, signed with another key, expired,
/// unsigned, not a JWT.
fn bad_tokens() -> Vec<Option<String>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64| json!({"token_type": "access", "exp": exp, "iat": now - 10, "jti": "x", "user_id": "1"});
    let sign = |c: &Value, key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            c,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let good = sign(&claims(now + 300), SECRET);
    let mut parts = good.split('.');
    let (_, payload) = (parts.next().unwrap(), parts.next().unwrap());
    vec![
        None,
        Some(sign(&claims(now + 300), WRONG_KEY)),
        Some(sign(&claims(now - 60), SECRET)),
        // alg none with the valid payload.
        Some(format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")),
        Some(format!("{good}x")),
        Some("not.a.jwt".to_string()),
    ]
}

fn check(shared: &Shared, what: &str, r: &Option<RawResp>, want: u16) -> bool {
    match r {
        Some(r) if r.status == want => true,
        Some(r) => {
            shared.violation(format!("{what}: {} {}", r.status, r.text()));
            false
        }
        None => {
            shared.violation(format!("{what}: no answer"));
            false
        }
    }
}

/// One request of each kind, then quiet: (RSS KiB, open descriptors).
async fn quiet_baseline(shared: &Shared, bin: &Bin) -> (u64, usize) {
    let mut conn = Conn {
        addr: bin.addr,
        c: None,
    };
    let s = login(shared, &mut conn, 1).await.expect("first login");
    check(
        shared,
        "warm-up",
        &conn.call(&api(Some(&s.access))).await,
        200,
    );
    check(
        shared,
        "warm-up",
        &conn
            .call("GET /static/f0.txt HTTP/1.1\r\nHost: soak\r\n\r\n")
            .await,
        200,
    );
    drop(conn);
    sleep(Duration::from_secs(2)).await;
    (bin.rss_kib(), bin.fds())
}

// ---------------------------------------------------------------- the load

/// A small xorshift: the load is random but needs no crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Logs `user` in. Callers racing the operator hold `revoking` (read)
/// until the session is where the operator can mark it.
async fn login(shared: &Shared, conn: &mut Conn, user: u64) -> Option<Session> {
    let body = json!({"username": format!("user{user}"), "password": "pw"});
    let r = conn.call(&post("/api/token/", &body)).await;
    if !check(shared, "login", &r, 200) {
        return None;
    }
    inc(&shared.counts.logins);
    let v = json_of(r.as_ref()?)?;
    Some(Session {
        user,
        access: v["access"].as_str()?.to_string(),
        // Minus a margin for the clock between here and the gateway.
        access_until: Instant::now() + Duration::from_secs(290),
        refresh: v["refresh"].as_str()?.to_string(),
        revoked_at: None,
    })
}

fn revoked_long_enough(s: &Session) -> bool {
    s.revoked_at.is_some_and(|t| t.elapsed() > FOLLOW)
}

async fn worker(w: usize, addr: SocketAddr, shared: Arc<Shared>, deadline: Instant) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1000_0001));
    let mut conn = Conn { addr, c: None };
    let bad = bad_tokens();
    while Instant::now() < deadline {
        let pick = rng.below(100);
        let held = shared.sessions[w].lock().unwrap().len();
        match pick {
            // Log in (always when holding nothing).
            _ if held == 0 || pick < 8 => {
                // Each worker logs in its own users: a login reserves a
                // rate-limit slot until its password is checked, so six
                // simultaneous correct logins of one name would get 429.
                let mine: Vec<u64> = (1..=USERS)
                    .filter(|u| (*u as usize - 1) % WORKERS == w)
                    .collect();
                let user = mine[rng.below(mine.len() as u64) as usize];
                let _one = shared.revoking.read().await;
                if let Some(s) = login(&shared, &mut conn, user).await {
                    let mut mine = shared.sessions[w].lock().unwrap();
                    mine.push(s);
                    if mine.len() > SESSIONS_PER_WORKER {
                        let old = mine.remove(0);
                        if old.revoked_at.is_some() {
                            let mut revoked = shared.revoked.lock().unwrap();
                            if revoked.len() < KEEP_REVOKED {
                                revoked.push_back(old);
                            }
                        }
                    }
                }
            }
            // A wrong password: 401, or 429 once mallory is locked out.
            8..=9 => {
                let body = json!({"username": "mallory", "password": "guess"});
                let r = conn.call(&post("/api/token/", &body)).await;
                match r.as_ref().map(|r| r.status) {
                    Some(401) | Some(429) => inc(&shared.counts.wrong_passwords),
                    _ => {
                        check(&shared, "wrong password", &r, 401);
                    }
                }
            }
            // Refresh one held session (single use: it is this worker's).
            10..=21 => {
                let i = rng.below(held as u64) as usize;
                let Some(s) = shared.sessions[w].lock().unwrap().get(i).cloned() else {
                    continue;
                };
                let _one = shared.revoking.read().await;
                // Read again: a revocation may have landed while waiting.
                let s = shared.sessions[w]
                    .lock()
                    .unwrap()
                    .get(i)
                    .cloned()
                    .unwrap_or(s);
                let r = conn
                    .call(&post("/api/token/refresh/", &json!({"refresh": s.refresh})))
                    .await;
                if s.revoked_at.is_some() {
                    check(&shared, "refresh of a revoked session", &r, 401);
                    continue;
                }
                if !check(&shared, "refresh", &r, 200) {
                    continue;
                }
                inc(&shared.counts.refreshes);
                let Some(v) = r.as_ref().and_then(json_of) else {
                    shared.violation("refresh: not JSON".into());
                    continue;
                };
                let mut mine = shared.sessions[w].lock().unwrap();
                if let Some(m) = mine.get_mut(i).filter(|m| m.refresh == s.refresh) {
                    m.access = v["access"].as_str().unwrap_or_default().to_string();
                    m.access_until = Instant::now() + Duration::from_secs(290);
                    m.refresh = v["refresh"].as_str().unwrap_or_default().to_string();
                }
            }
            // Log out: the family is revoked at once.
            22..=24 => {
                let i = rng.below(held as u64) as usize;
                let Some(s) = shared.sessions[w].lock().unwrap().get(i).cloned() else {
                    continue;
                };
                if s.revoked_at.is_some() {
                    continue;
                }
                let r = conn
                    .call(&post(
                        "/api/token/blacklist/",
                        &json!({"refresh": s.refresh}),
                    ))
                    .await;
                if check(&shared, "logout", &r, 200) {
                    inc(&shared.counts.logouts);
                    let mut mine = shared.sessions[w].lock().unwrap();
                    if let Some(m) = mine.get_mut(i).filter(|m| m.refresh == s.refresh) {
                        m.revoked_at = Some(Instant::now());
                    }
                }
            }
            // A protected request with a held token.
            25..=59 => {
                let i = rng.below(held as u64) as usize;
                let Some(s) = shared.sessions[w].lock().unwrap().get(i).cloned() else {
                    continue;
                };
                let r = conn.call(&api(Some(&s.access))).await;
                let status = r.as_ref().map(|r| r.status);
                if revoked_long_enough(&s) {
                    if check(&shared, "revoked access token", &r, 401) {
                        inc(&shared.counts.revoked_refused);
                    }
                } else if s.revoked_at.is_some() {
                    // Within the follow window: either answer is right.
                    if !matches!(status, Some(200) | Some(401)) {
                        check(&shared, "access token being revoked", &r, 401);
                    }
                } else if Instant::now() > s.access_until {
                    if matches!(status, Some(200) | Some(401)) {
                        inc(&shared.counts.expired_ok);
                    } else {
                        check(&shared, "expiring access token", &r, 401);
                    }
                } else if check(&shared, "valid access token", &r, 200) {
                    inc(&shared.counts.protected_ok);
                }
            }
            // A bad token.
            60..=74 => {
                let t = &bad[rng.below(bad.len() as u64) as usize];
                let r = conn.call(&api(t.as_deref())).await;
                if check(&shared, "bad token", &r, 401) {
                    inc(&shared.counts.bad_refused);
                }
            }
            // Public, proxied.
            75..=86 => {
                let r = conn
                    .call(&format!(
                        "GET /open/page HTTP/1.1\r\nHost: soak\r\nX-User-Id: {FORGED_ID}\r\n\r\n"
                    ))
                    .await;
                if check(&shared, "public", &r, 200) {
                    inc(&shared.counts.public);
                }
            }
            // Static.
            _ => {
                let f = rng.below(10);
                let r = conn
                    .call(&format!(
                        "GET /static/f{f}.txt HTTP/1.1\r\nHost: soak\r\n\r\n"
                    ))
                    .await;
                if check(&shared, "static", &r, 200) {
                    if r.as_ref().is_some_and(|r| r.body == STATIC_BODY.as_bytes()) {
                        inc(&shared.counts.statics);
                    } else {
                        shared.violation("static: wrong body".into());
                    }
                }
            }
        }
    }
    // Keep what was revoked for the final check.
    let mine = std::mem::take(&mut *shared.sessions[w].lock().unwrap());
    let mut revoked = shared.revoked.lock().unwrap();
    for s in mine.into_iter().filter(|s| s.revoked_at.is_some()) {
        if revoked.len() < KEEP_REVOKED {
            revoked.push_back(s);
        }
    }
}

/// Every few seconds, `gateway sessions revoke` of a random user (another
/// process writing the store); every `reload_every`, SIGHUP.
async fn operator(bin: &Bin, shared: Arc<Shared>, deadline: Instant, reload_every: Duration) {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut next_reload = Instant::now() + reload_every;
    while Instant::now() < deadline {
        sleep(Duration::from_secs(3)).await;
        let user = 1 + rng.below(USERS);
        {
            let _all = shared.revoking.write().await;
            let (ok, out) = bin.command(&["sessions", "revoke", "--user-id", &user.to_string()]);
            if !ok {
                shared.violation(format!("sessions revoke: {out}"));
            } else {
                inc(&shared.counts.cli_revokes);
                let now = Instant::now();
                for w in &shared.sessions {
                    let mut mine = w.lock().unwrap();
                    for s in mine.iter_mut().filter(|s| s.user == user) {
                        s.revoked_at.get_or_insert(now);
                    }
                }
            }
        }
        if Instant::now() >= next_reload {
            next_reload += reload_every;
            let _ = std::process::Command::new("kill")
                .args(["-HUP", &bin.pid.to_string()])
                .status();
            inc(&shared.counts.reloads);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: soak/run.sh, or SOAK_SECS=60 cargo test --test soak -- --ignored"]
async fn soak() {
    let secs = soak_secs();
    let run = Duration::from_secs(secs);
    bounded_within(run + SETTLE + Duration::from_secs(180), async move {
        let seen = Arc::new(Seen::default());
        let up = upstream(seen.clone()).await;
        let mut bin = start(up).await;
        let shared = Arc::new(Shared {
            counts: Counts::default(),
            revoking: tokio::sync::RwLock::new(()),
            sessions: (0..WORKERS).map(|_| Mutex::new(Vec::new())).collect(),
            revoked: Mutex::new(VecDeque::new()),
            notes: Mutex::new(Vec::new()),
        });

        let (rss0, fds0) = quiet_baseline(&shared, &bin).await;

        let t0 = Instant::now();
        let deadline = t0 + run;
        let reload_every = Duration::from_secs(60).min(run / 10).max(Duration::from_secs(1));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| tokio::spawn(worker(w, bin.addr, shared.clone(), deadline)))
            .collect();
        // Peak memory, sampled while the load runs.
        let peak = Arc::new(AtomicU64::new(rss0));
        let sampler = {
            let (peak, pid) = (peak.clone(), bin.pid);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    if let Some(kib) = rss_of(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    sleep(Duration::from_secs(1)).await;
                }
            })
        };
        operator(&bin, shared.clone(), deadline, reload_every).await;
        for w in workers {
            w.await.unwrap();
        }
        sampler.await.unwrap();
        let took = t0.elapsed();

        // Every revoked token, again: access refused, refresh refused.
        sleep(FOLLOW).await;
        let revoked: Vec<Session> = shared.revoked.lock().unwrap().iter().cloned().collect();
        let mut conn = Conn {
            addr: bin.addr,
            c: None,
        };
        for s in &revoked {
            check(&shared, "revoked access (end)", &conn.call(&api(Some(&s.access))).await, 401);
            check(
                &shared,
                "revoked refresh (end)",
                &conn
                    .call(&post("/api/token/refresh/", &json!({"refresh": s.refresh})))
                    .await,
                401,
            );
        }
        drop(conn);

        // Back to baseline within a minute. The baseline for memory is the
        // larger of the quiet start and a gateway started afresh on the
        // store the soak left (it holds the same state: the revoked logins
        // of the last day in its mirror); more than that would be a leak.
        let settle0 = Instant::now();
        let (mut rss, mut fds) = (bin.rss_kib(), bin.fds());
        while settle0.elapsed() < SETTLE && (rss > rss0 + RSS_SLACK_KIB || fds > fds0 + FD_SLACK) {
            sleep(Duration::from_secs(1)).await;
            (rss, fds) = (bin.rss_kib(), bin.fds());
        }
        let settled = settle0.elapsed();
        let parts = |bin: &Bin| {
            format!(
                "anon {} file {} shmem {}",
                bin.status_kib("RssAnon:"),
                bin.status_kib("RssFile:"),
                bin.status_kib("RssShmem:")
            )
        };
        let soaked_parts = parts(&bin);
        let alive = bin.alive();
        let log = bin.log();
        bin.restart("warn").await;
        let (fresh, _) = quiet_baseline(&shared, &bin).await;
        println!("soak: RSS parts (KiB): soaked {soaked_parts}; fresh {}", parts(&bin));
        let baseline = rss0.max(fresh);

        let c = &shared.counts;
        let total = get(&c.logins)
            + get(&c.wrong_passwords)
            + get(&c.refreshes)
            + get(&c.logouts)
            + get(&c.protected_ok)
            + get(&c.expired_ok)
            + get(&c.revoked_refused)
            + get(&c.bad_refused)
            + get(&c.public)
            + get(&c.statics);
        println!(
            "soak: {}s, {total} requests ({:.0}/s) from {WORKERS} connections: {} logins, {} wrong passwords, {} refreshes, {} logouts, {} protected 200, {} revoked refused, {} bad tokens refused, {} public, {} static; {} operator revocations, {} reloads; {} revoked sessions re-checked at the end; upstream saw {} protected ({} with a bad identity) and {} public; violations {}; RSS {} -> peak {} -> {} KiB after {}s (a fresh gateway on the same store: {fresh} KiB); fds {fds0} -> {fds}",
            took.as_secs(),
            total as f64 / took.as_secs_f64(),
            get(&c.logins),
            get(&c.wrong_passwords),
            get(&c.refreshes),
            get(&c.logouts),
            get(&c.protected_ok),
            get(&c.revoked_refused),
            get(&c.bad_refused),
            get(&c.public),
            get(&c.statics),
            get(&c.cli_revokes),
            get(&c.reloads),
            revoked.len(),
            get(&seen.protected),
            get(&seen.bad_identity),
            get(&seen.public),
            get(&c.violations),
            rss0,
            peak.load(Ordering::Relaxed),
            rss,
            settled.as_secs(),
        );
        let notes = shared.notes.lock().unwrap().clone();
        assert_eq!(get(&c.violations), 0, "violations: {notes:#?}");
        assert_eq!(get(&seen.bad_identity), 0, "the upstream saw a bad identity");
        assert!(get(&c.protected_ok) > 0 && get(&c.revoked_refused) > 0);
        assert!(!revoked.is_empty(), "nothing was revoked");
        assert!(
            rss <= baseline + RSS_SLACK_KIB,
            "RSS {rss} KiB after the soak; baseline {baseline} KiB"
        );
        assert!(fds <= fds0 + FD_SLACK, "fds {fds0} -> {fds}");
        assert!(alive);
        assert!(!log.contains("panicked"), "{log}");
    })
    .await;
}

fn rss_of(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
