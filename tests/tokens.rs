#![allow(clippy::unwrap_used)]
//! Token issuing at the edge, black box: the real gateway in-process with a
//! users file and a SQLite store in a temp dir, a real recording upstream
//! behind a protected route, and simplejwt's bodies asserted byte for byte.
//! Every token-route test also checks that the upstream saw nothing: token
//! routes are answered by the gateway, never proxied.

mod common;

use base64::Engine;
use bytes::Bytes;
use common::{req, send, Gateway, Resp, Upstream};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

// ---------------------------------------------------------------- setup

const SECRET: &str = "tokens-test-hs256-secret-at-least-32-bytes!!";
const OBTAIN: &str = "/api/token/";
const REFRESH: &str = "/api/token/refresh/";
const VERIFY: &str = "/api/token/verify/";
const BLACKLIST: &str = "/api/token/blacklist/";

const NO_ACCOUNT: &str = r#"{"detail":"No active account found with the given credentials"}"#;
const NO_ACCOUNT_FOR_TOKEN: &str = r#"{"detail":"No active account found for the given token."}"#;
const BLACKLISTED: &str = r#"{"detail":"Token is blacklisted","code":"token_not_valid"}"#;
const INVALID: &str = r#"{"detail":"Token is invalid","code":"token_not_valid"}"#;
const EXPIRED: &str = r#"{"detail":"Token is expired","code":"token_not_valid"}"#;
const WRONG_TYPE: &str = r#"{"detail":"Token has wrong type","code":"token_not_valid"}"#;
const VERIFY_BLACKLISTED: &str = r#"{"non_field_errors":["Token is blacklisted"]}"#;

/// The argon2id hash of "pw", computed once: argon2 is slow in debug builds.
fn pw_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| gateway::tokens::password::hash("pw").unwrap())
}

/// alice (id 1, roles and email) and bob (id 2, inactive), both "pw".
fn users_file(alice_active: bool) -> String {
    let h = pw_hash();
    format!(
        r#"
[[user]]
username = "alice"
password = "{h}"
user_id = 1
active = {alice_active}
claims = {{ roles = ["staff", "admin"], email = "a@example.com" }}

[[user]]
username = "bob"
password = "{h}"
user_id = 2
active = false
claims = {{ roles = ["staff"] }}
"#
    )
}

fn hs256() -> String {
    format!("[jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n")
}

const USERS: &str = "[tokens.credentials]\nusers_file = \"{dir}/users.toml\"\n";

/// The whole config: `jwt` is the [jwt] section, `tokens` the body of
/// [tokens], `more` any further sections (credentials, rate limit).
fn config(upstream: &str, jwt: &str, tokens: &str, more: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[log]
access_log = false

[upstreams.app]
url = "{upstream}"
connect_timeout = "1s"
timeout = "5s"

{jwt}

[identity]
headers = {{ "X-User-Id" = "user_id", "X-User-Roles" = "roles" }}

[store]
path = "{{dir}}/gateway.db"

[[routes]]
path = "/api/"
upstream = "app"
auth = "required"

[tokens]
{tokens}

{more}
"#
    )
}

struct Env {
    up: Upstream,
    gw: Gateway,
    config: String,
}

/// A gateway with the users file in its dir; `tokens` and `more` as in
/// [`config`], HS256 with the shared secret.
async fn start(tokens: &str, more: &str) -> Env {
    start_with(&hs256(), tokens, more, &[]).await
}

async fn start_with(jwt: &str, tokens: &str, more: &str, files: &[(&str, String)]) -> Env {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), users_file(true)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config = config(&up.url(), jwt, tokens, more);
    let gw = Gateway::start_in(dir, &config).await;
    Env { up, gw, config }
}

async fn default_env() -> Env {
    start("", USERS).await
}

impl Env {
    async fn post(&self, path: &str, content_type: Option<&str>, body: &str) -> Resp {
        self.post_with(path, content_type, body, &[]).await
    }

    async fn post_with(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut b = req("POST", path);
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        send(
            self.gw.addr,
            b.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
        )
        .await
    }

    async fn json(&self, path: &str, body: Value) -> Resp {
        self.post(path, Some("application/json"), &body.to_string())
            .await
    }

    async fn login_as(&self, username: &str, password: &str) -> Resp {
        self.json(OBTAIN, json!({"username": username, "password": password}))
            .await
    }

    /// Logs alice in; returns (refresh, access).
    async fn login(&self) -> (String, String) {
        let r = self.login_as("alice", "pw").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_token_response(&r);
        pair(&r)
    }

    async fn refresh(&self, refresh: &str) -> Resp {
        self.json(REFRESH, json!({ "refresh": refresh })).await
    }

