//! The built binary, driven as a user would: `--version`, `--help`,
//! `check`, `healthcheck`, and `serve` with SIGHUP reload and a SIGTERM
//! drain. Every wait is bounded.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

fn gateway(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("GATEWAY_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version() {
    let dir = tempfile::tempdir().unwrap();
    let o = gateway(dir.path(), &["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        format!("gateway {}\n", env!("CARGO_PKG_VERSION"))
    );
    // Subcommands share it.
    let o = gateway(dir.path(), &["check", "--version"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn help_lists_the_subcommands_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let o = gateway(dir.path(), &["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    for word in [
        "serve",
        "check",
        "healthcheck",
        "--version",
        "--help",
        "Usage:",
    ] {
        assert!(out.contains(word), "--help lacks {word:?}:\n{out}");
    }
    for sub in ["serve", "check"] {
        let o = gateway(dir.path(), &[sub, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        let out = stdout(&o);
        for word in ["--config", "GATEWAY_CONFIG", "./gateway.toml"] {
            assert!(out.contains(word), "{sub} --help lacks {word:?}:\n{out}");
        }
    }
    let o = gateway(dir.path(), &["healthcheck", "--help"]);
    let out = stdout(&o);
    for word in ["--config", "--url", "--timeout"] {
        assert!(
            out.contains(word),
            "healthcheck --help lacks {word:?}:\n{out}"
        );
    }
    // No subcommand: usage on stderr, exit 2 (clap's usage code).
    let o = gateway(dir.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Usage:"));
}

const SUMMARY_TOML: &str = r#"
[server]
listen = "127.0.0.1:18443"
http_listen = "127.0.0.1:18080"
redirect_http = true
health_path = "/healthz"

[tls]
self_signed = true

[upstreams.app]
url = "http://127.0.0.1:8000"
connect_timeout = "2s"
timeout = "60s"

[upstreams.sock]
url = "unix:/run/gunicorn.sock"
connect_timeout = "500ms"
timeout = "5m"

[[routes]]
path = "/"
upstream = "app"

[[routes]]
path = "/static/"
static = "www"

[[routes]]
path = "/api/admin"
upstream = "sock"
strip_prefix = true
"#;

#[test]
fn check_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("gateway.toml"), SUMMARY_TOML).unwrap();
    let o = gateway(dir.path(), &["check", "--config", "gateway.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "gateway.toml: OK", "{out}");
    let find = |s: &str| {
        lines
            .iter()
            .position(|l| l.contains(s))
            .unwrap_or_else(|| panic!("summary lacks {s:?}:\n{out}"))
    };
    // Listeners.
    let listeners = find("listeners");
    let main = find("127.0.0.1:18443");
    assert!(lines[main].contains("https"), "{out}");
    let second = find("127.0.0.1:18080");
    assert!(lines[second].contains("redirect"), "{out}");
    assert!(listeners < main && main < second);
    find("/healthz");
    // Routes in match order: longest prefix first.
    let routes = find("routes");
    let admin = find("/api/admin");
    let stat = find("/static/");
    let root = lines
        .iter()
        .position(|l| l.starts_with("/ ") && l.contains("upstream app"))
        .unwrap_or_else(|| panic!("no root route line:\n{out}"));
    assert!(routes < admin && admin < stat && stat < root, "{out}");
    assert!(lines[admin].contains("upstream sock"), "{out}");
    assert!(lines[stat].contains("static"), "{out}");
    assert!(lines[stat].contains("www"), "{out}");
    // Upstreams with their addresses and timeouts.
    let ups = find("upstreams");
    let app = find("app: http://127.0.0.1:8000");
    let sock = find("sock: unix:/run/gunicorn.sock");
    assert!(ups > root && app > ups && sock > ups, "{out}");
    assert!(
        lines[app].contains("2s") && lines[app].contains("60s"),
        "{out}"
    );
    assert!(lines[sock].contains("500ms"), "{out}");
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn check_the_shipped_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("gateway.toml.example");
    if !example.exists() {
        eprintln!("SKIPPED: no gateway.toml.example yet");
        return;
    }
    let o = gateway(root, &["check", "--config", example.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// The ready configs of examples/django pass `check`, with the secret
/// variable the docs name and the users file stage 3 imports.
#[test]
fn check_the_django_example_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/django");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all("/tmp/example-static").unwrap();
    for stage in ["gateway-stage2.toml", "gateway-stage3.toml"] {
        let text = std::fs::read_to_string(root.join(stage)).unwrap();
        std::fs::write(dir.path().join(stage), text).unwrap();
        std::fs::write(dir.path().join("users.toml"), "").unwrap();
        let o = Command::new(BIN)
            .args(["check", "--config", stage])
            .current_dir(dir.path())
            .env("JWT_SIGNING_KEY", "a-secret-of-reasonable-length-for-hs256")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{stage}: {}", stderr(&o));
    }
}

/// Runs `check` on `toml` as ./gateway.toml; returns (code, stderr).
fn check_error(toml: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gateway.toml"), toml).unwrap();
    let o = gateway(dir.path(), &["check", "--config", "gateway.toml"]);
    (o.status.code(), stderr(&o), stdout(&o))
}

#[test]
fn check_unknown_upstream_exits_2_naming_file_line_key() {
    let toml = "[upstreams.app]\nurl = \"http://127.0.0.1:8000\"\n\n[[routes]]\npath = \"/\"\nupstream = \"ap\"\n";
    let (code, err, out) = check_error(toml);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        "gateway.toml:6: routes[0].upstream: no upstream named \"ap\" (known: app)"
    );
    assert!(out.is_empty(), "{out}");
}

#[test]
fn check_unknown_key_exits_2_naming_file_line_key() {
    let toml = "[server]\nlisten = \"127.0.0.1:8080\"\nhealth_pat = \"/h\"\n";
    let (code, err, _) = check_error(toml);
    assert_eq!(code, Some(2), "{err}");
    let first = err.lines().next().unwrap();
    assert!(
        first.starts_with("gateway.toml:3:"),
        "message should name file and line 3: {err}"
    );
    assert!(first.contains("health_pat"), "{err}");
    assert!(first.contains("server"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_bad_duration_exits_2_naming_file_line_key() {
    let toml = "[server]\nlisten = \"127.0.0.1:8080\"\n\n\nidle_timeout = \"5 parsecs\"\n";
    let (code, err, _) = check_error(toml);
    assert_eq!(code, Some(2), "{err}");
    let first = err.lines().next().unwrap();
    assert!(first.starts_with("gateway.toml:5:"), "{err}");
    assert!(first.contains("server.idle_timeout"), "{err}");
}

#[test]
fn check_tls_key_mismatch_exits_2_naming_the_files() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.write_leaf(dir.path(), "a", &["a.test"]);
    ca.write_leaf(dir.path(), "b", &["b.test"]);
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"a.crt\"\nkey = \"b.key\"\n",
    )
    .unwrap();
    let o = gateway(dir.path(), &["check", "--config", "gateway.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "gateway.toml:5: tls.key: ./b.key does not match the certificate ./a.crt\n"
    );
    // A missing SNI certificate points at its own line and key.
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n\n[[tls.sni]]\nserver_name = \"x.test\"\ncert = \"missing.crt\"\nkey = \"b.key\"\n",
    )
    .unwrap();
    let o = gateway(dir.path(), &["check", "--config", "gateway.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("gateway.toml:9: tls.sni[0].cert: cannot read ./missing.crt: "),
        "{err}"
    );
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"a.crt\"\nkey = \"b.key\"\n",
    )
    .unwrap();
    // `serve` refuses the same config the same way, before binding.
    let o = gateway(dir.path(), &["serve", "--config", "gateway.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("b.key"), "{}", stderr(&o));
}

#[test]
fn check_missing_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let o = gateway(dir.path(), &["check", "--config", "nope.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.toml"), "{}", stderr(&o));
    // Default path: ./gateway.toml.
    let o = gateway(dir.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("gateway.toml"), "{}", stderr(&o));
}

#[test]
fn gateway_config_env_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:18081\"\n").unwrap();
    let o = Command::new(BIN)
        .arg("check")
        .current_dir(dir.path())
        .env("GATEWAY_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with(&format!("{}: OK", path.display())), "{out}");
    assert!(out.contains("127.0.0.1:18081"), "{out}");
    // --config wins over the environment.
    std::fs::write(
        dir.path().join("flag.toml"),
        "[server]\nlisten = \"127.0.0.1:18082\"\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["check", "--config", "flag.toml"])
        .current_dir(dir.path())
        .env("GATEWAY_CONFIG", &path)
        .output()
        .unwrap();
    assert!(stdout(&o).contains("127.0.0.1:18082"), "{}", stdout(&o));
}

// ------------------------------------------------------ serve

/// A running `gateway serve`, killed on drop; its stderr is collected.
struct Served {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Writes `toml` (with `{port}` and `{dir}` filled in) and starts the
    /// binary on a port found free just before. A port taken in between
    /// makes the process exit; then it is tried once more on another.
    async fn start(dir: tempfile::TempDir, toml: &str, tls: bool) -> Served {
        let mut last_log = String::new();
        for _attempt in 0..2 {
            let port = free_port();
            let text = toml
                .replace("{port}", &port.to_string())
                .replace("{dir}", dir.path().to_str().unwrap());
            std::fs::write(dir.path().join("gateway.toml"), text).unwrap();
            let (mut child, log) = spawn_serve(dir.path());
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                if health_status(port, tls).await == Some(200) {
                    return Served {
                        child,
                        port,
                        log,
                        dir,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            // Let the reader thread drain what is left.
            std::thread::sleep(Duration::from_millis(100));
            last_log = log.lock().unwrap().clone();
            if !(exited && last_log.contains("cannot listen")) {
                break;
            }
        }
        panic!("gateway did not become healthy:\n{last_log}");
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} failed");
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gateway did not exit within {limit:?}:\n{}", self.log());
    }

    async fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// Starts `gateway serve` in `dir`; its stderr is collected by a thread.
fn spawn_serve(dir: &Path) -> (Child, Arc<Mutex<String>>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "gateway.toml"])
        .current_dir(dir)
        .env_remove("GATEWAY_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let l = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            l.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, log)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// GET /healthz on the port (TLS unverified for self_signed); the status.
async fn health_status(port: u16, tls: bool) -> Option<u16> {
    tokio::task::spawn_blocking(move || {
        let (code, _) = raw_get(port, "/healthz", tls)?;
        Some(code)
    })
    .await
    .unwrap()
}

/// A blocking GET with `Connection: close`; (status, body). TLS without
/// verification (only used with self_signed).
fn raw_get(port: u16, path: &str, tls: bool) -> Option<(u16, String)> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    if tls {
        let cfg = insecure_client();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(cfg, name).ok()?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(req.as_bytes()).ok()?;
        let _ = s.read_to_end(&mut out);
    } else {
        tcp.write_all(req.as_bytes()).ok()?;
        let _ = tcp.read_to_end(&mut out);
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The healthcheck's loopback client: no certificate verification.
fn insecure_client() -> Arc<rustls::ClientConfig> {
    Arc::new(gateway::healthcheck::client_config(true))
}

fn static_site(dir: &Path) {
    for (d, body) in [("one", "site one\n"), ("two", "site two\n")] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        std::fs::write(dir.join(d).join("index.html"), body).unwrap();
    }
}

fn serve_toml(route_dir: &str, tls: bool) -> String {
    // The TLS configs also run on one worker (the single-threaded
    // scheduler); the plain ones on the default multi-threaded one.
    let (tls, workers) = if tls {
        ("[tls]\nself_signed = true\n", "workers = 1")
    } else {
        ("", "")
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
health_path = "/healthz"
shutdown_grace = "10s"
{workers}

{tls}
[log]
access_log = true

[[routes]]
path = "/site/"
static = "{route_dir}"
"#
    )
}

fn healthcheck(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["healthcheck"];
    all.extend_from_slice(args);
    gateway(dir, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_health_and_healthcheck_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    static_site(dir.path());
    let s = Served::start(dir, &serve_toml("one", false), false).await;
    let (code, body) = raw_get(s.port, "/healthz", false).unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, body) = raw_get(s.port, "/site/", false).unwrap();
    assert_eq!((code, body.as_str()), (200, "site one\n"));
    let d = s.dir.path().to_path_buf();
    let o = healthcheck(&d, &["--config", "gateway.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let url = format!("http://127.0.0.1:{}/healthz", s.port);
    let o = healthcheck(&d, &["--url", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A path that is not the health endpoint and answers 404: unhealthy.
    let url = format!("http://127.0.0.1:{}/nope", s.port);
    let o = healthcheck(&d, &["--url", &url]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // The access log line was written for the requests above.
    assert!(
        s.wait_log("/site/", Duration::from_secs(5)).await,
        "{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_config_against_tls_self_signed() {
    let dir = tempfile::tempdir().unwrap();
    static_site(dir.path());
    let s = Served::start(dir, &serve_toml("one", true), true).await;
    assert!(s.log().contains("self_signed"), "loud warning: {}", s.log());
    let d = s.dir.path().to_path_buf();
    let o = healthcheck(&d, &["--config", "gateway.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let url = format!("https://127.0.0.1:{}/healthz", s.port);
    let o = healthcheck(&d, &["--url", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let url = format!("https://localhost:{}/healthz", s.port);
    let o = healthcheck(&d, &["--url", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // GATEWAY_CONFIG works for healthcheck too.
    let o = Command::new(BIN)
        .arg("healthcheck")
        .current_dir(std::env::temp_dir())
        .env("GATEWAY_CONFIG", d.join("gateway.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn healthcheck_dead_port_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let started = Instant::now();
    let o = healthcheck(dir.path(), &["--url", &url, "--timeout", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("healthcheck"), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(15));
    // Via --config too, and with a config that does not load.
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let o = healthcheck(dir.path(), &["--config", "gateway.toml"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    std::fs::write(dir.path().join("gateway.toml"), "nonsense = 1\n").unwrap();
    let o = healthcheck(dir.path(), &["--config", "gateway.toml"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = healthcheck(dir.path(), &["--url", "not a url"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    static_site(dir.path());
    let s = Served::start(dir, &serve_toml("one", false), false).await;
    assert_eq!(raw_get(s.port, "/site/", false).unwrap().1, "site one\n");
    let cfg = s.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("static = \"one\"", "static = \"two\"")).unwrap();
    s.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut body = String::new();
    while Instant::now() < deadline {
        body = raw_get(s.port, "/site/", false)
            .map(|r| r.1)
            .unwrap_or_default();
        if body == "site two\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body, "site two\n", "{}", s.log());

    // Invalid: refused with an error naming file, line and key; the
    // previous config keeps serving.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{good}\n[[routes]]\npath = \"/x/\"\nupstream = \"ap\"\n"),
    )
    .unwrap();
    s.signal("-HUP");
    assert!(
        s.wait_log("no upstream named", Duration::from_secs(10))
            .await,
        "{}",
        s.log()
    );
    assert!(s.log().contains("gateway.toml:"), "{}", s.log());
    assert_eq!(raw_get(s.port, "/site/", false).unwrap().1, "site two\n");
    assert_eq!(raw_get(s.port, "/healthz", false).unwrap().0, 200);
    let mut s = s;
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "exited on a bad reload"
    );
    s.signal("-TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(15)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_an_in_flight_request_then_exits_0() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
health_path = "/healthz"
shutdown_grace = "10s"

[upstreams.app]
url = "{}"
timeout = "10s"

[[routes]]
path = "/"
upstream = "app"
"#,
        up.url()
    );
    let mut s = Served::start(dir, &toml, false).await;
    let port = s.port;
    let slow = tokio::task::spawn_blocking(move || raw_get(port, "/slow/800", false));
    assert!(
        eventually(Duration::from_secs(10), || up.count() >= 1).await,
        "the slow request never reached the upstream"
    );
    s.signal("-TERM");
    let code = s.wait_exit(Duration::from_secs(15)).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), slow)
        .await
        .unwrap()
        .unwrap()
        .expect("in-flight request got no answer");
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["path"], "/slow/800");
    assert_eq!(code, Some(0), "{}", s.log());
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    static_site(dir.path());
    let mut s = Served::start(dir, &serve_toml("one", false), false).await;
    s.signal("-INT");
    assert_eq!(
        s.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        s.log()
    );
}
