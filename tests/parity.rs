#![allow(clippy::unwrap_used)]
//! Protocol parity (issue 11): one table of requests, each sent over the
//! raw HTTP/1.1 path (bytes written on a TcpStream, the response parsed
//! here), over HTTP/2 (hyper's client, h2c with prior knowledge) and, where
//! it applies, over HTTP/1.0. For every row and every protocol:
//!
//! - the status is the one the behaviour contract gives (so a row fails when
//!   every protocol is wrong the same way);
//! - the upstream saw the request once with the expected target, or not at
//!   all when the gateway answers itself, and saw nothing else during the
//!   exchange (a smuggled second request shows up here), and the gateway
//!   sent nothing after the response;
//! - the row's own checks (identity headers, forwarding headers, ...).
//!
//! Across protocols: the same status, the same head received by the
//! upstream (method, path, query, body length and every header, by
//! lowercase name, except framing and the probe marker), the same body for
//! answers the gateway makes itself, and the same few response headers.
//!
//! All rows run in one test that reports every failing row at the end.

mod common;
// jwt.rs (shared with tests/edge_auth.rs) names `super::TestCa`.
#[path = "common/jwt.rs"]
mod jwt;

use bytes::Bytes;
use common::{Gateway, Seen, TestCa, Upstream};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jwt::{claims_with, hs256};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Every connect, read and write waits at most this long.
const LIMIT: Duration = Duration::from_secs(5);
/// After a response the client shuts its side and reads until the gateway
/// closes, at most this long; anything it still sends is reported (a
/// connection left open longer is not an error here).
const DRAIN: Duration = Duration::from_millis(500);
/// The whole table.
const TABLE_LIMIT: Duration = Duration::from_secs(240);

const HOST: &str = "gateway.test";
const ORIGIN: &str = "https://app.example";
/// Carried by every request, so the upstream's records can be attributed.
const PROBE: &str = "x-parity-probe";
/// Upstream headers that legitimately differ per protocol or connection.
const FRAMING: [&str; 3] = [PROBE, "content-length", "transfer-encoding"];
const IDENTITY_NAMES: [&str; 3] = ["x-user-id", "x-user-roles", "x-auth-claims"];
/// Names a request header must not fold to (with `_` for `-`) and be forwarded.
const HOP_NAMES: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "upgrade",
    "te",
];

// ---------------------------------------------------------------- the gateways

/// `root`: a gateway whose `/` route is public (the issue's setup);
/// `bare`: the same routes without `/`, for the 404 rows.
struct Env {
    up: Upstream,
    root: Gateway,
    bare: Gateway,
    /// The config accepted `allow_encoded_slash` (the `/enc/` route exists).
    encoded_slash: bool,
}

fn config(upstream: &str, root: bool, encoded_slash: bool) -> String {
    let mut c = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[log]
access_log = false

[jwt]
algorithm = "HS256"
secret = "{secret}"

[identity]
headers = {{ "X-User-Id" = "user_id", "X-User-Roles" = "roles" }}
claims_header = "X-Auth-Claims"

[upstreams.app]
url = "{upstream}"
connect_timeout = "1s"
timeout = "5s"

[store]
path = "{{dir}}/gateway.db"

[tokens]
cors_origins = ["{ORIGIN}"]

[tokens.credentials]
users_file = "{{dir}}/users.toml"

[tokens.rate_limit]
per_user = 0
per_address = 0

[[routes]]
path = "/admin/"
upstream = "app"
auth = "required"

[[routes]]
path = "/opt/"
upstream = "app"
auth = "optional"

[[routes]]
path = "/staff/"
upstream = "app"
require = {{ roles = ["staff"] }}

[[routes]]
path = "/api/"
upstream = "app"

[[routes]]
path = "/ro/"
upstream = "app"
auth = "none"
methods = ["GET"]

[[routes]]
path = "/strip/"
upstream = "app"
auth = "none"
strip_prefix = true

[[routes]]
path = "/static/"
static = "{{dir}}/www"
"#,
        secret = jwt::SECRET
    );
    if root {
        c.push_str("\n[[routes]]\npath = \"/\"\nupstream = \"app\"\nauth = \"none\"\n");
    }
    if encoded_slash {
        c.push_str(
            "\n[[routes]]\npath = \"/enc/\"\nupstream = \"app\"\nauth = \"none\"\nallow_encoded_slash = true\n",
        );
    }
    c
}

const INDEX_HTML: &str = "<!doctype html><h1>parity</h1>\n";

/// A temp dir with the static files (no users file: every login fails).
fn site_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/index.html"), INDEX_HTML).unwrap();
    // The token routes' users file: no users.
    std::fs::write(dir.path().join("users.toml"), "").unwrap();
    dir
}

/// Whether this build's config accepts `allow_encoded_slash` on a route.
fn accepts_encoded_slash(upstream: &str) -> bool {
    let dir = site_dir();
    let text = config(upstream, true, true).replace("{dir}", dir.path().to_str().unwrap());
    let path = dir.path().join("probe.toml");
    std::fs::write(&path, text).unwrap();
    gateway::config::load(&path).is_ok()
}

async fn env() -> Env {
    let up = Upstream::start().await;
    let encoded_slash = accepts_encoded_slash(&up.url());
    let root = Gateway::start_in(site_dir(), &config(&up.url(), true, encoded_slash)).await;
    let bare = Gateway::start_in(site_dir(), &config(&up.url(), false, encoded_slash)).await;
    Env {
        up,
        root,
        bare,
        encoded_slash,
    }
}

