//! Static files from disk, on tower-http's `ServeDir`, which brings
//! Content-Type, Last-Modified / If-Modified-Since, Range (206/416), HEAD,
//! index.html for directories, precompressed `.br`/`.gz` siblings, and
//! streaming from the file (never read whole into memory).
//!
//! What this module adds, in the order `serve` applies it:
//! 1. GET and HEAD only (405 with Allow otherwise).
//! 2. SECURITY: path checks before the disk is touched. Encoded slashes and
//!    backslashes (`%2f`, `%5c`, `\`), NUL (raw or `%00`), invalid UTF-8,
//!    and `.`/`..` segments in raw or decoded form are refused (400);
//!    hidden files (a segment starting with '.') are not served (404). A
//!    path that normalises out of the route's prefix never reaches here.
//! 3. SECURITY: containment. The file is canonicalised (following
//!    symlinks) and must still lie under the canonical root, so a symlink
//!    pointing outside the root answers 404, never 403 (403 would confirm
//!    the file exists).
//! 4. ETag (from size and modification time, per encoding) and
//!    If-None-Match -> 304, which ServeDir lacks.
//! 5. ServeDir answers; a miss becomes the SPA `fallback` file or 404.
//! 6. Cache-Control per route, `X-Content-Type-Options: nosniff`,
//!    `Vary: Accept-Encoding` when precompressed files may be chosen.
//!
//! No directory listings exist: ServeDir has none.
//!
//! Speed: small files (up to 256 KiB) that were served whole are kept in
//! memory, keyed by request path and accepted encoding, and answered
//! without touching the blocking pool. Every hit re-checks the file's size
//! and mtime with one stat, so a changed file is never served stale
//! (nginx's open_file_cache trusts its entries for 60 s). Requests with
//! Range or If-Modified-Since take the full path above.
//!
//! One file past 600 lines on purpose: the safety checks above and the
//! caches that answer without `ServeDir` (hot files, open files) must be
//! read together, or a cache could skip a check.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use percent_encoding::percent_decode_str;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;
use tower_http::services::ServeDir;

use crate::body::{Body, BoxError};
use crate::config::StaticRoute;

#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("file not found")]
    NotFound,
    #[error("request path refused by the static file checks")]
    BadPath,
    #[error("method not allowed on a static route")]
    MethodNotAllowed,
    #[error("reading a static file failed")]
    Io(#[source] std::io::Error),
}

/// One static route's file server.
pub struct StaticFiles {
    /// Canonical root: containment checks compare against it.
    root: PathBuf,
    serve: ServeDir,
    cache_control: Option<HeaderValue>,
    fallback: Option<String>,
    precompressed: bool,
    hot: HotCache,
    /// Large files served whole before, kept open.
    open_files: Mutex<HashMap<(String, u8), Arc<OpenFile>>>,
}

/// Open large files kept at most; past it, the cache starts over.
const OPEN_MAX: usize = 1024;

/// A large file kept open, with its ready-made headers.
struct OpenFile {
    file: Arc<std::fs::File>,
    /// The canonical path it was opened from, checked on each hit.
    source: PathBuf,
    len: u64,
    mtime: std::time::SystemTime,
    etag_base: String,
    etag: HeaderValue,
    content_type: HeaderValue,
    last_modified: Option<HeaderValue>,
}

/// Files up to this size are kept in memory once served.
const HOT_MAX_FILE: u64 = 256 * 1024;
/// Hot files at least this large are also kept open for `sendfile(2)`.
const SENDFILE_MIN: u64 = 32 * 1024;
/// The hot cache's bound; past it, it starts over.
const HOT_MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
struct HotCache {
    entries: Mutex<HotEntries>,
}

#[derive(Default)]
struct HotEntries {
    map: HashMap<(String, u8), Arc<HotFile>>,
    bytes: usize,
}

/// A small file held in memory, with its ready-made headers.
struct HotFile {
    body: Bytes,
    /// The file kept open (files of `SENDFILE_MIN` bytes and more), so a
    /// plain TCP connection can send it with `sendfile(2)` rather than copy
    /// the bytes: nginx's open_file_cache.
    open: Option<Arc<std::fs::File>>,
    /// The file the body came from (the `.br`/`.gz` sibling when encoded).
    source: PathBuf,
    len: u64,
    mtime: std::time::SystemTime,
    etag_base: String,
    etag: HeaderValue,
    content_type: HeaderValue,
    last_modified: Option<HeaderValue>,
    encoding: Option<HeaderValue>,
}

