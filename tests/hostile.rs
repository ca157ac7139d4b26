#![allow(clippy::unwrap_used)]
//! Hostile clients against the real binary (issue 14, item 2).
//!
//! Each test starts the built `gateway` as a child process (so its memory
//! and descriptors can be read from /proc), a raw recording upstream in
//! this process, and then:
//!
//! 1. measures a legitimate client's latency on a quiet gateway (p99),
//! 2. runs one attack while the legitimate client keeps sending requests,
//!    checking the answer every hostile request gets,
//! 3. checks the legitimate client was always served, with its p99 within
//!    2x of the quiet one (or within a floor of a few milliseconds: a
//!    debug build on a shared 2-core machine jitters by that much on its
//!    own), and
//! 4. closes the attackers and waits (at most a minute) for resident
//!    memory and open descriptors to come back to the quiet baseline.
//!
//! Each test prints one `hostile:` line with its figures (docs/security.md
//! quotes them). Everything listens on 127.0.0.1, every loop is bounded in
//! count and time, and the tests run one at a time (`HEAVY`) so that they
//! do not measure each other.
mod common;
use common::bin::{free_port, Bin};
use common::raw::*;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

/// A whole test takes at most this long.
const TEST_LIMIT: Duration = Duration::from_secs(180);
/// Memory and descriptors must be back to baseline within this.
const SETTLE: Duration = Duration::from_secs(60);
/// Resident memory may end this far above the quiet baseline: allocator
/// bookkeeping and the pools the attack warmed (upstream connections).
const RSS_SLACK_KIB: u64 = 6 * 1024;
/// Below this, a p99 is noise on a shared 2-core machine (debug build).
const P99_FLOOR: Duration = Duration::from_millis(25);
const HEADER_TIMEOUT_S: u64 = 2;
const UPSTREAM_TIMEOUT_S: u64 = 3;

static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn bounded(f: impl Future<Output = ()>) {
    let _one = HEAVY.lock().await;
    bounded_within(TEST_LIMIT, f).await;
}

// ---------------------------------------------------------------- the binary

/// Everything is proxied to `upstream` without auth, except `/admin/`
/// (a Bearer token required) and `/site/` (static files).
fn config(port: u16, upstream: &str, server_extra: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nheader_read_timeout = \"{HEADER_TIMEOUT_S}s\"\n\
         max_body_bytes = \"8MiB\"\n{server_extra}\n\
         [log]\naccess_log = false\n{jwt}\n\
         [upstreams.app]\nurl = \"{upstream}\"\ntimeout = \"{UPSTREAM_TIMEOUT_S}s\"\n\
         [[routes]]\npath = \"/site/\"\nstatic = \"{{dir}}/site\"\n\
         [[routes]]\npath = \"/admin/\"\nupstream = \"app\"\nauth = \"required\"\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\nauth = \"none\"\n{extra}",
        jwt = jwt_section()
    )
}

async fn start(upstream: &str, extra: &str) -> Bin {
    let port = free_port();
    launch(&config(port, upstream, "", extra), port).await
}

/// The binary on `toml`, in a directory holding `site/index.html` and,
/// outside that static root, `secret.txt`.
async fn launch(toml: &str, port: u16) -> Bin {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "<p>site</p>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside the root").unwrap();
    Bin::launch_in(dir, toml, port, "warn").await
}

