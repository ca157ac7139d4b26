//! Static files, black box: a real gateway on 127.0.0.1:0 serving a temp
//! root, driven by hyper clients and, for path tricks a client would
//! normalise away, by raw bytes on a TcpStream.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "TOP-SECRET-CONTENT";
const CACHE: &str = "public, max-age=86400";
const INDEX: &str = "<!doctype html><title>home</title>\n";
const CSS: &str = "body { color: red }\n";
const JS: &str = "console.log('hi');\n";

/// A gateway whose dir holds:
/// - `www/` (route `/static/`, cache_control set): index.html, site.css,
///   app.js, data.bin, sub/index.html, empty/ (no index), .env, and
///   precompressed siblings app.js.br / app.js.gz;
/// - `spa/` (route `/spa/`, fallback index.html);
/// - `secret` and `outside/secret.txt` next to the roots, never served;
/// - `/api/` proxied to a recording upstream.
async fn site() -> (Gateway, Upstream) {
    site_with(|_| {}).await
}

async fn site_with(extra: impl FnOnce(&Path)) -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let www = d.join("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    std::fs::create_dir_all(www.join("empty")).unwrap();
    std::fs::write(www.join("index.html"), INDEX).unwrap();
    std::fs::write(www.join("site.css"), CSS).unwrap();
    std::fs::write(www.join("app.js"), JS).unwrap();
    std::fs::write(www.join("app.js.br"), "BROTLI-BYTES").unwrap();
    std::fs::write(www.join("app.js.gz"), "GZIP-BYTES").unwrap();
    std::fs::write(www.join("data.bin"), (0u8..=255).collect::<Vec<_>>()).unwrap();
    std::fs::write(www.join("sub/index.html"), "sub index\n").unwrap();
    std::fs::write(www.join(".env"), SECRET).unwrap();
    std::fs::write(d.join("secret"), SECRET).unwrap();
    std::fs::create_dir_all(d.join("outside")).unwrap();
    std::fs::write(d.join("outside/secret.txt"), SECRET).unwrap();
    std::fs::create_dir_all(d.join("spa/assets")).unwrap();
    std::fs::write(d.join("spa/index.html"), "spa shell\n").unwrap();
    std::fs::write(d.join("spa/assets/a.css"), CSS).unwrap();
    extra(d);
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[log]
access_log = false

[upstreams.app]
url = "{}"

[[routes]]
path = "/static/"
static = "www"
cache_control = "{CACHE}"

[[routes]]
path = "/spa/"
static = "spa"
fallback = "index.html"

[[routes]]
path = "/api/"
upstream = "app"
"#,
        up.url()
    );
    (Gateway::start_in(dir, &toml).await, up)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = req(method, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, request("GET", path, headers)).await
}

/// One raw request line, sent byte for byte; returns (status, whole answer).
async fn raw(addr: SocketAddr, target: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut msg = b"GET ".to_vec();
    msg.extend_from_slice(target);
    msg.extend_from_slice(b" HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n");
    s.write_all(&msg).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("raw request timed out")
        .ok();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

fn assert_not_found_json(r: &Resp) {
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), serde_json::json!({"detail": "Not found."}));
}

#[tokio::test]
async fn content_type_by_extension() {
    let (gw, _up) = site().await;
    for (path, ct, body) in [
        ("/static/index.html", "text/html", INDEX),
        ("/static/site.css", "text/css", CSS),
        ("/static/app.js", "text/javascript", JS),
    ] {
        let r = get(gw.addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ct), "{path}");
        assert_eq!(r.text(), body, "{path}");
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
    }
    let r = get(gw.addr, "/static/data.bin").await;
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body.as_ref(), (0u8..=255).collect::<Vec<_>>().as_slice());
}

