//! Which request-serving worker the current thread is.
//!
//! The activator serves requests on one current-thread runtime per worker thread: a request's
//! tasks never leave the worker that accepted its connection. Waking a task of *another* worker
//! costs a system call on both sides (tokio pushes it onto that runtime's inject queue and writes
//! the runtime's eventfd, which ends its `epoll_wait`), so code that chooses whom to wake (the
//! [`crate::breaker`]'s grants, the activator's throttler) prefers the current worker's waiters.
//! Threads that never [`enter`] (the queue-proxy's, the main runtime, tests) are all
//! [`NO_WORKER`].

use std::cell::Cell;

/// The worker of threads that are not request-serving workers (the main runtime, tests).
pub const NO_WORKER: u32 = u32::MAX;

thread_local! {
    static CURRENT: Cell<u32> = const { Cell::new(NO_WORKER) };
}

/// Marks the calling thread as request-serving worker `index` for the rest of its life.
pub fn enter(index: u32) {
    CURRENT.with(|current| current.set(index));
}

/// The calling thread's worker index, [`NO_WORKER`] outside the workers.
#[inline]
pub fn current() -> u32 {
    CURRENT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_no_worker_until_it_enters() {
        std::thread::spawn(|| {
            assert_eq!(current(), NO_WORKER);
            enter(3);
            assert_eq!(current(), 3);
        })
        .join()
        .unwrap();
        // Per thread: another thread is unaffected.
        std::thread::spawn(|| assert_eq!(current(), NO_WORKER))
            .join()
            .unwrap();
    }
}
