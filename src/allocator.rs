//! Giving freed memory back to the system after a burst.
//!
//! mimalloc keeps the pages a thread freed, and a page freed by another
//! thread (a connection's task ends on another worker than the one that
//! allocated it) waits on its owner's list until the owner allocates
//! again. An idle server allocates little, so after a burst of connections
//! closes, the memory they held stays resident for as long as the server
//! stays quiet. Each runtime thread, when it parks (nothing to do), asks
//! mimalloc to collect its own heap — at most once per [`COLLECT_EVERY`],
//! so a busy thread that parks thousands of times a second pays one clock
//! read per park.
//!
//! The one call into C is the crate's second `unsafe` exception (the first
//! is the io_uring module), for a function with no preconditions.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Least time between two collections on one thread.
pub const COLLECT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For `tokio::runtime::Builder::on_thread_park`: collects this thread's
/// heap if it has not within [`COLLECT_EVERY`].
pub fn on_thread_park() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        collect();
    }
}

/// Frees this thread's empty pages (including those other threads freed
/// into it) and returns what it can to the system.
pub fn collect() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions; it
    // only walks the calling thread's own heap. `false`: not forced, so it
    // does not also reclaim other threads' abandoned segments.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(false)
    };
}