// ---------------------------------------------------------------- the table

#[derive(Clone, Copy, PartialEq, Debug)]
enum Site {
    Root,
    Bare,
}

enum Body {
    None,
    /// Sent with `Content-Length` (unless the row sets its own).
    Fixed(Vec<u8>),
    /// Sent chunked over HTTP/1.1, as separate DATA frames over HTTP/2.
    Chunked(Vec<Vec<u8>>),
}

type Check = Box<dyn Fn(&Outcome) -> Result<(), String>>;

struct Row {
    name: &'static str,
    site: Site,
    method: &'static str,
    /// The request target as written on the wire (origin or absolute form).
    target: String,
    /// Header lines as written by the raw clients (case and `_` kept).
    headers: Vec<(String, String)>,
    body: Body,
    /// The contract's status on every protocol.
    status: u16,
    /// The path and query the upstream must receive; `None`: the gateway
    /// answers itself and the upstream sees nothing.
    upstream: Option<String>,
    http10: bool,
    checks: Vec<Check>,
}

fn req(name: &'static str, method: &'static str, target: &str) -> Row {
    Row {
        name,
        site: Site::Root,
        method,
        target: target.to_string(),
        headers: Vec::new(),
        body: Body::None,
        status: 0,
        upstream: None,
        http10: true,
        checks: Vec::new(),
    }
}

fn get(name: &'static str, target: &str) -> Row {
    req(name, "GET", target)
}

impl Row {
    fn h(mut self, name: &str, value: &str) -> Row {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    fn hs(mut self, headers: Vec<(String, String)>) -> Row {
        self.headers.extend(headers);
        self
    }
    fn body(mut self, body: &[u8]) -> Row {
        self.body = Body::Fixed(body.to_vec());
        self
    }
    /// Chunked: not an HTTP/1.0 framing, so no HTTP/1.0 run.
    fn chunked(mut self, parts: &[&[u8]]) -> Row {
        self.body = Body::Chunked(parts.iter().map(|p| p.to_vec()).collect());
        self.http10 = false;
        self
    }
    fn on(mut self, site: Site) -> Row {
        self.site = site;
        self
    }
    /// The gateway answers `status` itself.
    fn answers(mut self, status: u16) -> Row {
        self.status = status;
        self.upstream = None;
        self
    }
    /// Proxied; the upstream (which answers 200) receives `target`.
    fn proxied(mut self, target: &str) -> Row {
        self.status = 200;
        self.upstream = Some(target.to_string());
        self
    }
    fn check(mut self, f: impl Fn(&Outcome) -> Result<(), String> + 'static) -> Row {
        self.checks.push(Box::new(f));
        self
    }
    /// The row sends a header of exactly this name (case aside).
    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Identity headers in many copies and spellings (as tests/edge_auth.rs).
fn spoofed_identity() -> Vec<(String, String)> {
    let forged = jwt::b64(
        json!({"user_id": "666", "roles": ["admin"]})
            .to_string()
            .as_bytes(),
    );
    [
        ("X-User-Id", "666"),
        ("x-user-id", "667"),
        ("X_USER_ID", "668"),
        ("x_user-id", "669"),
        ("X-uSeR-iD", "670"),
        ("X-USER-ROLES", "admin"),
        ("x_User_Roles", "admin,staff"),
        ("X-Auth-Claims", &forged),
        ("x_auth_claims", &forged),
        ("X_AUTH-CLAIMS", &forged),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

/// What the gateway must inject for `claims`, sorted.
fn expected_identity(claims: &Value) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "x-auth-claims".to_string(),
            jwt::b64(claims.to_string().as_bytes()),
        ),
        (
            "x-user-id".to_string(),
            claims["user_id"].as_str().unwrap().to_string(),
        ),
    ];
    if let Some(roles) = claims["roles"].as_array() {
        let joined: Vec<&str> = roles.iter().map(|r| r.as_str().unwrap()).collect();
        out.push(("x-user-roles".to_string(), joined.join(",")));
    }
    out.sort();
    out
}

// Checks, each on one protocol's outcome.

/// The upstream received exactly these identity headers (any spelling).
fn identity(expected: Vec<(String, String)>) -> impl Fn(&Outcome) -> Result<(), String> {
    move |o| {
        let Some(s) = o.seen.first() else {
            return Ok(());
        };
        let mut got: Vec<(String, String)> = s
            .headers
            .iter()
            .map(|(n, v)| (fold(n.as_str()), lossy(v.as_bytes())))
            .filter(|(n, _)| IDENTITY_NAMES.contains(&n.as_str()))
            .collect();
        got.sort();
        if got == expected {
            Ok(())
        } else {
            Err(format!(
                "identity headers upstream {got:?}, want {expected:?}"
            ))
        }
    }
}

fn anonymous() -> impl Fn(&Outcome) -> Result<(), String> {
    identity(Vec::new())
}

/// The upstream received `name` exactly once, with `value`.
fn up_header(name: &'static str, value: &str) -> impl Fn(&Outcome) -> Result<(), String> {
    let value = value.to_string();
    move |o| {
        let Some(s) = o.seen.first() else {
            return Ok(());
        };
        let got: Vec<String> = s
            .headers
            .get_all(name)
            .iter()
            .map(|v| lossy(v.as_bytes()))
            .collect();
        if got == [value.clone()] {
            Ok(())
        } else {
            Err(format!("upstream {name}: {got:?}, want [{value:?}]"))
        }
    }
}

/// The upstream received none of the hop-by-hop headers the client sent,
/// and no header whose name folds (`_` as `-`) to a framing or hop-by-hop
/// name.
fn no_hop_headers() -> impl Fn(&Outcome) -> Result<(), String> {
    |o| {
        let Some(s) = o.seen.first() else {
            return Ok(());
        };
        let bad: Vec<String> = s
            .headers
            .iter()
            .filter(|(n, _)| {
                let n = n.as_str();
                (n.contains('_') && HOP_NAMES.contains(&fold(n).as_str()))
                    || matches!(
                        n,
                        "keep-alive" | "proxy-connection" | "proxy-authorization" | "te"
                    )
            })
            .map(|(n, v)| format!("{n}: {}", lossy(v.as_bytes())))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "forwarded hop-by-hop headers or lookalikes {bad:?}"
            ))
        }
    }
}