#[tokio::test]
async fn etag_and_last_modified_are_sent() {
    let (gw, _up) = site().await;
    let r = get(gw.addr, "/static/site.css").await;
    assert_eq!(r.status, 200);
    let etag = r.header("etag").expect("etag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "{etag}"
    );
    let lm = r.header("last-modified").expect("last-modified");
    let lm = httpdate::parse_http_date(lm).unwrap();
    let mtime = std::fs::metadata(gw.path("www/site.css"))
        .unwrap()
        .modified()
        .unwrap();
    let diff = mtime.duration_since(lm).unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_secs(1), "{diff:?}");
    // Same file, same tag; a changed file, a new tag.
    let again = get(gw.addr, "/static/site.css").await;
    assert_eq!(again.header("etag"), Some(etag));
    std::fs::write(gw.path("www/site.css"), "body { color: blue; }\n").unwrap();
    let changed = get(gw.addr, "/static/site.css").await;
    assert_ne!(changed.header("etag"), Some(etag));
}

#[tokio::test]
async fn if_none_match_gives_304() {
    let (gw, _up) = site().await;
    let r = get(gw.addr, "/static/site.css").await;
    let etag = r.header("etag").unwrap().to_string();
    let nm = get_with(gw.addr, "/static/site.css", &[("if-none-match", &etag)]).await;
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
    assert_eq!(nm.header("etag"), Some(etag.as_str()));
    assert_eq!(nm.header("cache-control"), Some(CACHE));
    // Weak comparison and lists are honoured.
    let weak = format!("\"nope\", W/{etag}");
    let nm = get_with(gw.addr, "/static/site.css", &[("if-none-match", &weak)]).await;
    assert_eq!(nm.status, 304);
    // A different tag gets the file.
    let miss = get_with(
        gw.addr,
        "/static/site.css",
        &[("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.text(), CSS);
}

#[tokio::test]
async fn if_modified_since_gives_304() {
    let (gw, _up) = site().await;
    let r = get(gw.addr, "/static/site.css").await;
    let lm = r.header("last-modified").unwrap().to_string();
    let nm = get_with(gw.addr, "/static/site.css", &[("if-modified-since", &lm)]).await;
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
    assert_eq!(nm.header("x-content-type-options"), Some("nosniff"));
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    let full = get_with(gw.addr, "/static/site.css", &[("if-modified-since", old)]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.text(), CSS);
    // If-None-Match that does not match wins over a matching date.
    let both = get_with(
        gw.addr,
        "/static/site.css",
        &[("if-modified-since", &lm), ("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(both.status, 200);
}

#[tokio::test]
async fn range_gives_206_and_unsatisfiable_416() {
    let (gw, _up) = site().await;
    let r = get_with(gw.addr, "/static/data.bin", &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/256"));
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(r.body.as_ref(), (10u8..=19).collect::<Vec<_>>().as_slice());
    let tail = get_with(gw.addr, "/static/data.bin", &[("range", "bytes=-6")]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.header("content-range"), Some("bytes 250-255/256"));
    assert_eq!(tail.body.as_ref(), &[250, 251, 252, 253, 254, 255]);
    let bad = get_with(gw.addr, "/static/data.bin", &[("range", "bytes=1000-2000")]).await;
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range"), Some("bytes */256"));
}

#[tokio::test]
async fn head_has_headers_and_no_body() {
    let (gw, _up) = site().await;
    let r = send(gw.addr, request("HEAD", "/static/site.css", &[])).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-type"), Some("text/css"));
    assert_eq!(
        r.header("content-length"),
        Some(CSS.len().to_string().as_str())
    );
    assert!(r.header("etag").is_some());
    assert!(r.header("last-modified").is_some());
    assert_eq!(r.header("cache-control"), Some(CACHE));
    // On the wire too: the answer ends after the head.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"HEAD /static/site.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
}

#[tokio::test]
async fn directory_serves_index_and_redirects_with_prefix() {
    let (gw, _up) = site().await;
    let r = get(gw.addr, "/static/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), INDEX);
    assert_eq!(r.header("content-type"), Some("text/html"));
    let r = get(gw.addr, "/static/sub/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "sub index\n");
    for (path, to) in [
        ("/static/sub", "/static/sub/"),
        ("/static/sub?x=1", "/static/sub/?x=1"),
        ("/static", "/static/"),
        ("/static?x=1", "/static/?x=1"),
    ] {
        let r = get(gw.addr, path).await;
        assert!(r.status.is_redirection(), "{path}: {}", r.status);
        assert_eq!(r.header("location"), Some(to), "{path}");
    }
}

#[tokio::test]
async fn precompressed_sibling_by_accept_encoding() {
    let (gw, _up) = site().await;
    let br = get_with(
        gw.addr,
        "/static/app.js",
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(br.status, 200);
    assert_eq!(br.text(), "BROTLI-BYTES");
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(br.header("content-type"), Some("text/javascript"));
    assert_eq!(br.header("vary"), Some("Accept-Encoding"));
    let gz = get_with(gw.addr, "/static/app.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gz.text(), "GZIP-BYTES");
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    // Each representation has its own tag, and revalidating one answers
    // 304 with that same tag.
    assert_ne!(gz.header("etag"), br.header("etag"));
    let br_tag = br.header("etag").unwrap();
    let nm = get_with(
        gw.addr,
        "/static/app.js",
        &[("accept-encoding", "br"), ("if-none-match", br_tag)],
    )
    .await;
    assert_eq!(nm.status, 304);
    assert_eq!(nm.header("etag"), Some(br_tag));
    assert_eq!(nm.header("vary"), Some("Accept-Encoding"));
    let plain = get(gw.addr, "/static/app.js").await;
    assert_eq!(plain.text(), JS);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    let id = get_with(
        gw.addr,
        "/static/app.js",
        &[("accept-encoding", "identity")],
    )
    .await;
    assert_eq!(id.text(), JS);
    // No sibling: the plain file, whatever the client accepts.
    let css = get_with(
        gw.addr,
        "/static/site.css",
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert_eq!(css.text(), CSS);
    assert_eq!(css.header("content-encoding"), None);
}

#[tokio::test]
async fn cache_control_per_route() {
    let (gw, _up) = site().await;
    let r = get(gw.addr, "/static/site.css").await;
    assert_eq!(r.header("cache-control"), Some(CACHE));
    let spa = get(gw.addr, "/spa/assets/a.css").await;
    assert_eq!(spa.status, 200);
    assert_eq!(spa.header("cache-control"), None);
}

#[tokio::test]
async fn nosniff_on_files_and_errors_do_not_leak() {
    let (gw, _up) = site().await;
    for p in ["/static/site.css", "/static/", "/spa/assets/a.css"] {
        let r = get(gw.addr, p).await;
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{p}");
    }
}

#[tokio::test]
async fn spa_fallback_for_unknown_paths() {
    let (gw, _up) = site().await;
    for p in ["/spa/", "/spa/some/client/route", "/spa/missing.html"] {
        let r = get(gw.addr, p).await;
        assert_eq!(r.status, 200, "{p}");
        assert_eq!(r.text(), "spa shell\n", "{p}");
        assert_eq!(r.header("content-type"), Some("text/html"), "{p}");
    }
    // Existing files are still themselves.
    let r = get(gw.addr, "/spa/assets/a.css").await;
    assert_eq!(r.text(), CSS);
    // The fallback never rescues a refused path.
    let (status, text) = raw(gw.addr, b"/spa/../secret").await;
    assert!(status == 400 || status == 404, "{text}");
    let r = get(gw.addr, "/spa/.env").await;
    assert_eq!(r.status, 404);
    // No fallback on the other static route.
    assert_not_found_json(&get(gw.addr, "/static/no/such/file").await);
}

#[tokio::test]
async fn no_directory_listing() {
    let (gw, _up) = site().await;
    assert_not_found_json(&get(gw.addr, "/static/empty/").await);
    assert_not_found_json(&get(gw.addr, "/static/empty").await);
}

#[tokio::test]
async fn traversal_forms_never_serve_a_file() {
    let (gw, up) = site_with(|d| {
        std::os::unix::fs::symlink(d.join("secret"), d.join("www/link")).unwrap();
        std::os::unix::fs::symlink(d.join("outside"), d.join("www/linkdir")).unwrap();
        // A sibling whose name contains a backslash, so `..\secret` would
        // exist if backslashes were ever taken literally or as separators.
        std::fs::write(d.join("www/..\\secret"), SECRET).unwrap();
    })
    .await;
    let forms: &[&[u8]] = &[
        b"/static/../secret",
        b"/static/%2e%2e/secret",
        b"/static/%2E%2E/secret",
        b"/static/%2E%2E%2Fsecret",
        b"/static/..%2fsecret",
        b"/static/..%2Fsecret",
        b"/static/..%5csecret",
        b"/static/..%5Csecret",
        b"/static/..\\secret",
        b"/static/.%2e/secret",
        b"/static/sub/../../secret",
        b"/static/%00",
        b"/static/site.css%00",
        b"/static/site.css%00.js",
        b"/static/link",
        b"/static/linkdir/secret.txt",
        b"/static/linkdir/",
        b"/static/.env",
        b"/static/%2eenv",
        b"/static/sub/.env",
        b"/static//../secret",
        b"/static/%ff",
        b"/static/./site.css",
        b"/static/../../../../../../etc/passwd",
        b"/static/..%252fsecret",
        b"/static/%2e%2e%2f%2e%2e%2fsecret",
        b"/static/sub%2f..%2f..%2fsecret",
        b"/static/..;/secret",
        b"http://gateway.test/static/../secret",
        b"/static/%c0%ae%c0%ae/secret",
    ];
    for form in forms {
        let (status, text) = raw(gw.addr, form).await;
        let shown = String::from_utf8_lossy(form);
        assert!(
            status == 400 || status == 404,
            "{shown}: status {status}\n{text}"
        );
        assert!(!text.contains(SECRET), "{shown} leaked\n{text}");
        assert!(!text.contains("root:"), "{shown} leaked\n{text}");
    }
    assert_eq!(up.count(), 0, "a traversal reached the upstream");
}

#[tokio::test]
async fn hidden_files_are_404_not_403() {
    let (gw, _up) = site().await;
    let r = get(gw.addr, "/static/.env").await;
    assert_not_found_json(&r);
    assert!(!r.text().contains(SECRET));
}

#[tokio::test]
async fn symlink_inside_root_is_served() {
    // Containment follows the link: inside the root it is fine.
    let (gw, _up) = site_with(|d| {
        std::os::unix::fs::symlink(d.join("www/site.css"), d.join("www/alias.css")).unwrap();
    })
    .await;
    let r = get(gw.addr, "/static/alias.css").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), CSS);
}

#[tokio::test]
async fn precompressed_sibling_symlink_outside_is_not_served() {
    let (gw, _up) = site_with(|d| {
        std::fs::write(d.join("www/x.js"), JS).unwrap();
        std::os::unix::fs::symlink(d.join("secret"), d.join("www/x.js.gz")).unwrap();
    })
    .await;
    let r = get_with(gw.addr, "/static/x.js", &[("accept-encoding", "gzip")]).await;
    assert!(!r.text().contains(SECRET), "leaked via .gz sibling");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), JS);
}

#[tokio::test]
async fn path_normalising_out_of_prefix_is_not_served_by_static_route() {
    let (gw, up) = site_with(|d| {
        // Would be found if `/static/../api/x` were resolved on disk from
        // the static root's parent.
        std::fs::create_dir_all(d.join("api")).unwrap();
        std::fs::write(d.join("api/x"), SECRET).unwrap();
    })
    .await;
    for form in [
        &b"/static/../api/x"[..],
        b"/static/%2e%2e/api/x",
        b"/static/..%2fapi/x",
    ] {
        let (status, text) = raw(gw.addr, form).await;
        let shown = String::from_utf8_lossy(form);
        assert!(!text.contains(SECRET), "{shown}\n{text}");
        assert!(status == 400 || status == 404, "{shown}: {status}");
        assert!(!text.contains("x-content-type-options"), "{shown}");
    }
    assert_eq!(up.count(), 0);
    // The same prefix spelled differently (`/staticx`) is not the route.
    let r = get(gw.addr, "/staticx/site.css").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn post_is_405_with_allow() {
    let (gw, _up) = site().await;
    for m in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = send(gw.addr, request(m, "/static/site.css", &[])).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{m}");
        assert_eq!(
            r.json(),
            serde_json::json!({"detail": "Method not allowed."})
        );
    }
}

#[tokio::test]
async fn big_file_streams_completely() {
    let size = 8 * 1024 * 1024 + 13;
    let (gw, _up) = site_with(|d| {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.join("www/big.bin"), data).unwrap();
    })
    .await;
    let r = tokio::time::timeout(Duration::from_secs(60), get(gw.addr, "/static/big.bin"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(r.body.len(), size);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
}

#[tokio::test]
async fn static_files_over_http2_and_tls() {
    // The same checks hold on the TLS listener with HTTP/2.
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/site.css"), CSS).unwrap();
    ca.write_leaf(dir.path(), "leaf", &["gateway.test"]);
    let gw = Gateway::start_in(
        dir,
        r#"
[server]
listen = "127.0.0.1:0"
[tls]
cert = "leaf.crt"
key = "leaf.key"
[log]
access_log = false
[[routes]]
path = "/static/"
static = "www"
"#,
    )
    .await;
    let r = send_tls(
        gw.addr,
        ca.client_config(&[b"h2"]),
        "gateway.test",
        request("GET", "/static/site.css", &[("range", "bytes=0-3")]),
    )
    .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "body");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

/// Small files are answered from memory after the first request; a change
/// on disk (even one that keeps the size) is seen at once, HEAD keeps the
/// length, and 304s come from the in-memory tag too.
#[tokio::test]
async fn in_memory_small_files_never_go_stale() {
    let (gw, _up) = site().await;
    let path = gw.path("www/site.css");
    std::fs::write(&path, "aaaa").unwrap();
    for _ in 0..3 {
        let r = get(gw.addr, "/static/site.css").await;
        assert_eq!(r.text(), "aaaa");
    }
    let etag = get(gw.addr, "/static/site.css")
        .await
        .header("etag")
        .unwrap()
        .to_string();
    let nm = get_with(gw.addr, "/static/site.css", &[("if-none-match", &etag)]).await;
    assert_eq!(nm.status, 304);
    let head = send(
        gw.addr,
        req("HEAD", "/static/site.css")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(head.header("content-length"), Some("4"));
    assert!(head.body.is_empty());
    // Same size, new content and a later mtime.
    std::fs::write(&path, "bbbb").unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let r = get(gw.addr, "/static/site.css").await;
    assert_eq!(r.text(), "bbbb");
    assert_ne!(r.header("etag"), Some(etag.as_str()));
    let nm = get_with(gw.addr, "/static/site.css", &[("if-none-match", &etag)]).await;
    assert_eq!(nm.status, 200, "the old tag no longer matches");
    // Removed: 404, not a ghost from memory.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(get(gw.addr, "/static/site.css").await.status, 404);
}

/// Files over the in-memory limit take the direct read path: whole GETs and
/// HEADs there, ranges and precompressed siblings still through ServeDir.
#[tokio::test]
async fn large_files_whole_head_range_and_precompressed() {
    let (gw, _up) = site().await;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(gw.path("www/large.bin"), &data).unwrap();
    let r = get(gw.addr, "/static/large.bin").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), data.as_slice());
    assert_eq!(r.header("content-length"), Some("1000000"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let etag = r.header("etag").unwrap().to_string();
    assert!(r.header("last-modified").is_some());
    let head = send(
        gw.addr,
        req("HEAD", "/static/large.bin")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000000"));
    assert!(head.body.is_empty());
    let nm = get_with(gw.addr, "/static/large.bin", &[("if-none-match", &etag)]).await;
    assert_eq!(nm.status, 304);
    let part = get_with(gw.addr, "/static/large.bin", &[("range", "bytes=999990-")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body.as_ref(), &data[999_990..]);
    // A precompressed sibling is still chosen for a client that takes it.
    std::fs::write(gw.path("www/large.bin.gz"), b"pretend-gzip").unwrap();
    let gz = get_with(gw.addr, "/static/large.bin", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.body.as_ref(), b"pretend-gzip");
    let plain = get(gw.addr, "/static/large.bin").await;
    assert_eq!(plain.body.len(), 1_000_000);
}
