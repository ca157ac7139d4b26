//! Request buffering (nginx's `proxy_request_buffering on`): a body up to
//! the upstream's `request_buffering` is received whole (`buffer`) before a
//! connection is taken, so a slow client never holds an app worker.
//! Buffered bytes are charged to one `Budget` for the whole process as
//! they arrive, so many slow clients cost only what they have sent, and
//! memory stays under `request_buffer_budget` (503 past it).

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::exchange::BodySource;
use super::ProxyError;

/// Memory all connections together may hold in buffered request bodies.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    limit: u64,
}

/// Bytes charged to the budget, given back when dropped.
#[derive(Debug)]
pub struct Charge<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    pub fn charge(&self) -> Charge<'_> {
        Charge {
            budget: self,
            bytes: 0,
        }
    }

    /// Bytes currently charged.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

impl Charge<'_> {
    /// Charges `n` more bytes; `BufferBudget` when the budget is spent.
    pub fn add(&mut self, n: u64) -> Result<(), ProxyError> {
        if n == 0 {
            return Ok(());
        }
        let b = self.budget;
        let mut used = b.used.load(Ordering::Acquire);
        loop {
            let next = used.saturating_add(n);
            if next > b.limit {
                return Err(ProxyError::BufferBudget);
            }
            match b
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// Receives a body whole when it fits in `limit` bytes: `Ok(true)` with
/// the payload in `out`; `Ok(false)` when it did not fit (`out` holds the
/// first `limit`-or-more bytes read, the rest is to stream). Each read is
/// given `timeout` (408 when the client stalls).
pub async fn buffer<S: BodySource + ?Sized>(
    source: &mut S,
    out: &mut Vec<u8>,
    limit: u64,
    charge: &mut Charge<'_>,
    timeout: Duration,
) -> Result<bool, ProxyError> {
    // Each read within `timeout`, as nginx's client_body_timeout: a slow
    // but steady upload is never cut off. (A client that keeps dripping
    // holds what it has sent; the budget bounds the sum.)
    loop {
        let before = out.len();
        let read = tokio::time::timeout(timeout, poll_fn(|cx| source.poll_payload(cx, out)));
        let more = match read.await {
            Err(_) => return Err(ProxyError::ClientBodyTimeout { after: timeout }),
            Ok(r) => r?,
        };
        charge.add((out.len() - before) as u64)?;
        if !more {
            return Ok(true);
        }
        if out.len() as u64 > limit {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_given_back() {
        let b = Budget::new(10);
        let mut one = b.charge();
        one.add(6).unwrap();
        let mut two = b.charge();
        assert!(matches!(two.add(5), Err(ProxyError::BufferBudget)));
        two.add(4).unwrap();
        drop(one);
        assert_eq!(b.used(), 4);
        drop(two);
        assert_eq!(b.used(), 0);
    }
}