impl StaticFiles {
    pub fn new(route: &StaticRoute) -> std::io::Result<Self> {
        let root = std::fs::canonicalize(&route.root)?;
        // 256 KiB reads: each read is a blocking-pool round trip, so large
        // files cost a quarter of the trips of ServeDir's 64 KiB default.
        let mut serve = ServeDir::new(&root)
            .append_index_html_on_directories(true)
            .with_buf_chunk_size(256 * 1024);
        if route.precompressed {
            serve = serve.precompressed_br().precompressed_gzip();
        }
        Ok(StaticFiles {
            root,
            serve,
            cache_control: route
                .cache_control
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok()),
            fallback: route.fallback.clone(),
            precompressed: route.precompressed,
            hot: HotCache::default(),
            open_files: Mutex::new(HashMap::new()),
        })
    }

    /// The accepted precompressed encodings as a small key: bit 0 br, bit 1 gzip.
    fn encoding_key(&self, headers: &HeaderMap) -> u8 {
        if !self.precompressed {
            return 0;
        }
        let mut key = 0;
        for v in headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                let mut parts = item.split(';');
                let name = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=")
                        .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
                });
                if refused {
                    continue;
                }
                if name.eq_ignore_ascii_case("br") {
                    key |= 1;
                } else if name.eq_ignore_ascii_case("gzip") {
                    key |= 2;
                }
            }
        }
        key
    }

    /// Answers from memory when the file is hot and unchanged.
    fn serve_hot<B>(&self, req: &Request<B>, key: &(String, u8)) -> Option<Response<Body>> {
        let h = req.headers();
        if h.contains_key(header::RANGE)
            || h.contains_key(header::IF_MODIFIED_SINCE)
            || h.contains_key(header::IF_UNMODIFIED_SINCE)
        {
            return None;
        }
        let file = self.hot.entries.lock().ok()?.map.get(key).cloned()?;
        // One stat on the runtime thread: cheap for a cached inode, far
        // cheaper than the blocking-pool round trips of the full path.
        if !unchanged(&file.source, file.len, file.mtime) {
            if let Ok(mut e) = self.hot.entries.lock() {
                if let Some(old) = e.map.remove(key) {
                    e.bytes = e.bytes.saturating_sub(old.body.len());
                }
            }
            return None;
        }
        if let Some(inm) = h.get(header::IF_NONE_MATCH) {
            if let Some(matched) = if_none_match_hits(inm, &file.etag_base) {
                return Some(self.not_modified_with(&matched, file.last_modified.clone()));
            }
        }
        let body = if req.method() == Method::HEAD {
            // Keep Content-Length: a HEAD answers what a GET would send.
            let mut r = Response::new(crate::body::empty());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(file.body.len()));
            r
        } else {
            let mut r = Response::new(crate::body::full(file.body.clone()));
            if let Some(open) = &file.open {
                r.extensions_mut().insert(SendFile {
                    file: open.clone(),
                    len: file.len,
                });
            }
            r
        };
        let mut resp = body;
        let rh = resp.headers_mut();
        rh.insert(header::CONTENT_TYPE, file.content_type.clone());
        rh.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(enc) = &file.encoding {
            rh.insert(header::CONTENT_ENCODING, enc.clone());
        }
        if let Some(lm) = &file.last_modified {
            rh.insert(header::LAST_MODIFIED, lm.clone());
        }
        rh.insert(header::ETAG, file.etag.clone());
        self.common_headers(rh);
        Some(resp)
    }

    /// Large files, whole and unencoded, read on the runtime thread in
    /// 256 KiB pieces: no blocking-pool round trip and one copy less than
    /// ServeDir's path (nginx reads files the same way without aio).
    /// Ranges, date conditions and precompressed siblings go to ServeDir.
    fn serve_large<B>(
        &self,
        req: &Request<B>,
        rel: &str,
        canonical: &Path,
        opened: &Path,
        meta: &std::fs::Metadata,
        etag: &str,
    ) -> Option<Response<Body>> {
        let h = req.headers();
        if meta.len() <= HOT_MAX_FILE
            || opened.file_name().is_some_and(|n| n == "index.html")
            || h.contains_key(header::RANGE)
            || h.contains_key(header::IF_RANGE)
            || h.contains_key(header::IF_MODIFIED_SINCE)
            || h.contains_key(header::IF_UNMODIFIED_SINCE)
        {
            return None;
        }
        if self.encoding_key(h) != 0
            && ["br", "gz"]
                .iter()
                .any(|ext| std::fs::symlink_metadata(sibling(opened, ext)).is_ok())
        {
            return None;
        }
        // SECURITY: open the canonical path the containment check approved.
        let file = std::fs::File::open(canonical).ok()?;
        let fmeta = file.metadata().ok()?;
        let mime = mime_guess::from_path(opened)
            .first_raw()
            .unwrap_or("application/octet-stream");
        let open = Arc::new(OpenFile {
            file: Arc::new(file),
            source: canonical.to_path_buf(),
            len: fmeta.len(),
            mtime: fmeta.modified().ok()?,
            etag_base: etag.to_string(),
            etag: HeaderValue::from_str(&etag_for(etag, None)).ok()?,
            content_type: HeaderValue::from_static(mime),
            last_modified: meta
                .modified()
                .ok()
                .and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()),
        });
        let resp = self.open_response(req.method() == Method::HEAD, &open);
        if let Ok(mut cache) = self.open_files.lock() {
            if cache.len() >= OPEN_MAX {
                cache.clear();
            }
            cache.insert((rel.to_string(), self.encoding_key(h)), open);
        }
        Some(resp)
    }

    /// A large file's whole response, read with `pread` as it is sent (or
    /// sent with `sendfile(2)` by the fast path).
    fn open_response(&self, head: bool, open: &OpenFile) -> Response<Body> {
        let len = open.len;
        let mut resp = if head {
            let mut r = Response::new(crate::body::empty());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            r
        } else {
            let mut r = Response::new(
                FileBody {
                    file: open.file.clone(),
                    offset: 0,
                    remaining: len,
                    yield_next: false,
                }
                .boxed_unsync(),
            );
            r.extensions_mut().insert(SendFile {
                file: open.file.clone(),
                len,
            });
            r
        };
        let rh = resp.headers_mut();
        rh.insert(header::CONTENT_TYPE, open.content_type.clone());
        rh.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(lm) = &open.last_modified {
            rh.insert(header::LAST_MODIFIED, lm.clone());
        }
        rh.insert(header::ETAG, open.etag.clone());
        self.common_headers(rh);
        resp
    }

    /// A large file served before, from its open descriptor, after one
    /// `stat` shows the file unchanged (nginx's open_file_cache): no path
    /// resolution through the blocking pool.
    fn serve_open<B>(&self, req: &Request<B>, key: &(String, u8)) -> Option<Response<Body>> {
        let h = req.headers();
        if h.contains_key(header::RANGE)
            || h.contains_key(header::IF_RANGE)
            || h.contains_key(header::IF_MODIFIED_SINCE)
            || h.contains_key(header::IF_UNMODIFIED_SINCE)
        {
            return None;
        }
        let open = self.open_files.lock().ok()?.get(key).cloned()?;
        if !unchanged(&open.source, open.len, open.mtime) {
            if let Ok(mut cache) = self.open_files.lock() {
                cache.remove(key);
            }
            return None;
        }
        if let Some(inm) = h.get(header::IF_NONE_MATCH) {
            if let Some(matched) = if_none_match_hits(inm, &open.etag_base) {
                return Some(self.not_modified_with(&matched, open.last_modified.clone()));
            }
        }
        Some(self.open_response(req.method() == Method::HEAD, &open))
    }

    /// Keeps a small file that was just served whole, for next time.
    async fn make_hot(&self, key: (String, u8), opened: &Path, resp_headers: &HeaderMap) {
        let encoding = resp_headers.get(header::CONTENT_ENCODING).cloned();
        let source = match encoding.as_ref().and_then(|e| e.to_str().ok()) {
            Some("br") => sibling(opened, "br"),
            Some("gzip") => sibling(opened, "gz"),
            Some(_) => return,
            None => opened.to_path_buf(),
        };
        let (Some(content_type), Some(etag)) = (
            resp_headers.get(header::CONTENT_TYPE),
            resp_headers.get(header::ETAG),
        ) else {
            return;
        };
        let Ok(meta) = tokio::fs::metadata(&source).await else {
            return;
        };
        let Ok(mtime) = meta.modified() else { return };
        if !meta.is_file() || meta.len() > HOT_MAX_FILE {
            return;
        }
        let Ok(data) = tokio::fs::read(&source).await else {
            return;
        };
        if data.len() as u64 != meta.len() {
            return;
        }
        // The open file must hold what `data` holds: same size and mtime.
        let open = if meta.len() >= SENDFILE_MIN {
            let Ok(f) = std::fs::File::open(&source) else {
                return;
            };
            match f.metadata() {
                Ok(m) if m.len() == meta.len() && m.modified().ok() == Some(mtime) => {
                    Some(Arc::new(f))
                }
                _ => return,
            }
        } else {
            None
        };
        // The ETag base is the plain file's (shared by all representations).
        let Ok(plain_meta) = tokio::fs::metadata(opened).await else {
            return;
        };
        let file = Arc::new(HotFile {
            body: Bytes::from(data),
            open,
            source,
            len: meta.len(),
            mtime,
            etag_base: etag_base(&plain_meta),
            etag: etag.clone(),
            content_type: content_type.clone(),
            last_modified: resp_headers.get(header::LAST_MODIFIED).cloned(),
            encoding,
        });
        if let Ok(mut e) = self.hot.entries.lock() {
            if e.bytes + file.body.len() > HOT_MAX_BYTES {
                e.map.clear();
                e.bytes = 0;
            }
            e.bytes += file.body.len();
            if let Some(old) = e.map.insert(key, file) {
                e.bytes = e.bytes.saturating_sub(old.body.len());
            }
        }
    }

    /// Serves `req` from this root. `prefix` is the route prefix, removed
    /// from the path to find the file.
    pub async fn serve<B>(
        &self,
        req: Request<B>,
        prefix: &str,
    ) -> Result<Response<Body>, StaticError> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(StaticError::MethodNotAllowed);
        }
        let raw = req.uri().path();
        let Some(rel) = relative_path(raw, prefix)? else {
            // `/static` on a `/static/` route: the root directory, so add
            // the slash (as for any directory) or relative links in its
            // index.html would resolve against the parent.
            return Ok(self.add_slash(prefix, req.uri().query()));
        };
        let segments = checked_segments(rel)?;
        let hot_key = (rel.to_string(), self.encoding_key(req.headers()));
        if let Some(resp) = self.serve_hot(&req, &hot_key) {
            return Ok(resp);
        }
        if let Some(resp) = self.serve_open(&req, &hot_key) {
            return Ok(resp);
        }
        let cacheable = req.method() == Method::GET
            && !req.headers().contains_key(header::RANGE)
            && !req.headers().contains_key(header::IF_MODIFIED_SINCE)
            && !req.headers().contains_key(header::IF_UNMODIFIED_SINCE);

        let mut candidate = self.root.clone();
        candidate.extend(&segments);
        let found = self.contained(&candidate).await;
        let rel_is_dir = rel.ends_with('/');
        let mut used_fallback = false;
        let (rel, file, opened) = match found {
            Some((file, opened)) => (rel.to_string(), file, opened),
            None => match &self.fallback {
                Some(f) => {
                    let p = self.root.join(f);
                    used_fallback = true;
                    match self.contained(&p).await {
                        Some((file, opened)) => (format!("/{f}"), file, opened),
                        None => return Err(StaticError::NotFound),
                    }
                }
                None => return Err(StaticError::NotFound),
            },
        };

        let meta = tokio::fs::metadata(&file).await.map_err(StaticError::Io)?;
        let etag = etag_base(&meta);
        if let Some(inm) = req.headers().get(header::IF_NONE_MATCH) {
            if let Some(matched) = if_none_match_hits(inm, &etag) {
                return Ok(self.not_modified(&matched, &meta));
            }
        }

        if !used_fallback && !rel_is_dir {
            if let Some(resp) = self.serve_large(&req, &rel, &file, &opened, &meta, &etag) {
                return Ok(resp);
            }
        }

        // Hand ServeDir only what it needs, with the route-relative path.
        // The query rides along only so ServeDir's add-a-slash redirect
        // keeps it; files are found by path alone.
        let inner_uri = match req.uri().query() {
            Some(q) => format!("{rel}?{q}"),
            None => rel,
        };
        let mut inner = Request::builder()
            .method(req.method().clone())
            .uri(Uri::try_from(inner_uri.as_str()).map_err(|_| StaticError::BadPath)?)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|_| StaticError::BadPath)?;
        copy_headers(req.headers(), inner.headers_mut());
        if self.precompressed && !self.siblings_contained(&opened).await {
            // SECURITY: ServeDir opens `x.br`/`x.gz` itself, unchecked; a
            // sibling that leaves the root (a symlink) must not be chosen,
            // so this request gets the plain file.
            inner.headers_mut().remove(header::ACCEPT_ENCODING);
        }
        let resp = self
            .serve
            .clone()
            .try_call(inner)
            .await
            .map_err(StaticError::Io)?;

        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(StaticError::NotFound);
        }
        let mut resp = resp.map(|b| b.map_err(BoxError::from).boxed_unsync());
        let h = resp.headers_mut();
        if status == StatusCode::TEMPORARY_REDIRECT {
            // ServeDir saw the route-relative path: put the prefix back.
            if let Some(loc) = h.get(header::LOCATION).and_then(|l| l.to_str().ok()) {
                let full = format!("{}{}", prefix.trim_end_matches('/'), loc);
                if let Ok(v) = HeaderValue::from_str(&full) {
                    h.insert(header::LOCATION, v);
                }
            }
            return Ok(resp);
        }
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            let encoding = h
                .get(header::CONTENT_ENCODING)
                .and_then(|e| e.to_str().ok())
                .map(str::to_owned);
            if let Ok(v) = HeaderValue::from_str(&etag_for(&etag, encoding.as_deref())) {
                h.insert(header::ETAG, v);
            }
        }
        self.common_headers(h);
        // Only a plain hit (not the SPA fallback) of a whole small file.
        let whole = status == StatusCode::OK
            && h.get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n <= HOT_MAX_FILE);
        if cacheable && whole && !used_fallback && !rel_is_dir {
            let headers = h.clone();
            self.make_hot(hot_key, &opened, &headers).await;
        }
        Ok(resp)
    }

    /// 307 from the route prefix without its slash to the prefix with it.
    fn add_slash(&self, prefix: &str, query: Option<&str>) -> Response<Body> {
        let mut location = format!("{}/", prefix.trim_end_matches('/'));
        if let Some(q) = query {
            location.push('?');
            location.push_str(q);
        }
        let mut resp = Response::new(crate::body::empty());
        *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    }

    /// Whether every precompressed sibling of `opened` that exists also
    /// resolves to a regular file under the root.
    async fn siblings_contained(&self, opened: &Path) -> bool {
        for ext in ["br", "gz"] {
            let mut name = opened.as_os_str().to_owned();
            name.push(".");
            name.push(ext);
            let sibling = PathBuf::from(name);
            if tokio::fs::symlink_metadata(&sibling).await.is_err() {
                continue;
            }
            let inside = match tokio::fs::canonicalize(&sibling).await {
                Ok(c) => {
                    c.starts_with(&self.root)
                        && tokio::fs::metadata(&c).await.is_ok_and(|m| m.is_file())
                }
                Err(_) => false,
            };
            if !inside {
                return false;
            }
        }
        true
    }

    /// 304 carrying `etag`, the (strong, quoted) tag of the representation
    /// the client showed, so a cache keeps the tag of what it stored.
    fn not_modified(&self, etag: &str, meta: &std::fs::Metadata) -> Response<Body> {
        let last_modified = meta
            .modified()
            .ok()
            .and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok());
        self.not_modified_with(etag, last_modified)
    }

    fn not_modified_with(&self, etag: &str, last_modified: Option<HeaderValue>) -> Response<Body> {
        let mut resp = Response::new(crate::body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(etag) {
            h.insert(header::ETAG, v);
        }
        if let Some(lm) = last_modified {
            h.insert(header::LAST_MODIFIED, lm);
        }
        self.common_headers(h);
        resp
    }

    fn common_headers(&self, h: &mut HeaderMap) {
        if let Some(cc) = &self.cache_control {
            h.insert(header::CACHE_CONTROL, cc.clone());
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if self.precompressed {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }

    /// The canonical path of `candidate` (or of its index.html when it is a
    /// directory) if it exists and lies under the root, with the path as
    /// ServeDir will open it (not canonical: its precompressed siblings sit
    /// next to that one).
    async fn contained(&self, candidate: &Path) -> Option<(PathBuf, PathBuf)> {
        let canonical = tokio::fs::canonicalize(candidate).await.ok()?;
        // SECURITY: a symlink may point anywhere; only what resolves inside
        // the root is served.
        if !canonical.starts_with(&self.root) {
            return None;
        }
        let meta = tokio::fs::metadata(&canonical).await.ok()?;
        if meta.is_dir() {
            let index = tokio::fs::canonicalize(canonical.join("index.html"))
                .await
                .ok()?;
            if !index.starts_with(&self.root) {
                return None;
            }
            // The directory itself is what ServeDir is asked for; it
            // appends index.html (or redirects to add the slash).
            return Some((index, candidate.join("index.html")));
        }
        meta.is_file().then(|| (canonical, candidate.to_path_buf()))
    }
}

/// One `stat`: the file at `path` still has this size and mtime (a cached
/// copy or descriptor is still good).
fn unchanged(path: &Path, len: u64, mtime: std::time::SystemTime) -> bool {
    std::fs::metadata(path)
        .ok()
        .is_some_and(|m| m.len() == len && m.modified().ok() == Some(mtime))
}

/// Read size for large files.
const FILE_CHUNK: u64 = 256 * 1024;

/// Set on a whole large file's response: the open file, so that a plain
/// TCP connection can send it with `sendfile(2)` instead of the body's
/// reads and copies (`crate::h1`). The body reads the same file.
#[derive(Clone)]
pub struct SendFile {
    pub file: Arc<std::fs::File>,
    pub len: u64,
}

/// A file streamed in `FILE_CHUNK` pieces, read as hyper asks for them,
/// each at its own offset (the descriptor is shared by concurrent
/// responses).
struct FileBody {
    file: Arc<std::fs::File>,
    offset: u64,
    remaining: u64,
    /// Set after a piece was handed out: the next poll yields once, so one
    /// connection cannot send a whole large file while others wait (the
    /// reads are not counted by Tokio's cooperative budget).
    yield_next: bool,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::os::unix::fs::FileExt;
        use std::task::Poll;
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.yield_next {
            self.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let want = usize::try_from(self.remaining.min(FILE_CHUNK)).unwrap_or(64 * 1024);
        let mut buf = vec![0u8; want];
        match self.file.read_at(&mut buf, self.offset) {
            // Shorter than its metadata said: the file was cut while sent.
            Ok(0) => Poll::Ready(Some(Err("static file shrank while being sent".into()))),
            Ok(n) => {
                buf.truncate(n);
                self.offset += n as u64;
                self.remaining -= n as u64;
                self.yield_next = true;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(buf)))))
            }
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

fn sibling(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

/// The path below the route prefix, still percent-encoded, starting '/';
/// `None` when the path is the prefix without its trailing slash.
fn relative_path<'a>(raw: &'a str, prefix: &str) -> Result<Option<&'a str>, StaticError> {
    let trimmed = prefix.trim_end_matches('/');
    let rest = raw.strip_prefix(trimmed).ok_or(StaticError::NotFound)?;
    if rest.is_empty() {
        Ok(None)
    } else if rest.starts_with('/') {
        Ok(Some(rest))
    } else {
        Err(StaticError::NotFound)
    }
}