fn up_body_len(n: u64) -> impl Fn(&Outcome) -> Result<(), String> {
    move |o| match o.seen.first() {
        Some(s) if s.body_len != n => Err(format!("upstream body {} bytes, want {n}", s.body_len)),
        _ => Ok(()),
    }
}

fn resp_header(name: &'static str, value: &str) -> impl Fn(&Outcome) -> Result<(), String> {
    let value = value.to_string();
    move |o| {
        let got = o.header(name);
        if got == Some(value.as_str()) {
            Ok(())
        } else {
            Err(format!("response {name}: {got:?}, want {value:?}"))
        }
    }
}

fn body_is(text: &str) -> impl Fn(&Outcome) -> Result<(), String> {
    let text = text.to_string();
    move |o| {
        if o.body == text.as_bytes() {
            Ok(())
        } else {
            Err(format!("body {:?}, want {text:?}", clip(&o.body)))
        }
    }
}

/// A JSON body with a "detail" key (the gateway's own error shape).
fn detail_json() -> impl Fn(&Outcome) -> Result<(), String> {
    |o| match serde_json::from_slice::<Value>(&o.body) {
        Ok(v) if v.get("detail").is_some() => Ok(()),
        _ => Err(format!(
            "body {:?} is not JSON with \"detail\"",
            clip(&o.body)
        )),
    }
}

