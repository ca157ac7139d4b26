//! `gateway`: a single-binary front door for an application server.
//!
//! # Layout
//!
//! The path of one request, module by module:
//!
//! - [`server`] binds nothing itself: it takes bound listeners, accepts,
//!   finishes TLS ([`tls`]) within the header timeout, enforces connection
//!   limits and timeouts, and hands each request to [`handler`].
//! - [`handler`] is the request path, in order: request id and health,
//!   route ([`router`]), then static files ([`static_files`]) or the reverse
//!   proxy ([`proxy`]). Edge authentication slots in between routing and
//!   dispatch.
//! - [`h1`] is the HTTP/1.1 fast path for proxied requests: the same
//!   request path as [`handler`], run on the raw request head, with the
//!   connection handed to hyper and [`handler`] for anything else.
//! - [`response`] turns every error into a status and a small JSON body.
//! - [`telemetry`] sets up logging and writes the access-log line.
//! - [`config`] loads and validates the TOML file before anything binds.

pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod h1;
pub mod handler;
pub mod healthcheck;
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
