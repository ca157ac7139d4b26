#![allow(clippy::unwrap_used)]
//! The login path beyond its HTTP contract: what the files holding password
//! hashes and keys let others read, and what login timing tells about which
//! usernames exist. The real binary writes the files; the real gateway
//! answers the logins.

mod common;

use base64::Engine;
use bytes::Bytes;
use common::{req, send, Gateway};
use http_body_util::Full;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn run(dir: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Django's `pbkdf2_sha256` hash of `password` at Django's cost.
fn django_pbkdf2(password: &str, iterations: u32) -> String {
    let salt = "Qx7nKp2LwR9sT4vY8zAb1c";
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        salt.as_bytes(),
        password.as_bytes(),
        &mut out,
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(out);
    format!("pbkdf2_sha256${iterations}${salt}${b64}")
}

fn dump(users: &[(&str, String)]) -> String {
    let rows: Vec<serde_json::Value> = users
        .iter()
        .enumerate()
        .map(|(i, (name, hash))| {
            serde_json::json!({
                "model": "auth.user",
                "pk": i + 100,
                "fields": {"username": name, "password": hash, "is_active": true}
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

#[test]
fn files_with_secrets_are_written_0600() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    // A file created loosely by hand is tightened when the gateway rewrites it.
    std::fs::write(&users, "").unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    run(
        dir.path(),
        &["user", "add", "alice", "--users-file", "users.toml"],
        "s3cret-pw\n",
    );
    assert_eq!(mode(&users), 0o600);
    assert!(std::fs::read_to_string(&users).unwrap().contains("alice"));

    let fresh = dir.path().join("imported.toml");
    std::fs::write(
        dir.path().join("dump.json"),
        dump(&[("dj", django_pbkdf2("pw", 1000))]),
    )
    .unwrap();
    run(
        dir.path(),
        &[
            "user",
            "import-django",
            "dump.json",
            "--users-file",
            "imported.toml",
        ],
        "",
    );
    assert_eq!(mode(&fresh), 0o600);
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o666)).unwrap();
    run(
        dir.path(),
        &[
            "user",
            "import-django",
            "dump.json",
            "--users-file",
            "users.toml",
        ],
        "",
    );
    assert_eq!(mode(&users), 0o600);

    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(keys.join("private.pem"), "old").unwrap();
    std::fs::set_permissions(
        keys.join("private.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    run(
        dir.path(),
        &["keygen", "--alg", "ES256", "--out", "keys"],
        "",
    );
    assert_eq!(mode(&keys.join("private.pem")), 0o600);
    // No temporary file left behind with a secret in it.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .chain(std::fs::read_dir(&keys).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

async fn login_ms(gw: &Gateway, username: &str) -> f64 {
    let body = serde_json::json!({"username": username, "password": "wrong-password"});
    let start = Instant::now();
    let r = send(
        gw.addr,
        req("POST", "/api/token/")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await;
    let took = start.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(r.status, 401, "{}", r.text());
    took
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An unknown username costs what a known one with a wrong password costs,
/// with users imported from Django (pbkdf2 at Django's 870,000 iterations,
/// far above argon2's default cost the dummy check used to pay).
#[tokio::test]
async fn unknown_usernames_cost_what_wrong_passwords_cost() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dump.json"),
        dump(&[
            ("dj-alice", django_pbkdf2("pw-a", 870_000)),
            ("dj-bob", django_pbkdf2("pw-b", 870_000)),
        ]),
    )
    .unwrap();
    run(
        dir.path(),
        &[
            "user",
            "import-django",
            "dump.json",
            "--users-file",
            "users.toml",
        ],
        "",
    );
    let toml = r#"
[server]
listen = "127.0.0.1:0"
[log]
access_log = false
[jwt]
algorithm = "HS256"
secret = "login-timing-test-secret-at-least-32-bytes"
[store]
path = "{dir}/gateway.db"
[tokens]
[tokens.credentials]
users_file = "{dir}/users.toml"
[tokens.rate_limit]
per_user = 0
per_address = 0
"#;
    let gw = Gateway::start_in(dir, toml).await;
    // Warm up both paths (first store writes, thread pool).
    login_ms(&gw, "dj-alice").await;
    login_ms(&gw, "nobody").await;
    // Noise on a shared 2-core machine: a second round before giving up.
    let mut last = (0.0, 0.0);
    for _round in 0..2 {
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..9 {
            // Interleaved, so drift in machine load hits both alike.
            known.push(login_ms(&gw, if i % 2 == 0 { "dj-alice" } else { "dj-bob" }).await);
            unknown.push(login_ms(&gw, &format!("nobody-{i}")).await);
            assert!(Instant::now() < deadline, "logins too slow to measure");
        }
        let (k, u) = (median(known), median(unknown));
        last = (k, u);
        if (u - k).abs() <= 0.10 * k {
            eprintln!("median login: known user, wrong password {k:.1} ms; unknown user {u:.1} ms");
            return;
        }
    }
    panic!(
        "median login: known user, wrong password {:.1} ms; unknown user {:.1} ms (more than 10% apart)",
        last.0, last.1
    );
}
