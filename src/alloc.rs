//! Giving freed memory back to the OS after bursts.
//!
//! glibc's malloc keeps what a burst of connections freed (per-thread
//! arenas, fragmented heaps) mapped: RSS climbs from ~11 MB to ~50 MB after
//! 1,000 idle connections and stays there. Nothing leaks, but a front door
//! that looks like it grows forever gets restarted by operators, and the
//! memory is better used by the page cache serving static files. So once
//! the number of open connections has fallen to half of its recent peak,
//! `malloc_trim(0)` returns the free pages of every arena (it `madvise`s
//! free runs inside heaps too, not only the top), on a blocking thread.
//! Steady load never triggers it: the connection count has to fall first.
//! The first idle second (no connection open) after any activity trims
//! too.
//!
//! And at start, `fixed_mmap_threshold`: glibc raises its mmap threshold
//! to the size of any large block freed, so after the first login every
//! argon2 verification's 19 MiB comes from an arena, where freed space
//! stays mapped: RSS grew by ~12 MB per login, to 1.5 GB after 250. With
//! the threshold fixed, blocks over it are mapped and unmapped each time.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How often the connection count is sampled.
const SAMPLE: Duration = Duration::from_secs(1);
/// Peaks below this are too small to be worth a trim.
const MIN_PEAK: usize = 32;

/// Watches `limit` (one permit per open connection out of `max`) and trims
/// the allocator when a burst has passed. Runs until the runtime stops.
pub(crate) async fn trim_after_bursts(limit: Arc<Semaphore>, max: usize) {
    let mut peak = 0usize;
    // Whether connections were open since the last trim: the first idle
    // second after any activity trims once (a soak's ten minutes of steady
    // load left ~28 MB of freed arena pages mapped otherwise).
    let mut busy = false;
    let mut ticker = tokio::time::interval(SAMPLE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let open = max.saturating_sub(limit.available_permits());
        peak = peak.max(open);
        busy |= open > 0;
        let burst_over = peak >= MIN_PEAK && open <= peak / 2;
        let idle = busy && open == 0;
        if burst_over || idle {
            peak = open;
            busy = false;
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(open, released, "allocator trimmed");
        }
    }
}

/// Returns free heap pages to the OS; true when some were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() -> bool {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks
    // each arena in turn); glibc documents it for exactly this use.
    unsafe { malloc_trim(0) == 1 }
}

/// Other allocators (musl, macOS) return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Blocks at least this large are mapped on their own and unmapped when
/// freed: argon2's 19 MiB, large bodies. Smaller ones stay in arenas.
pub const MMAP_THRESHOLD: usize = 512 * 1024;

/// At most this many malloc arenas (glibc's default is 8 per core).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: std::os::raw::c_int = 4;

/// Fixes glibc's mmap threshold at `MMAP_THRESHOLD` (which also stops its
/// dynamic raising). Call once at start, before other threads exist.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn fixed_mmap_threshold() -> bool {
    extern "C" {
        fn mallopt(param: std::os::raw::c_int, value: std::os::raw::c_int) -> std::os::raw::c_int;
    }
    /// glibc's `M_MMAP_THRESHOLD` and `M_ARENA_MAX` (malloc.h).
    const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
    const M_ARENA_MAX: std::os::raw::c_int = -8;
    // SAFETY: mallopt takes no pointers; it only sets a malloc parameter
    // under the main arena's lock.
    unsafe {
        // Every thread that ever allocated (the blocking pool's argon2
        // threads come and go) would otherwise keep an arena of its own,
        // up to 8 per core, each holding its fragments for good.
        mallopt(M_ARENA_MAX, ARENA_MAX);
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD as std::os::raw::c_int) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fixed_mmap_threshold() -> bool {
    false
}
