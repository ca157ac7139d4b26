//! `gateway`: a single-binary front door for an application server.
//!
//! # Layout
//!
//! The path of one request, module by module (imports point one way:
//! `server -> h1 -> handler -> {router, auth, tokens, proxy, static_files,
//! response} -> store -> config`, all over the ground floor):
//!
//! - [`server`] binds nothing itself: it takes bound listeners, accepts,
//!   finishes TLS ([`tls`]) within the header timeout, enforces connection
//!   limits and starts each connection's [`watchdog`]
//!   (`header_read_timeout`, `idle_timeout`). Every HTTP/1.x connection
//!   starts on [`h1`]; HTTP/2 goes to hyper.
//! - [`h1`] reads a request head into one buffer and parses it in place;
//!   [`handler`]'s `AppState::decide` decides what happens to it. The
//!   decision is carried out with raw bytes: a proxied request through
//!   [`proxy`], a static file from [`static_files`] (whole files with
//!   `sendfile(2)`), a token route through [`tokens`], any refusal as the
//!   response the decision holds. What it declines before deciding
//!   (HTTP/1.0, upgrades, `Expect`, absolute-form targets, heads httparse
//!   refuses) goes to hyper with the bytes read.
//! - [`handler`] is THE request path: the same `decide` for both
//!   executors (request id; 431 and framing refusals; health; https
//!   redirect; the path normalised by [`path`]; token routes; route by
//!   [`router`]; methods and size; Bearer JWT verified once by [`auth`]
//!   against keys and the revocation mirror [`store`] keeps; claim rules),
//!   and `handle`, the hyper executor (HTTP/2, handed-over HTTP/1.x).
//! - [`proxy`] holds the one set of upstream header rules, the one upstream
//!   exchange with its retry rule and request buffering, and one idle pool
//!   per server.
//! - [`tokens`] answers the token routes (simplejwt's contract): credentials
//!   checked, tokens minted, refresh families and revocations recorded in
//!   [`store`] (SQLite), whose in-memory mirror [`auth`] reads on every
//!   request.
//! - [`response`] turns every error into a status and a small JSON body
//!   ([`body`] has the body type and constructors every module shares).
//! - [`telemetry`] sets up logging and writes the access-log line.
//! - [`acme`] obtains and renews certificates from an ACME CA (instant-acme)
//!   into the [`tls`] resolver's `AcmeCerts`, and answers http-01 through
//!   [`handler`]'s decision.
//! - [`config`] loads and validates the TOML file before anything binds.
//! - Ground floor, importing nothing of the crate: [`alloc`] (returns
//!   freed memory after bursts), [`wire`] (the HTTP/1
//!   codec: header names, heads, framing facts, the chunked scanner),
//!   [`clock`], [`path`], [`body`], [`files`] (secret files written 0600).

pub mod acme;
pub mod admin;
pub mod alloc;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod h1;
pub mod handler;
pub mod healthcheck;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod response;
pub mod router;
pub mod server;
pub mod static_files;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod watchdog;
pub mod wire;