/// Raises this process's open-file limit to its hard limit (thousands of
/// attacking sockets) and says how many attackers it can afford.
fn attackers(wanted: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (l.current, l.maximum) {
        if soft < hard {
            l.current = Some(hard);
            let _ = setrlimit(Resource::Nofile, l);
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let afford = usize::try_from(soft.saturating_sub(256)).unwrap_or(usize::MAX);
    if afford < wanted {
        eprintln!("hostile: open-file limit {soft}: {afford} attackers instead of {wanted}");
    }
    wanted.min(afford)
}

// ---------------------------------------------------------------- the legitimate client

/// One keep-alive connection sending `GET /legit` back to back, timing
/// each exchange, until told to stop.
struct Legit {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Duration>, usize)>,
}

async fn legit_exchange(c: &mut Option<Client>, addr: SocketAddr) -> Option<Duration> {
    let t0 = Instant::now();
    if c.is_none() {
        *c = Some(Client::connect(addr).await);
    }
    let conn = c.as_mut()?;
    if !conn
        .try_send(b"GET /legit HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
    {
        *c = None;
        return None;
    }
    match conn.response_within(Duration::from_secs(10)).await {
        Ok(r) if r.status == 200 => Some(t0.elapsed()),
        _ => {
            *c = None;
            None
        }
    }
}

impl Legit {
    fn start(addr: SocketAddr) -> Legit {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut times, mut failed) = (Vec::new(), 0);
            let mut c = None;
            for _ in 0..100_000 {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                match legit_exchange(&mut c, addr).await {
                    Some(t) => times.push(t),
                    None => failed += 1,
                }
                sleep(Duration::from_millis(5)).await;
            }
            (times, failed)
        });
        Legit { stop, task }
    }

    /// (p99, requests served, requests failed)
    async fn finish(self) -> (Duration, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let (times, failed) = self.task.await.unwrap();
        (p99(times.clone()), times.len(), failed)
    }
}

fn p99(mut t: Vec<Duration>) -> Duration {
    if t.is_empty() {
        return Duration::ZERO;
    }
    t.sort();
    t[(t.len() * 99 / 100).min(t.len() - 1)]
}

/// The quiet p99 over 300 sequential requests, after a warm-up.
async fn quiet_p99(addr: SocketAddr) -> Duration {
    let mut c = None;
    for _ in 0..50 {
        legit_exchange(&mut c, addr).await.expect("warm-up failed");
    }
    let mut times = Vec::new();
    for _ in 0..300 {
        times.push(
            legit_exchange(&mut c, addr)
                .await
                .expect("quiet request failed"),
        );
        sleep(Duration::from_millis(2)).await;
    }
    p99(times)
}

// ---------------------------------------------------------------- the frame

/// Runs `attack` against `bin` with the legitimate client alongside, then
/// checks service, latency, memory and descriptors. `attack` returns a
/// short description of what it sent and what it got.
async fn under_attack<F, Fut>(name: &str, bin: &mut Bin, attack: F)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: Future<Output = String>,
{
    let quiet = quiet_p99(bin.addr).await;
    // Baseline after the warm-up: what a quiet gateway holds.
    sleep(Duration::from_millis(300)).await;
    let (rss0, fds0) = (bin.rss_kib(), bin.fds());
    let legit = Legit::start(bin.addr);
    let t0 = Instant::now();
    let what = attack(bin.addr).await;
    let took = t0.elapsed();
    let peak_rss = bin.status_kib("VmHWM:");
    let (loud, served, failed) = legit.finish().await;
    assert!(bin.alive(), "{name}: the gateway died");

    // Back to baseline within a minute.
    let t1 = Instant::now();
    let (mut rss, mut fds) = (bin.rss_kib(), bin.fds());
    while t1.elapsed() < SETTLE && (rss > rss0 + RSS_SLACK_KIB || fds > fds0 + 2) {
        sleep(Duration::from_millis(250)).await;
        (rss, fds) = (bin.rss_kib(), bin.fds());
    }
    let settled = t1.elapsed();
    println!(
        "hostile: {name}: {what}; legit {served} served, {failed} failed, p99 quiet {quiet:?} \
         under attack {loud:?}; attack {took:.1?}; RSS {rss0} KiB, peak {peak_rss} KiB, after {rss} KiB \
         (settled in {settled:.1?}); fds {fds0} -> {fds}"
    );
    assert_eq!(failed, 0, "{name}: legitimate requests failed");
    assert!(served > 0, "{name}: no legitimate request was served");
    assert!(
        loud <= (quiet * 2).max(P99_FLOOR),
        "{name}: legitimate p99 {loud:?} under attack, {quiet:?} quiet"
    );
    assert!(
        rss <= rss0 + RSS_SLACK_KIB,
        "{name}: RSS {rss} KiB a minute after, {rss0} KiB before"
    );
    assert!(
        fds <= fds0 + 2,
        "{name}: {fds} descriptors after, {fds0} before"
    );
}