const NO_CREDENTIALS: &str = r#"{"detail":"Authentication credentials were not provided."}"#;
const NO_ACCOUNT: &str = r#"{"detail":"No active account found with the given credentials"}"#;
const TOKEN_INVALID: &str = r#"{"detail":"Token is invalid","code":"token_not_valid"}"#;
const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn table(encoded_slash: bool) -> Vec<Row> {
    let claims = claims_with(json!({"roles": ["a", "b"]}));
    let token = bearer(&hs256(&claims));
    let ident = expected_identity(&claims);
    let staff_claims = claims_with(json!({"user_id": "7", "roles": ["user", "staff"]}));
    let staff = bearer(&hs256(&staff_claims));
    let user = bearer(&hs256(&claims_with(json!({"roles": ["user"]}))));
    let login = br#"{"username":"alice","password":"wrong"}"#;
    let preflight = |r: Row| {
        r.h("Origin", ORIGIN)
            .h("Access-Control-Request-Method", "POST")
            .h(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
    };

    let mut rows = vec![
        // ---- the health path
        get("health GET", "/healthz")
            .answers(200)
            .check(body_is("ok")),
        req("health HEAD", "HEAD", "/healthz").answers(200),
        req("health POST, CL body holding a request", "POST", "/healthz")
            .body(SMUGGLED)
            .answers(200)
            .check(body_is("ok")),
        req(
            "health POST, chunked body holding a request",
            "POST",
            "/healthz",
        )
        .chunked(&[SMUGGLED, b"GET /smuggled2 HTTP/1.1\r\nHost: x\r\n\r\n"])
        .answers(200),
        get("health with spoofed identity", "/healthz")
            .hs(spoofed_identity())
            .answers(200),
        // ---- static route
        get("static file", "/static/index.html")
            .answers(200)
            .check(body_is(INDEX_HTML)),
        req("static HEAD", "HEAD", "/static/index.html").answers(200),
        get("static dir without slash -> 307", "/static?x=1")
            .answers(307)
            .check(resp_header("location", "/static/?x=1")),
        req("static POST -> 405", "POST", "/static/index.html")
            .body(b"a=1")
            .answers(405),
        get("static missing -> 404", "/static/nope.txt").answers(404),
        get(
            "static with spoofed identity and token",
            "/static/index.html",
        )
        .hs(spoofed_identity())
        .h("Authorization", &token)
        .answers(200),
        // ---- public upstream route (auth none)
        get("proxy GET with query", "/x/y?a=1&b=%20&c=%2f&d=..")
            .proxied("/x/y?a=1&b=%20&c=%2f&d=..")
            .check(anonymous()),
        req("proxy POST, Content-Length body", "POST", "/pay")
            .h("Content-Type", "application/x-www-form-urlencoded")
            .body(b"transfer=100")
            .proxied("/pay")
            .check(up_body_len(12)),
        req("proxy POST, chunked body", "POST", "/upload")
            .h("Content-Type", "text/plain")
            .chunked(&[b"hello ", b"chunked ", b"world"])
            .proxied("/upload")
            .check(up_body_len(19)),
        req("proxy PUT, empty body", "PUT", "/thing/1")
            .body(b"")
            .proxied("/thing/1")
            .check(up_body_len(0)),
        req("proxy DELETE, no body", "DELETE", "/thing/1").proxied("/thing/1"),
        req("proxy HEAD", "HEAD", "/thing/1").proxied("/thing/1"),
        req("proxy PATCH, chunked body", "PATCH", "/thing/1")
            .chunked(&[b"{\"a\":", b"1}"])
            .proxied("/thing/1")
            .check(up_body_len(7)),
        get("spoofed identity, public route", "/x")
            .hs(spoofed_identity())
            .proxied("/x")
            .check(anonymous()),
        get("spoofed identity + token, public route", "/x")
            .hs(spoofed_identity())
            .h("Authorization", &token)
            .proxied("/x")
            .check(anonymous()),
        get("spoofed X-Forwarded-*", "/x")
            .h("X-Forwarded-For", "6.6.6.6")
            .h("X-Forwarded-For", "7.7.7.7, 8.8.8.8")
            .h("X-Real-IP", "6.6.6.6")
            .h("X-Forwarded-Host", "evil.example")
            .h("X-Forwarded-Proto", "https")
            .proxied("/x")
            .check(up_header("x-forwarded-for", "127.0.0.1"))
            .check(up_header("x-real-ip", "127.0.0.1"))
            .check(up_header("x-forwarded-host", HOST))
            .check(up_header("x-forwarded-proto", "http")),
        get("X-Request-Id kept", "/x")
            .h("X-Request-Id", "parity-req-1")
            .proxied("/x")
            .check(up_header("x-request-id", "parity-req-1"))
            .check(resp_header("x-request-id", "parity-req-1")),
        get("two X-Request-Id: the first wins", "/x")
            .h("X-Request-Id", "first-id")
            .h("X-Request-Id", "second-id")
            .proxied("/x")
            .check(up_header("x-request-id", "first-id"))
            .check(resp_header("x-request-id", "first-id")),
        get(
            "invalid then valid X-Request-Id: the first valid wins",
            "/x",
        )
        .h("X-Request-Id", "not valid!")
        .h("X-Request-Id", "second-valid")
        .proxied("/x")
        .check(up_header("x-request-id", "second-valid"))
        .check(resp_header("x-request-id", "second-valid")),
        get("underscore framing/hop names, no body", "/x")
            .h("Content_Length", "5")
            .h("Transfer_Encoding", "chunked")
            .h("Keep_Alive", "timeout=5")
            .h("Proxy_Connection", "keep-alive")
            .h("Proxy_Authorization", "Basic eDp5")
            .proxied("/x")
            .check(no_hop_headers())
            .check(up_body_len(0)),
        req("underscore framing names, CL body", "POST", "/x")
            .h("Content_Length", "999")
            .h("Transfer_Encoding", "chunked")
            .body(b"hello")
            .proxied("/x")
            .check(no_hop_headers())
            .check(up_body_len(5)),
        req("Content-Length with leading zeros", "POST", "/x")
            .h("Content-Length", "0005")
            .body(b"hello")
            .proxied("/x")
            .check(up_header("content-length", "5"))
            .check(up_body_len(5)),
        get("hop-by-hop headers dropped", "/x")
            .h("Keep-Alive", "timeout=5")
            .h("Proxy-Connection", "keep-alive")
            .h("Proxy-Authorization", "Basic eDp5")
            .h("TE", "trailers")
            .proxied("/x")
            .check(no_hop_headers()),
        get("absolute-form target", "http://example.com/abs?y=1")
            .h("Host", "other.test")
            .proxied("/abs?y=1")
            .check(up_header("host", "example.com"))
            .check(up_header("x-forwarded-host", "example.com")),
        // ---- paths: normalization and refusals
        get(
            "encoded unreserved decoded",
            "/%70ub%2Dlic/%7Euser%5fx?x=%41",
        )
        .proxied("/pub-lic/~user_x?x=%41"),
        get("kept escapes uppercased", "/x/a%3bb%20c%e2%82%ac").proxied("/x/a%3Bb%20c%E2%82%AC"),
        get("repeated slashes merged", "//x//y/?q=//").proxied("/x/y/?q=//"),
        get("%61dmin: protected route, no token", "/%61dmin/x")
            .answers(401)
            .check(body_is(NO_CREDENTIALS)),
        get("//admin: protected route, no token", "//admin/x")
            .answers(401)
            .check(body_is(NO_CREDENTIALS)),
        get("/admin%2fx -> 400", "/admin%2fx")
            .answers(400)
            .check(detail_json()),
        get("%2F in a public path -> 400", "/x/a%2Fb")
            .answers(400)
            .check(detail_json()),
        get("%5c in a path -> 400", "/x/a%5cb")
            .answers(400)
            .check(detail_json()),
        get("%00 in a path -> 400", "/x/a%00b")
            .answers(400)
            .check(detail_json()),
        get("dot-dot segment -> 400", "/x/../admin/y")
            .answers(400)
            .check(detail_json()),
        get("encoded dot-dot -> 400", "/x/%2e%2E/admin/y")
            .answers(400)
            .check(detail_json()),
        get("dot segment -> 400", "/x/./y")
            .answers(400)
            .check(detail_json()),
        get("allow_encoded_slash route keeps %2F", "/enc/a%2fb?c=%2f").proxied("/enc/a%2Fb?c=%2f"),
        get("%00 on an allow_encoded_slash route -> 400", "/enc/a%00b")
            .answers(400)
            .check(detail_json()),
        // ---- required route
        get("required, no token -> 401", "/admin/x")
            .answers(401)
            .check(body_is(NO_CREDENTIALS))
            .check(resp_header("www-authenticate", "Bearer realm=\"api\"")),
        get("required prefix without slash, no token -> 401", "/admin")
            .answers(401)
            .check(body_is(NO_CREDENTIALS)),
        get("required, valid token + spoofed identity", "/admin/x?p=1")
            .hs(spoofed_identity())
            .h("Authorization", &token)
            .proxied("/admin/x?p=1")
            .check(identity(ident.clone()))
            .check(up_header("authorization", &token)),
        get("required, invalid token -> 401", "/admin/x")
            .h("Authorization", "Bearer junk.junk.junk")
            .answers(401)
            .check(detail_json()),
        get("required, Bearer without token -> 401", "/admin/x")
            .h("Authorization", "Bearer")
            .answers(401)
            .check(detail_json()),
        req(
            "required, POST with CL body, no token -> 401",
            "POST",
            "/admin/x",
        )
        .body(b"transfer=100")
        .answers(401)
        .check(body_is(NO_CREDENTIALS)),
        req(
            "required, POST chunked, no token -> 401",
            "POST",
            "/admin/x",
        )
        .chunked(&[b"transfer=", b"100"])
        .answers(401),
        // ---- optional route
        get("optional, no token", "/opt/x")
            .hs(spoofed_identity())
            .proxied("/opt/x")
            .check(anonymous()),
        get("optional, valid token", "/opt/x")
            .h("Authorization", &token)
            .proxied("/opt/x")
            .check(identity(ident.clone())),
        get("optional, invalid token -> 401", "/opt/x")
            .h("Authorization", "Bearer a.b.c")
            .answers(401)
            .check(detail_json()),
        // ---- claim rule
        get("require roles, wrong role -> 403", "/staff/x")
            .h("Authorization", &user)
            .answers(403)
            .check(body_is(
                r#"{"detail":"You do not have permission to perform this action."}"#,
            )),
        get("require roles, staff token", "/staff/x")
            .h("Authorization", &staff)
            .proxied("/staff/x")
            .check(identity(expected_identity(&staff_claims))),
        // ---- methods
        req("methods: POST -> 405 before auth", "POST", "/ro/x")
            .h("Authorization", "Bearer junk")
            .body(b"a=1")
            .answers(405)
            .check(resp_header("allow", "GET, HEAD")),
        req("methods: DELETE chunked -> 405", "DELETE", "/ro/x")
            .chunked(&[b"abc"])
            .answers(405),
        get("methods: GET allowed", "/ro/x").proxied("/ro/x"),
        get("strip_prefix", "/strip/a/b?c=d").proxied("/a/b?c=d"),
        get("strip_prefix after normalization", "/strip//a/%62?c=d").proxied("/a/b?c=d"),
        // ---- CORS preflight
        preflight(req(
            "CORS preflight, protected route",
            "OPTIONS",
            "/admin/x",
        ))
        .hs(spoofed_identity())
        .h("Authorization", &token)
        .proxied("/admin/x")
        .check(anonymous()),
        req(
            "plain OPTIONS, protected route -> 401",
            "OPTIONS",
            "/admin/x",
        )
        .answers(401),
        // ---- token routes
        req("token obtain, wrong password -> 401", "POST", "/api/token/")
            .h("Content-Type", "application/json")
            .body(login)
            .answers(401)
            .check(body_is(NO_ACCOUNT)),
        req("token obtain, chunked -> 401", "POST", "/api/token/")
            .h("Content-Type", "application/json")
            .chunked(&[&login[..10], &login[10..]])
            .answers(401)
            .check(body_is(NO_ACCOUNT)),
        req("token verify, garbage -> 401", "POST", "/api/token/verify/")
            .h("Content-Type", "application/json")
            .body(br#"{"token":"garbage"}"#)
            .answers(401)
            .check(body_is(TOKEN_INVALID)),
        req(
            "token refresh, missing field -> 400",
            "POST",
            "/api/token/refresh/",
        )
        .h("Content-Type", "application/json")
        .body(b"{}")
        .answers(400),
        get("token route GET -> 405", "/api/token/")
            .answers(405)
            .check(resp_header("allow", "POST, OPTIONS")),
        preflight(req(
            "token route preflight -> 204",
            "OPTIONS",
            "/api/token/",
        ))
        .answers(204)
        .check(resp_header("access-control-allow-origin", ORIGIN)),
        get("token route, encoded path", "/api/%74oken/")
            .answers(405)
            .check(resp_header("allow", "POST, OPTIONS")),
        // ---- no route
        get("no route -> 404", "/nowhere")
            .on(Site::Bare)
            .answers(404)
            .check(detail_json()),
        req("no route, POST with body -> 404", "POST", "/nowhere")
            .on(Site::Bare)
            .body(SMUGGLED)
            .answers(404),
        get("no route, spoofed identity + token -> 404", "/nowhere")
            .on(Site::Bare)
            .hs(spoofed_identity())
            .h("Authorization", &token)
            .answers(404),
    ];
    if !encoded_slash {
        for r in &mut rows {
            if r.target.starts_with("/enc/") {
                r.checks.push(Box::new(|_| {
                    Err("config refuses allow_encoded_slash: no /enc/ route".to_string())
                }));
            }
        }
    }
    rows
}

// ---------------------------------------------------------------- protocols

#[derive(Clone, Copy, PartialEq, Debug)]
enum Proto {
    H11,
    H2,
    H10,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::H11 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
            Proto::H10 => "HTTP/1.0",
        })
    }
}