/// Splits a route-relative, percent-encoded path into checked, decoded
/// segments (see the module doc, step 2).
pub fn checked_segments(rel: &str) -> Result<Vec<String>, StaticError> {
    let lower = rel.to_ascii_lowercase();
    // SECURITY: an encoded separator or NUL has no business in a file path;
    // decoding it later would let it act as one.
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") || rel.contains('\\')
    {
        return Err(StaticError::BadPath);
    }
    let mut out = Vec::new();
    for raw_seg in rel.split('/') {
        if raw_seg.is_empty() {
            continue;
        }
        let seg = percent_decode_str(raw_seg)
            .decode_utf8()
            .map_err(|_| StaticError::BadPath)?;
        if seg.contains('\0') || seg.contains('\\') || seg.contains('/') {
            return Err(StaticError::BadPath);
        }
        if seg == "." || seg == ".." {
            return Err(StaticError::BadPath);
        }
        if seg.starts_with('.') {
            // Hidden files (.env, .git) are never served.
            return Err(StaticError::NotFound);
        }
        out.push(seg.into_owned());
    }
    Ok(out)
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in [
        header::ACCEPT_ENCODING,
        header::RANGE,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ] {
        if let Some(v) = from.get(&name) {
            to.insert(name, v.clone());
        }
    }
    // RFC 9110 13.1.3: If-Modified-Since is ignored when If-None-Match is
    // present (it did not match, or we would have answered 304 already).
    if from.contains_key(header::IF_NONE_MATCH) {
        to.remove(header::IF_MODIFIED_SINCE);
    }
}

