#![allow(clippy::unwrap_used)]
//! Several replicas, one truth: two real gateways sharing a real
//! `redis-server` (each test starts its own), and the same checks on one
//! gateway with its SQLite file where they apply. Tokens are refreshed and
//! revoked across replicas, Redis is killed and restarted under the
//! gateways, concurrent password guesses are counted, and the operator
//! commands run as the real binary against running gateways.

mod common;

use bytes::Bytes;
use common::redis::Redis;
use common::{req, send, Gateway, Resp, Upstream};
use http_body_util::Full;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SECRET: &str = "replicas-test-hs256-secret-at-least-32-bytes";

fn pw_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| gateway::tokens::password::hash("pw").unwrap())
}

fn users() -> String {
    format!(
        "[[user]]\nusername = \"alice\"\npassword = \"{}\"\nuser_id = 1\n",
        pw_hash()
    )
}

/// `store` is the body of [store]; `limits` of [tokens.rate_limit].
fn config(upstream: &str, store: &str, limits: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[log]
access_log = false

[upstreams.app]
url = "{upstream}"

[jwt]
algorithm = "HS256"
secret = "{SECRET}"

[identity]
headers = {{ "X-User-Id" = "user_id" }}

[store]
{store}

[[routes]]
path = "/api/"
upstream = "app"
auth = "required"

[tokens]
access_ttl = "5m"

[tokens.credentials]
users_file = "{{dir}}/users.toml"

[tokens.rate_limit]
{limits}
"#
    )
}

struct Replica {
    gw: Gateway,
}