    /// Refreshes with rotation; returns (access, refresh).
    async fn rotate(&self, refresh: &str) -> (String, String) {
        let r = self.refresh(refresh).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_token_response(&r);
        let j = r.json();
        let (a, n) = (
            j["access"].as_str().unwrap().to_string(),
            j["refresh"].as_str().unwrap().to_string(),
        );
        // simplejwt's key order: access, then refresh.
        assert_eq!(r.text(), format!(r#"{{"access":"{a}","refresh":"{n}"}}"#));
        (a, n)
    }

    /// GET /api/me with the token; the upstream behind it is protected.
    async fn api(&self, token: &str) -> Resp {
        send(
            self.gw.addr,
            req("GET", "/api/me")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    /// The access token gets through the edge and the upstream learns who.
    async fn assert_api_ok(&self, access: &str, user_id: &str) {
        let before = self.up.count();
        let r = self.api(access).await;
        assert_eq!(r.status, 200, "edge refused a live token: {}", r.text());
        assert_eq!(self.up.count(), before + 1);
        let seen = self.up.last();
        assert_eq!(seen.headers["x-user-id"], user_id);
        assert_eq!(seen.path, "/api/me");
    }

    /// The access token is refused at the edge as blacklisted (its family
    /// was revoked) and the upstream never sees the request.
    async fn assert_api_blacklisted(&self, access: &str) {
        let before = self.up.count();
        let r = self.api(access).await;
        assert_eq!(r.status, 401, "{}", r.text());
        let j = r.json();
        assert_eq!(j["detail"], "Given token not valid for any token type");
        assert_eq!(j["code"], "token_not_valid");
        assert_eq!(j["messages"][0]["message"], "Token is blacklisted", "{j}");
        assert_eq!(j["messages"][0]["token_type"], "access");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer realm=\"api\""));
        assert_eq!(
            self.up.count(),
            before,
            "a refused request reached the upstream"
        );
    }

    fn assert_upstream_untouched(&self) {
        assert_eq!(self.up.count(), 0, "a token route reached the upstream");
    }
}

fn pair(r: &Resp) -> (String, String) {
    let j = r.json();
    let (refresh, access) = (
        j["refresh"].as_str().unwrap().to_string(),
        j["access"].as_str().unwrap().to_string(),
    );
    // simplejwt's body: compact, refresh first.
    assert_eq!(
        r.text(),
        format!(r#"{{"refresh":"{refresh}","access":"{access}"}}"#)
    );
    (refresh, access)
}

/// RFC 6749 5.1 plus simplejwt's Allow and content type.
fn assert_token_response(r: &Resp) {
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
}

/// Status and body exactly, plus the headers every token response carries
/// and the Bearer challenge on a 401 (none on other statuses).
fn assert_exact(r: &Resp, status: u16, body: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.text(), body);
    assert_token_response(r);
    if status == 401 {
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api\""));
    } else {
        assert_eq!(r.header("www-authenticate"), None);
    }
}

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

/// The raw header JSON and the payload of a compact JWT.
fn decode(token: &str) -> (String, Map<String, Value>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header = String::from_utf8(b64d(parts[0])).unwrap();
    let payload: Value = serde_json::from_slice(&b64d(parts[1])).unwrap();
    match payload {
        Value::Object(m) => (header, m),
        other => panic!("payload is not an object: {other}"),
    }
}

