//! The infinite breaker used as the revision breaker when cc = 0 (spec §3.4): a gate that is
//! either open (capacity 1: requests pass at once, no limit) or closed (capacity 0: requests wait
//! until it opens). Opening releases every waiter at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

use knative_common::breaker::QueueFull;

/// Open/closed gate; see the module docs.
#[derive(Debug)]
pub struct InfiniteBreaker {
    open: AtomicBool,
    notify: Notify,
    /// Requests currently waiting for the gate to open.
    waiting: AtomicUsize,
    /// Optional cap on `waiting` (the revision's configurable queue cap); `usize::MAX` = none.
    max_waiting: usize,
}

impl Default for InfiniteBreaker {
    fn default() -> Self {
        InfiniteBreaker::new(None)
    }
}

/// Decrements `waiting` when a waiter leaves (done or cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let _ = self.0.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
    }
}

impl InfiniteBreaker {
    /// A closed breaker; `max_waiting` optionally caps how many requests may wait while it is
    /// closed (beyond that [`InfiniteBreaker::acquire`] fails with [`QueueFull`]).
    pub fn new(max_waiting: Option<usize>) -> Self {
        InfiniteBreaker {
            open: AtomicBool::new(false),
            notify: Notify::new(),
            waiting: AtomicUsize::new(0),
            max_waiting: max_waiting.unwrap_or(usize::MAX),
        }
    }

    /// Whether requests pass at once (what [`InfiniteBreaker::acquire`] tests first).
    #[inline]
    pub fn is_open(&self) -> bool {
        self.open.load(SeqCst)
    }

    /// 1 when open, 0 when closed.
    pub fn capacity(&self) -> u64 {
        u64::from(self.open.load(SeqCst))
    }

    /// Requests waiting for the breaker to open.
    pub fn waiting(&self) -> usize {
        self.waiting.load(SeqCst)
    }

    /// Any non-zero capacity opens the breaker (releasing every waiter); 0 closes it.
    pub fn set_capacity(&self, capacity: u64) {
        if capacity > 0 {
            if !self.open.swap(true, SeqCst) {
                self.notify.notify_waiters();
            }
        } else {
            self.open.store(false, SeqCst);
        }
    }

    /// Completes at once when open, otherwise when the breaker next opens. Nothing is held
    /// afterwards (there is nothing to release); dropping the future is always safe.
    pub async fn acquire(&self) -> Result<(), QueueFull> {
        if self.open.load(SeqCst) {
            return Ok(());
        }
        if self
            .waiting
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max_waiting).then(|| n + 1))
            .is_err()
        {
            return Err(QueueFull);
        }
        let _waiting = Waiting(&self.waiting);
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking the flag, so an opening in between is not missed.
            notified.as_mut().enable();
            if self.open.load(SeqCst) {
                return Ok(());
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    /// §11 item 41.
    #[tokio::test(start_paused = true)]
    async fn item41_infinite_breaker() {
        let b = Arc::new(InfiniteBreaker::default());
        assert_eq!(b.capacity(), 0, "starts closed");
        // Closed + already-expired deadline → error.
        assert!(tokio::time::timeout(Duration::ZERO, b.acquire())
            .await
            .is_err());
        b.set_capacity(1);
        assert_eq!(b.capacity(), 1);
        // Open → the work runs even with an expired deadline (twice).
        for _ in 0..2 {
            let res = tokio::time::timeout(Duration::ZERO, b.acquire()).await;
            assert_eq!(res.ok(), Some(Ok(())));
        }
        // Scale to zero: fails again.
        b.set_capacity(0);
        assert!(tokio::time::timeout(Duration::ZERO, b.acquire())
            .await
            .is_err());
        assert_eq!(b.capacity(), 0);
        // Waiter released when opened 10 ms later.
        let opener = {
            let b = b.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                b.set_capacity(1);
            })
        };
        let started = tokio::time::Instant::now();
        assert_eq!(b.acquire().await, Ok(()));
        assert!(started.elapsed() >= Duration::from_millis(10));
        opener.await.unwrap();
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test]
    async fn opening_releases_every_waiter_at_once() {
        let b = Arc::new(InfiniteBreaker::default());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.acquire().await })
            })
            .collect();
        while b.waiting() < 50 {
            tokio::task::yield_now().await;
        }
        b.set_capacity(7); // any non-zero value opens
        assert_eq!(b.capacity(), 1);
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(()));
        }
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_is_forgotten_and_cap_applies() {
        let b = InfiniteBreaker::new(Some(1));
        assert!(tokio::time::timeout(Duration::from_millis(5), b.acquire())
            .await
            .is_err());
        assert_eq!(b.waiting(), 0);
        let mut first = std::pin::pin!(b.acquire());
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(first.as_mut().poll(cx).is_pending()))
                .await;
        assert!(polled, "waits while closed");
        assert_eq!(b.acquire().await, Err(QueueFull));
        b.set_capacity(1);
        assert_eq!(first.await, Ok(()));
        // Open: no cap applies.
        assert_eq!(b.acquire().await, Ok(()));
    }
}