impl Replica {
    async fn start(toml: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users.toml"), users()).unwrap();
        Replica {
            gw: Gateway::start_in(dir, toml).await,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Resp {
        send(
            self.gw.addr,
            req("POST", path)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
    }

    async fn login(&self, password: &str) -> Resp {
        self.post(
            "/api/token/",
            json!({"username": "alice", "password": password}),
        )
        .await
    }

    /// Logs alice in: (refresh, access).
    async fn pair(&self) -> (String, String) {
        let r = self.login("pw").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        (
            j["refresh"].as_str().unwrap().to_string(),
            j["access"].as_str().unwrap().to_string(),
        )
    }

    /// Refresh with rotation: (access, refresh).
    async fn rotate(&self, refresh: &str) -> (String, String) {
        let r = self
            .post("/api/token/refresh/", json!({ "refresh": refresh }))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        (
            j["access"].as_str().unwrap().to_string(),
            j["refresh"].as_str().unwrap().to_string(),
        )
    }

    async fn api(&self, access: &str) -> u16 {
        send(
            self.gw.addr,
            req("GET", "/api/me")
                .header("authorization", format!("Bearer {access}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .status
        .as_u16()
    }

    /// How long until this replica refuses `access` (None: not within `limit`).
    async fn refused_within(&self, access: &str, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() <= limit {
            if self.api(access).await == 401 {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Runs the real binary against this replica's config.
    fn command(&self, args: &[&str]) -> (bool, String) {
        common::bin::command(&self.gw.config_path, args)
    }
}

fn redis_store(redis: &Redis) -> String {
    format!("url = \"{}\"", redis.url())
}

const SQLITE: &str = "path = \"{dir}/gateway.db\"";

#[tokio::test]
async fn refresh_and_revocations_cross_replicas() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let toml = config(&up.url(), &redis_store(&redis), "");
    let (a, b) = (Replica::start(&toml).await, Replica::start(&toml).await);

    // Obtain on A, refresh on B, refresh again on A.
    let (refresh, access) = a.pair().await;
    assert_eq!(b.api(&access).await, 200);
    let (access_b, refresh_b) = b.rotate(&refresh).await;
    let (access_a, refresh_a) = a.rotate(&refresh_b).await;
    for token in [&access, &access_b, &access_a] {
        assert_eq!(a.api(token).await, 200);
        assert_eq!(b.api(token).await, 200);
    }

    // Logout on B: A refuses every access token of that login within 1 s.
    let r = b
        .post("/api/token/blacklist/", json!({ "refresh": refresh_a }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let took = a.refused_within(&access_a, Duration::from_secs(1)).await;
    assert!(took.is_some(), "replica A still accepts a logged-out token");
    assert_eq!(a.api(&access).await, 401);

    // Reuse of a rotated refresh token on A revokes the family on B.
    let (r1, a1) = a.pair().await;
    let (a2, _r2) = a.rotate(&r1).await;
    let replay = a
        .post("/api/token/refresh/", json!({ "refresh": r1 }))
        .await;
    assert_eq!(replay.status, 401, "{}", replay.text());
    assert!(
        b.refused_within(&a1, Duration::from_secs(1))
            .await
            .is_some(),
        "replica B still accepts a token of a family revoked for reuse on A"
    );
    assert_eq!(b.api(&a2).await, 401);
    // The verify route on B answers blacklisted too (simplejwt's 400).
    let v = b.post("/api/token/verify/", json!({ "token": a2 })).await;
    assert_eq!(v.status, 400, "{}", v.text());
}

/// 40 wrong passwords at once for one username with per_user = 5: exactly
/// 5 are checked (401), the others refused before any check (429).
async fn guesses(replicas: &[&Replica]) -> (usize, usize) {
    let mut tasks = Vec::new();
    for i in 0..40 {
        let addr = replicas[i % replicas.len()].gw.addr;
        tasks.push(tokio::spawn(async move {
            let body = json!({"username": "alice", "password": format!("guess-{i}")});
            send(
                addr,
                req("POST", "/api/token/")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap(),
            )
            .await
        }));
    }
    let (mut unauthorized, mut limited) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            401 => unauthorized += 1,
            429 => {
                assert!(r.header("retry-after").is_some());
                limited += 1
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    (unauthorized, limited)
}

const FIVE_PER_USER: &str = "per_user = 5\nper_user_window = \"15m\"\nper_address = 0";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guesses_are_limited_across_replicas() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let toml = config(&up.url(), &redis_store(&redis), FIVE_PER_USER);
    let (a, b) = (Replica::start(&toml).await, Replica::start(&toml).await);
    assert_eq!(guesses(&[&a, &b]).await, (5, 35));
    // Locked for the right password too, on both replicas.
    assert_eq!(a.login("pw").await.status, 429);
    assert_eq!(b.login("pw").await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guesses_are_limited_on_sqlite() {
    let up = Upstream::start().await;
    let one = Replica::start(&config(&up.url(), SQLITE, FIVE_PER_USER)).await;
    assert_eq!(guesses(&[&one]).await, (5, 35));
    assert_eq!(one.login("pw").await.status, 429);
}

#[tokio::test]
async fn a_per_address_limit_holds_under_concurrency() {
    let up = Upstream::start().await;
    let limits = "per_user = 0\nper_address = 5\nper_address_window = \"1m\"";
    let one = Replica::start(&config(&up.url(), SQLITE, limits)).await;
    assert_eq!(guesses(&[&one]).await, (5, 35));
}

#[tokio::test]
async fn redis_down_edge_keeps_working_token_routes_503_then_recover() {
    let mut redis = Redis::start();
    let up = Upstream::start().await;
    let toml = config(&up.url(), &redis_store(&redis), "");
    let (a, b) = (Replica::start(&toml).await, Replica::start(&toml).await);
    let (live_refresh, live) = a.pair().await;
    let (revoked_refresh, revoked) = a.pair().await;
    let r = a
        .post(
            "/api/token/blacklist/",
            json!({ "refresh": revoked_refresh }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(b
        .refused_within(&revoked, Duration::from_secs(1))
        .await
        .is_some());

    redis.kill();
    for replica in [&a, &b] {
        // The edge validates from the in-memory mirror.
        assert_eq!(replica.api(&live).await, 200);
        assert_eq!(replica.api(&revoked).await, 401);
        // The token routes cannot keep their records: 503, never a token.
        let r = replica.login("pw").await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.json()["detail"].is_string(), "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let r = replica
            .post("/api/token/refresh/", json!({ "refresh": live_refresh }))
            .await;
        assert_eq!(r.status, 503, "{}", r.text());
    }

    redis.restart();
    // Back without restarting the gateways.
    for replica in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = replica.login("pw").await;
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(
                Instant::now() < deadline,
                "no recovery after Redis came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Revocations made before the outage still hold.
        assert_eq!(replica.api(&revoked).await, 401);
        let r = replica
            .post("/api/token/refresh/", json!({ "refresh": revoked_refresh }))
            .await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // And the live login refreshes on either replica.
    let (_, next) = b.rotate(&live_refresh).await;
    a.rotate(&next).await;
}

async fn operator_commands(store: &str) {
    let up = Upstream::start().await;
    let gw = Replica::start(&config(&up.url(), store, FIVE_PER_USER)).await;
    let (_, first) = gw.pair().await;
    let (_, second) = gw.pair().await;
    let sid_of = |t: &str| {
        use base64::Engine;
        let payload = t.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        claims["sid"].as_str().unwrap().to_string()
    };
    let (sid1, sid2) = (sid_of(&first), sid_of(&second));

    let (ok, out) = gw.command(&["sessions", "list", "--user-id", "1"]);
    assert!(ok, "{out}");
    assert!(out.contains(&sid1) && out.contains(&sid2), "{out}");
    assert_eq!(out.matches("active").count(), 2, "{out}");
    let (ok, out) = gw.command(&["sessions", "list", "--user-id", "1", "--json"]);
    assert!(ok, "{out}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r["revoked_at"].is_null() && r["user_id"] == "1"));

    // One session by sid: the running gateway refuses its tokens, not the other's.
    let (ok, out) = gw.command(&["sessions", "revoke", "--sid", &sid1]);
    assert!(ok, "{out}");
    assert!(
        gw.refused_within(&first, Duration::from_secs(5))
            .await
            .is_some(),
        "the running gateway still accepts a revoked session"
    );
    assert_eq!(gw.api(&second).await, 200);
    let (ok, out) = gw.command(&["sessions", "revoke", "--user-id", "1"]);
    assert!(ok, "{out}");
    assert!(out.contains(&sid2) && !out.contains(&sid1), "{out}");
    assert!(gw
        .refused_within(&second, Duration::from_secs(5))
        .await
        .is_some());
    let (ok, out) = gw.command(&["sessions", "list", "--user-id", "1"]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("revoked").count(), 2, "{out}");
    let (ok, out) = gw.command(&["sessions", "revoke", "--sid", "no-such-session"]);
    assert!(!ok, "{out}");

    // A name tried before it existed stays locked... until cleared.
    for i in 0..5 {
        let r = gw
            .post(
                "/api/token/",
                json!({"username": "newcomer", "password": format!("x{i}")}),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let r = gw
        .post(
            "/api/token/",
            json!({"username": "newcomer", "password": "x"}),
        )
        .await;
    assert_eq!(r.status, 429);
    let (ok, out) = gw.command(&["lockouts", "list"]);
    assert!(ok, "{out}");
    assert!(out.contains("newcomer"), "{out}");
    let (ok, out) = gw.command(&["lockouts", "list", "--json"]);
    assert!(ok, "{out}");
    let row: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(row["key"], "newcomer");
    assert_eq!(row["failures"], 5);
    assert_eq!(row["locked"], true);
    let (ok, out) = gw.command(&["lockouts", "clear", "newcomer"]);
    assert!(ok, "{out}");
    assert!(out.contains("cleared 5"), "{out}");
    let r = gw
        .post(
            "/api/token/",
            json!({"username": "newcomer", "password": "x"}),
        )
        .await;
    assert_eq!(r.status, 401, "still locked after clear: {}", r.text());
    let (ok, out) = gw.command(&["lockouts", "list"]);
    assert!(ok && out.contains("no lockouts"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_on_sqlite() {
    operator_commands(SQLITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_on_redis() {
    let redis = Redis::start();
    operator_commands(&redis_store(&redis)).await;
}

#[tokio::test]
async fn a_redis_password_in_the_url_or_from_a_secret_source() {
    let redis = Redis::start();
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "requirepass", "s3cret-pw"]),
        Some("OK".to_string())
    );
    let up = Upstream::start().await;
    // `file:` is resolved like `env:` (the in-process test cannot set the
    // environment safely).
    let with_file = format!(
        "url = \"{}\"\npassword = \"file:{{dir}}/redis.pw\"\nkey_prefix = \"site-a:\"",
        redis.url()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), users()).unwrap();
    std::fs::write(dir.path().join("redis.pw"), "s3cret-pw\n").unwrap();
    let gw = Replica {
        gw: Gateway::start_in(dir, &config(&up.url(), &with_file, "")).await,
    };
    let (refresh, _) = gw.pair().await;
    gw.rotate(&refresh).await;
    let in_url = format!("url = \"redis://:s3cret-pw@127.0.0.1:{}/1\"", redis.port);
    let gw = Replica::start(&config(&up.url(), &in_url, "")).await;
    let (refresh, _) = gw.pair().await;
    gw.rotate(&refresh).await;
}
