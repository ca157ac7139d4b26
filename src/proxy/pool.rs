//! Idle keep-alive connections to one upstream server, for the HTTP/1.1
//! fast path (`crate::h1`). A connection is taken for one request and put
//! back once its response has been read to the end, so many client
//! connections share a few upstream ones, as nginx's `keepalive` pool does.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::{self, Stream, Target};
use crate::config::{UpstreamAddr, UpstreamConfig};

pub struct Pool {
    target: Target,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Most recently returned last: taken from the end, so the warmest
    /// connection is reused first.
    idle: Mutex<Vec<(Stream, Instant)>>,
}

/// A connection taken from the pool, or freshly opened.
pub struct Taken {
    pub stream: Stream,
    /// It carried an earlier request: the server may have closed it
    /// meanwhile, so a request that failed before any answer may be retried
    /// on a new connection.
    pub reused: bool,
}

impl Pool {
    pub fn new(addr: &UpstreamAddr, cfg: &UpstreamConfig) -> Self {
        Pool {
            target: client::target(addr),
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.pool_idle_timeout,
            max_idle: cfg.pool_max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection that is still open, else a new one.
    pub async fn take(&self) -> io::Result<Taken> {
        if let Some(stream) = self.take_idle() {
            return Ok(Taken {
                stream,
                reused: true,
            });
        }
        self.connect().await
    }

    /// A new connection, bypassing the idle ones.
    pub async fn connect(&self) -> io::Result<Taken> {
        let stream = client::connect(&self.target, self.connect_timeout).await?;
        Ok(Taken {
            stream,
            reused: false,
        })
    }

    fn take_idle(&self) -> Option<Stream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < self.idle_timeout && stream.is_reusable() {
                return Some(stream);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to the end.
    pub fn put(&self, stream: Stream) {
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Connections idle past the timeout sit at the front: drop them.
        let stale = idle
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= self.idle_timeout)
            .count();
        idle.drain(..stale);
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push((stream, now));
    }
}
