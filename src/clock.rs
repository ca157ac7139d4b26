//! Clocks every layer reads: the coarse monotonic milliseconds of the
//! watchdogs, pools and upstream timers, and the HTTP `Date` value.

/// Milliseconds on the coarse monotonic clock (never 0). Read several
/// times per request, so it is the kernel's tick-granular clock (a few
/// ms), which the vDSO answers without reading the TSC; timeouts are whole
/// seconds or tenths.
pub fn now_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let ms = u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000);
    ms.max(1)
}

/// The current time as an HTTP date, formatted once per second per thread.
pub fn with_http_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        f(d.1.as_bytes())
    })
}

/// Wall-clock seconds since the epoch (token times, store records).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