/// A response as a client received it.
struct Answer {
    status: u16,
    /// Lowercase names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Bytes the gateway sent after the response (raw paths only).
    trailing: Vec<u8>,
}

/// One exchange: the answer and what the upstream saw meanwhile.
struct Outcome {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailing: Vec<u8>,
    /// Upstream requests that carried this exchange's probe marker.
    seen: Vec<Seen>,
    /// Upstream requests during this exchange without it (smuggled ones).
    extra: Vec<Seen>,
}

impl Outcome {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn fold(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The request bytes for the raw clients.
fn raw_request(row: &Row, marker: &str, version: &str) -> Vec<u8> {
    let mut head = format!("{} {} {version}\r\n", row.method, row.target);
    if !row.has("host") {
        head.push_str(&format!("Host: {HOST}\r\n"));
    }
    head.push_str(&format!("X-Parity-Probe: {marker}\r\n"));
    for (n, v) in &row.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let mut body = Vec::new();
    match &row.body {
        Body::None => {}
        Body::Fixed(b) => {
            if !row.has("content-length") {
                head.push_str(&format!("Content-Length: {}\r\n", b.len()));
            }
            body.extend_from_slice(b);
        }
        Body::Chunked(parts) => {
            head.push_str("Transfer-Encoding: chunked\r\n");
            for p in parts {
                body.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
                body.extend_from_slice(p);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
        }
    }
    head.push_str("\r\n");
    [head.into_bytes(), body].concat()
}

/// A complete chunked body at the start of `data`: (payload, bytes used);
/// `None` while incomplete.
fn decode_chunked(data: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let Some(end) = find(&data[at..], b"\r\n").map(|e| e + at) else {
            return Ok(None);
        };
        let line = lossy(&data[at..end]);
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16)
            .map_err(|_| format!("bad chunk size line {line:?} in response"))?;
        at = end + 2;
        if size == 0 {
            loop {
                let Some(e) = find(&data[at..], b"\r\n").map(|e| e + at) else {
                    return Ok(None);
                };
                let empty = e == at;
                at = e + 2;
                if empty {
                    return Ok(Some((body, at)));
                }
            }
        }
        if data.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[at..at + size]);
        if &data[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF in response".to_string());
        }
        at += size + 2;
    }
}