fn keys(m: &Map<String, Value>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

fn is_jti(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token signed with the shared secret the way simplejwt (PyJWT) does.
fn simplejwt_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// 32 lowercase hex characters, different on every call.
fn unique_jti() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!("{nanos:016x}{:016x}", N.fetch_add(1, Ordering::Relaxed))
}

fn simplejwt_refresh(user_id: &str) -> String {
    let now = now();
    simplejwt_token(&json!({
        "token_type": "refresh",
        "exp": now + 86400,
        "iat": now,
        "jti": unique_jti(),
        "user_id": user_id,
    }))
}

// ---------------------------------------------------------------- obtain

#[tokio::test]
async fn obtain_then_the_upstream_sees_the_identity() {
    let env = default_env().await;
    let t0 = now();
    let (refresh, access) = env.login().await;
    env.assert_upstream_untouched();

    let (h, a) = decode(&access);
    assert_eq!(h, r#"{"alg":"HS256","typ":"JWT"}"#);
    assert_eq!(
        keys(&a),
        [
            "token_type",
            "exp",
            "iat",
            "jti",
            "user_id",
            "roles",
            "email",
            "sid"
        ]
    );
    assert_eq!(a["token_type"], "access");
    assert_eq!(
        a["user_id"], "1",
        "user_id is a string, as in simplejwt 5.5"
    );
    assert_eq!(a["roles"], json!(["staff", "admin"]));
    assert_eq!(a["email"], "a@example.com");
    assert!(is_jti(&a["jti"]), "{}", a["jti"]);
    let iat = a["iat"].as_i64().unwrap();
    assert!((t0..=now()).contains(&iat));
    assert_eq!(a["exp"].as_i64().unwrap() - iat, 300, "access_ttl 5m");

    let (h, r) = decode(&refresh);
    assert_eq!(h, r#"{"alg":"HS256","typ":"JWT"}"#);
    assert_eq!(
        &keys(&r)[..5],
        ["token_type", "exp", "iat", "jti", "user_id"]
    );
    assert_eq!(r["token_type"], "refresh");
    assert_eq!(r["user_id"], "1");
    assert!(is_jti(&r["jti"]));
    assert_ne!(r["jti"], a["jti"]);
    assert_eq!(
        r["exp"].as_i64().unwrap() - r["iat"].as_i64().unwrap(),
        86400
    );
    // One login, one family: both tokens carry the same sid.
    assert!(is_jti(&a["sid"]));
    assert_eq!(a["sid"], r["sid"]);

    let before = env.up.count();
    let resp = env.api(&access).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(env.up.count(), before + 1);
    let seen = env.up.last();
    assert_eq!(seen.headers["x-user-id"], "1");
    assert_eq!(seen.headers["x-user-roles"], "staff,admin");

    // Without a token the route stays closed.
    let r = common::get(env.gw.addr, "/api/me").await;
    assert_eq!(r.status, 401);
    assert_eq!(env.up.count(), before + 1);
}

#[tokio::test]
async fn wrong_password_unknown_and_inactive_users_get_the_same_401() {
    let env = default_env().await;
    for (user, pw) in [("alice", "nope"), ("mallory", "pw"), ("bob", "pw")] {
        let r = env.login_as(user, pw).await;
        assert_exact(&r, 401, NO_ACCOUNT);
    }
    // A number is a string to DRF: "5" is just a wrong password.
    let r = env
        .json(OBTAIN, json!({"username": "alice", "password": 5}))
        .await;
    assert_exact(&r, 401, NO_ACCOUNT);
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn fields_are_checked_like_drf() {
    let env = default_env().await;
    let required =
        r#"{"username":["This field is required."],"password":["This field is required."]}"#;
    assert_exact(&env.json(OBTAIN, json!({})).await, 400, required);
    // An empty body is `{}` too, with or without a content type.
    assert_exact(
        &env.post(OBTAIN, Some("application/json"), "").await,
        400,
        required,
    );
    assert_exact(&env.post(OBTAIN, None, "").await, 400, required);
    assert_exact(
        &env.json(OBTAIN, json!({"password": "pw"})).await,
        400,
        r#"{"username":["This field is required."]}"#,
    );
    assert_exact(
        &env.json(OBTAIN, json!({"username": "", "password": "  "}))
            .await,
        400,
        r#"{"username":["This field may not be blank."],"password":["This field may not be blank."]}"#,
    );
    assert_exact(
        &env.json(OBTAIN, json!({"username": null, "password": null}))
            .await,
        400,
        r#"{"username":["This field may not be null."],"password":["This field may not be null."]}"#,
    );
    assert_exact(
        &env.json(OBTAIN, json!({"username": true, "password": ["pw"]}))
            .await,
        400,
        r#"{"username":["Not a valid string."],"password":["Not a valid string."]}"#,
    );
    assert_exact(
        &env.json(OBTAIN, json!({"username": {"a": 1}, "password": null}))
            .await,
        400,
        r#"{"username":["Not a valid string."],"password":["This field may not be null."]}"#,
    );
    assert_exact(
        &env.post(OBTAIN, Some("application/json"), "[1, 2]").await,
        400,
        r#"{"non_field_errors":["Invalid data. Expected a dictionary, but got list."]}"#,
    );
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn malformed_json_is_a_parse_error() {
    let env = default_env().await;
    for body in ["{", "{\"username\": \"alice\",", "not json", "{'a': 1}"] {
        let r = env.post(OBTAIN, Some("application/json"), body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_token_response(&r);
        let j = r.json();
        assert_eq!(keys(j.as_object().unwrap()), ["detail"]);
        let detail = j["detail"].as_str().unwrap();
        assert!(detail.starts_with("JSON parse error - "), "{detail}");
        assert!(detail.len() > "JSON parse error - ".len(), "{detail}");
    }
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn whitespace_is_trimmed_from_every_field_including_the_password() {
    let env = default_env().await;
    let r = env.login_as("  alice\t", "  pw \n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, access) = pair(&r);
    assert_eq!(decode(&access).1["user_id"], "1");
    // Inner whitespace is kept: "p w" is another password.
    assert_exact(&env.login_as("alice", "p w").await, 401, NO_ACCOUNT);
}

#[tokio::test]
async fn form_and_multipart_bodies_work() {
    let env = default_env().await;
    let r = env
        .post(
            OBTAIN,
            Some("application/x-www-form-urlencoded"),
            "username=alice&password=%20pw%20",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (refresh, _) = pair(&r);
    assert_token_response(&r);

    // The refresh route takes forms too.
    let r = env
        .post(
            REFRESH,
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            &format!("refresh={refresh}"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let mp = "--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nalice\r\n--XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\npw\r\n--XyZ--\r\n";
    let r = env
        .post(OBTAIN, Some("multipart/form-data; boundary=XyZ"), mp)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    pair(&r);

    let r = env
        .post(
            OBTAIN,
            Some("application/x-www-form-urlencoded"),
            "username=alice",
        )
        .await;
    assert_exact(&r, 400, r#"{"password":["This field is required."]}"#);
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn unsupported_media_type_is_415() {
    let env = default_env().await;
    let r = env
        .post(OBTAIN, Some("text/plain"), "username=alice&password=pw")
        .await;
    assert_exact(
        &r,
        415,
        r#"{"detail":"Unsupported media type \"text/plain\" in request."}"#,
    );
    let r = env.post(REFRESH, Some("application/xml"), "<a/>").await;
    assert_exact(
        &r,
        415,
        r#"{"detail":"Unsupported media type \"application/xml\" in request."}"#,
    );
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let env = default_env().await;
    for path in [OBTAIN, REFRESH, VERIFY, BLACKLIST] {
        let r = common::get(env.gw.addr, path).await;
        assert_exact(&r, 405, r#"{"detail":"Method \"GET\" not allowed."}"#);
        let r = send(
            env.gw.addr,
            req("PUT", path).body(Full::new(Bytes::new())).unwrap(),
        )
        .await;
        assert_exact(&r, 405, r#"{"detail":"Method \"PUT\" not allowed."}"#);
    }
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let env = start("max_body_bytes = 1024", USERS).await;
    let big = json!({"username": "alice", "password": "x".repeat(2000)}).to_string();
    let r = env.post(OBTAIN, Some("application/json"), &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_token_response(&r);
    assert!(r.json()["detail"].is_string());
    // Just under the limit is read and answered normally.
    let ok = json!({"username": "alice", "password": "x".repeat(900)}).to_string();
    let r = env.post(OBTAIN, Some("application/json"), &ok).await;
    assert_exact(&r, 401, NO_ACCOUNT);
    env.assert_upstream_untouched();
}

// ---------------------------------------------------------------- refresh

#[tokio::test]
async fn refresh_rotates_and_copies_the_users_claims() {
    let env = default_env().await;
    let (r0, a0) = env.login().await;
    let (a1, r1) = env.rotate(&r0).await;
    let (_, a) = decode(&a1);
    let (_, r) = decode(&r1);
    let (_, old) = decode(&a0);
    assert_eq!(a["token_type"], "access");
    assert_eq!(r["token_type"], "refresh");
    assert_eq!(a["user_id"], "1");
    assert_eq!(a["roles"], json!(["staff", "admin"]));
    assert_eq!(a["email"], "a@example.com");
    // Same family, new ids.
    assert_eq!(a["sid"], old["sid"]);
    assert_eq!(r["sid"], old["sid"]);
    assert!(is_jti(&r["jti"]));
    assert_ne!(r["jti"], decode(&r0).1["jti"]);
    assert_eq!(a["exp"].as_i64().unwrap() - a["iat"].as_i64().unwrap(), 300);
    env.assert_api_ok(&a1, "1").await;
    // The new refresh token works in turn.
    let (a2, _) = env.rotate(&r1).await;
    env.assert_api_ok(&a2, "1").await;
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_family() {
    let env = default_env().await;
    let (r0, _) = env.login().await;
    let (a1, r1) = env.rotate(&r0).await;
    // Another login of the same user is another family.
    let (other_refresh, other_access) = env.login().await;
    env.assert_api_ok(&a1, "1").await;

    // The replay: refused, and the family is gone.
    assert_exact(&env.refresh(&r0).await, 401, BLACKLISTED);
    env.assert_api_blacklisted(&a1).await;
    assert_exact(&env.refresh(&r1).await, 401, BLACKLISTED);
    assert_exact(
        &env.json(VERIFY, json!({ "token": r1 })).await,
        400,
        VERIFY_BLACKLISTED,
    );
    assert_exact(
        &env.json(VERIFY, json!({ "token": a1 })).await,
        400,
        VERIFY_BLACKLISTED,
    );

    // The other session is untouched.
    env.assert_api_ok(&other_access, "1").await;
    let (a, _) = env.rotate(&other_refresh).await;
    env.assert_api_ok(&a, "1").await;
}

#[tokio::test]
async fn a_rotated_refresh_token_verifies_as_blacklisted() {
    let env = default_env().await;
    let (r0, _) = env.login().await;
    let (a1, r1) = env.rotate(&r0).await;
    // simplejwt with BLACKLIST_AFTER_ROTATION blacklists the rotated token.
    assert_exact(
        &env.json(VERIFY, json!({ "token": r0 })).await,
        400,
        VERIFY_BLACKLISTED,
    );
    // Verifying is not a reuse: the family lives on.
    env.assert_api_ok(&a1, "1").await;
    env.rotate(&r1).await;
}

#[tokio::test]
async fn blacklisting_logs_the_family_out() {
    let env = default_env().await;
    let (r0, a0) = env.login().await;
    env.assert_api_ok(&a0, "1").await;
    let r = env.json(BLACKLIST, json!({ "refresh": r0 })).await;
    assert_exact(&r, 200, "{}");
    assert_exact(&env.refresh(&r0).await, 401, BLACKLISTED);
    env.assert_api_blacklisted(&a0).await;
    // Twice: simplejwt's "already blacklisted".
    let r = env.json(BLACKLIST, json!({ "refresh": r0 })).await;
    assert_exact(&r, 401, BLACKLISTED);
    // An access token is the wrong type.
    let (_, a) = env.login().await;
    let r = env.json(BLACKLIST, json!({ "refresh": a })).await;
    assert_exact(&r, 401, WRONG_TYPE);
    let r = env.json(BLACKLIST, json!({})).await;
    assert_exact(&r, 400, r#"{"refresh":["This field is required."]}"#);
}

#[tokio::test]
async fn blacklisting_a_rotated_refresh_token_is_a_reuse() {
    let env = default_env().await;
    let (r0, _) = env.login().await;
    let (a1, r1) = env.rotate(&r0).await;
    let r = env.json(BLACKLIST, json!({ "refresh": r0 })).await;
    assert_exact(&r, 401, BLACKLISTED);
    env.assert_api_blacklisted(&a1).await;
    assert_exact(&env.refresh(&r1).await, 401, BLACKLISTED);
}

#[tokio::test]
async fn verify_answers_like_simplejwt() {
    let env = default_env().await;
    let (refresh, access) = env.login().await;
    assert_exact(
        &env.json(VERIFY, json!({ "token": access })).await,
        200,
        "{}",
    );
    assert_exact(
        &env.json(VERIFY, json!({ "token": refresh })).await,
        200,
        "{}",
    );
    for garbage in ["garbage", "a.b.c", &format!("{access}x")] {
        let r = env.json(VERIFY, json!({ "token": garbage })).await;
        assert_exact(&r, 401, INVALID);
    }
    // Signed with another secret.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &decode(&access).1,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-another"),
    )
    .unwrap();
    assert_exact(
        &env.json(VERIFY, json!({ "token": forged })).await,
        401,
        INVALID,
    );
    assert_exact(
        &env.json(VERIFY, json!({})).await,
        400,
        r#"{"token":["This field is required."]}"#,
    );
    assert_exact(
        &env.json(VERIFY, json!({"token": ""})).await,
        400,
        r#"{"token":["This field may not be blank."]}"#,
    );
    // Revoked: 400 non_field_errors, as simplejwt with blacklisting.
    assert_exact(
        &env.json(BLACKLIST, json!({ "refresh": refresh })).await,
        200,
        "{}",
    );
    for t in [&refresh, &access] {
        assert_exact(
            &env.json(VERIFY, json!({ "token": t })).await,
            400,
            VERIFY_BLACKLISTED,
        );
    }
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn refresh_refuses_bad_tokens_with_simplejwts_messages() {
    let env = default_env().await;
    let (_, access) = env.login().await;
    assert_exact(&env.refresh(&access).await, 401, WRONG_TYPE);
    assert_exact(&env.refresh("garbage").await, 401, INVALID);
    let now = now();
    let expired = simplejwt_token(&json!({
        "token_type": "refresh",
        "exp": now - 10,
        "iat": now - 100,
        "jti": "0123456789abcdef0123456789abcdef",
        "user_id": "1",
    }));
    assert_exact(&env.refresh(&expired).await, 401, EXPIRED);
    assert_exact(
        &env.json(REFRESH, json!({})).await,
        400,
        r#"{"refresh":["This field is required."]}"#,
    );
    assert_exact(
        &env.json(REFRESH, json!({"refresh": null})).await,
        400,
        r#"{"refresh":["This field may not be null."]}"#,
    );
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn a_user_made_inactive_cannot_refresh() {
    let env = default_env().await;
    let (refresh, _) = env.login().await;
    std::fs::write(env.gw.path("users.toml"), users_file(false)).unwrap();
    env.gw.rewrite_and_reload(&env.config).unwrap();
    assert_exact(&env.refresh(&refresh).await, 401, NO_ACCOUNT_FOR_TOKEN);
    assert_exact(&env.login_as("alice", "pw").await, 401, NO_ACCOUNT);
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn without_rotation_refresh_returns_only_an_access_token() {
    let env = start("rotate_refresh = false", USERS).await;
    let (r0, _) = env.login().await;
    for _ in 0..2 {
        let r = env.refresh(&r0).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_token_response(&r);
        let access = r.json()["access"].as_str().unwrap().to_string();
        assert_eq!(r.text(), format!(r#"{{"access":"{access}"}}"#));
        assert_eq!(decode(&access).1["sid"], decode(&r0).1["sid"]);
        env.assert_api_ok(&access, "1").await;
    }
}

#[tokio::test]
async fn a_session_ends_at_session_max_however_often_it_is_refreshed() {
    let env = start("session_max = \"2s\"", USERS).await;
    let (r0, a0) = env.login().await;
    let login_iat = decode(&r0).1["iat"].as_i64().unwrap();
    let (a1, r1) = env.rotate(&r0).await;
    // Rotation does not extend the session, and no token outlives it.
    for t in [&r0, &a0, &r1, &a1] {
        let exp = decode(t).1["exp"].as_i64().unwrap();
        assert!(exp <= login_iat + 2, "exp {exp} past the session end");
    }
    env.assert_api_ok(&a1, "1").await;
    // Wait (bounded) until the session is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while now() <= login_iat + 2 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = env.refresh(&r1).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["code"], "token_not_valid");
    assert_exact(&r, 401, EXPIRED);
    let r = env.api(&a1).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["messages"][0]["message"], "Token is expired");
}

#[tokio::test]
async fn a_simplejwt_refresh_token_starts_a_family_and_is_single_use() {
    let env = default_env().await;
    let foreign = simplejwt_refresh("1");
    let (a1, r1) = env.rotate(&foreign).await;
    let (_, a) = decode(&a1);
    let (_, r) = decode(&r1);
    assert!(is_jti(&a["sid"]), "no family: {a:?}");
    assert_eq!(a["sid"], r["sid"]);
    assert_eq!(a["user_id"], "1");
    // The user was looked up: the claims come from the users file.
    assert_eq!(a["roles"], json!(["staff", "admin"]));
    env.assert_api_ok(&a1, "1").await;

    // Replayed: refused, and the family it started is revoked.
    assert_exact(&env.refresh(&foreign).await, 401, BLACKLISTED);
    env.assert_api_blacklisted(&a1).await;
    assert_exact(&env.refresh(&r1).await, 401, BLACKLISTED);
    env.assert_upstream_untouched_by_token_routes(2);
}

#[tokio::test]
async fn logging_out_with_a_used_simplejwt_refresh_token_revokes_its_family() {
    let env = default_env().await;
    let foreign = simplejwt_refresh("1");
    let (a1, r1) = env.rotate(&foreign).await;
    env.assert_api_ok(&a1, "1").await;
    let r = env.json(BLACKLIST, json!({ "refresh": foreign })).await;
    assert_exact(&r, 401, BLACKLISTED);
    env.assert_api_blacklisted(&a1).await;
    assert_exact(&env.refresh(&r1).await, 401, BLACKLISTED);
}

impl Env {
    /// The upstream saw exactly the `edge_calls` requests made to /api/me.
    fn assert_upstream_untouched_by_token_routes(&self, edge_calls: usize) {
        let seen = self.up.seen.lock().unwrap();
        assert!(seen.len() <= edge_calls, "{seen:?}");
        assert!(seen.iter().all(|s| s.path == "/api/me"), "{seen:?}");
    }
}

#[tokio::test]
async fn a_blacklisted_simplejwt_refresh_token_is_refused() {
    let env = default_env().await;
    let foreign = simplejwt_refresh("1");
    let r = env.json(BLACKLIST, json!({ "refresh": foreign })).await;
    assert_exact(&r, 200, "{}");
    assert_exact(&env.refresh(&foreign).await, 401, BLACKLISTED);
    assert_exact(
        &env.json(VERIFY, json!({ "token": foreign })).await,
        400,
        VERIFY_BLACKLISTED,
    );
    let r = env.json(BLACKLIST, json!({ "refresh": foreign })).await;
    assert_exact(&r, 401, BLACKLISTED);
}

#[tokio::test]
async fn a_simplejwt_refresh_token_for_an_unknown_user_is_refused() {
    let env = default_env().await;
    assert_exact(
        &env.refresh(&simplejwt_refresh("99")).await,
        401,
        NO_ACCOUNT_FOR_TOKEN,
    );
    assert_exact(
        &env.refresh(&simplejwt_refresh("2")).await,
        401,
        NO_ACCOUNT_FOR_TOKEN,
    );
}

// ---------------------------------------------------------------- restart

#[tokio::test]
async fn revocations_survive_a_restart() {
    let env = default_env().await;
    // Family 1 revoked by reuse, family 2 by logout, family 3 alive.
    let (r0, _) = env.login().await;
    let (a1, r1) = env.rotate(&r0).await;
    assert_exact(&env.refresh(&r0).await, 401, BLACKLISTED);
    let (l0, la) = env.login().await;
    assert_exact(
        &env.json(BLACKLIST, json!({ "refresh": l0 })).await,
        200,
        "{}",
    );
    let (live_refresh, live_access) = env.login().await;
    let foreign = simplejwt_refresh("1");
    assert_exact(
        &env.json(BLACKLIST, json!({ "refresh": foreign })).await,
        200,
        "{}",
    );

    let Env { up, mut gw, config } = env;
    let handle = gw.handle.take().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(15), handle.drain())
            .await
            .unwrap(),
        "drain did not complete"
    );
    let dir = gw.dir;
    assert!(dir.path().join("gateway.db").exists());
    let gw = Gateway::start_in(dir, &config).await;
    let env = Env { up, gw, config };

    env.assert_api_blacklisted(&a1).await;
    env.assert_api_blacklisted(&la).await;
    assert_exact(&env.refresh(&r1).await, 401, BLACKLISTED);
    assert_exact(&env.refresh(&r0).await, 401, BLACKLISTED);
    assert_exact(&env.refresh(&l0).await, 401, BLACKLISTED);
    assert_exact(&env.refresh(&foreign).await, 401, BLACKLISTED);
    assert_exact(
        &env.json(VERIFY, json!({ "token": a1 })).await,
        400,
        VERIFY_BLACKLISTED,
    );
    // The live session survived the restart too.
    env.assert_api_ok(&live_access, "1").await;
    let (a, _) = env.rotate(&live_refresh).await;
    env.assert_api_ok(&a, "1").await;
}

// ---------------------------------------------------------------- rate limit

fn retry_after(r: &Resp) -> u64 {
    let v = r.header("retry-after").expect("no Retry-After");
    v.parse::<u64>()
        .unwrap_or_else(|_| panic!("Retry-After {v:?} is not whole seconds"))
}

fn assert_rate_limited(r: &Resp, window: u64) {
    assert_eq!(r.status, 429, "{}", r.text());
    assert_token_response(r);
    let secs = retry_after(r);
    assert!((1..=window).contains(&secs), "Retry-After {secs}");
    let j = r.json();
    assert_eq!(keys(j.as_object().unwrap()), ["detail"]);
    assert!(
        j["detail"].as_str().unwrap().contains(&secs.to_string()),
        "{j}"
    );
}

#[tokio::test]
async fn failed_logins_lock_the_user_even_for_the_right_password() {
    let env = start(
        "",
        &format!("{USERS}\n[tokens.rate_limit]\nper_user = 3\nper_user_window = \"15m\"\n"),
    )
    .await;
    for _ in 0..3 {
        assert_exact(&env.login_as("alice", "wrong").await, 401, NO_ACCOUNT);
    }
    let r = env.login_as("alice", "pw").await;
    assert_rate_limited(&r, 900);
    assert_rate_limited(&env.login_as("alice", "wrong").await, 900);
    // Another user from the same address is not locked.
    assert_exact(&env.login_as("bob", "pw").await, 401, NO_ACCOUNT);
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn a_successful_login_resets_the_users_count() {
    let env = start("", &format!("{USERS}\n[tokens.rate_limit]\nper_user = 3\n")).await;
    for _ in 0..2 {
        assert_exact(&env.login_as("alice", "wrong").await, 401, NO_ACCOUNT);
    }
    env.login().await;
    for _ in 0..2 {
        assert_exact(&env.login_as("alice", "wrong").await, 401, NO_ACCOUNT);
    }
    env.login().await;
}

#[tokio::test]
async fn failed_logins_lock_the_address() {
    let env = start(
        "",
        &format!(
            "{USERS}\n[tokens.rate_limit]\nper_user = 100\nper_address = 2\nper_address_window = \"1m\"\n"
        ),
    )
    .await;
    assert_exact(&env.login_as("x1", "wrong").await, 401, NO_ACCOUNT);
    assert_exact(&env.login_as("x2", "wrong").await, 401, NO_ACCOUNT);
    assert_rate_limited(&env.login_as("alice", "pw").await, 60);
    env.assert_upstream_untouched();
}

// ---------------------------------------------------------------- keys

#[tokio::test]
async fn es256_tokens_verify_with_the_published_jwks() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let env = start_with(
        "[jwt]\nalgorithm = \"ES256\"\nprivate_key = \"{dir}/ec.pem\"\n",
        "",
        USERS,
        &[("ec.pem", key)],
    )
    .await;
    let (refresh, access) = env.login().await;
    let (h, claims) = decode(&access);
    let header: Value = serde_json::from_str(&h).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let kid = header["kid"].as_str().expect("no kid").to_string();

    let r = common::get(env.gw.addr, "/.well-known/jwks.json").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let jwks = r.json();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"))
        .clone();
    assert_eq!(jwk["kty"], "EC");
    assert!(jwk.get("d").is_none(), "private part published: {jwk}");

    // An independent library checks the signature with the published key.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    for t in [&access, &refresh] {
        let data = jsonwebtoken::decode::<Map<String, Value>>(t, &key, &validation).unwrap();
        assert_eq!(data.claims["user_id"], "1");
    }
    assert_eq!(claims["token_type"], "access");
    // A tampered payload does not verify.
    let parts: Vec<&str> = access.split('.').collect();
    let mut forged_claims = claims.clone();
    forged_claims.insert("user_id".into(), json!("2"));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged_claims).unwrap()),
        parts[2]
    );
    assert!(jsonwebtoken::decode::<Map<String, Value>>(&forged, &key, &validation).is_err());

    env.assert_api_ok(&access, "1").await;
    let (a1, _) = env.rotate(&refresh).await;
    env.assert_api_ok(&a1, "1").await;
}

#[tokio::test]
async fn no_jwks_for_a_symmetric_key() {
    let env = default_env().await;
    let r = common::get(env.gw.addr, "/.well-known/jwks.json").await;
    assert_eq!(r.status, 404, "{}", r.text());
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn signing_key_names_the_kid_and_every_key_verifies() {
    let jwt = format!(
        "[jwt]\nalgorithm = \"HS256\"\n\n[[jwt.keys]]\nkid = \"k1\"\nsecret = \"{SECRET}\"\n\n[[jwt.keys]]\nkid = \"k2\"\nsecret = \"second-secret-for-k2-at-least-32-bytes!!\"\n"
    );
    let env = start_with(&jwt, "signing_key = \"k2\"", USERS, &[]).await;
    let (refresh, access) = env.login().await;
    assert_eq!(
        decode(&access).0,
        r#"{"alg":"HS256","kid":"k2","typ":"JWT"}"#
    );
    assert_eq!(
        decode(&refresh).0,
        r#"{"alg":"HS256","kid":"k2","typ":"JWT"}"#
    );
    let key = jsonwebtoken::DecodingKey::from_secret(b"second-secret-for-k2-at-least-32-bytes!!");
    let data = jsonwebtoken::decode::<Map<String, Value>>(
        &access,
        &key,
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(data.claims["user_id"], "1");
    env.assert_api_ok(&access, "1").await;
    env.rotate(&refresh).await;

    // A refresh token signed by the old key k1 (issued before rotation) still works.
    let now = now();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let old = jsonwebtoken::encode(
        &header,
        &json!({"token_type": "refresh", "exp": now + 600, "iat": now, "jti": "00000000000000000000000000000001", "user_id": "1"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (a, _) = env.rotate(&old).await;
    assert_eq!(decode(&a).0, r#"{"alg":"HS256","kid":"k2","typ":"JWT"}"#);
}

// ---------------------------------------------------------------- CORS

#[tokio::test]
async fn cors_for_listed_origins_only() {
    let env = start("cors_origins = [\"https://app.example\"]", USERS).await;
    let preflight = |origin: &'static str| {
        req("OPTIONS", OBTAIN)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = send(env.gw.addr, preflight("https://app.example")).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let methods = r.header("access-control-allow-methods").unwrap();
    assert!(methods.contains("POST"), "{methods}");
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase()
        .contains("content-type"));
    assert!(r.body.is_empty());

    let r = send(env.gw.addr, preflight("https://evil.example")).await;
    assert_eq!(r.header("access-control-allow-origin"), None);

    let body = json!({"username": "alice", "password": "pw"}).to_string();
    let r = env
        .post_with(
            OBTAIN,
            Some("application/json"),
            &body,
            &[("origin", "https://app.example")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    // Errors carry it too, or the browser hides the body from the app.
    let r = env
        .post_with(
            OBTAIN,
            Some("application/json"),
            "{}",
            &[("origin", "https://app.example")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let r = env
        .post_with(
            OBTAIN,
            Some("application/json"),
            &body,
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    env.assert_upstream_untouched();
}

// ---------------------------------------------------------------- delegation

/// What the credential backend received: (path, JSON body).
type Calls = Arc<Mutex<Vec<(String, Value)>>>;

/// A credential backend: 200 {"user_id": 7, ...} for password "pw", 401
/// otherwise; the user "slow" waits 3 s before answering.
async fn auth_backend() -> (SocketAddr, Calls) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls: Calls = Arc::default();
    let c = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let c = c.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            c.lock().unwrap().push((path, v.clone()));
                            if v["username"] == "slow" {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            let (status, body) = if v["password"] == "pw" {
                                (
                                    200,
                                    json!({"user_id": 7, "claims": {"roles": ["x"]}}).to_string(),
                                )
                            } else {
                                (401, r#"{"detail":"no"}"#.to_string())
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, calls)
}

fn delegation(backend: SocketAddr) -> String {
    format!(
        r#"
[tokens.credentials]
upstream = "auth"
path = "/internal/authenticate"
timeout = "500ms"

[upstreams.auth]
url = "http://{backend}"
connect_timeout = "500ms"
timeout = "2s"
"#
    )
}

const UNAVAILABLE: &str = r#"{"detail":"Authentication service unavailable. Try again later."}"#;

#[tokio::test]
async fn credentials_delegated_to_the_app() {
    let (backend, calls) = auth_backend().await;
    let env = start("", &delegation(backend)).await;
    let (refresh, access) = env.login().await;
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "/internal/authenticate");
        assert_eq!(calls[0].1, json!({"username": "alice", "password": "pw"}));
    }
    let (_, a) = decode(&access);
    assert_eq!(a["user_id"], "7");
    assert_eq!(a["roles"], json!(["x"]));
    assert_eq!(decode(&refresh).1["user_id"], "7");
    let before = env.up.count();
    let r = env.api(&access).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.up.count(), before + 1);
    assert_eq!(env.up.last().headers["x-user-id"], "7");
    assert_eq!(env.up.last().headers["x-user-roles"], "x");

    // Refresh keeps the claims the app gave at login.
    let (a1, _) = env.rotate(&refresh).await;
    assert_eq!(decode(&a1).1["user_id"], "7");
    assert_eq!(decode(&a1).1["roles"], json!(["x"]));

    assert_exact(&env.login_as("alice", "wrong").await, 401, NO_ACCOUNT);
    assert_eq!(calls.lock().unwrap().len(), 2);
    assert_eq!(calls.lock().unwrap()[1].1["password"], "wrong");
    // The app never sees the token routes either; only /api/me went there.
    assert_eq!(env.up.count(), 1);
}

#[tokio::test]
async fn a_slow_credential_backend_is_503() {
    let (backend, _) = auth_backend().await;
    let env = start("", &delegation(backend)).await;
    let t = std::time::Instant::now();
    let r = env.login_as("slow", "pw").await;
    assert_exact(&r, 503, UNAVAILABLE);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    env.assert_upstream_untouched();
}

#[tokio::test]
async fn a_credential_backend_that_is_down_is_503() {
    // A port that was bound and released: connection refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let env = start("", &delegation(dead)).await;
    let r = env.login_as("alice", "pw").await;
    assert_exact(&r, 503, UNAVAILABLE);
    // An outage does not count as a failed login.
    for _ in 0..6 {
        assert_exact(&env.login_as("alice", "pw").await, 503, UNAVAILABLE);
    }
    env.assert_upstream_untouched();
}

// ---------------------------------------------------------------- routing

#[tokio::test]
async fn token_routes_are_never_proxied() {
    let env = default_env().await;
    let (refresh, access) = env.login().await;
    // An Authorization header on a token route is ignored, as in simplejwt.
    let r = env
        .post_with(
            VERIFY,
            Some("application/json"),
            &json!({ "token": access }).to_string(),
            &[("authorization", "Bearer garbage")],
        )
        .await;
    assert_exact(&r, 200, "{}");
    env.rotate(&refresh).await;
    let r = send(
        env.gw.addr,
        req("OPTIONS", OBTAIN)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "Token Obtain Pair");
    env.assert_upstream_untouched();
}
