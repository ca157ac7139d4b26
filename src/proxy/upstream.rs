//! An upstream: one or more servers of the same application, each with its
//! own connection pool, picked round robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::pool::Pool;
use crate::config::{UpstreamAddr, UpstreamConfig};

pub struct Upstream {
    pub config: UpstreamConfig,
    servers: Vec<Server>,
    next: AtomicUsize,
}

pub struct Server {
    pub addr: UpstreamAddr,
    /// Idle connections, for every path: one pool per server.
    pub pool: std::sync::Arc<Pool>,
    /// The Host header sent when `preserve_host = false`.
    pub host: http::HeaderValue,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let servers = config
            .servers
            .iter()
            .map(|addr| Server {
                addr: addr.clone(),
                pool: std::sync::Arc::new(Pool::new(addr, config)),
                host: match addr {
                    UpstreamAddr::Tcp { authority } => http::HeaderValue::from_str(authority)
                        .unwrap_or_else(|_| http::HeaderValue::from_static("localhost")),
                    UpstreamAddr::Unix { .. } => http::HeaderValue::from_static("localhost"),
                },
            })
            .collect();
        Upstream {
            config: config.clone(),
            servers,
            next: AtomicUsize::new(0),
        }
    }

    /// The index of the server for the next request (round robin).
    pub fn pick_index(&self) -> Option<usize> {
        match self.servers.len() {
            0 => None,
            1 => Some(0),
            n => Some(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .finish()
    }
}
