//! Idle keep-alive connections to one upstream server, for the HTTP/1.1
//! fast path (`crate::h1`). A connection is taken for one request and put
//! back once its response has been read to the end, so many client
//! connections share a few upstream ones, as nginx's `keepalive` pool does.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{self, Stream, Target};
use crate::clock::now_ms;
use crate::config::{UpstreamAddr, UpstreamConfig};

pub struct Pool {
    target: Target,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Most recently returned last (with when, `now_ms` clock): taken
    /// from the end, so the warmest connection is reused first.
    idle: Mutex<Vec<(Stream, u64)>>,
    /// A task closes connections idle past `idle_timeout` while any idle.
    reaping: AtomicBool,
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
            reaping: AtomicBool::new(false),
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
            if !Self::stale(since, self.idle_timeout, now_ms()) && stream.is_reusable() {
                return Some(stream);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to the end.
    pub fn put(self: &Arc<Self>, stream: Stream) {
        if self.max_idle == 0 {
            return;
        }
        let now = now_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        Self::drop_stale(&mut idle, self.idle_timeout, now);
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push((stream, now));
        // Under the lock, so the reaper cannot stop unseen in between.
        if !self.reaping.swap(true, Ordering::AcqRel) {
            self.spawn_reaper();
        }
    }

    /// Connections idle past the timeout sit at the front: drop them.
    fn drop_stale(idle: &mut Vec<(Stream, u64)>, timeout: Duration, now: u64) {
        let stale = idle
            .iter()
            .take_while(|(_, since)| Self::stale(*since, timeout, now))
            .count();
        idle.drain(..stale);
    }

    fn stale(since: u64, timeout: Duration, now: u64) -> bool {
        u128::from(now.saturating_sub(since)) >= timeout.as_millis()
    }

    /// Closes idle connections once they pass `idle_timeout` (checked every
    /// half timeout), until none is left; holds the pool only weakly, so a
    /// pool dropped on reload closes its connections at once.
    fn spawn_reaper(self: &Arc<Self>) {
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                Self::drop_stale(&mut idle, pool.idle_timeout, now_ms());
                if idle.is_empty() {
                    pool.reaping.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn config(addr: &UpstreamAddr, idle: Duration, max_idle: usize) -> UpstreamConfig {
        UpstreamConfig {
            name: "app".into(),
            servers: vec![addr.clone()],
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            preserve_host: false,
            pool_idle_timeout: idle,
            request_buffering: 0,
            pool_max_idle: max_idle,
            balance: crate::config::Balance::RoundRobin,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            health_check: None,
        }
    }

    #[tokio::test]
    async fn idle_connections_are_reused_then_closed_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = UpstreamAddr::Tcp {
            authority: listener.local_addr().unwrap().to_string(),
        };
        let pool = Arc::new(Pool::new(
            &addr,
            &config(&addr, Duration::from_millis(100), 4),
        ));
        let taken = pool.take().await.unwrap();
        assert!(!taken.reused);
        let (mut server_side, _) = listener.accept().await.unwrap();
        pool.put(taken.stream);
        let again = pool.take().await.unwrap();
        assert!(again.reused, "an idle connection is taken again");
        pool.put(again.stream);
        // The reaper closes it once idle past the timeout: the server reads EOF.
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), server_side.read(&mut byte))
            .await
            .expect("idle connection was not closed after pool_idle_timeout")
            .unwrap();
        assert_eq!(n, 0);
        assert!(pool.idle.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = UpstreamAddr::Tcp {
            authority: listener.local_addr().unwrap().to_string(),
        };
        let pool = Arc::new(Pool::new(&addr, &config(&addr, Duration::from_secs(60), 4)));
        let taken = pool.take().await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        pool.put(taken.stream);
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let next = pool.take().await.unwrap();
        assert!(!next.reused, "a closed idle connection must not be reused");
    }

    #[tokio::test]
    async fn at_most_max_idle_are_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = UpstreamAddr::Tcp {
            authority: listener.local_addr().unwrap().to_string(),
        };
        let pool = Arc::new(Pool::new(&addr, &config(&addr, Duration::from_secs(60), 2)));
        let mut held = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..3 {
            held.push(pool.take().await.unwrap().stream);
            accepted.push(listener.accept().await.unwrap());
        }
        for s in held {
            pool.put(s);
        }
        assert_eq!(pool.idle.lock().unwrap().len(), 2);
    }
}