/// `size-mtime` in hex: changes whenever the file does.
fn etag_base(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", meta.len(), mtime)
}

/// A strong ETag per representation: a `.br` body differs from the plain one.
fn etag_for(base: &str, encoding: Option<&str>) -> String {
    match encoding {
        Some(e) if e != "identity" => format!("\"{base}-{e}\""),
        _ => format!("\"{base}\""),
    }
}

/// Weak comparison (RFC 9110 13.1.2) against any representation of the
/// file; returns the strong form of the tag that matched.
fn if_none_match_hits(value: &HeaderValue, base: &str) -> Option<String> {
    let v = value.to_str().ok()?;
    v.split(',').find_map(|tag| {
        let tag = tag.trim();
        if tag == "*" {
            return Some(etag_for(base, None));
        }
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        let inner = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"'))?;
        let hit = inner == base
            || inner
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('-') && !rest[1..].contains('-'));
        hit.then(|| format!("\"{inner}\""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_forms_are_refused() {
        for p in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/a/%2E%2E/b",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00b",
            "/./a",
            "/%ff",
        ] {
            assert!(
                matches!(checked_segments(p), Err(StaticError::BadPath)),
                "{p}"
            );
        }
        assert!(matches!(
            checked_segments("/.env"),
            Err(StaticError::NotFound)
        ));
        assert_eq!(
            checked_segments("/css/site%20x.css").unwrap(),
            vec!["css", "site x.css"]
        );
    }

    #[test]
    fn relative_path_stays_in_prefix() {
        assert_eq!(
            relative_path("/static/a.css", "/static/").unwrap(),
            Some("/a.css")
        );
        assert_eq!(relative_path("/static", "/static/").unwrap(), None);
        assert_eq!(relative_path("/", "/").unwrap(), Some("/"));
        assert!(relative_path("/staticx", "/static/").is_err());
    }

    #[test]
    fn etag_matching() {
        let v = HeaderValue::from_static("W/\"10-5\", \"zz\"");
        assert_eq!(if_none_match_hits(&v, "10-5").as_deref(), Some("\"10-5\""));
        assert_eq!(
            if_none_match_hits(&HeaderValue::from_static("\"10-5-br\""), "10-5").as_deref(),
            Some("\"10-5-br\"")
        );
        assert!(if_none_match_hits(&HeaderValue::from_static("\"10-6\""), "10-5").is_none());
        assert!(if_none_match_hits(&HeaderValue::from_static("\"10-5-x-y\""), "10-5").is_none());
        assert_eq!(
            if_none_match_hits(&HeaderValue::from_static("*"), "10-5").as_deref(),
            Some("\"10-5\"")
        );
    }
}