/// One response at the start of `buf` (interim 1xx skipped): the answer and
/// the bytes it used; `None` while incomplete.
fn parse_response(buf: &[u8], head: bool, eof: bool) -> Result<Option<(Answer, usize)>, String> {
    let incomplete = |what: &str| {
        if eof {
            Err(format!(
                "connection closed with an incomplete {what}: {:?}",
                lossy(&buf[..buf.len().min(300)])
            ))
        } else {
            Ok(None)
        }
    };
    let mut at = 0;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut slots);
        let n = match r.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return incomplete("response head"),
            Err(e) => {
                return Err(format!(
                    "unparsable response ({e}): {:?}",
                    lossy(&buf[..buf.len().min(300)])
                ))
            }
        };
        let status = r.code.unwrap_or(0);
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), lossy(h.value)))
            .collect();
        at += n;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let rest = &buf[at..];
        let (body, used) = if head || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if value("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            match decode_chunked(rest)? {
                Some(done) => done,
                None => return incomplete("chunked body"),
            }
        } else if let Some(cl) = value("content-length") {
            let n: usize = cl
                .trim()
                .parse()
                .map_err(|_| format!("response Content-Length {cl:?}"))?;
            if rest.len() < n {
                return incomplete("body");
            }
            (rest[..n].to_vec(), n)
        } else if eof {
            (rest.to_vec(), rest.len())
        } else {
            return Ok(None);
        };
        let answer = Answer {
            status,
            headers,
            body,
            trailing: Vec::new(),
        };
        return Ok(Some((answer, at + used)));
    }
}

/// Raw HTTP/1.1 or HTTP/1.0: writes the request, reads one response by its
/// framing, then shuts the write side and collects whatever else arrives
/// until the gateway closes (a second, smuggled response would).
async fn raw_exchange(
    addr: SocketAddr,
    row: &Row,
    marker: &str,
    version: &str,
) -> Result<Answer, String> {
    let mut s = timeout(LIMIT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let bytes = raw_request(row, marker, version);
    // A refusal may close before the whole request is written: read anyway.
    let _ = timeout(LIMIT, s.write_all(&bytes)).await;
    let head = row.method == "HEAD";
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut eof = false;
    let (mut answer, used) = loop {
        if let Some(done) = parse_response(&buf, head, eof)? {
            break done;
        }
        match timeout(LIMIT, s.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "no complete response within {LIMIT:?}; got {:?}",
                    lossy(&buf[..buf.len().min(300)])
                ))
            }
            // A reset after the response counts as its end.
            Ok(Ok(0)) | Ok(Err(_)) => eof = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut trailing = buf[used..].to_vec();
    let _ = s.shutdown().await;
    while let Ok(Ok(n)) = timeout(DRAIN, s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        trailing.extend_from_slice(&chunk[..n]);
    }
    answer.trailing = trailing;
    Ok(answer)
}

