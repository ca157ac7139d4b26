//! Persistent state behind a small interface: revoked token families,
//! outstanding refresh tokens and login-failure counters. SQLite now
//! (`sqlite`), shared stores later; `memory` is the hot-path mirror the
//! edge reads on every request.

pub mod memory;

pub use memory::RevokedFamilies;
