//! Per-connection timeouts: what a connection is doing (`Activity`, fed by
//! the executors as they read heads and finish requests) and the watchdog
//! task that enforces `header_read_timeout` and `idle_timeout` from it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use crate::clock::now_ms;

/// What the watchdog needs to know about a connection.
pub(crate) struct Activity {
    /// Requests whose response has not been fully sent.
    in_flight: AtomicUsize,
    /// When reading of the next request's head began (0: not reading).
    head_started: AtomicU64,
    /// When the connection last became idle.
    idle_since: AtomicU64,
    /// Wakes the watchdog when a head starts, to arm the shorter timer.
    wake: Notify,
    /// When the watchdog will look next (ms): a head whose deadline comes
    /// later needs no wake-up, so busy connections do not wake it per
    /// request.
    armed: AtomicU64,
    header_ms: u64,
    idle_ms: u64,
}

impl Activity {
    /// A new connection's: its first head is due `header` after now.
    pub(crate) fn new(header: Duration, idle: Duration) -> Self {
        let now = now_ms();
        Activity {
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(now),
            idle_since: AtomicU64::new(now),
            wake: Notify::new(),
            armed: AtomicU64::new(0),
            header_ms: u64::try_from(header.as_millis()).unwrap_or(u64::MAX),
            idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub(crate) fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) != 0 {
            return;
        }
        let now = now_ms();
        if self
            .head_started
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && now.saturating_add(self.header_ms) < self.armed.load(Ordering::Acquire)
        {
            self.wake.notify_one();
        }
    }

    /// Bytes of the next request were already read with the last one: its
    /// head is due within the header timeout from now.
    pub(crate) fn head_buffered(&self) {
        self.head_started.store(0, Ordering::Release);
        self.on_read();
    }

    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
    }

    pub(crate) fn request_finished(&self) {
        let now = now_ms();
        self.idle_since.store(now, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        // The watchdog may sleep until a later deadline (the first head's
        // header timeout, say): the idle timeout must not wait for it.
        if now.saturating_add(self.idle_ms) < self.armed.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
    }

    /// Resolves when the connection has broken a timeout.
    pub(crate) async fn expired(
        &self,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> &'static str {
        let header_ms = u64::try_from(header_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let now = now_ms();
            let (deadline, why) = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Nothing to enforce while a request is being served; look
                // again within a header timeout, so that the next request's
                // head (due by then at the earliest) needs no wake-up: a busy
                // connection wakes its watchdog once per header timeout, not
                // once per request.
                (now.saturating_add(header_ms.min(idle_ms)), "")
            } else {
                let head = self.head_started.load(Ordering::Acquire);
                if head != 0 {
                    (head.saturating_add(header_ms), "header read timeout")
                } else {
                    (
                        self.idle_since
                            .load(Ordering::Acquire)
                            .saturating_add(idle_ms),
                        "idle timeout",
                    )
                }
            };
            if !why.is_empty() && now >= deadline {
                return why;
            }
            let wait = Duration::from_millis(deadline.saturating_sub(now).max(1));
            self.armed.store(
                now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
                Ordering::Release,
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// The connection's watchdog, in a task of its own so that its timers are
/// not polled each time the connection's task wakes. Aborted when dropped.
pub(crate) struct Watchdog(tokio::task::JoinHandle<&'static str>);

impl Watchdog {
    pub(crate) fn start(activity: &Arc<Activity>, header: Duration, idle: Duration) -> Self {
        let activity = activity.clone();
        Watchdog(tokio::spawn(
            async move { activity.expired(header, idle).await },
        ))
    }

    /// Resolves with the reason once a timeout is broken.
    pub(crate) async fn fired(&mut self) -> &'static str {
        (&mut self.0).await.unwrap_or("watchdog ended")
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}