/// Runs `n` copies of `one` concurrently, started `pace` apart (an attack
/// that lasts, not one burst the legitimate client can wait out), and
/// returns their outcomes.
async fn swarm<F, Fut>(n: usize, pace: Duration, one: F) -> Vec<String>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = String> + Send + 'static,
{
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(one(i)));
        if !pace.is_zero() {
            sleep(pace).await;
        }
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// "3x closed, 5x 400" from outcomes.
fn tally(outcomes: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for o in outcomes {
        match counts.iter_mut().find(|(k, _)| k == o) {
            Some((_, n)) => *n += 1,
            None => counts.push((o.clone(), 1)),
        }
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n}x {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads until EOF (or a reset) for at most `within`: the status of the
/// first response if one came, then "closed"; or "open" when `within`
/// passed with the connection still open.
async fn outcome(s: &mut TcpStream, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return format!("{} open", status_of(&buf)),
            Ok(Ok(0)) | Ok(Err(_)) => return format!("{} closed", status_of(&buf)),
            Ok(Ok(n)) => {
                if buf.len() < 64 * 1024 {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

fn status_of(buf: &[u8]) -> String {
    if buf.is_empty() {
        return "no answer,".into();
    }
    let responses = 1 + buf.windows(11).filter(|w| w == b"\r\nHTTP/1.1 ").count();
    if responses > 1 {
        return format!("{responses} responses,");
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    match text.split(' ').nth(1) {
        Some(code) if text.starts_with("HTTP/1.") => format!("{code},"),
        _ => "non-HTTP bytes,".into(),
    }
}

// ================================================================ slowloris

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_heads_and_bodies() {
    bounded(async {
        let up = RawUpstream::start().await;
        let mut bin = start(&up.url(), "").await;
        let heads = attackers(1500);
        let bodies = attackers(1500 + 500) - heads;
        under_attack("slowloris", &mut bin, |addr| async move {
            let within = Duration::from_secs(HEADER_TIMEOUT_S + UPSTREAM_TIMEOUT_S + 6);
            // Heads: a header line every 500 ms, never the blank line.
            let h = tokio::spawn(swarm(
                heads,
                Duration::from_millis(1),
                move |_| async move {
                    let Ok(mut s) = TcpStream::connect(addr).await else {
                        return "connect failed".into();
                    };
                    let _ = s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n").await;
                    let t0 = Instant::now();
                    for _ in 0..40 {
                        sleep(Duration::from_millis(500)).await;
                        if s.write_all(b"X-Drip: x\r\n").await.is_err() {
                            break;
                        }
                        if t0.elapsed() > within {
                            break;
                        }
                    }
                    outcome(&mut s, Duration::from_millis(500)).await
                },
            ));
            // Bodies: a head announcing 1 MB, 100 bytes, then silence.
            let b = tokio::spawn(swarm(
                bodies,
                Duration::from_millis(4),
                move |_| async move {
                    let Ok(mut s) = TcpStream::connect(addr).await else {
                        return "connect failed".into();
                    };
                    let _ = s
                        .write_all(
                            b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n",
                        )
                        .await;
                    let _ = s.write_all(&[b'x'; 100]).await;
                    outcome(&mut s, within).await
                },
            ));
            let (h, b) = (h.await.unwrap(), b.await.unwrap());
            let what = format!(
                "{heads} dripping heads: {}; {bodies} stalled bodies: {}",
                tally(&h),
                tally(&b)
            );
            assert!(
                h.iter().all(|o| o.ends_with("closed")),
                "a dripping head outlived header_read_timeout: {what}"
            );
            assert!(
                b.iter().all(|o| o == "408, closed"),
                "a stalled body was not answered 408: {what}"
            );
            what
        })
        .await;
        assert!(
            !up.targets().iter().any(|t| t == "/slow" || t == "/upload"),
            "an incomplete request reached the upstream"
        );
    })
    .await;
}

// ================================================================ headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_numerous_headers() {
    bounded(async {
        let up = RawUpstream::start().await;
        let mut bin = start(&up.url(), "").await;
        under_attack("headers", &mut bin, |addr| async move {
            let n = attackers(400);
            let outcomes = swarm(n, Duration::from_millis(5), move |i| async move {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return "connect failed".into();
                };
                let mut req = b"GET /big HTTP/1.1\r\nHost: a\r\n".to_vec();
                if i % 2 == 0 {
                    // One 70 KiB field.
                    req.extend_from_slice(b"X-Big: ");
                    req.extend(std::iter::repeat_n(b'b', 70 * 1024));
                    req.extend_from_slice(b"\r\n");
                } else {
                    // 500 small ones.
                    for k in 0..500 {
                        req.extend_from_slice(format!("X-F{k}: v\r\n").as_bytes());
                    }
                }
                req.extend_from_slice(b"\r\n");
                let _ = s.write_all(&req).await;
                outcome(&mut s, Duration::from_secs(10)).await
            })
            .await;
            let what = format!("{n} oversized heads: {}", tally(&outcomes));
            assert!(
                outcomes.iter().all(|o| o == "431, closed"),
                "an oversized head was not refused with 431: {what}"
            );
            what
        })
        .await;
        assert!(!up.targets().iter().any(|t| t == "/big"));
    })
    .await;
}

// ================================================================ smuggling

/// (name, request bytes, the status the gateway must answer). Every
/// request carries a second one, `/smuggled`, where a lax parser would
/// see it; the upstream must never receive that.
fn smuggling_forms() -> Vec<(&'static str, Vec<u8>, u16)> {
    let s = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let with = |head: &str, body: &str| format!("{head}\r\n\r\n{body}").into_bytes();
    vec![
        (
            "CL and TE",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked",
                &format!("0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "TE and CL",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40",
                &format!("0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "duplicate CL",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 35",
                s,
            ),
            400,
        ),
        (
            "CL list",
            with("POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 35", s),
            400,
        ),
        (
            "TE not chunked",
            with("POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity", s),
            400,
        ),
        (
            "TE chunked then identity",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity",
                &format!("0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "TE xchunked",
            with("POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked", s),
            400,
        ),
        (
            "TE twice",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
                &format!("0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "space before colon",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked",
                &format!("0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "obs-fold",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nX-A: b\r\n Transfer-Encoding: chunked",
                &format!("0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "bare CR in a field",
            with("GET /f HTTP/1.1\r\nHost: a\r\nX-A: b\rContent-Length: 35", s),
            400,
        ),
        (
            "NUL in a field",
            with("GET /f HTTP/1.1\r\nHost: a\r\nX-A: b\0c", s),
            400,
        ),
        (
            "chunk size with a sign",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
                &format!("+5\r\nhello\r\n0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "chunk size 0x",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
                &format!("0x5\r\nhello\r\n0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "chunk size overflow",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
                &format!("10000000000000005\r\nhello\r\n0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "chunk with a bare LF",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
                &format!("5\nhello\r\n0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "chunk data longer than its size",
            with(
                "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
                &format!("2\r\nhello\r\n0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "CL with a sign",
            with("POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: +35", s),
            400,
        ),
        (
            "HTTP/1.0 with TE",
            with(
                "POST /f HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked",
                &format!("0\r\n\r\n{s}"),
            ),
            400,
        ),
        (
            "two Hosts",
            with("GET /f HTTP/1.1\r\nHost: a\r\nHost: b", ""),
            400,
        ),
        (
            "body on the health check",
            with(
                "POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 35",
                s,
            ),
            200,
        ),
        (
            "body on a static file",
            with("GET /site/ HTTP/1.1\r\nHost: a\r\nContent-Length: 35", s),
            200,
        ),
        (
            "body on a refused request",
            with("GET /admin/x HTTP/1.1\r\nHost: a\r\nContent-Length: 35", s),
            401,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_forms_are_refused_and_never_reach_the_upstream() {
    bounded(async {
        let up = RawUpstream::start().await;
        let mut bin = start(&up.url(), "").await;
        let forms = smuggling_forms();
        let rounds = 20;
        under_attack("smuggling", &mut bin, |addr| async move {
            let mut wrong = Vec::new();
            for (name, bytes, want) in &forms {
                let bytes = Arc::new(bytes.clone());
                let outcomes = swarm(rounds, Duration::ZERO, |_| {
                    let bytes = bytes.clone();
                    async move {
                        let Ok(mut s) = TcpStream::connect(addr).await else {
                            return "connect failed".into();
                        };
                        let _ = s.write_all(&bytes).await;
                        outcome(&mut s, Duration::from_millis(1500)).await
                    }
                })
                .await;
                // The gateway's own answer, then nothing: a second
                // response would be the smuggled request's.
                let first = format!("{want},");
                if !outcomes.iter().all(|o| o.starts_with(&first)) {
                    wrong.push(format!("{name}: {}", tally(&outcomes)));
                }
            }
            assert!(wrong.is_empty(), "unexpected answers: {wrong:#?}");
            format!(
                "{} forms x {rounds}, each answered as expected",
                forms.len()
            )
        })
        .await;
        let targets = up.targets();
        assert!(
            !targets.iter().any(|t| t.contains("smuggled")),
            "a smuggled request reached the upstream: {targets:?}"
        );
    })
    .await;
}

// ================================================================ paths and tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_and_the_jwt_zoo_at_volume() {
    bounded(async {
        let up = RawUpstream::start().await;
        let mut bin = start(&up.url(), "").await;
        let paths = [
            "/admin/x",
            "//admin/x",
            "/./admin/x",
            "/%61dmin/x",
            "/%2e/admin/x",
            "/api/../admin/x",
            "/api/%2e%2e/admin/x",
            "/api/%2E%2E%2fadmin/x",
            "/admin%2fx",
            "/%2fadmin/x",
            "/admin%5cx",
            "/admin%00/x",
            "/%c0%afadmin/x",
            "/api/%c0%ae%c0%ae/admin/x",
            "/api/..%2fadmin/x",
            "/api\\..\\admin/x",
            "/site/../secret.txt",
            "/site/%2e%2e/secret.txt",
            "/site/..%2fsecret.txt",
            "/site/%c0%ae%c0%ae/secret.txt",
            "/site//../secret.txt",
            "/site/.%2e/secret.txt",
        ];
        let header = |alg: &str| keys_b64(&format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}"));
        let good = token();
        let parts: Vec<&str> = good.split('.').collect();
        let tokens = vec![
            format!("{}.{}.", header("none"), parts[1]),
            format!("{}.{}.{}", header("HS512"), parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], parts[1], "AAAA"),
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}.x"),
            "not-a-token".to_string(),
            "a.b.c".to_string(),
            format!("{}.{}.{}", parts[0], "%%%", parts[2]),
            "x".repeat(6000),
        ];
        under_attack("paths-and-tokens", &mut bin, |addr| async move {
            let mut answers: Vec<(String, u16)> = Vec::new();
            let mut c = Client::connect(addr).await;
            for round in 0..25 {
                for p in paths {
                    let req = format!("GET {p} HTTP/1.1\r\nHost: a\r\n\r\n");
                    if !c.try_send(req.as_bytes()).await {
                        c = Client::connect(addr).await;
                        c.send(req.as_bytes()).await;
                    }
                    match c.response_within(Duration::from_secs(5)).await {
                        Ok(r) => {
                            let text = r.text();
                            assert!(
                                !text.contains("outside the root"),
                                "{p} served a file outside the static root"
                            );
                            if round == 0 {
                                answers.push((p.to_string(), r.status));
                            }
                            if r.closes() {
                                c = Client::connect(addr).await;
                            }
                        }
                        Err(_) => c = Client::connect(addr).await,
                    }
                }
                for t in &tokens {
                    let req = format!(
                        "GET /admin/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n"
                    );
                    if !c.try_send(req.as_bytes()).await {
                        c = Client::connect(addr).await;
                        c.send(req.as_bytes()).await;
                    }
                    match c.response_within(Duration::from_secs(5)).await {
                        Ok(r) => {
                            assert!(
                                r.status == 401 || r.status == 400 || r.status == 431,
                                "a forged token got {}",
                                r.status
                            );
                            if r.closes() {
                                c = Client::connect(addr).await;
                            }
                        }
                        Err(_) => c = Client::connect(addr).await,
                    }
                }
            }
            let ok: Vec<_> = answers.iter().filter(|(_, s)| *s < 300).collect();
            assert!(ok.is_empty(), "tricks that were let through: {ok:?}");
            format!(
                "{} path spellings and {} forged tokens x 25, none let through",
                paths.len(),
                tokens.len()
            )
        })
        .await;
        let anonymous_admin: Vec<_> = up
            .done()
            .into_iter()
            .filter(|r| r.path().contains("admin"))
            .map(|r| r.target)
            .collect();
        assert!(
            anonymous_admin.is_empty(),
            "reached the upstream anonymously: {anonymous_admin:?}"
        );
    })
    .await;
}

fn keys_b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

// ================================================================ HTTP/2 floods

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://a/flood`, literals only (no table state).
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, 6];
    b.extend_from_slice(b"/flood");
    b.extend_from_slice(&[0x01, 1, b'a']);
    b
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// Writes `frames` (after the preface and empty SETTINGS) as fast as the
/// gateway takes them, reading and dropping what it sends (or not, with
/// `read = false`), for at most `within`. "closed" when the gateway ended
/// the connection, "open" otherwise; with the bytes written.
async fn h2_flood(
    addr: SocketAddr,
    frames: impl Iterator<Item = Vec<u8>> + Send + 'static,
    read: bool,
    within: Duration,
) -> (String, usize) {
    let Ok(s) = TcpStream::connect(addr).await else {
        return ("connect failed".into(), 0);
    };
    let (mut r, mut w) = s.into_split();
    let closed = Arc::new(AtomicBool::new(false));
    let c = closed.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if !read {
                // Still notice the end: a zero-length peek-like wait.
                sleep(Duration::from_millis(50)).await;
                if c.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    c.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(_) => {}
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut written = 0usize;
    let mut head = PREFACE.to_vec();
    head.extend(frame(SETTINGS, 0, 0, &[]));
    let mut batch = head;
    for f in frames {
        batch.extend(f);
        if batch.len() >= 16 * 1024 {
            match timeout(Duration::from_secs(2), w.write_all(&batch)).await {
                Ok(Ok(())) => written += batch.len(),
                Ok(Err(_)) => break,
                // The gateway stopped reading: flow control held.
                Err(_) => break,
            }
            batch.clear();
        }
        if Instant::now() > deadline || closed.load(Ordering::SeqCst) {
            break;
        }
    }
    if !batch.is_empty() {
        if let Ok(Ok(())) = timeout(Duration::from_secs(2), w.write_all(&batch)).await {
            written += batch.len();
        }
    }
    // Give the gateway a moment to end it.
    for _ in 0..40 {
        if closed.load(Ordering::SeqCst) {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    let state = if closed.load(Ordering::SeqCst) {
        "closed"
    } else {
        "open"
    };
    reader.abort();
    (state.into(), written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods() {
    bounded(async {
        let up = RawUpstream::start().await;
        let mut bin = start(&up.url(), "").await;
        let seen_before = Arc::new(Mutex::new(0usize));
        let sb = seen_before.clone();
        let upc = up.rec.clone();
        under_attack("http2-floods", &mut bin, |addr| async move {
            *sb.lock().unwrap() = upc.lock().unwrap().heads.len();
            let within = Duration::from_secs(5);
            let block = get_block();
            // Rapid reset: a request and its cancellation, 20,000 times.
            let b = block.clone();
            let rapid = (0..20_000u32).flat_map(move |i| {
                let id = 2 * i + 1;
                let mut f = frame(HEADERS, END_STREAM | END_HEADERS, id, &b);
                f.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
                [f]
            });
            let (rapid, rapid_bytes) = h2_flood(addr, rapid, true, within).await;
            // CONTINUATION: one header block that never ends.
            let b = block.clone();
            let cont = std::iter::once(frame(HEADERS, 0, 1, &b)).chain(
                (0..100_000).map(|_| frame(CONTINUATION, 0, 1, &[0x40, 3, b'x', b'-', b'a', 100])
                    .into_iter()
                    .chain(std::iter::repeat_n(b'v', 100))
                    .collect()),
            );
            let (cont, cont_bytes) = h2_flood(addr, cont, true, within).await;
            // SETTINGS and PING floods, their acknowledgements never read.
            let settings =
                (0..200_000).map(|_| frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]));
            let (settings, settings_bytes) = h2_flood(addr, settings, false, within).await;
            let pings = (0..200_000u64).map(|i| frame(PING, 0, 0, &i.to_be_bytes()));
            let (pings, ping_bytes) = h2_flood(addr, pings, false, within).await;
            // Window exhaustion: 100 streams for a 1 MiB answer each,
            // with a zero window, never updated.
            let mut b = vec![0x82, 0x86, 0x04, 12];
            b.extend_from_slice(b"/big/1048576");
            b.extend_from_slice(&[0x01, 1, b'a']);
            let windows = std::iter::once(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0])).chain(
                (0..100u32).map(move |i| frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &b)),
            );
            let (window, _) = h2_flood(addr, windows, false, Duration::from_secs(3)).await;
            format!(
                "rapid reset {rapid} after {rapid_bytes} B; CONTINUATION {cont} after {cont_bytes} B; \
                 SETTINGS {settings} after {settings_bytes} B; PING {pings} after {ping_bytes} B; \
                 zero window {window}"
            )
        })
        .await;
        let flood_requests = up.heads() - *seen_before.lock().unwrap();
        println!("hostile: http2-floods: {flood_requests} requests reached the upstream");
        assert!(
            flood_requests < 20_000,
            "every reset request was forwarded ({flood_requests})"
        );
    })
    .await;
}

// ================================================================ TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_garbage_and_stalled_handshakes() {
    bounded(async {
        let up = RawUpstream::start().await;
        // A plain listener for the legitimate client, TLS on the main one.
        let ca = common::TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.write_leaf(dir.path(), "leaf", &["localhost"]);
        let http_port = free_port();
        let extra = format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        );
        // TLS on the main listener, the legitimate client on the plain one.
        let port = free_port();
        let plain = format!("http_listen = \"127.0.0.1:{http_port}\"\nredirect_http = false");
        let mut bin = launch(&config(port, &up.url(), &plain, &extra), port).await;
        let tls_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        bin.addr = format!("127.0.0.1:{http_port}").parse().unwrap();
        under_attack("tls", &mut bin, |_| async move {
            let n = attackers(1000);
            let outcomes = swarm(n, Duration::from_millis(2), move |i| async move {
                let Ok(mut s) = TcpStream::connect(tls_addr).await else {
                    return "connect failed".into();
                };
                match i % 3 {
                    // Garbage.
                    0 => {
                        let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff]).await;
                        let _ = s.write_all(&pattern(4096)).await;
                    }
                    // A ClientHello record header, then nothing.
                    1 => {
                        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
                    }
                    // Nothing at all.
                    _ => {}
                }
                let r = outcome(&mut s, Duration::from_secs(HEADER_TIMEOUT_S + 4)).await;
                r.replace("non-HTTP bytes,", "alert,")
            })
            .await;
            let what = format!("{n} garbage or stalled handshakes: {}", tally(&outcomes));
            assert!(
                outcomes.iter().all(|o| o.ends_with("closed")),
                "a bad handshake outlived header_read_timeout: {what}"
            );
            // The TLS listener still serves.
            let cfg = ca.client_config(&[b"http/1.1"]);
            let tls = tokio_rustls::TlsConnector::from(cfg);
            let tcp = TcpStream::connect(tls_addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut t = tls
                .connect(name, tcp)
                .await
                .expect("a real handshake failed");
            t.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let _ = timeout(Duration::from_secs(5), t.read_to_end(&mut got)).await;
            assert!(got.starts_with(b"HTTP/1.1 200"), "{}", lossy(&got));
            what
        })
        .await;
        drop(dir);
    })
    .await;
}