type H2Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Headers HTTP/2 has no place for (RFC 9113 8.2.2); the request line's
/// Host becomes :authority.
fn h2_forbidden(name: &str, value: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "host" | "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    ) || (n == "te" && !value.eq_ignore_ascii_case("trailers"))
}

/// HTTP/2 with prior knowledge over plain TCP, one connection per request.
async fn h2_exchange(addr: SocketAddr, row: &Row, marker: &str) -> Result<Answer, String> {
    let stream = timeout(LIMIT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = timeout(
        LIMIT,
        hyper::client::conn::http2::handshake::<_, _, H2Body>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        ),
    )
    .await
    .map_err(|_| "h2 handshake timed out".to_string())?
    .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    let uri = if row.target.starts_with("http://") {
        row.target.clone()
    } else {
        format!("http://{HOST}{}", row.target)
    };
    let mut b = http::Request::builder()
        .method(row.method)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header(PROBE, marker);
    for (n, v) in &row.headers {
        if !h2_forbidden(n, v) {
            b = b.header(n.as_str(), v.as_str());
        }
    }
    let body: H2Body = match &row.body {
        Body::None => Empty::new().boxed(),
        Body::Fixed(data) => Full::new(Bytes::from(data.clone())).boxed(),
        Body::Chunked(parts) => {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
                .iter()
                .map(|p| Ok(Frame::data(Bytes::from(p.clone()))))
                .collect();
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
    };
    let request = b
        .body(body)
        .map_err(|e| format!("building the h2 request: {e}"))?;
    let resp = timeout(LIMIT, sender.send_request(request))
        .await
        .map_err(|_| format!("no h2 response within {LIMIT:?}"))?
        .map_err(|e| format!("h2 request failed: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = timeout(LIMIT, body.collect())
        .await
        .map_err(|_| "h2 body timed out".to_string())?
        .map_err(|e| format!("h2 body: {e} ({e:?})"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), lossy(v.as_bytes())))
            .collect(),
        body: body.to_vec(),
        trailing: Vec::new(),
    })
}

async fn exchange(env: &Env, index: usize, row: &Row, proto: Proto) -> Result<Outcome, String> {
    let addr = match row.site {
        Site::Root => env.root.addr,
        Site::Bare => env.bare.addr,
    };
    let marker = format!("{index}-{proto}");
    let before = env.up.count();
    let answer = match proto {
        Proto::H11 => raw_exchange(addr, row, &marker, "HTTP/1.1").await?,
        Proto::H10 => raw_exchange(addr, row, &marker, "HTTP/1.0").await?,
        Proto::H2 => h2_exchange(addr, row, &marker).await?,
    };
    let new: Vec<Seen> = env.up.seen.lock().unwrap()[before..].to_vec();
    let (seen, extra) = new.into_iter().partition(|s| {
        s.headers
            .get(PROBE)
            .is_some_and(|v| v.as_bytes() == marker.as_bytes())
    });
    Ok(Outcome {
        status: answer.status,
        headers: answer.headers,
        body: answer.body,
        trailing: answer.trailing,
        seen,
        extra,
    })
}

// ---------------------------------------------------------------- judging

fn target_of(s: &Seen) -> String {
    match &s.query {
        Some(q) => format!("{}?{q}", s.path),
        None => s.path.clone(),
    }
}

/// The upstream's view of a request, as comparable lines: the request line,
/// the body length, then each header (lowercase name) sorted.
fn upstream_head(s: &Seen, row: &Row) -> Vec<String> {
    let keep_id = row.has("x-request-id");
    let mut headers: Vec<String> = s
        .headers
        .iter()
        .filter(|(n, _)| !FRAMING.contains(&n.as_str()))
        .filter(|(n, _)| keep_id || n.as_str() != "x-request-id")
        .map(|(n, v)| format!("{n}: {}", lossy(v.as_bytes())))
        .collect();
    headers.sort();
    let mut out = vec![
        format!("{} {}", s.method, target_of(s)),
        format!("(body {} bytes)", s.body_len),
    ];
    out.extend(headers);
    out
}

/// Response headers that must agree across protocols.
const COMPARED_RESPONSE_HEADERS: [&str; 6] = [
    "content-type",
    "allow",
    "www-authenticate",
    "location",
    "access-control-allow-origin",
    "cache-control",
];

