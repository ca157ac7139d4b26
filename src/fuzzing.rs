//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz): small wrappers
//! over crate-internal code that return plain data, so the targets call
//! exactly what the server calls without the internals being public.
//! Not an API: nothing else should use this module.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crate::h1::Parsed;
use crate::handler::{Action, AppState, ConnInfo, Deps, Framing, Step};

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
}

impl From<Framing> for BodyFraming {
    fn from(f: Framing) -> Self {
        match f {
            Framing::None => BodyFraming::None,
            Framing::Length(n) => BodyFraming::Length(n),
            Framing::Chunked => BodyFraming::Chunked,
        }
    }
}

/// What the raw HTTP/1.1 executor makes of the bytes at the start of a
/// connection (`h1::parse_head`, as `h1::serve` calls it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H1Request {
    /// The head is not complete yet.
    Partial,
    /// httparse refused it: handed to hyper.
    Malformed,
    /// A complete head declined before deciding (HTTP/1.0, upgrades,
    /// `Expect`, CONNECT, absolute-form and odd targets): handed to hyper.
    Declined { head_len: usize },
    /// Decided by `AppState::decide`.
    Decided(H1Decision),
}

/// The decision on a request head, as far as framing goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H1Decision {
    /// Bytes of the head (request line, fields, blank line).
    pub head_len: usize,
    /// How the bytes after the head are read.
    pub framing: BodyFraming,
    /// The connection closes after the answer.
    pub close: bool,
    /// The status when the gateway answers itself (refusals included);
    /// `None` when the request is proxied, served from files or by the
    /// token routes, or waits on a token check.
    pub answer: Option<u16>,
    /// The request goes to an upstream.
    pub proxied: bool,
}

/// The config the request decisions are made with: every path routed to
/// one upstream (nothing listens there; nothing is connected).
pub const H1_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"
health_path = "/healthz"
max_header_bytes = "16KiB"
max_body_bytes = "10MiB"

[upstreams.app]
url = "http://127.0.0.1:9"

[[routes]]
path = "/"
upstream = "app"
"#;

fn h1_state() -> &'static (AppState, ConnInfo) {
    static STATE: OnceLock<(AppState, ConnInfo)> = OnceLock::new();
    STATE.get_or_init(|| {
        let config = crate::config::load_str(std::path::Path::new("fuzz.toml"), H1_CONFIG)
            .unwrap_or_else(|e| panic!("fuzzing config: {e}"));
        let deps = Deps {
            store: None,
            revoked: Arc::new(crate::store::RevokedFamilies::new()),
            budget: crate::proxy::exchange::Budget::new(0),
            acme: None,
        };
        let state = AppState::new(config, &deps).unwrap_or_else(|e| panic!("fuzzing state: {e}"));
        let peer: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 40000));
        (state, ConnInfo::new(peer, false, None))
    })
}

/// Parses and decides on `buf`, the bytes read at the start of a
/// connection, exactly as the raw HTTP/1.1 executor does.
pub fn h1_request(buf: &[u8]) -> H1Request {
    let (state, conn) = h1_state();
    match crate::h1::parse_head(state, conn, buf, false) {
        Parsed::Partial => H1Request::Partial,
        Parsed::Malformed => H1Request::Malformed,
        Parsed::Declined { head_len } => H1Request::Declined { head_len },
        Parsed::Decided((step, _method, _request, _info), head_len) => {
            let d = match &step {
                Step::Ready(d) => d,
                // No [jwt] in the config: no token is ever checked.
                Step::Verify(_) => {
                    return H1Request::Decided(H1Decision {
                        head_len,
                        framing: BodyFraming::None,
                        close: true,
                        answer: None,
                        proxied: false,
                    })
                }
            };
            H1Request::Decided(H1Decision {
                head_len,
                framing: d.framing.into(),
                close: d.close,
                answer: match &d.action {
                    Action::Answer(r) => Some(r.status().as_u16()),
                    _ => None,
                },
                proxied: matches!(d.action, Action::Proxy(_)),
            })
        }
    }
}

/// The strict chunked scanner and decoder (`wire::ChunkedScan`).
#[derive(Default, Clone)]
pub struct Chunked(crate::wire::ChunkedScan);

/// A step of decoding a chunked body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeStep {
    Data(bytes::Bytes),
    End,
    NeedMore,
}

impl Chunked {
    pub fn new() -> Self {
        Self::default()
    }

    /// `ChunkedScan::feed`: `Some(n)` when the body ends after `data[..n]`.
    #[allow(clippy::result_unit_err)]
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        self.0.feed(data)
    }

    /// Payload bytes scanned so far.
    pub fn payload(&self) -> u64 {
        self.0.payload
    }

    /// `ChunkedScan::decode`: the next payload piece off the front of `buf`.
    #[allow(clippy::result_unit_err)]
    pub fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<DecodeStep, ()> {
        Ok(match self.0.decode(buf)? {
            crate::wire::Decoded::Data(b) => DecodeStep::Data(b),
            crate::wire::Decoded::End => DecodeStep::End,
            crate::wire::Decoded::NeedMore => DecodeStep::NeedMore,
        })
    }
}

/// What an upstream response head says (`wire::parse_response_head`, then
/// `wire::body_facts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H1Response {
    Partial,
    /// The head is refused.
    Invalid,
    Parsed {
        head_len: usize,
        status: u16,
        version: Option<u8>,
        /// The framing headers read; `Err` when they are refused.
        facts: Result<ResponseFacts, ()>,
    },
}

/// `wire::BodyFacts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFacts {
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
    pub has_date: bool,
    pub has_connection: bool,
}

/// Parses an upstream response head at the start of `buf` and reads its
/// framing headers.
pub fn h1_response(buf: &[u8]) -> H1Response {
    let mut headers = crate::wire::uninit_headers();
    match crate::wire::parse_response_head(buf, &mut headers) {
        Ok(None) => H1Response::Partial,
        Err(_) => H1Response::Invalid,
        Ok(Some((head_len, status, resp))) => H1Response::Parsed {
            head_len,
            status,
            version: resp.version,
            facts: crate::wire::body_facts(resp.version, resp.headers)
                .map(|f| ResponseFacts {
                    content_length: f.content_length,
                    chunked: f.chunked,
                    keep_alive: f.keep_alive,
                    has_date: f.has_date,
                    has_connection: f.has_connection,
                })
                .map_err(|_| ()),
        },
    }
}