fn clip(b: &[u8]) -> String {
    let s = lossy(b);
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Everything wrong with one protocol's outcome on its own.
fn judge_one(row: &Row, o: &Outcome) -> Vec<String> {
    let mut errors = Vec::new();
    if o.status != row.status {
        // The upstream's echo would only repeat what is reported below.
        let body = if o.seen.is_empty() {
            format!(" (body {:?})", clip(&o.body))
        } else {
            String::new()
        };
        errors.push(format!("status {}, want {}{body}", o.status, row.status));
    }
    for s in &o.extra {
        errors.push(format!(
            "the upstream also saw {} {} (not this exchange's request)",
            s.method,
            target_of(s)
        ));
    }
    if !o.trailing.is_empty() {
        errors.push(format!(
            "{} more bytes after the response: {:?}",
            o.trailing.len(),
            clip(&o.trailing)
        ));
    }
    match (&row.upstream, o.seen.as_slice()) {
        (None, []) => {}
        (None, seen) => errors.push(format!(
            "proxied ({}x, as {}), want answered by the gateway",
            seen.len(),
            target_of(&seen[0])
        )),
        (Some(want), [s]) => {
            if target_of(s) != *want {
                errors.push(format!("upstream target {:?}, want {want:?}", target_of(s)));
            }
            if s.method != row.method {
                errors.push(format!("upstream method {}, want {}", s.method, row.method));
            }
        }
        (Some(_), seen) => errors.push(format!("upstream saw it {} times, want once", seen.len())),
    }
    // A request proxied where the gateway should have answered: the checks
    // of the gateway's answer would only repeat that.
    let misrouted = row.upstream.is_none() && !o.seen.is_empty();
    for check in row.checks.iter().filter(|_| !misrouted) {
        if let Err(e) = check(o) {
            errors.push(e);
        }
    }
    errors
}

/// Differences between the baseline (HTTP/1.1) and another protocol.
fn judge_pair(row: &Row, (pa, a): (Proto, &Outcome), (pb, b): (Proto, &Outcome)) -> Vec<String> {
    let mut errors = Vec::new();
    if a.status != b.status {
        errors.push(format!(
            "status differs: {pa} {}, {pb} {}",
            a.status, b.status
        ));
    }
    if let ([sa], [sb]) = (a.seen.as_slice(), b.seen.as_slice()) {
        let (ha, hb) = (upstream_head(sa, row), upstream_head(sb, row));
        if ha != hb {
            let only_a: Vec<&String> = ha.iter().filter(|l| !hb.contains(l)).collect();
            let only_b: Vec<&String> = hb.iter().filter(|l| !ha.contains(l)).collect();
            errors.push(format!(
                "upstream head differs: only via {pa}: {only_a:?}; only via {pb}: {only_b:?}"
            ));
        }
    }
    if a.seen.is_empty() && b.seen.is_empty() && a.body != b.body {
        errors.push(format!(
            "gateway's body differs: {pa} {:?}, {pb} {:?}",
            clip(&a.body),
            clip(&b.body)
        ));
    }
    for name in COMPARED_RESPONSE_HEADERS {
        let (va, vb) = (a.header(name), b.header(name));
        if va != vb {
            errors.push(format!("response {name} differs: {pa} {va:?}, {pb} {vb:?}"));
        }
    }
    errors
}

async fn run_row(env: &Env, index: usize, row: &Row) -> Vec<String> {
    let mut protos = vec![Proto::H11, Proto::H2];
    if row.http10 {
        protos.push(Proto::H10);
    }
    // Each problem once, with the protocols it showed on.
    let mut problems: Vec<(String, Vec<Proto>)> = Vec::new();
    let mut note =
        |problem: String, proto: Proto| match problems.iter_mut().find(|(p, _)| *p == problem) {
            Some((_, protos)) => protos.push(proto),
            None => problems.push((problem, vec![proto])),
        };
    let mut outcomes = Vec::new();
    for proto in protos {
        match exchange(env, index, row, proto).await {
            Ok(o) => {
                for problem in judge_one(row, &o) {
                    note(problem, proto);
                }
                outcomes.push((proto, o));
            }
            Err(e) => note(e, proto),
        }
    }
    let mut errors: Vec<String> = problems
        .into_iter()
        .map(|(problem, protos)| {
            let protos: Vec<String> = protos.iter().map(Proto::to_string).collect();
            format!("{}: {problem}", protos.join(", "))
        })
        .collect();
    if let Some(((pa, a), rest)) = outcomes.split_first() {
        for (pb, b) in rest {
            errors.extend(judge_pair(row, (*pa, a), (*pb, b)));
        }
    }
    errors
}

#[tokio::test]
async fn parity_table() {
    timeout(TABLE_LIMIT, async {
        let env = env().await;
        let rows = table(env.encoded_slash);
        assert!(rows.len() >= 40, "only {} rows", rows.len());
        let mut names: Vec<&str> = rows.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), rows.len(), "row names must be unique");
        for r in &rows {
            assert!(
                r.status != 0,
                "row {:?} says neither answers() nor proxied()",
                r.name
            );
        }
        let mut failed = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let errors = run_row(&env, i, row).await;
            if errors.is_empty() {
                println!("ok   {:2} {}", i, row.name);
            } else {
                println!("FAIL {:2} {}", i, row.name);
                for e in &errors {
                    println!("       {e}");
                }
                failed.push((i, row.name, errors));
            }
        }
        if !failed.is_empty() {
            let mut report = format!("{} of {} rows failed:\n", failed.len(), rows.len());
            for (i, name, errors) in &failed {
                report.push_str(&format!("[{i}] {name}\n"));
                for e in errors {
                    report.push_str(&format!("      {e}\n"));
                }
            }
            panic!("{report}");
        }
    })
    .await
    .expect("the parity table took too long");
}
